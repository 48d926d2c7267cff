/**
 * A volume's image at a point in history, read without copying anything:
 *
 *   image(point) = image before T_k            (BackupManager.readBefore:
 *                                               the block index, BILFCs and
 *                                               the replicated image)
 *                + AILFC_k's records of this volume with seq <= point.seq,
 *                  in seq order               (the overlay, when the point
 *                                               lies inside T_k)
 *
 * Both parts are immutable once T_k is committed, so a PointImage stays the
 * same while the volume takes writes and the manager applies transactions.
 */
import { RecordKind, RECORD_HEADER_SIZE } from '../lfc';
import { FdCache, preadFully } from '../util/fd-cache';
import { STATE_HOLE, STATE_ZERO, type Extent } from '../nbd';
import { txnRecords, type PointHistory, type ResolvedPoint, type TxnRecord } from './point';

/** What a PointImage reads from: the group's backup manager. */
export interface ImageHistory extends PointHistory {
  readonly blockSize: number;
  /** The manager's descriptor cache (retention closes files in it before deleting them). */
  readonly fds?: FdCache;
  readBefore(volumeId: number, offset: number, length: number, k: number, into?: Buffer): Promise<Buffer>;
  /** Throws (EIO, naming it) if T_n's stored container is known to be damaged (a scrub found it). */
  checkReadable?(kind: 'ailfc' | 'bilfc', n: number): void;
  zeroMapBefore(volumeId: number, first: number, count: number, k: number): Promise<Uint8Array>;
}

/** Anything that reads as a disk image: a point in history, or a clone's layers over one. */
export interface ImageSource {
  readonly size: number;
  readonly blockSize: number;
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** 1 per block that reads as zero and holds no data (a hole), 0 for data. */
  zeroMap(first: number, count: number): Promise<Uint8Array>;
}

/** For histories without a descriptor cache of their own (tests). */
const localFds = new FdCache(64);

/** Overlay chunk size for finding the records that touch a range. */
const CHUNK = 1 << 20;

export class TxnOverlay {
  private readonly byChunk = new Map<number, number[]>();

  private constructor(
    readonly file: string,
    private readonly recs: TxnRecord[],
    private readonly fds: FdCache,
  ) {
    recs.forEach((r, i) => {
      const a = Math.floor(r.offset / CHUNK);
      const z = Math.floor((r.offset + r.length - 1) / CHUNK);
      for (let c = a; c <= z; c++) {
        let l = this.byChunk.get(c);
        if (!l) this.byChunk.set(c, (l = []));
        l.push(i);
      }
    });
  }

  /** AILFC_n's image-changing records of `volumeId` with seq <= maxSeq. */
  static async load(h: PointHistory, n: number, volumeId: number, maxSeq: number): Promise<TxnOverlay> {
    // Its payloads are read without their CRCs (a record may be read in part): a damaged AILFC is refused whole.
    (h as ImageHistory).checkReadable?.('ailfc', n);
    const all = await txnRecords(h, n);
    const recs = all.filter(
      (r) =>
        r.volumeId === volumeId &&
        r.seq <= maxSeq &&
        r.length > 0 &&
        (r.kind === RecordKind.Write || r.kind === RecordKind.Resync || r.kind === RecordKind.Trim || r.kind === RecordKind.Zero),
    );
    return new TxnOverlay(h.historyFile('ailfc', n), recs, (h as ImageHistory).fds ?? localFds);
  }

  get records(): number {
    return this.recs.length;
  }

  /** Indexes of records touching [offset, offset+length), in seq order. */
  private touching(offset: number, length: number): number[] {
    const a = Math.floor(offset / CHUNK);
    const z = Math.floor((offset + length - 1) / CHUNK);
    const set = new Set<number>();
    for (let c = a; c <= z; c++) for (const i of this.byChunk.get(c) ?? []) set.add(i);
    const out: number[] = [];
    for (const i of set) {
      const r = this.recs[i]!;
      if (r.offset < offset + length && offset < r.offset + r.length) out.push(i);
    }
    return out.sort((x, y) => x - y);
  }

  /** Paints the records over buf, which holds [offset, offset+length) of the image before T_n. */
  async apply(offset: number, length: number, buf: Buffer): Promise<void> {
    const hits = this.touching(offset, length);
    if (!hits.length) return;
    const fd = this.fds.acquire(this.file);
    try {
      for (const i of hits) {
        const r = this.recs[i]!;
        const from = Math.max(offset, r.offset);
        const to = Math.min(offset + length, r.offset + r.length);
        if (r.kind === RecordKind.Write || r.kind === RecordKind.Resync) {
          await preadFully(fd, buf, from - offset, to - from, r.position + RECORD_HEADER_SIZE + (from - r.offset));
        } else {
          buf.fill(0, from - offset, to - offset);
        }
      }
    } finally {
      this.fds.release(this.file, fd);
    }
  }

  /** Adjusts a zero map of blocks first.. (see ImageSource.zeroMap). */
  paintZeroMap(first: number, map: Uint8Array, blockSize: number, size: number): void {
    const offset = first * blockSize;
    const length = Math.min(size, (first + map.length) * blockSize) - offset;
    for (const i of this.touching(offset, length)) {
      const r = this.recs[i]!;
      const data = r.kind === RecordKind.Write || r.kind === RecordKind.Resync;
      const a = Math.max(first, Math.floor(r.offset / blockSize));
      const z = Math.min(first + map.length - 1, Math.floor((r.offset + r.length - 1) / blockSize));
      for (let b = a; b <= z; b++) {
        if (data) map[b - first] = 0;
        else {
          // Zeroing a whole block makes it a hole; a partial one leaves it as it was.
          const bEnd = Math.min((b + 1) * blockSize, size);
          if (r.offset <= b * blockSize && r.offset + r.length >= bEnd) map[b - first] = 1;
        }
      }
    }
  }
}

export class PointImage implements ImageSource {
  readonly blockSize: number;

  private constructor(
    private readonly history: ImageHistory,
    readonly volumeId: number,
    readonly size: number,
    readonly point: ResolvedPoint,
    private readonly overlay: TxnOverlay | null,
  ) {
    this.blockSize = history.blockSize;
  }

  static async open(history: ImageHistory, volumeId: number, size: number, point: ResolvedPoint): Promise<PointImage> {
    const overlay = point.overlay === null ? null : await TxnOverlay.load(history, point.overlay, volumeId, point.seq);
    return new PointImage(history, volumeId, size, point, overlay);
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = await this.history.readBefore(this.volumeId, offset, length, this.point.k, into);
    if (this.overlay) await this.overlay.apply(offset, length, buf);
    return buf;
  }

  async zeroMap(first: number, count: number): Promise<Uint8Array> {
    const map = await this.history.zeroMapBefore(this.volumeId, first, count, this.point.k);
    if (this.overlay) this.overlay.paintZeroMap(first, map, this.blockSize, this.size);
    return map;
  }
}

/** Most blocks one block-status answer looks at. */
export const STATUS_BLOCKS = 4096;

/** base:allocation extents from an ImageSource's zero map, starting at `offset`. */
export async function imageExtents(src: ImageSource, offset: number, length: number): Promise<Extent[]> {
  const bs = src.blockSize;
  const first = Math.floor(offset / bs);
  const lastWanted = Math.floor((Math.min(src.size, offset + length) - 1) / bs);
  const count = Math.min(STATUS_BLOCKS, lastWanted - first + 1);
  const map = await src.zeroMap(first, count);
  const out: Extent[] = [];
  let pos = offset;
  for (let i = 0; i < count;) {
    let j = i + 1;
    while (j < count && map[j] === map[i]) j++;
    const end = Math.min(src.size, (first + j) * bs);
    if (end > pos) out.push({ length: end - pos, flags: map[i] ? STATE_HOLE | STATE_ZERO : 0 });
    pos = end;
    i = j;
  }
  return out;
}
