/**
 * Hostile images. fast-check damages the metadata of real images (made by
 * mkfs, in MBR and GPT tables): every outcome is a result or an FsError that
 * names where and what, never another exception, and every pass ends in
 * bounded time and memory. Then hand-made damage with the exact message
 * each must give.
 */
import test from 'ava';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FsError, memoryImage, openFilesystem, type FsImage } from '../src/fs';
import { crc32cRaw } from '../src/fs/crc32c';
import { buildTree, debugfs, requireTools, makeDisk, makeFs, tempDir, writeInto, type MkfsOptions } from './helpers/fs-images';
import { exercise, metadataRegions, type Region } from './helpers/fs-hostile';

const TOOLS = ['mkfs.ext4', 'e2fsck', 'sfdisk', 'debugfs'];

interface Base {
  name: string;
  image: Buffer;
  regions: Region[];
}

const SMALL_TREE = { seed: 41, blobs: 12, islands: 120, many: 300, big: false, special: false };

function mkImage(dir: string, name: string, o: MkfsOptions): Buffer {
  const src = path.join(dir, 'src');
  if (!fs.existsSync(src)) buildTree(src, SMALL_TREE);
  const file = path.join(dir, `${name}.img`);
  makeFs(file, src, o);
  return fs.readFileSync(file);
}

async function bases(): Promise<Base[]> {
  const tmp = tempDir();
  try {
    const raw: [string, Buffer][] = [
      ['ext2, 1 KiB, indirect, hashed dirs', mkImage(tmp.dir, 'a', { kind: 'ext2', blockSize: 1024, sizeMiB: 8, htree: true })],
      [
        'ext4, 1 KiB, no checksums, inline data, extent depth 2',
        mkImage(tmp.dir, 'b', { kind: 'ext4', blockSize: 1024, sizeMiB: 8, features: '^metadata_csum,inline_data', htree: true }),
      ],
      ['ext4, 4 KiB, defaults', mkImage(tmp.dir, 'c', { kind: 'ext4', blockSize: 4096, sizeMiB: 8 })],
    ];
    const disk = path.join(tmp.dir, 'gpt.img');
    const t = makeDisk(disk, 12, 'label: gpt\nsize=8MiB\n');
    fs.writeFileSync(path.join(tmp.dir, 'p.img'), raw[1]![1]);
    writeInto(disk, t.partitions[0]!.offset, path.join(tmp.dir, 'p.img'));
    raw.push(['GPT disk holding the ext4 1 KiB image', fs.readFileSync(disk)]);
    const out: Base[] = [];
    for (const [name, image] of raw) out.push({ name, image, regions: await metadataRegions(image) });
    return out;
  } finally {
    tmp.cleanup();
  }
}

const edit = fc.record({
  region: fc.nat(),
  pos: fc.nat(),
  kind: fc.constantFrom('byte', 'bitflip', 'zero16', 'max16', 'max32', 'small32'),
  value: fc.nat({ max: 0xffff }),
});

interface Edit {
  region: number;
  pos: number;
  kind: string;
  value: number;
}

function mutate(base: Base, edits: Edit[]): Buffer {
  const img = Buffer.from(base.image);
  for (const e of edits) {
    const r = base.regions[e.region % base.regions.length]!;
    const at = r.offset + (e.pos % Math.max(1, r.length - 4));
    switch (e.kind) {
      case 'byte':
        img[at] = e.value & 0xff;
        break;
      case 'bitflip':
        img[at]! ^= 1 << (e.value & 7);
        break;
      case 'zero16':
        img.writeUInt16LE(0, at);
        break;
      case 'max16':
        img.writeUInt16LE(0xffff, at);
        break;
      case 'max32':
        img.writeUInt32LE(0xffffffff, at);
        break;
      case 'small32':
        img.writeUInt32LE(e.value & 0x3f, at);
        break;
    }
  }
  return img;
}

test('damaged metadata of real images: only FsErrors, located, in bounded time and memory', async (t) => {
  requireTools(...TOOLS);
  const all = await bases();
  for (const base of all) {
    const clean = await exercise(memoryImage(base.image));
    t.deepEqual(
      clean.errors.map((e) => e.message),
      [],
      `${base.name}: the undamaged image reads cleanly`,
    );
    t.true(clean.entries > 300, `${base.name}: ${clean.entries} entries`);
  }
  let runs = 0;
  let withErrors = 0;
  let slowest = 0;
  let heapPeak = 0;
  const seen = new Set<string>();
  for (const base of all) {
    await fc.assert(
      fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 6 }), async (edits) => {
        const started = performance.now();
        const outcome = await exercise(memoryImage(mutate(base, edits)));
        const took = performance.now() - started;
        slowest = Math.max(slowest, took);
        heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
        runs++;
        if (outcome.errors.length > 0) withErrors++;
        for (const e of outcome.errors) {
          if (e.where === '' || e.structure === '' || e.detail === '') throw new Error(`unlocated error: ${e.message}`);
          seen.add(`${e.code} ${e.structure.replace(/\d+/g, 'N')}`);
        }
        if (took > 10_000) throw new Error(`a pass took ${Math.round(took)} ms`);
      }),
      { numRuns: 80, seed: 15 + all.indexOf(base), endOnFailure: true },
    );
  }
  t.log(
    `${runs} damaged images, ${withErrors} with errors, slowest pass ${Math.round(slowest)} ms, heap peak ${Math.round(heapPeak / 2 ** 20)} MiB`,
  );
  t.log(`error kinds: ${[...seen].sort().join('; ')}`);
  t.true(withErrors > runs / 4, 'the damage is seen');
  t.true(heapPeak < 1024 * 2 ** 20);
});

/** The image with `fn` applied to its superblock, checksum recomputed. */
function withSuper(image: Buffer, fn: (sb: Buffer) => void): FsImage {
  const img = Buffer.from(image);
  const sb = img.subarray(1024, 2048);
  fn(sb);
  if (sb.readUInt32LE(100) & 0x400) sb.writeUInt32LE(crc32cRaw(sb.subarray(0, 1020)), 1020);
  return memoryImage(img);
}

async function failure(t: { throwsAsync: (p: Promise<unknown>, e: object) => Promise<unknown> }, p: Promise<unknown>): Promise<FsError> {
  return (await t.throwsAsync(p, { instanceOf: FsError })) as FsError;
}

test('hand-made damage gives the exact error', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  t.teardown(tmp.cleanup);
  const image = mkImage(tmp.dir, 'x', { kind: 'ext4', blockSize: 4096, sizeMiB: 8 });
  const clean = await openFilesystem(memoryImage(image));
  // Superblock.
  t.is(
    (await failure(t, openFilesystem(withSuper(image, (sb) => sb.writeUInt32LE(sb.readUInt32LE(96) | 0x1000, 96))))).message,
    'whole disk (ext4): superblock: incompatible features not understood: dirdata',
  );
  t.is(
    (await failure(t, openFilesystem(withSuper(image, (sb) => sb.writeUInt32LE(sb.readUInt32LE(96) | 0x800000, 96))))).message,
    'whole disk (ext4): superblock: incompatible features not understood: 0x800000',
  );
  t.is(
    (await failure(t, openFilesystem(withSuper(image, (sb) => sb.writeUInt32LE(0x10000000, 4))))).message,
    'whole disk (ext4): superblock: 268435456 blocks of 4096 bytes exceed the partition (8388608 bytes)',
  );
  t.regex(
    (await failure(t, openFilesystem(withSuper(image, (sb) => sb.writeUInt32LE(0xffffffff, 0))))).message,
    /^whole disk \(ext4\): superblock: 4294967295 inodes exceed/,
  );
  const recovering = await openFilesystem(withSuper(image, (sb) => sb.writeUInt32LE(sb.readUInt32LE(96) | 0x4, 96)));
  t.deepEqual(recovering.warnings, ['the journal needs recovery: read without replaying it (as mount -o noload)']);
  const badCsum = Buffer.from(image);
  badCsum[1024 + 300]! ^= 1;
  t.regex((await failure(t, openFilesystem(memoryImage(badCsum)))).message, /^whole disk \(ext4\): superblock: checksum mismatch/);

  // An extent tree of depth 9, and one whose index points at itself.
  const big = await clean.stat('/sparse.bin');
  const loc = clean.inodeLocation(big.ino);
  const deep = Buffer.from(image);
  deep.writeUInt16LE(9, loc.imageOffset + 40 + 6);
  t.is(
    (
      await failure(
        t,
        openFilesystem(memoryImage(deep)).then((f) => f.fileExtents(big.ino)),
      )
    ).message,
    `whole disk (ext4): inode ${big.ino} extent tree: depth 9 exceeds 5`,
  );
  const frag = await clean.stat('/fragmented.bin');
  const fext = await clean.fileExtents(frag.ino);
  t.true(fext.metaBlocks.length >= 1, 'a tree with an index');
  const looped = Buffer.from(image);
  const node = clean.imageOffset(fext.metaBlocks[0]!);
  looped.writeUInt16LE(1, node + 6); // the leaf claims depth 1...
  looped.writeUInt32LE(fext.metaBlocks[0]!, node + 12 + 4); // ...and its first entry points at itself
  looped.writeUInt16LE(0, node + 12 + 8);
  const lf = await openFilesystem(memoryImage(looped));
  t.regex(
    (await failure(t, lf.fileExtents(frag.ino))).message,
    new RegExp(
      `^whole disk \\(ext4\\): inode ${frag.ino} extent tree: (index block ${fext.metaBlocks[0]}: depth 1 under a node of depth 1|index block ${fext.metaBlocks[0]} is reached twice)`,
    ),
  );

  // A directory loop: /deep/level0/level1 gets an entry pointing back at /deep.
  const file = path.join(tmp.dir, 'loop.img');
  fs.writeFileSync(file, image);
  debugfs(file, ['link /deep /deep/level0/level1/back']);
  const lfs = await openFilesystem(memoryImage(fs.readFileSync(file)));
  const reported: string[] = [];
  const sum = await lfs.walk({ entry: () => undefined, error: (e) => void reported.push(e.message) });
  t.is(sum.errors, 1);
  t.regex(
    reported[0]!,
    /^whole disk \(ext4\): directory inode \d+: reached again at \/deep\/level0\/level1\/back \(directory loop or hard link\)$/,
  );
  await t.throwsAsync(lfs.walk({ entry: () => undefined }), { instanceOf: FsError, message: /directory loop/ });

  // Absurd sizes: a directory of 2^40 bytes, a symlink of 1 MiB.
  const root = clean.inodeLocation(2);
  const hugeDir = Buffer.from(image);
  hugeDir.writeUInt32LE(256, root.imageOffset + 108);
  t.is(
    (
      await failure(
        t,
        openFilesystem(memoryImage(hugeDir)).then((f) => f.readdir('/')),
      )
    ).message,
    'whole disk (ext4): directory inode 2: size 1099511631872 exceeds 4294967296 bytes',
  );
  const slow = clean.inodeLocation((await clean.stat('/links/slow')).ino);
  const longLink = Buffer.from(image);
  longLink.writeUInt32LE(1 << 20, slow.imageOffset + 4);
  t.regex(
    (
      await failure(
        t,
        openFilesystem(memoryImage(longLink)).then((f) => f.readlink('/links/slow')),
      )
    ).message,
    /^whole disk \(ext4\): symlink inode \d+: target length 1048576$/,
  );
});
