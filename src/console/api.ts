/**
 * The shapes the web console's own routes answer with (src/control/console-routes.ts):
 *
 *   GET /v1/volumes/NAME/timeline?from=T&to=T&buckets=N   -> Timeline
 *   GET /v1/console/overview                              -> Overview (overview.ts)
 *   GET /v1/console/events                                -> text/event-stream of LiveState (events.ts)
 *   GET /v1/jobs, GET /v1/jobs/ID                         -> {jobs: JobInfo[]}, JobInfo (daemon/jobs.ts)
 *
 * Times are ms since the epoch. Every list is bounded: rate arrays hold
 * `buckets` values (at most MAX_BUCKETS), items are listed only when few
 * (MAX_ITEMS), otherwise counted per bucket.
 */

export const MAX_BUCKETS = 2000;
export const DEFAULT_BUCKETS = 400;
/** Transactions and markers are listed one by one up to this many in the window, else counted per bucket. */
export const MAX_ITEMS = 400;
/** Single writes are listed when the window holds at most this many transactions and MAX_WRITES writes. */
export const MAX_WRITE_TXNS = 8;
export const MAX_WRITES = 2000;

export interface TxnItem {
  n: number;
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  records: number;
  bytes: number;
  errors: number;
  /** Retention merged T_mergedFrom..T_n into it: only its end is a point. */
  mergedFrom: number | null;
  /** Part of super transaction `id` (a resync): no point inside it. */
  superId: number | null;
}

export interface WriteItem {
  seq: number;
  time: number;
  kind: 'write' | 'trim' | 'zero' | 'error' | 'resync' | 'other';
  offset: number;
  length: number;
  volume: number;
}

export interface MarkerItem {
  name: string;
  seq: number;
  time: number;
  kind: string;
  auto: boolean;
  /** The volume it was placed on, or null for the whole group. */
  volume: string | null;
  reason: string | null;
}

export interface Span {
  from: number;
  to: number;
}

export interface Timeline {
  volume: string;
  group: string;
  /** Every volume of the group: rates and transactions are the group's (one sequence of writes). */
  groupVolumes: string[];
  now: number;
  /** The time range of retained history (null: no writes yet). */
  extent: { first: number; last: number } | null;
  applied: { container: number; seq: number; time: number };
  from: number;
  to: number;
  bucketMs: number;
  /** Per bucket (starting at t[i]): bytes and writes applied, transactions overlapping it. */
  rate: { t: number[]; bytes: number[]; writes: number[]; transactions: number[] };
  transactions: { total: number; items: TxnItem[] | null };
  /** Single writes, when the window is narrow enough (else null). */
  writes: WriteItem[] | null;
  /** Faded history (merged by retention): only the ends of its transactions are points. */
  faded: Array<Span & { transactions: number }>;
  /** Super transactions: no point inside them (shown, never chosen). */
  supers: Array<Span & { id: number; fromSeq: number; toSeq: number; complete: boolean }>;
  markers: { total: number; items: MarkerItem[] | null; buckets: { application: number[]; crash: number[] } | null };
  lag: { t: number[]; seconds: number[]; bytes: number[] };
  /** Rows in the group's index, and how long this answer took on the server. */
  stats: { rows: number; serverMs: number };
}

/** What the console shows live (events.ts pushes it every couple of seconds). */
export interface LiveState {
  time: number;
  volumes: Array<{
    name: string;
    connections: number;
    offline: string | null;
    protection: {
      state: string;
      lastSeq: number;
      appliedSeq: number;
      transactions: number;
      lag: { writes: number; bytes: number; seconds: number };
      dirtyRegions: number;
    } | null;
  }>;
  jobs: { version: number; running: number };
}
