/**
 * The kill -9 crash campaign, shared by tools/crash-campaign.ts (thousands
 * of rounds) and test/crash-campaign.test.ts (a few in CI).
 *
 * A round: the mixed load (load.ts) and a libnbd flush ledger run while
 * actions (actions.ts) seal, cut, mark, fade, read a clone, restore or cut
 * the link; at a random instant the victim (the daemon; in two-role mode
 * the intercept, the manager or both) is SIGKILLed, sometimes again while it
 * recovers. Then every invariant is checked (checks.ts): the blocks hold a
 * value the model allows (flushed and FUA writes kept), the ledger's flushed
 * blocks, catch-up and verify (replica = production, containers sound), the
 * transaction log (no transaction twice, seqs increasing), and snapshots
 * at sampled cuts, markers and a long-lived clone byte-exact against the
 * model. The first violation stops the campaign; the data stays.
 *
 * Replay: the seed fixes every decision (load, actions, kill instants,
 * victims); timing does not replay exactly, so a replay hits nearby points.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkLedger, startLedgerWriter } from '../../../test/helpers/ledger';
import { sleep } from '../../../test/helpers/daemon';
import { rng } from '../../../test/helpers/random';
import { cut, fade, linkCut, readClone, restore, seal, type World } from './actions';
import {
  Violation,
  catchUp,
  checkLog,
  checkReplica,
  checkView,
  connectRetry,
  describeBlocks,
  isFadedRefusal,
  must,
  readHashes,
} from './checks';
import { Load, type Region } from './load';
import { VolumeModel, differing } from './model';
import { VOLUME, apiCall, startTarget, type Mode, type Victim } from './target';

const V = `/v1/volumes/${VOLUME}`;
const SIZE_MIB = 16;
const LEDGER_BLOCKS = 1024; // the first 4 MiB: the libnbd ledger's
const CONNS = 3;

export interface CampaignOptions {
  mode: Mode;
  /** Working directory: the data directories live here (kept on a violation). */
  dir: string;
  seed: number;
  rounds: number;
  /** Stop after this long even if rounds remain. */
  timeLimitMs?: number;
  /** Every how many rounds a restore is tried, 0: never. */
  restoreEvery?: number;
  log?(line: string): void;
}

export interface CampaignReport {
  mode: Mode;
  seed: number;
  rounds: number;
  seconds: number;
  killsByPhase: Record<string, number>;
  killsByVictim: Record<string, number>;
  stats: Record<string, number>;
  load: Load['counts'];
  actionErrors: string[];
  violation: null | { round: number; invariant: string; message: string; dir: string; seed: number };
}

function pick<T>(r: () => number, xs: T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

export async function runCampaign(o: CampaignOptions): Promise<CampaignReport> {
  const log = o.log ?? (() => undefined);
  const r = rng(o.seed);
  const t0 = Date.now();
  const blocks = (SIZE_MIB * 1024 * 1024) / 4096 - LEDGER_BLOCKS;
  const per = Math.floor(blocks / CONNS);
  const regions: Region[] = Array.from({ length: CONNS }, (_, i) => ({ first: i * per, count: per }));
  const model = new VolumeModel(blocks);
  const t = await startTarget(o.mode, o.dir, SIZE_MIB);
  const w: World = {
    t,
    model,
    load: new Load(model, rng(o.seed ^ 0x5eed)),
    regions,
    base: LEDGER_BLOCKS,
    cuts: [],
    clone: null,
    phases: new Set(),
    killed: false,
    round: 0,
    restoring: null,
    ledgerValid: true,
    stats: {},
    actionErrors: [],
  };
  const report: CampaignReport = {
    mode: o.mode,
    seed: o.seed,
    rounds: 0,
    seconds: 0,
    killsByPhase: {},
    killsByVictim: {},
    stats: w.stats,
    load: w.load.counts,
    actionErrors: w.actionErrors,
    violation: null,
  };
  const bump = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);
  try {
    // Short retention, so fading merges history while the campaign runs.
    const ret = await apiCall(t.managerSocket, 'PUT', `${V}/retention`, { policy: 'all:20s, every:10s:forever' });
    // The manager role has no retention service for replicated volumes yet: no fading there.
    const canFade = ret.status < 300;
    if (!canFade) w.actionErrors.push(`retention policy refused, no fading: ${ret.status} ${JSON.stringify(ret.body)}`);
    const startLoad = async (round: number) => {
      const clients = [];
      for (let i = 0; i < CONNS; i++)
        clients.push(
          await connectRetry(
            () => t.connect(),
            180_000,
            () => w.killed,
          ),
        );
      w.load = Object.assign(new Load(model, rng((o.seed + round * 7919) >>> 0)), { counts: report.load });
      w.load.start(clients, regions, LEDGER_BLOCKS);
    };
    let opened = 0;
    for (let round = 1; round <= o.rounds; round++) {
      if (o.timeLimitMs !== undefined && Date.now() - t0 > o.timeLimitMs) break;
      w.round = round;
      w.killed = false;
      w.ledgerValid = true;
      // Nothing kills between rounds: a process gone now died by itself.
      const procs = await t.processes();
      const dead = Object.entries(procs).filter(([, st]) => st.startsWith('exited'));
      if (dead.length) throw new Violation('recovers', `died between rounds: ${JSON.stringify(Object.fromEntries(dead))}`);
      await startLoad(round);
      const ledger = startLedgerWriter(t.ledgerUri(), round, { blocks: LEDGER_BLOCKS, flushEvery: 8 });
      const killAt = Date.now() + 200 + r() * 3500;
      const canRestore = (o.restoreEvery ?? 8) > 0 && round % (o.restoreEvery ?? 8) === 0;
      const fadeOrSeal = () => (canFade ? fade(w) : seal(w));
      const linkOrCut = () => (t.linkCut ? linkCut(w, r) : cut(w, false));
      // Rounds open with these in turn (restore rounds with the restore), so a few rounds see every kind.
      const openers = t.linkCut
        ? [linkOrCut, () => cut(w, true), () => readClone(w, r), fadeOrSeal]
        : [fadeOrSeal, () => cut(w, true), () => readClone(w, r), () => seal(w)];
      const actions = (async () => {
        let next: (() => Promise<void>) | null = canRestore
          ? () => restore(w, r, () => startLoad(round))
          : openers[opened++ % openers.length]!;
        while (!w.killed) {
          if (!next) {
            await sleep(30 + r() * 300);
            const x = r();
            if (x < 0.3) next = () => cut(w, false);
            else if (x < 0.42) next = () => cut(w, true);
            else if (x < 0.62) next = () => seal(w);
            else if (x < 0.77) next = fadeOrSeal;
            else if (x < 0.87) next = () => readClone(w, r);
            else next = linkOrCut;
          }
          if (w.killed) break;
          try {
            await next();
          } catch (err) {
            // A wrong byte is a finding whenever it is read; an unreachable daemon after the kill is not.
            if (err instanceof Violation && !(w.killed && err.invariant === 'recovers')) throw err;
            if (!w.killed && w.actionErrors.length < 50) w.actionErrors.push(`round ${round}: ${(err as Error).message}`.slice(0, 500));
          }
          next = null;
        }
      })();
      let actionFailure: unknown = null;
      actions.catch((err) => (actionFailure = err));
      while (Date.now() < killAt && !actionFailure) await sleep(Math.min(50, Math.max(1, killAt - Date.now())));
      if (actionFailure) throw actionFailure;
      // The kill.
      const victims: Victim[] = o.mode === 'single' ? ['daemon'] : r() < 0.1 ? ['intercept', 'manager'] : [pick(r, t.victims)];
      const ph = [...w.phases].sort().join('+') || 'load';
      bump(report.killsByPhase, ph);
      w.killed = true; // from here, actions failing is the kill's doing
      for (const v of victims) {
        bump(report.killsByVictim, v);
        await t.kill(v);
      }
      const productionKilled = !victims.includes('manager') || victims.length > 1;
      const flushedAt = ledger.lastFlushed;
      ledger.process.kill('SIGKILL');
      await (productionKilled ? w.load.abort() : w.load.stop());
      await actions.catch(() => undefined);
      if (actionFailure) throw actionFailure;
      await w.load.close();
      await t.linkCut?.(false);
      // Restart, sometimes killing again during start-up recovery. The manager first: the
      // intercept's recovery compares dirty regions with the replica, so it waits for the manager.
      const tRestart = Date.now();
      let again = false;
      for (const v of [...victims].sort((a, b) => (a === 'manager' ? -1 : b === 'manager' ? 1 : 0))) {
        if (r() < 0.15) {
          const starting = t.start(v).catch(() => undefined);
          await sleep(r() * 1500);
          bump(report.killsByPhase, 'recovery');
          again = true;
          bump(report.killsByVictim, v);
          await t.kill(v);
          await starting;
        }
        await t.start(v);
      }
      const tCheck = Date.now();
      await checkRound(w, report, round, flushedAt, r, log);
      report.rounds = round;
      log(
        `round ${round}: kill ${victims.join('+')} during ${ph}${again ? ' and in recovery' : ''} (restart ${tCheck - tRestart} ms, checks ${Date.now() - tCheck} ms); ${w.cuts.length} cuts, ${Object.entries(
          w.stats,
        )
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}`,
      );
    }
  } catch (err) {
    const v = err instanceof Violation ? err : null;
    report.violation = {
      round: w.round,
      invariant: v?.invariant ?? 'campaign-error',
      message: (err as Error).message,
      dir: o.dir,
      seed: o.seed,
    };
    const processes = await t.processes().catch((e: Error) => ({ error: e.message }));
    report.violation.message += ` [processes: ${JSON.stringify(processes)}]`;
    fs.writeFileSync(path.join(o.dir, 'violation.json'), JSON.stringify({ ...report, processes, logs: t.logs() }, null, 2));
  } finally {
    await w.load.close().catch(() => undefined);
    await t.close().catch(() => undefined);
    report.seconds = Math.round((Date.now() - t0) / 1000);
  }
  return report;
}

/** Every invariant, after the restart. */
async function checkRound(
  w: World,
  report: CampaignReport,
  round: number,
  flushedAt: number,
  r: () => number,
  log: (s: string) => void,
): Promise<void> {
  const { t, model } = w;
  // 1 and 5: every block holds a value the model allows (flushed and FUA writes kept).
  const c = await connectRetry(() => t.connect());
  let got: string[];
  try {
    got = await readHashes(c, w.base, model.blocks);
  } finally {
    c.destroy();
  }
  if (w.restoring) {
    // Killed during a restore: it is finished at start-up or never began (the load had stopped).
    const { pre, target } = w.restoring;
    const dp = differing(got, pre);
    const dt = differing(got, target);
    if (dp.length && dt.length)
      throw new Violation('flushed-writes-survive', `after a kill during a restore production is neither state: ${describeBlocks(dt)}`);
    w.stats[dt.length ? 'restoresNotBegun' : 'restoresFinishedAtStart'] =
      (w.stats[dt.length ? 'restoresNotBegun' : 'restoresFinishedAtStart'] ?? 0) + 1;
    w.restoring = null;
  } else {
    const bad = model.mismatches(got);
    if (bad.length)
      throw new Violation(
        'flushed-writes-survive',
        `${bad.length} block(s) hold a value no acknowledged or in-flight write put there; first: block ${bad[0]!.block} (of ${bad[0]!.allowed.length} allowed values)`,
      );
  }
  model.adopt(got);
  if (w.ledgerValid && flushedAt >= 0) {
    const lc = await checkLedger(t.ledgerUri(), round, flushedAt);
    if (lc.code !== 0) throw new Violation('flushed-writes-survive', `libnbd ledger: ${lc.stdout}${lc.stderr}`);
    w.stats.ledgerBlocks = (w.stats.ledgerBlocks ?? 0) + flushedAt + 1;
  }
  // 2: catch up, then the replica equals production.
  const { lastSeq } = await catchUp(t);
  const newest = w.cuts.at(-1);
  if (newest && lastSeq < newest.seq)
    throw new Violation('seq-strictly-increasing', `after the restart the last write is seq ${lastSeq}, before cut seq ${newest.seq}`);
  await checkReplica(t);
  // 3 and 4: the log.
  const lg = await checkLog(t);
  if (lg.lastSeq > lastSeq) throw new Violation('seq-strictly-increasing', `the log reaches seq ${lg.lastSeq}, production only ${lastSeq}`);
  // Invariant 4 at sampled points: markers, the newest cut, random older ones.
  const markers = w.cuts.filter((x) => x.marker);
  const sample = new Set([...markers.slice(-2), ...w.cuts.slice(-1)]);
  for (let i = 0; i < 2 && w.cuts.length; i++) sample.add(w.cuts[Math.floor(r() * w.cuts.length)]!);
  let k = 0;
  for (const x of sample) {
    const name = `ck${round}-${k++}`;
    const s = await apiCall(t.managerSocket, 'POST', `${V}/snapshots`, { at: x.marker ?? `@seq:${x.seq}`, name });
    if (s.status >= 300) {
      if (!x.marker && isFadedRefusal(s.body)) {
        w.stats.pointsFaded = (w.stats.pointsFaded ?? 0) + 1;
        w.cuts.splice(w.cuts.indexOf(x), 1);
        continue;
      }
      throw new Violation('points-byte-exact', `point ${x.marker ?? `@seq:${x.seq}`} refused: ${s.status} ${JSON.stringify(s.body)}`);
    }
    try {
      await checkView(t, name, w.base, x.hashes, `snapshot at ${x.marker ? `marker ${x.marker}` : `seq ${x.seq}`} (round ${x.round})`);
    } finally {
      await apiCall(t.managerSocket, 'DELETE', `/v1/views/${name}`);
    }
    w.stats.pointsChecked = (w.stats.pointsChecked ?? 0) + 1;
  }
  if (w.clone) {
    await checkView(t, w.clone.name, w.base, w.clone.cut.hashes, `clone ${w.clone.name} after a restart`);
    w.stats.clonesChecked = (w.stats.clonesChecked ?? 0) + 1;
  }
  await rotate(w, round, r, log);
  report.rounds = round;
}

/** Keeps a few markers and one clone; older ones go, so retention can fade what they pinned. */
async function rotate(w: World, round: number, r: () => number, log: (s: string) => void): Promise<void> {
  const { t } = w;
  const markers = w.cuts.filter((x) => x.marker);
  for (const m of markers.slice(0, Math.max(0, markers.length - 4))) {
    await must(t.managerSocket, 'DELETE', `/v1/markers/${VOLUME}/${m.marker}`);
    delete m.marker;
  }
  if (w.cuts.length > 150) w.cuts.splice(0, w.cuts.length - 150);
  if (w.clone && round % 6 === 0) {
    await must(t.managerSocket, 'DELETE', `/v1/views/${w.clone.name}`);
    w.clone = null;
  }
  if (!w.clone && w.cuts.length) {
    const x = w.cuts[w.cuts.length - 1 - Math.floor(r() * Math.min(5, w.cuts.length))]!;
    const name = `cl${round}`;
    const res = await apiCall(t.managerSocket, 'POST', `${V}/clones`, { at: `@seq:${x.seq}`, name });
    if (res.status < 300) w.clone = { name, cut: x };
    else log(`clone at seq ${x.seq} refused: ${JSON.stringify(res.body)}`);
  }
}
