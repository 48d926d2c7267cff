/**
 * Points in a volume's history, and how a user names them.
 *
 *   @seq:N            the image right after write N (N is the group's
 *                     sequence number; "seq:N" works too)
 *   @txn:N            the image at the end of transaction T_N
 *   ISO 8601 time     the last write at or before it ("2026-11-22T10:00:00Z")
 *   "10 minutes ago"  likewise, relative to now ("90s ago", "2 hours ago",
 *                     also "-10m")
 *   latest | now      the last write
 *   NAME              a marker (once markers exist)
 *
 * Resolution turns a spec into a ResolvedPoint: the exact write chosen (seq,
 * time, volume, kind, extent) and where the image comes from:
 *   image(point) = image before T_k  +  AILFC_k's records with seq <= point.seq
 * (overlay = k when the point lies inside T_k, null at a boundary).
 */
import { RecordKind } from '../lfc';
import type { TransactionRecord, TxnRecord } from '../manager/types';
import { UserError } from '../util/errors';
import {
  PointGapError,
  mergedGap,
  openGap,
  pointText,
  superGap,
  superSpanAtSeq,
  superSpanAtTime,
  superSpans,
  timeText,
  type Nearest,
  type Neighbour,
  type OpenStretch,
} from './point-gaps';

export type PointSpec =
  | { kind: 'seq'; seq: number; text: string }
  | { kind: 'txn'; n: number; text: string }
  | { kind: 'time'; ms: number; text: string }
  | { kind: 'latest'; text: string }
  | { kind: 'marker'; name: string; text: string };

export interface WriteInfo {
  seq: number;
  /** ms since the epoch. */
  time: number;
  volumeId: number;
  kind: 'write' | 'trim' | 'zero' | 'error' | 'resync';
  offset: number;
  length: number;
  /** Written by a production restore. */
  restore: boolean;
}

export interface ResolvedPoint {
  seq: number;
  time: number;
  /** Transaction holding the write. */
  txn: number;
  /** The image is "before T_k" plus the overlay. */
  k: number;
  /** k when the point lies inside T_k (AILFC_k's records up to seq overlay it), else null. */
  overlay: number | null;
  write: WriteInfo;
  /** Set when the asked point was no point and the nearest valid one was taken instead (--nearest). */
  substitute?: { asked: string; why: string; nearest: Nearest };
}

/** What point resolution needs from a group's history (the backup manager). */
export interface PointHistory {
  transactions(opts?: { from?: number; to?: number; limit?: number }): TransactionRecord[];
  transaction(n: number): TransactionRecord | undefined;
  transactionForSeq(seq: number): number | undefined;
  /** Path of T_n's stored container (its name may change when retention merges it). */
  historyFile(kind: 'ailfc' | 'bilfc', n: number): string;
  /** Record headers of AILFC_n (cached). */
  records(n: number): Promise<TxnRecord[]>;
}

const UNITS: Record<string, number> = {
  s: 1000,
  sec: 1000,
  secs: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  mins: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hrs: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000,
  w: 604_800_000,
  week: 604_800_000,
  weeks: 604_800_000,
};

/** Parses a point as typed by a user (see the file comment). Throws UserError('invalid'). */
export function parsePoint(text: unknown, now = Date.now()): PointSpec {
  if (typeof text !== 'string' || text.trim() === '')
    throw new UserError('invalid', 'a point is required (e.g. @seq:42, @txn:7, 2026-11-22T10:00:00Z, "10 minutes ago")');
  const t = text.trim();
  let m = /^@?seq:(\d+)$/i.exec(t);
  if (m) return { kind: 'seq', seq: safeInt(m[1]!, t), text: t };
  m = /^@?txn:(\d+)$/i.exec(t);
  if (m) return { kind: 'txn', n: safeInt(m[1]!, t), text: t };
  if (/^@?(latest|now)$/i.test(t)) return { kind: 'latest', text: t };
  m = /^@?time:(\d+)$/i.exec(t);
  if (m) return { kind: 'time', ms: safeInt(m[1]!, t), text: t };
  m = /^(?:@?time:)?(\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+)?(?:Z|[+-]\d{2}:?\d{2})?)$/i.exec(t);
  if (m) {
    const ms = Date.parse(m[1]!.replace(' ', 'T'));
    if (!Number.isFinite(ms)) throw new UserError('invalid', `cannot parse time "${t}"`);
    return { kind: 'time', ms, text: t };
  }
  m = /^(\d+(?:\.\d+)?)\s*([a-z]+)\s+ago$/i.exec(t) ?? /^-(\d+(?:\.\d+)?)\s*([a-z]+)$/i.exec(t);
  if (m) {
    const unit = UNITS[m[2]!.toLowerCase()];
    if (!unit) throw new UserError('invalid', `unknown time unit "${m[2]}" in "${t}" (use s, m, h, d or w)`);
    return { kind: 'time', ms: now - Number(m[1]) * unit, text: t };
  }
  if (/^@?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(t)) return { kind: 'marker', name: t.replace(/^@/, ''), text: t };
  throw new UserError('invalid', `cannot parse point "${t}": use @seq:N, @txn:N, an ISO time, "N minutes ago", latest, or a marker name`);
}

function safeInt(s: string, t: string): number {
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new UserError('invalid', `number too large in "${t}"`);
  return n;
}

export type { TxnRecord } from '../manager/types';

/** Record headers of AILFC_n (the history caches them: sealed containers never change). */
export function txnRecords(h: PointHistory, n: number): Promise<TxnRecord[]> {
  return h.records(n);
}

export function kindName(kind: number): WriteInfo['kind'] {
  switch (kind) {
    case RecordKind.Write:
      return 'write';
    case RecordKind.Trim:
      return 'trim';
    case RecordKind.Zero:
      return 'zero';
    case RecordKind.Resync:
      return 'resync';
    default:
      return 'error';
  }
}

export function describeWrite(w: WriteInfo, volumeName?: (id: number) => string): string {
  const vol = volumeName ? volumeName(w.volumeId) : `volume ${w.volumeId}`;
  return `seq ${w.seq} at ${new Date(w.time).toISOString()}: ${w.kind}${w.restore ? ' (restore)' : ''} of ${w.length} bytes at offset ${w.offset} on ${vol}`;
}

/** The retained range: first and last write, or null when there is no history yet. */
export function historyBounds(h: PointHistory): { first: TransactionRecord; last: TransactionRecord } | null {
  const all = h.transactions().filter((t) => t.records > 0);
  if (!all.length) return null;
  return { first: all[0]!, last: all[all.length - 1]! };
}

/** The earliest valid point: the first write, or the end of the first transaction if it was merged (or is a stub). */
function earliestPoint(first: TransactionRecord): Neighbour {
  return first.mergedFrom !== undefined ? { seq: first.lastSeq, time: first.lastTime } : { seq: first.firstSeq, time: first.firstTime };
}

/** The last write before `seq` in committed history (its transaction end, or a record of it). */
function lastPointBefore(h: PointHistory, seq: number): Neighbour | null {
  const txns = h.transactions().filter((t) => t.records > 0 && t.firstSeq < seq);
  const t = txns[txns.length - 1];
  if (!t) return null;
  if (t.lastSeq < seq) return { seq: t.lastSeq, time: t.lastTime };
  return null;
}

export interface ResolveOptions {
  /** Looks a marker up (null: no such marker). */
  markers?: (name: string) => { seq: number } | null;
  /** When the asked point is no point (PointGapError), take the nearest valid one on this side instead. */
  nearest?: Nearest;
  /** A degraded stretch not committed yet (the intercept says so): nothing from its start on is a point. */
  open?: OpenStretch | null;
}

/**
 * Resolves a spec against committed history. A point where history has
 * none (merged by retention, inside a super transaction or an open
 * degraded stretch, outside the retained range) is refused with a
 * PointGapError naming the nearest valid points, or, with `nearest`,
 * replaced by the one on that side (the result says so in `substitute`).
 */
export async function resolvePoint(
  h: PointHistory,
  spec: PointSpec,
  markers: (name: string) => { seq: number } | null = () => null,
  opts: Omit<ResolveOptions, 'markers'> = {},
): Promise<ResolvedPoint> {
  const open = opts.open ?? null;
  try {
    return await resolveExact(h, spec, markers, open);
  } catch (err) {
    if (!(err instanceof PointGapError) || !opts.nearest) throw err;
    const n = opts.nearest === 'before' ? err.before : err.after;
    if (!n) throw new UserError('invalid', `${err.message}. There is no valid point ${opts.nearest} it.`);
    const p = await resolveExact(h, { kind: 'seq', seq: n.seq, text: `@seq:${n.seq}` }, markers, open);
    return { ...p, substitute: { asked: err.asked, why: err.why, nearest: opts.nearest } };
  }
}

async function resolveExact(
  h: PointHistory,
  spec: PointSpec,
  markers: (name: string) => { seq: number } | null,
  open: OpenStretch | null,
): Promise<ResolvedPoint> {
  const bounds = historyBounds(h);
  if (!bounds) throw new UserError('invalid', `no history yet: the volume has no journaled writes to go back to`);
  const { first, last } = bounds;
  const range = `retained history runs from ${pointText(first.firstSeq, first.firstTime)} to ${pointText(last.lastSeq, last.lastTime)}`;
  const all = h.transactions();
  const spans = superSpans(all);
  const latestPoint: Neighbour = { seq: last.lastSeq, time: last.lastTime };
  const openBefore = (): Neighbour | null => (open ? lastPointBefore(h, open.fromSeq) : null);
  let seq: number;
  switch (spec.kind) {
    case 'seq':
      seq = spec.seq;
      break;
    case 'latest':
      if (open) throw openGap('latest', open, openBefore());
      seq = last.lastSeq;
      break;
    case 'txn': {
      const t = h.transaction(spec.n);
      if (!t) {
        throw new UserError(
          'invalid',
          `no committed transaction T_${spec.n}: transactions ${all[0]?.n ?? '-'}..${all[all.length - 1]?.n ?? '-'} exist; ${range}`,
        );
      }
      if (t.records === 0) throw new UserError('invalid', `T_${spec.n} holds no writes; ${range}`);
      seq = t.lastSeq;
      break;
    }
    case 'marker': {
      const mk = markers(spec.name);
      if (!mk) throw new UserError('not-found', `no marker named "${spec.name}" (points are @seq:N, @txn:N, a time, or a marker name)`);
      seq = mk.seq;
      break;
    }
    case 'time': {
      const asked = timeText(spec.ms);
      if (spec.ms < first.firstTime) throw PointGapError.outside(asked, 'before', earliestPoint(first), range);
      if (open && spec.ms >= open.fromTime) throw openGap(asked, open, openBefore());
      const sp = superSpanAtTime(spans, spec.ms);
      if (sp) throw superGap(asked, sp);
      // The last transaction that began at or before the time, then its last record at or before it.
      let chosen: TransactionRecord = first;
      for (const t of all) {
        if (t.records > 0 && t.firstTime <= spec.ms) chosen = t;
      }
      if (chosen.mergedFrom !== undefined) {
        // The last write at or before the time faded into a merged transaction: only its end is a point.
        if (spec.ms < chosen.lastTime) throw mergedGap(asked, chosen, previousTxn(h, chosen));
        seq = chosen.lastSeq;
        break;
      }
      const recs = await txnRecords(h, chosen.n);
      let pick = recs[0]!;
      for (const r of recs) if (r.time <= spec.ms) pick = r;
      seq = pick.seq;
      break;
    }
  }
  const asked = spec.kind === 'seq' || spec.kind === 'time' ? `@seq:${seq}` : `${spec.text} (@seq:${seq})`;
  if (seq < first.firstSeq) throw PointGapError.outside(asked, 'before', earliestPoint(first), range);
  if (open && seq >= open.fromSeq) throw openGap(asked, open, openBefore());
  if (seq > last.lastSeq) throw PointGapError.outside(asked, 'after', latestPoint, range);
  const sp = superSpanAtSeq(spans, seq);
  if (sp) throw superGap(asked, sp);
  const n = h.transactionForSeq(seq);
  if (n === undefined) throw new UserError('invalid', `@seq:${seq} is not in any committed transaction; ${range}`);
  const txn = h.transaction(n)!;
  // Retention merged this stretch of history: only its ends are points now.
  if (txn.mergedFrom !== undefined && seq !== txn.lastSeq) throw mergedGap(asked, txn, previousTxn(h, txn));
  const recs = await txnRecords(h, n);
  const rec = recs.find((r) => r.seq === seq);
  if (!rec && txn.mergedFrom !== undefined) {
    // The end of a merged transaction whose last write was superseded within it.
    return {
      seq,
      time: txn.lastTime,
      txn: n,
      k: n + 1,
      overlay: null,
      write: { seq, time: txn.lastTime, volumeId: txn.volumes[0] ?? 0, kind: 'write', offset: 0, length: 0, restore: false },
    };
  }
  if (!rec) {
    // A gap in the sequence (a reserved number never written): the point is the write before it.
    const before = [...recs].reverse().find((r) => r.seq < seq);
    if (!before) throw new UserError('invalid', `no write with @seq:${seq}; ${range}`);
    return await resolveExact(h, { kind: 'seq', seq: before.seq, text: spec.text }, markers, open);
  }
  const atEnd = seq === txn.lastSeq;
  return {
    seq,
    time: rec.time,
    txn: n,
    k: atEnd ? n + 1 : n,
    overlay: atEnd ? null : n,
    write: {
      seq,
      time: rec.time,
      volumeId: rec.volumeId,
      kind: kindName(rec.kind),
      offset: rec.offset,
      length: rec.length,
      restore: (rec.flags & 4) !== 0,
    },
  };
}

/** The last transaction with writes before a (merged) transaction's first original one. */
function previousTxn(h: PointHistory, t: TransactionRecord): TransactionRecord | undefined {
  return h
    .transactions({ to: (t.mergedFrom ?? t.n) - 1 })
    .filter((x) => x.records > 0)
    .pop();
}

/**
 * Steps from `from` by `delta` writes of volume `volumeId` (error records,
 * which changed nothing, are skipped): the seq landed on. Stops with a clear
 * error at either end of history.
 */
export async function stepSeq(h: PointHistory, volumeId: number, from: number, delta: number): Promise<number> {
  const bounds = historyBounds(h);
  if (!bounds) throw new UserError('invalid', 'no history yet');
  const txns = h.transactions().filter((t) => t.records > 0);
  let idx = txns.findIndex((t) => t.lastSeq >= from);
  if (idx < 0) idx = txns.length - 1;
  let left = Math.abs(delta);
  let cur = from;
  const fwd = delta > 0;
  while (left > 0) {
    if (idx < 0 || idx >= txns.length) {
      const edge = fwd ? bounds.last : bounds.first;
      throw new UserError(
        'invalid',
        `cannot step ${fwd ? 'forward' : 'back'} ${Math.abs(delta)} write(s) from @seq:${from}: only ${Math.abs(delta) - left} ` +
          `${fwd ? 'later' : 'earlier'} write(s) of this volume are in retained history (${fwd ? 'latest' : 'earliest'} transaction T_${edge.n})`,
      );
    }
    const tx = txns[idx]!;
    let recs = (await txnRecords(h, tx.n)).filter((r) => r.volumeId === volumeId && r.kind !== RecordKind.Error);
    // A transaction merged by retention is one step: only its end is a point.
    if (tx.mergedFrom !== undefined) recs = recs.length ? [{ ...recs[recs.length - 1]!, seq: tx.lastSeq }] : [];
    // Inside a super transaction only its end is a point.
    if (tx.superTransaction) {
      const sp = superSpans(h.transactions()).find((x) => x.id === tx.superTransaction!.id);
      recs = sp && sp.complete && sp.last === tx.n && recs.length ? [{ ...recs[recs.length - 1]!, seq: tx.lastSeq }] : [];
    }
    if (fwd) {
      for (const r of recs) {
        if (r.seq > cur) {
          cur = r.seq;
          if (--left === 0) break;
        }
      }
      if (left > 0) idx++;
    } else {
      for (let i = recs.length - 1; i >= 0; i--) {
        const r = recs[i]!;
        if (r.seq < cur) {
          cur = r.seq;
          if (--left === 0) break;
        }
      }
      if (left > 0) idx--;
    }
  }
  return cur;
}
