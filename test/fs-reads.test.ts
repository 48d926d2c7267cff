/**
 * What the reader reads, counted through the image interface: a file read
 * costs its data blocks (rounded up to blocks) plus its extent or indirect
 * blocks, nothing more; holes cost nothing. And where things are: block
 * maps and inode locations against debugfs, the blocks a walk reports for
 * each directory, and the classification of changed blocks.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CountingImage,
  listPartitions,
  openFilesystem,
  openImageFile,
  type ExtFilesystem,
  type FsImage,
  type WalkDirectory,
} from '../src/fs';
import { MemoryExport } from '../src/storage';
import {
  buildTree,
  debugfsBlocks,
  debugfsImap,
  requireTools,
  makeDisk,
  makeFs,
  tempDir,
  writeInto,
  type MkfsOptions,
} from './helpers/fs-images';
import { sha256Of } from './helpers/fs-oracle';

const TOOLS = ['mkfs.ext4', 'debugfs', 'e2fsck'];
const FILES = ['/big.bin', '/sparse.bin', '/fragmented.bin', '/small.txt', '/blobs/f3', '/sparse-far.bin'];

const IMAGES: [string, MkfsOptions][] = [
  ['ext4, 4 KiB, extents', { kind: 'ext4', blockSize: 4096, sizeMiB: 48, htree: true }],
  ['ext4, 1 KiB, extent depth 2', { kind: 'ext4', blockSize: 1024, sizeMiB: 48 }],
  ['ext3, 1 KiB, indirect blocks', { kind: 'ext3', blockSize: 1024, sizeMiB: 48, htree: true }],
];

async function withImage(
  t: { teardown(fn: () => void): void },
  o: MkfsOptions,
  fn: (file: string, img: FsImage) => Promise<void>,
): Promise<void> {
  const tmp = tempDir();
  t.teardown(tmp.cleanup);
  const src = buildTree(path.join(tmp.dir, 'src'), { seed: 31, blobs: 8, islands: 400, farOffset: 70 << 20, many: 800, special: false });
  const file = path.join(tmp.dir, 'fs.img');
  makeFs(file, src, o);
  const img = await openImageFile(file);
  try {
    await fn(file, img);
  } finally {
    await img.close();
  }
}

for (const [name, o] of IMAGES) {
  test(`${name}: a file read costs its blocks and its map, nothing more`, async (t) => {
    requireTools(...TOOLS);
    await withImage(t, o, async (file, raw) => {
      for (const f of FILES) {
        const img = new CountingImage(raw);
        const efs = await openFilesystem(img);
        t.true(img.bytes <= 1024 + 64 * efs.blockSize, `opening reads the superblock and descriptors (${img.bytes})`);
        const st = await efs.stat(f);
        const ext = await efs.fileExtents(st.ino);
        // Counted on a second filesystem object, so that fileExtents has not warmed its cache.
        const counted = new CountingImage(raw);
        const efs2 = await openFilesystem(counted);
        await efs2.stat(f);
        counted.reset();
        const h = await sha256Of(efs2, st.ino);
        const bs = efs.blockSize;
        const dataBlocks = ext.runs.reduce((n, r) => n + Math.max(0, Math.min(r.length, Math.ceil(st.size / bs) - r.logical)), 0);
        const bound = dataBlocks * bs + ext.metaBlocks.length * bs;
        t.true(
          counted.bytes <= bound,
          `${f}: read ${counted.bytes} bytes, bound ${bound} (${dataBlocks} data + ${ext.metaBlocks.length} map blocks)`,
        );
        t.true(counted.bytes >= Math.min(st.size, dataBlocks * bs) - bs, `${f}: the data was read (${counted.bytes})`);
        t.is(h, await sha256Of(efs, f));
        // A range costs only its blocks.
        if (st.size > 1 << 20) {
          counted.reset();
          let got = 0;
          for await (const c of efs2.readFile(st.ino, { offset: 500_000, length: 100_000 })) got += c.length;
          t.is(got, 100_000);
          t.true(counted.bytes <= 100_000 + ext.metaBlocks.length * bs, `${f} range: ${counted.bytes}`);
        }
      }
    });
  });

  test(`${name}: block maps, inode locations and directory blocks match debugfs`, async (t) => {
    requireTools(...TOOLS);
    await withImage(t, o, async (file, img) => {
      const efs = await openFilesystem(img);
      for (const f of FILES) {
        const st = await efs.stat(f);
        const ext = await efs.fileExtents(st.ino);
        const want = debugfsBlocks(file, f);
        const got = new Map<number, number>();
        for (const r of ext.runs) for (let k = 0; k < r.length; k++) got.set(r.logical + k, r.physical + k);
        t.deepEqual([...got], [...want.data], `${f}: data blocks`);
        t.deepEqual(
          [...ext.metaBlocks].sort((a, b) => a - b),
          [...want.meta].sort((a, b) => a - b),
          `${f}: map blocks`,
        );
        for (const r of ext.runs) t.is(r.imageOffset, r.physical * efs.blockSize);
        const [block, offset] = debugfsImap(file, st.ino);
        const loc = efs.inodeLocation(st.ino);
        t.deepEqual([loc.block, loc.offset], [block, offset], `${f}: inode location`);
        t.is(st.inodeBlock, block);
        const cls = efs.classifyBlock(block);
        t.is(cls.kind, 'inode-table');
        if (cls.kind === 'inode-table') t.true(cls.firstIno <= st.ino && st.ino < cls.firstIno + cls.count);
      }
      // Every directory's blocks, as the walk reports them, are what debugfs lists.
      const dirs: WalkDirectory[] = [];
      await efs.walk({ entry: () => undefined, directory: (d) => void dirs.push(d) });
      t.true(dirs.length > 15);
      for (const d of dirs.filter((x) => ['', '/many', '/deep', '/blobs'].includes(x.path.toString()))) {
        const want = debugfsBlocks(file, d.path.length === 0 ? '/' : d.path.toString());
        const got = new Map<number, number>();
        for (const r of d.runs) for (let k = 0; k < r.length; k++) got.set(r.logical + k, r.physical + k);
        t.deepEqual([...got], [...want.data], `${d.path.toString() || '/'}: directory blocks`);
        t.deepEqual(d.metaBlocks, want.meta);
        for (const b of got.values()) t.is(efs.classifyBlock(b).kind, 'other');
      }
      t.is(efs.classifyBlock(efs.superblock.firstDataBlock).kind, 'superblock');
      t.is(efs.classifyBlock(efs.superblock.firstDataBlock + 1).kind, 'group-descriptors');
      t.is(efs.classifyBlock(efs.groups.blockBitmap[0]!).kind, 'block-bitmap');
      t.is(efs.classifyBlock(efs.groups.inodeBitmap[0]!).kind, 'inode-bitmap');
    });
  });
}

test('chunks: holes come without data and cost no reads', async (t) => {
  requireTools(...TOOLS);
  await withImage(t, IMAGES[0]![1], async (_file, raw) => {
    const img = new CountingImage(raw);
    const efs: ExtFilesystem = await openFilesystem(img);
    const st = await efs.stat('/sparse-far.bin');
    img.reset();
    let data = 0;
    let holes = 0;
    let pos = 0;
    for await (const c of efs.readChunks(st.ino)) {
      t.is(c.offset, pos);
      pos += c.length;
      if (c.data) data += c.length;
      else holes += c.length;
    }
    t.is(pos, st.size);
    t.is(data, 4096);
    t.is(holes, st.size - 4096);
    t.true(img.bytes <= 4096 + 4096, `${img.bytes}`);
  });
});

test('any NbdExport is an image: a MemoryExport holding an MBR disk; changed ranges map to blocks', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  t.teardown(tmp.cleanup);
  const disk = path.join(tmp.dir, 'disk.img');
  const table = makeDisk(disk, 24, 'label: dos\nstart=4096, size=32768, type=83\n');
  const src = buildTree(path.join(tmp.dir, 'src'), { seed: 33, blobs: 4, big: false, special: false });
  makeFs(path.join(tmp.dir, 'p.img'), src, { kind: 'ext4', blockSize: 4096, sizeMiB: 16 });
  writeInto(disk, table.partitions[0]!.offset, path.join(tmp.dir, 'p.img'));
  const exp = new MemoryExport(24 << 20);
  await exp.write(0, fs.readFileSync(disk), { fua: false });
  const image: FsImage = exp; // the structural subset: no adapter
  const part = (await listPartitions(image)).partitions[0]!;
  const efs = await openFilesystem(image, part);
  t.is((await efs.readdir('/links')).length, 5);
  const ino = (await efs.stat('/small.txt')).ino;
  const loc = efs.inodeLocation(ino);
  t.is(loc.imageOffset, part.offset + loc.block * 4096 + loc.offset);
  t.deepEqual(efs.blocksOfImageRange(loc.imageOffset, 1), { first: loc.block, count: 1 });
  t.deepEqual(efs.blocksOfImageRange(part.offset - 4096, 8192), { first: 0, count: 1 });
  t.deepEqual(efs.blocksOfImageRange(part.offset + 4095, 2), { first: 0, count: 2 });
  t.is(efs.blocksOfImageRange(0, part.offset), null);
  t.is(efs.blocksOfImageRange(part.offset + part.size, 4096), null);
});

for (const o of [
  { kind: 'ext4', blockSize: 4096, sizeMiB: 32 },
  { kind: 'ext2', blockSize: 4096, sizeMiB: 32 }, // 5 GiB needs the triple indirect block with 4 KiB blocks
] as MkfsOptions[]) {
  test(`${o.kind}, ${o.blockSize} bytes: a file past 4 GiB`, async (t) => {
    requireTools(...TOOLS);
    const tmp = tempDir();
    t.teardown(tmp.cleanup);
    const far = 5 * 2 ** 30;
    const src = buildTree(path.join(tmp.dir, 'src'), { seed: 34, blobs: 2, big: false, special: false, farOffset: far });
    const file = path.join(tmp.dir, 'fs.img');
    makeFs(file, src, o);
    const raw = await openImageFile(file);
    t.teardown(() => raw.close());
    const img = new CountingImage(raw);
    const efs = await openFilesystem(img);
    const st = await efs.stat('/sparse-far.bin');
    t.is(st.size, far + 4096);
    const ext = await efs.fileExtents(st.ino);
    t.deepEqual(
      ext.runs.map((r) => [r.logical, r.length]),
      [[far / 4096, 1]],
    );
    t.deepEqual([...debugfsBlocks(file, '/sparse-far.bin').data], [[far / 4096, ext.runs[0]!.physical]]);
    img.reset();
    const parts: Buffer[] = [];
    for await (const c of efs.readFile(st.ino, { offset: far - 100, length: 5000 })) parts.push(c);
    const want = Buffer.alloc(4196);
    const fd = fs.openSync(path.join(src, 'sparse-far.bin'), 'r');
    fs.readSync(fd, want, 0, 4196, far - 100);
    fs.closeSync(fd);
    t.deepEqual(Buffer.concat(parts), want);
    t.true(img.bytes <= 4096 + ext.metaBlocks.length * 4096, `${img.bytes} bytes read`);
  });
}

test('a tiny cache (chunks evicted and their buffers reused all the time) reads the same, under concurrent use', async (t) => {
  requireTools(...TOOLS);
  await withImage(t, IMAGES[1]![1], async (_file, raw) => {
    const big = await openFilesystem(raw);
    const tiny = await openFilesystem(raw, undefined, { cacheBytes: 8192, inodeReadahead: 4096 });
    const snapshot = async (efs: ExtFilesystem): Promise<string[]> => {
      const walked: string[] = [];
      const files: number[] = [];
      const walk = (): Promise<unknown> =>
        efs.walk({
          entry: (e) => {
            walked.push(`${e.path.toString('hex')} ${e.ino} ${JSON.stringify(e.stat)}`);
            if (e.type === 'file') files.push(e.ino);
          },
        });
      await walk();
      // Then every file read (maps walked lazily across awaits) while a second walk loads chunk after chunk.
      const [digests] = await Promise.all([
        Promise.all(files.map(async (ino) => `${ino} ${await sha256Of(efs, ino)} ${JSON.stringify((await efs.fileExtents(ino)).runs)}`)),
        walk(),
      ]);
      return [...walked, ...digests];
    };
    const [a, b] = await Promise.all([snapshot(big), snapshot(tiny)]);
    t.true(a.length > 900);
    t.deepEqual(b, a);
    // An inode taken from the cache stays intact after its chunk is evicted and the buffer reused.
    const held = await tiny.inode((await tiny.stat('/sparse.bin')).ino);
    const before = Buffer.from(held.raw);
    await tiny.prefetchInodes(Array.from({ length: 200 }, (_, i) => 1 + i * 13));
    t.deepEqual(held.raw, before);
  });
});
