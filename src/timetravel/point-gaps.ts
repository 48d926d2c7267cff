/**
 * Where history has no points: the stretches a seq or a time can fall into
 * that no image can be produced for, and the refusal that names the
 * nearest valid points on either side (with their times).
 *
 *   merged history   retention merged T_a..T_n into T_n: only its end is a
 *                    point (and the end of T_{a-1} before it)
 *   super transaction the resync after a degraded stretch: the writes from
 *                    `fromSeq` (made from `fromTime` on) are re-read from
 *                    production in no chronological order; only its end
 *                    is a point
 *   open stretch     a degraded stretch (or its resync) whose super
 *                    transaction is not committed yet: no point from its
 *                    start on exists yet
 *   outside          before retained history, or after the last write
 *
 * A command refuses such a point (PointGapError) unless the user asked for
 * the nearest valid one explicitly (`--nearest before|after`); then it says
 * which point it used and why.
 */
import { UserError } from '../util/errors';
import type { TransactionRecord } from '../manager/types';

export interface Neighbour {
  seq: number;
  time: number;
}

export type Nearest = 'before' | 'after';

export function parseNearest(v: unknown): Nearest | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (v === 'before' || v === 'after') return v;
  throw new UserError('invalid', `nearest must be "before" or "after", not ${JSON.stringify(v)}`);
}

export function pointText(seq: number, time: number): string {
  return `@seq:${seq} (${new Date(time).toISOString()})`;
}

function neighbourText(n: Neighbour | null, none: string): string {
  return n ? pointText(n.seq, n.time) : none;
}

/** A point that falls where history has none; names the nearest valid points. */
export class PointGapError extends UserError {
  constructor(
    /** The point as asked ("@seq:12", "2026-11-22T10:00:00.000Z"). */
    readonly asked: string,
    /** Why it is no point ("lies inside T_7, which retention merged (transactions 5..7)"). */
    readonly why: string,
    readonly before: Neighbour | null,
    readonly after: Neighbour | null,
    noneAfter = 'none',
    /** The message up to the --nearest hint, when the usual "nearest valid points are" does not fit. */
    text?: string,
  ) {
    const hint =
      before || after
        ? `; to use one, ask for it with --nearest ${before ? 'before' : 'after'}${before && after ? ' or --nearest after' : ''}`
        : '';
    super(
      'invalid',
      (text ??
        `${asked} ${why}: the nearest valid points are ${neighbourText(before, 'none before it')} and ${neighbourText(after, noneAfter)}`) +
        hint,
    );
  }

  /** Before retained history (the nearest point is the earliest) or after the last write (the latest). */
  static outside(asked: string, side: 'before' | 'after', nearest: Neighbour, range: string): PointGapError {
    return side === 'before'
      ? new PointGapError(
          asked,
          'is before retained history',
          null,
          nearest,
          'none',
          `${asked} is before retained history: the earliest point is ${neighbourText(nearest, '')}; ${range}`,
        )
      : new PointGapError(
          asked,
          'is after the last write',
          nearest,
          null,
          'none',
          `${asked} is after the last write: the latest point is ${neighbourText(nearest, '')}; ${range}`,
        );
  }
}

/** How a time is written in refusals. */
export function timeText(ms: number): string {
  return new Date(ms).toISOString();
}

/** A super transaction as its committed containers describe it (see TransactionRecord.superTransaction). */
export interface SuperSpan {
  id: number;
  fromSeq: number;
  /** When its degraded stretch began (the first write not journaled); null for spans recorded before that was kept. */
  fromTime: number | null;
  first: number;
  last: number;
  /** Its last container is committed: its end (endSeq) is a valid point. */
  complete: boolean;
  endSeq: number;
  endTime: number;
  /** The last point before it (null: none retained). */
  before: Neighbour | null;
}

/** Every super transaction in committed history, ascending. */
export function superSpans(all: TransactionRecord[]): SuperSpan[] {
  const out: SuperSpan[] = [];
  let cur: SuperSpan | null = null;
  let prevPoint: Neighbour | null = null;
  for (const t of all) {
    const tag = t.superTransaction;
    if (tag) {
      if (!cur || cur.id !== tag.id) {
        if (cur) out.push(cur);
        cur = {
          id: tag.id,
          fromSeq: tag.fromSeq,
          fromTime: tag.fromTime ?? null,
          first: t.n,
          last: t.n,
          complete: false,
          endSeq: 0,
          endTime: 0,
          before: prevPoint,
        };
      }
      cur.last = t.n;
      if (t.records > 0) {
        cur.endSeq = t.lastSeq;
        cur.endTime = t.lastTime;
      }
      if (tag.last) cur.complete = true;
    } else if (cur) {
      // A later ordinary transaction: the super transaction before it is complete.
      cur.complete = true;
      out.push(cur);
      cur = null;
    }
    if (t.records > 0) prevPoint = { seq: t.lastSeq, time: t.lastTime };
  }
  if (cur) out.push(cur);
  return out.filter((s) => s.endSeq > 0 || !s.complete);
}

/** The super transaction a seq lies inside (its end is not inside), if any. */
export function superSpanAtSeq(spans: SuperSpan[], seq: number): SuperSpan | null {
  for (const s of spans) {
    if (seq >= s.fromSeq && (!s.complete || seq < s.endSeq) && (s.endSeq === 0 || seq <= s.endSeq)) return s;
  }
  return null;
}

/**
 * The super transaction a time lies inside: from the start of its degraded
 * stretch (or, for spans without that time, just after the point before
 * it) up to, not including, the time of its last write.
 */
export function superSpanAtTime(spans: SuperSpan[], ms: number): SuperSpan | null {
  for (const s of spans) {
    const start = s.fromTime ?? (s.before ? s.before.time + 1 : -Infinity);
    const end = s.complete ? s.endTime : Infinity;
    if (ms >= start && ms < end) return s;
  }
  return null;
}

export function superGap(asked: string, s: SuperSpan): PointGapError {
  const began = s.fromTime !== null ? ` from ${timeText(s.fromTime)}` : '';
  return new PointGapError(
    asked,
    `lies inside super transaction ${s.id} (the resync after degraded mode: transactions ${s.first}..${s.last}, standing for the writes from @seq:${s.fromSeq}${began} on), ` +
      `whose data has no chronological order, so no point inside it can be restored`,
    s.before,
    s.complete ? { seq: s.endSeq, time: s.endTime } : null,
    'none yet (the super transaction is still being applied)',
  );
}

/** A degraded stretch (or its resync) whose super transaction is not committed yet. */
export interface OpenStretch {
  fromSeq: number;
  fromTime: number;
  /** unreachable: a remote manager cannot ask its intercept; nothing after its last report is known. */
  state: 'degraded' | 'resync' | 'unreachable';
}

export function openGap(asked: string, o: OpenStretch, before: Neighbour | null): PointGapError {
  if (o.state === 'unreachable') {
    return new PointGapError(
      asked,
      `lies after the intercept's last report (${timeText(o.fromTime)}, @seq:${o.fromSeq - 1}): it is not connected, so which writes came since is unknown`,
      before,
      null,
      'none known (the intercept is not connected)',
    );
  }
  return new PointGapError(
    asked,
    `lies inside the ${o.state === 'degraded' ? 'degraded stretch' : 'resync'} that began at ${timeText(o.fromTime)} (@seq:${o.fromSeq} on): ` +
      `those writes were not journaled in order and come back as a super transaction, so no point from there on exists yet`,
    before,
    null,
    'none yet (the super transaction is not committed yet)',
  );
}

/** The refusal of a point inside T_n, which retention merged. */
export function mergedGap(asked: string, txn: TransactionRecord, prev: TransactionRecord | undefined): PointGapError {
  return new PointGapError(
    asked,
    `lies inside T_${txn.n}, which retention merged (transactions ${txn.mergedFrom}..${txn.n}, ${timeText(txn.firstTime)} to ${timeText(txn.lastTime)}): its writes faded, only its end is a point`,
    prev ? { seq: prev.lastSeq, time: prev.lastTime } : null,
    { seq: txn.lastSeq, time: txn.lastTime },
  );
}
