/**
 * Acceptance for retention through a live `rewind serve` and the CLI:
 * `rewind retention VOL --policy/--dry-run/--run`, with a fine policy and
 * real sleeps; the background timer; the policy surviving a restart.
 */
import test from 'ava';
import { NbdClient } from '../src/nbd/client';
import { startDaemon, sleep, type TestDaemon } from './helpers/daemon';
import { pattern } from './helpers/nbd-fixtures';

const SIZE = 1024 * 1024;

async function cli(d: TestDaemon, args: string[]): Promise<string> {
  const r = await d.cli(args, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function api<T = any>(d: TestDaemon, method: string, p: string, body?: unknown): Promise<T> {
  const r = await d.api(method, p, body);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

async function readExport(d: TestDaemon, name: string): Promise<Buffer> {
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: name });
  try {
    return await c.read(0, SIZE);
  } finally {
    c.destroy();
  }
}

/** Writes `rounds` transactions (a seal after each), `gapMs` apart; returns the image after each and its last seq. */
async function writeRounds(
  d: TestDaemon,
  vol: string,
  rounds: number,
  gapMs: number,
  seed: number,
): Promise<Array<{ image: Buffer; lastSeq: number; firstSeq: number }>> {
  const img = Buffer.alloc(SIZE);
  const out: Array<{ image: Buffer; lastSeq: number; firstSeq: number }> = [];
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: vol });
  let seq = 0;
  try {
    for (let r = 0; r < rounds; r++) {
      const firstSeq = seq + 1;
      for (let i = 0; i < 4; i++) {
        const off = ((seed * 7 + r * 5 + i * 3) % 64) * 16384;
        const data = pattern(8192 + 4096 * (i % 2), seed * 1000 + r * 10 + i);
        await c.write(off, data);
        data.copy(img, off);
        seq++;
      }
      await cli(d, ['seal', vol]);
      out.push({ image: Buffer.from(img), lastSeq: seq, firstSeq });
      if (gapMs) await sleep(gapMs);
    }
  } finally {
    c.destroy();
  }
  return out;
}

test.serial(
  'rewind retention: set, show, dry run, run; surviving points read exact, merged interiors refused; the policy survives a restart',
  async (t) => {
    const d = await startDaemon({ env: { REWIND_RETENTION_INTERVAL_MS: '0' } });
    t.teardown(() => d.cleanup());
    await cli(d, ['volume', 'create', 'r', '--size', '1M', '--protected']);
    const rounds = await writeRounds(d, 'r', 6, 300, 1);

    // No policy yet.
    t.regex(await cli(d, ['retention', 'r']), /policy: +none/);
    // A bad policy is refused, naming the tier.
    const bad = await d.cli(['retention', 'r', '--policy', 'all:2s, hourly:1x']);
    t.not(bad.code, 0);
    t.regex(bad.stderr, /"hourly:1x"/);

    // all:1s, then one point per hour for a day: the six transactions share an hour bucket
    // (or two), so most of their boundaries go; the newest is never touched.
    await sleep(1200);
    const set = await cli(d, ['retention', 'r', '--policy', 'all:1s, every:1h:1d']);
    t.regex(set, /policy: +all:1s, every:1h:1d/);
    const logBefore = await api(d, 'GET', '/v1/volumes/r/log');
    const dry = JSON.parse(await cli(d, ['retention', 'r', '--dry-run', '--json']));
    t.true(dry.dryRun);
    t.true(dry.steps.length >= 1, JSON.stringify(dry));
    t.true(dry.bytesFreed > 0);
    t.true(dry.pointsRemoved > 0);
    t.deepEqual((await api(d, 'GET', '/v1/volumes/r/log')).transactions.length, logBefore.transactions.length, 'a dry run changes nothing');
    const text = await cli(d, ['retention', 'r', '--dry-run']);
    t.regex(text, /would go/);
    t.regex(text, /would free/);

    const ran = JSON.parse(await cli(d, ['retention', 'r', '--run', '--json']));
    t.false(ran.dryRun);
    t.true(
      ran.steps.some((s: any) => s.done),
      JSON.stringify(ran),
    );
    t.is(ran.bytesFreed, dry.bytesFreed);
    t.is(ran.pointsRemoved, dry.pointsRemoved);
    const txns = (await api(d, 'GET', '/v1/volumes/r/log')).transactions as Array<{ n: number; lastSeq: number; firstSeq: number }>;
    t.true(txns.length < logBefore.transactions.length);

    // Every transaction end that is left reads exactly as the volume was then.
    const byLast = new Map(rounds.map((r) => [r.lastSeq, r.image]));
    for (const tx of txns) {
      const want = byLast.get(tx.lastSeq);
      if (!want) continue;
      await api(d, 'POST', '/v1/volumes/r/snapshots', { at: `@seq:${tx.lastSeq}`, name: `s${tx.lastSeq}` });
      t.true((await readExport(d, `s${tx.lastSeq}`)).equals(want), `end @seq:${tx.lastSeq}`);
      await api(d, 'DELETE', `/v1/views/s${tx.lastSeq}`);
    }
    // A write inside merged history is no point any more: the error names the nearest ones.
    const goneSeq = rounds[0]!.firstSeq;
    const r = await d.api('POST', '/v1/volumes/r/resolve', { at: `@seq:${goneSeq}` });
    t.is(r.status, 400);
    t.regex(JSON.stringify(r.body), /nearest valid points|before retained history/);

    // The policy is stored in the group's manager: it survives a restart.
    await d.restart();
    t.regex(await cli(d, ['retention', 'r']), /policy: +all:1s, every:1h:1d/);
    const again = JSON.parse(await cli(d, ['retention', 'r', '--run', '--json']));
    t.is(again.steps.filter((s: any) => s.done).length, 0);
  },
);

test.serial('the daemon fades in the background on its timer; the test clock offset ages history', async (t) => {
  const d = await startDaemon({ env: { REWIND_RETENTION_INTERVAL_MS: '300', REWIND_TEST_CLOCK_OFFSET_MS: String(3 * 86_400_000) } });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'b', '--size', '1M', '--protected']);
  const rounds = await writeRounds(d, 'b', 5, 0, 2);
  const before = (await api(d, 'GET', '/v1/volumes/b/log')).transactions.length;
  // Three days on (the offset), everything is beyond "all:1d" and in one daily bucket, or dropped past 2d.
  await cli(d, ['retention', 'b', '--policy', 'all:1d, daily:2d']);
  let info: any = null;
  for (let i = 0; i < 100; i++) {
    await sleep(200);
    info = await api(d, 'GET', '/v1/volumes/b/retention');
    if (info.transactions < before) break;
  }
  t.true(info.transactions < before, JSON.stringify(info));
  // The newest transaction is untouched, and the latest point still reads exact.
  const last = rounds[rounds.length - 1]!;
  await api(d, 'POST', '/v1/volumes/b/snapshots', { at: 'latest', name: 'blatest' });
  t.true((await readExport(d, 'blatest')).equals(last.image));
});

test.serial(
  'markers pin their points, from the start after a restart: fading keeps a marked boundary (and a marked write inside a transaction) readable, unmarked ones go',
  async (t) => {
    const d = await startDaemon({ env: { REWIND_RETENTION_INTERVAL_MS: '0' } });
    t.teardown(() => d.cleanup());
    await cli(d, ['volume', 'create', 'm', '--size', '1M', '--protected']);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'm' });
    const img = Buffer.alloc(SIZE);
    const saved = new Map<string, Buffer>();
    const ends: number[] = [];
    for (let r = 0; r < 5; r++) {
      for (let i = 0; i < 4; i++) {
        const off = ((r * 4 + i) % 64) * 16384;
        const data = pattern(8192, 500 + r * 10 + i);
        await c.write(off, data);
        data.copy(img, off);
        if (r === 2 && i === 1) {
          // Inside a transaction: the overlay point must stay whole.
          await cli(d, ['mark', 'm', 'mid-2']);
          saved.set('mid-2', Buffer.from(img));
        }
      }
      await c.flush();
      await cli(d, ['seal', 'm']);
      ends.push((await api(d, 'POST', '/v1/volumes/m/resolve', { at: 'latest' })).seq);
      if (r === 1) {
        await cli(d, ['mark', 'm', 'end-1']);
        saved.set('end-1', Buffer.from(img));
      }
    }
    c.destroy();
    // After a restart the markers pin before any new one is placed (the crash campaign found they did not).
    await d.restart();
    await sleep(1200);
    await cli(d, ['retention', 'm', '--policy', 'all:1s, every:1h:1d']);
    const ran = JSON.parse(await cli(d, ['retention', 'm', '--run', '--json']));
    t.true(ran.pointsRemoved > 0, JSON.stringify(ran));
    for (const [name, want] of saved) {
      await cli(d, ['snapshot', 'm', '--at', name, '--name', `s-${name}`]);
      t.true((await readExport(d, `s-${name}`)).equals(want), `${name} still reads exactly`);
    }
    // An unmarked boundary between them went: round 0's end is no point any more.
    const gone = await d.api('POST', '/v1/volumes/m/resolve', { at: `@seq:${ends[0]! - 1}` });
    t.is(gone.status, 400);
  },
);
