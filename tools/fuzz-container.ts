/**
 * Long fuzz run of the journal container readers used at recovery, for
 * humans (CI runs 30 s of the same harness in test/fuzz-container.test.ts):
 *
 *   node dist/tools/fuzz-container.js [--minutes 30] [--seed N] [--coverage] [--dir /dev/shm]
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Coverage } from './lib/coverage';
import { fuzzContainers, makeSeeds } from './lib/fuzz-container';

async function main(): Promise<number> {
  const o = new Command('fuzz-container')
    .option('--minutes <m>', 'how long to run', '30')
    .option('--seed <n>', 'fast-check seed (to replay a failure)')
    .option('--coverage', 'report line coverage of src/lfc')
    .option('--dir <dir>', 'where to write the fuzzed files (tmpfs is fastest)', fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir())
    .parse(process.argv)
    .opts<{ minutes: string; seed?: string; coverage?: boolean; dir: string }>();
  const cov = o.coverage ? new Coverage() : null;
  await cov?.start();
  const dir = fs.mkdtempSync(path.join(o.dir, 'rw-fuzzc-'));
  try {
    const seeds = await makeSeeds(path.join(dir, 'seeds'));
    const t0 = Date.now();
    let last = 0;
    const stats = await fuzzContainers({
      dir,
      seeds,
      timeLimitMs: Number(o.minutes) * 60_000,
      ...(o.seed !== undefined ? { seed: Number(o.seed) } : {}),
      onProgress: (s) => {
        if (Date.now() - last < 10_000) return;
        last = Date.now();
        console.log(`${((Date.now() - t0) / 1000).toFixed(0)} s: ${s.executions} executions`);
      },
    });
    console.log(JSON.stringify({ ...stats, seconds: Math.round((Date.now() - t0) / 1000) }, null, 2));
    if (cov) {
      for (const f of await cov.take(['/src/lfc/reader.js', '/src/lfc/codec.js', '/src/lfc/files.js'])) {
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
