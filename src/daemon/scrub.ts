/**
 * The daemon's scrub schedule (manager/scrub.ts does one group's pass):
 * every group whose last scrub finished more than `intervalMs` ago (or,
 * never scrubbed, `intervalMs` after the daemon started) is scrubbed, one
 * group at a time, at `bytesPerSecond`; then every registered extra source
 * (the archive's packs, when src/archive provides one: addSource).
 * `rewind scrub` starts a pass now. Results: status() for the control API,
 * `rewind status` and the Prometheus metrics.
 *
 *   --scrub-interval DURATION   default 7d; off disables the schedule (rewind scrub still works)
 *   --scrub-rate SIZE           bytes read per second, default 32M; 0 unthrottled
 */
import type { BackupManager } from '../manager/backup-manager';
import type { DamageMark } from '../manager/damage';
import type { ScrubReport } from '../manager/scrub';
import { UserError } from '../util/errors';
import type { Logger } from '../util/logger';

export interface ScrubSettings {
  intervalMs: number;
  bytesPerSecond: number;
}

export const DEFAULT_SCRUB: ScrubSettings = { intervalMs: 7 * 86_400_000, bytesPerSecond: 32 << 20 };

/** Something else to scrub (the archive's packs and index): the hook src/archive plugs into. */
export interface ScrubSource {
  name: string;
  scrub(opts: { bytesPerSecond: number; aborted: () => boolean }): Promise<{
    bytesRead: number;
    checked: number;
    errors: Array<{ what: string; problem: string }>;
  }>;
}

/** The groups whose managers are here (single process: protection; manager role: the link server). */
export type ScrubGroups = () => Array<{ group: string; manager: BackupManager }>;

export type StoredScrub = Omit<ScrubReport, 'found'> & { found: number };

export interface GroupScrubStatus {
  group: string;
  running: boolean;
  /** Bytes read by the pass running now. */
  progressBytes: number | null;
  last: StoredScrub | null;
  /** When the schedule scrubs it next (null: off). */
  nextDue: string | null;
  damage: DamageMark[];
}

export interface ScrubStatus {
  intervalMs: number;
  bytesPerSecond: number;
  groups: GroupScrubStatus[];
  sources: Array<{
    name: string;
    last: { finished: string; bytesRead: number; checked: number; errors: Array<{ what: string; problem: string }> } | null;
  }>;
  /** Passes finished since the daemon started, and bytes they read (metrics). */
  runs: number;
  bytesRead: number;
}

export class ScrubService {
  private timer: NodeJS.Timeout | null = null;
  private readonly started = Date.now();
  private readonly running = new Map<string, { progress: number; done: Promise<ScrubReport> }>();
  private readonly sources: ScrubSource[] = [];
  private readonly sourceResults = new Map<string, ScrubStatus['sources'][number]['last']>();
  private chain: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private runs = 0;
  private bytes = 0;

  constructor(
    private readonly groups: ScrubGroups,
    readonly settings: ScrubSettings,
    private readonly log: Logger,
    /** The group of a volume or group name (throws a UserError when there is none). */
    readonly groupOf: (name: string) => string,
  ) {}

  addSource(s: ScrubSource): void {
    this.sources.push(s);
  }

  start(): void {
    if (this.settings.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.tick(), Math.min(60_000, Math.max(1000, this.settings.intervalMs / 10)));
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  private dueAt(manager: BackupManager): number {
    const last = manager.lastScrub();
    const from = last?.finished ? Date.parse(last.finished) : this.started;
    return from + this.settings.intervalMs;
  }

  /** One look at the schedule: due groups are queued (one pass at a time). */
  private async tick(): Promise<void> {
    if (this.stopped) return;
    let any = false;
    for (const { group, manager } of this.groups()) {
      if (this.running.has(group) || Date.now() < this.dueAt(manager)) continue;
      any = true;
      void this.scrubGroup(group, manager).catch(() => undefined);
    }
    if (any && this.sources.length) void this.scrubSources();
  }

  /**
   * Starts a pass now over one group (a volume or group name resolved by
   * the caller) or all; resolves with the reports once they are done.
   */
  run(group?: string): Promise<Array<ScrubReport & { group: string }>> {
    const all = this.groups();
    const pick = group === undefined ? all : all.filter((g) => g.group === group);
    if (group !== undefined && pick.length === 0) throw new UserError('not-found', `no consistency group "${group}" with history here`);
    const passes = pick.map(async (g) => ({ group: g.group, ...(await this.scrubGroup(g.group, g.manager)) }));
    if (group === undefined && this.sources.length) void this.scrubSources();
    return Promise.all(passes);
  }

  private scrubGroup(group: string, manager: BackupManager): Promise<ScrubReport> {
    const cur = this.running.get(group);
    if (cur) return cur.done;
    const entry = { progress: 0, done: null as unknown as Promise<ScrubReport> };
    // Passes run one after another: two at once would only share the disk.
    const pass = this.chain
      .catch(() => undefined)
      .then(async () => {
        this.log.info({ group, bytesPerSecond: this.settings.bytesPerSecond }, 'scrub started');
        const r = await manager.scrub({
          bytesPerSecond: this.settings.bytesPerSecond,
          aborted: () => this.stopped,
          onProgress: (b) => (entry.progress = b),
        });
        this.runs++;
        this.bytes += r.bytesRead;
        const level = r.found.length || r.state === 'failed' ? 'error' : 'info';
        this.log[level](
          {
            group,
            state: r.state,
            bytesRead: r.bytesRead,
            mbPerSecond: +(r.bytesPerSecond / 1e6).toFixed(1),
            containers: r.containersChecked,
            containerErrors: r.containerErrors,
            replicaBlocks: r.replicaBlocksChecked,
            replicaBlockErrors: r.replicaBlockErrors,
            cleared: r.cleared,
            found: r.found.map((m) => m.problem),
            err: r.error,
          },
          r.found.length ? 'scrub found damage: reads that need it are refused' : 'scrub done',
        );
        return r;
      });
    this.chain = pass;
    entry.done = pass;
    this.running.set(group, entry);
    void entry.done.finally(() => this.running.delete(group)).catch(() => undefined);
    return entry.done;
  }

  private async scrubSources(): Promise<void> {
    for (const s of this.sources) {
      if (this.stopped) return;
      try {
        const r = await s.scrub({ bytesPerSecond: this.settings.bytesPerSecond, aborted: () => this.stopped });
        this.sourceResults.set(s.name, { finished: new Date().toISOString(), ...r });
        this.bytes += r.bytesRead;
        if (r.errors.length) this.log.error({ source: s.name, errors: r.errors }, 'scrub found damage');
      } catch (err) {
        this.log.error({ source: s.name, err: (err as Error).message }, 'scrub of a source failed');
      }
    }
  }

  status(): ScrubStatus {
    return {
      intervalMs: this.settings.intervalMs,
      bytesPerSecond: this.settings.bytesPerSecond,
      groups: this.groups().map(({ group, manager }) => {
        const run = this.running.get(group);
        return {
          group,
          running: !!run,
          progressBytes: run ? run.progress : null,
          last: (manager.lastScrub() as StoredScrub | undefined) ?? null,
          nextDue: this.settings.intervalMs > 0 ? new Date(this.dueAt(manager)).toISOString() : null,
          damage: manager.history.damage.list(),
        };
      }),
      sources: this.sources.map((s) => ({ name: s.name, last: this.sourceResults.get(s.name) ?? null })),
      runs: this.runs,
      bytesRead: this.bytes,
    };
  }
}
