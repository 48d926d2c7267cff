/**
 * Acceptance for protected volumes: the intercept, the AILFC journal, the
 * state map and the backup manager, through a live `rewind serve` and real
 * clients. See the issue "Protected volumes".
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import fc from 'fast-check';
import { NbdClient } from '../src/nbd/client';
import { readRecords } from '../src/lfc';
import { RecordKind } from '../src/lfc';
import { run, startDaemon, sleep, tempDir, haveCommand, type TestDaemon } from './helpers/daemon';
import { pattern } from './helpers/nbd-fixtures';
import { checkLedger, requireLedgerTools, startLedgerWriter } from './helpers/ledger';

const MiB = 1024 * 1024;

/** `rewind ARGS`; commands that wait for the manager get minutes, as the CLI itself gives them an hour. */
async function cli(d: TestDaemon, args: string[], timeoutMs = 600_000): Promise<string> {
  const r = await d.cli(args, { timeoutMs });
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function api<T = any>(d: TestDaemon, method: string, p: string, body?: unknown): Promise<T> {
  const r = await d.api(method, p, body);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

function groupDir(d: TestDaemon, group: string): string {
  return path.join(d.dataDir, 'groups', group);
}

function replicaPath(d: TestDaemon, group: string, volumeId: number): string {
  return path.join(groupDir(d, group), 'manager', 'replica', `vol-${volumeId}.raw`);
}

function historyFiles(d: TestDaemon, group: string, kind: 'ailfc' | 'bilfc'): Array<{ n: number; path: string }> {
  const dir = path.join(groupDir(d, group), 'manager', 'history');
  return fs
    .readdirSync(dir)
    .map((f) => /^(ailfc|bilfc)-(\d+)\.lfc$/.exec(f))
    .filter((m): m is RegExpExecArray => !!m && m[1] === kind)
    .map((m) => ({ n: Number(m[2]), path: path.join(dir, m[0]) }))
    .sort((a, b) => a.n - b.n);
}

async function readWhole(c: NbdClient, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  for (let off = 0; off < size; off += 4 * MiB) {
    const n = Math.min(4 * MiB, size - off);
    (await c.read(off, n)).copy(out, off);
  }
  return out;
}

type Op = { kind: 'write' | 'trim' | 'zero'; offset: number; length: number; seed: number };

function opData(op: Op): Buffer {
  return pattern(op.length, op.seed + 1);
}

function applyModel(model: Buffer, op: Op): void {
  if (op.kind === 'write') opData(op).copy(model, op.offset);
  else model.fill(0, op.offset, op.offset + op.length);
}

/** Replays the journal (AILFCs) onto an image, up to and including `uptoSeq`. */
async function replayRecords(img: Buffer, files: Array<{ path: string }>, volumeId: number, uptoSeq: number): Promise<void> {
  for (const f of files) {
    for await (const r of readRecords(f.path)) {
      if (r.seq > uptoSeq || r.volumeId !== volumeId) continue;
      if (r.kind === RecordKind.Write || r.kind === RecordKind.Resync) r.payload!.copy(img, r.offset);
      else if (r.kind === RecordKind.Trim || r.kind === RecordKind.Zero) img.fill(0, r.offset, r.offset + r.length);
    }
  }
}

/** Applies BILFC_n (before-blocks) to an image, undoing T_n. */
async function undoTransaction(img: Buffer, bilfc: string, volumeId: number): Promise<void> {
  for await (const r of readRecords(bilfc)) {
    if (r.kind !== RecordKind.BeforeBlock || r.volumeId !== volumeId) continue;
    r.payload!.copy(img, r.offset);
  }
}

test.serial('model check: random writes, trims, zeroes over several connections with random seals', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  const SIZE = 8 * MiB;
  await cli(d, ['volume', 'create', 'mc', '--size', '8M', '--protected']);
  const conns = await Promise.all([0, 1, 2].map(() => NbdClient.connect({ port: d.nbdPort, exportName: 'mc' })));
  t.teardown(() => conns.forEach((c) => c.destroy()));

  const opArb = fc.record({
    kind: fc.constantFrom<'write' | 'trim' | 'zero'>('write', 'write', 'write', 'trim', 'zero'),
    offset: fc.oneof(
      fc.integer({ min: 0, max: SIZE / 4096 - 1 }).map((b) => b * 4096),
      fc.integer({ min: 0, max: SIZE - 1 }),
    ),
    length: fc.oneof(fc.constantFrom(4096, 8192, 65536), fc.integer({ min: 1, max: 200_000 })),
    seed: fc.integer({ min: 0, max: 1 << 30 }),
  });
  // Batches of ops run concurrently on different connections; ops within a batch never overlap.
  const batchesArb = fc.array(fc.tuple(fc.array(opArb, { minLength: 1, maxLength: 6 }), fc.boolean()), {
    minLength: 5,
    maxLength: 25,
  });

  const model = Buffer.alloc(SIZE);
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(batchesArb, async (batches) => {
      runs++;
      for (const [ops, sealAfter] of batches) {
        const chosen: Op[] = [];
        for (const raw of ops) {
          const op = { ...raw, length: Math.min(raw.length, SIZE - raw.offset) };
          if (op.length <= 0) continue;
          if (chosen.some((o) => o.offset < op.offset + op.length && op.offset < o.offset + o.length)) continue;
          chosen.push(op);
        }
        await Promise.all(
          chosen.map((op, i) => {
            const c = conns[i % conns.length]!;
            if (op.kind === 'write') return c.write(op.offset, opData(op));
            if (op.kind === 'trim') return c.trim(op.offset, op.length);
            return c.zero(op.offset, op.length);
          }),
        );
        for (const op of chosen) applyModel(model, op);
        if (sealAfter) await cli(d, ['seal', 'mc']);
      }
      return true;
    }),
    { numRuns: 6, seed: Number(process.env.FC_SEED ?? Date.now() % 100000), verbose: true },
  );
  t.true(runs > 0);
  await conns[0]!.flush();

  // Catch up and compare production, replica and model.
  const v = await api(d, 'POST', '/v1/volumes/mc/verify');
  t.true(v.equal, `production and replica differ at ${v.firstDifference}`);
  t.true(v.ok);
  const production = await readWhole(conns[0]!, SIZE);
  t.true(production.equals(model), 'production equals the model');
  const replica = fs.readFileSync(replicaPath(d, 'mc', 1));
  t.true(replica.subarray(0, SIZE).equals(model), 'replica equals the model');

  // Invariant 3: undoing T_n, T_{n-1}, ... from the replica gives the image at every T_k,
  // which must equal a replay of the journal up to T_k's last seq.
  const txns = (await api(d, 'GET', '/v1/volumes/mc/log')).transactions as Array<{ n: number; lastSeq: number }>;
  t.true(txns.length >= 2, `several transactions (${txns.length})`);
  const ailfcs = historyFiles(d, 'mc', 'ailfc');
  const bilfcs = new Map(historyFiles(d, 'mc', 'bilfc').map((f) => [f.n, f.path]));
  t.is(ailfcs.length, txns.length);
  // The full replay equals the model: the journal holds every acknowledged write, in order.
  const full = Buffer.alloc(SIZE);
  await replayRecords(full, ailfcs, 1, Number.MAX_SAFE_INTEGER);
  t.true(full.equals(model), 'replaying every AILFC reproduces the model');
  const img = Buffer.from(replica.subarray(0, SIZE));
  for (let i = txns.length - 1; i >= 0; i--) {
    const expect = Buffer.alloc(SIZE);
    await replayRecords(expect, ailfcs, 1, txns[i]!.lastSeq);
    t.true(img.equals(expect), `image at T_${txns[i]!.n} matches`);
    await undoTransaction(img, bilfcs.get(txns[i]!.n)!, 1);
  }
  t.true(img.equals(Buffer.alloc(SIZE)), 'undoing every transaction gives the empty disk');
});

test.serial('fio 4k random writes with verify for 60 s, then rewind verify: production equals replica, zero lag', async (t) => {
  if (!haveCommand('fio')) throw new Error('fio missing (run tools/install-system-deps.sh)');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'fiov', '--size', '256M', '--protected']);
  const r = await run(
    'fio',
    [
      '--name=rw',
      '--ioengine=nbd',
      `--uri=${d.nbdUri('fiov')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=32',
      '--size=256M',
      '--time_based',
      '--runtime=60',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--do_verify=1',
      '--output-format=json',
    ],
    { timeoutMs: 240_000 },
  );
  t.is(r.code, 0, r.stderr);
  const job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
  t.is(job.error, 0);
  const out = await cli(d, ['verify', 'fiov']);
  t.regex(out, /^equal/m);
  t.regex(out, /bad: 0/);
  const st = JSON.parse(await cli(d, ['status', 'fiov', '--json']));
  t.is(st.lag.writes, 0);
  t.is(st.appliedSeq, st.lastSeq);
  t.is(st.state, 'normal');
  t.is(st.dirtyRegions, 0, 'every region committed');
});

test.serial('consistency group: two volumes written alternately agree at every transaction boundary', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'ga', '--size', '1M', '--group', 'pair']);
  await cli(d, ['volume', 'create', 'gb', '--size', '1M', '--group', 'pair']);
  const a = await NbdClient.connect({ port: d.nbdPort, exportName: 'ga' });
  const b = await NbdClient.connect({ port: d.nbdPort, exportName: 'gb' });
  const stamp = (i: number) => {
    const buf = Buffer.alloc(4096);
    buf.writeUInt32LE(i, 0);
    return buf;
  };
  for (let i = 1; i <= 300; i++) {
    await a.write(0, stamp(i));
    await b.write(0, stamp(i));
    if (i % 37 === 0) await cli(d, ['seal', 'ga']);
  }
  await a.flush();
  const va = await api(d, 'POST', '/v1/volumes/ga/verify');
  const vb = await api(d, 'POST', '/v1/volumes/gb/verify');
  t.true(va.equal && vb.equal);
  const ta = (await api(d, 'GET', '/v1/volumes/ga/log')).transactions;
  const tb = (await api(d, 'GET', '/v1/volumes/gb/log')).transactions;
  t.deepEqual(ta, tb, 'one transaction history for the group');
  t.true(ta.length >= 5);
  // Walk back through the transactions: at each boundary, A is B or B+1.
  const imgA = fs.readFileSync(replicaPath(d, 'pair', 1));
  const imgB = fs.readFileSync(replicaPath(d, 'pair', 2));
  const bilfcs = historyFiles(d, 'pair', 'bilfc');
  t.is(imgA.readUInt32LE(0), 300);
  t.is(imgB.readUInt32LE(0), 300);
  for (let i = bilfcs.length - 1; i >= 0; i--) {
    const x = imgA.readUInt32LE(0);
    const y = imgB.readUInt32LE(0);
    t.true(x === y || x === y + 1, `T_${bilfcs[i]!.n}: A=${x} B=${y}`);
    await undoTransaction(imgA, bilfcs[i]!.path, 1);
    await undoTransaction(imgB, bilfcs[i]!.path, 2);
  }
  t.is(imgA.readUInt32LE(0), 0);
  a.destroy();
  b.destroy();
});

test.serial('real filesystem: ext4 through nbdfuse on a protected volume; the replica mounts read-only with the same tree', async (t) => {
  for (const c of ['nbdfuse', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'fusermount3']) {
    if (!haveCommand(c)) throw new Error(`${c} missing (run tools/install-system-deps.sh)`);
  }
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'pfs', '--size', '128M', '--protected']);
  const dir = tempDir();
  const fuseDir = path.join(dir, 'fuse');
  const mnt = path.join(dir, 'mnt');
  const rmnt = path.join(dir, 'rmnt');
  fs.mkdirSync(fuseDir);
  fs.mkdirSync(mnt);
  fs.mkdirSync(rmnt);
  const fuse = spawn('nbdfuse', [fuseDir, d.nbdUri('pfs')], { stdio: 'ignore' });
  t.teardown(async () => {
    await run('umount', [rmnt]);
    await run('umount', [mnt]);
    await run('fusermount3', ['-u', fuseDir]);
    fuse.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const dev = path.join(fuseDir, 'nbd');
  for (let i = 0; i < 100 && !fs.existsSync(dev); i++) await sleep(100);
  const must = async (cmd: string, args: string[]) => {
    const r = await run(cmd, args, { timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  };
  await must('mkfs.ext4', ['-q', '-F', dev]);
  await must('mount', ['-o', 'loop', dev, mnt]);
  const sums = new Map<string, string>();
  for (let i = 0; i < 60; i++) {
    const p = path.join(mnt, `d${i % 6}`, `f${i}.bin`);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    const data = crypto.randomBytes(1000 + ((i * 7919) % 200_000));
    fs.writeFileSync(p, data);
    sums.set(path.relative(mnt, p), crypto.createHash('sha256').update(data).digest('hex'));
  }
  await must('umount', [mnt]);
  await must('fusermount3', ['-u', fuseDir]);
  const v = await api(d, 'POST', '/v1/volumes/pfs/verify');
  t.true(v.equal, 'replica caught up with production');
  const replica = replicaPath(d, 'pfs', 1);
  const fsck = await run('e2fsck', ['-fn', replica]);
  t.is(fsck.code, 0, fsck.stdout + fsck.stderr);
  await must('mount', ['-o', 'loop,ro', replica, rmnt]);
  for (const [rel, sum] of sums) {
    const got = crypto
      .createHash('sha256')
      .update(fs.readFileSync(path.join(rmnt, rel)))
      .digest('hex');
    t.is(got, sum, rel);
  }
});

test.serial(
  'kill -9 campaign, journal written with O_DIRECT: 30 kills under mixed load lose no flushed write, and the images agree after catch-up',
  async (t) => {
    if (!haveCommand('fio')) throw new Error('fio missing (run tools/install-system-deps.sh)');
    await requireLedgerTools();
    // The other crash tests run the default (buffered) journal writes.
    const d = await startDaemon({ env: { REWIND_JOURNAL_IO: 'direct' } });
    t.teardown(() => d.cleanup());
    await cli(d, ['volume', 'create', 'kc', '--size', '64M', '--protected']);
    const KILLS = Number(process.env.REWIND_KILLS ?? 30);
    for (let round = 0; round < KILLS; round++) {
      const load = spawn(
        'fio',
        [
          '--name=load',
          '--thread',
          '--ioengine=nbd',
          `--uri=${d.nbdUri('kc')}`,
          '--rw=randrw',
          '--bs=16k',
          '--iodepth=8',
          '--offset=32M',
          '--size=32M',
          '--time_based',
          '--runtime=30',
        ],
        { stdio: 'ignore' },
      );
      const writer = startLedgerWriter(d.nbdUri('kc'), round, { blocks: 4096, flushEvery: 4 });
      // Kill at a random moment: sometimes before any flush, mostly in the middle.
      await sleep(150 + Math.floor(Math.random() * 1200));
      if (round === 0) t.true(hasDirectJournalFd(d.pid!), 'the daemon holds its active AILFC open with O_DIRECT');
      const flushedAtKill = writer.lastFlushed;
      await d.kill('SIGKILL');
      load.kill('SIGKILL');
      writer.process.kill('SIGKILL');
      await d.restart();
      if (flushedAtKill >= 0) {
        const check = await checkLedger(d.nbdUri('kc'), round, flushedAtKill);
        t.is(check.code, 0, `round ${round}: ${check.stdout}${check.stderr}`);
      }
    }
    const v = await api(d, 'POST', '/v1/volumes/kc/verify');
    t.true(v.equal, `production and replica differ at ${v.firstDifference}`);
    t.true(v.ok, JSON.stringify(v.containers.filter((c: { ok: boolean }) => !c.ok)));
    const txns = (await api(d, 'GET', '/v1/volumes/kc/log')).transactions as Array<{ n: number; firstSeq: number; lastSeq: number }>;
    for (let i = 1; i < txns.length; i++) {
      t.true(txns[i]!.n > txns[i - 1]!.n && txns[i]!.firstSeq > txns[i - 1]!.lastSeq, 'transactions strictly ordered, none twice');
    }
  },
);

test.serial(
  'kill -9 under random writes: start-up journals only blocks that differ from the replica, not every dirty region; production equals the replica',
  async (t) => {
    if (!haveCommand('fio')) throw new Error('fio missing (run tools/install-system-deps.sh)');
    const d = await startDaemon({ logLevel: 'warn' });
    t.teardown(() => d.cleanup());
    await cli(d, ['volume', 'create', 'rc', '--size', '64M', '--protected']);
    let dirtySeen = 0;
    for (let round = 0; round < 3; round++) {
      const load = spawn(
        'fio',
        [
          '--name=load',
          '--thread',
          '--ioengine=nbd',
          `--uri=${d.nbdUri('rc')}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=32',
          '--size=64M',
          '--time_based',
          '--runtime=30',
        ],
        { stdio: 'ignore' },
      );
      await sleep(1500 + round * 300);
      await d.kill('SIGKILL');
      load.kill('SIGKILL');
      await d.restart();
      // Recovery runs in the background after start-up, the volume offline meanwhile.
      let line: string | undefined;
      for (let i = 0; i < 600 && !line; i++) {
        line = d.logs.split('\n').find((l) => l.includes('resynced regions left dirty'));
        if (!line) await sleep(100);
      }
      t.truthy(line, `round ${round}: the restart resynced dirty regions`);
      const rec = JSON.parse(line!.slice(line!.indexOf('{')));
      t.log(
        `round ${round}: dirty ${rec.dirtyBytes} B, compared ${rec.comparedBytes} B, journaled ${rec.journaledBytes} B in ${rec.ms} ms`,
      );
      t.true(rec.withReplica, 'compared with the caught-up replica');
      dirtySeen = Math.max(dirtySeen, rec.dirtyBytes);
      // At most the writes in flight at the kill (32 x 4 KiB), never the dirty regions.
      t.true(rec.journaledBytes <= 32 * 4096, `journaled ${rec.journaledBytes} bytes`);
    }
    t.true(dirtySeen >= 8 * MiB, `random writes left many regions dirty (${dirtySeen} bytes)`);
    const v = await api(d, 'POST', '/v1/volumes/rc/verify');
    t.true(v.equal, `production and replica differ at ${v.firstDifference}`);
    t.true(v.ok);
  },
);

test.serial(
  'a full journal disk: writes still succeed on production, the volume reports degraded, the state map keeps tracking',
  async (t) => {
    const d = await startDaemon();
    t.teardown(() => d.cleanup());
    const journalDir = path.join(groupDir(d, 'tiny'), 'journal');
    fs.mkdirSync(journalDir, { recursive: true });
    const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', journalDir]);
    t.is(m.code, 0, m.stderr);
    t.teardown(async () => {
      await run('umount', ['-l', journalDir]);
    });
    await cli(d, ['volume', 'create', 'tiny', '--size', '64M', '--protected']);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'tiny' });
    t.teardown(() => c.destroy());
    const data = pattern(1 * MiB, 77);
    for (let i = 0; i < 16; i++) await c.write(i * MiB, data); // 16 MiB: far more than the 3 MiB journal disk
    await c.flush();
    for (let i = 0; i < 16; i++) t.true((await c.read(i * MiB, MiB)).equals(data), `MiB ${i} intact on production`);
    const st = JSON.parse(await cli(d, ['status', 'tiny', '--json']));
    t.is(st.state, 'degraded');
    t.truthy(st.degraded.since);
    t.regex(st.degraded.reason, /ENOSPC|no space/i);
    t.true(st.dirtyRegions >= (16 * MiB) / st.regionSize, `state map tracks the unjournaled writes (${st.dirtyRegions})`);
    t.true(d.isRunning);
  },
);

test.serial('verify reports a corrupt stored container with its number and offset', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'cv', '--size', '4M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'cv' });
  await c.write(0, pattern(256 * 1024, 3));
  await c.flush();
  c.destroy();
  await cli(d, ['seal', 'cv']);
  const good = await api(d, 'POST', '/v1/volumes/cv/verify');
  t.true(good.ok);
  const [ailfc] = historyFiles(d, 'cv', 'ailfc');
  const fd = fs.openSync(ailfc!.path, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, 5000);
  b[0] = b[0]! ^ 0xff;
  fs.writeSync(fd, b, 0, 1, 5000);
  fs.closeSync(fd);
  // Checked once already: only a full check reads it again.
  t.true((await api(d, 'POST', '/v1/volumes/cv/verify')).ok, 'verify skips containers checked since they were written');
  const r = await d.cli(['verify', 'cv', '--full']);
  t.not(r.code, 0);
  t.regex(r.stdout, new RegExp(`ailfc #${ailfc!.n}: .* at offset \\d+`));
  const bad = await api(d, 'POST', '/v1/volumes/cv/verify?full=1');
  const entry = bad.containers.find((x: any) => x.kind === 'ailfc' && x.n === ailfc!.n);
  t.false(entry.ok);
  t.true(typeof entry.offset === 'number' && entry.offset <= 5000);
});

/** True if process pid has an active AILFC open with O_DIRECT (from /proc/PID/fdinfo). */
function hasDirectJournalFd(pid: number): boolean {
  const O_DIRECT = fs.constants.O_DIRECT;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target = '';
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!/\/active-\d+\.lfc$/.test(target)) continue;
    const info = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)?.[1] ?? '0', 8);
    if (flags & O_DIRECT) return true;
  }
  return false;
}
