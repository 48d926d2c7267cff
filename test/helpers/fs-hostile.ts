/**
 * For the hostile-image tests: where a real image's metadata lives (so
 * mutations hit structures, not file data), and one pass of everything the
 * reader offers over a possibly damaged image, bounded in what it consumes,
 * collecting the errors it gets.
 */
import { FsError, listPartitions, memoryImage, openFilesystem, type ExtFilesystem, type FsImage } from '../../src/fs';

export interface Region {
  name: string;
  offset: number;
  length: number;
}

/** Metadata byte ranges of the filesystem(s) in `image`: superblock, descriptors, used inode-table blocks, directory and map blocks. */
export async function metadataRegions(image: Buffer): Promise<Region[]> {
  const img = memoryImage(image);
  const table = await listPartitions(img);
  const out: Region[] = [];
  if (table.scheme !== 'none') {
    out.push({ name: 'partition table', offset: 0, length: 512 * 34 });
    out.push({ name: 'backup GPT', offset: image.length - 512 * 33, length: 512 * 33 });
  }
  for (const p of table.partitions) {
    if (!p.content?.supported) continue;
    const fs = await openFilesystem(img, p);
    const bs = fs.blockSize;
    const block = (name: string, b: number): void =>
      void out.push({ name: `${p.label} ${name} block ${b}`, offset: fs.imageOffset(b), length: bs });
    out.push({ name: `${p.label} superblock`, offset: p.offset + 1024, length: 1024 });
    fs.groups.descriptorBlocks.forEach((b) => block('descriptor', b));
    const inodeBlocks = new Set<number>([(await fs.stat(2)).inodeBlock]);
    const files: number[] = [];
    await fs.walk({
      entry: (e) => {
        inodeBlocks.add(e.stat!.inodeBlock);
        if (e.type === 'file' || e.type === 'symlink') files.push(e.ino);
      },
      directory: (d) => {
        for (const r of d.runs) for (let k = 0; k < r.length; k++) block('directory', r.physical + k);
        d.metaBlocks.forEach((b) => block('directory map', b));
      },
    });
    inodeBlocks.forEach((b) => block('inode table', b));
    for (const ino of files) (await fs.fileExtents(ino)).metaBlocks.forEach((b) => block('file map', b));
  }
  return out;
}

export interface Outcome {
  errors: FsError[];
  entries: number;
  bytes: number;
}

/** Caps of one pass: a hostile image may legitimately describe huge sparse files. */
const PER_FILE = 2 << 20;
const TOTAL = 16 << 20;
const FILES = 400;

/**
 * Everything, once: partitions, open, walk (errors reported, walk goes on),
 * stat by path, readFile, readChunks, fileExtents, readlink, readdir.
 * FsErrors are collected; anything else is thrown (a bug).
 */
export async function exercise(image: FsImage): Promise<Outcome> {
  const out: Outcome = { errors: [], entries: 0, bytes: 0 };
  const caught = async (fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      if (!(err instanceof FsError)) throw err;
      out.errors.push(err);
    }
  };
  let parts: Awaited<ReturnType<typeof listPartitions>>['partitions'] = [];
  await caught(async () => (parts = (await listPartitions(image)).partitions));
  for (const p of parts) {
    let fs: ExtFilesystem | undefined;
    await caught(async () => (fs = await openFilesystem(image, p)));
    if (!fs) continue;
    const efs = fs;
    const targets: { ino: number; type: string; path: Buffer }[] = [];
    await caught(() =>
      efs.walk({
        entry: (e) => {
          out.entries++;
          if (targets.length < FILES) targets.push({ ino: e.ino, type: e.type, path: e.path });
        },
        error: (e) => void out.errors.push(e),
      }),
    );
    for (const t of targets) {
      if (out.bytes >= TOTAL) break;
      await caught(() => efs.stat(t.path));
      await caught(() => efs.fileExtents(t.ino));
      if (t.type === 'symlink') await caught(() => efs.readlink(t.ino));
      if (t.type === 'dir') await caught(() => efs.readdir(t.ino));
      if (t.type === 'file' || t.type === 'symlink') {
        await caught(async () => {
          let n = 0;
          for await (const c of efs.readFile(t.ino)) {
            n += c.length;
            out.bytes += c.length;
            if (n >= PER_FILE) break;
          }
        });
        await caught(async () => {
          for await (const c of efs.readChunks(t.ino, { offset: 4096, chunkSize: 65536 })) {
            out.bytes += c.length;
            break;
          }
        });
      }
    }
  }
  return out;
}
