/**
 * Markers (pseudosnapshots) and their schedules: a marker is a named point
 * that copies no data, placed at the intercept's current write (after a
 * quiesce pre-hook, if any), pinned against retention, surfaced as an
 * export on demand. Schedules place markers on their own, once a second's
 * check; expired markers are swept every 10 s.
 */
import { UserError } from '../util/errors';
import { validateVolumeName } from '../catalog/catalog';
import { dueRules, parseDuration, parseRule, runHook, type HookResult, type MarkerKind, type MarkerRecord, type Schedule } from './markers';
import type { TimeTravelHost, ViewInfo } from './api';
import type { VolumeContext } from './ports';
import type { MarkerStore } from './store';
import type { ViewService } from './views';
import type { PointService } from './points';

export class MarkerService {
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private lastSweep = 0;
  private readonly pinSourcesAdded = new Set<string>();
  /** Called after a scheduled marker is placed by a rule with archive=yes (set by the archiver). */
  onScheduledArchive: ((volume: string, marker: MarkerRecord) => Promise<void>) | null = null;
  private readonly placedListeners: Array<(m: MarkerRecord) => void> = [];

  constructor(
    private readonly host: TimeTravelHost,
    private readonly store: MarkerStore,
    private readonly views: ViewService,
    /** The clock of schedules and marker expiry (tests may shift it). */
    private readonly now: () => number,
    /** Resolves `at` for a marker placed at a past point. */
    private readonly points: PointService | null = null,
  ) {}

  /**
   * Called after each marker is placed, scheduled ones included: the
   * composition root hands the file catalog's hook here, so a marker's
   * point is indexed as it is taken (seed 004) without time travel knowing
   * the catalog.
   */
  onPlaced(fn: (m: MarkerRecord) => void): void {
    this.placedListeners.push(fn);
  }

  /** Starts the once-a-second check of schedules and expiry. */
  start(): void {
    this.pinAllGroups();
    this.timer = setInterval(() => void this.tick(), 1000);
    this.timer.unref();
  }

  /**
   * Existing markers pin from the start: after a restart, retention may run
   * before any new marker is placed (the crash campaign found a fade merging
   * a marked point away exactly so).
   */
  private pinAllGroups(): void {
    for (const group of new Set(this.store.markers().map((m) => m.group))) {
      if (this.pinSourcesAdded.has(group)) continue;
      try {
        this.ensureMarkerPins(group, this.host.target(group).ctx);
      } catch {
        // The group is not open (yet): the next tick tries again.
      }
    }
  }

  /** Markers pin their points, resolved when retention asks (one source per group). */
  private ensureMarkerPins(group: string, ctx: VolumeContext): void {
    if (this.pinSourcesAdded.has(group)) return;
    this.pinSourcesAdded.add(group);
    ctx.history.pins.addSource(() => {
      const out: Array<{ holder: string; k: number; overlay: boolean }> = [];
      for (const m of this.store.markers(group)) {
        const p = ctx.history.pins.ofSeq(m.seq);
        if (p) out.push({ holder: `marker:${m.name}`, ...p });
      }
      return out;
    });
  }

  /**
   * `rewind mark VOL|GROUP NAME [--quiesce-pre CMD --quiesce-post CMD --timeout S] [--keep D]`:
   * records the current seq (every write acknowledged so far) under a name.
   * With a pre-hook that succeeds the marker is application-consistent;
   * if it fails or times out (it is killed) the marker is still placed, as
   * crash-consistent, with the reason. The post-hook always runs.
   *
   * With `at` (a volume only) the marker names that past point instead, as
   * `rewind point` resolves it (`nearest` as there): crash-consistent, and
   * without hooks (nothing can be quiesced in the past).
   */
  async mark(
    target: string,
    name: unknown,
    opts: { pre?: unknown; post?: unknown; timeout?: unknown; keep?: unknown; at?: unknown; nearest?: unknown } = {},
    auto = false,
  ): Promise<MarkerRecord> {
    const { group, volume, ctx } = this.host.target(target);
    const err = validateVolumeName(name);
    if (err) throw new UserError('invalid', err.replace(/volume name/g, 'marker name'));
    const markerName = name as string;
    if (/^(seq|txn|time):|^(latest|now)$/i.test(markerName))
      throw new UserError('invalid', `"${markerName}" would read as a point, not a marker name`);
    if (this.store.marker(group, markerName))
      throw new UserError('conflict', `a marker named "${markerName}" already exists in group ${group}`);
    for (const [k, v] of Object.entries({ pre: opts.pre, post: opts.post })) {
      if (v !== undefined && v !== null && (typeof v !== 'string' || !v.trim()))
        throw new UserError('invalid', `${k} must be a shell command`);
    }
    let timeoutS = 30;
    if (opts.timeout !== undefined && opts.timeout !== null) {
      timeoutS = typeof opts.timeout === 'number' ? opts.timeout : parseDuration(String(opts.timeout), 'timeout');
      if (!(timeoutS > 0)) throw new UserError('invalid', 'timeout must be positive');
    }
    let keepS: number | null = null;
    if (opts.keep !== undefined && opts.keep !== null)
      keepS = typeof opts.keep === 'number' ? opts.keep : parseDuration(String(opts.keep), 'keep');
    let past: { seq: number; time: number } | null = null;
    if (opts.at !== undefined && opts.at !== null) {
      if (volume === null) throw new UserError('invalid', `a marker at a past point is placed on a volume, not on group ${group}`);
      if (opts.pre !== undefined || opts.post !== undefined)
        throw new UserError('invalid', 'a marker at a past point takes no quiesce hooks: nothing can be quiesced in the past');
      if (!this.points) throw new UserError('invalid', 'markers at a past point are not available here');
      const info = await this.points.resolveInfo(volume, opts.at, { nearest: opts.nearest });
      past = { seq: info.seq, time: Date.parse(info.time) };
    }
    this.ensureMarkerPins(group, ctx);
    const env = { REWIND_MARKER: markerName, REWIND_GROUP: group, REWIND_VOLUME: volume ?? '' };
    let pre: HookResult | null = null;
    let kind: MarkerKind = 'crash-consistent';
    let reason: string | null = null;
    if (typeof opts.pre === 'string') {
      pre = await runHook(opts.pre, timeoutS * 1000, env);
      if (pre.timedOut) reason = `pre-hook timed out after ${timeoutS}s and was killed`;
      else if (pre.exitCode !== 0)
        reason = `pre-hook failed (${pre.signal ? `signal ${pre.signal}` : `exit ${pre.exitCode}`})${pre.output ? `: ${pre.output.split('\n').pop()}` : ''}`;
      else kind = 'application-consistent';
    }
    // The intercept's current write as of now (after the pre-hook): asked of
    // the journal itself, across the link on a remote manager, never a
    // status report that may be a second old.
    const seq = past ? past.seq : (await ctx.journal.locate(undefined, { fresh: true })).position.seq;
    const time = past ? past.time : this.now();
    let post: HookResult | null = null;
    if (typeof opts.post === 'string') post = await runHook(opts.post, timeoutS * 1000, env);
    const rec: MarkerRecord = {
      name: markerName,
      group,
      volume,
      seq,
      time,
      kind,
      reason,
      retainUntil: keepS === null ? null : (past ? this.now() : time) + keepS * 1000,
      auto,
      hooks: { pre, post },
    };
    if (!(await this.store.addMarker(rec)))
      throw new UserError('conflict', `a marker named "${markerName}" already exists in group ${group}`);
    this.host.logger.info({ marker: markerName, group, seq, kind, reason }, 'marker placed');
    for (const fn of this.placedListeners) {
      try {
        fn(rec);
      } catch (err) {
        this.host.logger.warn({ marker: markerName, err: (err as Error).message }, 'marker listener failed');
      }
    }
    return rec;
  }

  /** Grows whenever a marker is added or removed (the console caches markers on it). */
  get version(): number {
    return this.store.version;
  }

  /** Markers of a volume's group (or a group), filtered by name glob, kind and time. */
  markers(target: string, f: { name?: string; kind?: string; since?: number; until?: number } = {}): MarkerRecord[] {
    const { group } = this.host.target(target);
    const re = f.name
      ? new RegExp(
          `^${f.name
            .replace(/[.+^${}()|[\]\\]/g, '\\$&')
            .replace(/\*/g, '.*')
            .replace(/\?/g, '.')}$`,
        )
      : null;
    return this.store
      .markers(group)
      .filter(
        (m) =>
          (!re || re.test(m.name)) &&
          (!f.kind || m.kind === f.kind || m.kind.startsWith(f.kind)) &&
          (f.since === undefined || m.time >= f.since) &&
          (f.until === undefined || m.time <= f.until),
      )
      .sort((a, b) => a.seq - b.seq || a.time - b.time);
  }

  async unmark(target: string, name: string): Promise<MarkerRecord> {
    const { group } = this.host.target(target);
    const m = this.store.marker(group, name);
    if (!m) throw new UserError('not-found', `no marker named "${name}" in group ${group}`);
    await this.store.removeMarkers([[group, name]]);
    return m;
  }

  /** `rewind surface VOL MARKER`: a read-only export named after the marker. */
  async surface(volume: string, marker: string): Promise<ViewInfo> {
    const { group } = this.host.target(volume);
    if (!this.store.marker(group, marker)) throw new UserError('not-found', `no marker named "${marker}" in group ${group}`);
    const v = await this.views.snapshot(volume, marker, marker);
    await this.views.markSurfaced(marker, marker);
    return v;
  }

  /** `rewind submerge NAME`: removes a surfaced marker's export (the marker stays). */
  async submerge(name: string): Promise<{ removed: string; disconnected: number }> {
    if (!this.views.isSurfaced(name)) throw new UserError('not-found', `"${name}" is not a surfaced marker`);
    return this.views.remove(name);
  }

  schedule(volume: string): Schedule {
    this.host.context(volume);
    return this.store.schedule(volume) ?? { volume, rules: [], last: {} };
  }

  /** Adds rules (or with clear, replaces them all). Persisted: schedules survive restarts. */
  async setSchedule(volume: string, change: { add?: unknown; clear?: unknown }): Promise<Schedule> {
    this.host.context(volume);
    const cur = change.clear === true ? { volume, rules: [], last: {} } : this.schedule(volume);
    const add = change.add === undefined ? [] : Array.isArray(change.add) ? change.add : [change.add];
    for (const r of add) {
      if (typeof r !== 'string')
        throw new UserError('invalid', 'rules are strings such as "every=15m,hours=09:00-17:00,days=mon-fri,keep=7d"');
      cur.rules.push(parseRule(r));
    }
    await this.store.putSchedule(cur.rules.length ? cur : null, volume);
    return cur;
  }

  /** Once a second: scheduled markers, then (every 10 s) expired markers. */
  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      this.pinAllGroups();
      const now = this.now();
      for (const s of this.store.schedules()) {
        const due = dueRules(s, now);
        if (!due.length) continue;
        const rules = due.map((i) => s.rules[i]!);
        const keep = rules.some((r) => r.keep === null) ? null : Math.max(...rules.map((r) => r.keep!));
        const hooked = rules.find((r) => r.pre || r.post);
        const stamp = new Date(now)
          .toISOString()
          .replace(/[-:]/g, '')
          .replace(/\.\d+Z$/, 'Z');
        let name = `auto-${stamp}`;
        try {
          const { group } = this.host.target(s.volume);
          for (let i = 2; this.store.marker(group, name); i++) name = `auto-${stamp}-${i}`;
          const m = await this.mark(
            s.volume,
            name,
            { pre: hooked?.pre ?? undefined, post: hooked?.post ?? undefined, timeout: hooked?.timeout, keep },
            true,
          );
          // Archived in the background: a long archive must not hold up other schedules.
          const archive = this.onScheduledArchive;
          if (archive && rules.some((r) => r.archive)) {
            archive(s.volume, m).catch((err: unknown) =>
              this.host.logger.warn({ volume: s.volume, marker: name, err: (err as Error).message }, 'scheduled archive failed'),
            );
          }
        } catch (err) {
          this.host.logger.warn({ volume: s.volume, err: (err as Error).message }, 'scheduled marker failed');
        }
        // The schedule may have been cleared or changed while the marker was placed
        // (its hooks can take seconds): record the run only on the rules as they are now.
        const cur = this.store.schedule(s.volume);
        if (!cur || JSON.stringify(cur.rules) !== JSON.stringify(s.rules)) continue;
        for (const i of due) cur.last[String(i)] = now;
        await this.store.putSchedule(cur, s.volume);
      }
      if (now - this.lastSweep >= 10_000) {
        this.lastSweep = now;
        const gone = this.store.markers().filter((m) => m.retainUntil !== null && m.retainUntil < now);
        if (gone.length) {
          await this.store.removeMarkers(gone.map((m) => [m.group, m.name] as [string, string]));
          this.host.logger.info({ expired: gone.length }, 'expired markers deleted');
        }
      }
    } catch (err) {
      this.host.logger.error({ err: (err as Error).message }, 'marker schedule tick failed');
    } finally {
      this.ticking = false;
    }
  }

  /** A protected volume was deleted: its schedule and markers go (all the group's if the group is gone). */
  async volumeRemoved(volume: string, group: string, groupGone: boolean): Promise<void> {
    await this.store.putSchedule(null, volume);
    const gone = this.store.markers(group).filter((m) => groupGone || m.volume === volume);
    if (gone.length) await this.store.removeMarkers(gone.map((m) => [m.group, m.name] as [string, string]));
    if (groupGone) this.pinSourcesAdded.delete(group);
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    while (this.ticking) await new Promise((r) => setTimeout(r, 20));
  }
}
