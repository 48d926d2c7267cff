/**
 * The timeline index of one consistency group: every committed transaction
 * of the manager's LMDB catalog as a row of typed-array columns (its n,
 * time range, last seq, flags, and running sums of writes and bytes), so
 * that any time window is bucketed in O(buckets x log rows) by binary
 * search, at any zoom, without touching LMDB. A million transactions take
 * 45 MB and are read from LMDB once (about 5 s, in chunks that yield to the
 * event loop); afterwards the index follows the catalog incrementally:
 *
 *   - new commits (the applied pointer moved, the count grew by as much):
 *     the new records are appended;
 *   - anything else (retention merged or dropped transactions): the keys
 *     alone are scanned (a tenth of the cost of the records), rows whose
 *     transaction is gone are dropped, and the survivor after each removed
 *     run (it was rewritten by the merge) is read again.
 *
 * Times are made monotone (each row starts no earlier than the previous one
 * ended), which the binary searches need; real histories already are.
 */
import type { TransactionRecord } from '../manager/types';

/** What the index reads: the group's committed transactions (the manager's catalog). */
export interface TxnSource {
  state(): HistoryState;
  /** Committed transactions with from <= n <= to, ascending, at most `limit`. */
  transactions(opts: { from?: number; to?: number; limit?: number }): TransactionRecord[];
  /** The n of every committed transaction up to `to`, ascending. */
  transactionNumbers(to?: number): number[];
}

/** Which history, and how far it goes: when it was created, its applied pointer, its first container, its record count. */
export interface HistoryState {
  created: number;
  lastContainer: number;
  lastSeq: number;
  lastTime: number;
  firstContainer: number;
  count: number;
}

export const FLAG_MERGED = 1;
export const FLAG_SUPER = 2;
export const FLAG_EMPTY = 4;
export const FLAG_ERRORS = 8;

/** A super transaction (a resync after degraded mode): no point from fromSeq to its last seq. */
export interface SuperSpan {
  id: number;
  fromSeq: number;
  fromTime: number;
  firstN: number;
  lastN: number;
  lastSeq: number;
  lastTime: number;
  complete: boolean;
}

const CHUNK = 16_384;

/** Growable typed-array columns. */
export class Columns {
  length = 0;
  n: Uint32Array;
  t0: Float64Array;
  t1: Float64Array;
  seq: Float64Array;
  cumW: Float64Array;
  cumB: Float64Array;
  flags: Uint8Array;

  constructor(capacity = 1024) {
    this.n = new Uint32Array(capacity);
    this.t0 = new Float64Array(capacity);
    this.t1 = new Float64Array(capacity);
    this.seq = new Float64Array(capacity);
    this.cumW = new Float64Array(capacity);
    this.cumB = new Float64Array(capacity);
    this.flags = new Uint8Array(capacity);
  }

  get capacity(): number {
    return this.n.length;
  }

  private grow(min: number): void {
    const cap = Math.max(min, this.capacity * 2);
    const g = <T extends Float64Array | Uint32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a.subarray(0, this.length));
      return b;
    };
    this.n = g(this.n, (c) => new Uint32Array(c));
    this.t0 = g(this.t0, (c) => new Float64Array(c));
    this.t1 = g(this.t1, (c) => new Float64Array(c));
    this.seq = g(this.seq, (c) => new Float64Array(c));
    this.cumW = g(this.cumW, (c) => new Float64Array(c));
    this.cumB = g(this.cumB, (c) => new Float64Array(c));
    this.flags = g(this.flags, (c) => new Uint8Array(c));
  }

  /** Appends a row; times are clamped to start no earlier than the previous row's end. */
  push(n: number, firstTime: number, lastTime: number, lastSeq: number, writes: number, bytes: number, flags: number): void {
    if (this.length === this.capacity) this.grow(this.length + 1);
    const i = this.length++;
    const prevEnd = i > 0 ? this.t1[i - 1]! : 0;
    const empty = (flags & FLAG_EMPTY) !== 0;
    const a = Math.max(empty ? prevEnd : firstTime, prevEnd);
    this.n[i] = n;
    this.t0[i] = a;
    this.t1[i] = Math.max(empty ? prevEnd : lastTime, a);
    this.seq[i] = lastSeq;
    this.cumW[i] = (i > 0 ? this.cumW[i - 1]! : 0) + writes;
    this.cumB[i] = (i > 0 ? this.cumB[i - 1]! : 0) + bytes;
    this.flags[i] = flags;
  }

  writes(i: number): number {
    return this.cumW[i]! - (i > 0 ? this.cumW[i - 1]! : 0);
  }

  bytes(i: number): number {
    return this.cumB[i]! - (i > 0 ? this.cumB[i - 1]! : 0);
  }

  /** Copies row i of `from` (its own writes and bytes, not the sums) to the end. */
  pushRow(from: Columns, i: number): void {
    this.push(from.n[i]!, from.t0[i]!, from.t1[i]!, from.seq[i]!, from.writes(i), from.bytes(i), from.flags[i]!);
  }
}

export function rowFlags(rec: TransactionRecord): number {
  let f = 0;
  if (rec.mergedFrom !== undefined) f |= FLAG_MERGED;
  if (rec.superTransaction) f |= FLAG_SUPER;
  if (rec.records === 0) f |= FLAG_EMPTY;
  if (rec.errors > 0) f |= FLAG_ERRORS;
  return f;
}

export class TimelineIndex {
  cols = new Columns();
  /** The history state the rows reflect (null: not built yet). */
  state: HistoryState | null = null;
  readonly supers = new Map<number, SuperSpan>();
  /** Rows appended since the index was last saved (the store saves when it is worth it). */
  changedSinceSave = 0;
  private running: Promise<void> | null = null;

  constructor(private readonly src: TxnSource) {}

  /** Brings the rows up to the catalog; concurrent callers share one pass. */
  sync(): Promise<void> {
    if (!this.running) {
      this.running = this.syncOnce().finally(() => {
        this.running = null;
      });
    }
    return this.running;
  }

  private async syncOnce(): Promise<void> {
    const st = this.src.state();
    const cur = this.state;
    if (!cur || cur.created !== st.created || st.lastContainer < cur.lastContainer) return this.rebuild(st);
    if (st.lastContainer === cur.lastContainer && st.count === cur.count && st.firstContainer === cur.firstContainer) return;
    const expected = cur.count + (st.lastContainer - cur.lastContainer);
    if (st.count === expected && st.firstContainer === cur.firstContainer) {
      await this.appendFrom(cur.lastContainer + 1, st.lastContainer);
    } else {
      await this.resyncAfterFade(st);
    }
    this.state = st;
  }

  /** Reads every record again (first use, or a different history). */
  private async rebuild(st: HistoryState): Promise<void> {
    const cols = new Columns(Math.max(1024, st.count + 64));
    this.supers.clear();
    this.cols = cols;
    this.state = null;
    await this.appendFrom(0, st.lastContainer);
    this.state = st;
    this.changedSinceSave = cols.length;
  }

  private async appendFrom(from: number, to: number): Promise<void> {
    let next = from;
    for (;;) {
      const recs = this.src.transactions({ from: next, to, limit: CHUNK });
      for (const r of recs) this.add(r);
      this.changedSinceSave += recs.length;
      if (recs.length < CHUNK) return;
      next = recs[recs.length - 1]!.n + 1;
      // Let other requests (and the NBD server) run between chunks.
      await new Promise((r) => setImmediate(r));
    }
  }

  private add(r: TransactionRecord): void {
    this.cols.push(r.n, r.firstTime, r.lastTime, r.lastSeq, r.records, r.bytesApplied, rowFlags(r));
    const s = r.superTransaction;
    if (!s) return;
    let span = this.supers.get(s.id);
    if (!span) {
      span = {
        id: s.id,
        fromSeq: s.fromSeq,
        fromTime: s.fromTime ?? r.firstTime,
        firstN: r.n,
        lastN: r.n,
        lastSeq: r.lastSeq,
        lastTime: r.lastTime,
        complete: false,
      };
      this.supers.set(s.id, span);
    }
    span.lastN = r.n;
    if (r.records > 0) {
      span.lastSeq = Math.max(span.lastSeq, r.lastSeq);
      span.lastTime = Math.max(span.lastTime, r.lastTime);
    }
    if (s.last) span.complete = true;
  }

  /**
   * Retention merged or dropped transactions: keep the rows still present,
   * re-read each survivor that follows a removed run (the merge rewrote it)
   * and anything new.
   */
  private async resyncAfterFade(st: HistoryState): Promise<void> {
    const keys = this.src.transactionNumbers(st.lastContainer);
    const old = this.cols;
    const next = new Columns(Math.max(1024, keys.length + 64));
    // Readers wait for sync() to finish, so no one sees the half-built rows.
    this.cols = next;
    let j = 0;
    for (let k = 0; k < keys.length; k++) {
      const n = keys[k]!;
      let removedBefore = false;
      while (j < old.length && old.n[j]! < n) {
        j++;
        removedBefore = true;
      }
      if (j < old.length && old.n[j] === n && !removedBefore) {
        next.pushRow(old, j++);
        continue;
      }
      if (j < old.length && old.n[j] === n) j++;
      const [rec] = this.src.transactions({ from: n, to: n });
      if (!rec) continue;
      this.add(rec);
      this.changedSinceSave++;
      if (k % CHUNK === CHUNK - 1) await new Promise((r) => setImmediate(r));
    }
    if (this.supers.size) {
      const present = new Set(keys);
      for (const [id, s] of this.supers) if (!present.has(s.lastN)) this.supers.delete(id);
    }
    this.changedSinceSave += 1;
  }

  /** Takes rows saved earlier (timeline-file.ts); the next sync() checks them against the catalog. */
  adopt(state: HistoryState, cols: Columns, supers: SuperSpan[]): void {
    this.state = state;
    this.cols = cols;
    this.supers.clear();
    for (const s of supers) this.supers.set(s.id, s);
    this.changedSinceSave = 0;
  }

  // --- queries -----------------------------------------------------------------

  get length(): number {
    return this.cols.length;
  }

  /** First row whose end is at or after t (length if none). */
  firstEndingAtOrAfter(t: number): number {
    return lowerBound(this.cols.t1, this.cols.length, t);
  }

  /** First row that starts at or after t (length if none). */
  firstStartingAtOrAfter(t: number): number {
    return lowerBound(this.cols.t0, this.cols.length, t);
  }

  /**
   * Writes (or bytes) up to time t, spreading each transaction evenly over
   * its time range: so buckets finer than a transaction still show a rate.
   */
  cumulativeAt(cum: Float64Array, t: number): number {
    const c = this.cols;
    const i = this.firstEndingAtOrAfter(t);
    if (i >= c.length) return c.length ? cum[c.length - 1]! : 0;
    const before = i > 0 ? cum[i - 1]! : 0;
    const a = c.t0[i]!;
    const b = c.t1[i]!;
    if (t <= a) return before;
    if (b <= a) return cum[i]!;
    return before + ((cum[i]! - before) * (t - a)) / (b - a);
  }

  /** The time range of the rows holding writes (null: none). */
  extent(): { first: number; last: number } | null {
    const c = this.cols;
    let i = 0;
    while (i < c.length && c.flags[i]! & FLAG_EMPTY) i++;
    if (i >= c.length) return null;
    return { first: c.t0[i]!, last: c.t1[c.length - 1]! };
  }
}

/** First index below n whose value in the ascending column a is at or after t (n if none). */
function lowerBound(a: ArrayLike<number>, n: number, t: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
