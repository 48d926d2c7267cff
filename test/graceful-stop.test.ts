/**
 * A graceful stop under load (issue 17): SIGTERM while fio and a libnbd
 * client write to a protected volume. Requests in flight are answered (or
 * refused with NBD_ESHUTDOWN) and no client hangs; every write a client saw
 * acknowledged, flushed or not, is there after the restart; the journal was
 * sealed and handed over, so the next start runs no crash recovery; and
 * production equals the replica once the manager has caught up.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { haveCommand, run, sleep, startDaemon } from './helpers/daemon';
import { apiOk, cliOk } from './helpers/live';
import { requireLedgerTools } from './helpers/ledger';

const PYTHON = '/usr/bin/python3';
const BASE = 200 * 1024 * 1024;

/** Writes 4 KiB blocks from BASE, never flushing, and prints each acknowledged one; then the error that ended it. */
const WRITER = `
import nbd, sys, hashlib
h = nbd.NBD()
h.connect_uri(sys.argv[1])
base = int(sys.argv[2])
i = 0
try:
    while i < 8192:
        d = hashlib.sha256(f"gs-{i}".encode()).digest()
        h.pwrite((d * 128)[:4096], base + i * 4096)
        print(f"acked {i}", flush=True)
        i += 1
except Exception as e:
    print(f"ended: {e}", flush=True)
`;

const CHECK = `
import nbd, sys, hashlib
h = nbd.NBD()
h.connect_uri(sys.argv[1])
base, last = int(sys.argv[2]), int(sys.argv[3])
bad = [i for i in range(last + 1) if h.pread(4096, base + i * 4096) != (hashlib.sha256(f"gs-{i}".encode()).digest() * 128)[:4096]]
print(f"lost {len(bad)} of {last + 1}: {bad[:10]}" if bad else f"kept all {last + 1}")
sys.exit(1 if bad else 0)
`;

test.serial('SIGTERM under fio load: requests answered, every acknowledged write kept, no repair at the next start', async (t) => {
  if (!haveCommand('fio')) throw new Error('fio missing (run tools/install-system-deps.sh)');
  await requireLedgerTools();
  const d = await startDaemon({ logLevel: 'info' });
  t.teardown(() => d.cleanup());
  await cliOk(d, ['volume', 'create', 'gs', '--size', '256M', '--protected']);
  const uri = d.nbdUri('gs');

  const fio = spawn(
    'fio',
    [
      '--name=load',
      '--thread',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bsrange=4k-64k',
      '--iodepth=16',
      '--numjobs=2',
      '--size=192M',
      '--time_based',
      '--runtime=120',
      '--output-format=json',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let fioOut = '';
  fio.stdout!.setEncoding('utf8').on('data', (s: string) => (fioOut += s));
  fio.stderr!.setEncoding('utf8').on('data', (s: string) => (fioOut += s));
  const fioDone = new Promise<number | null>((r) => fio.on('close', (code) => r(code)));
  t.teardown(() => fio.kill('SIGKILL'));

  const writer = spawn(PYTHON, ['-c', WRITER, uri, String(BASE)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let lastAcked = -1;
  let ended = '';
  let wbuf = '';
  writer.stdout!.setEncoding('utf8').on('data', (s: string) => {
    wbuf += s;
    for (let nl; (nl = wbuf.indexOf('\n')) >= 0; wbuf = wbuf.slice(nl + 1)) {
      const line = wbuf.slice(0, nl);
      const m = /^acked (\d+)/.exec(line);
      if (m) lastAcked = Number(m[1]);
      else if (line.startsWith('ended:')) ended = line;
    }
  });
  const writerDone = new Promise<void>((r) => writer.on('close', () => r()));
  t.teardown(() => writer.kill('SIGKILL'));

  await sleep(5000);
  t.true(lastAcked > 10, `the writer is writing (${lastAcked + 1} acknowledged)`);
  const logBefore = d.logs.length;
  const t0 = Date.now();
  const exit = await d.kill('SIGTERM', 30_000);
  const stopMs = Date.now() - t0;
  t.is(exit.code, 0, `clean exit (${JSON.stringify(exit)})`);
  const stopLog = d.logs.slice(logBefore);
  t.notRegex(stopLog, /shutdown took more than|connections still busy at shutdown/);
  t.regex(stopLog, /"stopped"/);

  // No client hangs: both saw their connection end (refused or closed), promptly.
  const deadline = sleep(10_000).then(() => 'hung');
  t.not(await Promise.race([writerDone.then(() => 'done'), deadline]), 'hung', 'the libnbd writer ended');
  t.not(await Promise.race([fioDone.then(() => 'done'), deadline]), 'hung', 'fio ended');
  t.regex(ended, /ended:/, 'the writer was told (its next request failed)');
  t.log(`stopped in ${stopMs} ms; writer: ${lastAcked + 1} acknowledged, then "${ended}"`);

  // The next start: no crash recovery, no container repaired.
  const logStart = d.logs.length;
  await d.restart();
  const startLog = d.logs.slice(logStart);
  t.notRegex(startLog, /unclean stop|left active by a crash|torn AILFC|interrupted by a crash/);
  const health = (await apiOk(d, 'GET', '/v1/health')) as { recovering: string[] };
  t.deepEqual(health.recovering, []);

  // Every write acknowledged before the stop, never flushed by the client, reads back.
  const check = await run(PYTHON, ['-c', CHECK, uri, String(BASE), String(lastAcked)], { timeoutMs: 120_000 });
  t.is(check.code, 0, check.stdout + check.stderr);

  // Handed over: the manager applies what the stop sealed, and the replica equals production.
  const v = await apiOk<{ equal: boolean; ok: boolean }>(d, 'POST', '/v1/volumes/gs/verify');
  t.true(v.equal, 'production equals the replica');
  t.true(v.ok);
  void fioOut;
});
