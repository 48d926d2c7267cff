/**
 * Production restore: roll a live volume back to a point (MISSION §4).
 *
 * It lives with time travel because it reads the point through a
 * PointImage, but it writes only through its RestoreTarget port (the
 * intercept), so every restore write is journaled like any other: the
 * restore is itself a point, and a second restore undoes it.
 */
import { UserError } from '../util/errors';
import { isZero } from '../util/zero';
import { resolvePoint } from './point';
import { PointImage } from './point-image';
import type { Progress, RestoreIntent, RestoreResult, TimeTravelHost } from './api';
import type { PointService } from './points';
import type { RestoreStore } from './store';
import type { ViewService } from './views';
import { pinPoint } from './view-records';

const RESTORE_CHUNK = 1 << 20;
const RESTORE_PARALLEL = 32;

export class RestoreService {
  private readonly restoring = new Set<string>();

  constructor(
    private readonly host: TimeTravelHost,
    private readonly store: RestoreStore,
    private readonly views: ViewService,
    private readonly points: PointService,
  ) {}

  /**
   * Finish restores a crash (or, with a remote intercept, a lost link)
   * interrupted; the volumes stay offline until then. `only`: just these
   * volumes (the manager role, when a group's intercept connects).
   */
  async resumeRestores(only?: (volume: string) => boolean): Promise<void> {
    for (const intent of this.store.restoreIntents()) {
      if (only && !only(intent.volume)) continue;
      if (this.restoring.has(intent.volume)) continue;
      this.host.logger.warn({ volume: intent.volume, seq: intent.seq }, 'resuming an interrupted production restore');
      this.restoring.add(intent.volume);
      try {
        await this.runRestore(intent, () => undefined, true);
      } catch (err) {
        this.host.logger.error(
          { volume: intent.volume, err: (err as Error).message },
          'could not finish the interrupted restore; the volume stays offline',
        );
      } finally {
        this.restoring.delete(intent.volume);
      }
    }
  }

  /** Volumes with a restore pending (kept offline). */
  pendingRestoreVolumes(): string[] {
    return this.store.restoreIntents().map((i) => i.volume);
  }

  /**
   * `rewind restore VOL --to POINT [--range OFF:LEN]... [--force]`.
   *
   *   1. The volume's export goes offline: new clients are refused, attached
   *      ones disconnected (they never see stale data).
   *   2. Writes so far are sealed and applied (the manager catches up).
   *   3. The blocks changed since the point are found from the transactions'
   *      block runs (cost in proportion to the changes, not the volume), and
   *      each is rewritten with its content at the point, read through a
   *      PointImage, unless production already holds exactly that.
   *   4. Those writes go through the intercept like any write, flagged as a
   *      restore, and are sealed into their own transaction(s): the replica
   *      is rolled back by the manager, and the restore is itself a point in
   *      history that a second restore can undo.
   * A restore intent is stored before anything is written; after a crash the
   * daemon keeps the volume offline and runs the restore again at start-up,
   * which converges on the same image (it rewrites whatever differs).
   */
  async restore(
    volume: string,
    body: { to?: unknown; ranges?: unknown; force?: unknown; nearest?: unknown },
    progress: (p: Progress) => void = () => undefined,
  ): Promise<RestoreResult> {
    const ctx = this.host.context(volume);
    if (this.restoring.has(volume)) throw new UserError('conflict', `a restore of "${volume}" is already running`);
    const views = this.views.viewsOf(volume);
    if (views.length && body.force !== true) {
      throw new UserError(
        'conflict',
        `volume "${volume}" has ${views.length} snapshot(s)/clone(s) attached (${views.map((v) => v.name).join(', ')}); delete them or pass --force (they keep their point in time)`,
      );
    }
    const ranges = parseRanges(body.ranges, ctx.size);
    if (ctx.journal.isDegraded)
      throw new UserError(
        'conflict',
        `volume "${volume}" is degraded (not journaling); a restore must be journaled, so it waits until journaling resumes`,
      );
    this.restoring.add(volume);
    try {
      // Never a silent substitute: a point with no image is refused, unless --nearest asked for one (and the result says so).
      const { point, info } = await this.points.resolve(volume, body.to, { nearest: body.nearest });
      // Refused before an intent is stored: a stored one would keep the volume offline.
      const refusal = this.host.restoreRefusal?.(volume);
      if (refusal) throw new UserError('conflict', refusal);
      const intent: RestoreIntent = { volume, seq: point.seq, ranges, undoSeq: null, started: new Date().toISOString() };
      await this.store.putRestoreIntent(intent);
      const r = await this.runRestore(intent, progress, false);
      return info.substituted ? { ...r, point: { ...r.point, substituted: info.substituted } } : r;
    } finally {
      this.restoring.delete(volume);
    }
  }

  private async runRestore(intent: RestoreIntent, progress: (p: Progress) => void, resumed: boolean): Promise<RestoreResult> {
    const t0 = Date.now();
    const volume = intent.volume;
    const ctx = this.host.context(volume);
    const target = ctx.restore;
    if (!target) throw new UserError('invalid', `production of "${volume}" cannot be rewritten from here`);
    this.host.setOffline(volume, 'a production restore is running');
    const disconnected = await this.host.disconnect(volume);
    if (disconnected) this.host.logger.info({ volume, disconnected }, 'restore: clients disconnected');
    const holder = `restore:${volume}`;
    let done = false;
    try {
      await target.hold();
      progress({ phase: 'catch-up', done: 0, total: 1 });
      if (ctx.journal.isDegraded)
        throw new UserError(
          'conflict',
          `volume "${volume}" is degraded (not journaling); a restore must be journaled, so it waits until journaling resumes`,
        );
      await target.flush();
      await ctx.journal.catchUp();
      const before = ctx.history.status().lastContainer;
      const tCaughtUp = Date.now();
      const point = await resolvePoint(ctx.history, { kind: 'seq', seq: intent.seq, text: `@seq:${intent.seq}` });
      pinPoint(ctx.history, holder, point);
      if (intent.undoSeq === null) {
        intent.undoSeq = ctx.history.status().lastSeq;
        await this.store.putRestoreIntent(intent);
      }
      const img = await PointImage.open(ctx.history, ctx.volumeId, ctx.size, point);
      const bs = ctx.history.blockSize;
      // Byte ranges to rewrite: blocks changed since the point, within the requested ranges.
      const changed = ctx.history.changedSince(ctx.volumeId, point.overlay ?? point.k);
      let pieces: Array<{ offset: number; length: number }> = changed.map((r) => ({
        offset: r.start * bs,
        length: Math.min(ctx.size, (r.start + r.count) * bs) - r.start * bs,
      }));
      if (intent.ranges) pieces = intersect(pieces, intent.ranges);
      const total = pieces.reduce((a, p) => a + p.length, 0);
      const blocksChanged = changed.reduce((a, r) => a + r.count, 0);
      progress({ phase: 'restore', done: 0, total });
      await ctx.journal.seal('restore-start');
      const firstSeqBefore = await ctx.journal.lastAppendedSeq();
      let bytesDone = 0;
      let bytesWritten = 0;
      let blocksWritten = 0;
      // Chunks of at most 1 MiB, RESTORE_PARALLEL at a time (they never overlap, and the volume is offline).
      const chunks: Array<{ off: number; len: number }> = [];
      for (const p of pieces) {
        for (let off = p.offset; off < p.offset + p.length; off += RESTORE_CHUNK)
          chunks.push({ off, len: Math.min(RESTORE_CHUNK, p.offset + p.length - off) });
      }
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < chunks.length) {
          const { off, len } = chunks[next++]!;
          const want = await img.read(off, len);
          const differs = await target.differing(off, want, bs);
          // Write only the runs of blocks that differ (chunks start on a block).
          const writes: Promise<void>[] = [];
          for (let b = 0; b < differs.length;) {
            if (!differs[b]) {
              b++;
              continue;
            }
            let e = b + 1;
            while (e < differs.length && differs[e]) e++;
            const a = b * bs;
            const z = Math.min(len, e * bs);
            b = e;
            const slice = want.subarray(a, z);
            writes.push(isZero(slice) ? target.restoreZero(off + a, z - a) : target.restoreWrite(off + a, slice));
            bytesWritten += z - a;
            blocksWritten += Math.ceil((z - a) / bs);
          }
          await Promise.all(writes);
          bytesDone += len;
          progress({ phase: 'restore', done: bytesDone, total });
        }
      };
      await Promise.all(Array.from({ length: RESTORE_PARALLEL }, worker));
      await target.flush();
      const tRewritten = Date.now();
      const lastSeqAfter = await ctx.journal.lastAppendedSeq();
      progress({ phase: 'commit', done: total, total });
      await ctx.journal.catchUp();
      const after = ctx.history.status().lastContainer;
      const txns: number[] = [];
      for (let n = before + 1; n <= after; n++) txns.push(n);
      const wrote = bytesWritten > 0;
      const result: RestoreResult = {
        volume,
        point: this.points.pointInfo(ctx.group, point),
        blocksChanged,
        blocksWritten,
        bytesWritten,
        firstSeq: wrote ? firstSeqBefore + 1 : null,
        lastSeq: wrote ? lastSeqAfter : null,
        transactions: wrote ? txns : [],
        // Set even when this run found nothing left to write: a run a crash interrupted may have.
        undo: intent.undoSeq ? `@seq:${intent.undoSeq}` : null,
        durationMs: Date.now() - t0,
        phases: { catchUpMs: tCaughtUp - t0, rewriteMs: tRewritten - tCaughtUp, commitMs: Date.now() - tRewritten },
        resumed,
      };
      // The intent goes first: a crash after it leaves at worst a hold with no restore, which is released
      // (a rerun after a release would rewrite what hosts wrote since).
      await this.store.putRestoreIntent(null, volume, result);
      done = true;
      await target
        .release()
        .catch((err: Error) =>
          this.host.logger.warn({ volume, err: err.message }, 'restore done; the volume is released when its intercept is reachable'),
        );
      this.host.logger.info({ ...result, point: result.point.seq }, 'production restore done');
      return result;
    } finally {
      ctx.history.pins.unpin(holder);
      // Not done: the intent stays, and so does the hold (the volume stays offline until a rerun ends it).
      if (done && !this.store.restoreIntents().some((i) => i.volume === volume)) this.host.setOffline(volume, null);
    }
  }

  restores(volume?: string): RestoreResult[] {
    return this.store.restoreLog<RestoreResult>().filter((r) => !volume || r.volume === volume);
  }

  /** A protected volume was deleted: a restore intent it had goes. */
  async volumeRemoved(volume: string): Promise<void> {
    await this.store.putRestoreIntent(null, volume);
  }
}

/** Validates OFFSET:LEN ranges (numbers or size strings) against the volume. */
function parseRanges(raw: unknown, size: number): Array<{ offset: number; length: number }> | null {
  if (raw === undefined || raw === null) return null;
  if (!Array.isArray(raw) || raw.length === 0) throw new UserError('invalid', 'ranges must be a non-empty list of {offset, length}');
  const out: Array<{ offset: number; length: number }> = [];
  for (const r of raw) {
    const o = (r as { offset?: unknown })?.offset;
    const l = (r as { length?: unknown })?.length;
    if (!Number.isSafeInteger(o) || !Number.isSafeInteger(l) || (o as number) < 0 || (l as number) <= 0) {
      throw new UserError('invalid', `bad range ${JSON.stringify(r)}: offset >= 0 and length > 0 are required`);
    }
    if ((o as number) + (l as number) > size)
      throw new UserError('invalid', `range ${o}:${l} runs past the end of the volume (${size} bytes)`);
    out.push({ offset: o as number, length: l as number });
  }
  return out;
}

/** The parts of sorted, disjoint `pieces` inside any of `ranges`. */
function intersect(
  pieces: Array<{ offset: number; length: number }>,
  ranges: Array<{ offset: number; length: number }>,
): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (const p of pieces) {
    for (const r of ranges) {
      const a = Math.max(p.offset, r.offset);
      const z = Math.min(p.offset + p.length, r.offset + r.length);
      if (a < z) out.push({ offset: a, length: z - a });
    }
  }
  out.sort((x, y) => x.offset - y.offset);
  const merged: Array<{ offset: number; length: number }> = [];
  for (const p of out) {
    const last = merged[merged.length - 1];
    if (last && p.offset <= last.offset + last.length) last.length = Math.max(last.length, p.offset + p.length - last.offset);
    else merged.push({ ...p });
  }
  return merged;
}
