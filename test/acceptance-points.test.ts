/**
 * Acceptance for point resolution (issue 18) through a live `rewind serve`
 * and the CLI:
 * - a time whose last write retention merged is refused by every command
 *   that takes a point (point, snapshot, clone, clone step, export, diff,
 *   restore), naming the nearest valid points before and after with their
 *   times; `--nearest before|after` takes one explicitly and the command
 *   says which point it used;
 * - `rewind point VOL latest` reads the journal: asked 100 times in a row
 *   it adds no transaction.
 *
 * History of volume r (one seal after each write, so one transaction each):
 *   seq 1: 0xaa at 0 (marker keepA pins its end)   seq 2: 0xbb at 0
 *   TB (a time between seq 2 and seq 3)             seq 3: 0xcc at 0
 *   seq 4: 0xdd at 4 MiB
 * Retention ('all:1m, every:3650d:forever', the clock 10 minutes on) merges
 * T_2..T_3 into T_3: the last write at or before TB (seq 2) faded.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { sleep, startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { apiOk as api, cliOk as cli, readExport } from './helpers/live';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

interface Scenario {
  d: TestDaemon;
  dir: string;
  tb: string;
  /** ISO times of the writes seq 1..4. */
  times: string[];
}

let sc: Scenario;

function fill(v: number, n = 64 * 1024): Buffer {
  return Buffer.alloc(n, v);
}

test.before(async () => {
  const d = await startDaemon({ env: { REWIND_RETENTION_INTERVAL_MS: '0', REWIND_TEST_CLOCK_OFFSET_MS: String(10 * 60_000) } });
  const dir = tempDir();
  await cli(d, ['volume', 'create', 'r', '--size', '16M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'r' });
  const write = async (off: number, v: number) => {
    await c.write(off, fill(v));
    await c.flush();
    await cli(d, ['seal', 'r']);
    await sleep(30);
  };
  await write(0, 0xaa);
  await cli(d, ['mark', 'r', 'keepA']);
  await write(0, 0xbb);
  const tb = new Date().toISOString();
  await sleep(30);
  await write(0, 0xcc);
  await write(4 * MiB, 0xdd);
  c.destroy();
  const log = (await api(d, 'GET', '/v1/volumes/r/log')).transactions as Array<{ n: number; lastSeq: number; lastTime: number }>;
  const times = log.map((x) => new Date(x.lastTime).toISOString());
  await cli(d, ['retention', 'r', '--policy', 'all:1m, every:3650d:forever']);
  await cli(d, ['retention', 'r', '--run']);
  sc = { d, dir, tb, times };
});

test.after.always(async () => {
  if (!sc) return;
  await sc.d.cleanup();
  fs.rmSync(sc.dir, { recursive: true, force: true });
});

/** The refusal of TB: inside merged T_3, naming @seq:1 and @seq:3 with their times. */
function refusal(): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(
    `${esc(sc.tb)} lies inside T_3, which retention merged \\(transactions 2\\.\\.3.*nearest valid points are @seq:1 \\(${esc(sc.times[0]!)}\\) and @seq:3 \\(${esc(sc.times[2]!)}\\).*--nearest before or --nearest after`,
  );
}

async function refused(args: string[]): Promise<string> {
  const r = await sc.d.cli(args);
  if (r.code === 0) throw new Error(`rewind ${args.join(' ')} succeeded: ${r.stdout}`);
  return r.stderr;
}

test.serial('history as the scenario says: T_2..T_3 merged into T_3; @seq:2 refused as before', async (t) => {
  const log = (await api(sc.d, 'GET', '/v1/volumes/r/log')).transactions as Array<{ n: number; mergedFrom?: number }>;
  t.deepEqual(
    log.map((x) => [x.n, x.mergedFrom ?? null]),
    [
      [1, null],
      [3, 2],
      [4, null],
    ],
  );
  t.regex(
    await refused(['point', 'r', '@seq:2']),
    /@seq:2 lies inside T_3, which retention merged .*nearest valid points are @seq:1 \(.*\) and @seq:3 \(/,
  );
});

test.serial(
  'point: a time in merged history is refused naming both neighbours; --nearest before/after picks one and says so',
  async (t) => {
    t.regex(await refused(['point', 'r', sc.tb]), refusal());
    const before = await cli(sc.d, ['point', 'r', sc.tb, '--nearest', 'before']);
    t.regex(before, /is seq 1, /);
    t.regex(before, /note: .*lies inside T_3, which retention merged.*using the nearest valid point before it, @seq:1/);
    const after = JSON.parse(await cli(sc.d, ['point', 'r', sc.tb, '--nearest', 'after', '--json']));
    t.is(after.seq, 3);
    t.is(after.substituted.nearest, 'after');
    t.regex(after.substituted.reason, /retention merged/);
    // A time after T_3's last write is a point as ever (seq 3's image).
    t.regex(await cli(sc.d, ['point', 'r', sc.times[2]!]), /is seq 3, /);
    t.regex(await refused(['point', 'r', sc.tb, '--nearest', 'sideways']), /nearest must be "before" or "after"/);
  },
);

test.serial('snapshot: refused; --nearest after serves seq 3 and says so', async (t) => {
  t.regex(await refused(['snapshot', 'r', '--at', sc.tb, '--name', 'snap-tb']), refusal());
  t.false(
    (await api(sc.d, 'GET', '/v1/views')).views.some((v: { name: string }) => v.name === 'snap-tb'),
    'nothing was created',
  );
  const out = await cli(sc.d, ['snapshot', 'r', '--at', sc.tb, '--nearest', 'after', '--name', 'snap-tb']);
  t.regex(out, /at seq 3, /);
  t.regex(out, /note: .*using the nearest valid point after it, @seq:3/);
  t.true((await readExport(sc.d, 'snap-tb', SIZE)).subarray(0, 65536).equals(fill(0xcc)));
  await cli(sc.d, ['snapshot', 'rm', 'snap-tb']);
});

test.serial('clone: refused; --nearest before clones seq 1 and says so', async (t) => {
  t.regex(await refused(['clone', 'r', '--at', sc.tb, '--name', 'clone-tb']), refusal());
  const out = await cli(sc.d, ['clone', 'r', '--at', sc.tb, '--nearest', 'before', '--name', 'clone-tb']);
  t.regex(out, /at seq 1, /);
  t.regex(out, /note: .*before it, @seq:1/);
  t.true((await readExport(sc.d, 'clone-tb', SIZE)).subarray(0, 65536).equals(fill(0xaa)));
  await cli(sc.d, ['clone', 'rm', 'clone-tb']);
});

test.serial('clone step --to: refused (the view stays); --nearest after moves it to seq 3', async (t) => {
  await cli(sc.d, ['snapshot', 'r', '--at', '@seq:1', '--name', 'stepper']);
  t.regex(await refused(['clone', 'step', 'stepper', '--to', sc.tb]), refusal());
  t.is((await api(sc.d, 'GET', '/v1/views/stepper')).point.seq, 1, 'not moved');
  const out = await cli(sc.d, ['clone', 'step', 'stepper', '--to', sc.tb, '--nearest', 'after']);
  t.regex(out, /moved from seq 1 to seq 3, /);
  t.regex(out, /note: .*after it, @seq:3/);
  t.true((await readExport(sc.d, 'stepper', SIZE)).subarray(0, 65536).equals(fill(0xcc)));
  await cli(sc.d, ['snapshot', 'rm', 'stepper']);
});

test.serial('export: refused (no file); --nearest before writes seq 1 and says so', async (t) => {
  const out = path.join(sc.dir, 'tb.raw');
  t.regex(await refused(['export', 'r', '--at', sc.tb, '--out', out, '--no-progress']), refusal());
  t.false(fs.existsSync(out));
  const said = await cli(sc.d, ['export', 'r', '--at', sc.tb, '--out', out, '--nearest', 'before', '--no-progress']);
  t.regex(said, /at seq 1, /);
  t.regex(said, /note: .*before it, @seq:1/);
  t.true(fs.readFileSync(out).subarray(0, 65536).equals(fill(0xaa)));
});

test.serial('diff: refused; --nearest before diffs from seq 1 and says so', async (t) => {
  t.regex(await refused(['diff', 'r', '--from', sc.tb, '--to', 'latest']), refusal());
  const out = await cli(sc.d, ['diff', 'r', '--from', sc.tb, '--to', 'latest', '--nearest', 'before']);
  t.regex(out, /from seq 1, /);
  t.regex(out, /note: .*before it, @seq:1/);
  const r = JSON.parse(await cli(sc.d, ['diff', 'r', '--from', sc.tb, '--to', 'latest', '--nearest', 'before', '--json']));
  t.deepEqual(r.extents, [
    { offset: 0, length: 65536 },
    { offset: 4 * MiB, length: 65536 },
  ]);
});

test.serial('restore: refused and nothing changes; --nearest before restores seq 1 and says so', async (t) => {
  const prodBefore = await readExport(sc.d, 'r', SIZE);
  t.true(prodBefore.subarray(0, 65536).equals(fill(0xcc)));
  t.regex(await refused(['restore', 'r', '--to', sc.tb, '--no-progress']), refusal());
  t.true((await readExport(sc.d, 'r', SIZE)).equals(prodBefore), 'production untouched');
  const out = await cli(sc.d, ['restore', 'r', '--to', sc.tb, '--nearest', 'before', '--no-progress']);
  t.regex(out, /restored r to seq 1, /);
  t.regex(out, /note: .*before it, @seq:1/);
  const now = await readExport(sc.d, 'r', SIZE);
  t.true(now.subarray(0, 65536).equals(fill(0xaa)));
  t.true(now.subarray(4 * MiB, 4 * MiB + 65536).equals(Buffer.alloc(65536)));
});

test.serial('rewind point VOL latest reads the journal: 100 calls in a row add no transaction', async (t) => {
  const d = await startDaemon({ env: { REWIND_TEST_SEAL_AGE_MS: String(3_600_000) } });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'pl', '--size', '4M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'pl' });
  t.teardown(() => c.destroy());
  const txns = async () => (await api(d, 'GET', '/v1/volumes/pl/log')).transactions.length as number;
  // Interleaved with writes: each answer is the write just made, from the active container.
  for (let i = 1; i <= 100; i++) {
    await c.write((i % 64) * 4096, fill(i, 4096));
    const p = await api(d, 'POST', '/v1/volumes/pl/resolve', { at: 'latest' });
    if (p.seq !== i || !p.pending || p.write.offset !== (i % 64) * 4096) throw new Error(`latest after write ${i}: ${JSON.stringify(p)}`);
  }
  t.is(await txns(), 0, 'nothing was sealed');
  // The CLI says so, and seq/time points in the active container resolve the same way.
  t.regex(await cli(d, ['point', 'pl', 'latest']), /is seq 100, .*container \d+ \(journaled, not yet applied by the manager\)/);
  t.regex(await cli(d, ['point', 'pl', '@seq:37']), /is seq 37, .*not yet applied/);
  t.is(await txns(), 0);
  await cli(d, ['seal', 'pl']);
  t.is(await txns(), 1);
  for (let i = 0; i < 100; i++) {
    const p = await api(d, 'POST', '/v1/volumes/pl/resolve', { at: 'latest' });
    if (p.seq !== 100 || p.pending) throw new Error(`latest after the seal: ${JSON.stringify(p)}`);
  }
  t.is(await txns(), 1, '100 more calls added nothing');
  // A command that needs the image seals (as its help says): a snapshot at latest.
  await c.write(0, fill(0xee, 4096));
  await cli(d, ['snapshot', 'pl', '--at', 'latest', '--name', 'pl-latest']);
  t.is(await txns(), 2);
  t.true((await readExport(d, 'pl-latest', 4 * MiB)).subarray(0, 4096).equals(fill(0xee, 4096)));
});
