/**
 * Questions about a stretch of history: the diff between two points (as a
 * list, an export, or a file), the candidates of a bisect, and a virtual
 * full backup (an image file of any point).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors';
import { RecordKind } from '../lfc';
import { txnRecords, type ResolvedPoint } from './point';
import { PointImage, STATUS_BLOCKS } from './point-image';
import { changedRuns, runsToExtents, writeDiffFile, type Extent } from './diff';
import type { PointInfo, Progress } from './api';
import type { PointService } from './points';
import type { VolumeContext } from './ports';
import type { ViewService } from './views';
import { pinPoint } from './view-records';
import { archivePointName } from './archive-image';
import { archiveDiff, openPoint } from './archive-points';

/** Export reads and writes at most this much at once. */
const EXPORT_CHUNK = 1 << 20;

export class HistoryQueries {
  constructor(
    private readonly points: PointService,
    private readonly views: ViewService,
  ) {}

  private async twoPoints(
    volume: string,
    from: unknown,
    to: unknown,
    what: [string, string],
    nearest?: unknown,
  ): Promise<{ a: ResolvedPoint; b: ResolvedPoint; ctx: VolumeContext }> {
    if (from === undefined || from === null || from === '') throw new UserError('invalid', `${what[0]} POINT is required`);
    if (to === undefined || to === null || to === '') throw new UserError('invalid', `${what[1]} POINT is required`);
    const { point: a, ctx } = await this.points.resolve(volume, from, { nearest });
    const { point: b } = await this.points.resolve(volume, to, { nearest });
    if (a.seq >= b.seq) {
      throw new UserError(
        'invalid',
        `${what[0]} (@seq:${a.seq}, ${new Date(a.time).toISOString()}) must come before ${what[1]} (@seq:${b.seq}, ${new Date(b.time).toISOString()})`,
      );
    }
    return { a, b, ctx };
  }

  /**
   * `rewind diff VOL --from A --to B`: the 4 KiB-block extents any write of
   * VOL touched between A (exclusive) and B, from the index. With `name`
   * also a read-only export of B reporting only those extents as data; with
   * `out` also a diff file (format in diff.ts).
   */
  async diff(
    volume: string,
    body: { from?: unknown; to?: unknown; name?: unknown; out?: unknown; nearest?: unknown },
    progress: (p: Progress) => void = () => undefined,
  ): Promise<{
    from: PointInfo;
    to: PointInfo;
    blockSize: number;
    extents: Extent[];
    changedBytes: number;
    export: string | null;
    file: string | null;
    fileBytes: number | null;
  }> {
    if (body.out !== undefined && (typeof body.out !== 'string' || !path.isAbsolute(body.out)))
      throw new UserError('invalid', 'out must be an absolute file path');
    if (typeof body.out === 'string' && fs.existsSync(body.out))
      throw new UserError('conflict', `${body.out} already exists; choose a new file name`);
    if (archivePointName(body.from) !== null || archivePointName(body.to) !== null)
      return archiveDiff(this.points, this.views, volume, body, progress);
    const { a, b, ctx } = await this.twoPoints(volume, body.from, body.to, ['--from', '--to'], body.nearest);
    const holder = `diff:${process.hrtime.bigint()}`;
    pinPoint(ctx.history, holder, a);
    pinPoint(ctx.history, `${holder}:to`, b);
    try {
      const runs = await changedRuns(ctx.history, ctx.volumeId, a, b);
      const bs = ctx.history.blockSize;
      const extents = runsToExtents(runs, bs, ctx.size);
      const changedBytes = extents.reduce((x, e) => x + e.length, 0);
      let exportName: string | null = null;
      if (body.name !== undefined && body.name !== null && body.name !== '') {
        exportName = await this.views.addDiffView(String(body.name), volume, ctx, a, b);
      }
      let file: string | null = null;
      let fileBytes: number | null = null;
      if (typeof body.out === 'string') {
        const img = await PointImage.open(ctx.history, ctx.volumeId, ctx.size, b);
        const r = await writeDiffFile(body.out, img, extents, { from: a, to: b }, (done, total) =>
          progress({ phase: 'diff file', done, total }),
        );
        file = body.out;
        fileBytes = r.fileBytes;
      }
      return {
        from: this.points.pointInfo(ctx.group, a),
        to: this.points.pointInfo(ctx.group, b),
        blockSize: bs,
        extents,
        changedBytes,
        export: exportName,
        file,
        fileBytes,
      };
    } finally {
      ctx.history.pins.unpin(holder);
      ctx.history.pins.unpin(`${holder}:to`);
    }
  }

  /**
   * The points a bisect searches between good and bad: every write of the
   * volume (granularity write) or every transaction end (transaction) in
   * (good, bad], ending with bad itself.
   */
  async bisectCandidates(
    volume: string,
    body: { good?: unknown; bad?: unknown; granularity?: unknown; nearest?: unknown },
  ): Promise<{ good: PointInfo; bad: PointInfo; granularity: string; candidates: number[] }> {
    const g = body.granularity ?? 'write';
    if (g !== 'write' && g !== 'transaction')
      throw new UserError('invalid', `granularity must be write or transaction, not ${JSON.stringify(g)}`);
    const { a, b, ctx } = await this.twoPoints(volume, body.good, body.bad, ['the good point', 'the bad point'], body.nearest);
    const out: number[] = [];
    for (let n = a.overlay ?? a.k; n <= b.txn; n++) {
      const t = ctx.history.transaction(n);
      if (!t || t.records === 0) continue;
      if (g === 'transaction' || t.mergedFrom !== undefined) {
        if (t.lastSeq > a.seq && t.lastSeq < b.seq) out.push(t.lastSeq);
        continue;
      }
      for (const r of await txnRecords(ctx.history, n)) {
        if (r.volumeId === ctx.volumeId && r.kind !== RecordKind.Error && r.seq > a.seq && r.seq < b.seq) out.push(r.seq);
      }
    }
    out.push(b.seq);
    return { good: this.points.pointInfo(ctx.group, a), bad: this.points.pointInfo(ctx.group, b), granularity: g, candidates: out };
  }

  /** Writes a sparse raw image of the volume at a point to `out` (a new file). */
  async exportImage(
    volume: string,
    at: unknown,
    out: unknown,
    progress: (p: Progress) => void = () => undefined,
    opts: { nearest?: unknown } = {},
  ): Promise<{ file: string; point: PointInfo; size: number; dataBytes: number; durationMs: number }> {
    const t0 = Date.now();
    if (typeof out !== 'string' || !path.isAbsolute(out)) throw new UserError('invalid', 'out must be an absolute file path');
    if (fs.existsSync(out)) throw new UserError('conflict', `${out} already exists; choose a new file name`);
    if (!fs.existsSync(path.dirname(out))) throw new UserError('invalid', `directory ${path.dirname(out)} does not exist`);
    const { img, info, ctx, release } = await openPoint(this.points, this.views, volume, at, 'export', opts);
    const tmp = `${out}.partial`;
    try {
      const fh = await fs.promises.open(tmp, 'w', 0o600);
      let dataBytes = 0;
      try {
        await fh.truncate(ctx.size);
        const bs = img.blockSize;
        const nblocks = Math.ceil(ctx.size / bs);
        for (let b = 0; b < nblocks; b += STATUS_BLOCKS) {
          const count = Math.min(STATUS_BLOCKS, nblocks - b);
          const map = await img.zeroMap(b, count);
          for (let i = 0; i < count;) {
            if (map[i]) {
              i++;
              continue;
            }
            let j = i + 1;
            while (j < count && !map[j] && j - i < EXPORT_CHUNK / bs) j++;
            const start = (b + i) * bs;
            const end = Math.min(ctx.size, (b + j) * bs);
            const data = await img.read(start, end - start);
            await fh.write(data, 0, data.length, start);
            dataBytes += data.length;
            i = j;
          }
          progress({ phase: 'export', done: Math.min(ctx.size, (b + count) * bs), total: ctx.size });
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.promises.rename(tmp, out);
      return { file: out, point: info, size: ctx.size, dataBytes, durationMs: Date.now() - t0 };
    } catch (err) {
      await fs.promises.rm(tmp, { force: true });
      throw err;
    } finally {
      release();
    }
  }
}
