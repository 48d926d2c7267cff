/**
 * Scrub throughput: how fast a scrub pass checks a group's history and
 * replica, against the machine's plain read rate of the same files.
 *
 *   node dist/tools/bench-scrub.js [--size 2G] [--random 20] [--dir /var/tmp]
 *
 * Starts `rewind serve` (scrub unthrottled) with one protected volume,
 * writes it once sequentially (1 MiB writes: large records) and then with
 * --random seconds of 4 KiB random writes (small records), waits for the
 * manager to catch up, and runs `rewind scrub VOLUME` twice: with the files
 * in the page cache (warm) and after dropping the caches (cold; needs root).
 * The peer is `cat` of the same files (history and replica) to /dev/null in
 * the same state: the least a scrub must do is read them.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fioRandWriteArgs, runCommand, requireExecutables, startRewind, REWIND_BIN as BIN } from './lib';

interface ScrubReport {
  state: string;
  bytesRead: number;
  durationMs: number;
  containersChecked: number;
  replicaBlocksChecked: number;
  found: unknown[];
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

function dropCaches(): boolean {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

async function main(): Promise<void> {
  const o = new Command()
    .option('--size <size>', 'volume size (fio syntax)', '2G')
    .option('--random <s>', 'seconds of 4 KiB random writes after the sequential fill', '20')
    .option('--dir <dir>', 'parent of the temporary data directory', '/var/tmp')
    .parse()
    .opts<{ size: string; random: string; dir: string }>();
  await requireExecutables(['fio', 'cat', 'sync']);
  const tmp = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-scrub-'));
  const dataDir = path.join(tmp, 'data');
  const rewind = (args: string[]) => runCommand(process.execPath, [BIN, '--data-dir', dataDir, ...args], { timeoutMs: 3_600_000 });
  const server = await startRewind(dataDir, { args: ['--scrub-rate', '0'] });
  try {
    await rewind(['volume', 'create', 'bench', '--size', o.size, '--protected']);
    const uri = `nbd://127.0.0.1:${server.port}/bench`;
    await runCommand(
      'fio',
      ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=16', `--size=${o.size}`],
      {
        timeoutMs: 3_600_000,
      },
    );
    if (Number(o.random) > 0) {
      await runCommand('fio', fioRandWriteArgs(uri, { bs: '4k', iodepth: 32, size: o.size, runtime: o.random }), { timeoutMs: 3_600_000 });
    }
    await rewind(['seal', 'bench']);
    for (;;) {
      const s = JSON.parse((await rewind(['status', 'bench', '--json'])).stdout) as { lastSeq: number; appliedSeq: number };
      if (s.appliedSeq >= s.lastSeq) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    // What a scrub reads: the group's stored containers and its replica.
    const files = filesUnder(path.join(dataDir, 'groups')).filter((f) => /\/manager\/(history|replica)\//.test(f));
    const bytes = files.reduce((a, f) => a + fs.statSync(f).size, 0);
    console.log(
      `bench-scrub: ${o.size} protected volume, ${o.random} s of 4 KiB random writes; ${files.length} files, ${(bytes / 1e6).toFixed(0)} MB`,
    );
    const rows: string[][] = [['cache', 'scrub MB/s', 'cat MB/s', 'ratio', 'scrub read MB', 'containers', 'replica blocks']];
    for (const state of ['warm', 'cold'] as const) {
      if (state === 'cold') {
        await runCommand('sync', [], { timeoutMs: 600_000 });
        if (!dropCaches()) {
          console.log('cold: skipped (dropping the page cache needs root)');
          continue;
        }
      }
      const t0 = Date.now();
      await runCommand('sh', ['-c', 'cat "$@" > /dev/null', 'cat', ...files], { timeoutMs: 3_600_000 });
      const catMs = Date.now() - t0;
      if (state === 'cold') dropCaches();
      const r = JSON.parse((await rewind(['scrub', 'bench', '--json'])).stdout) as { reports: ScrubReport[] };
      const rep = r.reports[0]!;
      if (rep.state !== 'done' || rep.found.length) throw new Error(`scrub ${rep.state} with ${rep.found.length} finding(s)`);
      const s = mbps(rep.bytesRead, rep.durationMs);
      const c = mbps(bytes, catMs);
      rows.push([
        state,
        s.toFixed(0),
        c.toFixed(0),
        `${(s / c).toFixed(2)}x`,
        (rep.bytesRead / 1e6).toFixed(0),
        String(rep.containersChecked),
        String(rep.replicaBlocksChecked),
      ]);
    }
    const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows) console.log(r.map((c, i) => c.padEnd(w[i]!)).join('  '));
  } finally {
    await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(`bench-scrub: ${(err as Error).message}`);
  process.exit(1);
});
