/**
 * Backup-manager benchmark: does the manager keep up with sustained writes?
 *
 *   node dist/tools/bench-manager.js [--runtime 120] [--size 4G] [--bs 4k] [--iodepth 32] [--interval 10]
 *
 * Starts `rewind serve` on a fresh data directory with one protected volume,
 * runs fio (NBD engine, random writes) against it for --runtime seconds, and
 * samples the volume's replication lag every --interval seconds. Then waits
 * for the manager to catch up and reports:
 *   - lag per interval (writes and seconds behind): bounded if it does not grow;
 *   - ingest rate (fio) against apply rate (bytes and writes of the committed
 *     transactions over the time they took);
 *   - space: AILFC, BILFC and index bytes per byte written.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { fioRandWriteArgs, runCommand, requireExecutables, startRewind, REWIND_BIN as BIN } from './lib';

interface Sample {
  t: number;
  lastSeq: number;
  appliedSeq: number;
  lagWrites: number;
  lagSeconds: number;
  transactions: number;
}

function du(p: string, filter?: (name: string) => boolean): number {
  let total = 0;
  if (!fs.existsSync(p)) return 0;
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.blocks * 512;
  for (const name of fs.readdirSync(p)) {
    if (filter && !filter(name)) continue;
    total += du(path.join(p, name));
  }
  return total;
}

const fmt = (n: number, d = 1) => n.toFixed(d);

async function main(): Promise<void> {
  const o = new Command()
    .option('--runtime <s>', 'seconds of sustained writes', '120')
    .option('--size <bytes>', 'volume size', String(4 * 1024 ** 3))
    .option('--bs <size>', 'fio block size', '4k')
    .option('--iodepth <n>', 'fio iodepth', '32')
    .option('--interval <s>', 'lag sampling interval', '10')
    .option('--dir <dir>', 'parent of the temporary data directory', '/var/tmp')
    .parse()
    .opts<{ runtime: string; size: string; bs: string; iodepth: string; interval: string; dir: string }>();
  await requireExecutables(['fio']);
  const runtime = Number(o.runtime);
  const tmp = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-manager-'));
  const dataDir = path.join(tmp, 'data');
  const rewind = (args: string[]) => runCommand(process.execPath, [BIN, '--data-dir', dataDir, ...args], { timeoutMs: 600_000 });
  const server = await startRewind(dataDir);
  try {
    await rewind(['volume', 'create', 'bench', '--size', o.size, '--protected']);
    const status = async (): Promise<Sample> => {
      const s = JSON.parse((await rewind(['status', 'bench', '--json'])).stdout);
      return {
        t: Date.now(),
        lastSeq: s.lastSeq,
        appliedSeq: s.appliedSeq,
        lagWrites: s.lag.writes,
        lagSeconds: s.lag.seconds,
        transactions: s.transactions,
      };
    };
    const fioArgs = fioRandWriteArgs(`nbd://127.0.0.1:${server.port}/bench`, { ...o, runtime });
    console.log(`bench-manager: fio ${fioArgs.slice(3, 7).join(' ')} for ${runtime} s on a protected ${o.size}-byte volume`);
    const t0 = Date.now();
    let fioOut = '';
    const fio = spawn('fio', fioArgs, { stdio: ['ignore', 'pipe', 'inherit'] });
    fio.stdout.setEncoding('utf8').on('data', (s: string) => (fioOut += s));
    const fioDone = new Promise<number>((r) => fio.on('close', (c) => r(c ?? 1)));
    const samples: Sample[] = [];
    console.log('   t(s)   written seq   applied seq   lag writes   lag s   txns');
    let finished = false;
    void fioDone.then(() => (finished = true));
    while (!finished) {
      await new Promise((r) => setTimeout(r, Number(o.interval) * 1000));
      if (finished) break;
      const s = await status();
      samples.push(s);
      console.log(
        `${String(Math.round((s.t - t0) / 1000)).padStart(7)} ${String(s.lastSeq).padStart(13)} ${String(s.appliedSeq).padStart(13)} ${String(s.lagWrites).padStart(12)} ${fmt(s.lagSeconds).padStart(7)} ${String(s.transactions).padStart(6)}`,
      );
    }
    const fioCode = await fioDone;
    if (fioCode !== 0) throw new Error(`fio exited ${fioCode}`);
    const job = JSON.parse(fioOut.slice(fioOut.indexOf('{'))).jobs[0];
    const ingestMBps = job.write.bw_bytes / 1e6;
    const ingestIops = job.write.iops;
    const tCatch = Date.now();
    await rewind(['seal', 'bench']);
    let end = await status();
    while (end.lagWrites > 0) {
      await new Promise((r) => setTimeout(r, 500));
      end = await status();
    }
    const catchUpS = (Date.now() - tCatch) / 1000;
    const txns = JSON.parse((await rewind(['log', 'bench', '--json'])).stdout) as Array<{
      n: number;
      firstSeq: number;
      lastSeq: number;
      bytesApplied: number;
      committedAt: string | number;
      records: number;
    }>;
    const applyWindowS = (Date.now() - t0) / 1000;
    const writes = end.lastSeq;
    const bytesWritten = job.write.io_bytes;
    const hist = path.join(dataDir, 'groups', 'bench', 'manager', 'history');
    const ailfc = du(hist, (n) => n.startsWith('ailfc-'));
    const bilfc = du(hist, (n) => n.startsWith('bilfc-'));
    const index = du(path.join(dataDir, 'groups', 'bench', 'manager', 'index'));
    const firstHalf = samples.slice(0, Math.ceil(samples.length / 2));
    const secondHalf = samples.slice(Math.ceil(samples.length / 2));
    const maxLag = (xs: Sample[]) => Math.max(0, ...xs.map((x) => x.lagSeconds));
    console.log('');
    console.log(`ingest (fio)     ${fmt(ingestMBps)} MB/s, ${Math.round(ingestIops)} writes/s, ${bytesWritten} bytes, ${writes} writes`);
    console.log(
      `apply (manager)  ${fmt(bytesWritten / 1e6 / applyWindowS)} MB/s, ${Math.round(writes / applyWindowS)} writes/s ` +
        `(all ${txns.length} transactions committed ${fmt(catchUpS)} s after fio stopped)`,
    );
    console.log(
      `lag              max ${fmt(maxLag(firstHalf))} s in the first half, ${fmt(maxLag(secondHalf))} s in the second ` +
        `(${maxLag(secondHalf) <= maxLag(firstHalf) * 1.5 + 2 ? 'bounded' : 'GROWING'})`,
    );
    console.log(
      `space per byte   AILFC ${fmt(ailfc / bytesWritten, 3)}, BILFC ${fmt(bilfc / bytesWritten, 3)}, index ${fmt(index / bytesWritten, 3)} ` +
        `(${fmt(ailfc / 1e6)} MB, ${fmt(bilfc / 1e6)} MB, ${fmt(index / 1e6)} MB)`,
    );
  } finally {
    await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench-manager: ${(e as Error).message}`);
  process.exit(1);
});
