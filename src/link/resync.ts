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
 * If the pool fills again meanwhile, the run stays open and starts over
 * once drained. After a restart: an open run was already re-captured by the
 * start-up resync of dirty regions, so it is only ended; a group still
 * degraded waits to drain as before.
 */
import type { GroupJournal } from '../journal/group-journal';
import type { ProtectedVolume } from '../journal/protected-volume';
import { type Logger } from '../util/logger';

const STEP = 8 * 1024 * 1024;

export interface ResyncStatus {
  state: 'normal' | 'degraded' | 'resync';
  running: boolean;
  regionsLeft: number;
  bytesResynced: number;
  lastDurationMs: number | null;
  runs: number;
}

export class ResyncController {
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private regionsLeft = 0;
  private bytesResynced = 0;
  private lastDurationMs: number | null = null;
  private runs = 0;
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
    const work: Array<{ pv: ProtectedVolume; offset: number; length: number }> = [];
    let regions = 0;
    for (const pv of this.volumes()) {
      for (const r of pv.stateMap.dirtyRanges()) {
        work.push({ pv, offset: r.offset, length: r.length });
        regions += Math.ceil(r.length / pv.stateMap.regionSize);
      }
    }
    this.regionsLeft = regions;
    this.log.info({ group: this.journal.groupId, super: run, regions }, 'resync of dirty regions started (super transaction)');
    let bytes = 0;
    const limit = this.journal.poolLimitBytes;
    const step = limit > 0 ? Math.max(1 << 20, Math.min(STEP, Math.floor(limit / 4))) : STEP;
    for (const w of work) {
      for (let off = w.offset; off < w.offset + w.length; off += step) {
        if (this.closed) return;
        if (this.journal.isDegraded) {
          this.log.warn({ group: this.journal.groupId }, 'degraded again during the resync: it resumes once the pool drains');
          return;
        }
        const len = Math.min(step, w.offset + w.length - off);
        await this.roomFor(len);
        if (this.journal.isDegraded || this.closed) continue;
        bytes += await w.pv.resyncRange(off, len);
        this.regionsLeft = Math.max(0, this.regionsLeft - Math.ceil(len / w.pv.stateMap.regionSize));
      }
    }
    this.bytesResynced += bytes;
    await this.finish();
    this.regionsLeft = 0;
    this.lastDurationMs = Date.now() - t0;
    this.log.info(
      { group: this.journal.groupId, bytes, ms: this.lastDurationMs },
      'resync done: super transaction committed, back to normal',
    );
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
      lastDurationMs: this.lastDurationMs,
      runs: this.runs,
    };
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
  }
}
