/**
 * Retention benchmark: how fast history fades, and what fading costs ingest.
 *
 *   node dist/tools/bench-retention.js [--runtime 30] [--size 1G] [--bs 4k] [--iodepth 32]
 *
 * Starts `rewind serve` with one protected volume and a test clock two days
 * ahead (REWIND_TEST_CLOCK_OFFSET_MS), so every transaction is "two days
 * old" and the policy "all:1h, daily:30d" merges all of them (one daily
 * bucket) but the newest. Then:
 *   1. idle ingest: fio random writes for --runtime s (this also makes the
 *      history to fade); the manager catches up;
 *   2. ingest while fading: `rewind retention --run` on that history while
 *      fio runs again for --runtime s; ratio = MB/s here / MB/s in 1;
 *   3. fading alone, unthrottled (--rate 0): fio once more, then `rewind
 *      retention --run` on that history, nothing else running: MB/s of history merged (AILFC +
 *      BILFC bytes read).
 * Phase 2 uses the daemon's default throttle (64 MiB/s read + written).
 */
import { Command } from 'commander';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fioRandWriteArgs, requireExecutables, runCommand, startRewind, REWIND_BIN as BIN } from './lib';

const fmt = (n: number, d = 1) => n.toFixed(d);

interface FadeReport {
  steps: Array<{ done: boolean; bytesBefore: number; transactions: number }>;
  bytesMerged: number;
  bytesFreed: number;
  durationMs: number;
  pointsRemoved: number;
  transactionsBefore: number;
  transactionsAfter: number;
  historyBytesBefore: number;
  historyBytesAfter: number;
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--runtime <s>', 'seconds of fio per phase', '30')
    .option('--size <bytes>', 'volume size', String(1024 ** 3))
    .option('--bs <size>', 'fio block size', '4k')
    .option('--iodepth <n>', 'fio iodepth', '32')
    .option('--dir <dir>', 'parent of the temporary data directory', '/var/tmp')
    .option('--json', 'print the figures as JSON too')
    .parse()
    .opts<{ runtime: string; size: string; bs: string; iodepth: string; dir: string; json?: boolean }>();
  requireExecutables(['fio']);
  const tmp = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-retention-'));
  const dataDir = path.join(tmp, 'data');
  const env = { ...process.env, REWIND_TEST_CLOCK_OFFSET_MS: String(2 * 86_400_000), REWIND_RETENTION_INTERVAL_MS: '0' };
  const rewind = (args: string[]) => runCommand(process.execPath, [BIN, '--data-dir', dataDir, ...args], { timeoutMs: 1_800_000, env });
  const server = await startRewind(dataDir, { env });
  const fio = async (): Promise<number> => {
    const args = fioRandWriteArgs(`nbd://127.0.0.1:${server.port}/bench`, o);
    let out = '';
    const child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'inherit'] });
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    const code = await new Promise<number>((r) => child.on('close', (c) => r(c ?? 1)));
    if (code !== 0) throw new Error(`fio exited ${code}`);
    return JSON.parse(out.slice(out.indexOf('{'))).jobs[0].write.bw_bytes / 1e6;
  };
  const catchUp = async (): Promise<void> => {
    // seal waits until the manager has committed everything written so far.
    await rewind(['seal', 'bench']);
    for (;;) {
      const s = JSON.parse((await rewind(['status', 'bench', '--json'])).stdout);
      if (s.lag.writes === 0) return;
      await new Promise((r) => setTimeout(r, 500));
    }
  };
  const fade = async (rate?: string): Promise<FadeReport> =>
    JSON.parse((await rewind(['retention', 'bench', '--run', '--json', ...(rate ? ['--rate', rate] : [])])).stdout) as FadeReport;
  try {
    await rewind(['volume', 'create', 'bench', '--size', o.size, '--protected']);
    await rewind(['retention', 'bench', '--policy', 'all:1h, daily:30d']);
    console.log(
      `bench-retention: fio randwrite bs=${o.bs} iodepth=${o.iodepth}, ${o.runtime} s per phase, protected ${o.size}-byte volume`,
    );

    const idle = await fio();
    await catchUp();
    console.log(`1. idle ingest           ${fmt(idle)} MB/s`);

    let fadeDone: FadeReport | null = null;
    let fadeEndedAt = 0;
    const t0 = Date.now();
    const fading = fade().then((r) => {
      fadeDone = r;
      fadeEndedAt = Date.now();
      return r;
    });
    const busy = await fio();
    const fioEndedAt = Date.now();
    const r2 = await fading;
    await catchUp();
    const overlapS = (Math.min(fadeEndedAt || fioEndedAt, fioEndedAt) - t0) / 1000;
    console.log(
      `2. ingest while fading   ${fmt(busy)} MB/s = ${fmt(busy / idle, 2)}x idle ` +
        `(fade of ${fmt(r2.bytesMerged / 1e6)} MB of history, ${r2.steps.filter((s) => s.done).length} merges, ${fmt(r2.durationMs / 1000)} s, ` +
        `overlapping fio for ${fmt(overlapS)} s; ${fmt(r2.bytesMerged / 1e6 / (r2.durationMs / 1000))} MB/s under load; freed ${fmt(r2.bytesFreed / 1e6)} MB)`,
    );
    void fadeDone;

    // Fresh history for phase 3 (phase 2's fade may have merged what came in meanwhile).
    const more = await fio();
    await catchUp();
    const r3 = await fade('0');
    const mbps = r3.bytesMerged / 1e6 / (r3.durationMs / 1000);
    console.log(
      `3. fading alone          ${fmt(mbps)} MB/s of history merged (${fmt(r3.bytesMerged / 1e6)} MB in ${fmt(r3.durationMs / 1000)} s, ` +
        `${r3.transactionsBefore} -> ${r3.transactionsAfter} transactions, ${r3.pointsRemoved} points removed, freed ${fmt(r3.bytesFreed / 1e6)} MB: ` +
        `history ${fmt(r3.historyBytesBefore / 1e6)} -> ${fmt(r3.historyBytesAfter / 1e6)} MB)`,
    );
    void more;
    if (o.json)
      console.log(
        JSON.stringify({
          idleMBps: idle,
          busyMBps: busy,
          ratio: busy / idle,
          fadeUnderLoadMBps: r2.bytesMerged / 1e6 / (r2.durationMs / 1000),
          fadeMBps: mbps,
        }),
      );
  } finally {
    await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench-retention: ${(e as Error).message}`);
  process.exit(1);
});
