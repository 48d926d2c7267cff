/**
 * Long fuzz run of the diff file reader (what `rewind apply-diff` trusts),
 * for humans (CI runs a short run of the same harness in test/fuzz-diff.test.ts):
 *
 *   node dist/tools/fuzz-diff.js [--minutes 30] [--seed N] [--coverage] [--dir /dev/shm]
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Coverage } from './lib/coverage';
import { fuzzDiffs, makeDiffSeeds } from './lib/fuzz-diff';

async function main(): Promise<number> {
  const o = new Command('fuzz-diff')
    .option('--minutes <m>', 'how long to run', '30')
    .option('--seed <n>', 'fast-check seed (to replay a failure)')
    .option('--coverage', 'report line coverage of src/timetravel/diff')
    .option('--dir <dir>', 'where to write the fuzzed files (tmpfs is fastest)', fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir())
    .parse(process.argv)
    .opts<{ minutes: string; seed?: string; coverage?: boolean; dir: string }>();
  const cov = o.coverage ? new Coverage() : null;
  await cov?.start();
  const dir = fs.mkdtempSync(path.join(o.dir, 'rw-fuzzd-'));
  try {
    const seeds = await makeDiffSeeds(path.join(dir, 'seeds'));
    const t0 = Date.now();
    let last = 0;
    const stats = await fuzzDiffs({
      dir,
      seeds,
      timeLimitMs: Number(o.minutes) * 60_000,
      ...(o.seed !== undefined ? { seed: Number(o.seed) } : {}),
      onProgress: (s) => {
        if (Date.now() - last < 10_000) return;
        last = Date.now();
        const secs = (Date.now() - t0) / 1000;
        console.log(`${secs.toFixed(0)} s: ${s.executions} executions (${(s.executions / secs).toFixed(0)}/s), ${s.accepted} accepted`);
      },
    });
    console.log(JSON.stringify({ ...stats, seconds: Math.round((Date.now() - t0) / 1000) }, null, 2));
    if (cov) {
      for (const f of await cov.take(['/src/timetravel/diff.js'])) {
        console.log(`coverage ${path.relative(process.cwd(), f.file)}: ${f.covered}/${f.lines} lines (${f.percent.toFixed(1)}%)`);
      }
    }
    return 0;
  } finally {
    await cov?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);
