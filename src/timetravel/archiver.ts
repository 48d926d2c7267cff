/**
 * The daemon's side of the archive pool (issue 14): `rewind archive
 * VOL|GROUP --at POINT`, list, show, forget, gc, verify, and archived
 * points as bases for time travel (ArchiveImages).
 *
 * An archive reads the point through a PointImage (the point is pinned
 * meanwhile). Temporal dedup: the newest archived point of the same group
 * at or before the seq is the predecessor, and only the blocks the journal
 * says changed since it (the block runs behind `rewind diff`) are read. If
 * retention has faded the history back to the predecessor, every block is
 * read (and still compared with the predecessor's leaves before storing).
 * A group is archived at one seq for all its volumes: one point, one
 * manifest.
 */
import * as fs from 'node:fs';
import {
  ArchiveError,
  ArchivePool,
  type ForgetPlan,
  type GcReport,
  type PointManifest,
  type PoolStats,
  type QuiesceInfo,
  type VerifyReport,
  type VolumeSource,
} from '../archive';
import { UserError } from '../util/errors';
import { ArchiveImage, archivePointName, type ArchiveImages, type ArchiveRef } from './archive-image';
import { changedRuns, runsToExtents, type Extent } from './diff';
import type { MarkerRecord } from './markers';
import { historyBounds, parsePoint, resolvePoint, type ResolvedPoint } from './point';
import { PointImage } from './point-image';
import type { HistoryPort } from './ports';
import type { Progress, TimeTravel, TimeTravelHost } from './service';

export interface ArchiverOptions {
  /** Local state of the pool (its packs live in DIR/store). */
  dir: string;
  /** Key file of an encrypted pool (a new pool is then created encrypted). */
  keyFile?: string;
  /** Leaf size of a new pool (default the library's, 64 KiB). */
  leafSize?: number;
  host: Pick<TimeTravelHost, 'context' | 'target' | 'logger'>;
  /** The volumes of a consistency group, by name. */
  groupVolumes(group: string): string[];
}

export interface ArchiveResult {
  point: PointManifest;
  /** The point it was built from (temporal dedup), or null for a full read. */
  predecessor: string | null;
  /** Bytes the journal reported changed since the predecessor (null: everything was read). */
  changedBytes: number | null;
  durationMs: number;
}

export interface PointSummary {
  name: string;
  group: string | null;
  volumes: Array<{ volume: string; size: number }>;
  seq: number | null;
  time: string | null;
  marker: string | null;
  created: string;
  predecessor: string | null;
  /** Chunk bytes this point added to the pool when it was archived. */
  bytesStored: number;
  usedBy: string[];
}

/** ArchiveError codes as the control API's error kinds (anything else stays a 500 with its message). */
export function asUserError(err: unknown): unknown {
  if (!(err instanceof ArchiveError)) return err;
  const kind = ({ ENOENT: 'not-found', EEXIST: 'conflict', EBUSY: 'conflict', EINVAL: 'invalid', EKEYREJECTED: 'invalid' } as const)[
    err.code as 'ENOENT'
  ];
  if (!kind) return err;
  const u = new UserError(kind, err.message);
  u.cause = err;
  return u;
}

async function mapped<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw asUserError(err);
  }
}

function mappedSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw asUserError(err);
  }
}

export class Archiver implements ArchiveImages {
  private pool: ArchivePool | null = null;
  /** Why the existing pool did not open at start, if it did not. */
  private openError: string | null = null;
  private opening: Promise<ArchivePool> | null = null;

  private constructor(
    private readonly tt: TimeTravel,
    private readonly opts: ArchiverOptions,
  ) {}

  /** Attaches to time travel; an existing pool is opened now (recovery runs at open), a new one on the first archive. */
  static async open(tt: TimeTravel, opts: ArchiverOptions): Promise<Archiver> {
    const a = new Archiver(tt, opts);
    if (fs.existsSync(opts.dir)) {
      // A pool that cannot open (a wrong or missing key, damage) must not keep the volumes from being served.
      await a.ensurePool().catch((err: unknown) => {
        a.openError = (err as Error).message;
        opts.host.logger.error(
          { dir: opts.dir, err: a.openError },
          'the archive pool could not be opened; archive commands will fail until it can',
        );
      });
    }
    tt.views.archives = a;
    tt.markers.onScheduledArchive = async (volume: string, m: MarkerRecord) => {
      const r = await a.archive(volume, { at: m.name });
      opts.host.logger.info({ volume, marker: m.name, point: r.point.name }, 'scheduled archive done');
    };
    return a;
  }

  private async ensurePool(): Promise<ArchivePool> {
    if (this.pool) return this.pool;
    this.opening ??= mapped(() =>
      ArchivePool.open(this.opts.dir, {
        create: { encrypt: !!this.opts.keyFile, ...(this.opts.leafSize ? { leafSize: this.opts.leafSize } : {}) },
        ...(this.opts.keyFile ? { keyFile: this.opts.keyFile } : {}),
      }),
    ).then(
      (p) => {
        this.pool = p;
        const r = p.recovery as unknown as Record<string, unknown>;
        if (Object.values(r).some((v) => (Array.isArray(v) ? v.length > 0 : typeof v === 'number' ? v > 0 : false)))
          this.opts.host.logger.warn({ recovery: r }, 'archive pool: repaired at open');
        return p;
      },
      (err: unknown) => {
        this.opening = null;
        throw err;
      },
    );
    return this.opening;
  }

  private requirePool(): ArchivePool {
    if (!this.pool && this.openError)
      throw new UserError('conflict', `the archive pool at ${this.opts.dir} could not be opened: ${this.openError}`);
    if (!this.pool) throw new UserError('not-found', 'there is no archive pool yet: the first `rewind archive` creates it');
    return this.pool;
  }

  // ---- archiving -------------------------------------------------------------

  /** `rewind archive VOL|GROUP --at POINT [--name N]`. */
  async archive(
    target: string,
    body: { at?: unknown; name?: unknown },
    progress: (p: Progress) => void = () => undefined,
  ): Promise<ArchiveResult> {
    const t0 = Date.now();
    if (body.at === undefined || body.at === null || body.at === '') throw new UserError('invalid', '--at POINT is required');
    if (archivePointName(body.at) !== null) throw new UserError('invalid', `${String(body.at)} is already an archived point`);
    if (body.name !== undefined && body.name !== null && typeof body.name !== 'string')
      throw new UserError('invalid', 'name must be a string');
    const { group, volume } = this.opts.host.target(target);
    const vols = volume ? [volume] : this.opts.groupVolumes(group);
    if (!vols.length) throw new UserError('invalid', `consistency group ${group} has no volumes`);
    const pool = await this.ensurePool();
    const { point, ctx } = await this.tt.points.resolve(vols[0]!, body.at);
    const marker = this.markerOf(vols[0]!, body.at);
    const holder = `archive:${process.hrtime.bigint()}`;
    ctx.history.pins.pin(holder, point.overlay ?? point.k, point.overlay !== null);
    try {
      const pred = this.predecessor(pool, group, vols, point.seq);
      const sources: VolumeSource[] = [];
      let changedBytes: number | null = pred ? 0 : null;
      for (const v of vols) {
        const c = this.opts.host.context(v);
        const img = await PointImage.open(ctx.history, c.volumeId, c.size, point);
        const src: VolumeSource = { volume: v, size: c.size, read: (o, l) => img.read(o, l) };
        const predHas = pred?.volumes.some((x) => x.volume === v && x.size === c.size);
        const changed = predHas ? await changedSince(ctx.history, c.volumeId, c.size, pred!.seq!, point) : null;
        if (changed) src.changed = changed;
        changedBytes = changed && changedBytes !== null ? changedBytes + changed.reduce((a, e) => a + e.length, 0) : null;
        sources.push(src);
      }
      const total = sources.reduce((a, s) => a + (s.changed ? [...s.changed].reduce((x, e) => x + e.length, 0) : s.size), 0);
      const done = new Map<string, number>();
      const name = typeof body.name === 'string' && body.name ? body.name : this.defaultName(pool, target, point.seq);
      const manifest = await mapped(() =>
        pool.archive({
          name,
          group,
          seq: point.seq,
          time: point.time,
          marker: marker?.name ?? null,
          quiesce: marker ? quiesceOf(marker) : null,
          predecessor: pred?.name ?? null,
          volumes: sources,
          meta: { target, at: String(body.at) },
          onProgress: (p) => {
            done.set(p.volume, p.bytesRead);
            progress({ phase: `archive ${p.volume}`, done: [...done.values()].reduce((a, b) => a + b, 0), total });
          },
        }),
      );
      progress({ phase: 'archived', done: total, total });
      this.opts.host.logger.info({ point: name, target, seq: point.seq, predecessor: pred?.name ?? null, changedBytes }, 'archived');
      return { point: manifest, predecessor: pred?.name ?? null, changedBytes, durationMs: Date.now() - t0 };
    } finally {
      ctx.history.pins.unpin(holder);
    }
  }

  private markerOf(volume: string, at: unknown): MarkerRecord | null {
    try {
      const spec = parsePoint(at);
      if (spec.kind !== 'marker') return null;
      return this.tt.markers.markers(volume, { name: spec.name }).find((m) => m.name === spec.name) ?? null;
    } catch {
      return null;
    }
  }

  /** The newest archived point of the group at or before `seq` that holds one of the volumes. */
  private predecessor(pool: ArchivePool, group: string, vols: string[], seq: number): PointManifest | null {
    let best: PointManifest | null = null;
    for (const p of pool.list()) {
      if (p.group !== group || p.seq === null || p.seq > seq) continue;
      if (!p.volumes.some((v) => vols.includes(v.volume))) continue;
      if (!best || p.seq > best.seq! || (p.seq === best.seq && p.created > best.created)) best = p;
    }
    return best;
  }

  private defaultName(pool: ArchivePool, target: string, seq: number): string {
    const stem = `${target}.seq-${seq}`;
    const taken = new Set(pool.list().map((p) => p.name));
    let name = stem;
    for (let i = 2; taken.has(name); i++) name = `${stem}-${i}`;
    return name;
  }

  // ---- the pool ----------------------------------------------------------------

  list(): PointSummary[] {
    if (!this.pool) return [];
    const used = this.tt.views.archivesInUse();
    return this.pool.list().map((p) => summary(p, used.get(p.name) ?? []));
  }

  show(name: string): PointManifest & { usedBy: string[] } {
    const p = mappedSync(() => this.requirePool().point(name));
    return { ...p, usedBy: this.tt.views.archivesInUse().get(name) ?? [] };
  }

  stats(): PoolStats | null {
    return this.pool?.stats() ?? null;
  }

  /** Forgets points by name or by policy; points a snapshot or clone reads are refused (by name) or kept (by policy). */
  async forget(body: {
    names?: unknown;
    policy?: unknown;
    dryRun?: unknown;
  }): Promise<{ forgotten: string[]; kept: Array<{ name: string; reason: string }>; inUse: string[]; dryRun: boolean }> {
    const pool = this.requirePool();
    const dryRun = body.dryRun === true;
    const used = this.tt.views.archivesInUse();
    if (body.names !== undefined) {
      if (body.policy !== undefined) throw new UserError('invalid', 'give names or a policy, not both');
      if (!Array.isArray(body.names) || !body.names.length || body.names.some((n) => typeof n !== 'string'))
        throw new UserError('invalid', 'names must be a non-empty list of point names');
      const names = body.names as string[];
      for (const n of names) mappedSync(() => pool.point(n));
      const busy = names.filter((n) => used.has(n));
      if (busy.length)
        throw new UserError(
          'conflict',
          `archived point(s) in use: ${busy.map((n) => `${n} (by ${used.get(n)!.join(', ')})`).join('; ')}; delete those snapshots or clones first`,
        );
      if (!dryRun) await mapped(() => pool.forget(names));
      const gone = new Set(names);
      return {
        forgotten: names,
        kept: pool.list().flatMap((p) => (gone.has(p.name) ? [] : [{ name: p.name, reason: 'not named' }])),
        inUse: [],
        dryRun,
      };
    }
    if (typeof body.policy !== 'string' || !body.policy.trim())
      throw new UserError('invalid', 'give point names or a policy such as "daily:30d,weekly:26w,monthly:forever"');
    const plan: ForgetPlan = await mapped(() => pool.forgetByPolicy(body.policy as string, { dryRun: true }));
    const inUse = plan.forget.filter((n) => used.has(n));
    const forget = plan.forget.filter((n) => !used.has(n));
    if (!dryRun && forget.length) await mapped(() => pool.forget(forget));
    return {
      forgotten: forget,
      kept: [...plan.keep, ...inUse.map((name) => ({ name, reason: `in use by ${used.get(name)!.join(', ')}` }))],
      inUse,
      dryRun,
    };
  }

  gc(progress: (p: Progress) => void = () => undefined): Promise<GcReport> {
    const pool = this.requirePool();
    return mapped(() => pool.gc({ onProgress: (p) => progress(p) }));
  }

  verify(body: { points?: unknown }, progress: (p: Progress) => void = () => undefined): Promise<VerifyReport> {
    const pool = this.requirePool();
    if (body.points !== undefined && (!Array.isArray(body.points) || body.points.some((n) => typeof n !== 'string')))
      throw new UserError('invalid', 'points must be a list of point names');
    return mapped(() => pool.verify({ ...(body.points ? { points: body.points as string[] } : {}), onProgress: (p) => progress(p) }));
  }

  // ---- ArchiveImages -----------------------------------------------------------

  ref(point: string, volume: string): ArchiveRef {
    const p = mappedSync(() => this.requirePool().point(point));
    const v = p.volumes.find((x) => x.volume === volume);
    if (!v)
      throw new UserError(
        'not-found',
        `archived point ${point} holds no volume "${volume}" (it holds ${p.volumes.map((x) => x.volume).join(', ')})`,
      );
    return { point, volume, size: v.size, seq: p.seq, time: p.time ?? p.created };
  }

  open(point: string, volume: string, blockSize: number): ArchiveImage {
    return new ArchiveImage(
      mappedSync(() => this.requirePool().openVolume(point, volume)),
      blockSize,
    );
  }

  diff(a: string, b: string, volume: string): Promise<Extent[]> {
    const pool = this.requirePool();
    return mapped(() => pool.diff({ point: a, volume }, { point: b, volume }));
  }

  async close(): Promise<void> {
    const p = this.pool ?? (await this.opening?.catch(() => null));
    this.pool = null;
    await p?.close();
  }
}

function summary(p: PointManifest, usedBy: string[]): PointSummary {
  return {
    name: p.name,
    group: p.group,
    volumes: p.volumes.map((v) => ({ volume: v.volume, size: v.size })),
    seq: p.seq,
    time: p.time === null ? null : new Date(p.time).toISOString(),
    marker: p.marker,
    created: new Date(p.created).toISOString(),
    predecessor: p.predecessor,
    bytesStored: p.volumes.reduce((a, v) => a + v.stats.bytesStored, 0),
    usedBy,
  };
}

function quiesceOf(m: MarkerRecord): QuiesceInfo {
  const hooks = m.hooks.pre !== null;
  return { kind: hooks ? 'application' : 'crash', ok: m.reason === null, ...(m.reason ? { detail: m.reason } : {}) };
}

/**
 * Byte extents of `volumeId` that may have changed between seq `from` and
 * point `b`, from the journal's block runs; null when retention has faded
 * the history back past `from` (then everything must be read).
 */
export async function changedSince(
  m: HistoryPort,
  volumeId: number,
  size: number,
  from: number,
  b: ResolvedPoint,
): Promise<Extent[] | null> {
  if (from === b.seq) return [];
  const bounds = historyBounds(m);
  if (!bounds || bounds.first.firstSeq > from + 1) return null;
  try {
    const a = await resolvePoint(m, { kind: 'seq', seq: from, text: `@seq:${from}` });
    if (a.seq === from) return runsToExtents(await changedRuns(m, volumeId, a, b), m.blockSize, size);
  } catch {
    // inside merged history: the whole transactions around it, below
  }
  // Over-reporting is fine: every transaction that ends after `from` and starts by b.
  const runs = m
    .transactions()
    .filter((t) => t.records > 0 && t.lastSeq > from && t.firstSeq <= b.seq)
    .flatMap((t) => m.transactionRuns(t.n, volumeId));
  runs.sort((x, y) => x.start - y.start);
  return runsToExtents(runs, m.blockSize, size);
}
