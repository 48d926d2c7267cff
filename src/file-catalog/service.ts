/**
 * FileCatalog: the catalog of files inside protected volumes' points
 * (MISSION §8, seed 004), as one service the daemon composes:
 *
 *   builds     jobs.ts: markers are cataloged as they are placed; any point
 *              on request; incremental from the point before when it can
 *   queries    list and search at a point, versions of a path, the files
 *              changed between two points (from the block diff)
 *   restore    one file's bytes at a point, reading only its blocks
 *   blobs      one point's catalog exported and imported (archives)
 *
 * Environment: REWIND_CATALOG_DUTY (share of wall time a background build
 * may work, default 0.5), REWIND_CATALOG_MARKERS=0 (do not catalog markers
 * as they are placed).
 */
import * as path from 'node:path';
import { escapeName, unescapeName } from '../fs';
import type { MarkerRecord } from '../timetravel/markers';
import type { PointInfo, TimeTravel } from '../timetravel/service';
import { UserError } from '../util/errors';
import type { Logger } from '../util/logger';
import { exportBlob, importBlob, parseBlob } from './blob';
import { diffPoint } from './build';
import { entryAt } from './reads';
import { JobRunner } from './jobs';
import { PointAccess } from './points';
import { fileInfo, globRegExp, listPartition, normalizePath, versionsOf, type FileInfo, type Version } from './query';
import { openFile, type OpenedFile } from './restore';
import { CatalogStore } from './store';
import { Throttle } from './throttle';
import type { FsContext, JobRecord, PointRecord } from './types';

export type { FileInfo, Version } from './query';
export type { FsContext, JobRecord, PointRecord, BuildStats } from './types';

export interface FileCatalogOptions {
  dataDir: string;
  tt: TimeTravel;
  logger: Logger;
  /** The protected volumes of a consistency group (a group marker catalogs each). */
  volumesOfGroup: (group: string) => string[];
  env?: NodeJS.ProcessEnv;
}

export interface ListParams {
  at?: unknown;
  path?: string;
  pathB64?: string;
  name?: string;
  newer?: string;
  recursive?: boolean;
  partition?: number;
  limit?: number;
  cursor?: string;
}

export interface Change {
  partition: number;
  path: string;
  pathRaw: string;
  type: string;
  /** added, removed, modified (content), metadata (owner, mode, times only). */
  change: 'added' | 'removed' | 'modified' | 'metadata';
  before: FileInfo | null;
  after: FileInfo | null;
}

export class FileCatalog {
  readonly store: CatalogStore;
  readonly access: PointAccess;
  readonly jobs: JobRunner;
  readonly counters = { restoredBytes: 0, restoreImageBytes: 0, restores: 0 };
  private readonly autoMarkers: boolean;

  private constructor(private readonly o: FileCatalogOptions) {
    const env = o.env ?? process.env;
    this.store = CatalogStore.open(path.join(o.dataDir, 'file-catalog'));
    this.access = new PointAccess(o.tt);
    const duty = Number(env.REWIND_CATALOG_DUTY ?? 0.5);
    this.autoMarkers = env.REWIND_CATALOG_MARKERS !== '0';
    this.jobs = new JobRunner({
      access: this.access,
      store: this.store,
      logger: o.logger,
      duty: duty > 0 && duty <= 1 ? duty : 0.5,
      markersAt: (volume, seq) => this.markersAt(volume, seq),
    });
  }

  static async open(o: FileCatalogOptions): Promise<FileCatalog> {
    const c = new FileCatalog(o);
    await c.jobs.start();
    return c;
  }

  async close(): Promise<void> {
    await this.jobs.close();
    await this.store.close();
  }

  private markersAt(volume: string, seq: number): string[] {
    try {
      return this.o.tt.markers
        .markers(volume)
        .filter((m) => m.seq === seq)
        .map((m) => m.name);
    } catch {
      return [];
    }
  }

  /** The marker hook (marking.ts): queue a catalog build of the marker's point for each volume it covers. */
  onMarkerPlaced(m: MarkerRecord): void {
    if (!this.autoMarkers) return;
    const volumes = m.volume ? [m.volume] : this.o.volumesOfGroup(m.group);
    for (const v of volumes) {
      this.jobs.enqueue(v, m.seq, m.name, { marker: m.name }).catch((err: unknown) => {
        this.o.logger.warn({ volume: v, marker: m.name, err: (err as Error).message }, 'file catalog: cannot queue a marker');
      });
    }
  }

  async volumeRemoved(volume: string): Promise<void> {
    for (const j of this.jobs.jobs(volume)) if (j.state === 'queued') await this.store.removeJob(j.id);
    await this.store.dropVolume(volume);
  }

  // ---- builds ---------------------------------------------------------------

  /** POST catalog: a job for the point (null with the point when it is cataloged already). */
  async request(
    volume: string,
    at: unknown,
    opts: { priority?: boolean; nearest?: unknown; full?: boolean } = {},
  ): Promise<{ job: JobRecord | null; point: PointRecord | null; info: PointInfo }> {
    const r = await this.access.resolve(volume, at ?? 'latest', opts.nearest);
    const vid = this.store.knownVid(volume);
    const done = vid === undefined ? undefined : this.store.point(vid, r.point.seq);
    if (done?.state === 'complete') return { job: null, point: done, info: r.info };
    const job = await this.jobs.enqueue(volume, r.point.seq, String(at ?? 'latest'), {
      priority: opts.priority === true,
      full: opts.full === true,
    });
    return { job, point: null, info: r.info };
  }

  /** GET catalog: the cataloged points of a volume and its jobs. */
  overview(volume: string): { volume: string; points: PointRecord[]; jobs: JobRecord[] } {
    const vid = this.store.knownVid(volume);
    return { volume, points: vid === undefined ? [] : this.store.pointsOf(vid), jobs: this.jobs.jobs(volume) };
  }

  // ---- queries --------------------------------------------------------------

  /** Has anything of this volume been cataloged (or imported)? */
  knows(volume: string): boolean {
    return this.store.knownVid(volume) !== undefined;
  }

  private vid(volume: string): number {
    const vid = this.store.knownVid(volume);
    if (vid === undefined)
      throw new UserError('conflict', `no point of "${volume}" is cataloged yet: catalog one (rewind catalog ${volume} --at POINT)`);
    return vid;
  }

  /** The complete point a query names (default: the newest); refused when not cataloged. */
  async pointFor(volume: string, at: unknown): Promise<PointRecord> {
    const vid = this.vid(volume);
    if (at === undefined || at === null || at === '') {
      const c = this.store.complete(vid);
      if (!c.length)
        throw new UserError('conflict', `no point of "${volume}" is cataloged yet: catalog one (rewind catalog ${volume} --at POINT)`);
      return this.store.point(vid, c[c.length - 1]!)!;
    }
    let info: PointInfo;
    try {
      info = await this.access.resolveInfo(volume, at);
    } catch (err) {
      // An archived point (its blob imported, the volume or its history gone): the catalog knows it by seq and markers.
      const own = this.ownPoint(vid, at);
      if (own) return own;
      throw err;
    }
    const p = this.store.point(vid, info.seq);
    if (p?.state !== 'complete') {
      throw new UserError(
        'conflict',
        `@seq:${info.seq} (${info.time}) is not cataloged: catalog it first (rewind catalog ${volume} --at @seq:${info.seq}, or POST /v1/volumes/${volume}/catalog)`,
      );
    }
    return p;
  }

  /** A complete point named by @seq:N or by one of its markers, from the catalog's own records. */
  private ownPoint(vid: number, at: unknown): PointRecord | undefined {
    if (typeof at !== 'string') return undefined;
    const m = /^@seq:(\d+)$/.exec(at);
    const found = m ? this.store.point(vid, Number(m[1])) : this.store.pointsOf(vid).find((p) => p.markers.includes(at));
    return found?.state === 'complete' ? found : undefined;
  }

  private pickFilesystem(p: PointRecord, partition?: number): FsContext {
    const ok = p.filesystems.filter((f) => !f.error);
    if (partition !== undefined) {
      const f = ok.find((x) => x.partition === partition);
      if (!f) throw new UserError('not-found', `partition ${partition} has no cataloged filesystem at @seq:${p.seq}`);
      return f;
    }
    if (ok.length === 1) return ok[0]!;
    const root = ok.find((f) => f.mountPoint === '/');
    if (root) return root;
    throw new UserError(
      'invalid',
      ok.length === 0
        ? `@seq:${p.seq} has no readable filesystem${p.errors.length ? `: ${p.errors[0]}` : ''}`
        : `@seq:${p.seq} has ${ok.length} filesystems (partitions ${ok.map((f) => f.partition).join(', ')}): name one with partition`,
    );
  }

  pathOf(q: { path?: string; pathB64?: string }): Buffer {
    if (q.pathB64) return normalizePath(Buffer.from(q.pathB64, 'base64'));
    return normalizePath(unescapeName(q.path ?? '/'));
  }

  async list(
    volume: string,
    q: ListParams,
  ): Promise<{ point: PointRecord; entries: FileInfo[]; next: string | null; filesystems: FsContext[] }> {
    const p = await this.pointFor(volume, q.at);
    const target = this.pathOf(q);
    const limit = Math.min(Math.max(1, q.limit ?? 100_000), 1_000_000);
    let newer: number | undefined;
    if (q.newer !== undefined) {
      newer = /^\d+(\.\d+)?$/.test(q.newer) ? Number(q.newer) * 1000 : Date.parse(q.newer);
      if (!Number.isFinite(newer))
        throw new UserError('invalid', `newer: cannot parse time "${q.newer}" (ISO time or seconds since the epoch)`);
    }
    const name = q.name ? globRegExp(q.name) : undefined;
    const search = q.recursive === true || name !== undefined || newer !== undefined;
    const cursor = q.cursor ? (JSON.parse(Buffer.from(q.cursor, 'base64url').toString()) as { p: number; k: string }) : null;
    const filesystems = p.filesystems.filter((f) => !f.error && (q.partition === undefined || f.partition === q.partition));
    if (q.partition !== undefined && !filesystems.length)
      throw new UserError('not-found', `partition ${q.partition} has no cataloged filesystem at @seq:${p.seq}`);
    const entries: FileInfo[] = [];
    let found = false;
    let next: string | null = null;
    for (const f of filesystems) {
      if (cursor && f.partition < cursor.p) continue;
      const after = cursor && f.partition === cursor.p ? Buffer.from(cursor.k, 'base64') : undefined;
      const r = listPartition(
        this.store,
        p.vid,
        p.seq,
        f.partition,
        { path: target, name, newer, recursive: search, limit, after },
        entries,
      );
      found ||= r.found;
      if (r.last) {
        next = Buffer.from(JSON.stringify({ p: f.partition, k: r.last.toString('base64') })).toString('base64url');
        break;
      }
    }
    if (!found && target.length) throw new UserError('not-found', `no ${q.path ?? 'such path'} at @seq:${p.seq}`);
    return { point: p, entries, next, filesystems: p.filesystems };
  }

  /** Every cataloged point where the path's content changed (and where it vanished). */
  versions(
    volume: string,
    q: { path?: string; pathB64?: string; partition?: number },
  ): { path: string; partition: number; versions: Version[] } {
    const vid = this.vid(volume);
    const points = this.store.records(vid);
    const complete = this.store.complete(vid);
    if (!complete.length) throw new UserError('conflict', `no point of "${volume}" is cataloged yet`);
    const f = this.pickFilesystem(points.get(complete[complete.length - 1]!)!, q.partition);
    const p = this.pathOf(q);
    return { path: p.length ? escapeName(p) : '/', partition: f.partition, versions: versionsOf(this.store, vid, f.partition, p, points) };
  }

  /** The files that differ between two points: the block diff between them, read as an incremental build would. */
  async changedFiles(
    volume: string,
    from: unknown,
    to: unknown,
    partition?: number,
  ): Promise<{ from: PointInfo; to: PointInfo; changes: Change[] }> {
    const ra = await this.access.resolve(volume, from);
    const rb = await this.access.resolve(volume, to);
    if (ra.point.seq >= rb.point.seq)
      throw new UserError('invalid', `--from (@seq:${ra.point.seq}) must come before --to (@seq:${rb.point.seq})`);
    const vid = this.vid(volume);
    if (this.store.point(vid, ra.point.seq)?.state !== 'complete')
      throw new UserError(
        'conflict',
        `@seq:${ra.point.seq} (--from) is not cataloged: catalog it first (rewind catalog ${volume} --at @seq:${ra.point.seq})`,
      );
    const unpins = [this.access.pin(rb, 'changed-files')];
    try {
      const { changes } = await diffPoint(
        {
          store: this.store,
          point: {
            volume,
            vid,
            group: rb.ctx.group,
            volumeId: rb.ctx.volumeId,
            seq: rb.point.seq,
            time: rb.point.time,
            txn: rb.point.txn,
            markers: [],
          },
          image: await this.access.image(rb),
          historyBlockSize: rb.ctx.history.blockSize,
          other: (seq) => this.access.other(volume, rb, seq, unpins),
          throttle: new Throttle(1),
        },
        ra.point.seq,
      );
      const out: Change[] = [];
      for (const c of changes) {
        if (c.path.length === 0 || (partition !== undefined && c.partition !== partition)) continue;
        const b = c.before && fileInfo(c.partition, c.path, c.before);
        const a = c.after && fileInfo(c.partition, c.path, c.after);
        const kind = !c.before ? 'added' : !c.after ? 'removed' : c.before.stamp !== c.after.stamp ? 'modified' : 'metadata';
        out.push({
          partition: c.partition,
          path: (a ?? b)!.path,
          pathRaw: (a ?? b)!.pathRaw,
          type: (a ?? b)!.type,
          change: kind,
          before: b,
          after: a,
        });
      }
      out.sort((x, y) => x.partition - y.partition || Buffer.compare(Buffer.from(x.pathRaw, 'base64'), Buffer.from(y.pathRaw, 'base64')));
      return { from: ra.info, to: rb.info, changes: out };
    } finally {
      for (const u of unpins) u();
    }
  }

  /**
   * One file at a point, for streaming: through the catalog when the point is
   * cataloged (partition and inode known), else through the directories.
   * `release` unpins the point; call it when the stream ends.
   */
  async openContent(
    volume: string,
    q: { at?: unknown; path?: string; pathB64?: string; partition?: number },
  ): Promise<{ file: OpenedFile; info: PointInfo; release: () => void }> {
    const r = await this.access.resolve(volume, q.at ?? 'latest');
    const target = this.pathOf(q);
    if (!target.length) throw new UserError('invalid', 'path names a file, not "/"');
    const release = this.access.pin(r, 'restore');
    try {
      const vid = this.store.knownVid(volume);
      const p = vid === undefined ? undefined : this.store.point(vid, r.point.seq);
      const image = await this.access.image(r);
      let file: OpenedFile;
      if (p?.state === 'complete') {
        const ctx = this.pickFilesystem(p, q.partition);
        const e = entryAt({ store: this.store, vid: vid!, part: ctx.partition, at: p.seq }, target);
        if (!e) throw new UserError('not-found', `no ${q.path ?? 'such file'} in partition ${ctx.partition} at @seq:${p.seq}`);
        file = await openFile(image, { ctx }, { path: target, ino: e.ino });
      } else {
        file = await openFile(image, { partition: q.partition }, { path: target });
      }
      this.counters.restores++;
      return { file, info: r.info, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  // ---- blobs ------------------------------------------------------------------

  /** One cataloged point as a self-contained blob (blob.ts). */
  async exportBlob(volume: string, at: unknown): Promise<{ blob: Buffer; point: PointRecord }> {
    const p = await this.pointFor(volume, at);
    return { blob: exportBlob(this.store, p), point: p };
  }

  /** Adds a blob's point to the catalog (of its own volume, or `volume`). */
  async importBlob(blob: Buffer, volume?: string): Promise<PointRecord> {
    let parsed;
    try {
      parsed = parseBlob(blob);
    } catch (err) {
      throw new UserError('invalid', (err as Error).message);
    }
    const name = volume ?? parsed.point.volume;
    const vid = this.store.knownVid(name) ?? (await this.store.vidOf(name, { group: parsed.point.group, volumeId: parsed.point.volumeId }));
    return importBlob(this.store, parsed, vid, name);
  }
}
