/**
 * Retention: a group's policy and fading history out (issue 5).
 *
 * The policy (retention-policy.ts) is stored in the manager's LMDB meta
 * under "retention", so it survives restarts. fade() plans which transaction
 * boundaries survive (tiers, pins, the newest transactions) and merges each
 * run T_a..T_b between survivors into one transaction T_b:
 *
 *   1. worker (retention-worker.ts, its own piscina pool of one thread at
 *      nice 15, optionally throttled): writes the merged AILFC (newest write
 *      per byte) and BILFC (oldest before-image per block) under NEW names,
 *      history/ailfc-<b>.m<a>.lfc and bilfc-<b>.m<a>.lfc (tmp + fdatasync +
 *      rename + dir fsync). Nothing the readers use has changed yet.
 *   2. one LMDB write transaction (ManagerCatalog.replaceTransactions):
 *      records a..b-1 deleted, T_b rewritten (firstSeq/firstTime of T_a,
 *      mergedFrom, new files), seq index, block index ([v,blk,i] for i in
 *      a..b → [v,blk,b] at the new position), runs. Pins are checked again
 *      inside it, and pins that would land in the range are refused while it
 *      commits (checkPin).
 *   3. after the commit: file-name and descriptor caches forgotten, the old
 *      files unlinked (a reader that already opened one keeps reading it).
 *
 * Dropping: the run before the oldest surviving boundary, when older than
 * the last tier, becomes the anchor: a stub T_e with an empty BILFC and only
 * the last record in its AILFC. Its end is the oldest point; the manager's
 * firstContainer becomes e+1, so nothing reads before it.
 *
 * Concurrency: fades of one manager run one at a time. The apply only
 * appends T_{n+1}; fading never touches the newest committed transaction (or
 * the one being applied), and lmdb-js serialises the two commits.
 *
 * Crash safety: until the commit, the new files are unreferenced; after it,
 * the old ones are. At open, recover() deletes history files that no
 * transaction record references (leftovers either way). Test hook:
 * REWIND_FADE_CRASH_AT = merge-mid | merged | committed | freed-mid.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Piscina from 'piscina';
import { UserError } from '../util/errors';
import { fsyncDir } from '../util/fsync-dir';
import type { ManagerCatalog } from './catalog';
import { parseRetention, planFade, splitRun, type MergeStep, type PlanTxn, type RetentionPolicy } from './retention-policy';
import type { MergeFailure, MergeOk, MergeTask } from './retention-worker';
import type { CommitInfo, TransactionRecord } from './types';
import { type Logger } from '../util/logger';

export const FADE_CRASH_ENV = 'REWIND_FADE_CRASH_AT';

function fadeCrash(step: 'merged' | 'committed' | 'freed-mid'): void {
  if (process.env[FADE_CRASH_ENV] === step) process.kill(process.pid, 'SIGKILL');
}

export interface FadeOptions {
  /** "Now" for the policy's ages (ms since the epoch; tests inject it). */
  now?: number;
  /** Plan and size the merges, change nothing. */
  dryRun?: boolean;
  /** Use this policy instead of the stored one (e.g. to preview one). */
  policy?: string;
  /** Most history bytes one merge reads (a larger run is merged in pieces, merged again in the next round); default 2 GiB. */
  maxBytesPerMerge?: number;
  /** Throttle for the worker: bytes read + written per second (0 = none). */
  bytesPerSecond?: number;
  /** Planning rounds (pieces of one run are merged in the next); default 4. */
  maxRounds?: number;
}

export interface FadeStepReport {
  /** Transactions T_from..T_to merge into T_to (drop: collapse into the stub that starts history). */
  from: number;
  to: number;
  drop: boolean;
  transactions: number;
  /** The writes from firstSeq to lastSeq stop being points, except lastSeq. */
  firstSeq: number;
  lastSeq: number;
  firstTime: string | null;
  lastTime: string | null;
  pointsRemoved: number;
  bytesBefore: number;
  bytesAfter: number;
  bytesFreed: number;
  done: boolean;
  skipped?: string;
  durationMs: number;
}

export interface FadeReport {
  group: number;
  policy: string | null;
  now: string;
  dryRun: boolean;
  steps: FadeStepReport[];
  pointsRemoved: number;
  transactionsBefore: number;
  transactionsAfter: number;
  historyBytesBefore: number;
  historyBytesAfter: number;
  /** By the merges (history may grow meanwhile: new transactions are not counted). */
  bytesFreed: number;
  /** History bytes read by the merges (fading throughput = this / durationMs). */
  bytesMerged: number;
  durationMs: number;
  /** The oldest retained point afterwards. */
  retainedFrom: { seq: number; time: string } | null;
}

export interface StoredPolicy {
  text: string;
  set: string;
}

/** What the fader needs of its manager (see BackupManager.retention). */
export interface FaderHost {
  readonly groupId: number;
  readonly blockSize: number;
  readonly historyDir: string;
  readonly catalog: ManagerCatalog;
  readonly log: Logger;
  volumes(): Array<{ volumeId: number; size: number }>;
  /** The transaction being applied, if any. */
  applying(): number | null;
  pinnedPoints(): Array<{ holder: string; k: number; overlay: boolean }>;
  historyFile(kind: 'ailfc' | 'bilfc', n: number): string;
  forgetFileNames(): void;
  /** A history file is about to be deleted: close its cached descriptor, drop cached records. */
  forgetFile(file: string): void;
  /** Around a merge's commit: the manager must not cache file names (see historyFile). */
  committing(on: boolean): void;
}

const NAME_RE = /^(ailfc|bilfc)-(\d{16})(?:\.m(\d{16}))?\.lfc$/;
const pad = (n: number): string => String(n).padStart(16, '0');

export class Fader {
  private pool: Piscina | null = null;
  private running: Promise<unknown> = Promise.resolve();
  private closing = false;
  /** The range whose merge is committing right now: pins into it are refused. */
  private committing: { first: number; to: number; drop: boolean } | null = null;

  constructor(private readonly host: FaderHost) {}

  // --- policy ---------------------------------------------------------------------

  stored(): StoredPolicy | null {
    return this.host.catalog.metaValue<StoredPolicy>('retention') ?? null;
  }

  policy(): RetentionPolicy | null {
    const s = this.stored();
    return s ? parseRetention(s.text) : null;
  }

  /** Sets (or with null, clears) the group's policy; throws RetentionPolicyError naming a bad tier. */
  async setPolicy(text: string | null): Promise<StoredPolicy | null> {
    if (text === null) {
      await this.host.catalog.putMetaValue('retention', undefined);
      return null;
    }
    const p = parseRetention(text);
    const s: StoredPolicy = { text: p.text, set: new Date().toISOString() };
    await this.host.catalog.putMetaValue('retention', s);
    return s;
  }

  // --- pins and resends ------------------------------------------------------------

  /**
   * Throws unless the point "before T_k" (with `overlay`: inside T_k, T_k
   * whole) is still in retained history: not dropped, not inside a merged
   * transaction, and not in a range whose merge is committing right now.
   */
  checkPin(k: number, overlay: boolean): void {
    const c = this.host.catalog;
    const first = c.config()?.firstContainer ?? 1;
    if (k < first)
      throw new UserError('invalid', `the point before T_${k} is no longer retained: retention dropped history before T_${first}`);
    const w = this.committing;
    if (w && (w.drop ? k <= w.to : overlay ? k >= w.first && k <= w.to : k > w.first && k <= w.to)) {
      throw new UserError(
        'conflict',
        `retention is merging transactions ${w.first}..${w.to} right now; the point is going away (try again to get the nearest valid point)`,
      );
    }
    if (k >= c.nextContainer()) return;
    const r = c.transactionAtOrAfter(k);
    if (!r) return;
    if (r.mergedFrom !== undefined && k > r.mergedFrom) {
      throw new UserError(
        'invalid',
        `the point before T_${k} lies inside T_${r.n}, which retention merged (transactions ${r.mergedFrom}..${r.n})`,
      );
    }
    if (overlay && (r.n !== k || r.mergedFrom !== undefined)) {
      throw new UserError('invalid', `the writes inside T_${k} are no longer retained: retention merged it into T_${r.n}`);
    }
  }

  /** For a resend of AILFC_n that retention merged or dropped: the commit to answer with. */
  fadedCommit(n: number): CommitInfo | null {
    const c = this.host.catalog;
    const rec = c.transaction(n);
    if (rec && rec.mergedFrom === undefined) return null;
    const r = rec ?? c.transactionAtOrAfter(n);
    if (!r || r.mergedFrom === undefined || r.mergedFrom > n) return null;
    return {
      groupId: r.groupId,
      containerId: n,
      firstSeq: r.firstSeq,
      lastSeq: r.lastSeq,
      firstTime: r.firstTime,
      lastTime: r.lastTime,
      blocks: 0,
      bytesApplied: 0,
    };
  }

  // --- start-up ---------------------------------------------------------------------

  /**
   * Deletes history files no transaction record references: merged files of
   * a merge that never committed, and the old files of one that did (a
   * crash before they were freed). Files of transactions not committed yet
   * (n > lastContainer) are the apply's and are left alone.
   */
  async recover(): Promise<string[]> {
    const c = this.host.catalog;
    // A file can only be referenced by the record of its own n (merged files
    // are named after the merge's last transaction): one lookup per file,
    // never a read of every record (a million of them take seconds and GBs).
    const referenced = (name: string, n: number): boolean => {
      const r = c.transaction(n);
      return r !== undefined && (r.ailfc.file === name || r.bilfc.file === name);
    };
    const last = c.applied().lastContainer;
    const removed: string[] = [];
    for (const name of await fs.promises.readdir(this.host.historyDir)) {
      const m = NAME_RE.exec(name);
      if (!m) continue;
      const n = Number(m[2]);
      if (referenced(name, n)) continue;
      if (m[3] === undefined && n > last) continue;
      await fs.promises.rm(path.join(this.host.historyDir, name), { force: true });
      removed.push(name);
    }
    if (removed.length) {
      await fsyncDir(this.host.historyDir);
      this.host.log.info(
        { files: removed.length, first: removed[0] },
        'retention: removed history files no transaction references (an interrupted fade)',
      );
    }
    return removed;
  }

  // --- fading -------------------------------------------------------------------------

  /** Plans and (unless dryRun) carries out the fade; one at a time per manager. */
  fade(opts: FadeOptions = {}): Promise<FadeReport> {
    const p = this.running.then(() => this.doFade(opts));
    this.running = p.catch(() => undefined);
    return p;
  }

  private historyBytes(): { bytes: number; count: number } {
    let bytes = 0;
    let count = 0;
    for (const r of this.host.catalog.transactions()) {
      bytes += r.ailfc.size + r.bilfc.size;
      count++;
    }
    return { bytes, count };
  }

  /** The plan for `policy` at `now` against the catalog as it is. */
  plan(policy: RetentionPolicy, now: number): ReturnType<typeof planFade> {
    const c = this.host.catalog;
    const txns: PlanTxn[] = c.transactions().map((r) => ({
      n: r.n,
      records: r.records,
      firstSeq: r.firstSeq,
      lastSeq: r.lastSeq,
      firstTime: r.firstTime,
      lastTime: r.lastTime,
      committedAt: r.committedAt,
      mergedFrom: r.mergedFrom,
      bytes: r.ailfc.size + r.bilfc.size,
    }));
    const first = c.config()?.firstContainer ?? 1;
    const anchor = txns.length && txns[0]!.n < first ? txns[0]!.n : null;
    const last = c.applied().lastContainer;
    const applying = this.host.applying();
    return planFade({
      policy,
      now,
      txns,
      anchor,
      pins: this.host.pinnedPoints().map((p) => ({ k: p.k, overlay: p.overlay })),
      protectFrom: Math.min(last, applying ?? Infinity),
    });
  }

  private async doFade(opts: FadeOptions): Promise<FadeReport> {
    const t0 = Date.now();
    const now = opts.now ?? Date.now();
    const dryRun = opts.dryRun === true;
    const policy = opts.policy !== undefined ? parseRetention(opts.policy) : this.policy();
    const before = this.historyBytes();
    const report: FadeReport = {
      group: this.host.groupId,
      policy: policy?.text ?? null,
      now: new Date(now).toISOString(),
      dryRun,
      steps: [],
      pointsRemoved: 0,
      transactionsBefore: before.count,
      transactionsAfter: before.count,
      historyBytesBefore: before.bytes,
      historyBytesAfter: before.bytes,
      bytesFreed: 0,
      bytesMerged: 0,
      durationMs: 0,
      retainedFrom: null,
    };
    if (policy) {
      const maxBytes = opts.maxBytesPerMerge ?? 2 * 1024 ** 3;
      const rounds = dryRun ? 1 : (opts.maxRounds ?? 4);
      for (let round = 0; round < rounds && !this.closing; round++) {
        const plan = this.plan(policy, now);
        if (!plan.steps.length) break;
        let progress = false;
        for (const st of plan.steps) {
          if (this.closing) break;
          if (dryRun || st.drop) {
            const r = await this.merge(st, st.from, st.to, dryRun, opts);
            report.steps.push(r);
            if (r.done) progress = true;
            continue;
          }
          const inRange = this.host.catalog
            .transactions({ from: st.from, to: st.to })
            .map((t) => ({ n: t.n, bytes: t.ailfc.size + t.bilfc.size }));
          for (const piece of splitRun(inRange, maxBytes)) {
            if (this.closing) break;
            const r = await this.merge(st, piece.from, piece.to, false, opts);
            report.steps.push(r);
            if (r.done) progress = true;
          }
        }
        if (!progress) break;
      }
    }
    for (const s of report.steps) {
      if (!s.done && !dryRun) continue;
      report.pointsRemoved += s.pointsRemoved;
      report.bytesFreed += s.bytesFreed;
      if (!s.skipped) report.bytesMerged += s.bytesBefore;
    }
    if (!dryRun) {
      const after = this.historyBytes();
      report.transactionsAfter = after.count;
      report.historyBytesAfter = after.bytes;
    } else {
      report.historyBytesAfter = before.bytes - report.bytesFreed;
      report.transactionsAfter = before.count - report.steps.reduce((a, s) => a + s.transactions - 1, 0);
    }
    const oldest = this.host.catalog.transactions({ limit: 8 }).find((t) => t.records > 0);
    if (oldest) {
      const stub = oldest.n < (this.host.catalog.config()?.firstContainer ?? 1) || oldest.mergedFrom !== undefined;
      report.retainedFrom = stub
        ? { seq: oldest.lastSeq, time: new Date(oldest.lastTime).toISOString() }
        : { seq: oldest.firstSeq, time: new Date(oldest.firstTime).toISOString() };
    }
    report.durationMs = Date.now() - t0;
    if (!dryRun && report.steps.some((s) => s.done)) {
      this.host.log.info(
        {
          group: this.host.groupId,
          merges: report.steps.filter((s) => s.done).length,
          pointsRemoved: report.pointsRemoved,
          bytesFreed: report.bytesFreed,
          ms: report.durationMs,
        },
        'retention: history faded',
      );
    }
    return report;
  }

  private getPool(): Piscina {
    return (this.pool ??= new Piscina({
      filename: path.join(__dirname, 'retention-worker.js'),
      maxThreads: 1,
      minThreads: 0,
      idleTimeout: 10_000,
    }));
  }

  /** Pin conflicts of merging records `recs` (T_to last); a reason, or null. */
  private pinConflict(firstN: number, to: number, drop: boolean): string | null {
    for (const p of this.host.pinnedPoints()) {
      if (drop ? p.k <= to : p.overlay ? p.k >= firstN && p.k <= to : p.k > firstN && p.k <= to) {
        return `pinned by ${p.holder} (${p.overlay ? 'inside' : 'before'} T_${p.k})`;
      }
    }
    return null;
  }

  /** Merges T_from..T_to (the records there now) into T_to; or sizes it (dryRun). */
  private async merge(st: MergeStep, from: number, to: number, dryRun: boolean, opts: FadeOptions): Promise<FadeStepReport> {
    const t0 = Date.now();
    const c = this.host.catalog;
    const drop = st.drop;
    const recs = c.transactions({ from, to });
    const withData = recs.filter((r) => r.records > 0);
    const bytesBefore = recs.reduce((a, r) => a + r.ailfc.size + r.bilfc.size, 0);
    const wd0 = withData[0];
    const wdN = withData[withData.length - 1];
    const whole = from === st.from && to === st.to;
    let points = 0;
    for (const r of recs) points += r.mergedFrom !== undefined ? (r.records > 0 ? 1 : 0) : r.records;
    const out: FadeStepReport = {
      from,
      to,
      drop,
      transactions: recs.length,
      firstSeq: wd0?.firstSeq ?? 0,
      lastSeq: wdN?.lastSeq ?? 0,
      firstTime: wd0 ? new Date(wd0.firstTime).toISOString() : null,
      lastTime: wdN ? new Date(wdN.lastTime).toISOString() : null,
      pointsRemoved: whole ? st.points : Math.max(0, points - (wdN ? 1 : 0)),
      bytesBefore,
      bytesAfter: bytesBefore,
      bytesFreed: 0,
      done: false,
      durationMs: 0,
    };
    const skip = (why: string): FadeStepReport => {
      out.skipped = why;
      out.durationMs = Date.now() - t0;
      return out;
    };
    if (!recs.length || recs[recs.length - 1]!.n !== to) return skip(`T_${to} is not a committed transaction`);
    if (!drop && recs.length < 2) return skip('nothing to merge');
    const last = c.applied().lastContainer;
    const applying = this.host.applying();
    if (to >= last || (applying !== null && to >= applying)) return skip('the newest transactions are never faded');
    const firstN = recs[0]!.n;
    const conflict = this.pinConflict(firstN, to, drop);
    if (conflict) return skip(conflict);
    const earliest = recs[0]!.mergedFrom ?? firstN;
    const names = { ailfc: `ailfc-${pad(to)}.m${pad(earliest)}.lfc`, bilfc: `bilfc-${pad(to)}.m${pad(earliest)}.lfc` };
    for (const r of recs) {
      if (r.ailfc.file === names.ailfc || r.bilfc.file === names.bilfc) return skip(`${names.ailfc} is in use`);
    }
    const task: MergeTask = {
      op: 'merge',
      groupId: this.host.groupId,
      blockSize: this.host.blockSize,
      historyDir: this.host.historyDir,
      from: firstN,
      to,
      drop,
      dryRun,
      sources: recs.map((r) => ({
        n: r.n,
        ailfcPath: this.host.historyFile('ailfc', r.n),
        bilfcPath: this.host.historyFile('bilfc', r.n),
        runs: c.runs(r.n),
      })),
      volumes: this.host.volumes(),
      names,
      bytesPerSecond: opts.bytesPerSecond ?? 0,
      crashMid: process.env[FADE_CRASH_ENV] === 'merge-mid',
    };
    const res = (await this.getPool().run(task)) as MergeOk | MergeFailure;
    if (!res.ok) {
      this.host.log.error({ from, to, problem: res.problem }, 'retention: merge failed; history unchanged');
      throw new Error(`merging T_${from}..T_${to}: ${res.problem}`);
    }
    out.bytesAfter = res.ailfc.size + res.bilfc.size;
    out.bytesFreed = bytesBefore - out.bytesAfter;
    if (dryRun) {
      out.durationMs = Date.now() - t0;
      return out;
    }
    fadeCrash('merged');
    const newFiles = [path.join(this.host.historyDir, names.ailfc), path.join(this.host.historyDir, names.bilfc)];
    const rec: TransactionRecord = {
      n: to,
      groupId: this.host.groupId,
      firstSeq: drop ? (wdN?.lastSeq ?? 0) : (wd0?.firstSeq ?? 0),
      lastSeq: wdN?.lastSeq ?? 0,
      firstTime: drop ? (wdN?.lastTime ?? 0) : (wd0?.firstTime ?? 0),
      lastTime: wdN?.lastTime ?? 0,
      records: res.records,
      errors: res.errors,
      ailfc: { file: names.ailfc, size: res.ailfc.size, bodyCrc: res.ailfc.bodyCrc, recordCount: res.ailfc.recordCount },
      bilfc: { file: names.bilfc, size: res.bilfc.size, bodyCrc: res.bilfc.bodyCrc, recordCount: res.bilfc.recordCount },
      blocks: res.blocks,
      bytesApplied: recs.reduce((a, r) => a + r.bytesApplied, 0),
      volumes: res.volumes,
      blockSize: this.host.blockSize,
      committedAt: recs[recs.length - 1]!.committedAt,
      mergedFrom: earliest,
    };
    let committed = false;
    let why = 'the transactions changed while they were merged';
    this.committing = { first: firstN, to, drop };
    this.host.committing(true);
    try {
      committed = await c.replaceTransactions(recs, rec, res.runs, this.host.blockSize, drop ? to + 1 : null, () => {
        const p = this.pinConflict(firstN, to, drop);
        if (p) why = p;
        return p === null;
      });
    } finally {
      if (committed) c.resetReadTxn();
      this.host.committing(false);
      this.committing = null;
      if (!committed) for (const f of newFiles) await fs.promises.rm(f, { force: true });
    }
    if (!committed) return skip(why);
    fadeCrash('committed');
    // Free the old files: readers that opened one keep their descriptor.
    let i = 0;
    for (const r of recs) {
      for (const kind of ['ailfc', 'bilfc'] as const) {
        const f = path.join(this.host.historyDir, r[kind].file);
        this.host.forgetFile(f);
        await fs.promises.rm(f, { force: true });
        if (++i === recs.length) fadeCrash('freed-mid');
      }
    }
    await fsyncDir(this.host.historyDir);
    out.done = true;
    out.durationMs = Date.now() - t0;
    this.host.log.debug(
      { from, to, drop, bytesBefore, bytesAfter: out.bytesAfter, ms: out.durationMs, timings: res.timings },
      'retention: merged',
    );
    return out;
  }

  /** Waits for a running fade (it stops after its current merge), then stops the worker. */
  async close(): Promise<void> {
    this.closing = true;
    await this.running.catch(() => undefined);
    if (this.pool) await this.pool.destroy();
    this.pool = null;
  }
}
