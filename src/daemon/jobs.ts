/**
 * The daemon's job registry: the long operations running now (restores,
 * fades, verifies, exports, diffs, archives, file catalog builds) and the last
 * ones that finished, with their progress and errors, for `GET /v1/jobs`
 * and the web console. It only records: a job is whatever reports to it,
 * and it never cancels or schedules anything.
 *
 * Bounded: finished jobs beyond the most recent KEEP_FINISHED are dropped.
 */

export type JobKind = 'restore' | 'fade' | 'verify' | 'export' | 'diff' | 'archive' | 'catalog';
export type JobState = 'running' | 'done' | 'failed';

export interface JobProgress {
  phase: string;
  done: number;
  total: number;
}

export interface JobInfo {
  id: number;
  kind: JobKind;
  /** The volume (or group) it works on. */
  target: string;
  /** One line on what it does ("to @seq:1234"). */
  detail: string;
  state: JobState;
  /** ISO times. */
  started: string;
  ended: string | null;
  progress: JobProgress | null;
  /** A one-line result when done. */
  summary: string | null;
  error: string | null;
}

export interface JobHandle {
  readonly id: number;
  progress(p: JobProgress): void;
  done(summary?: string): void;
  fail(err: unknown): void;
  /** The job turned out to do nothing (a timer's fade with nothing to fade): forget it. */
  discard(): void;
}

const KEEP_FINISHED = 100;

export class JobRegistry {
  private nextId = 1;
  private readonly jobs = new Map<number, JobInfo>();
  private changes = 0;

  /** Grows whenever a job starts, ends or reports progress (the console polls cheaply on it). */
  get version(): number {
    return this.changes;
  }

  start(kind: JobKind, target: string, detail = ''): JobHandle {
    const job: JobInfo = {
      id: this.nextId++,
      kind,
      target,
      detail,
      state: 'running',
      started: new Date().toISOString(),
      ended: null,
      progress: null,
      summary: null,
      error: null,
    };
    this.jobs.set(job.id, job);
    this.changes++;
    const finish = (state: JobState, summary: string | null, error: string | null): void => {
      if (job.state !== 'running') return;
      job.state = state;
      job.ended = new Date().toISOString();
      job.summary = summary;
      job.error = error;
      this.changes++;
      this.prune();
    };
    return {
      id: job.id,
      progress: (p) => {
        if (job.state !== 'running') return;
        job.progress = { phase: p.phase, done: p.done, total: p.total };
        this.changes++;
      },
      done: (summary) => finish('done', summary ?? null, null),
      fail: (err) => finish('failed', null, err instanceof Error ? err.message : String(err)),
      discard: () => {
        if (this.jobs.delete(job.id)) this.changes++;
      },
    };
  }

  /** Runs `fn` as a job: done with `summary(result)`, failed with its error (rethrown). */
  async track<T>(
    kind: JobKind,
    target: string,
    detail: string,
    fn: (progress: (p: JobProgress) => void) => Promise<T>,
    summary: (r: T) => string = () => '',
  ): Promise<T> {
    const h = this.start(kind, target, detail);
    try {
      const r = await fn((p) => h.progress(p));
      h.done(summary(r));
      return r;
    } catch (err) {
      h.fail(err);
      throw err;
    }
  }

  /** Running jobs first (oldest first), then finished ones (newest first). */
  list(): JobInfo[] {
    const all = [...this.jobs.values()].map((j) => ({ ...j, progress: j.progress && { ...j.progress } }));
    const running = all.filter((j) => j.state === 'running');
    const finished = all.filter((j) => j.state !== 'running').reverse();
    return [...running, ...finished];
  }

  get(id: number): JobInfo | undefined {
    const j = this.jobs.get(id);
    return j && { ...j, progress: j.progress && { ...j.progress } };
  }

  running(): number {
    let n = 0;
    for (const j of this.jobs.values()) if (j.state === 'running') n++;
    return n;
  }

  private prune(): void {
    let finished = 0;
    for (const j of this.jobs.values()) if (j.state !== 'running') finished++;
    for (const [id, j] of this.jobs) {
      if (finished <= KEEP_FINISHED) break;
      if (j.state !== 'running') {
        this.jobs.delete(id);
        finished--;
      }
    }
  }
}

/**
 * `run` reporting to the registry as a job (or `run` itself without one):
 * progress goes both to the registry and to the caller's own reporter.
 */
export function tracked<T>(
  jobs: JobRegistry | undefined,
  kind: JobKind,
  target: string,
  detail: string,
  run: (progress: (p: JobProgress) => void) => Promise<T>,
  summary?: (r: T) => string,
): (progress: (p: JobProgress) => void) => Promise<T> {
  if (!jobs) return run;
  return (progress) =>
    jobs.track(
      kind,
      target,
      detail,
      (jp) =>
        run((p) => {
          jp(p);
          progress(p);
        }),
      summary,
    );
}
