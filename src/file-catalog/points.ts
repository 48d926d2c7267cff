/**
 * What the catalog needs of time travel, through its public services:
 * points resolved the way every command resolves them (a point inside a
 * super transaction or merged history is refused, naming the nearest valid
 * ones), the image at a point (PointImage), the blocks changed between two
 * points (diff.ts changedRuns), and pins that keep a point readable while a
 * build or a restore reads it.
 */
import type { FsImage } from '../fs';
import { changedRuns } from '../timetravel/diff';
import type { ResolvedPoint } from '../timetravel/point';
import { PointImage } from '../timetravel/point-image';
import type { PointInfo, TimeTravel, VolumeContext } from '../timetravel/service';
import type { OtherPoint, VolumeRuns } from './build';

export interface Resolved {
  point: ResolvedPoint;
  info: PointInfo;
  ctx: VolumeContext;
}

let pinCounter = 0;

export class PointAccess {
  constructor(readonly tt: TimeTravel) {}

  /** For reading the image at a point (may wait for the manager to catch up). */
  resolve(volume: string, at: unknown, nearest?: unknown): Promise<Resolved> {
    return this.tt.points.resolve(volume, at, nearest === undefined ? {} : { nearest });
  }

  /** Which write a point names, never sealing (queries of the catalog). */
  resolveInfo(volume: string, at: unknown, nearest?: unknown): Promise<PointInfo> {
    return this.tt.points.resolveInfo(volume, at, nearest === undefined ? {} : { nearest });
  }

  /** Pins a point (retention keeps it) until the returned function is called. */
  pin(r: Resolved, why: string): () => void {
    const holder = `file-catalog:${why}:${++pinCounter}`;
    r.ctx.history.pins.pin(holder, r.point.overlay ?? r.point.k, r.point.overlay !== null);
    return () => r.ctx.history.pins.unpin(holder);
  }

  image(r: Resolved): Promise<FsImage> {
    return PointImage.open(r.ctx.history, r.ctx.volumeId, r.ctx.size, r.point);
  }

  /** Changed block runs between two resolved points of one volume, in either order. */
  changed(a: Resolved, b: Resolved): Promise<VolumeRuns> {
    const [x, y] = a.point.seq <= b.point.seq ? [a, b] : [b, a];
    if (x.point.seq === y.point.seq) return Promise.resolve([]);
    return changedRuns(a.ctx.history, a.ctx.volumeId, x.point, y.point);
  }

  /**
   * Another point of the volume as a build sees it (lazily resolved;
   * pinned while its image is read; `unpins` collects what to release).
   */
  other(volume: string, built: Resolved, seq: number, unpins: Array<() => void>): OtherPoint {
    let r: Promise<Resolved> | null = null;
    const resolved = (): Promise<Resolved> => (r ??= this.resolve(volume, `@seq:${seq}`));
    return {
      seq,
      changed: async () => this.changed(await resolved(), built),
      image: async () => {
        const o = await resolved();
        unpins.push(this.pin(o, 'base'));
        return this.image(o);
      },
    };
  }
}
