import * as fs from 'node:fs';

/** fsync a directory, so that a rename or a new file in it survives a machine crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
