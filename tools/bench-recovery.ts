/**
 * Crash-recovery benchmark: what one kill -9 under random writes costs.
 *
 *   node dist/tools/bench-recovery.js [--size 4G] [--runtime 20] [--rounds 3] [--bin OTHER/bin/rewind]
 *
 * Starts `rewind serve` with one protected volume, runs fio 4 KiB random
 * writes (iodepth 32) for --runtime seconds, kills the daemon with SIGKILL
 * while fio writes, restarts it and reports per round:
 *   - recovery time: from the restart until the volume is recovered (its log line);
 *   - the dirty bytes the state map held, and the bytes journaled again as
 *     resync records (history added by the crash), from the daemon's log;
 *   - the history on disk before the kill and after the manager caught up.
 * `--bin` runs another checkout's daemon (e.g. the previous commit), so a
 * before/after pair comes from one machine and one run.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { fioRandWriteArgs, requireExecutables, runCommand, startRewind, REWIND_BIN } from './lib';

function du(p: string): number {
  if (!fs.existsSync(p)) return 0;
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.blocks * 512;
  return fs.readdirSync(p).reduce((a, n) => a + du(path.join(p, n)), 0);
}

const MB = 1e6;

async function main(): Promise<void> {
  const o = new Command()
    .option('--size <size>', 'volume size', '4G')
    .option('--runtime <s>', 'seconds of random writes before each kill', '20')
    .option('--rounds <n>', 'kill -9 rounds', '3')
    .option('--bin <path>', 'the bin/rewind to run', REWIND_BIN)
    .option('--dir <dir>', 'parent of the temporary data directory', '/var/tmp')
    .parse()
    .opts<{ size: string; runtime: string; rounds: string; bin: string; dir: string }>();
  await requireExecutables(['fio']);
  const tmp = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-recovery-'));
  const dataDir = path.join(tmp, 'data');
  const cli = (args: string[]) => runCommand(process.execPath, [o.bin, '--data-dir', dataDir, ...args], { timeoutMs: 3_600_000 });
  let srv = await startRewind(dataDir, { bin: o.bin });
  try {
    const c = await cli(['volume', 'create', 'rv', '--size', o.size, '--protected']);
    if (c.code !== 0) throw new Error(c.stderr);
    const history = path.join(dataDir, 'groups');
    console.log(`bin ${o.bin}, volume ${o.size}, ${o.runtime} s of 4 KiB random writes (iodepth 32) per round`);
    console.log('round  recovery_s  dirty_MB  resync_MB  history_before_MB  history_after_MB');
    for (let round = 1; round <= Number(o.rounds); round++) {
      const fio = spawn(
        'fio',
        fioRandWriteArgs(`nbd://127.0.0.1:${srv.port}/rv`, { bs: '4k', iodepth: 32, size: o.size, runtime: Number(o.runtime) + 60 }),
        { stdio: 'ignore' },
      );
      await new Promise((r) => setTimeout(r, Number(o.runtime) * 1000));
      const before = du(history);
      srv.child.kill('SIGKILL');
      await srv.exited;
      fio.kill('SIGKILL');
      const t0 = Date.now();
      srv = await startRewind(dataDir, { bin: o.bin });
      // Recovery may run after the port opens (the volume offline meanwhile): wait for its log line.
      let line: string | undefined;
      for (let i = 0; i < 36_000 && !line; i++) {
        line = srv
          .output()
          .split('\n')
          .find((l) => l.includes('resynced regions left dirty'));
        if (!line) await new Promise((r) => setTimeout(r, 50));
      }
      const recovery = (Date.now() - t0) / 1000;
      const rec = line
        ? (JSON.parse(line.slice(line.indexOf('{'))) as { bytes?: number; journaledBytes?: number; dirtyBytes?: number })
        : {};
      const resync = rec.journaledBytes ?? rec.bytes ?? 0;
      const s = await cli(['seal', 'rv']);
      if (s.code !== 0) throw new Error(s.stderr);
      const after = du(history);
      console.log(
        `${String(round).padStart(5)}  ${recovery.toFixed(1).padStart(10)}  ${(rec.dirtyBytes !== undefined ? (rec.dirtyBytes / MB).toFixed(0) : '?').padStart(8)}  ${(resync / MB).toFixed(2).padStart(9)}  ${(before / MB).toFixed(0).padStart(17)}  ${(after / MB).toFixed(0).padStart(16)}`,
      );
    }
  } finally {
    await srv.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
