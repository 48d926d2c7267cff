/**
 * Catalog builds run as jobs, one at a time, in the daemon's background.
 * Jobs are LMDB records, so a job queued or running when the daemon dies
 * (kill -9) is run again at the next start: the rows its half-built point
 * wrote are invisible (the point is not complete) and are purged first,
 * then the build starts over. A build nobody waits for is throttled
 * (throttle.ts, `duty`); one someone asked for with priority is not.
 * A marker's job is queued with the marker's seq and resolved only when it
 * runs, after the backup manager has applied that write (no seal per marker).
 */
import { UserError } from '../util/errors';
import type { Logger } from '../util/logger';
import { buildPoint } from './build';
import type { PointAccess, Resolved } from './points';
import type { CatalogStore } from './store';
import { Throttle } from './throttle';
import type { JobRecord, PointRecord } from './types';

export interface JobHost {
  access: PointAccess;
  store: CatalogStore;
  logger: Logger;
  /** Share of wall time a background build may work (0..1]. */
  duty: number;
  /** Marker names at a seq of a volume's group. */
  markersAt(volume: string, seq: number): string[];
}

/**
 * Where builds also show as the daemon's jobs (GET /v1/jobs, the console's
 * Jobs page): the daemon's JobRegistry fits it.
 */
export interface BuildReporter {
  start(
    kind: 'catalog',
    target: string,
    detail: string,
  ): {
    progress(p: { phase: string; done: number; total: number }): void;
    done(summary?: string): void;
    fail(err: unknown): void;
  };
}

const KEEP_FINISHED = 200;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class JobRunner {
  private readonly live = new Map<number, JobRecord>();
  private readonly waiters = new Map<number, Array<(j: JobRecord) => void>>();
  private wake: (() => void) | null = null;
  private loop: Promise<void> | null = null;
  private closed = false;
  current: number | null = null;
  /** Set once the daemon's job registry exists (it is made after the catalog opens). */
  reporter: BuildReporter | null = null;

  constructor(private readonly h: JobHost) {}

  /** Resumes jobs a stop left queued or running, and starts the worker. */
  async start(): Promise<void> {
    for (const j of this.h.store.jobList()) {
      if (j.state === 'running') await this.h.store.putJob({ ...j, state: 'queued' });
    }
    this.loop = this.work();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.loop;
  }

  jobs(volume?: string): JobRecord[] {
    return this.h.store
      .jobList()
      .filter((j) => !volume || j.volume === volume)
      .map((j) => this.live.get(j.id) ?? j);
  }

  job(id: number): JobRecord | undefined {
    const j = this.h.store.job(id);
    return j && (this.live.get(id) ?? j);
  }

  /** A job for the point at `seq` (an existing queued or running one is reused). */
  async enqueue(
    volume: string,
    seq: number,
    asked: string,
    opts: { priority?: boolean; marker?: string | null; full?: boolean } = {},
  ): Promise<JobRecord> {
    const same = this.h.store
      .jobList()
      .find((j) => j.volume === volume && j.seq === seq && (j.state === 'queued' || j.state === 'running'));
    if (same) {
      if (opts.priority && !same.priority) {
        const up = { ...same, priority: true };
        await this.h.store.putJob(up);
        return up;
      }
      return same;
    }
    const job: JobRecord = {
      id: await this.h.store.newJobId(),
      volume,
      seq,
      asked,
      marker: opts.marker ?? null,
      state: 'queued',
      priority: opts.priority === true,
      full: opts.full === true,
      progress: { phase: 'queued', done: 0, total: 0 },
      error: null,
      created: new Date().toISOString(),
      started: null,
      finished: null,
      attempts: 0,
      stats: null,
    };
    await this.h.store.putJob(job);
    this.wake?.();
    return job;
  }

  /** Resolves when the job is done or failed. */
  waitFor(id: number): Promise<JobRecord> {
    const j = this.job(id);
    if (!j) return Promise.reject(new UserError('not-found', `no catalog job ${id}`));
    if (j.state === 'done' || j.state === 'failed') return Promise.resolve(j);
    return new Promise((resolve) => {
      const list = this.waiters.get(id) ?? [];
      list.push(resolve);
      this.waiters.set(id, list);
    });
  }

  private next(): JobRecord | undefined {
    const queued = this.h.store.jobList().filter((j) => j.state === 'queued');
    return queued.find((j) => j.priority) ?? queued[0];
  }

  private async work(): Promise<void> {
    while (!this.closed) {
      const job = this.next();
      if (!job) {
        await new Promise<void>((r) => {
          this.wake = r;
          setTimeout(r, 1000).unref();
        });
        this.wake = null;
        continue;
      }
      await this.run(job);
    }
  }

  private async finish(job: JobRecord, patch: Partial<JobRecord>): Promise<void> {
    const done = { ...job, ...patch, finished: new Date().toISOString() };
    this.live.delete(job.id);
    await this.h.store.putJob(done);
    for (const w of this.waiters.get(job.id) ?? []) w(done);
    this.waiters.delete(job.id);
    const finished = this.h.store.jobList().filter((j) => j.state === 'done' || j.state === 'failed');
    for (const old of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) await this.h.store.removeJob(old.id);
  }

  private async run(queued: JobRecord): Promise<void> {
    const job: JobRecord = { ...queued, state: 'running', started: new Date().toISOString(), attempts: queued.attempts + 1 };
    this.live.set(job.id, job);
    this.current = job.id;
    await this.h.store.putJob(job);
    const shown = this.reporter?.start('catalog', job.volume, `files at seq ${job.seq}${job.full ? ' (full build)' : ''}`);
    const unpins: Array<() => void> = [];
    let vid: number | null = null;
    try {
      const r = await this.resolveWhenApplied(job);
      vid = await this.h.store.vidOf(job.volume, { group: r.ctx.group, volumeId: r.ctx.volumeId });
      const existing = this.h.store.point(vid, job.seq);
      if (existing?.state === 'complete') {
        await this.addMarkers(existing, job);
        await this.finish(job, { state: 'done', progress: { phase: 'done', done: 1, total: 1 }, stats: existing.stats });
        shown?.done('cataloged already');
        return;
      }
      if (existing) {
        // A build a crash interrupted: its rows were never visible; clear them and start over.
        const n = await this.h.store.purgeRowsAt(vid, job.seq);
        await this.h.store.removePointRecord(vid, job.seq);
        this.h.logger.info({ volume: job.volume, seq: job.seq, rows: n }, 'file catalog: restarting an interrupted build');
      }
      unpins.push(this.h.access.pin(r, 'build'));
      const image = await this.h.access.image(r);
      const rec = await buildPoint({
        store: this.h.store,
        point: {
          volume: job.volume,
          vid,
          group: r.ctx.group,
          volumeId: r.ctx.volumeId,
          seq: r.point.seq,
          time: r.point.time,
          txn: r.point.txn,
          markers: [...new Set([...this.h.markersAt(job.volume, job.seq), ...(job.marker ? [job.marker] : [])])],
        },
        image,
        historyBlockSize: r.ctx.history.blockSize,
        other: (seq) => this.h.access.other(job.volume, r, seq, unpins),
        throttle: new Throttle(job.priority ? 1 : this.h.duty),
        full: job.full === true,
        progress: (phase, done, total) => {
          job.progress = { phase, done, total };
          shown?.progress(job.progress);
        },
      });
      this.h.logger.info(
        { volume: job.volume, seq: job.seq, mode: rec.stats.mode, changedPaths: rec.stats.changedPaths, ms: rec.stats.durationMs },
        'file catalog built',
      );
      await this.finish(job, { state: 'done', progress: { phase: 'done', done: 1, total: 1 }, stats: rec.stats });
      shown?.done(`${rec.stats.mode}: ${rec.stats.changedPaths} paths changed`);
    } catch (err) {
      shown?.fail(err);
      const message = (err as Error).message;
      this.h.logger.warn({ volume: job.volume, seq: job.seq, err: message }, 'file catalog build failed');
      if (vid !== null && this.h.store.point(vid, job.seq)?.state === 'building') {
        await this.h.store.purgeRowsAt(vid, job.seq).catch(() => 0);
        await this.h.store.removePointRecord(vid, job.seq).catch(() => undefined);
      }
      await this.finish(job, { state: 'failed', error: message });
    } finally {
      for (const u of unpins) u();
      this.current = null;
    }
  }

  /** A marker's point may not be applied yet: give the manager a moment before resolving (which would seal). */
  private async resolveWhenApplied(job: JobRecord): Promise<Resolved> {
    const at = `@seq:${job.seq}`;
    for (let i = 0; i < 40 && !job.priority; i++) {
      try {
        const info = await this.h.access.resolveInfo(job.volume, at);
        if (!info.pending) break;
      } catch {
        break; // resolve below reports it
      }
      await sleep(250);
    }
    return this.h.access.resolve(job.volume, at);
  }

  private async addMarkers(p: PointRecord, job: JobRecord): Promise<void> {
    const names = new Set([...p.markers, ...this.h.markersAt(job.volume, job.seq), ...(job.marker ? [job.marker] : [])]);
    if (names.size !== p.markers.length) await this.h.store.putPoint({ ...p, markers: [...names] });
  }
}
