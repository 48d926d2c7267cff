/**
 * Two-role benchmark: an intercept and a remote backup manager in two
 * network namespaces joined by a veth pair (needs root, ip, fio).
 *
 *   node dist/tools/bench-remote.js [--runtime 60] [--rate 50m] [--resync 1G] [--pool 256M] [--dir /var/tmp]
 *
 * 1. Sustained load: fio random 64 KiB writes at --rate through the
 *    intercept for --runtime seconds; the manager's replica lag (seconds
 *    between the intercept's last write and the last applied one: the
 *    recovery point achieved) is sampled every second.
 *    Bytes on the wire per byte written: the veth's transmitted bytes
 *    (TCP/IP headers, link framing and the LFC record headers included)
 *    over the bytes fio wrote.
 * 2. Resync: the link is cut, --resync bytes are written (the pool fills,
 *    degraded mode, the rest is tracked only in the state map), the link is
 *    restored; reported: time from link up to normal (drain + super
 *    transaction committed), and the resync's own duration.
 */
import { Command } from 'commander';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCommand, requireExecutables } from './lib';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(REPO_ROOT, 'bin', 'rewind');

function sh(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCommand(cmd, args, { timeoutMs: 3_600_000, check: false }) as Promise<{ code: number | null; stdout: string; stderr: string }>;
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function cliJson(dir: string, args: string[]): Promise<Record<string, unknown>> {
  return JSON.parse(await must(process.execPath, [BIN, '--data-dir', dir, ...args, '--json'])) as Record<string, unknown>;
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--runtime <s>', 'seconds of sustained load', '60')
    .option('--rate <rate>', 'fio write rate', '50m')
    .option('--resync <size>', 'bytes written while the link is down', '1G')
    .option('--pool <size>', "intercept's LFC pool", '256M')
    .option('--dir <dir>', 'parent of the temporary data directories', '/var/tmp')
    .parse()
    .opts<{ runtime: string; rate: string; resync: string; pool: string; dir: string }>();
  await requireExecutables(['fio', 'ip']);
  const tmp = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-remote-'));
  const iNs = `rwbi${process.pid % 10000}`;
  const mNs = `rwbm${process.pid % 10000}`;
  const vi = `vbi${process.pid % 10000}`;
  const vm = `vbm${process.pid % 10000}`;
  const children: ChildProcess[] = [];
  const cleanup = async () => {
    for (const c of children) c.kill('SIGKILL');
    await sh('ip', ['netns', 'del', iNs]);
    await sh('ip', ['netns', 'del', mNs]);
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  try {
    await must('ip', ['netns', 'add', iNs]);
    await must('ip', ['netns', 'add', mNs]);
    await must('ip', ['link', 'add', vi, 'type', 'veth', 'peer', 'name', vm]);
    await must('ip', ['link', 'set', vi, 'netns', iNs]);
    await must('ip', ['link', 'set', vm, 'netns', mNs]);
    await must('ip', ['-n', iNs, 'addr', 'add', '10.232.0.1/24', 'dev', vi]);
    await must('ip', ['-n', mNs, 'addr', 'add', '10.232.0.2/24', 'dev', vm]);
    for (const [ns, dev] of [
      [iNs, vi],
      [mNs, vm],
    ]) {
      await must('ip', ['-n', ns!, 'link', 'set', 'lo', 'up']);
      await must('ip', ['-n', ns!, 'link', 'set', dev!, 'up']);
    }
    const secret = path.join(tmp, 'secret');
    fs.writeFileSync(secret, 'benchmark shared secret 0123456789', { mode: 0o600 });
    const mDir = path.join(tmp, 'm');
    const iDir = path.join(tmp, 'i');
    const start = async (ns: string, dir: string, args: string[]) => {
      const c = spawn('ip', ['netns', 'exec', ns, process.execPath, BIN, 'serve', '--data-dir', dir, '--log-level', 'warn', ...args], {
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      children.push(c);
      for (let k = 0; k < 200; k++) {
        if (fs.existsSync(path.join(dir, 'control.sock')) && (await sh(process.execPath, [BIN, '--data-dir', dir, 'status'])).code === 0)
          return;
        await sleep(100);
      }
      throw new Error(`daemon in ${dir} did not start`);
    };
    await start(mNs, mDir, ['--role', 'manager', '--listen', '10.232.0.2:10810', '--link-secret-file', secret]);
    await start(iNs, iDir, [
      '--role',
      'intercept',
      '--manager',
      '10.232.0.2:10810',
      '--link-secret-file',
      secret,
      '--listen',
      'none',
      '--no-default-volume',
      '--link-pool',
      o.pool,
    ]);
    await must(process.execPath, [BIN, '--data-dir', iDir, 'volume', 'create', 'pv', '--size', '2G', '--protected']);
    const uri = `nbd+unix:///pv?socket=${path.join(iDir, 'nbd.sock')}`;
    const txBytes = async () => {
      const out = await must('ip', ['-n', iNs, '-s', '-j', 'link', 'show', vi]);
      return (JSON.parse(out) as Array<{ stats64: { tx: { bytes: number } } }>)[0]!.stats64.tx.bytes;
    };

    // 1. Sustained load.
    const tx0 = await txBytes();
    const lags: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        try {
          const s = await cliJson(mDir, ['status', 'pv']);
          lags.push(Number((s.lag as { seconds: number }).seconds));
        } catch {
          /* not yet */
        }
        await sleep(1000);
      }
    })();
    const fio = await sh('fio', [
      '--name=load',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=64k',
      '--iodepth=16',
      '--size=2G',
      '--time_based',
      `--runtime=${o.runtime}`,
      `--rate=${o.rate}`,
      '--output-format=json',
    ]);
    if (fio.code !== 0) throw new Error(`fio: ${fio.stderr}`);
    const written = (
      JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: Array<{ write: { io_bytes: number; bw_bytes: number } }> }
    ).jobs[0]!.write;
    const tCatch = Date.now();
    await must(process.execPath, [BIN, '--data-dir', iDir, 'seal', 'pv']);
    for (;;) {
      const s = await cliJson(iDir, ['status', 'pv']);
      if (s.appliedSeq === s.lastSeq) break;
      await sleep(200);
    }
    const catchUpMs = Date.now() - tCatch;
    sampling = false;
    await sampler;
    const tx1 = await txBytes();
    const sorted = [...lags].sort((a, b) => a - b);
    const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
    const load = {
      rate: o.rate,
      runtimeS: Number(o.runtime),
      writtenMiB: +(written.io_bytes / 1048576).toFixed(1),
      achievedMBps: +(written.bw_bytes / 1e6).toFixed(1),
      lagSeconds: { median: pct(50), p95: pct(95), max: sorted[sorted.length - 1] ?? 0, samples: sorted.length },
      catchUpAfterLoadMs: catchUpMs,
      wireBytesPerByteWritten: +((tx1 - tx0) / written.io_bytes).toFixed(4),
    };
    console.log(JSON.stringify({ sustained: load }));

    // 2. Resync of dirty regions after an outage.
    await must('ip', ['-n', iNs, 'link', 'set', vi, 'down']);
    for (;;) {
      const s = await cliJson(iDir, ['status', 'pv']);
      if ((s.link as { state: string }).state !== 'up') break;
      await sleep(250);
    }
    const w = await sh('fio', [
      '--name=outage',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=write',
      '--bs=1m',
      '--iodepth=8',
      `--size=${o.resync}`,
      '--output-format=json',
    ]);
    if (w.code !== 0) throw new Error(`fio: ${w.stderr}`);
    const deg = await cliJson(iDir, ['status', 'pv']);
    const tUp = Date.now();
    const txUp = await txBytes();
    await must('ip', ['-n', iNs, 'link', 'set', vi, 'up']);
    let s: Record<string, unknown>;
    for (;;) {
      s = await cliJson(iDir, ['status', 'pv']);
      if (s.state === 'normal' && s.appliedSeq === s.lastSeq && s.dirtyRegions === 0) break;
      await sleep(200);
    }
    const resync = {
      writtenWhileDown: o.resync,
      stateWhenLinkRestored: deg.state,
      dirtyRegionsWhenLinkRestored: deg.dirtyRegions,
      dirtyBytes: Number(deg.dirtyRegions) * Number(deg.regionSize),
      linkUpToNormalMs: Date.now() - tUp,
      resyncMs: (s.resync as { lastDurationMs: number }).lastDurationMs,
      wireBytesDuringRecovery: (await txBytes()) - txUp,
    };
    console.log(JSON.stringify({ resync }));
    // Both images are on this machine: compare them directly (rewind verify's control call times out on big volumes).
    const hash = async (f: string) => (await must('sha256sum', [f])).split(' ')[0];
    const prod = await hash(path.join(iDir, 'volumes', 'pv', 'image.raw'));
    const rep = await hash(path.join(mDir, 'groups', 'pv', 'manager', 'replica', 'vol-1.raw'));
    console.log(JSON.stringify({ verify: { equal: prod === rep, production: prod, replica: rep } }));
  } finally {
    await cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
