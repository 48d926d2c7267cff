/**
 * The console's server side without a daemon: the timeline index (bucketing
 * conserves what was written; incremental appends and the resync after a
 * fade equal a rebuild; the saved file round-trips), the timeline service's
 * bounds, the lag sampler's rings, the job registry, the static files.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TransactionRecord } from '../src/manager/types';
import type { MarkerRecord } from '../src/timetravel/markers';
import { Columns, TimelineIndex, type HistoryState, type TxnSource } from '../src/console/timeline-index';
import { decodeIndex, encodeIndex } from '../src/console/timeline-file';
import { TimelineService, type GroupHistory, type TimelineHost } from '../src/console/timeline';
import { MAX_ITEMS } from '../src/console/api';
import { LagSampler } from '../src/console/lag-sampler';
import { JobRegistry } from '../src/daemon/jobs';
import { CONSOLE_CSP, ConsoleAssets } from '../src/console/assets';
import { SILENT_LOGGER } from '../src/util/logger';

function rec(n: number, seq: number, records: number, t: number, dur: number, extra: Partial<TransactionRecord> = {}): TransactionRecord {
  const file = { file: `f${n}`, size: 0, bodyCrc: 0, recordCount: records };
  return {
    n,
    groupId: 1,
    firstSeq: records ? seq + 1 : 0,
    lastSeq: records ? seq + records : 0,
    firstTime: records ? t : 0,
    lastTime: records ? t + dur : 0,
    records,
    errors: 0,
    ailfc: file,
    bilfc: file,
    blocks: records,
    bytesApplied: records * 4096,
    volumes: [1],
    blockSize: 4096,
    committedAt: t + dur,
    ...extra,
  };
}

class FakeSource implements TxnSource {
  readonly recs = new Map<number, TransactionRecord>();
  created = 1;
  firstContainer = 1;
  last = 0;
  state(): HistoryState {
    const all = [...this.recs.values()];
    const lastRec = all.filter((r) => r.records > 0).pop();
    return {
      created: this.created,
      lastContainer: this.last,
      lastSeq: lastRec?.lastSeq ?? 0,
      lastTime: lastRec?.lastTime ?? 0,
      firstContainer: this.firstContainer,
      count: this.recs.size,
    };
  }
  transactions(o: { from?: number; to?: number; limit?: number }): TransactionRecord[] {
    const out = [...this.recs.values()].filter((r) => r.n >= (o.from ?? 0) && r.n <= (o.to ?? Infinity)).sort((a, b) => a.n - b.n);
    return o.limit ? out.slice(0, o.limit) : out;
  }
  transactionNumbers(to?: number): number[] {
    return [...this.recs.keys()].filter((n) => n <= (to ?? Infinity)).sort((a, b) => a - b);
  }
  add(r: TransactionRecord): void {
    this.recs.set(r.n, r);
    this.last = Math.max(this.last, r.n);
  }
}

/** n transactions, 1-10 writes each, 2 s apart, some empty. */
function history(n: number, t0 = 1_000_000): FakeSource {
  const s = new FakeSource();
  let seq = 0;
  for (let i = 1; i <= n; i++) {
    const records = i % 17 === 0 ? 0 : 1 + ((i * 7) % 10);
    s.add(rec(i, seq, records, t0 + i * 2000, 1500));
    seq += records;
  }
  return s;
}

function columnsOf(idx: TimelineIndex): unknown {
  const c = idx.cols;
  const take = (a: Float64Array | Uint32Array | Uint8Array) => [...a.subarray(0, c.length)];
  return { n: take(c.n), t0: take(c.t0), t1: take(c.t1), seq: take(c.seq), w: take(c.cumW), b: take(c.cumB), f: take(c.flags) };
}

test('buckets add up to what was written, at any bucket size', async (t) => {
  const src = history(500);
  const idx = new TimelineIndex(src);
  await idx.sync();
  const total = [...src.recs.values()].reduce((s, r) => s + r.bytesApplied, 0);
  const writes = [...src.recs.values()].reduce((s, r) => s + r.records, 0);
  const ext = idx.extent()!;
  for (const buckets of [1, 7, 100, 2000]) {
    const svc = new TimelineService(host(src, []), null, SILENT_LOGGER);
    const tl = await svc.timeline('v', { from: ext.first - 1000, to: ext.last + 1000, buckets });
    t.is(tl.rate.t.length, buckets);
    t.true(Math.abs(tl.rate.bytes.reduce((a, b) => a + b, 0) - total) <= buckets, `bytes with ${buckets} buckets`);
    t.true(Math.abs(tl.rate.writes.reduce((a, b) => a + b, 0) - writes) < 0.01 * buckets + 1e-6, `writes with ${buckets} buckets`);
  }
  // A window inside one transaction gets its share of it (spread over its time range).
  const r = src.recs.get(10)!;
  const svc = new TimelineService(host(src, []), null, SILENT_LOGGER);
  const tl = await svc.timeline('v', { from: r.firstTime, to: r.firstTime + (r.lastTime - r.firstTime) / 2, buckets: 1 });
  t.is(tl.rate.bytes[0], r.bytesApplied / 2);
});

test('appending new commits and resyncing after a fade both equal a rebuild', async (t) => {
  const src = history(300);
  const idx = new TimelineIndex(src);
  await idx.sync();
  // New commits.
  let seq = src.state().lastSeq;
  for (let n = 301; n <= 320; n++) {
    src.add(rec(n, seq, 3, 1_000_000 + n * 2000, 1000));
    seq += 3;
  }
  await idx.sync();
  const fresh = async () => {
    const f = new TimelineIndex(src);
    await f.sync();
    return f;
  };
  t.deepEqual(columnsOf(idx), columnsOf(await fresh()));
  // Retention merges T_100..T_150 into T_150, drops T_1..T_20 into a stub T_20, and something new commits.
  const a = src.recs.get(100)!;
  const b = src.recs.get(150)!;
  for (let n = 100; n < 150; n++) src.recs.delete(n);
  src.recs.set(150, { ...b, firstSeq: a.firstSeq, firstTime: a.firstTime, mergedFrom: 100, records: 40, bytesApplied: 40 * 4096 });
  const stub = src.recs.get(20)!;
  for (let n = 1; n < 20; n++) src.recs.delete(n);
  src.recs.set(20, { ...stub, records: 1, bytesApplied: 4096, mergedFrom: 1 });
  src.firstContainer = 21;
  src.add(rec(321, seq, 2, 1_000_000 + 321 * 2000, 500));
  await idx.sync();
  t.deepEqual(columnsOf(idx), columnsOf(await fresh()));
  t.is(idx.length, src.recs.size);
  // Another history under the same name (created differs): rebuilt.
  const other = history(5);
  other.created = 2;
  const idx2 = new TimelineIndex(other);
  idx2.adopt(idx.state!, idx.cols, []);
  await idx2.sync();
  t.is(idx2.length, 5);
});

test('the saved index reads back the same; a damaged file is refused', async (t) => {
  const src = history(1000);
  src.add(rec(1001, 99999, 5, 1_000_000 + 1001 * 2000, 100, { superTransaction: { id: 1001, fromSeq: 99990, last: true, fromTime: 1 } }));
  const idx = new TimelineIndex(src);
  await idx.sync();
  const buf = encodeIndex(idx)!;
  const back = decodeIndex(buf)!;
  t.deepEqual(back.state, idx.state);
  t.deepEqual(back.supers, [...idx.supers.values()]);
  const copy = new TimelineIndex(src);
  copy.adopt(back.state, back.cols, back.supers);
  t.deepEqual(columnsOf(copy), columnsOf(idx));
  t.is(decodeIndex(buf.subarray(0, buf.length - 1)), null);
  t.is(decodeIndex(Buffer.from('not an index')), null);
});

function host(src: FakeSource, markers: MarkerRecord[], version = 0): TimelineHost {
  const h: GroupHistory = { group: 'g', volumeId: 1, groupVolumes: ['v'], source: src, records: async () => [] };
  return {
    history: () => h,
    markers: () => markers,
    markersVersion: () => version,
    lag: () => ({ t: [], seconds: [], bytes: [] }),
  };
}

function marker(i: number, time: number): MarkerRecord {
  return {
    name: `m${i}`,
    group: 'g',
    volume: null,
    seq: i,
    time,
    kind: i % 2 ? 'application-consistent' : 'crash-consistent',
    reason: null,
    retainUntil: null,
    auto: false,
    hooks: { pre: null, post: null },
  };
}

test('answers stay bounded: items listed when few, counted per bucket when many', async (t) => {
  const src = history(2000);
  const ext = { first: 1_000_000, last: 1_000_000 + 2001 * 2000 };
  const markers = Array.from({ length: 1000 }, (_, i) => marker(i, ext.first + i * 4000));
  const svc = new TimelineService(host(src, markers), null, SILENT_LOGGER);
  const all = await svc.timeline('v', { buckets: 50 });
  t.is(all.transactions.items, null);
  t.is(all.transactions.total, 2000);
  t.is(all.markers.items, null);
  t.is(all.markers.total, 1000);
  const counted = all.markers.buckets!.application.reduce((a, b) => a + b, 0) + all.markers.buckets!.crash.reduce((a, b) => a + b, 0);
  t.is(counted, 1000);
  const narrow = await svc.timeline('v', { from: ext.first + 100_000, to: ext.first + 200_000, buckets: 50 });
  t.truthy(narrow.transactions.items);
  t.true(narrow.transactions.items!.length <= MAX_ITEMS);
  t.true(narrow.transactions.items!.every((x) => x.lastTime >= ext.first + 100_000 && x.firstTime < ext.first + 200_000));
  t.is(narrow.markers.items!.length, 26);
  await t.throwsAsync(svc.timeline('v', { from: 5, to: 5 }), { message: /window is empty/ });
  const big = await svc.timeline('v', { buckets: 10_000 });
  t.is(big.rate.t.length, 2000);
});

test('faded history and super transactions come back as spans', async (t) => {
  const src = history(100);
  for (let n = 10; n <= 20; n++) src.recs.set(n, { ...src.recs.get(n)!, mergedFrom: n });
  for (let n = 50; n <= 55; n++) {
    const r = src.recs.get(n)!;
    src.recs.set(n, {
      ...r,
      superTransaction: { id: 50, fromSeq: src.recs.get(50)!.firstSeq, last: n === 55, fromTime: 1_000_000 + 49 * 2000 },
    });
  }
  const svc = new TimelineService(host(src, []), null, SILENT_LOGGER);
  const tl = await svc.timeline('v', { buckets: 100 });
  t.is(tl.faded.length, 1);
  t.is(tl.faded[0]!.from, src.recs.get(10)!.firstTime);
  t.is(tl.supers.length, 1);
  t.like(tl.supers[0], { id: 50, complete: true, from: 1_000_000 + 49 * 2000, to: src.recs.get(55)!.lastTime });
});

test('lag sampler keeps a fine and a coarse ring and answers a window', async (t) => {
  let lag = 0;
  const s = new LagSampler(() => [{ volume: 'v', seconds: lag, bytes: lag * 1000 }], {
    fineSamples: 10,
    coarseMs: 5000,
    coarseSamples: 100,
  });
  for (let i = 0; i < 60; i++) {
    lag = i % 7;
    s.sample(100_000 + i * 1000);
  }
  const all = s.samples('v', 0, Infinity);
  // 10 fine samples (the last 10 s) and the coarse ones before them (the largest of each 5 s).
  t.deepEqual(
    all.t.slice(-10),
    Array.from({ length: 10 }, (_, i) => 100_000 + (50 + i) * 1000),
  );
  t.true(all.t.length > 10 && all.t.length <= 22);
  t.true(all.t.every((x, i) => i === 0 || x > all.t[i - 1]!));
  t.is(Math.max(...all.seconds), 6);
  t.deepEqual(s.samples('v', 100_055_000, 100_056_000).t.length, 0);
  t.is(s.samples('nope', 0, Infinity).t.length, 0);
});

test('job registry: progress, results, errors, bounded history', async (t) => {
  const jobs = new JobRegistry();
  const v0 = jobs.version;
  const r = await jobs.track(
    'verify',
    'db',
    'full',
    async (progress) => {
      progress({ phase: 'hash', done: 1, total: 2 });
      t.is(jobs.list()[0]!.progress!.done, 1);
      t.is(jobs.running(), 1);
      return 42;
    },
    (x) => `answer ${x}`,
  );
  t.is(r, 42);
  t.true(jobs.version > v0);
  t.like(jobs.list()[0], { kind: 'verify', state: 'done', summary: 'answer 42' });
  await t.throwsAsync(jobs.track('restore', 'db', '', async () => Promise.reject(new Error('boom'))));
  t.like(jobs.list()[0], { kind: 'restore', state: 'failed', error: 'boom' });
  const h = jobs.start('fade', 'g');
  h.discard();
  t.is(jobs.list().filter((j) => j.kind === 'fade').length, 0);
  for (let i = 0; i < 150; i++) jobs.start('diff', 'db').done();
  t.is(jobs.list().length, 100);
});

test('static files: a fixed set, CSP on each, gzip and revalidation, nothing else', async (t) => {
  const assets = ConsoleAssets.load();
  const paths = assets.paths();
  t.true(paths.includes('/'));
  t.true(paths.includes('/assets/js/app.js'));
  t.true(paths.some((p) => /^\/assets\/vendor\/uplot-[\d.]+\/uPlot\.iife\.min\.js$/.test(p)));
  const server = http.createServer((req, res) => {
    if (!assets.serve(req, res, new URL(req.url ?? '/', 'http://x').pathname)) {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const port = (server.address() as { port: number }).port;
  const get = (p: string, headers: Record<string, string> = {}) => fetch(`http://127.0.0.1:${port}${p}`, { headers });
  const index = await get('/');
  t.is(index.status, 200);
  t.is(index.headers.get('content-security-policy'), CONSOLE_CSP);
  t.regex(index.headers.get('content-type')!, /text\/html/);
  const html = await index.text();
  t.notRegex(html, /<script>|\son\w+=|\sstyle=/, 'no inline script, handler or style');
  const vendor = paths.find((p) => p.endsWith('uPlot.iife.min.js'))!;
  const v = await get(vendor, { 'accept-encoding': 'gzip' });
  t.regex(v.headers.get('cache-control')!, /immutable/);
  t.regex(v.headers.get('content-type')!, /javascript/);
  const etag = (await get('/assets/js/app.js')).headers.get('etag')!;
  t.is((await get('/assets/js/app.js', { 'if-none-match': etag })).status, 304);
  for (const p of [
    '/assets/../package.json',
    '/assets/js/../../../package.json',
    '/assets/js',
    '/etc/passwd',
    '/assets/tsconfig.web.json',
  ]) {
    t.is((await get(p)).status, 404, p);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rwc-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.throws(() => ConsoleAssets.load(dir), { message: /index\.html/ });
});

test('columns grow and copy rows exactly', (t) => {
  const c = new Columns(2);
  for (let i = 0; i < 10; i++) c.push(i + 1, i * 10, i * 10 + 5, i, 2, 8192, 0);
  t.is(c.length, 10);
  t.is(c.cumB[9], 10 * 8192);
  const d = new Columns(1);
  for (let i = 0; i < 10; i++) d.pushRow(c, i);
  t.deepEqual([...d.cumW.subarray(0, 10)], [...c.cumW.subarray(0, 10)]);
});
