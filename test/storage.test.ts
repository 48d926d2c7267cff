/**
 * FileExport (regular files and a loop block device) and MemoryExport
 * against a byte-for-byte model, plus the behaviour specific to each.
 */
import { pattern, rng } from './helpers/random';
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { STATE_HOLE, STATE_ZERO, type Extent, type NbdExport } from '../src/nbd/export';
import { FileExport, MAX_BLOCK_STATUS_EXTENTS, MemoryExport } from '../src/storage';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const HZ = STATE_HOLE | STATE_ZERO;
const NO = { fua: false };
const FUA = { fua: true };

type T = ExecutionContext<unknown>;

function tempDir(t: T): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-storage-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function newFile(t: T, size: number, name = 'disk.img'): Promise<string> {
  const file = path.join(tempDir(t), name);
  await FileExport.create(file, size);
  return file;
}

async function openFile(t: T, file: string, readOnly = false): Promise<FileExport> {
  const e = await FileExport.open(file, { readOnly });
  t.teardown(() => e.close());
  return e;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function codeOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** blockStatus contract: consecutive from offset, >= 1 extent, lengths > 0, never past size. */
function checkExtents(t: T, exp: NbdExport, offset: number, length: number, extents: Extent[], model?: Buffer): void {
  t.true(extents.length >= 1, 'at least one extent');
  t.true(extents.length <= MAX_BLOCK_STATUS_EXTENTS, 'capped');
  let pos = offset;
  for (const e of extents) {
    t.true(Number.isSafeInteger(e.length) && e.length > 0, `extent length ${e.length}`);
    t.true(e.flags === 0 || e.flags === HZ, `flags ${e.flags}`);
    if (model && e.flags & STATE_ZERO) {
      t.true(isZero(model.subarray(pos, pos + e.length)), `extent [${pos}, +${e.length}) claims zero`);
    }
    pos += e.length;
  }
  t.true(pos <= exp.size, `extents end at ${pos} <= size ${exp.size}`);
  t.true(pos > offset);
}

interface ModelOptions {
  seed: number;
  ops: number;
  /** TRIM only zeroes whole units of this size (block devices); 1 = exact. */
  trimGranularity: number;
}

/** Random writes/trims/zeroes (aligned and not), mirrored in a Buffer, checked by reads. */
async function modelTest(t: T, exp: NbdExport, o: ModelOptions): Promise<void> {
  const size = exp.size;
  const model = Buffer.from(await exp.read(0, size));
  const r = rng(o.seed);
  const int = (n: number) => Math.floor(r() * n);
  const range = (): [number, number] => {
    const aligned = r() < 0.5;
    let len = aligned ? (1 + int(64)) * 4096 : 1 + int(300 * KiB);
    let off = aligned ? int(size / 4096) * 4096 : int(size);
    if (off + len > size) len = size - off;
    if (len === 0) {
      off = 0;
      len = 1;
    }
    return [off, len];
  };
  for (let i = 0; i < o.ops; i++) {
    const kind = r();
    const [off, len] = range();
    if (kind < 0.5) {
      const data = pattern(len, o.seed * 1000 + i);
      await exp.write(off, data, r() < 0.1 ? FUA : NO);
      data.copy(model, off);
    } else if (kind < 0.65) {
      await exp.trim(off, len, NO);
      const g = o.trimGranularity;
      const a = Math.ceil(off / g) * g;
      const b = Math.floor((off + len) / g) * g;
      if (b > a) model.fill(0, a, b);
    } else if (kind < 0.8) {
      await exp.zero(off, len, { fua: r() < 0.2, noHole: r() < 0.5, fastZero: false });
      model.fill(0, off, off + len);
    } else {
      const got = await exp.read(off, len);
      t.true(got.equals(model.subarray(off, off + len)), `op ${i}: read [${off}, +${len}) matches`);
    }
  }
  await exp.flush();
  const all = await exp.read(0, size);
  t.true(all.equals(model), 'whole export matches the model');

  // Sparse read reconstructs the same bytes.
  if (exp.readSparse) {
    const chunks = await exp.readSparse(0, size);
    let pos = 0;
    const rebuilt = Buffer.alloc(size);
    for (const c of chunks) {
      t.is(c.offset, pos, 'sparse chunks are consecutive');
      t.true(c.length > 0);
      if (c.data) {
        t.is(c.data.length, c.length);
        c.data.copy(rebuilt, c.offset);
      }
      pos += c.length;
    }
    t.is(pos, size, 'sparse chunks cover the range');
    t.true(rebuilt.equals(model), 'sparse read matches the model');
  }

  // Block status from several offsets obeys the contract and never lies about zeroes.
  for (let i = 0; i < 20; i++) {
    const off = i === 0 ? 0 : int(size);
    const len = 1 + int(size - off);
    checkExtents(t, exp, off, len, await exp.blockStatus(off, len), model);
  }
}

// ---------------------------------------------------------------------------
// FileExport on regular files

test('create makes a sparse 1 GiB file and refuses to overwrite unless asked', async (t) => {
  const file = path.join(tempDir(t), 'big.img');
  await FileExport.create(file, GiB);
  const st = fs.statSync(file);
  t.is(st.size, GiB);
  t.true(st.blocks * 512 <= 64 * KiB, `st_blocks ${st.blocks} after create`);
  const info = await FileExport.stat(file);
  t.deepEqual(info, { path: file, size: GiB, allocatedBytes: st.blocks * 512, isBlockDevice: false });

  const e = await openFile(t, file);
  t.is(e.size, GiB);
  t.false(e.isBlockDevice);
  t.deepEqual(await e.blockStatus(0, GiB), [{ length: GiB, flags: HZ }]);
  t.deepEqual(await e.blockStatus(GiB - 1, 1), [{ length: 1, flags: HZ }]);
  t.deepEqual(await e.readSparse(0, 32 * MiB), [{ offset: 0, length: 32 * MiB }]);

  fs.writeFileSync(file + '.x', 'precious');
  t.is(codeOf(await t.throwsAsync(FileExport.create(file + '.x', MiB))), 'EEXIST');
  t.is(fs.readFileSync(file + '.x', 'utf8'), 'precious', 'not touched');
  await FileExport.create(file + '.x', 2 * MiB, { overwrite: true });
  t.is(fs.statSync(file + '.x').size, 2 * MiB);
  t.true(isZero(fs.readFileSync(file + '.x')));
  t.is(codeOf(await t.throwsAsync(FileExport.create(file + '.y', -1))), 'EINVAL');
  t.is(codeOf(await t.throwsAsync(FileExport.create(tempDir(t), 1, { overwrite: true }))), 'EINVAL');
});

test('capabilities of read-write and read-only file exports', async (t) => {
  const file = await newFile(t, MiB);
  const rw = await openFile(t, file);
  t.deepEqual(
    { ...rw.capabilities },
    { flush: true, fua: true, trim: true, zero: true, fastZero: true, cache: true, blockStatus: true, multiConn: true },
  );
  t.false(rw.readOnly);
  const ro = await openFile(t, file, true);
  t.true(ro.readOnly);
  t.true(ro.capabilities.cache && ro.capabilities.blockStatus && ro.capabilities.multiConn);
  t.false(ro.capabilities.trim || ro.capabilities.zero || ro.capabilities.fua);
});

test('file: aligned and unaligned writes read back, with short and odd sizes', async (t) => {
  const file = await newFile(t, 8 * MiB);
  const e = await openFile(t, file);
  const cases: Array<[number, number]> = [
    [0, 4096],
    [4096, 65536],
    [1, 1],
    [4095, 2],
    [12345, 100000],
    [8 * MiB - 1, 1],
    [8 * MiB - 4096, 4096],
    [3 * MiB + 17, 2 * MiB + 3],
  ];
  for (const [i, [off, len]] of cases.entries()) {
    const data = pattern(len, i + 1);
    await e.write(off, data, i % 2 ? FUA : NO);
    t.true((await e.read(off, len)).equals(data), `[${off}, +${len})`);
  }
  // Small reads (pool-backed buffers) are exactly the requested length.
  const small = await e.read(1, 10);
  t.is(small.length, 10);
  await e.flush();
  const fd = fs.openSync(file, 'r');
  const direct = Buffer.alloc(10);
  fs.readSync(fd, direct, 0, 10, 1);
  fs.closeSync(fd);
  t.true(small.equals(direct), 'matches what the file holds');
});

test('file: random operations match a model (aligned and unaligned)', async (t) => {
  const file = await newFile(t, 16 * MiB);
  const e = await openFile(t, file);
  await modelTest(t, e, { seed: 1, ops: 400, trimGranularity: 1 });
});

test('file: trim and zero read back zeroes and become holes in blockStatus', async (t) => {
  const file = await newFile(t, 4 * MiB);
  const e = await openFile(t, file);
  await e.write(0, pattern(4 * MiB, 9), NO);
  await e.flush();
  checkExtents(t, e, 0, 4 * MiB, await e.blockStatus(0, 4 * MiB));
  t.deepEqual(await e.blockStatus(0, 4 * MiB), [{ length: 4 * MiB, flags: 0 }]);

  await e.trim(MiB, 256 * KiB, NO);
  await e.zero(2 * MiB, 256 * KiB, { fua: true, noHole: false, fastZero: false });
  t.true(isZero(await e.read(MiB, 256 * KiB)));
  t.true(isZero(await e.read(2 * MiB, 256 * KiB)));
  t.deepEqual(await e.blockStatus(0, 4 * MiB), [
    { length: MiB, flags: 0 },
    { length: 256 * KiB, flags: HZ },
    { length: 768 * KiB, flags: 0 },
    { length: 256 * KiB, flags: HZ },
    { length: 1792 * KiB, flags: 0 },
  ]);
  // Starting inside a hole, and a request that stops early: the last extent may run past it.
  t.deepEqual(await e.blockStatus(MiB + 4096, 10), [{ length: 252 * KiB, flags: HZ }]);
  t.deepEqual((await e.blockStatus(MiB - 1, 2)).slice(0, 2), [
    { length: 1, flags: 0 },
    { length: 256 * KiB, flags: HZ },
  ]);

  // Unaligned trim/zero: exactly the range is zero, the bytes around it intact.
  const before = await e.read(0, 64 * KiB);
  await e.trim(1000, 9000, NO);
  await e.zero(20000, 5, { fua: false, noHole: false, fastZero: true });
  await e.zero(30001, 7000, { fua: false, noHole: true, fastZero: false });
  const after = await e.read(0, 64 * KiB);
  const expect = Buffer.from(before);
  expect.fill(0, 1000, 10000);
  expect.fill(0, 20000, 20005);
  expect.fill(0, 30001, 37001);
  t.true(after.equals(expect));

  // Sparse read of the whole file marks both holes.
  const chunks = await e.readSparse(0, 4 * MiB);
  t.deepEqual(
    chunks.filter((c) => !c.data).map((c) => [c.offset, c.length]),
    [
      [4096, 4096], // the whole block inside the unaligned trim
      [MiB, 256 * KiB],
      [2 * MiB, 256 * KiB],
    ],
  );
});

test('file: zero with noHole keeps the allocation; without it, frees it', async (t) => {
  const file = await newFile(t, 4 * MiB);
  const e = await openFile(t, file);
  await e.write(0, pattern(4 * MiB, 5), NO);
  await e.flush();
  const full = (await e.stat()).allocatedBytes;
  t.true(full >= 4 * MiB);

  await e.zero(0, 2 * MiB, { fua: true, noHole: true, fastZero: false });
  t.true(isZero(await e.read(0, 2 * MiB)));
  t.is((await e.stat()).allocatedBytes, full, 'noHole: nothing deallocated');

  await e.zero(0, 2 * MiB, { fua: true, noHole: false, fastZero: true });
  t.true(isZero(await e.read(0, 2 * MiB)));
  t.is((await e.stat()).allocatedBytes, full - 2 * MiB, 'hole punched');
  t.true((await e.read(2 * MiB, 2 * MiB)).equals(pattern(4 * MiB, 5).subarray(2 * MiB)));

  await e.trim(2 * MiB, 2 * MiB, FUA);
  t.is((await e.stat()).allocatedBytes, 0, 'trim frees the rest');
  t.deepEqual(await e.blockStatus(0, 4 * MiB), [{ length: 4 * MiB, flags: HZ }]);
});

test('file: blockStatus caps the number of extents and stays consecutive', async (t) => {
  const n = MAX_BLOCK_STATUS_EXTENTS + 100;
  const file = await newFile(t, n * 8192);
  const e = await openFile(t, file);
  const block = pattern(4096, 1);
  for (let i = 0; i < n; i++) await e.write(i * 8192, block, NO);
  const extents = await e.blockStatus(0, n * 8192);
  t.is(extents.length, MAX_BLOCK_STATUS_EXTENTS);
  checkExtents(t, e, 0, n * 8192, extents);
  extents.forEach((x, i) => {
    t.is(x.length, 4096);
    t.is(x.flags, i % 2 ? HZ : 0);
  });
  // Sparse read still covers everything.
  const chunks = await e.readSparse(0, n * 8192);
  t.is(
    chunks.reduce((s, c) => s + c.length, 0),
    n * 8192,
  );
});

test('file: read-only export refuses writes with EPERM but reads, caches and reports status', async (t) => {
  const file = await newFile(t, MiB);
  fs.writeFileSync(file, pattern(MiB, 2));
  const e = await openFile(t, file, true);
  t.true((await e.read(0, MiB)).equals(pattern(MiB, 2)));
  for (const p of [
    e.write(0, Buffer.alloc(10), NO),
    e.trim(0, 4096, NO),
    e.zero(0, 4096, { fua: false, noHole: false, fastZero: false }),
  ]) {
    const err = (await t.throwsAsync(p)) as NodeJS.ErrnoException;
    t.is(err.code, 'EPERM');
    t.is(err.errno, 1);
  }
  await e.cache(0, MiB);
  await e.flush();
  t.deepEqual(await e.blockStatus(0, MiB), [{ length: MiB, flags: 0 }]);
  t.true(fs.readFileSync(file).equals(pattern(MiB, 2)), 'file unchanged');
});

test('file: connections share one reference-counted descriptor; close waits for in-flight I/O', async (t) => {
  const file = await newFile(t, 4 * MiB);
  const a = await FileExport.open(file);
  const [b, c] = await Promise.all([FileExport.open(file), FileExport.open(path.join(path.dirname(file), '.', 'disk.img'))]);
  t.is(a.fd, b.fd);
  t.is(a.fd, c.fd);
  t.is(a.sharedReferences, 3);
  const ro = await FileExport.open(file, { readOnly: true });
  t.not(ro.fd, a.fd, 'read-only opens get their own descriptor');

  // A write through one connection, flushed through another, is visible to a third.
  await a.write(0, pattern(4096, 8), NO);
  await b.flush();
  t.true((await c.read(0, 4096)).equals(pattern(4096, 8)));
  t.true((await ro.read(0, 4096)).equals(pattern(4096, 8)));

  await a.close();
  await a.close(); // idempotent
  t.is(b.sharedReferences, 2);
  t.is(codeOf(await t.throwsAsync(a.read(0, 1))), 'ESHUTDOWN');
  t.is(codeOf(await t.throwsAsync(a.write(0, Buffer.alloc(1), NO))), 'ESHUTDOWN');
  t.is(codeOf(await t.throwsAsync(a.blockStatus(0, 1))), 'ESHUTDOWN');
  t.true((await b.read(0, 4096)).equals(pattern(4096, 8)), 'others unaffected');

  // Closing the last reference with I/O in flight: the I/O completes, then the fd closes.
  const fd = b.fd;
  await c.close();
  const reads = Array.from({ length: 64 }, (_, i) => b.read(i * 4096, 4096));
  const writes = Array.from({ length: 64 }, (_, i) => b.write(MiB + i * 4096, pattern(4096, i), FUA));
  const closed = b.close();
  const results = await Promise.allSettled([...reads, ...writes]);
  t.true(
    results.every((r) => r.status === 'fulfilled'),
    'in-flight I/O completed',
  );
  await closed;
  let target: string | undefined;
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    target = undefined;
  }
  t.not(target, fs.realpathSync(file), 'descriptor closed');
  await ro.close();

  // A fresh open after everything closed gets a new shared descriptor.
  const d = await openFile(t, file);
  t.is(d.sharedReferences, 1);
  t.true((await d.read(MiB + 4096, 4096)).equals(pattern(4096, 1)));
});

test('file: many concurrent 4 KiB writes and reads', async (t) => {
  const file = await newFile(t, 64 * MiB);
  const e = await openFile(t, file);
  const offsets = Array.from({ length: 512 }, (_, i) => ((i * 7919) % 16384) * 4096);
  await Promise.all(offsets.map((off, i) => e.write(off, pattern(4096, i + 1), i % 16 === 0 ? FUA : NO)));
  const got = await Promise.all(offsets.map((off) => e.read(off, 4096)));
  got.forEach((b, i) => t.true(b.equals(pattern(4096, i + 1))));
  // 1 MiB sequential reads and writes.
  await Promise.all(Array.from({ length: 16 }, (_, i) => e.write(32 * MiB + i * MiB, pattern(MiB, 100 + i), NO)));
  for (let i = 0; i < 16; i++) t.true((await e.read(32 * MiB + i * MiB, MiB)).equals(pattern(MiB, 100 + i)));
});

test('file: a read past the end of a file that shrank underneath is zero-filled', async (t) => {
  const file = await newFile(t, MiB);
  const e = await openFile(t, file);
  await e.write(0, Buffer.alloc(MiB, 0xee), NO);
  fs.truncateSync(file, 100);
  const b = await e.read(0, 8192);
  t.is(b.length, 8192);
  t.true(b.subarray(0, 100).every((x) => x === 0xee));
  t.true(isZero(b.subarray(100)));
  t.true(isZero(await e.read(512 * KiB, 4096)));
  const ext = await e.blockStatus(4096, 8192);
  checkExtents(t, e, 4096, 8192, ext);
  t.is(ext[0]!.flags, HZ);
});

test('file: open errors are errno-coded rejections', async (t) => {
  const dir = tempDir(t);
  t.is(codeOf(await t.throwsAsync(FileExport.open(path.join(dir, 'missing.img')))), 'ENOENT');
  const err = (await t.throwsAsync(FileExport.open(dir))) as NodeJS.ErrnoException;
  t.true(err.code === 'EISDIR' || err.code === 'EINVAL', err.code);
  t.is(codeOf(await t.throwsAsync(FileExport.open(dir, { readOnly: true }))), 'EINVAL');
  t.is(codeOf(await t.throwsAsync(FileExport.stat(dir))), 'EINVAL');
  t.is(codeOf(await t.throwsAsync(FileExport.stat(path.join(dir, 'missing')))), 'ENOENT');
});

test('file: stat reports allocated bytes growing with writes', async (t) => {
  const file = await newFile(t, 16 * MiB);
  const e = await openFile(t, file);
  t.is((await e.stat()).allocatedBytes, 0);
  await e.write(0, pattern(MiB, 1), NO);
  await e.flush();
  const s = await e.stat();
  t.is(s.size, 16 * MiB);
  t.true(s.allocatedBytes >= MiB && s.allocatedBytes < 2 * MiB, `${s.allocatedBytes}`);
  t.is((await FileExport.stat(file)).allocatedBytes, s.allocatedBytes);
});

// ---------------------------------------------------------------------------
// FileExport on a block device (loop device over a sparse file)

function attachLoop(t: T, backing: string): string {
  let dev: string;
  try {
    dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
  } catch (err) {
    throw new Error(
      `losetup -f --show failed: cannot test the block-device path (needs root and loop devices): ${(err as Error).message}`,
      { cause: err },
    );
  }
  const detach = () => {
    try {
      execFileSync('losetup', ['-d', dev]);
    } catch {
      // already detached
    }
  };
  process.once('exit', detach);
  t.teardown(() => {
    detach();
    process.removeListener('exit', detach);
  });
  return dev;
}

test('block device: size, status, model operations, trim/zero via fallocate', async (t) => {
  const backing = await newFile(t, 32 * MiB, 'backing.img');
  const dev = attachLoop(t, backing);
  t.true(fs.statSync(dev).isBlockDevice());

  const info = await FileExport.stat(dev);
  t.deepEqual(info, { path: dev, size: 32 * MiB, allocatedBytes: 32 * MiB, isBlockDevice: true });

  const e = await openFile(t, dev);
  t.true(e.isBlockDevice);
  t.is(e.size, 32 * MiB);
  t.true(e.capabilities.multiConn && e.capabilities.trim && e.capabilities.zero);
  t.deepEqual(await e.blockStatus(0, 32 * MiB), [{ length: 32 * MiB, flags: 0 }]);
  t.deepEqual(await e.blockStatus(MiB, 10), [{ length: 10, flags: 0 }]);
  const sparse = await e.readSparse(0, MiB);
  t.is(sparse.length, 1);
  t.true(isZero(sparse[0]!.data!));

  await modelTest(t, e, { seed: 7, ops: 250, trimGranularity: 512 });

  // Unaligned zero: exact; the aligned middle goes through fallocate.
  await e.write(0, Buffer.alloc(MiB, 0x77), NO);
  await e.zero(100, 600 * KiB, { fua: true, noHole: false, fastZero: false });
  await e.zero(700 * KiB + 3, 200 * KiB, { fua: true, noHole: true, fastZero: false });
  const b = await e.read(0, MiB);
  const expect = Buffer.alloc(MiB, 0x77);
  expect.fill(0, 100, 100 + 600 * KiB);
  expect.fill(0, 700 * KiB + 3, 900 * KiB + 3);
  t.true(b.equals(expect));

  // Fast zero: the loop driver offloads write-zeroes, so both forms are fast.
  await e.zero(2 * MiB, MiB, { fua: false, noHole: false, fastZero: true });
  await e.zero(4 * MiB, MiB, { fua: false, noHole: true, fastZero: true });

  // Trimming the device punches holes in the backing file.
  await e.write(8 * MiB, pattern(4 * MiB, 3), FUA);
  const before = fs.statSync(backing).blocks;
  await e.trim(8 * MiB, 4 * MiB, FUA);
  const after = fs.statSync(backing).blocks;
  t.true(before - after >= (4 * MiB) / 512 - 8, `backing blocks ${before} -> ${after}`);
  t.true(isZero(await e.read(8 * MiB, 4 * MiB)));

  // A trim smaller than a sector changes nothing (and succeeds).
  await e.write(16 * MiB, Buffer.alloc(4096, 0x42), NO);
  await e.trim(16 * MiB + 10, 400, NO);
  t.true((await e.read(16 * MiB, 4096)).equals(Buffer.alloc(4096, 0x42)));

  // Read-only opens of the device refuse writes.
  const ro = await openFile(t, dev, true);
  t.is(codeOf(await t.throwsAsync(ro.write(0, Buffer.alloc(512), NO))), 'EPERM');
  t.true((await ro.read(8 * MiB, 4096)).equals(Buffer.alloc(4096)));
});

// ---------------------------------------------------------------------------
// FileExport on file systems lacking some fallocate modes

test('tmpfs (no ZERO_RANGE): noHole zero punches and re-allocates; fastZero works', async (t) => {
  const dir = fs.mkdtempSync('/dev/shm/rewind-storage-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'disk.img');
  await FileExport.create(file, 4 * MiB);
  const e = await openFile(t, file);
  await e.write(0, pattern(4 * MiB, 6), NO);
  const full = (await e.stat()).allocatedBytes;
  t.is(full, 4 * MiB);
  await e.zero(100, MiB, { fua: false, noHole: true, fastZero: true });
  t.is((await e.stat()).allocatedBytes, full, 'allocation kept');
  const expect = Buffer.from(pattern(4 * MiB, 6));
  expect.fill(0, 100, 100 + MiB);
  t.true((await e.read(0, 4 * MiB)).equals(expect));
  await e.zero(2 * MiB, MiB, { fua: false, noHole: false, fastZero: true });
  t.is((await e.stat()).allocatedBytes, full - MiB, 'hole punched');
  expect.fill(0, 2 * MiB, 3 * MiB);
  t.true((await e.read(0, 4 * MiB)).equals(expect));
  await modelTest(t, e, { seed: 11, ops: 150, trimGranularity: 1 });
});

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

test('ext2 (punch only, no ZERO_RANGE or preallocation): zero falls back to writing; fastZero refuses untouched', async (t) => {
  // Needs root: a loop device with an ext2 file system mounted on it.
  const dir = tempDir(t);
  const fsImage = path.join(dir, 'fs.img');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  await FileExport.create(fsImage, 64 * MiB);
  run('mkfs.ext2', ['-q', '-F', fsImage]);
  const dev = attachLoop(t, fsImage);
  run('mount', [dev, mnt]);
  const unmount = () => {
    try {
      run('umount', [mnt]);
    } catch {
      // not mounted
    }
  };
  process.once('exit', unmount);
  // Teardowns run in reverse order: unmount before the loop device detaches.
  t.teardown(() => {
    unmount();
    process.removeListener('exit', unmount);
  });

  const file = path.join(mnt, 'disk.img');
  await FileExport.create(file, 4 * MiB);
  const e = await FileExport.open(file);
  t.teardown(() => e.close());
  await e.write(0, pattern(4 * MiB, 12), NO);
  await e.flush();
  const full = (await e.stat()).allocatedBytes;
  const expect = Buffer.from(pattern(4 * MiB, 12));

  // fastZero + noHole: no cheap way to zero without a hole -> ENOTSUP, data untouched.
  const err = (await t.throwsAsync(e.zero(4096, MiB, { fua: false, noHole: true, fastZero: true }))) as NodeJS.ErrnoException;
  t.is(err.code, 'ENOTSUP');
  t.true((await e.read(0, 4 * MiB)).equals(expect), 'refused fast zero changed nothing');
  t.is((await e.stat()).allocatedBytes, full);

  // noHole without fastZero: zeroes written, allocation kept.
  await e.zero(4096 + 7, MiB + 3, { fua: true, noHole: true, fastZero: false });
  expect.fill(0, 4096 + 7, 4096 + 7 + MiB + 3);
  t.true((await e.read(0, 4 * MiB)).equals(expect));
  t.is((await e.stat()).allocatedBytes, full, 'no hole made');
  t.is((await e.blockStatus(0, 4 * MiB))[0]!.flags, 0);

  // Without noHole a punch is fine, and fast.
  await e.zero(2 * MiB, MiB, { fua: false, noHole: false, fastZero: true });
  expect.fill(0, 2 * MiB, 3 * MiB);
  t.true((await e.read(0, 4 * MiB)).equals(expect));
  t.true((await e.stat()).allocatedBytes < full, 'punched');
  t.true((await e.blockStatus(2 * MiB, MiB)).every((x) => x.flags === HZ));
  await modelTest(t, e, { seed: 12, ops: 150, trimGranularity: 1 });
  await e.close();
});

// ---------------------------------------------------------------------------
// MemoryExport

test('memory: random operations match a model', async (t) => {
  const e = new MemoryExport(16 * MiB);
  await modelTest(t, e, { seed: 3, ops: 600, trimGranularity: 1 });
  const small = new MemoryExport(3 * MiB + 12345, { pageSize: 4096 });
  await modelTest(t, small, { seed: 4, ops: 300, trimGranularity: 1 });
});

test('memory: aligned and unaligned writes, sparse pages and block status', async (t) => {
  const e = new MemoryExport(4 * MiB);
  t.deepEqual(await e.blockStatus(0, 4 * MiB), [{ length: 4 * MiB, flags: HZ }]);
  t.is(e.pageCount, 0);
  await e.write(65536 - 3, Buffer.from('abcdef'), NO); // straddles pages 0 and 1
  t.is(e.pageCount, 2);
  t.is((await e.read(65536 - 3, 6)).toString(), 'abcdef');
  t.true(isZero(await e.read(0, 65536 - 3)));
  await e.write(MiB, pattern(65536, 1), NO);
  t.deepEqual(await e.blockStatus(0, 4 * MiB), [
    { length: 128 * KiB, flags: 0 },
    { length: MiB - 128 * KiB, flags: HZ },
    { length: 64 * KiB, flags: 0 },
    { length: 3 * MiB - 64 * KiB, flags: HZ },
  ]);
  t.deepEqual(await e.blockStatus(10, 20), [{ length: 20, flags: 0 }]);
  t.deepEqual(await e.readSparse(MiB - 10, 20), [
    { offset: MiB - 10, length: 10 },
    { offset: MiB, length: 10, data: pattern(65536, 1).subarray(0, 10) },
  ]);

  // Trim of a whole page drops it; partial trims zero in place.
  await e.trim(MiB, 65536, NO);
  t.is(e.pageCount, 2);
  await e.trim(65536 - 1, 2, NO);
  t.is((await e.read(65536 - 3, 6)).toString('latin1'), 'ab\0\0ef');
  // noHole keeps pages; without it they go.
  await e.write(0, Buffer.alloc(128 * KiB, 9), NO);
  await e.zero(0, 128 * KiB, { fua: false, noHole: true, fastZero: true });
  t.is(e.pageCount, 2);
  t.true(isZero(await e.read(0, 128 * KiB)));
  t.deepEqual((await e.blockStatus(0, 128 * KiB))[0], { length: 128 * KiB, flags: 0 });
  await e.zero(0, 128 * KiB, { fua: true, noHole: false, fastZero: true });
  t.is(e.pageCount, 0);
  t.deepEqual(await e.blockStatus(0, 4 * MiB), [{ length: 4 * MiB, flags: HZ }]);
  t.is(e.stats.fuaOps, 1);
});

test('memory: a huge sparse export and the extent cap', async (t) => {
  const e = new MemoryExport(2 ** 40, { pageSize: 4096, maxExtents: 16 });
  await e.write(2 ** 40 - 4096, pattern(4096, 1), NO);
  t.deepEqual(await e.blockStatus(2 ** 40 - 8192, 8192), [
    { length: 4096, flags: HZ },
    { length: 4096, flags: 0 },
  ]);
  for (let i = 0; i < 40; i++) await e.write(i * 8192, pattern(10, i), NO);
  const ext = await e.blockStatus(0, 40 * 8192);
  t.is(ext.length, 16);
  checkExtents(t, e, 0, 40 * 8192, ext);
  await e.zero(0, 2 ** 39, { fua: false, noHole: false, fastZero: false }); // walks the map, not the range
  t.is(e.pageCount, 1);
});

test('memory: read-only, fault injection, hooks and slow zero', async (t) => {
  const ro = new MemoryExport(MiB, { readOnly: true });
  t.true(ro.readOnly);
  t.false(ro.capabilities.trim);
  t.true(ro.capabilities.blockStatus && ro.capabilities.cache);
  for (const p of [ro.write(0, Buffer.alloc(1), NO), ro.trim(0, 1, NO), ro.zero(0, 1, { fua: false, noHole: false, fastZero: false })]) {
    t.is(codeOf(await t.throwsAsync(p)), 'EPERM');
  }
  t.true(isZero(await ro.read(0, 100)));

  const e = new MemoryExport(MiB);
  e.failNext('write', 'ENOSPC');
  e.failNext('read', 'EIO', 2);
  const w = (await t.throwsAsync(e.write(0, Buffer.from('x'), NO))) as NodeJS.ErrnoException;
  t.is(w.code, 'ENOSPC');
  t.is(w.errno, 28);
  t.is(e.pageCount, 0, 'a failed write changes nothing');
  await e.write(0, Buffer.from('y'), NO);
  t.is(codeOf(await t.throwsAsync(e.read(0, 1))), 'EIO');
  t.is(codeOf(await t.throwsAsync(e.readSparse(0, 1))), 'EIO');
  t.is((await e.read(0, 1)).toString(), 'y');
  e.failNext('flush', 'EIO');
  e.clearFailures();
  await e.flush();

  const seen: string[] = [];
  const hooked = new MemoryExport(MiB, {
    hooks: {
      before: async (op, offset, length) => {
        seen.push(`${op}:${offset}:${length}`);
        if (op === 'cache') throw Object.assign(new Error('nope'), { code: 'EINVAL' });
      },
    },
  });
  await hooked.write(5, Buffer.alloc(3), NO);
  t.is(codeOf(await t.throwsAsync(hooked.cache(0, 10))), 'EINVAL');
  t.deepEqual(seen, ['write:5:3', 'cache:0:10']);

  const slow = new MemoryExport(MiB, { slowZero: true });
  await slow.write(0, Buffer.alloc(10, 1), NO);
  t.is(codeOf(await t.throwsAsync(slow.zero(0, 10, { fua: false, noHole: false, fastZero: true }))), 'ENOTSUP');
  t.deepEqual(await slow.read(0, 10), Buffer.alloc(10, 1), 'refused fast zero changed nothing');
  await slow.zero(0, 10, { fua: false, noHole: false, fastZero: false });
  t.true(isZero(await slow.read(0, 10)));
  slow.close();
  slow.close();
  t.is(slow.stats.closes, 2);
  t.true(isZero(await slow.read(0, 10)), 'close does not destroy shared data');
});
