/**
 * Resolving a user's point against a protected volume: committed history
 * (the backup manager) plus the journal's tail (writes not committed yet).
 *
 * - Commands that read the image at the point (snapshot, clone, step,
 *   export, diff, bisect, restore) need the manager to hold it: a point past
 *   what it has applied ("latest", a recent seq or time) seals the active
 *   AILFC and waits for the commits first (resolveForImage).
 * - `rewind point` only says which write a point names: it never seals.
 *   A point past what is applied is answered from the journal itself
 *   (resolveForQuery): the last record appended, or the record headers of
 *   the containers not committed yet.
 * - Either way, the journal's position tells whether the intercept is in a
 *   degraded stretch whose super transaction is not committed yet: points
 *   from its start on are refused like points inside a super transaction.
 */
import type { JournalPosition, JournalRecordInfo, PendingQuery } from '../journal/group-journal';
import { kindName, resolvePoint, type PointHistory, type PointSpec, type ResolvedPoint, type WriteInfo } from './point';
import { PointGapError, timeText, type Nearest, type OpenStretch } from './point-gaps';

/** The intercept's journal as time travel sees it: local, or across the link. */
export interface JournalTail {
  /**
   * Where the journal stands now, and with `find` the uncommitted write a
   * seq or time names. `fresh`: the answer must be current (a marker); a
   * remote intercept that cannot be asked is then an error, otherwise its
   * last status report stands in.
   */
  locate(find?: PendingQuery, opts?: { fresh?: boolean }): Promise<{ position: JournalPosition; found: JournalRecordInfo | null }>;
  /** Seal and wait until the manager has committed everything journaled so far. */
  catchUp(): Promise<unknown>;
}

export interface ResolveContext {
  history: PointHistory & { status(): { lastSeq: number; lastTime: number } };
  journal: JournalTail;
}

type Markers = (name: string) => { seq: number } | null;

/** A write the journal holds but the manager has not committed: what `rewind point` reports for it. */
export interface PendingPoint {
  seq: number;
  time: number;
  /** The container holding it: the transaction it becomes. */
  txn: number;
  write: WriteInfo;
  pending: true;
  substitute?: ResolvedPoint['substitute'];
}

/** Could the point lie past what the manager has applied? */
export function beyondApplied(spec: PointSpec, m: { status(): { lastSeq: number; lastTime: number } }): boolean {
  const st = m.status();
  switch (spec.kind) {
    case 'latest':
      return true;
    case 'seq':
      return spec.seq > st.lastSeq;
    case 'time':
      return spec.ms >= st.lastTime;
    default:
      return false;
  }
}

function insideOpen(spec: PointSpec, o: OpenStretch | null): boolean {
  if (!o) return false;
  if (spec.kind === 'latest') return true;
  if (spec.kind === 'seq') return spec.seq >= o.fromSeq;
  if (spec.kind === 'time') return spec.ms >= o.fromTime;
  return false;
}

/** Resolves for a command that reads the image at the point: catches the manager up when needed. */
export async function resolveForImage(ctx: ResolveContext, spec: PointSpec, markers: Markers, nearest?: Nearest): Promise<ResolvedPoint> {
  let open: OpenStretch | null = null;
  if (beyondApplied(spec, ctx.history)) {
    await ctx.journal.catchUp();
    open = (await ctx.journal.locate()).position.open;
  }
  return resolvePoint(ctx.history, spec, markers, { nearest, open });
}

/** Resolves for `rewind point`: never seals; a write not committed yet is read from the journal. */
export async function resolveForQuery(
  ctx: ResolveContext,
  spec: PointSpec,
  markers: Markers,
  nearest?: Nearest,
): Promise<ResolvedPoint | PendingPoint> {
  let open: OpenStretch | null = null;
  if (beyondApplied(spec, ctx.history)) {
    const find: PendingQuery = spec.kind === 'time' ? { ms: spec.ms } : { seq: spec.kind === 'seq' ? spec.seq : Number.MAX_SAFE_INTEGER };
    const { position, found } = await ctx.journal.locate(find);
    open = position.open;
    if (!insideOpen(spec, open) && found) {
      if (spec.kind === 'seq' && spec.seq > position.seq) {
        const err = PointGapError.outside(
          `@seq:${spec.seq}`,
          'after',
          { seq: found.seq, time: found.time },
          `the journal's last write is @seq:${position.seq} (${timeText(position.time)})`,
        );
        if (nearest !== 'before') throw err;
        return pending(found, { asked: err.asked, why: err.why, nearest });
      }
      return pending(found);
    }
  }
  return resolvePoint(ctx.history, spec, markers, { nearest, open });
}

function pending(r: JournalRecordInfo, substitute?: ResolvedPoint['substitute']): PendingPoint {
  return {
    seq: r.seq,
    time: r.time,
    txn: r.containerId,
    write: {
      seq: r.seq,
      time: r.time,
      volumeId: r.volumeId,
      kind: kindName(r.kind),
      offset: r.offset,
      length: r.length,
      restore: (r.flags & 4) !== 0,
    },
    pending: true,
    ...(substitute ? { substitute } : {}),
  };
}
