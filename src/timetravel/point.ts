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
import { readRecords } from '../lfc';
import { RecordKind } from '../lfc';
import type { TransactionRecord } from '../manager/types';
import { UserError } from '../util/errors';

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
}

/** What point resolution needs from a group's history (the backup manager). */
export interface PointHistory {
  transactions(opts?: { from?: number; to?: number; limit?: number }): TransactionRecord[];
  transaction(n: number): TransactionRecord | undefined;
  transactionForSeq(seq: number): number | undefined;
  /** Path of T_n's stored container (its name may change when retention merges it). */
  historyFile(kind: 'ailfc' | 'bilfc', n: number): string;
}

const UNITS: Record<string, number> = {
  s: 1000, sec: 1000, secs: 1000, second: 1000, seconds: 1000,
  m: 60_000, min: 60_000, mins: 60_000, minute: 60_000, minutes: 60_000,
  h: 3_600_000, hr: 3_600_000, hrs: 3_600_000, hour: 3_600_000, hours: 3_600_000,
  d: 86_400_000, day: 86_400_000, days: 86_400_000,
  w: 604_800_000, week: 604_800_000, weeks: 604_800_000,
};

/** Parses a point as typed by a user (see the file comment). Throws UserError('invalid'). */
export function parsePoint(text: unknown, now = Date.now()): PointSpec {
  if (typeof text !== 'string' || text.trim() === '') throw new UserError('invalid', 'a point is required (e.g. @seq:42, @txn:7, 2026-11-22T10:00:00Z, "10 minutes ago")');
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

/** Record headers of AILFC_n, cached (sealed containers never change). */
export interface TxnRecord {
  seq: number;
  time: number;
  kind: number;
  flags: number;
  volumeId: number;
  offset: number;
  length: number;
  /** File offset of the record header. */
  position: number;
}

const recordCache = new Map<string, Promise<TxnRecord[]>>();
const CACHE_MAX = 16;

export function txnRecords(h: PointHistory, n: number): Promise<TxnRecord[]> {
  const file = h.historyFile('ailfc', n);
  let p = recordCache.get(file);
  if (p) {
    recordCache.delete(file);
    recordCache.set(file, p);
    return p;
  }
  p = (async () => {
    const out: TxnRecord[] = [];
    for await (const r of readRecords(file, { payloads: false })) {
      out.push({ seq: r.seq, time: r.time, kind: r.kind, flags: r.flags, volumeId: r.volumeId, offset: r.offset, length: r.length, position: r.position });
    }
    return out;
  })();
  p.catch(() => recordCache.delete(file));
  recordCache.set(file, p);
  while (recordCache.size > CACHE_MAX) recordCache.delete(recordCache.keys().next().value!);
  return p;
}

/** Forget cached records of a file (it was removed or replaced). */
export function forgetTxnRecords(file: string): void {
  recordCache.delete(file);
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

/** A super transaction as its committed containers describe it (see TransactionRecord.superTransaction). */
export interface SuperSpan {
  id: number;
  fromSeq: number;
  first: number;
  last: number;
  /** Its last container is committed: its end (endSeq) is a valid point. */
  complete: boolean;
  endSeq: number;
  endTime: number;
  /** The last point before it (null: none retained). */
  before: { seq: number; time: number } | null;
}

/** Every super transaction in committed history, ascending. */
export function superSpans(h: PointHistory): SuperSpan[] {
  const all = h.transactions();
  const out: SuperSpan[] = [];
  let cur: SuperSpan | null = null;
  let prevPoint: { seq: number; time: number } | null = null;
  for (const t of all) {
    const tag = t.superTransaction;
    if (tag) {
      if (!cur || cur.id !== tag.id) {
        if (cur) out.push(cur);
        cur = { id: tag.id, fromSeq: tag.fromSeq, first: t.n, last: t.n, complete: false, endSeq: 0, endTime: 0, before: prevPoint };
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

/** The super transaction a point lies inside (its end is not inside), if any. */
export function superSpanAt(h: PointHistory, seq: number): SuperSpan | null {
  for (const s of superSpans(h)) {
    if (seq >= s.fromSeq && (!s.complete || seq < s.endSeq) && (s.endSeq === 0 || seq <= s.endSeq)) return s;
  }
  return null;
}

function superError(seq: number, s: SuperSpan): UserError {
  const before = s.before ? pointText(s.before.seq, s.before.time) : 'none (no earlier point is retained)';
  const after = s.complete ? pointText(s.endSeq, s.endTime) : 'none yet (the super transaction is still being applied)';
  return new UserError(
    'invalid',
    `@seq:${seq} lies inside super transaction ${s.id} (the resync after degraded mode: transactions ${s.first}..${s.last}, standing for the writes from @seq:${s.fromSeq} on), ` +
      `whose data has no chronological order, so no point inside it can be restored: the nearest valid points are ${before} and ${after}`,
  );
}

function pointText(seq: number, time: number): string {
  return `@seq:${seq} (${new Date(time).toISOString()})`;
}

/**
 * Resolves a spec against committed history. `markers` looks a marker up
 * (null: no such marker). Errors name the nearest valid points.
 */
export async function resolvePoint(
  h: PointHistory,
  spec: PointSpec,
  markers: (name: string) => { seq: number } | null = () => null,
): Promise<ResolvedPoint> {
  const bounds = historyBounds(h);
  if (!bounds) throw new UserError('invalid', `no history yet: the volume has no journaled writes to go back to`);
  const { first, last } = bounds;
  const range = `retained history runs from ${pointText(first.firstSeq, first.firstTime)} to ${pointText(last.lastSeq, last.lastTime)}`;
  let seq: number;
  switch (spec.kind) {
    case 'seq':
      seq = spec.seq;
      break;
    case 'latest':
      seq = last.lastSeq;
      break;
    case 'txn': {
      const t = h.transaction(spec.n);
      if (!t) {
        const all = h.transactions();
        throw new UserError('invalid', `no committed transaction T_${spec.n}: transactions ${all[0]?.n ?? '-'}..${all[all.length - 1]?.n ?? '-'} exist; ${range}`);
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
      if (spec.ms < first.firstTime) {
        throw new UserError('invalid', `${new Date(spec.ms).toISOString()} is before retained history: the earliest point is ${pointText(first.firstSeq, first.firstTime)}; ${range}`);
      }
      // The last transaction that began at or before the time, then its last record at or before it.
      let chosen: TransactionRecord = first;
      for (const t of h.transactions()) {
        if (t.records > 0 && t.firstTime <= spec.ms) chosen = t;
      }
      if (chosen.superTransaction) {
        const sp = superSpans(h).find((x) => x.id === chosen.superTransaction!.id) ?? null;
        if (sp && sp.complete && chosen.n === sp.last && spec.ms >= sp.endTime) seq = sp.endSeq;
        else if (sp?.before) seq = sp.before.seq;
        else throw sp ? superError(chosen.firstSeq, sp) : new UserError('invalid', `${new Date(spec.ms).toISOString()} is inside a super transaction; ${range}`);
        break;
      }
      if (chosen.mergedFrom !== undefined) {
        // Inside a merged transaction only its end is a point: the one before it otherwise.
        if (spec.ms >= chosen.lastTime) seq = chosen.lastSeq;
        else {
          const prev = h.transactions({ to: chosen.mergedFrom - 1 }).filter((t) => t.records > 0).pop();
          if (!prev) throw new UserError('invalid', `${new Date(spec.ms).toISOString()} is inside merged history with no earlier point; ${range}`);
          seq = prev.lastSeq;
        }
        break;
      }
      const recs = await txnRecords(h, chosen.n);
      let pick = recs[0]!;
      for (const r of recs) if (r.time <= spec.ms) pick = r;
      seq = pick.seq;
      break;
    }
  }
  if (seq < first.firstSeq) throw new UserError('invalid', `@seq:${seq} is before retained history: the earliest point is ${pointText(first.firstSeq, first.firstTime)}; ${range}`);
  if (seq > last.lastSeq) throw new UserError('invalid', `@seq:${seq} is after the last write: the latest point is ${pointText(last.lastSeq, last.lastTime)}; ${range}`);
  const sp = superSpanAt(h, seq);
  if (sp) throw superError(seq, sp);
  const n = h.transactionForSeq(seq);
  if (n === undefined) throw new UserError('invalid', `@seq:${seq} is not in any committed transaction; ${range}`);
  const txn = h.transaction(n)!;
  if (txn.mergedFrom !== undefined && seq !== txn.lastSeq) {
    // Retention merged this stretch of history: only its ends are points now.
    const prev = h.transactions({ to: txn.mergedFrom - 1 }).filter((t) => t.records > 0).pop();
    const before = prev ? pointText(prev.lastSeq, prev.lastTime) : 'none (it is the oldest retained transaction)';
    throw new UserError(
      'invalid',
      `@seq:${seq} lies inside T_${n}, which retention merged (transactions ${txn.mergedFrom}..${n}): the nearest valid points are ${before} and ${pointText(txn.lastSeq, txn.lastTime)}`,
    );
  }
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
    return await resolvePoint(h, { kind: 'seq', seq: before.seq, text: spec.text }, markers);
  }
  const t = h.transaction(n)!;
  const atEnd = seq === t.lastSeq;
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
      const sp = superSpans(h).find((x) => x.id === tx.superTransaction!.id);
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
