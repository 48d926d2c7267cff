/**
 * The rewind_native addon against a real file system (the temp dir must
 * support sparse files and fallocate, as ext4/xfs/btrfs/tmpfs do).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as native from '../src/native';

const KiB = 1024;
const MiB = 1024 * KiB;

function tempFile(t: { teardown(fn: () => void): void }, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-native-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, name);
}

function openRw(t: { teardown(fn: () => void): void }, file: string): number {
  const fd = fs.openSync(file, 'w+');
  t.teardown(() => {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed by the test
    }
  });
  return fd;
}

/** A descriptor number no process can have open (above any RLIMIT_NOFILE): EBADF. */
function badFd(): number {
  return 0x3fffffff;
}

function fill(fd: number, offset: number, length: number, byte: number): void {
  fs.writeSync(fd, Buffer.alloc(length, byte), 0, length, offset);
}

test('the addon loads and exposes its functions', (t) => {
  const raw = native.loadNative();
  for (const name of [
    'fallocate',
    'fallocateSync',
    'fdatasync',
    'fdatasyncSync',
    'seekData',
    'seekHole',
    'mapExtents',
    'blockDeviceSize',
    'blockDeviceInfo',
    'fadviseWillNeed',
  ]) {
    t.is(typeof (raw as unknown as Record<string, unknown>)[name], 'function', name);
  }
  t.true(native.nativeAvailable());
  t.true(native.nativeCandidates().some((p) => p.endsWith(path.join('build', 'Release', 'rewind_native.node'))));
});

test('punching a hole frees blocks and shows up in SEEK_DATA/SEEK_HOLE', async (t) => {
  const file = tempFile(t, 'punch.img');
  const fd = openRw(t, file);
  fill(fd, 0, 1 * MiB, 0xab);
  await native.fdatasync(fd);
  const before = fs.fstatSync(fd).blocks;
  t.true(before * 512 >= 1 * MiB, `allocated ${before * 512}`);

  t.is(native.seekData(fd, 0), 0);
  t.is(native.seekHole(fd, 0), 1 * MiB); // end of file is a hole

  await native.fallocate(fd, 'punch', 256 * KiB, 256 * KiB);
  const after = fs.fstatSync(fd).blocks;
  t.is(before - after, (256 * KiB) / 512, 'exactly the punched blocks are freed');
  t.is(fs.fstatSync(fd).size, 1 * MiB, 'punch keeps the size');

  t.is(native.seekData(fd, 0), 0);
  t.is(native.seekHole(fd, 0), 256 * KiB);
  t.is(native.seekData(fd, 256 * KiB), 512 * KiB);
  t.is(native.seekHole(fd, 512 * KiB), 1 * MiB);
  t.is(native.seekData(fd, 1 * MiB), -1, 'ENXIO past the last data is -1');
  t.is(native.seekHole(fd, 2 * MiB), -1, 'ENXIO past the end is -1');

  const buf = Buffer.alloc(512 * KiB);
  fs.readSync(fd, buf, 0, buf.length, 128 * KiB);
  t.true(buf.subarray(0, 128 * KiB).every((b) => b === 0xab));
  t.true(buf.subarray(128 * KiB, 384 * KiB).every((b) => b === 0));
  t.true(buf.subarray(384 * KiB).every((b) => b === 0xab));

  t.deepEqual(await native.mapExtents(fd, 0, 1 * MiB, 1 * MiB), [
    { length: 256 * KiB, data: true },
    { length: 256 * KiB, data: false },
    { length: 512 * KiB, data: true },
  ]);
  // From inside the hole; limit beyond the end of file counts as hole.
  t.deepEqual(await native.mapExtents(fd, 300 * KiB, 10, 2 * MiB), [{ length: 212 * KiB, data: false }]);
  t.deepEqual(await native.mapExtents(fd, 600 * KiB, 2 * MiB, 2 * MiB), [
    { length: 424 * KiB, data: true },
    { length: 1 * MiB, data: false },
  ]);
  t.deepEqual(await native.mapExtents(fd, 0, 1 * MiB, 1 * MiB, 2), [
    { length: 256 * KiB, data: true },
    { length: 256 * KiB, data: false },
  ]);
  t.deepEqual(await native.mapExtents(fd, 1 * MiB, 10, 1 * MiB), [], 'nothing at or past the limit');
});

test('unaligned punch zeroes exactly the range and keeps neighbours', async (t) => {
  const file = tempFile(t, 'unaligned.img');
  const fd = openRw(t, file);
  fill(fd, 0, 64 * KiB, 0x5a);
  native.fallocateSync(fd, 'punch', 1000, 10000);
  const buf = fs.readFileSync(file);
  t.true(buf.subarray(0, 1000).every((b) => b === 0x5a));
  t.true(buf.subarray(1000, 11000).every((b) => b === 0));
  t.true(buf.subarray(11000).every((b) => b === 0x5a));
});

test('zero-range reads back zeroes and keeps the allocation', async (t) => {
  const file = tempFile(t, 'zero.img');
  const fd = openRw(t, file);
  fill(fd, 0, 1 * MiB, 0x11);
  await native.fdatasync(fd);
  const before = fs.fstatSync(fd).blocks;
  try {
    await native.fallocate(fd, 'zero', 4096 + 100, 200 * KiB);
  } catch (err) {
    // tmpfs has no ZERO_RANGE; say so rather than pass vacuously.
    t.fail(`ZERO_RANGE unsupported in ${os.tmpdir()}: ${(err as Error).message}`);
    return;
  }
  native.fallocateSync(fd, 'zero-keep-size', 900 * KiB, 10);
  const buf = fs.readFileSync(file);
  t.true(buf.subarray(0, 4196).every((b) => b === 0x11));
  t.true(buf.subarray(4196, 4196 + 200 * KiB).every((b) => b === 0));
  t.true(buf.subarray(4196 + 200 * KiB, 900 * KiB).every((b) => b === 0x11));
  t.true(buf.subarray(900 * KiB, 900 * KiB + 10).every((b) => b === 0));
  t.true(buf.subarray(900 * KiB + 10).every((b) => b === 0x11));
  t.is(fs.fstatSync(fd).size, 1 * MiB);
  t.true(fs.fstatSync(fd).blocks >= before, 'zero-range does not deallocate');
});

test('alloc allocates a hole; alloc-keep-size does not grow the file', async (t) => {
  const file = tempFile(t, 'alloc.img');
  const fd = openRw(t, file);
  fs.ftruncateSync(fd, 4 * MiB);
  t.is(fs.fstatSync(fd).blocks, 0);
  await native.fallocate(fd, 'alloc', 0, 1 * MiB);
  t.true(fs.fstatSync(fd).blocks * 512 >= 1 * MiB);
  await native.fallocate(fd, 'alloc-keep-size', 4 * MiB, 1 * MiB);
  t.is(fs.fstatSync(fd).size, 4 * MiB);
  await native.fallocate(fd, 'alloc', 4 * MiB, 1 * MiB);
  t.is(fs.fstatSync(fd).size, 5 * MiB);
});

test('fdatasync and fdatasyncSync succeed on a file with dirty data', async (t) => {
  const file = tempFile(t, 'sync.img');
  const fd = openRw(t, file);
  fill(fd, 0, 64 * KiB, 1);
  t.is(await native.fdatasync(fd), undefined);
  fill(fd, 0, 64 * KiB, 2);
  t.notThrows(() => native.fdatasyncSync(fd));
  // Many concurrent calls all settle.
  await Promise.all(Array.from({ length: 32 }, () => native.fdatasync(fd)));
  t.pass();
});

test('fadviseWillNeed accepts a range and fails on a bad fd', (t) => {
  const file = tempFile(t, 'fadvise.img');
  const fd = openRw(t, file);
  fill(fd, 0, 64 * KiB, 3);
  t.notThrows(() => native.fadviseWillNeed(fd, 0, 64 * KiB));
  t.notThrows(() => native.fadviseWillNeed(fd, 0, 0));
  const err = t.throws(() => native.fadviseWillNeed(badFd(), 0, 4096)) as NodeJS.ErrnoException;
  t.is(err.code, 'EBADF');
});

test('errors carry the errno name, number, syscall and a readable message', async (t) => {
  const bad = badFd();
  const e1 = (await t.throwsAsync(native.fallocate(bad, 'punch', 0, 4096))) as NodeJS.ErrnoException;
  t.is(e1.code, 'EBADF');
  t.is(e1.errno, 9);
  t.is(e1.syscall, 'fallocate');
  t.is(e1.message, 'fallocate(punch): Bad file descriptor');
  t.true(e1 instanceof Error);

  const e2 = (await t.throwsAsync(native.fdatasync(bad))) as NodeJS.ErrnoException;
  t.is(e2.code, 'EBADF');
  t.is(e2.errno, 9);

  const e3 = t.throws(() => native.seekData(bad, 0)) as NodeJS.ErrnoException;
  t.is(e3.code, 'EBADF');
  const e4 = t.throws(() => native.seekHole(-1, 0)) as NodeJS.ErrnoException;
  t.is(e4.code, 'EBADF');
  t.is((t.throws(() => native.fdatasyncSync(bad)) as NodeJS.ErrnoException).code, 'EBADF');
  t.is((t.throws(() => native.fallocateSync(bad, 'zero', 0, 1)) as NodeJS.ErrnoException).code, 'EBADF');
  t.is((await t.throwsAsync(native.mapExtents(bad, 0, 1, 10)))!.message, 'mapExtents: Bad file descriptor');
  t.is(((await t.throwsAsync(native.mapExtents(bad, 0, 1, 10))) as NodeJS.ErrnoException).code, 'EBADF');
});

test('fallocate on a read-only descriptor is EBADF; invalid ranges are EINVAL', async (t) => {
  const file = tempFile(t, 'ro.img');
  fs.writeFileSync(file, Buffer.alloc(8192, 1));
  const fd = fs.openSync(file, 'r');
  t.teardown(() => fs.closeSync(fd));
  const e = (await t.throwsAsync(native.fallocate(fd, 'punch', 0, 4096))) as NodeJS.ErrnoException;
  t.is(e.code, 'EBADF');
  const rw = openRw(t, tempFile(t, 'inval.img'));
  const e2 = (await t.throwsAsync(native.fallocate(rw, 'punch', 0, 0))) as NodeJS.ErrnoException;
  t.is(e2.code, 'EINVAL');
  t.is(e2.errno, 22);
  t.is(e2.message, 'fallocate(punch): Invalid argument');
});

test('fallocate on a pipe is an errno-coded rejection, not a crash', async (t) => {
  // A FIFO opened O_RDWR does not block on Linux.
  const fifo = tempFile(t, 'fifo');
  const { execFileSync } = await import('node:child_process');
  execFileSync('mkfifo', [fifo]);
  const fd = fs.openSync(fifo, fs.constants.O_RDWR);
  t.teardown(() => fs.closeSync(fd));
  const e = (await t.throwsAsync(native.fallocate(fd, 'zero', 0, 4096))) as NodeJS.ErrnoException;
  t.true(['ESPIPE', 'ENODEV', 'EOPNOTSUPP'].includes(e.code!), e.code);
  t.is((t.throws(() => native.seekData(fd, 0)) as NodeJS.ErrnoException).code, 'ESPIPE');
});

test('blockDeviceSize and blockDeviceInfo reject regular files with ENOTTY', (t) => {
  const file = tempFile(t, 'notdev.img');
  const fd = openRw(t, file);
  const e = t.throws(() => native.blockDeviceSize(fd)) as NodeJS.ErrnoException;
  t.is(e.code, 'ENOTTY');
  t.is(e.errno, 25);
  t.is((t.throws(() => native.blockDeviceInfo(fd)) as NodeJS.ErrnoException).code, 'ENOTTY');
  t.is((t.throws(() => native.blockDeviceSize(badFd())) as NodeJS.ErrnoException).code, 'EBADF');
});

test('argument errors: async functions reject, sync ones throw TypeError/RangeError', async (t) => {
  const bad = native.fallocate(0, 'bogus' as native.FallocateMode, 0, 1);
  t.true(bad instanceof Promise, 'returns a promise even for bad arguments');
  await t.throwsAsync(bad, { instanceOf: TypeError });
  await t.throwsAsync(native.fallocate(0, 'punch', -1, 1), { instanceOf: RangeError });
  await t.throwsAsync(native.fallocate(0, 'punch', 1.5, 1), { instanceOf: RangeError });
  await t.throwsAsync(native.fdatasync('x' as unknown as number), { instanceOf: TypeError });
  await t.throwsAsync(native.mapExtents(0, 0, 1, 1, 0), { instanceOf: RangeError });
  t.throws(() => native.seekData(0, Number.NaN), { instanceOf: RangeError });
  t.throws(() => native.seekHole(undefined as unknown as number, 0), { instanceOf: TypeError });
  t.throws(() => native.fallocateSync(0, 'punch', 2 ** 60, 1), { instanceOf: RangeError });
});

test('alignedBuffer: zero-filled memory that O_DIRECT reads and writes accept; bad sizes are refused', (t) => {
  const file = tempFile(t, 'direct.img');
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_DIRECT);
  t.teardown(() => fs.closeSync(fd));
  for (let i = 0; i < 8; i++) {
    const b = native.alignedBuffer(64 * KiB, 4096);
    t.is(b.length, 64 * KiB);
    t.true(
      b.every((x) => x === 0),
      'zero-filled',
    );
    b.fill(i + 1);
    // Misaligned memory would make these fail with EINVAL.
    t.is(fs.writeSync(fd, b, 0, b.length, i * 64 * KiB), b.length);
    const r = native.alignedBuffer(64 * KiB, 4096);
    t.is(fs.readSync(fd, r, 0, r.length, i * 64 * KiB), r.length);
    t.true(r.equals(b));
  }
  // A plain Buffer is (almost always) not 4 KiB aligned: the kernel refuses it.
  const plain = Buffer.alloc(64 * KiB + 1).subarray(1);
  t.throws(() => fs.writeSync(fd, plain, 0, 64 * KiB, 0), { code: 'EINVAL' });
  t.throws(() => native.alignedBuffer(0, 4096), { instanceOf: RangeError });
  t.throws(() => native.alignedBuffer(4096, 3000), { instanceOf: RangeError });
});
