/**
 * Acceptance for time travel (issue "Time travel"): snapshots, clones,
 * stepping, production restore and virtual full export, through a live
 * `rewind serve` and real clients (the in-tree NBD client, qemu-img,
 * qemu-io, nbdinfo, nbdfuse + ext4, fio).
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import fc from 'fast-check';
import { NbdClient } from '../src/nbd/client';
import { STATE_HOLE } from '../src/nbd/export';
import { run, startDaemon, sleep, tempDir, haveCommand } from './helpers/daemon';
import { pattern } from './helpers/nbd-fixtures';
import { apiOk as api, cliOk as cli, fuseExport, readExport, readWhole, sha } from './helpers/live';

const MiB = 1024 * 1024;

type Op = { kind: 'write' | 'trim' | 'zero'; offset: number; length: number; seed: number };

function opData(op: Op): Buffer {
  return pattern(op.length, op.seed + 1);
}

function applyOp(img: Buffer, op: Op): void {
  if (op.kind === 'write') opData(op).copy(img, op.offset);
  else img.fill(0, op.offset, op.offset + op.length);
}

function modelAt(size: number, ops: Op[], count: number): Buffer {
  const img = Buffer.alloc(size);
  for (let i = 0; i < count; i++) applyOp(img, ops[i]!);
  return img;
}

test.serial('model check: snapshots, clones and single-write steps at random points match the model', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  const SIZE = 2 * MiB;
  let round = 0;
  const opArb = fc.record({
    kind: fc.constantFrom<'write' | 'trim' | 'zero'>('write', 'write', 'write', 'trim', 'zero'),
    offset: fc.oneof(
      fc.integer({ min: 0, max: SIZE / 4096 - 1 }).map((b) => b * 4096),
      fc.integer({ min: 0, max: SIZE - 1 }),
    ),
    length: fc.oneof(fc.constantFrom(4096, 8192, 65536), fc.integer({ min: 1, max: 100_000 })),
    seed: fc.integer({ min: 0, max: 1 << 30 }),
  });
  const caseArb = fc.record({
    ops: fc.array(fc.tuple(opArb, fc.boolean()), { minLength: 8, maxLength: 40 }),
    points: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 2, maxLength: 3 }),
    cloneOps: fc.array(opArb, { minLength: 1, maxLength: 4 }),
  });
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ ops: raw, points, cloneOps }) => {
      const vol = `mc${round++}`;
      await cli(d, ['volume', 'create', vol, '--size', '2M', '--protected']);
      const conns = await Promise.all([0, 1, 2].map(() => NbdClient.connect({ port: d.nbdPort, exportName: vol })));
      try {
        // Writes one at a time (so the i-th has seq i+1), over three connections,
        // with seals fired concurrently so the manager applies while we go.
        const ops: Op[] = [];
        const seals: Promise<unknown>[] = [];
        for (const [r, seal] of raw) {
          const op = { ...r, length: Math.min(r.length, SIZE - r.offset) };
          if (op.length <= 0) continue;
          const c = conns[ops.length % conns.length]!;
          if (op.kind === 'write') await c.write(op.offset, opData(op));
          else if (op.kind === 'trim') await c.trim(op.offset, op.length);
          else await c.zero(op.offset, op.length);
          ops.push(op);
          if (seal) seals.push(api(d, 'POST', `/v1/volumes/${vol}/seal`));
        }
        const n = ops.length;
        for (const p of points) {
          const seq = 1 + Math.min(n - 1, Math.floor(p * n));
          // Resolution names exactly the write the model did at that seq.
          const info = await api(d, 'POST', `/v1/volumes/${vol}/resolve`, { at: `@seq:${seq}` });
          const op = ops[seq - 1]!;
          if (info.seq !== seq || info.write.offset !== op.offset || info.write.length !== op.length || info.write.kind !== op.kind) {
            throw new Error(`@seq:${seq} resolved to ${JSON.stringify(info.write)}, the model did ${JSON.stringify(op)}`);
          }
          const want = modelAt(SIZE, ops, seq);
          const snap = `${vol}-s${seq}`;
          await api(d, 'POST', `/v1/volumes/${vol}/snapshots`, { at: `@seq:${seq}`, name: snap });
          const got = await readExport(d, snap, SIZE);
          if (!got.equals(want)) throw new Error(`snapshot at @seq:${seq} differs from the model`);
          // Block status: every hole reads as zero; the never-written tail is a hole.
          const c = await NbdClient.connect({ port: d.nbdPort, exportName: snap });
          try {
            let pos = 0;
            while (pos < SIZE) {
              const ext = await c.blockStatus(pos, SIZE - pos);
              for (const e of ext) {
                const len = Math.min(e.length, SIZE - pos);
                if (e.flags & STATE_HOLE && !want.subarray(pos, pos + len).equals(Buffer.alloc(len))) {
                  throw new Error(`snapshot @seq:${seq} reports a hole at ${pos}+${len} over data`);
                }
                pos += len;
              }
            }
          } finally {
            c.destroy();
          }
          // Step forward one write and back two, each matching the model.
          if (seq < n) {
            await api(d, 'POST', `/v1/views/${snap}/step`, { forward: 1 });
            if (!(await readExport(d, snap, SIZE)).equals(modelAt(SIZE, ops, seq + 1)))
              throw new Error(`step forward from @seq:${seq} differs`);
          }
          if (seq >= 2) {
            await api(d, 'POST', `/v1/views/${snap}/step`, { to: `@seq:${seq - 1}` });
            if (!(await readExport(d, snap, SIZE)).equals(modelAt(SIZE, ops, seq - 1))) throw new Error(`step to @seq:${seq - 1} differs`);
            await api(d, 'POST', `/v1/views/${snap}/step`, { forward: 1 });
            await api(d, 'POST', `/v1/views/${snap}/step`, { back: 1 });
            if (!(await readExport(d, snap, SIZE)).equals(modelAt(SIZE, ops, seq - 1)))
              throw new Error(`step back to @seq:${seq - 1} differs`);
          }
          // A clone at the same point takes writes of its own; history does not change.
          const cl = `${vol}-c${seq}`;
          await api(d, 'POST', `/v1/volumes/${vol}/clones`, { at: `@seq:${seq}`, name: cl });
          const cc = await NbdClient.connect({ port: d.nbdPort, exportName: cl });
          const cloneWant = Buffer.from(want);
          try {
            for (const r of cloneOps) {
              const op = { ...r, length: Math.min(r.length, SIZE - r.offset) };
              if (op.length <= 0) continue;
              if (op.kind === 'write') await cc.write(op.offset, opData(op));
              else if (op.kind === 'trim') await cc.trim(op.offset, op.length);
              else await cc.zero(op.offset, op.length);
              applyOp(cloneWant, op);
            }
            await cc.flush();
            if (!(await readWhole(cc, SIZE)).equals(cloneWant)) throw new Error(`clone at @seq:${seq} does not read back its writes`);
          } finally {
            cc.destroy();
          }
          const again = `${vol}-s${seq}b`;
          await api(d, 'POST', `/v1/volumes/${vol}/snapshots`, { at: `@seq:${seq}`, name: again });
          if (!(await readExport(d, again, SIZE)).equals(want)) throw new Error(`history at @seq:${seq} changed after clone writes`);
          for (const v of [snap, cl, again]) await api(d, 'DELETE', `/v1/views/${v}`);
        }
        await Promise.all(seals);
        // The source itself is untouched by all of it.
        if (!(await readWhole(conns[0]!, SIZE)).equals(modelAt(SIZE, ops, n))) throw new Error('the source volume changed');
        return true;
      } finally {
        conns.forEach((c) => c.destroy());
      }
    }),
    { numRuns: 10, seed: Number(process.env.FC_SEED ?? Date.now() % 100000), verbose: true },
  );
  t.pass();
});

test.serial('bad points get clear errors naming the valid ones; restore with clones needs --force', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'bp', '--size', '4M', '--protected']);
  await cli(d, ['volume', 'create', 'plain', '--size', '4M']);
  const before = new Date(Date.now() - 3_600_000).toISOString();
  let r = await d.cli(['snapshot', 'bp', '--at', '@seq:1']);
  t.not(r.code, 0);
  t.regex(r.stderr, /no history yet/);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'bp' });
  for (let i = 0; i < 4; i++) await c.write(i * 65536, pattern(65536, i + 1));
  await c.flush();
  c.destroy();
  await cli(d, ['seal', 'bp']);
  r = await d.cli(['snapshot', 'bp', '--at', before]);
  t.not(r.code, 0);
  t.regex(r.stderr, /before retained history: the earliest point is @seq:1 \(/);
  r = await d.cli(['snapshot', 'bp', '--at', '@seq:99']);
  t.regex(r.stderr, /after the last write: the latest point is @seq:4 \(/);
  r = await d.cli(['clone', 'bp', '--at', '@txn:9']);
  t.regex(r.stderr, /no committed transaction T_9: transactions 1\.\.1 exist/);
  r = await d.cli(['snapshot', 'bp', '--at', 'tuesday-ish']);
  t.regex(r.stderr, /no marker named "tuesday-ish"/);
  r = await d.cli(['snapshot', 'bp', '--at', '5 fortnights ago']);
  t.regex(r.stderr, /unknown time unit/);
  r = await d.cli(['snapshot', 'plain', '--at', '@seq:1']);
  t.regex(r.stderr, /not protected/);
  r = await d.cli(['clone', 'bp']);
  t.regex(r.stderr, /--at POINT is required/);
  // A point resolves to the write it names.
  const out = await cli(d, ['point', 'bp', '@seq:2']);
  t.regex(out, /seq 2, .*: write of 65536 bytes at offset 65536 on bp/);
  // Restore refuses while a clone exists, unless forced.
  await cli(d, ['clone', 'bp', '--at', '@seq:2', '--name', 'bpc']);
  r = await d.cli(['restore', 'bp', '--to', '@seq:2', '--no-progress']);
  t.not(r.code, 0);
  t.regex(r.stderr, /has 1 snapshot\(s\)\/clone\(s\) attached \(bpc\).*--force/);
  r = await d.cli(['volume', 'rm', 'bp']);
  t.regex(r.stderr, /has snapshots or clones \(bpc\)/);
  r = await d.cli(['volume', 'create', 'bpc', '--size', '1M']);
  t.regex(r.stderr, /already exists/);
  await cli(d, ['restore', 'bp', '--to', '@seq:2', '--force', '--no-progress']);
  const img = await readExport(d, 'bp', 4 * MiB);
  t.true(img.subarray(0, 65536).equals(pattern(65536, 1)));
  t.true(img.subarray(131072, 262144).equals(Buffer.alloc(131072)), 'writes after @seq:2 are rolled back');
  // A block-range restore touches only its ranges.
  const c2 = await NbdClient.connect({ port: d.nbdPort, exportName: 'bp' });
  await c2.write(0, pattern(65536, 9));
  await c2.write(131072, pattern(65536, 10));
  await c2.flush();
  c2.destroy();
  const rr = JSON.parse(
    await cli(d, ['restore', 'bp', '--to', '@seq:1', '--range', '0:16K', '--range', '128K:4K', '--force', '--no-progress', '--json']),
  );
  t.is(rr.bytesWritten, 16384 + 4096);
  const part = await readExport(d, 'bp', 4 * MiB);
  t.true(part.subarray(0, 16384).equals(pattern(65536, 1).subarray(0, 16384)), 'first range back at @seq:1');
  t.true(part.subarray(16384, 65536).equals(pattern(65536, 9).subarray(16384)), 'outside the ranges: untouched');
  t.true(part.subarray(131072, 135168).equals(Buffer.alloc(4096)), 'second range back at @seq:1 (zero then)');
  t.true(part.subarray(135168, 196608).equals(pattern(65536, 10).subarray(4096)), 'the rest of that write stays');
  const badRange = await d.cli(['restore', 'bp', '--to', '@seq:1', '--range', '4M:1M', '--force', '--no-progress']);
  t.regex(badRange.stderr, /runs past the end of the volume/);
  // The clone kept its point.
  const cl = await readExport(d, 'bpc', 4 * MiB);
  t.true(cl.subarray(65536, 131072).equals(pattern(65536, 2)));
  // The status reports what the views pin.
  const st = await api(d, 'GET', '/v1/volumes/bp/status');
  t.is(st.pinnedFrom, 1);
  await cli(d, ['clone', 'rm', 'bpc']);
  t.is((await api(d, 'GET', '/v1/volumes/bp/status')).pinnedFrom, null);
});

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 180_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.code} ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function writeTree(root: string, prefix: string, count: number): Map<string, string> {
  const sums = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const p = path.join(root, prefix, `d${i % 5}`, `f${i}.bin`);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    const data = crypto.randomBytes(2000 + ((i * 7919) % 150_000));
    fs.writeFileSync(p, data);
    sums.set(path.relative(root, p), sha(data));
  }
  return sums;
}

function checkTree(t: any, root: string, sums: Map<string, string>, what: string): void {
  for (const [rel, sum] of sums) {
    const p = path.join(root, rel);
    t.true(fs.existsSync(p), `${what}: ${rel} exists`);
    if (fs.existsSync(p)) t.is(sha(fs.readFileSync(p)), sum, `${what}: ${rel}`);
  }
}

test.serial(
  'real filesystem: a clone at a noted time shows tree A while the source takes fio writes; restore to it, then undo',
  async (t) => {
    for (const c of ['nbdfuse', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'fusermount3', 'fio']) {
      if (!haveCommand(c)) throw new Error(`${c} missing (run tools/install-system-deps.sh)`);
    }
    const d = await startDaemon();
    t.teardown(() => d.cleanup());
    // The file system takes the first 96 MiB; fio writes the rest of the volume.
    await cli(d, ['volume', 'create', 'fsv', '--size', '160M', '--protected']);
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    const src = await fuseExport(t, d.nbdUri('fsv'), path.join(dir, 'fuse-src'));
    void src.proc;
    t.teardown(() => run('umount', [mnt]));
    await must('mkfs.ext4', ['-q', '-F', src.dev, '96M']);
    await must('mount', ['-o', 'loop', src.dev, mnt]);
    const treeA = writeTree(mnt, 'A', 40);
    await must('umount', [mnt]);
    await sleep(50);
    const noted = new Date().toISOString();
    await sleep(50);
    await must('mount', ['-o', 'loop', src.dev, mnt]);
    // Delete half of tree A, write tree B.
    const keptA = new Map<string, string>();
    let i = 0;
    for (const [rel, sum] of treeA) {
      if (i++ % 2 === 0) fs.rmSync(path.join(mnt, rel));
      else keptA.set(rel, sum);
    }
    const treeB = writeTree(mnt, 'B', 30);
    await must('umount', [mnt]);

    // Meanwhile fio writes the volume's tail, past the file system.
    const fio = spawn(
      'fio',
      [
        '--name=tail',
        '--thread',
        '--ioengine=nbd',
        `--uri=${d.nbdUri('fsv')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--offset=96M',
        '--size=64M',
        '--time_based',
        '--runtime=600',
      ],
      { stdio: 'ignore' },
    );
    t.teardown(() => fio.kill('SIGKILL'));
    await sleep(1000);

    // A clone at the noted time: clean ext4 holding tree A exactly.
    const out = await cli(d, ['clone', 'fsv', '--at', noted, '--name', 'fsa']);
    t.regex(out, /created clone fsa of fsv/);
    const cl = await fuseExport(t, d.nbdUri('fsa'), path.join(dir, 'fuse-clone'));
    const fsck = await run('e2fsck', ['-fn', cl.dev]);
    t.is(fsck.code, 0, fsck.stdout + fsck.stderr);
    const cmnt = path.join(dir, 'cmnt');
    fs.mkdirSync(cmnt);
    t.teardown(() => run('umount', [cmnt]));
    await must('mount', ['-o', 'loop', cl.dev, cmnt]);
    checkTree(t, cmnt, treeA, 'clone at the noted time');
    t.false(fs.existsSync(path.join(cmnt, 'B')), 'tree B is not in the clone');
    // The clone is writable; the source does not see it.
    fs.writeFileSync(path.join(cmnt, 'clone-only.txt'), 'hello');
    await must('umount', [cmnt]);
    await run('fusermount3', ['-u', path.join(dir, 'fuse-clone')]);

    // A snapshot stays stable while fio writes and the manager applies.
    await cli(d, ['snapshot', 'fsv', '--at', 'latest', '--name', 'fsnow']);
    const h1 = sha(await readExport(d, 'fsnow', 160 * MiB));
    await sleep(2500);
    const h2 = sha(await readExport(d, 'fsnow', 160 * MiB));
    t.is(h1, h2, 'a snapshot reads the same while the source takes writes');
    fio.kill('SIGKILL');
    await sleep(200);
    await cli(d, ['snapshot', 'rm', 'fsnow']);
    await cli(d, ['clone', 'rm', 'fsa']);

    // Production restore to the noted time: tree A is back. The restore
    // disconnects the volume's clients (nbdfuse here); they reconnect after.
    const r = await cli(d, ['restore', 'fsv', '--to', noted, '--no-progress'], 300_000);
    const undo = /undo it with: rewind restore fsv --to (\S+)/.exec(r);
    t.truthy(undo, r);
    const after = await fuseExport(t, d.nbdUri('fsv'), path.join(dir, 'fuse-restored'));
    const fsck2 = await run('e2fsck', ['-fn', after.dev]);
    t.is(fsck2.code, 0, fsck2.stdout + fsck2.stderr);
    await must('mount', ['-o', 'loop', after.dev, mnt]);
    checkTree(t, mnt, treeA, 'restored volume');
    t.false(fs.existsSync(path.join(mnt, 'B')));
    await must('umount', [mnt]);
    // Undo the restore: tree B and the kept half of A again.
    await cli(d, ['restore', 'fsv', '--to', undo![1]!, '--no-progress'], 300_000);
    const undone = await fuseExport(t, d.nbdUri('fsv'), path.join(dir, 'fuse-undone'));
    await must('mount', ['-o', 'loop', undone.dev, mnt]);
    checkTree(t, mnt, treeB, 'after undoing the restore');
    checkTree(t, mnt, keptA, 'after undoing the restore');
    await must('umount', [mnt]);
    const v = await api(d, 'POST', '/v1/volumes/fsv/verify');
    t.true(v.equal, 'the replica was rolled back and forth with production');
  },
);

test.serial('third-party clients: qemu-img and qemu-io on snapshot and clone exports; export writes the same image', async (t) => {
  for (const c of ['qemu-img', 'qemu-io', 'nbdinfo'])
    if (!haveCommand(c)) throw new Error(`${c} missing (run tools/install-system-deps.sh)`);
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  await cli(d, ['volume', 'create', 'qv', '--size', '64M', '--protected']);
  await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 2M', '-c', 'write -P 0x6b 10M 1M', d.nbdUri('qv')]);
  const p = (await api(d, 'POST', '/v1/volumes/qv/resolve', { at: 'latest' })).seq as number;
  await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7c 1M 2M', '-c', 'discard 10M 1M', d.nbdUri('qv')]);
  await cli(d, ['snapshot', 'qv', '--at', `@seq:${p}`, '--name', 'qs']);
  await cli(d, ['clone', 'qv', '--at', `@seq:${p}`, '--name', 'qc']);
  // qemu-io reads the point's patterns from the snapshot, writes and reads the clone.
  const rd = await must('qemu-io', [
    '-r',
    '-f',
    'raw',
    '-c',
    'read -P 0x5a 0 2M',
    '-c',
    'read -P 0x6b 10M 1M',
    '-c',
    'read -P 0 2M 8M',
    d.nbdUri('qs'),
  ]);
  t.notRegex(rd, /Pattern verification failed/);
  const wr = await must('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0x11 4M 64k',
    '-c',
    'read -P 0x11 4M 64k',
    '-c',
    'read -P 0x5a 0 2M',
    d.nbdUri('qc'),
  ]);
  t.notRegex(wr, /Pattern verification failed/);
  // qemu-img convert from the snapshot (through block status) and rewind export agree.
  const viaQemu = path.join(dir, 'qemu.raw');
  await must('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', d.nbdUri('qs'), viaQemu]);
  const viaExport = path.join(dir, 'export.raw');
  await cli(d, ['export', 'qv', '--at', `@seq:${p}`, '--out', viaExport, '--no-progress']);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', viaQemu, viaExport]);
  t.is(cmp.code, 0, cmp.stdout + cmp.stderr);
  t.true(fs.statSync(viaExport).blocks * 512 < 8 * MiB, 'the exported image is sparse');
  // nbdinfo --map shows the point's data and holes.
  const map = await must('nbdinfo', ['--map', d.nbdUri('qs')]);
  t.regex(map, /^\s+0\s+2097152\s+0\s+data$/m);
  t.regex(map, /^\s+10485760\s+1048576\s+0\s+data$/m);
  t.regex(map, /^\s+2097152\s+8388608\s+3\s+hole,zero$/m);
  // Snapshots and clones survive a restart, clone writes included.
  await d.restart();
  const again = await must('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x11 4M 64k', '-c', 'read -P 0x6b 10M 1M', d.nbdUri('qc')]);
  t.notRegex(again, /Pattern verification failed/);
  const list = await cli(d, ['clone', 'list']);
  t.regex(list, /^qc\s+clone\s+qv\s+/m);
});

test.serial('kill -9 during a production restore: after restart the volume is exactly the restored image', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  const SIZE = 96 * MiB;
  await cli(d, ['volume', 'create', 'kr', '--size', '96M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'kr' });
  for (let off = 0; off < 64 * MiB; off += MiB) await c.write(off, crypto.randomBytes(MiB));
  await c.flush();
  const stateA = await readWhole(c, SIZE);
  const point = (await api(d, 'POST', '/v1/volumes/kr/resolve', { at: 'latest' })).seq as number;
  for (let off = 0; off < 64 * MiB; off += MiB) await c.write(off, crypto.randomBytes(MiB));
  await c.flush();
  const stateB = await readWhole(c, SIZE);
  c.destroy();
  for (const delay of [0, 500]) {
    const restore = d.cli(['restore', 'kr', '--to', `@seq:${point}`, '--no-progress'], { timeoutMs: 120_000 });
    // Kill once the restore has begun (the volume went offline: after it caught the manager up), at some moment into it.
    let wentOffline = false;
    for (let i = 0; i < 3000 && !(wentOffline = !!(await api(d, 'GET', '/v1/volumes/kr')).offline); i++) await sleep(20);
    await sleep(delay);
    await d.kill('SIGKILL');
    const r = await restore.catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
    if (!wentOffline)
      t.log(`round ${delay}: the volume never went offline; restore exited ${r.code}: ${r.stdout}${r.stderr}\n${d.logs.slice(-3000)}`);
    await d.restart();
    // The volume stays offline until the interrupted restore is finished.
    let img: Buffer | null = null;
    for (let i = 0; i < 600 && !img; i++) {
      try {
        img = await readExport(d, 'kr', SIZE);
      } catch {
        await sleep(200);
      }
    }
    t.truthy(img, 'the volume came back online');
    const h = sha(img!);
    t.true(h === sha(stateA) || h === sha(stateB), `after a kill ${delay} ms into the restore the image is one of the two states`);
    t.is(h, sha(stateA), 'the interrupted restore was finished at start-up');
    const v = await api(d, 'POST', '/v1/volumes/kr/verify');
    t.true(v.equal, 'replica agrees');
    const last = (await api(d, 'GET', '/v1/volumes/kr/restores')).restores.at(-1);
    t.true(last?.resumed, 'the restore was resumed after the restart');
    // Back to B for the next round (the undo point of a restore).
    const undo = last?.undo as string | null;
    t.truthy(undo);
    await cli(d, ['restore', 'kr', '--to', undo!, '--no-progress'], 120_000);
    t.is(sha(await readExport(d, 'kr', SIZE)), sha(stateB), 'undo brings back the state before the restore');
  }
});
