/**
 * Long kill -9 crash campaign, for humans (CI runs a few rounds of the same
 * code in test/crash-campaign.test.ts):
 *
 *   node dist/tools/crash-campaign.js [--mode single|two-role] [--rounds 1000] [--minutes M] [--seed N] [--dir DIR] [--keep]
 *
 * Needs root (two-role mode: network namespaces) and python3-libnbd (the
 * flush ledger). Each round runs a mixed load, kills at a random instant
 * and checks the invariants of MISSION.md (tools/lib/campaign/). It stops
 * at the first violation, keeps the data directories and writes
 * DIR/violation.json with the seed; --seed N replays the same decisions.
 * Prints a line per round, then the report as JSON: rounds, kills by
 * phase and victim, what was checked, violations.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCampaign } from './lib/campaign/campaign';
import type { Mode } from './lib/campaign/target';

async function main(): Promise<number> {
  const o = new Command('crash-campaign')
    .option('--mode <m>', 'single or two-role', 'single')
    .option('--rounds <n>', 'kill rounds', '1000')
    .option('--minutes <m>', 'stop after this long')
    .option('--seed <n>', 'seed (to replay a violation)')
    .option('--dir <dir>', 'working directory (data directories; kept on a violation)')
    .option('--restore-every <n>', 'a production restore every N rounds (0: never)', '8')
    .option('--keep', 'keep the data directories even without a violation')
    .parse(process.argv)
    .opts<{ mode: string; rounds: string; minutes?: string; seed?: string; dir?: string; restoreEvery: string; keep?: boolean }>();
  if (o.mode !== 'single' && o.mode !== 'two-role') throw new Error('--mode must be single or two-role');
  const seed = o.seed !== undefined ? Number(o.seed) : Math.floor(Math.random() * 2 ** 31);
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), `rw-crash-${o.mode}-`));
  console.log(`crash campaign, ${o.mode}, seed ${seed}, in ${dir}`);
  const report = await runCampaign({
    mode: o.mode as Mode,
    dir,
    seed,
    rounds: Number(o.rounds),
    restoreEvery: Number(o.restoreEvery),
    ...(o.minutes !== undefined ? { timeLimitMs: Number(o.minutes) * 60_000 } : {}),
    log: (l) => console.log(`${new Date().toISOString().slice(11, 19)} ${l}`),
  });
  console.log(JSON.stringify(report, null, 2));
  if (report.violation) {
    console.log(
      `VIOLATION (${report.violation.invariant}) in round ${report.violation.round}; data kept in ${dir}; replay with --seed ${seed}`,
    );
    return 1;
  }
  if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : err);
    process.exit(2);
  },
);
