/**
 * Archived points as time-travel images. A point is named `archive:NAME`
 * wherever a point is taken (snapshot, clone, export, restore, diff); its
 * data comes from the archive pool, not the journal, so it stays readable
 * after retention has faded the history it came from.
 *
 * TimeTravel only sees the ArchiveImages interface; the archiver
 * (archiver.ts) implements it over src/archive.
 */
import type { ArchivedVolume } from '../archive';
import { UserError } from '../util/errors';
import type { PointInfo } from './api';
import type { ResolvedPoint } from './point';
import type { ImageSource } from './point-image';

export const ARCHIVE_PREFIX = 'archive:';

/** The NAME of an `archive:NAME` point, or null for any other point. */
export function archivePointName(at: unknown): string | null {
  if (typeof at !== 'string' || !at.startsWith(ARCHIVE_PREFIX)) return null;
  const name = at.slice(ARCHIVE_PREFIX.length);
  if (!name) throw new UserError('invalid', 'archive: needs a point name (archive:NAME; see rewind archive list)');
  return name;
}

/** What time travel needs to know of one volume of an archived point. */
export interface ArchiveRef {
  point: string;
  volume: string;
  size: number;
  /** The journal seq and time it was taken at (null if unknown). */
  seq: number | null;
  time: number | null;
}

export interface ArchiveImages {
  /** Volume `volume` of archived point `point`; a UserError if either is unknown. */
  ref(point: string, volume: string): ArchiveRef;
  /** Opens it as an image with `blockSize` blocks; close() releases it. */
  open(point: string, volume: string, blockSize: number): ArchiveImage;
  /** Extents where two archived points of `volume` may differ (pruned walk of both trees). */
  diff(a: string, b: string, volume: string): Promise<Array<{ offset: number; length: number }>>;
}

/** An ImageSource over an archived volume (reads and block status through its tree). */
export class ArchiveImage implements ImageSource {
  constructor(
    private readonly av: ArchivedVolume,
    readonly blockSize: number,
  ) {}

  get size(): number {
    return this.av.size;
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const data = await this.av.read(offset, Math.max(0, Math.min(length, this.av.size - offset)));
    if (!into && data.length === length) return data;
    const out = into ?? Buffer.alloc(length);
    data.copy(out);
    out.fill(0, data.length, length);
    return out;
  }

  async zeroMap(first: number, count: number): Promise<Uint8Array> {
    const bs = this.blockSize;
    const map = new Uint8Array(count);
    const off = first * bs;
    const len = Math.min(this.av.size, (first + count) * bs) - off;
    if (len <= 0) return map.fill(1);
    for (const e of await this.av.allocation(off, len)) {
      if (!e.zero) continue;
      // Only blocks wholly inside a zero extent are holes.
      const a = Math.ceil(e.offset / bs);
      const z = e.offset + e.length >= this.av.size ? Math.ceil((e.offset + e.length) / bs) : Math.floor((e.offset + e.length) / bs);
      for (let b = Math.max(a, first); b < Math.min(z, first + count); b++) map[b - first] = 1;
    }
    return map;
  }

  close(): void {
    this.av.close();
  }
}

/** A view's point when its base is an archived point (no transaction: k 0 is never pinned). */
export function archiveResolved(ref: ArchiveRef, volumeId: number): ResolvedPoint {
  const seq = ref.seq ?? 0;
  const time = ref.time ?? 0;
  return { seq, time, txn: 0, k: 0, overlay: null, write: { seq, time, volumeId, kind: 'write', offset: 0, length: 0, restore: false } };
}

export function archivePointInfo(name: string, p: ResolvedPoint, volume: string): PointInfo {
  return {
    seq: p.seq,
    time: new Date(p.time).toISOString(),
    txn: 0,
    write: { ...p.write, volume },
    description: `archived point ${name} (taken at seq ${p.seq}, ${new Date(p.time).toISOString()})`,
  };
}

/** An archived point's size must match the volume it is used for. */
export function checkArchiveSize(ref: ArchiveRef, size: number): void {
  if (ref.size !== size)
    throw new UserError('conflict', `archived point ${ref.point} holds ${ref.volume} at ${ref.size} bytes, but the volume now has ${size}`);
}
