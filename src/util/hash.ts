/**
 * Whole-volume checksums for verify: SHA-256 over everything, and of each
 * 1 MiB piece so a difference can be located. Production and replica are
 * hashed the same way on whichever host holds them.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';

export const HASH_CHUNK = 1024 * 1024;

/** SHA-256 of the first `size` bytes of a file (zero-extended), and of each 1 MiB of it. */
export async function hashFile(file: string, size: number): Promise<{ sha: string; hashes: Buffer }> {
  return hashReader(size, async (off, buf) => {
    const fh = await fs.promises.open(file, 'r');
    try {
      buf.fill(0);
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await fh.read(buf, done, buf.length - done, off + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } finally {
      await fh.close();
    }
  });
}

export async function hashReader(
  size: number,
  read: (off: number, into: Buffer) => Promise<void | Buffer>,
): Promise<{ sha: string; hashes: Buffer }> {
  const all = createHash('sha256');
  const hashes = Buffer.alloc(Math.ceil(size / HASH_CHUNK) * 32);
  const buf = Buffer.alloc(HASH_CHUNK);
  for (let off = 0, i = 0; off < size; off += HASH_CHUNK, i++) {
    const n = Math.min(HASH_CHUNK, size - off);
    const b = buf.subarray(0, n);
    const got = await read(off, b);
    const data = got && got !== b ? got : b;
    all.update(data);
    createHash('sha256')
      .update(data)
      .digest()
      .copy(hashes, i * 32);
  }
  return { sha: all.digest('hex'), hashes };
}
