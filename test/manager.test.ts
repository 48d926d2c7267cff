import test from 'ava';
import * as fc from 'fast-check';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RecordKind, containerFileName } from '../src/lfc';
import { BackupManager } from '../src/manager/backup-manager';
import { CorruptContainerError, type CommitInfo, type ManagedVolume, type SealedContainerRef } from '../src/manager/types';
import {
  Rng,
  applyBilfc,
  applyOp,
  cloneImages,
  diffImages,
  emptyImages,
  flipByte,
  randomOp,
  readImages,
  tmpDir,
  writeAilfc,
  type Images,
  type Op,
} from './helpers/manager-fixtures';

const VOLS: ManagedVolume[] = [
  { volumeId: 0, name: 'a', size: 256 * 1024 },
  { volumeId: 1, name: 'b', size: 100_000 }, // not a multiple of the block size: the last block is short
  { volumeId: 7, name: 'c', size: 64 * 1024 + 512 },
];
const GROUP = 3;

function hashImages(m: Images): string {
  const h = createHash('sha256');
  for (const id of [...m.keys()].sort((a, b) => a - b)) h.update(`${id}:`).update(m.get(id)!);
  return h.digest('hex');
}

function rmrf(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** fast-check arbitrary for one op (payload bytes derived from a seed, to keep shrinking cheap). */
const opArb: fc.Arbitrary<Op> = fc
  .record({
    vi: fc.nat({ max: VOLS.length - 1 }),
    roll: fc.nat({ max: 99 }),
    aligned: fc.boolean(),
    a: fc.nat(),
    len: fc.integer({ min: 1, max: 20_000 }),
    seed: fc.nat(),
  })
  .map(({ vi, roll, aligned, a, len, seed }) => {
    const v = VOLS[vi]!;
    let offset = aligned ? (a % Math.ceil(v.size / 4096)) * 4096 : a % v.size;
    if (roll >= 97) offset = 0; // whole-volume trims and zeroes happen
    let length = aligned ? Math.max(4096, len - (len % 4096)) : len;
    if (roll >= 97) length = v.size;
    length = Math.min(length, v.size - offset);
    let kind: RecordKind;
    if (roll < 65) kind = RecordKind.Write;
    else if (roll < 73) kind = RecordKind.Resync;
    else if (roll < 83) kind = RecordKind.Trim;
    else if (roll < 91) kind = RecordKind.Zero;
    else if (roll < 97) kind = RecordKind.Error;
    else kind = roll === 97 ? RecordKind.Trim : RecordKind.Zero;
    const data =
      kind === RecordKind.Write || kind === RecordKind.Resync
        ? new Rng(seed + 1).bytes(length)
        : kind === RecordKind.Error
          ? Buffer.from(`EIO at ${offset}`)
          : null;
    return { kind, volumeId: v.volumeId, offset, length, data };
  });

/** Image at seq p inside AILFC_k through the manager's time-travel lookup. */
async function imageAtSeq(m: BackupManager, k: number, ops: Op[], firstSeq: number, p: number): Promise<Images> {
  const out: Images = new Map();
  for (const v of VOLS) {
    const img = Buffer.alloc(v.size);
    for (let b = 0; b * 4096 < v.size; b++) (await m.history.readBlockBefore(v.volumeId, b, k)).copy(img, b * 4096);
    out.set(v.volumeId, img);
  }
  ops.forEach((op, i) => {
    if (firstSeq + i <= p) applyOp(out, op);
  });
  return out;
}

test('model: replicas equal the model after every commit; BILFCs roll back to every earlier T_k; time travel lookup', async (t) => {
  t.timeout(240_000);
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.array(opArb, { maxLength: 25 }), { minLength: 1, maxLength: 5 }),
      fc.constantFrom(4096, 12288, 65536, 16 << 20),
      fc.nat(),
      async (containers, batchBytes, pick) => {
        runs++;
        const dir = tmpDir('mgr-model');
        const src = path.join(dir, 'journal');
        const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: VOLS, batchBytes });
        try {
          const model = emptyImages(VOLS);
          const states: Images[] = [cloneImages(model)]; // states[k] = image at T_k
          const firstSeqs: number[] = [0];
          let seq = 1;
          const commits: CommitInfo[] = [];
          m.on('commit', (c) => commits.push(c));
          for (let i = 0; i < containers.length; i++) {
            const n = i + 1;
            const ops = containers[i]!;
            const ref = await writeAilfc(src, GROUP, n, ops, seq);
            firstSeqs.push(seq);
            seq += ops.length;
            const info = await m.submit(ref);
            for (const op of ops) applyOp(model, op);
            states.push(cloneImages(model));
            if (info.containerId !== n) throw new Error(`commit ${info.containerId}, expected ${n}`);
            const d = diffImages(model, await readImages((id) => m.replicaPath(id), VOLS));
            if (d) throw new Error(`after T_${n}: ${d}`);
            const rec = m.transaction(n)!;
            if (ops.length > 0 && (rec.firstSeq !== seq - ops.length || rec.lastSeq !== seq - 1))
              throw new Error(`T_${n} seq range ${rec.firstSeq}..${rec.lastSeq}`);
          }
          if (commits.length !== containers.length) throw new Error(`${commits.length} commit events`);
          // Invariant 3: BILFC_n, BILFC_{n-1}, ... applied backwards reproduce every T_k.
          const img = await readImages((id) => m.replicaPath(id), VOLS);
          for (let n = containers.length; n >= 1; n--) {
            await applyBilfc(img, path.join(m.historyDir, containerFileName('bilfc', n)));
            const d = diffImages(states[n - 1]!, img);
            if (d) throw new Error(`BILFC rollback to T_${n - 1}: ${d}`);
          }
          // Time travel through the block index: image at a seq inside some AILFC_k.
          const k = 1 + (pick % containers.length);
          const ops = containers[k - 1]!;
          const p = firstSeqs[k]! + (ops.length ? pick % (ops.length + 1) : 0) - 1;
          const expect = cloneImages(states[k - 1]!);
          ops.forEach((op, i) => {
            if (firstSeqs[k]! + i <= p) applyOp(expect, op);
          });
          const got = await imageAtSeq(m, k, ops, firstSeqs[k]!, p);
          const d = diffImages(expect, got);
          if (d) throw new Error(`image at seq ${p} (T_${k}): ${d}`);
          if (ops.length && p >= firstSeqs[k]! && m.transactionForSeq(p) !== k)
            throw new Error(`transactionForSeq(${p}) = ${m.transactionForSeq(p)}, expected ${k}`);
          const hist = await m.verifyHistory();
          if (hist.length !== 2 * containers.length || hist.some((h) => !h.ok)) throw new Error(`verifyHistory: ${JSON.stringify(hist)}`);
        } finally {
          await m.close();
          rmrf(dir);
        }
      },
    ),
    { numRuns: 30 },
  );
  t.true(runs >= 30);
});

test('out-of-order submits wait; a gap waits; a resend of a committed container applies nothing', async (t) => {
  const dir = tmpDir('mgr-order');
  const src = path.join(dir, 'journal');
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: VOLS });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  const rng = new Rng(42);
  const model = emptyImages(VOLS);
  const refs: SealedContainerRef[] = [];
  const all: Op[][] = [];
  let seq = 1;
  for (let n = 1; n <= 4; n++) {
    const ops = Array.from({ length: 20 }, () => randomOp(rng, VOLS, 9000));
    all.push(ops);
    refs.push(await writeAilfc(src, GROUP, n, ops, seq));
    seq += ops.length;
  }
  const order: number[] = [];
  m.on('commit', (c) => order.push(c.containerId));
  const p3 = m.submit(refs[2]!);
  const p2 = m.submit(refs[1]!);
  await new Promise((r) => setTimeout(r, 200));
  t.is(m.status().lastContainer, 0, 'nothing applied before container 1 arrives');
  t.is(m.status().queued, 2);
  const p1 = m.submit(refs[0]!);
  const [c1, c2, c3] = await Promise.all([p1, p2, p3]);
  t.deepEqual([c1.containerId, c2.containerId, c3.containerId], [1, 2, 3]);
  t.deepEqual(order, [1, 2, 3]);
  for (const ops of all.slice(0, 3)) for (const op of ops) applyOp(model, op);
  t.is(diffImages(model, await readImages((id) => m.replicaPath(id), VOLS)), null);

  // A gap: 5 (never sent) is missing, 6 waits... here: submit 4 later, first a resend of 2.
  const before = await readImages((id) => m.replicaPath(id), VOLS);
  const again = await m.submit(refs[1]!);
  t.deepEqual(again, c2, 'same CommitInfo');
  t.is(diffImages(before, await readImages((id) => m.replicaPath(id), VOLS)), null, 'replica unchanged');
  t.deepEqual(order, [1, 2, 3], 'no commit event for the resend');
  t.is(m.status().transactions, 3);

  // Gap: container 6 arrives while 5 never does.
  const ops6 = [randomOp(rng, VOLS, 100)];
  const ref6 = await writeAilfc(src, GROUP, 6, ops6, 10_000);
  let done6 = false;
  void m.submit(ref6).then(
    () => (done6 = true),
    () => undefined,
  );
  await m.submit(refs[3]!);
  await new Promise((r) => setTimeout(r, 200));
  t.false(done6);
  t.is(m.status().lastContainer, 4);
  t.is(m.status().queued, 1);
  // A resend with a different body under a committed number is refused.
  const bogus = { ...refs[0]!, footer: { ...refs[0]!.footer, bodyCrc: (refs[0]!.footer.bodyCrc + 1) >>> 0 } };
  await t.throwsAsync(m.submit(bogus), { message: /AILFC_1 was committed/ });
});

test('a corrupt AILFC is rejected with container and offset, never applied, and blocks the group until resent', async (t) => {
  const dir = tmpDir('mgr-corrupt');
  const src = path.join(dir, 'journal');
  const logs: Array<{ o: object; msg?: string }> = [];
  const logger = {
    info: () => undefined,
    debug: () => undefined,
    warn: (o: object, msg?: string) => logs.push({ o, msg }),
    error: (o: object, msg?: string) => logs.push({ o, msg }),
  };
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: VOLS, logger });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  const rng = new Rng(7);
  const ops1 = Array.from({ length: 10 }, () => randomOp(rng, VOLS, 5000));
  const ops2 = Array.from({ length: 10 }, () => randomOp(rng, VOLS, 5000));
  const ref1 = await writeAilfc(src, GROUP, 1, ops1, 1);
  const ref2 = await writeAilfc(src, GROUP, 2, ops2, 11);
  const good = fs.readFileSync(ref1.path);
  const flipAt = 64 + 48 + 100; // inside the first record's payload (or a later header)
  flipByte(ref1.path, flipAt);
  const p2 = m.submit(ref2);
  let p2done = false;
  void p2.then(() => (p2done = true));
  const err = await t.throwsAsync(m.submit(ref1));
  t.true(err instanceof CorruptContainerError);
  const ce = err as CorruptContainerError;
  t.is(ce.containerId, 1);
  t.is(ce.kind, 'ailfc');
  t.true(ce.offset >= 64 && ce.offset <= flipAt, `offset ${ce.offset}`);
  t.regex(ce.message, /AILFC_1 .* corrupt at offset \d+/);
  t.true(
    logs.some((l) => (l.o as { container?: number }).container === 1),
    'logged',
  );
  // Replica untouched, no BILFC left, group blocked, container 2 waiting.
  for (const v of VOLS) t.true(fs.readFileSync(m.replicaPath(v.volumeId)).equals(Buffer.alloc(v.size)));
  t.false(fs.existsSync(path.join(m.historyDir, containerFileName('bilfc', 1))));
  await new Promise((r) => setTimeout(r, 150));
  t.false(p2done);
  t.is(m.status().lastContainer, 0);
  t.is(m.status().blocked?.n, 1);
  // The sender resends a good copy: the group resumes, both commit.
  fs.rmSync(ref1.path);
  fs.writeFileSync(ref1.path, good);
  const c1 = await m.submit(ref1);
  t.is(c1.containerId, 1);
  await p2;
  const model = emptyImages(VOLS);
  for (const op of [...ops1, ...ops2]) applyOp(model, op);
  t.is(diffImages(model, await readImages((id) => m.replicaPath(id), VOLS)), null);
  t.is(m.status().blocked, null);
  t.true(fs.readdirSync(path.join(m.historyDir, 'rejected')).length === 1, 'the corrupt copy is kept aside');
});

test('the index refusing commits (as lmdb-js once did in a crash campaign): retried, the environment reopened, not blocked, nothing lost', async (t) => {
  const dir = tmpDir('mgr-index-fail');
  const src = path.join(dir, 'journal');
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: VOLS });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  // The environment goes bad: every commit through it fails, as lmdb-js
  // reported it, until the manager opens a fresh one.
  const catalog = (m as unknown as { catalog: { root: { transaction: (fn: () => unknown) => Promise<unknown> } } }).catalog;
  const bad = catalog.root;
  let failures = 0;
  bad.transaction = () => {
    failures++;
    return Promise.reject(new Error('MDB_BAD_TXN: reserved freelist had a data entry with zero-size (simulated)'));
  };
  const stalled: string[] = [];
  m.on('stalled', (x) => stalled.push(x.error));
  // The retry timer is unref'd (a daemon's sockets keep its loop alive): keep this one's.
  const alive = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(alive));
  const rng = new Rng(7);
  const model = emptyImages(VOLS);
  let seq = 1;
  const refs: SealedContainerRef[] = [];
  for (let n = 1; n <= 3; n++) {
    const ops = Array.from({ length: 30 }, () => randomOp(rng, VOLS, 9000));
    for (const op of ops) applyOp(model, op);
    refs.push(await writeAilfc(src, GROUP, n, ops, seq));
    seq += ops.length;
  }
  const infos = await Promise.all(refs.map((r) => m.submit(r)));
  t.deepEqual(
    infos.map((c) => c.containerId),
    [1, 2, 3],
  );
  t.is(failures, 2, 'the second failure reopened the index');
  t.not(catalog.root, bad);
  t.is(stalled.length, 1);
  t.regex(stalled[0]!, /index did not commit T_1: MDB_BAD_TXN/);
  t.is(m.status().blocked, null);
  t.is(m.status().stalled, null);
  t.is(m.status().transactions, 3);
  t.is(diffImages(model, await readImages((id) => m.replicaPath(id), VOLS)), null);
});

test('records the group cannot take (unknown volume, beyond the end) are refused, not skipped', async (t) => {
  const dir = tmpDir('mgr-invalid');
  const src = path.join(dir, 'journal');
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: VOLS });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  const ref = await writeAilfc(
    src,
    GROUP,
    1,
    [{ kind: RecordKind.Write, volumeId: 9, offset: 0, length: 10, data: Buffer.alloc(10, 1) }],
    1,
  );
  await t.throwsAsync(m.submit(ref), { message: /AILFC_1 .*unknown volume 9/ });
  t.is(m.status().blocked?.n, 1);
  // The group grows: volume 9 joins; a retry now applies it.
  await m.addVolume({ volumeId: 9, name: 'late', size: 8192 });
  const c = await m.submit(ref);
  t.is(c.blocks, 1);
  t.deepEqual(fs.readFileSync(m.replicaPath(9)).subarray(0, 11), Buffer.concat([Buffer.alloc(10, 1), Buffer.alloc(1)]));
  const ref2 = await writeAilfc(src, GROUP, 2, [{ kind: RecordKind.Zero, volumeId: 9, offset: 8000, length: 193, data: null }], 2);
  await t.throwsAsync(m.submit(ref2), { message: /beyond volume 9/ });
});

test('history copy by copying (other filesystem path), sender deletes its file after commit; empty AILFC; verifyHistory finds a flipped byte', async (t) => {
  const dir = tmpDir('mgr-copy');
  const src = path.join(dir, 'journal');
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: VOLS, linkHistory: false });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  const rng = new Rng(99);
  const ops = Array.from({ length: 30 }, () => randomOp(rng, VOLS, 3000));
  const ref1 = await writeAilfc(src, GROUP, 1, ops, 1);
  await m.submit(ref1);
  fs.rmSync(ref1.path);
  const hist = path.join(m.historyDir, containerFileName('ailfc', 1));
  t.is(fs.statSync(hist).nlink, 1, 'a copy, not a link');
  const ref2 = await writeAilfc(src, GROUP, 2, [], 31);
  const c2 = await m.submit(ref2);
  t.is(c2.blocks, 0);
  t.is(m.status().lastSeq, 30, 'an empty container leaves lastSeq alone');
  t.true((await m.verifyHistory()).every((h) => h.ok));
  const bilfc1 = path.join(m.historyDir, containerFileName('bilfc', 1));
  flipByte(bilfc1, 64 + 48 + 5);
  t.true(
    (await m.verifyHistory()).every((h) => h.ok),
    'checked since it was written: not read again',
  );
  const res = await m.verifyHistory({ full: true });
  const bad = res.filter((h) => !h.ok);
  t.is(bad.length, 1);
  t.like(bad[0], { n: 1, kind: 'bilfc', ok: false });
  t.true(bad[0]!.offset! >= 64);
  // A container written since the last verify is read by the next one.
  await m.submit(
    await writeAilfc(
      src,
      GROUP,
      3,
      Array.from({ length: 5 }, (_, i) => ({
        kind: RecordKind.Write,
        volumeId: VOLS[0]!.volumeId,
        offset: i * 4096,
        length: 4096,
        data: Buffer.alloc(4096, 9),
      })),
      31,
    ),
  );
  flipByte(path.join(m.historyDir, containerFileName('ailfc', 3)), 64 + 48 + 5);
  const fresh = (await m.verifyHistory()).filter((h) => !h.ok);
  t.true(
    fresh.some((h) => h.n === 3 && h.kind === 'ailfc'),
    JSON.stringify(fresh),
  );
});

test('a 64 MiB-class container stays in bounded batches: whole-volume trim plus writes with a tiny batch size', async (t) => {
  const dir = tmpDir('mgr-batch');
  const src = path.join(dir, 'journal');
  const vols: ManagedVolume[] = [{ volumeId: 0, name: 'big', size: 32 << 20 }];
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: vols, batchBytes: 256 * 1024 });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  const rng = new Rng(5);
  const w1 = Array.from({ length: 200 }, () => randomOp(rng, vols, 70_000)).filter((o) => o.kind !== RecordKind.Error);
  await m.submit(await writeAilfc(src, GROUP, 1, w1, 1));
  const ops: Op[] = [
    { kind: RecordKind.Trim, volumeId: 0, offset: 0, length: 32 << 20, data: null },
    ...Array.from({ length: 100 }, () => randomOp(rng, vols, 70_000)),
  ];
  const c = await m.submit(await writeAilfc(src, GROUP, 2, ops, 1000));
  t.is(c.blocks, (32 << 20) / 4096);
  const model = emptyImages(vols);
  for (const op of [...w1, ...ops]) applyOp(model, op);
  const img = await readImages((id) => m.replicaPath(id), vols);
  t.is(diffImages(model, img), null);
  const back = cloneImages(img);
  await applyBilfc(back, path.join(m.historyDir, containerFileName('bilfc', 2)));
  const t1 = emptyImages(vols);
  for (const op of w1) applyOp(t1, op);
  t.is(diffImages(t1, back), null);
});

// --- crash campaign --------------------------------------------------------------

const CHILD = path.join(__dirname, 'helpers', 'manager-crash-child.js');
const CRASH_VOLS: ManagedVolume[] = [
  { volumeId: 0, name: 'c0', size: 4 << 20 },
  { volumeId: 2, name: 'c2', size: (2 << 20) + 1000 },
];

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

function runChild(args: string[], env: Record<string, string>, killAfterMs?: number): Promise<ChildResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CHILD, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    let timer: NodeJS.Timeout | undefined;
    if (killAfterMs !== undefined) timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, out, err });
    });
  });
}

test('crash campaign: SIGKILL at every step and at random instants; recovery finishes each T_n exactly once', async (t) => {
  t.timeout(290_000);
  const dir = tmpDir('mgr-crash');
  t.teardown(() => rmrf(dir));
  const src = path.join(dir, 'journal');
  const mgrDir = path.join(dir, 'mgr');
  const N = 80;
  const rng = new Rng(20240607);
  const model = emptyImages(CRASH_VOLS);
  // Model states as hashes (80 full copies would not fit in memory comfortably).
  const states: string[] = [hashImages(model)];
  let seq = 1;
  const refs: SealedContainerRef[] = [];
  for (let n = 1; n <= N; n++) {
    const count = rng.int(100, 300);
    const ops = Array.from({ length: count }, () => randomOp(rng, CRASH_VOLS, 16_000));
    if (n % 5 === 0) ops.push({ kind: RecordKind.Trim, volumeId: 2, offset: 4096, length: (1 << 20) + 77, data: null });
    refs.push(await writeAilfc(src, GROUP, n, ops, seq));
    seq += ops.length;
    for (const op of ops) applyOp(model, op);
    states.push(hashImages(model));
  }
  const spec = path.join(dir, 'spec.json');
  fs.writeFileSync(spec, JSON.stringify({ dir: mgrDir, groupId: GROUP, volumes: CRASH_VOLS, refs }));

  const status = async (): Promise<{ lastContainer: number; transactions: number; blocked: unknown }> => {
    const r = await runChild([spec, 'status'], {});
    if (r.code !== 0) throw new Error(`status child failed: ${r.err}`);
    return JSON.parse(r.out.trim().split('\n').pop()!);
  };
  const checkReplica = async (last: number, when: string): Promise<void> => {
    const img = await readImages((id) => path.join(mgrDir, 'replica', `vol-${id}.raw`), CRASH_VOLS);
    if (hashImages(img) !== states[last]) throw new Error(`${when}: replica differs from the model at T_${last}`);
  };

  const steps = ['copied', 'bilfc-mid', 'bilfc-sealed', 'apply-mid', 'apply-done', 'after-commit', 'copy-mid'] as const;
  let kills = 0;
  let randomKills = 0;
  let last = 0;
  const plan: Array<{ step?: string; delay?: number; copy?: boolean }> = [];
  for (const s of steps) plan.push({ step: s, copy: s === 'copy-mid' });
  for (const s of steps) plan.push({ step: s, copy: s === 'copy-mid' || s === 'copied' });
  // Random instants: a fraction of how long an uninterrupted run of the same size takes (measured, updated).
  for (let i = 0; i < 60; i++) plan.push({ delay: rng.int(5, 95) / 100, copy: i % 3 === 0 });
  let runMs = 400;
  for (const p of plan) {
    if (last >= N - 1 || (kills >= 30 && randomKills >= 14)) break;
    const target = Math.min(last + 1 + (p.step ? rng.int(0, 1) : 0), N);
    const env: Record<string, string> = {};
    if (p.step) env.REWIND_MANAGER_CRASH_AT = `${p.step}@${target}`;
    if (p.copy) env.REWIND_MANAGER_COPY = '1';
    // Each run is sent the containers up to a few past the last commit, so a random kill has work to land in.
    const started = Date.now();
    const r = await runChild([spec, 'run', String(Math.min(N, last + 3))], env, p.step ? 60_000 : Math.round(p.delay! * runMs));
    if (r.signal !== 'SIGKILL' && !p.step) runMs = Math.round((runMs + (Date.now() - started)) / 2);
    if (r.signal === 'SIGKILL') {
      kills++;
      if (!p.step) randomKills++;
    } else if (r.code !== 0) throw new Error(`child failed (${JSON.stringify(p)}): ${r.err}`);
    else if (p.step) throw new Error(`child was not killed at ${env.REWIND_MANAGER_CRASH_AT}`);
    // After each crash: recovery (open) must leave the replica exactly at T_lastContainer.
    const s = await status();
    t.is(s.blocked, null, `not blocked after ${JSON.stringify(p)}`);
    t.true(s.lastContainer >= last, 'never goes back');
    t.is(s.transactions, s.lastContainer, 'one record per committed transaction');
    if (p.step === 'after-commit' || p.step === 'apply-done' || p.step === 'bilfc-sealed' || p.step === 'apply-mid') {
      t.true(s.lastContainer >= target, `T_${target} finished (by the run or by recovery) after a kill at ${p.step}`);
    }
    last = s.lastContainer;
    await checkReplica(last, `after ${JSON.stringify(p)} (${r.signal ?? r.code})`);
  }
  t.log(`${kills} kills, ${randomKills} at random instants (uninterrupted run ≈ ${runMs} ms), last commit before catch-up T_${last}`);
  t.true(randomKills >= 10, `${randomKills} random kills`);
  t.true(kills >= 24, `${kills} kills`);
  // Catch up without crashes.
  const fin = await runChild([spec, 'run'], {});
  t.is(fin.code, 0, fin.err);
  const s = await status();
  t.is(s.lastContainer, N);
  t.is(s.transactions, N);
  await checkReplica(N, 'final');
  // The catalog holds exactly T_1..T_N with the right seq ranges, and every
  // BILFC rolls back to the state before it.
  const check = await runChild([spec, 'catalog'], {});
  t.is(check.code, 0, check.err);
  const cat = JSON.parse(check.out.trim().split('\n').pop()!) as {
    txns: Array<{ n: number; firstSeq: number; lastSeq: number }>;
    history: Array<{ ok: boolean }>;
  };
  t.deepEqual(
    cat.txns.map((x) => x.n),
    Array.from({ length: N }, (_, i) => i + 1),
  );
  for (let i = 0; i < N; i++) {
    t.is(cat.txns[i]!.firstSeq, refs[i]!.footer.firstSeq);
    t.is(cat.txns[i]!.lastSeq, refs[i]!.footer.lastSeq);
  }
  t.true(
    cat.history.every((h) => h.ok),
    JSON.stringify(cat.history.filter((h) => !h.ok)),
  );
  const img = await readImages((id) => path.join(mgrDir, 'replica', `vol-${id}.raw`), CRASH_VOLS);
  for (let n = N; n >= 1; n--) {
    await applyBilfc(img, path.join(mgrDir, 'history', containerFileName('bilfc', n)));
    t.is(hashImages(img), states[n - 1], `BILFC_${n} rolls back to T_${n - 1}`);
  }
});

test('readBlockBefore stays exact while transactions are being applied (reads race the apply)', async (t) => {
  t.timeout(120_000);
  const dir = tmpDir('mgr-readers');
  const src = path.join(dir, 'journal');
  const vols: ManagedVolume[] = [
    { volumeId: 0, name: 'r0', size: 1 << 20 },
    { volumeId: 1, name: 'r1', size: (512 << 10) + 100 },
  ];
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: GROUP, volumes: vols, batchBytes: 16 * 1024 });
  t.teardown(async () => {
    await m.close();
    rmrf(dir);
  });
  const rng = new Rng(77);
  const model = emptyImages(vols);
  const states: Images[] = [cloneImages(model)];
  const refs: SealedContainerRef[] = [];
  let seq = 1;
  const N = 12;
  for (let n = 1; n <= N; n++) {
    const ops = Array.from({ length: 120 }, () => randomOp(rng, vols, 30_000));
    refs.push(await writeAilfc(src, GROUP, n, ops, seq));
    seq += ops.length;
    for (const op of ops) applyOp(model, op);
    states.push(cloneImages(model));
  }
  const all = Promise.all(refs.map((r) => m.submit(r)));
  let done = false;
  void all.then(() => (done = true));
  let reads = 0;
  const reader = async (): Promise<void> => {
    while (!done) {
      const v = vols[rng.int(0, vols.length - 1)]!;
      const b = rng.int(0, Math.ceil(v.size / 4096) - 1);
      const next = m.status().lastContainer + 1;
      const k = rng.int(1, next);
      const got = await m.history.readBlockBefore(v.volumeId, b, k);
      const want = states[k - 1]!.get(v.volumeId)!.subarray(b * 4096, Math.min(v.size, (b + 1) * 4096));
      if (!got.equals(want)) {
        done = true; // stop the other readers too
        throw new Error(`volume ${v.volumeId} block ${b} at T_${k - 1} differs (read while T_${next} was next)`);
      }
      reads++;
      // Reads served from the page cache finish without I/O callbacks: let the apply run.
      await new Promise((r) => setImmediate(r));
    }
  };
  await Promise.all([all, reader(), reader(), reader(), reader()]);
  t.true(reads > 100, `${reads} reads`);
  t.log(`${reads} racing reads`);
  t.is(diffImages(model, await readImages((id) => m.replicaPath(id), vols)), null);
});
