/**
 * The daemon's side of retention: the policy of a volume's group (stored in
 * the group manager's LMDB meta), fading on request, and a background timer
 * that fades every group that has a policy.
 *
 *   REWIND_RETENTION_INTERVAL_MS   how often the timer fades (default 60000; 0 = never)
 *   REWIND_RETENTION_BYTES_PER_SEC throttle of the merge worker, bytes read + written per second
 *                                  (default 64 MiB/s; 0 = none; it runs at nice 15 in any case)
 *   REWIND_TEST_CLOCK_OFFSET_MS    tests only: added to the wall clock that policy ages are measured from
 */
import type { Catalog } from '../catalog/catalog';
import type { BackupManager } from '../manager/backup-manager';
import type { FadeReport } from '../manager/retention';
import { RetentionPolicyError } from '../manager/retention-policy';
import { UserError } from '../util/errors';
import type { Protection } from './protection';
import type { JobRegistry } from './jobs';
import { type Logger } from '../util/logger';

export interface RetentionInfo {
  volume: string;
  group: string;
  /** The group's policy (normalized), or null: history is kept forever. */
  policy: string | null;
  set: string | null;
  transactions: number;
  historyBytes: number;
  /** The oldest retained point. */
  retainedFrom: { seq: number; time: string } | null;
}

export class RetentionService {
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private stopped = false;
  readonly intervalMs: number;
  readonly clockOffsetMs: number;
  private readonly bytesPerSecond: number;

  constructor(
    private readonly protection: Protection,
    private readonly catalog: Catalog,
    private readonly logger: Logger,
    env: NodeJS.ProcessEnv = process.env,
    /** Where fades are reported (the console's jobs page); a timer's fade that does nothing is not. */
    private readonly jobs: JobRegistry | null = null,
  ) {
    this.intervalMs = Number(env.REWIND_RETENTION_INTERVAL_MS ?? 60_000) || 0;
    this.clockOffsetMs = Number(env.REWIND_TEST_CLOCK_OFFSET_MS ?? 0) || 0;
    this.bytesPerSecond = Number(env.REWIND_RETENTION_BYTES_PER_SEC ?? 64 << 20) || 0;
  }

  now(): number {
    return Date.now() + this.clockOffsetMs;
  }

  private manager(volume: string): { manager: BackupManager; group: string } {
    const rec = this.catalog.get(volume);
    if (!rec) throw new UserError('not-found', `no volume named "${volume}"`);
    if (!rec.protection) throw new UserError('conflict', `volume "${volume}" is not protected: it has no history to retain`);
    return this.protection.managerOf(volume);
  }

  info(volume: string): RetentionInfo {
    const { manager, group } = this.manager(volume);
    const stored = manager.retention.stored();
    let bytes = 0;
    const txns = manager.transactions();
    for (const t of txns) bytes += t.ailfc.size + t.bilfc.size;
    const first = txns.find((t) => t.records > 0);
    const merged = first && first.mergedFrom !== undefined;
    return {
      volume,
      group,
      policy: stored?.text ?? null,
      set: stored?.set ?? null,
      transactions: txns.length,
      historyBytes: bytes,
      retainedFrom: first
        ? merged
          ? { seq: first.lastSeq, time: new Date(first.lastTime).toISOString() }
          : { seq: first.firstSeq, time: new Date(first.firstTime).toISOString() }
        : null,
    };
  }

  /** Sets (null: clears) the policy of the volume's group. */
  async setPolicy(volume: string, policy: unknown): Promise<RetentionInfo> {
    const { manager } = this.manager(volume);
    if (policy !== null && typeof policy !== 'string')
      throw new UserError('invalid', 'policy must be a string such as "all:48h, hourly:30d, daily:365d" (or null to keep everything)');
    try {
      await manager.retention.setPolicy(policy);
    } catch (err) {
      if (err instanceof RetentionPolicyError) throw new UserError('invalid', err.message);
      throw err;
    }
    this.logger.info({ volume, policy }, 'retention policy set');
    return this.info(volume);
  }

  /** Fades the volume's group now (or with dryRun shows what would go); `policy` previews another policy. */
  async fade(
    volume: string,
    opts: { dryRun?: boolean; policy?: string; bytesPerSecond?: number },
  ): Promise<FadeReport & { volume: string }> {
    const { manager } = this.manager(volume);
    if (opts.policy === undefined && !manager.retention.stored()) {
      throw new UserError(
        'conflict',
        `the group of "${volume}" has no retention policy; set one with --policy (history is kept forever until then)`,
      );
    }
    const job = opts.dryRun ? null : this.jobs?.start('fade', volume, opts.policy ? `policy ${opts.policy}` : 'by its policy');
    try {
      const r = await manager.fade({
        now: this.now(),
        dryRun: opts.dryRun === true,
        policy: opts.policy,
        bytesPerSecond: opts.bytesPerSecond ?? this.bytesPerSecond,
      });
      job?.done(fadeSummary(r));
      return { volume, ...r };
    } catch (err) {
      job?.fail(err);
      if (err instanceof RetentionPolicyError) throw new UserError('invalid', err.message);
      throw err;
    }
  }

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => {
      if (!this.ticking && !this.stopped) this.ticking = this.tick().finally(() => (this.ticking = null));
    }, this.intervalMs);
    this.timer.unref();
  }

  /** One pass: fade every group that has a policy. */
  async tick(): Promise<void> {
    for (const g of this.catalog.listGroups()) {
      if (this.stopped) return;
      const vols = this.catalog.groupVolumes(g.name);
      if (!vols.length) continue;
      let job: ReturnType<JobRegistry['start']> | undefined;
      try {
        const { manager } = this.manager(vols[0]!.name);
        if (!manager.retention.stored()) continue;
        job = this.jobs?.start('fade', g.name, 'retention timer');
        const r = await manager.fade({ now: this.now(), bytesPerSecond: this.bytesPerSecond });
        if (r.steps.some((s) => s.done)) {
          this.logger.info(
            { group: g.name, pointsRemoved: r.pointsRemoved, bytesFreed: r.bytesFreed, ms: r.durationMs },
            'retention: faded',
          );
          job?.done(fadeSummary(r));
        } else job?.discard();
      } catch (err) {
        job?.fail(err);
        this.logger.warn({ group: g.name, err: (err as Error).message }, 'retention: fading failed');
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.ticking;
  }
}

function fadeSummary(r: FadeReport): string {
  return `${r.pointsRemoved} points removed, ${r.bytesFreed} bytes freed in ${r.durationMs} ms`;
}
