import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BackupManager } from '../src/manager/backup-manager';
import { parseRetention, planFade, RetentionPolicyError } from '../src/manager/retention-policy';
import { resolvePoint } from '../src/timetravel/point';
import { diffImages, tmpDir } from './helpers/manager-fixtures';
import {
  DAY,
  HOUR,
  RGROUP,
  RVOLS,
  buildTimeline,
  checkRetained,
  expectedMergedBytes,
  historyBytes,
  modelAfterTxn,
  modelAt,
  orphans,
  readAtSeq,
  readBeforeAll,
  type Timeline,
} from './helpers/retention-fixtures';

function rmrf(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

test('policy: tiers parse and normalize; a bad policy is refused naming the bad tier', (t) => {
  const p = parseRetention('all:48h, hourly:30d, daily:365d');
  t.deepEqual(
    p.tiers.map((x) => [x.kind, x.spanMs, x.maxAgeMs]),
    [
      ['all', 0, 48 * HOUR],
      ['hourly', HOUR, 30 * DAY],
      ['daily', DAY, 365 * DAY],
    ],
  );
  t.is(p.text, 'all:2d, hourly:30d, daily:1y');
  t.is(parseRetention('every:15m:7d,weekly:forever').text, 'every:15m:1w, weekly:forever');
  const bad: Array<[string, string]> = [
    ['all:48h, hourly:3x, daily:365d', 'hourly:3x'],
    ['all:48h, fortnightly:30d', 'fortnightly:30d'],
    ['all:48h, hourly:24h', 'hourly:24h'], // not longer than the previous tier
    ['daily:30d, all:90d', 'all:90d'],
    ['all:2d, daily:30d, hourly:60d', 'hourly:60d'], // finer after coarser
    ['all:2d, every:0s:5d', 'every:0s:5d'],
    ['all:2d, every:15m', 'every:15m'],
    ['daily:forever, weekly:10y', 'weekly:10y'],
  ];
  for (const [text, tier] of bad) {
    const err = t.throws(() => parseRetention(text), { instanceOf: RetentionPolicyError }, text);
    t.true(err!.message.includes(`"${tier}"`), `${text}: ${err!.message}`);
    t.is(err!.tier, tier);
  }
  t.throws(() => parseRetention(''), { instanceOf: RetentionPolicyError });
});

test('plan: the last boundary per bucket survives, pins and the newest are kept, the oldest run is dropped', (t) => {
  const now = Date.UTC(2026, 5, 15, 12);
  const policy = parseRetention('all:1d, daily:10d');
  // Boundaries at ages (h): 300 (expired) 250 (expired) | 100, 99, 98 (one day) | 50, 49 | 10 | 1 (all tier) | 0.5 (newest)
  const ages = [300, 250, 100, 99.5, 99, 50, 49.5, 10, 1, 0.5];
  const txns = ages.map((h, i) => ({
    n: i + 1,
    records: 1,
    firstSeq: i + 1,
    lastSeq: i + 1,
    firstTime: now - h * HOUR,
    lastTime: now - h * HOUR,
    committedAt: now,
    bytes: 100,
  }));
  const plan = planFade({ policy, now, txns, anchor: null, pins: [], protectFrom: 10 });
  const steps = plan.steps.map((s) => [s.from, s.to, s.drop]);
  // Days (UTC) of ages 100/99.5/99 are one bucket only if they share a day: compute it like the planner.
  const day = (h: number): number => Math.floor((now - h * HOUR) / DAY);
  t.is(day(100), day(99)); // fixture sanity
  t.deepEqual(steps, [
    [1, 5, true], // 300, 250 expired + the 100..99 day up to its last boundary: dropped into the stub T_5
    [6, 7, false], // 50, 49.5 share a day
  ]);
  // A pin on the boundary before T_4 (after T_3) and an overlay pin inside T_7.
  const pinned = planFade({
    policy,
    now,
    txns,
    anchor: null,
    pins: [
      { k: 4, overlay: false },
      { k: 7, overlay: true },
    ],
    protectFrom: 10,
  });
  t.deepEqual(
    pinned.steps.map((s) => [s.from, s.to, s.drop]),
    [
      [1, 3, true],
      [4, 5, false],
    ],
  );
  // With the stub in place nothing more happens.
  const again = planFade({ policy, now, txns: txns.slice(4), anchor: 5, pins: [], protectFrom: 10 });
  t.deepEqual(
    again.steps.map((s) => [s.from, s.to, s.drop]),
    [[6, 7, false]],
  );
});

/** Ages of the synthetic timeline (oldest first). */
function timelineAges(): number[] {
  const ages: number[] = [];
  // Beyond the last tier (120 d): dropped.
  for (const d of [200, 180, 170, 150]) ages.push(d * DAY);
  // Weekly tier (30..120 d): several per week.
  for (const d of [100, 99, 98.5, 90, 70, 69, 68, 45, 44, 31]) ages.push(d * DAY + 3 * HOUR);
  // Daily tier (7..30 d): several per day.
  for (const d of [25, 25, 24, 20, 12, 12, 12, 8]) ages.push(d * DAY + 2 * HOUR + ages.length * 60_000);
  // Hourly tier (2..7 d).
  for (const h of [150, 149.5, 149.2, 120, 100, 99.9, 60]) ages.push(h * HOUR);
  // "all" tier (< 48 h) and the newest.
  for (const h of [40, 20, 19, 5, 1, 0.2]) ages.push(h * HOUR);
  return ages;
}

const POLICY = 'all:48h, hourly:7d, daily:30d, weekly:120d';

async function openWithTimeline(prefix: string, seed: number): Promise<{ dir: string; m: BackupManager; tl: Timeline }> {
  const dir = tmpDir(prefix);
  const now = Date.UTC(2026, 2, 10, 9, 30);
  const tl = await buildTimeline(path.join(dir, 'journal'), timelineAges(), now, seed);
  const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: RGROUP, volumes: RVOLS });
  for (const ref of tl.refs) await m.submit(ref);
  return { dir, m, tl };
}

test('model: fading keeps every surviving point byte-exact, refuses merged interiors with the nearest points, frees the expected space, keeps pins', async (t) => {
  t.timeout(300_000);
  const { dir, m, tl } = await openWithTimeline('ret-model', 11);
  try {
    const total = tl.txns.length;
    t.is(await checkRetained(m, tl, diffImages), null);
    const before = historyBytes(m);
    // Pins: a snapshot on the boundary before T_6 (weekly tier, not the last of its week)
    // and a clone inside T_17 (daily tier, not the last of its day).
    m.history.pins.pin('view:snap', 6, false);
    const inside = tl.txns[16]!;
    const pinSeq = inside.length > 1 ? inside[0]!.seq : inside[0]!.seq;
    m.history.pins.pin('view:clone', 17, true);
    await m.retention.setPolicy(POLICY);

    const dry = await m.fade({ now: tl.now, dryRun: true });
    t.true(dry.steps.length > 0);
    t.is(historyBytes(m), before, 'a dry run changes nothing');
    t.is(m.transactions().length, total);

    const rep = await m.fade({ now: tl.now });
    t.true(rep.steps.filter((s) => s.done).length > 0, JSON.stringify(rep.steps));
    t.is(rep.steps.filter((s) => s.skipped).length, 0, JSON.stringify(rep.steps.filter((s) => s.skipped)));
    // Space: the dry run predicted it, and it matches the plain computation.
    const after = historyBytes(m);
    t.is(before - after, rep.bytesFreed);
    t.is(dry.bytesFreed, rep.bytesFreed);
    let expected = 0;
    const recs = m.transactions();
    for (const r of recs) {
      if (r.mergedFrom === undefined) expected += r.ailfc.size + r.bilfc.size;
      else expected += expectedMergedBytes(tl, r.mergedFrom, r.n, r.n === recs[0]!.n && r.blocks === 0);
    }
    t.is(after, expected);
    t.true(after < before, `${after} of ${before} bytes left`);
    t.deepEqual(orphans(m), []);
    t.true((await m.verifyHistory()).every((h) => h.ok));

    // Policy: everything younger than 48 h is untouched; older tiers keep at most one boundary per bucket.
    const now = tl.now;
    for (const r of recs) {
      if (now - r.lastTime <= 48 * HOUR && r.n !== recs[0]!.n) t.is(r.mergedFrom, undefined, `T_${r.n} is in the all tier`);
    }
    const bucket = (time: number): string => {
      const age = now - time;
      if (age <= 48 * HOUR) return `all:${time}`;
      if (age <= 7 * DAY) return `h:${Math.floor(time / HOUR)}`;
      if (age <= 30 * DAY) return `d:${Math.floor(time / DAY)}`;
      return `w:${Math.floor((time + 3 * DAY) / (7 * DAY))}`;
    };
    const pinnedEnds = new Set([5, 16, 17]); // before T_6; around T_17
    const seen = new Map<string, number>();
    for (const r of recs.slice(1)) {
      const b = bucket(r.lastTime);
      if (seen.has(b) && !pinnedEnds.has(seen.get(b)!) && !pinnedEnds.has(r.n))
        t.fail(`T_${seen.get(b)} and T_${r.n} end in one bucket ${b}`);
      seen.set(b, r.n);
    }
    // Dropped: the oldest is the stub, ending before the last tier's age, nothing readable before it.
    const stub = recs[0]!;
    t.is(stub.blocks, 0);
    t.true(now - stub.lastTime > 120 * DAY || stub.n >= 5);
    t.throws(() => m.history.readBefore(0, 0, 4096, stub.n), { instanceOf: RangeError });

    // Every surviving point reads exact; the pinned ones too.
    t.is(await checkRetained(m, tl, diffImages), null);
    t.is(diffImages(modelAfterTxn(tl, 5), await readBeforeAll(m, 6)), null, 'pinned boundary before T_6');
    t.is(m.transaction(17)?.mergedFrom, undefined, 'overlay-pinned T_17 stays whole');
    t.is(diffImages(modelAt(tl, pinSeq), await readAtSeq(m, pinSeq)), null, 'pinned point inside T_17');

    // Interior points of merged transactions are refused, naming the nearest valid points.
    const merged = recs.find((r) => r.mergedFrom !== undefined && r.n !== stub.n && r.mergedFrom < r.n)!;
    t.truthy(merged);
    const interior = tl.txns[merged.mergedFrom! - 1]![0]!.seq;
    const err = await t.throwsAsync(resolvePoint(m.history, { kind: 'seq', seq: interior, text: `@seq:${interior}` }));
    t.regex(err!.message, /nearest valid points are @seq:\d+ .* and @seq:\d+/);
    t.true(err!.message.includes(`@seq:${merged.lastSeq}`));
    // Before the stub: refused as before retained history.
    const gone = tl.txns[0]![0]!.seq;
    await t.throwsAsync(resolvePoint(m.history, { kind: 'seq', seq: gone, text: '@seq:1' }), { message: /before retained history/ });
    // A new pin inside merged history is refused; one on a surviving boundary is fine.
    t.throws(() => m.history.pins.pin('late', merged.n, false), { message: /retention merged/ });
    t.throws(() => m.history.pins.pin('late', stub.n, false), { message: /no longer retained/ });
    m.history.pins.pin('ok', merged.n + 1, false);
    m.history.pins.unpin('ok');

    // Fading again with the same clock changes nothing; unpinned, the pinned stretches fade too.
    const again = await m.fade({ now: tl.now });
    t.is(again.steps.filter((s) => s.done).length, 0);
    m.history.pins.unpin('view:snap');
    m.history.pins.unpin('view:clone');
    const third = await m.fade({ now: tl.now });
    t.true(
      third.steps.every((s) => s.done),
      JSON.stringify(third.steps),
    );
    t.is(m.retention.plan(parseRetention(POLICY), tl.now).steps.length, 0);
    t.is(await checkRetained(m, tl, diffImages), null);
    t.deepEqual(orphans(m), []);

    // A resend of a container that was merged away is answered, not refused.
    const c = await m.submit(tl.refs[merged.mergedFrom! - 1]!);
    t.is(c.containerId, merged.mergedFrom!);

    // The policy survives a restart; the next fade later in time drops more.
    await m.close();
    const m2 = await BackupManager.open(path.join(dir, 'mgr'), { groupId: RGROUP, volumes: RVOLS });
    try {
      t.is(m2.retention.stored()?.text, parseRetention(POLICY).text);
      const later = await m2.fade({ now: tl.now + 40 * DAY });
      t.true(
        later.steps.some((s) => s.done && s.drop),
        JSON.stringify(later.steps.map((s) => [s.from, s.to, s.drop, s.done, s.skipped])) +
          JSON.stringify(m2.transactions().map((r) => [r.n, r.mergedFrom, Math.round((tl.now - r.lastTime) / DAY)])),
      );
      t.is(await checkRetained(m2, tl, diffImages), null);
      t.deepEqual(orphans(m2), []);
    } finally {
      await m2.close();
    }
  } finally {
    await m.close();
    rmrf(dir);
  }
});

test('fading runs while the manager applies new transactions; readers of a merged range keep working', async (t) => {
  t.timeout(180_000);
  const dir = tmpDir('ret-live');
  try {
    const now = Date.UTC(2026, 2, 10, 9, 30);
    const ages = [...timelineAges().slice(0, 30)];
    const tl = await buildTimeline(
      path.join(dir, 'journal'),
      [...ages, ...Array.from({ length: 15 }, (_, i) => (15 - i) * 60_000)],
      now,
      23,
      8,
    );
    const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: RGROUP, volumes: RVOLS });
    try {
      for (const ref of tl.refs.slice(0, 30)) await m.submit(ref);
      await m.retention.setPolicy(POLICY);
      // A reader at the surviving boundary just before a merged range (it reads through
      // that range's before-images), hammering while the fade and the apply run.
      const dry = await m.fade({ now, dryRun: true });
      const first = dry.steps.find((s) => !s.drop)!;
      t.truthy(first);
      const k = first.from;
      let stop = false;
      let reads = 0;
      const expect = modelAfterTxn(tl, k - 1);
      const reader = (async () => {
        while (!stop) {
          const d = diffImages(expect, await readBeforeAll(m, k));
          if (d) throw new Error(`reader: ${d}`);
          reads++;
          await new Promise((r) => setTimeout(r, 2));
        }
      })();
      const applying = Promise.all(tl.refs.slice(30).map((r) => m.submit(r)));
      const rep = await m.fade({ now, maxBytesPerMerge: 64 * 1024 });
      await applying;
      stop = true;
      await reader;
      t.true(reads > 0);
      t.true(rep.steps.filter((s) => s.done).length >= 2, JSON.stringify(rep.steps.map((s) => [s.from, s.to, s.done, s.skipped])));
      t.is(await checkRetained(m, tl, diffImages), null);
      t.deepEqual(orphans(m), []);
      t.is(m.status().lastContainer, tl.refs.length);
    } finally {
      await m.close();
    }
  } finally {
    rmrf(dir);
  }
});

const CHILD = path.join(__dirname, 'helpers', 'retention-crash-child.js');

function runChild(spec: string, env: Record<string, string>): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, spec], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, out }));
  });
}

test('kill -9 during fading, at every step: reopened, every retained point reads exact and no orphan files remain', async (t) => {
  t.timeout(300_000);
  const base = tmpDir('ret-crash');
  try {
    const now = Date.UTC(2026, 2, 10, 9, 30);
    const tl = await buildTimeline(path.join(base, 'journal'), timelineAges(), now, 31);
    const template = path.join(base, 'template');
    const m0 = await BackupManager.open(template, { groupId: RGROUP, volumes: RVOLS });
    for (const ref of tl.refs) await m0.submit(ref);
    await m0.retention.setPolicy(POLICY);
    await m0.close();
    for (const step of ['merge-mid', 'merged', 'committed', 'freed-mid']) {
      const dir = path.join(base, step);
      fs.cpSync(template, dir, { recursive: true });
      const spec = path.join(base, `${step}.json`);
      fs.writeFileSync(spec, JSON.stringify({ dir, groupId: RGROUP, volumes: RVOLS, now }));
      const r = await runChild(spec, { REWIND_FADE_CRASH_AT: step });
      t.is(r.signal, 'SIGKILL', `${step}: ${r.out}`);
      const leftovers = fs.readdirSync(path.join(dir, 'history')).length;
      const m = await BackupManager.open(dir, { groupId: RGROUP, volumes: RVOLS });
      try {
        t.deepEqual(orphans(m), [], step);
        t.true(
          fs.readdirSync(m.historyDir).every((f) => !f.endsWith('.tmp')),
          step,
        );
        t.true(fs.readdirSync(m.historyDir).length <= leftovers, step);
        t.true(
          (await m.verifyHistory()).every((h) => h.ok),
          step,
        );
        t.is(await checkRetained(m, tl, diffImages), null, `${step}: after the crash`);
        // Fading again finishes the job.
        await m.fade({ now });
        t.is(m.retention.plan(parseRetention(POLICY), now).steps.length, 0, step);
        t.is(await checkRetained(m, tl, diffImages), null, `${step}: after fading again`);
        t.deepEqual(orphans(m), [], step);
      } finally {
        await m.close();
      }
      rmrf(dir);
    }
  } finally {
    rmrf(base);
  }
});
