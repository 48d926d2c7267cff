/**
 * Commands that read a point which may be an archived one (archive:NAME):
 * export and diff open either a PointImage (the point pinned) or an
 * ArchiveImage through the same call.
 */
import { UserError } from '../util/errors';
import type { PointInfo, Progress } from './api';
import { archivePointInfo, archivePointName, archiveResolved, checkArchiveSize } from './archive-image';
import type { Extent } from './diff';
import { PointImage, type ImageSource } from './point-image';
import type { PointService } from './points';
import type { VolumeContext } from './ports';
import { pinPoint } from './view-records';
import type { ViewService } from './views';

export interface OpenedPoint {
  img: ImageSource;
  info: PointInfo;
  ctx: VolumeContext;
  release: () => void;
}

/** The image of a volume at a point of its history or at an archived point, held until release(). */
export async function openPoint(
  points: PointService,
  views: ViewService,
  volume: string,
  at: unknown,
  what: string,
  opts: { nearest?: unknown } = {},
): Promise<OpenedPoint> {
  const archive = archivePointName(at);
  if (archive !== null) {
    const ctx = points.context(volume);
    const ref = views.archiveImages().ref(archive, volume);
    checkArchiveSize(ref, ctx.size);
    const img = views.archiveImages().open(archive, volume, ctx.history.blockSize);
    return { img, info: archivePointInfo(archive, archiveResolved(ref, ctx.volumeId), volume), ctx, release: () => img.close() };
  }
  const { point, info, ctx } = await points.resolve(volume, at, opts);
  const holder = `${what}:${process.hrtime.bigint()}`;
  pinPoint(ctx.history, holder, point);
  try {
    const img = await PointImage.open(ctx.history, ctx.volumeId, ctx.size, point);
    return { img, info, ctx, release: () => ctx.history.pins.unpin(holder) };
  } catch (err) {
    ctx.history.pins.unpin(holder);
    throw err;
  }
}

/**
 * `rewind diff` with an archived point at either end. Two archived points:
 * a pruned walk of both trees (equal subtrees are skipped; extents are
 * leaf-aligned). An archived point and a journal point: both images are
 * compared block by block (holes on both sides are skipped unread), since
 * the journal need not reach back to the archived point.
 */
export async function archiveDiff(
  points: PointService,
  views: ViewService,
  volume: string,
  body: { from?: unknown; to?: unknown; name?: unknown; out?: unknown; nearest?: unknown },
  progress: (p: Progress) => void,
): Promise<{
  from: PointInfo;
  to: PointInfo;
  blockSize: number;
  extents: Extent[];
  changedBytes: number;
  export: null;
  file: null;
  fileBytes: null;
}> {
  if ((body.name !== undefined && body.name !== null && body.name !== '') || body.out !== undefined) {
    throw new UserError('invalid', 'a diff with an archived point lists extents only (--export and --out need two journal points)');
  }
  if (body.from === undefined || body.from === null || body.from === '') throw new UserError('invalid', '--from POINT is required');
  if (body.to === undefined || body.to === null || body.to === '') throw new UserError('invalid', '--to POINT is required');
  const a = await openPoint(points, views, volume, body.from, 'diff', { nearest: body.nearest });
  try {
    const b = await openPoint(points, views, volume, body.to, 'diff', { nearest: body.nearest });
    try {
      const an = archivePointName(body.from);
      const bn = archivePointName(body.to);
      const extents =
        an !== null && bn !== null
          ? await views.archiveImages().diff(an, bn, volume)
          : await compareImages(a.img, b.img, (done, total) => progress({ phase: 'compare', done, total }));
      const changedBytes = extents.reduce((x, e) => x + e.length, 0);
      return {
        from: a.info,
        to: b.info,
        blockSize: a.ctx.history.blockSize,
        extents,
        changedBytes,
        export: null,
        file: null,
        fileBytes: null,
      };
    } finally {
      b.release();
    }
  } finally {
    a.release();
  }
}

const COMPARE_WINDOW = 1 << 20;

/** Block extents where two images of one size differ (merged); holes on both sides are not read. */
async function compareImages(a: ImageSource, b: ImageSource, progress: (done: number, total: number) => void): Promise<Extent[]> {
  const bs = a.blockSize;
  const out: Extent[] = [];
  const add = (offset: number, length: number): void => {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length });
  };
  const perWindow = COMPARE_WINDOW / bs;
  const nblocks = Math.ceil(a.size / bs);
  for (let first = 0; first < nblocks; first += perWindow) {
    const count = Math.min(perWindow, nblocks - first);
    const [za, zb] = await Promise.all([a.zeroMap(first, count), b.zeroMap(first, count)]);
    if (za.every((x, i) => x === 1 && zb[i] === 1)) continue;
    const off = first * bs;
    const len = Math.min(a.size, (first + count) * bs) - off;
    const [da, db] = await Promise.all([a.read(off, len), b.read(off, len)]);
    for (let i = 0; i < count; i++) {
      const x = i * bs;
      const y = Math.min(len, x + bs);
      if (!da.subarray(x, y).equals(db.subarray(x, y))) add(off + x, y - x);
    }
    progress(off + len, a.size);
  }
  return out;
}
