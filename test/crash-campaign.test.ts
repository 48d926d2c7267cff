/**
 * CI-length crash campaign (issue 17): a few kill -9 rounds of the same code
 * as the long run (tools/crash-campaign.ts, tools/lib/campaign/), in the
 * single-process mode with a production restore, seals, markers, fading and
 * a clone read under load, and in the two-role mode with link cuts. Every
 * round checks the invariants of MISSION.md; any violation fails the test
 * and keeps the data directory and seed for a replay with the tool.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCampaign, type CampaignReport } from '../tools/lib/campaign/campaign';
import type { Mode } from '../tools/lib/campaign/target';
import { requireLedgerTools } from './helpers/ledger';

const ROUNDS = Number(process.env.REWIND_CAMPAIGN_ROUNDS ?? 4);

async function campaign(t: { log(...s: string[]): void }, mode: Mode, seed: number, rounds: number): Promise<CampaignReport> {
  await requireLedgerTools();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `rw-crash-ci-${mode}-`));
  const report = await runCampaign({ mode, dir, seed, rounds, restoreEvery: 2, log: (l) => t.log(l) });
  t.log(JSON.stringify({ killsByPhase: report.killsByPhase, stats: report.stats, load: report.load, actionErrors: report.actionErrors }));
  if (report.violation)
    throw new Error(
      `violation ${JSON.stringify(report.violation)} (data kept in ${dir}; replay: node dist/tools/crash-campaign.js --mode ${mode} --seed ${seed})`,
    );
  fs.rmSync(dir, { recursive: true, force: true });
  return report;
}

function kills(r: CampaignReport): number {
  return Object.values(r.killsByPhase).reduce((a, b) => a + b, 0);
}

test.serial(
  'crash campaign, single process: kill -9 rounds with seals, markers, fading, clone reads and restores keep every invariant',
  async (t) => {
    const r = await campaign(t, 'single', 17_001, ROUNDS);
    t.is(r.rounds, ROUNDS);
    t.true(kills(r) >= ROUNDS);
    t.true((r.stats.pointsChecked ?? 0) > 0, 'points were checked against the model');
    t.true((r.stats.seals ?? 0) + (r.killsByPhase.seal ?? 0) > 0, 'seals ran');
    t.true((r.stats.fades ?? 0) + (r.killsByPhase.fade ?? 0) > 0, 'retention faded');
    const restores = (r.stats.restores ?? 0) + (r.stats.restoresNotBegun ?? 0) + (r.stats.restoresFinishedAtStart ?? 0);
    t.true(restores > 0, 'a production restore ran or was killed');
    t.true(r.load.writes > 0 && r.load.flushes > 0 && r.load.trims > 0 && r.load.zeroes > 0);
  },
);

test.serial('crash campaign, two roles: kills of the intercept, the manager or both, and link cuts keep every invariant', async (t) => {
  t.timeout(15 * 60_000);
  const r = await campaign(t, 'two-role', 17_002, Math.max(3, ROUNDS - 1));
  t.true(kills(r) >= r.rounds);
  t.true((r.stats.pointsChecked ?? 0) > 0);
  t.true((r.stats.linkCuts ?? 0) + (r.killsByPhase['link-cut'] ?? 0) > 0, 'the link was cut');
});
