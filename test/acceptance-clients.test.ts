/**
 * Acceptance for the NBD target: a live `rewind serve`, driven only by
 * independent clients from Debian packages (libnbd's nbdinfo, nbdcopy and
 * nbdfuse; qemu-io and qemu-img; fio), plus a real ext4 through nbdfuse and
 * a kill -9 of the daemon under load.
 *
 * A missing tool fails the test loudly; nothing is skipped.
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { run, startDaemon, tempDir, type TestDaemon, haveCommand, sleep } from './helpers/daemon';
import { checkLedger, requireLedgerTools, startLedgerWriter } from './helpers/ledger';

const MiB = 1024 * 1024;

function need(...cmds: string[]): void {
  const missing = cmds.filter((c) => (path.isAbsolute(c) ? !fs.existsSync(c) : !haveCommand(c)));
  if (missing.length) {
    throw new Error(`required tools missing: ${missing.join(', ')} (run tools/install-system-deps.sh)`);
  }
}

async function ok(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
  return r.stdout;
}

async function createVolume(d: TestDaemon, name: string, size: string): Promise<void> {
  const r = await d.cli(['volume', 'create', name, '--size', size]);
  if (r.code !== 0) throw new Error(`volume create failed: ${r.stderr}`);
}

function sha256File(p: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

test.serial('nbdinfo lists the exports with sizes and maps holes and data through base:allocation', async (t) => {
  need('nbdinfo', 'qemu-io');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'maptest', '64M');
  const list = JSON.parse(await ok('nbdinfo', ['--json', '--list', d.nbdUri('')]));
  const exports = Object.fromEntries(list.exports.map((e: any) => [e['export-name'], e]));
  t.is(exports.maptest['export-size'], 64 * MiB);
  t.is(exports.default['export-size'], 1024 * MiB);
  t.true(exports.maptest.contexts.includes('base:allocation'));
  t.true(exports.maptest.can_multi_conn);

  // Data only in [1 MiB, 3 MiB); everything else a hole.
  await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 2M', d.nbdUri('maptest')]);
  const map = JSON.parse(await ok('nbdinfo', ['--map', '--json', d.nbdUri('maptest')]));
  const ranges = map.map((e: any) => [e.offset, e.length, e.type]);
  t.deepEqual(ranges[0], [0, 1 * MiB, 3], 'leading hole (HOLE|ZERO)');
  t.deepEqual(ranges[1], [1 * MiB, 2 * MiB, 0], 'data');
  t.is(ranges[2][0], 3 * MiB);
  t.is(ranges[2][2], 3, 'trailing hole');
  t.is(ranges[ranges.length - 1][0] + ranges[ranges.length - 1][1], 64 * MiB);

  // The same over the Unix socket.
  const viaUnix = JSON.parse(await ok('nbdinfo', ['--json', d.nbdUnixUri('maptest')]));
  t.is(viaUnix.exports[0]['export-size'], 64 * MiB);
});

test.serial('qemu-io patterns aligned and unaligned, discard and write-zeroes; qemu-img compare says identical', async (t) => {
  need('qemu-io', 'qemu-img');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'qio', '32M');
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ref = path.join(dir, 'ref.img');
  fs.writeFileSync(ref, '');
  fs.truncateSync(ref, 32 * MiB);
  const ops = [
    'write -P 0xab 0 1M',
    'write -P 0xcd 1536 4096',
    'write -P 0x11 3M 1000',
    'write -P 0x22 5000001 77777',
    'discard 512k 256k',
    'write -z 2M 1M',
    'write -P 0x33 10M 4M',
    'write -z -u 11M 1M',
    'write -P 0x44 31M 1M',
  ];
  const args = (target: string) => ['-f', 'raw', ...ops.flatMap((o) => ['-c', o]), target];
  await ok('qemu-io', args(d.nbdUri('qio')));
  await ok('qemu-io', args(ref));
  // Read back with patterns, aligned and unaligned.
  const reads = [
    'read -P 0xab 0 1536',
    'read -P 0xab 5632 518656',
    'read -P 0 512k 256k',
    'read -P 0xab 768k 256k',
    'read -P 0xcd 1536 4096',
    'read -P 0x11 3M 1000',
    'read -P 0x22 5000001 77777',
    'read -P 0 2M 1M',
    'read -P 0x33 10M 1M',
    'read -P 0 11M 1M',
    'read -P 0x33 12M 2M',
    'read -P 0x44 31M 1M',
  ];
  const out = await ok('qemu-io', ['-f', 'raw', ...reads.flatMap((r) => ['-c', r]), d.nbdUri('qio')]);
  t.notRegex(out, /Pattern verification failed/);
  t.is((out.match(/^read /gm) ?? []).length, reads.length);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, d.nbdUri('qio')]);
  t.is(cmp.code, 0, cmp.stdout + cmp.stderr);
  t.regex(cmp.stdout, /Images are identical/);
});

test.serial('nbdcopy copies a 256 MiB random file into an export and back with equal checksums', async (t) => {
  need('nbdcopy');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'copy', '256M');
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src.bin');
  const back = path.join(dir, 'back.bin');
  const fd = fs.openSync(src, 'w');
  for (let i = 0; i < 256; i++) fs.writeSync(fd, crypto.randomBytes(MiB));
  fs.closeSync(fd);
  await ok('nbdcopy', [src, d.nbdUri('copy')]);
  await ok('nbdcopy', [d.nbdUnixUri('copy'), back]);
  t.is(sha256File(back), sha256File(src));
});

async function fio(args: string[]): Promise<any> {
  const outText = await ok('fio', [...args, '--output-format=json'], 300_000);
  return JSON.parse(outText.slice(outText.indexOf('{')));
}

test.serial('fio 4k random writes at iodepth 32 with crc32c verify: no errors', async (t) => {
  need('fio');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'fio', '256M');
  const r = await fio([
    '--name=randwrite-verify',
    '--ioengine=nbd',
    `--uri=${d.nbdUri('fio')}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=32',
    '--size=128M',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
  ]);
  const job = r.jobs[0];
  t.is(job.error, 0);
  t.true(job.write.io_bytes >= 128 * MiB);
  t.true(job.read.io_bytes >= 128 * MiB, 'verify phase read everything back');
});

test.serial('fio two jobs on two connections (multi-conn) with verify: no errors', async (t) => {
  need('fio');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'fio2', '256M');
  const r = await fio([
    '--name=multiconn',
    '--ioengine=nbd',
    `--uri=${d.nbdUri('fio2')}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    '--numjobs=2',
    '--size=64M',
    '--offset_increment=64M',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
  ]);
  t.is(r.jobs.length, 2);
  for (const job of r.jobs) {
    t.is(job.error, 0);
    t.true(job.read.io_bytes >= 64 * MiB);
  }
});

/** Presents an export as a file with nbdfuse; returns the file and a stop function. */
async function nbdfuse(uri: string, dir: string): Promise<{ file: string; stop(): Promise<void> }> {
  const mnt = path.join(dir, 'fuse');
  fs.mkdirSync(mnt, { recursive: true });
  const child = spawn('nbdfuse', [mnt, uri], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (s) => (err += s));
  const file = path.join(mnt, 'nbd');
  for (let i = 0; i < 100 && !fs.existsSync(file); i++) await sleep(100);
  if (!fs.existsSync(file)) {
    child.kill('SIGKILL');
    throw new Error(`nbdfuse did not present ${file}: ${err}`);
  }
  return {
    file,
    async stop() {
      await run('fusermount3', ['-u', mnt]);
      await new Promise<void>((r) => {
        if (child.exitCode !== null) return r();
        child.once('exit', () => r());
        setTimeout(() => {
          child.kill('SIGKILL');
          r();
        }, 5000);
      });
    },
  };
}

function writeTree(root: string, seed: number): Map<string, string> {
  const sums = new Map<string, string>();
  let x = seed;
  const rnd = () => (x = (x * 1103515245 + 12345) >>> 0);
  for (let dirN = 0; dirN < 8; dirN++) {
    const dir = path.join(root, `dir${dirN}`, `sub${dirN % 3}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < 12; f++) {
      const size = 1 + (rnd() % (256 * 1024));
      const data = crypto.createHash('sha512').update(`${seed}-${dirN}-${f}`).digest();
      const buf = Buffer.alloc(size);
      for (let i = 0; i < size; i += data.length) data.copy(buf, i);
      const p = path.join(dir, `file${f}.bin`);
      fs.writeFileSync(p, buf);
      sums.set(path.relative(root, p), crypto.createHash('sha256').update(buf).digest('hex'));
    }
  }
  return sums;
}

function checkTree(root: string, sums: Map<string, string>): string[] {
  const bad: string[] = [];
  for (const [rel, sum] of sums) {
    const p = path.join(root, rel);
    if (!fs.existsSync(p) || crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex') !== sum) bad.push(rel);
  }
  return bad;
}

test.serial('nbdfuse + mkfs.ext4 + mount -o loop: a file tree survives umount, e2fsck -fn and remount', async (t) => {
  need('nbdfuse', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'fusermount3');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'fs', '256M');
  const dir = tempDir();
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  let fuse = await nbdfuse(d.nbdUri('fs'), dir);
  t.teardown(async () => {
    await run('umount', [mnt]);
    await fuse.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await ok('mkfs.ext4', ['-q', '-F', fuse.file]);
  await ok('mount', ['-o', 'loop', fuse.file, mnt]);
  const sums = writeTree(mnt, 42);
  await ok('umount', [mnt]);
  const fsck = await run('e2fsck', ['-fn', fuse.file]);
  t.is(fsck.code, 0, fsck.stdout + fsck.stderr);
  await fuse.stop();

  // Restart the daemon too: the filesystem lives in the volume, not in memory.
  await d.restart();
  fuse = await nbdfuse(d.nbdUri('fs'), dir);
  await ok('mount', ['-o', 'loop,ro', fuse.file, mnt]);
  t.deepEqual(checkTree(mnt, sums), []);
  t.is(sums.size, 96);
  await ok('umount', [mnt]);
});

test.serial('kill -9 under fio load: every write acknowledged before the last acknowledged FLUSH survives', async (t) => {
  need('fio');
  await requireLedgerTools();
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'load', '256M');
  await createVolume(d, 'ledger', '64M');

  for (let round = 0; round < 3; round++) {
    // Background load on one volume, and the flush ledger on another.
    const load = spawn(
      'fio',
      [
        '--name=load',
        '--thread',
        '--ioengine=nbd',
        `--uri=${d.nbdUri('load')}`,
        '--rw=randwrite',
        '--bs=64k',
        '--iodepth=16',
        '--size=256M',
        '--time_based',
        '--runtime=60',
      ],
      { stdio: 'ignore' },
    );
    const writer = startLedgerWriter(d.nbdUri('ledger'), round, { blocks: 16384, flushEvery: 8 });
    const deadline = Date.now() + 30_000;
    const target = 200 + Math.floor(Math.random() * 600);
    while (writer.lastFlushed < target && Date.now() < deadline) await sleep(20);
    t.true(writer.lastFlushed >= target, `writer made progress (${writer.lastFlushed})`);
    const flushedAtKill = writer.lastFlushed;
    await d.kill('SIGKILL');
    load.kill('SIGKILL');
    writer.process.kill('SIGKILL');
    await d.restart();
    const check = await checkLedger(d.nbdUri('ledger'), round, flushedAtKill);
    t.is(check.code, 0, `round ${round}: ${check.stdout}${check.stderr}`);
    t.regex(check.stdout, new RegExp(`^verified ${flushedAtKill + 1} blocks`, 'm'));
  }
});

test.serial('a real ENOSPC from the backing file becomes an NBD error; earlier data survives and the daemon keeps serving', async (t) => {
  need('qemu-io', 'mount', 'umount');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  const dir = tempDir();
  const mnt = path.join(dir, 'small');
  fs.mkdirSync(mnt);
  await ok('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
  t.teardown(async () => {
    await run('umount', [mnt]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const img = path.join(mnt, 'disk.raw');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 * MiB); // sparse: far larger than the filesystem
  const created = await d.cli(['volume', 'create', 'tight', '--path', img]);
  t.is(created.code, 0, created.stderr);
  await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 2M', d.nbdUri('tight')]);
  const full = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 4M 16M', d.nbdUri('tight')]);
  t.regex(full.stdout + full.stderr, /No space left on device/);
  t.true(d.isRunning, 'daemon still up');
  const back = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x61 0 2M', d.nbdUri('tight')]);
  t.is(back.code, 0, back.stdout + back.stderr);
  t.notRegex(back.stdout, /Pattern verification failed/);
  // Other volumes are unaffected.
  await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x63 0 1M', '-c', 'read -P 0x63 0 1M', d.nbdUri('default')]);
});
