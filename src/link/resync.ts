/**
 * Leaving degraded mode with a super transaction (001 [1168]-[1169]).
 *
 * When a group's LFC pool filled up (GroupJournal pool-degraded mode) and
 * everything buffered has been committed by the manager, the controller:
 *   1. GroupJournal.beginSuper(): journaling resumes; containers from here
 *      on are tagged as the super transaction;
 *   2. re-reads every region the state maps mark dirty from production and
 *      journals it as resync records (ProtectedVolume.resyncRange, under the
 *      range lock, so concurrent host writes keep their order);
 *   3. GroupJournal.endSuper(): seals the last container and waits for its
 *      commit; the group is back to normal.
 * Progress is kept as a cursor in the open run (GroupJournal.setResyncCursor,
 * persisted in super.json): if the pool fills again meanwhile, the run
 * stays open and, once drained, resumes from the cursor, re-reading before
 * it only the regions written while journaling was off again (their
 * latest seq is at or after the new overflow's first seq; unknown after a
 * restart, so re-read). After a restart: an open run was already
 * re-captured by the start-up resync of dirty regions, so it is only
 * ended; a group still degraded waits to drain, then resumes likewise.
 */
import type { GroupJournal } from '../journal/group-journal';
import type { ProtectedVolume } from '../journal/protected-volume';
import { type Logger } from '../util/logger';

const STEP = 8 * 1024 * 1024;

export interface ResyncStatus {
  state: 'normal' | 'degraded' | 'resync';
  running: boolean;
  regionsLeft: number;
  /** Bytes re-read from production into super transactions (all passes), and by the current or last pass. */
  bytesResynced: number;
  lastRunBytes: number;
  lastDurationMs: number | null;
  runs: number;
  /** Where the open run's resync stands (persisted in super.json), and whether an overflow left regions before it to redo. */
  cursor: { volumeId: number; offset: number } | null;
  redoFrom: number | null;
}

export class ResyncController {
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private regionsLeft = 0;
  private bytesResynced = 0;
  private lastDurationMs: number | null = null;
  private runs = 0;
  /** Bytes re-read by the current (or last) pass. */
  private lastRunBytes = 0;
  private closed = false;

  constructor(
    private readonly journal: GroupJournal,
    private readonly volumes: () => ProtectedVolume[],
    private readonly log: Logger,
  ) {}

  start(): void {
    this.journal.onStateChange((s) => {
      if (s === 'drained') this.kick();
    });
    this.timer = setInterval(() => this.kick(), 1000);
    this.timer.unref?.();
    this.kick();
  }

  private kick(): void {
    if (this.running || this.closed) return;
    const run = this.journal.superTransaction;
    if (this.journal.drained) {
      this.running = this.resync().finally(() => (this.running = null));
    } else if (run && run.lastContainer === null && !this.journal.isDegraded) {
      // Restarted mid-resync: start-up re-captured the dirty regions into the open run; end it.
      this.running = this.finish().finally(() => (this.running = null));
    } else if (run && run.lastContainer !== null) {
      this.running = this.journal.endSuper().catch(() => undefined);
      this.running.finally(() => (this.running = null));
    }
  }

  private async finish(): Promise<void> {
    try {
      await this.journal.endSuper();
    } catch (err) {
      this.log.error({ group: this.journal.groupId, err: (err as Error).message }, 'ending the super transaction failed');
    }
  }

  private async resync(): Promise<void> {
    const t0 = Date.now();
    this.runs++;
    let run;
    try {
      run = await this.journal.beginSuper();
    } catch (err) {
      this.log.error({ group: this.journal.groupId, err: (err as Error).message }, 'cannot start the super transaction');
      return;
    }
    const resumeAt = run.cursor ?? null;
    const work = this.plan(resumeAt, run.redoFrom);
    let regions = 0;
    for (const w of work) regions += Math.ceil(w.length / w.pv.stateMap.regionSize);
    this.regionsLeft = regions;
    this.log.info(
      { group: this.journal.groupId, super: run, regions, resumedFrom: resumeAt },
      resumeAt ? 'resync resumed from its cursor (super transaction)' : 'resync of dirty regions started (super transaction)',
    );
    let bytes = 0;
    this.lastRunBytes = 0;
    const limit = this.journal.poolLimitBytes;
    const step = limit > 0 ? Math.max(1 << 20, Math.min(STEP, Math.floor(limit / 4))) : STEP;
    for (const w of work) {
      for (let off = w.offset; off < w.offset + w.length; off += step) {
        if (this.closed) return;
        if (this.journal.isDegraded) {
          this.log.warn(
            { group: this.journal.groupId, bytes, cursor: this.journal.superTransaction?.cursor },
            'degraded again during the resync: it resumes from its cursor once the pool drains',
          );
          return;
        }
        const len = Math.min(step, w.offset + w.length - off);
        await this.roomFor(len);
        if (this.journal.isDegraded || this.closed) continue;
        const n = await w.pv.resyncRange(off, len);
        bytes += n;
        this.lastRunBytes += n;
        this.bytesResynced += n;
        this.regionsLeft = Math.max(0, this.regionsLeft - Math.ceil(len / w.pv.stateMap.regionSize));
        // Progress only moves forward: a pass redoing regions before its resume point leaves it where it was.
        const at = { volumeId: w.pv.volumeId, offset: off + len };
        if (!resumeAt || before(resumeAt, at)) this.journal.setResyncCursor(at, true);
      }
    }
    await this.finish();
    this.regionsLeft = 0;
    this.lastDurationMs = Date.now() - t0;
    this.log.info(
      { group: this.journal.groupId, bytes, ms: this.lastDurationMs },
      'resync done: super transaction committed, back to normal',
    );
  }

  /**
   * The ranges a pass re-reads, in volume id then offset order. A first
   * pass: every dirty region. A pass resuming at `resumeAt`: regions from
   * there on, and before it only those written since `redoFrom` (the
   * writes an overflow during the run kept out of the journal); the rest
   * is in the run's containers already, or journaled since.
   */
  private plan(
    resumeAt: { volumeId: number; offset: number } | null,
    redoFrom: number | undefined,
  ): Array<{ pv: ProtectedVolume; offset: number; length: number }> {
    const work: Array<{ pv: ProtectedVolume; offset: number; length: number }> = [];
    const vols = [...this.volumes()].sort((a, b) => a.volumeId - b.volumeId);
    for (const pv of vols) {
      const all = pv.stateMap.dirtyRanges();
      if (!resumeAt || pv.volumeId > resumeAt.volumeId) {
        for (const r of all) work.push({ pv, ...r });
        continue;
      }
      const cut = pv.volumeId < resumeAt.volumeId ? Infinity : resumeAt.offset;
      const redo = redoFrom === undefined ? [] : pv.stateMap.dirtyRanges(redoFrom);
      for (const r of redo) {
        const end = Math.min(r.offset + r.length, cut);
        if (r.offset < end) work.push({ pv, offset: r.offset, length: end - r.offset });
      }
      for (const r of all) {
        const start = Math.max(r.offset, cut);
        if (start < r.offset + r.length) work.push({ pv, offset: start, length: r.offset + r.length - start });
      }
    }
    return work;
  }

  /**
   * The resync pushes back through the pool: it waits for the manager to
   * commit (sealing what it has written) rather than filling the pool and
   * degrading again. Only host writes can fill it.
   */
  private async roomFor(len: number): Promise<void> {
    const limit = this.journal.poolLimitBytes;
    if (!limit) return;
    while (!this.closed && !this.journal.isDegraded && this.journal.poolUsage() + len + (1 << 20) > limit) {
      if (this.journal.pendingCount === 0) await this.journal.seal('resync');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  status(): ResyncStatus {
    const js = this.journal;
    const state = js.isDegraded ? 'degraded' : js.superTransaction ? 'resync' : 'normal';
    return {
      state,
      running: this.running !== null,
      regionsLeft: this.regionsLeft,
      bytesResynced: this.bytesResynced,
      lastRunBytes: this.lastRunBytes,
      lastDurationMs: this.lastDurationMs,
      runs: this.runs,
      cursor: js.superTransaction?.cursor ?? null,
      redoFrom: js.superTransaction?.redoFrom ?? null,
    };
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
  }
}

/** a comes strictly before b in (volume id, offset) order. */
function before(a: { volumeId: number; offset: number }, b: { volumeId: number; offset: number }): boolean {
  return a.volumeId < b.volumeId || (a.volumeId === b.volumeId && a.offset < b.offset);
}
