/**
 * The persistent state map: one bit per region of a volume, set when a
 * region is written and cleared when the backup manager has committed the
 * transaction holding the region's latest write (MISSION glossary).
 *
 * File layout (little-endian):
 *   0  u8[8]  magic "RWSMAP\0" + format version (1)
 *   8  u32    region size, bytes (a power of two)
 *  12  u32    reserved (0)
 *  16  u64    volume size, bytes
 *  24  u64    region count = ceil(volume size / region size)
 *  32  u8[28] reserved (0)
 *  60  u32    CRC-32 of bytes 0..59
 *  64  bitmap: ceil(region count / 8) bytes; region r is bit (r & 7) of
 *      byte (r >> 3).
 * The file is created under a temporary name and renamed into place, so it
 * always has a complete header and bitmap.
 *
 * Crash safety: markDirty() writes the bytes whose bits went 0→1 with a
 * synchronous pwrite before it returns, so a process crash right after
 * cannot lose them (the page cache survives kill -9); sync() makes them
 * survive a machine crash. Clearing is lazy in the sense that losing a clear
 * is harmless (the region is merely resynced again).
 *
 * In memory: the bitmap itself, plus the latest seq of every region dirtied
 * since open. Small volumes (≤ 2M regions) keep that in a Float64Array;
 * large ones in a Map of dirty regions, switching to a Float64Array only
 * while a large share of the volume is dirty (then the array is the smaller
 * of the two). Regions found dirty on disk at open() are "loaded": their
 * latest seq is unknown (+Infinity) until adoptLoaded() gives them one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from '../util/crc32';
import { tooNew } from '../util/format-version';

export const STATE_MAP_MAGIC = Buffer.from('RWSMAP\x00\x01', 'latin1');
export const STATE_MAP_HEADER_SIZE = 64;
export const DEFAULT_REGION_SIZE = 65536;

/** Volumes with at most this many regions always use the flat seq array (16 MiB). */
const FLAT_ALWAYS = 2 * 1024 * 1024;
/** Largest region count supported (bitmap 512 MiB). */
const MAX_REGIONS = 2 ** 32;
/** Bitmap pages written back by clear operations. */
const PAGE = 4096;

const TWO32 = 4294967296;

const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >>> 1];

export interface StateMapOptions {
  volumeSize: number;
  regionSize?: number;
}

export class StateMapGeometryError extends Error {
  readonly code = 'ERR_STATE_MAP_GEOMETRY';
  constructor(message: string) {
    super(message);
    this.name = 'StateMapGeometryError';
  }
}

function encodeHeader(regionSize: number, volumeSize: number, regionCount: number): Buffer {
  const b = Buffer.alloc(STATE_MAP_HEADER_SIZE);
  STATE_MAP_MAGIC.copy(b, 0);
  b.writeUInt32LE(regionSize, 8);
  b.writeUInt32LE(volumeSize >>> 0, 16);
  b.writeUInt32LE(Math.floor(volumeSize / TWO32), 20);
  b.writeUInt32LE(regionCount >>> 0, 24);
  b.writeUInt32LE(Math.floor(regionCount / TWO32), 28);
  b.writeUInt32LE(crc32(b.subarray(0, 60)), 60);
  return b;
}

function readU64(b: Buffer, o: number): number {
  return b.readUInt32LE(o + 4) * TWO32 + b.readUInt32LE(o);
}

function writeFull(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const n = fs.writeSync(fd, buf, off + done, len - done, pos + done);
    if (n <= 0) throw Object.assign(new Error('state map write made no progress'), { code: 'EIO' });
    done += n;
  }
}

function readFull(fd: number, buf: Buffer, pos: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

export class StateMap {
  readonly path: string;
  readonly regionSize: number;
  readonly regionCount: number;
  readonly volumeSize: number;

  private fd: number;
  private readonly bitmap: Buffer;
  private dirty = 0;

  /** Latest seq per region, sparse (large volumes while few regions are dirty). */
  private seqMap: Map<number, number> | null = null;
  /** Latest seq + 1 per region, 0 = none recorded (small volumes, or many dirty regions). */
  private seqArr: Float64Array | null = null;
  /** Regions with their bit set but no recorded seq: loaded from disk at open(). */
  private loaded = 0;
  /** The seq adoptLoaded() gave the loaded regions (+Infinity until then). */
  private loadedSeq = Infinity;

  private scratch = new Uint8Array(64);
  private closed = false;
  /** Regions clearCommitted() must leave dirty (content unknown after a failed write), with a count per region. */
  private readonly pins = new Map<number, number>();

  private constructor(filePath: string, fd: number, regionSize: number, volumeSize: number, regionCount: number, bitmap: Buffer) {
    this.path = filePath;
    this.fd = fd;
    this.regionSize = regionSize;
    this.volumeSize = volumeSize;
    this.regionCount = regionCount;
    this.bitmap = bitmap;
    if (regionCount <= FLAT_ALWAYS) this.seqArr = new Float64Array(regionCount);
    else this.seqMap = new Map();
    let n = 0;
    for (let i = 0; i < bitmap.length; i++) n += POPCOUNT[bitmap[i]];
    this.dirty = n;
    this.loaded = n;
  }

  /**
   * Create or open the bitmap file. An existing file must have the same
   * geometry (region size and volume size) or StateMapGeometryError is
   * thrown; a corrupt or short file throws too.
   */
  static async open(filePath: string, opts: StateMapOptions): Promise<StateMap> {
    const regionSize = opts.regionSize ?? DEFAULT_REGION_SIZE;
    const volumeSize = opts.volumeSize;
    if (!Number.isInteger(regionSize) || regionSize < 512 || regionSize > 2 ** 30 || (regionSize & (regionSize - 1)) !== 0) {
      throw new RangeError(`state map region size ${regionSize} is not a power of two between 512 and 1 GiB`);
    }
    if (!Number.isSafeInteger(volumeSize) || volumeSize < 0) throw new RangeError(`bad volume size ${volumeSize}`);
    const regionCount = Math.ceil(volumeSize / regionSize);
    if (regionCount > MAX_REGIONS) throw new RangeError(`volume of ${volumeSize} bytes has too many ${regionSize}-byte regions`);
    const bitmapBytes = Math.ceil(regionCount / 8);
    const fileSize = STATE_MAP_HEADER_SIZE + bitmapBytes;

    let fd: number;
    try {
      fd = fs.openSync(filePath, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await createFile(filePath, encodeHeader(regionSize, volumeSize, regionCount), fileSize);
      fd = fs.openSync(filePath, 'r+');
    }
    try {
      const hb = Buffer.alloc(STATE_MAP_HEADER_SIZE);
      const got = readFull(fd, hb, 0);
      if (got < STATE_MAP_HEADER_SIZE) throw new Error(`state map ${filePath}: file too short (${got} bytes)`);
      if (!hb.subarray(0, 8).equals(STATE_MAP_MAGIC)) {
        // The magic's last byte is the format version.
        if (hb.subarray(0, 7).equals(STATE_MAP_MAGIC.subarray(0, 7))) throw tooNew('the state map', filePath, hb[7], STATE_MAP_MAGIC[7]!);
        throw new Error(`state map ${filePath}: bad magic`);
      }
      if (hb.readUInt32LE(60) !== crc32(hb.subarray(0, 60))) throw new Error(`state map ${filePath}: header CRC mismatch`);
      const fRegion = hb.readUInt32LE(8);
      const fVolume = readU64(hb, 16);
      const fCount = readU64(hb, 24);
      if (fRegion !== regionSize || fVolume !== volumeSize || fCount !== regionCount) {
        throw new StateMapGeometryError(
          `state map ${filePath} is for a ${fVolume}-byte volume with ${fRegion}-byte regions (${fCount} regions), ` +
            `not a ${volumeSize}-byte volume with ${regionSize}-byte regions`,
        );
      }
      const bitmap = Buffer.alloc(bitmapBytes);
      const n = readFull(fd, bitmap, STATE_MAP_HEADER_SIZE);
      if (n < bitmapBytes) throw new Error(`state map ${filePath}: bitmap truncated (${n} of ${bitmapBytes} bytes)`);
      // Bits past the last region must be clear.
      const tail = regionCount & 7;
      if (tail !== 0 && bitmapBytes > 0) bitmap[bitmapBytes - 1] &= (1 << tail) - 1;
      return new StateMap(filePath, fd, regionSize, volumeSize, regionCount, bitmap);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /**
   * Mark [offset, offset+length) dirty with `seq` as the latest write to
   * each region. Bits that change 0→1 are written to the file (synchronous
   * pwrite, no fsync) before this returns. Throws (and changes nothing) if
   * that write fails or the range is outside the volume.
   */
  markDirty(offset: number, length: number, seq: number): void {
    if (length <= 0) return;
    if (this.closed) throw new Error(`state map ${this.path} is closed`);
    if (!(offset >= 0) || offset + length > this.volumeSize) {
      throw new RangeError(`state map: range ${offset}+${length} outside the ${this.volumeSize}-byte volume`);
    }
    const rs = this.regionSize;
    const first = Math.floor(offset / rs);
    const last = Math.floor((offset + length - 1) / rs);
    const bm = this.bitmap;
    const b0 = first >>> 3;
    const b1 = last >>> 3;

    // Regions loaded dirty that this write re-dirties get a real seq now.
    let adopted = 0;
    if (this.loaded > 0) adopted = this.countLoaded(first, last);

    // Set bits, remembering the old bytes in case the write fails.
    if (this.scratch.length < b1 - b0 + 1) this.scratch = new Uint8Array(b1 - b0 + 1);
    const old = this.scratch;
    let lo = -1;
    let hi = -1;
    let added = 0;
    for (let i = b0; i <= b1; i++) {
      const from = i === b0 ? first & 7 : 0;
      const to = i === b1 ? last & 7 : 7;
      const mask = (0xff << from) & (0xff >>> (7 - to)) & 0xff;
      const v = bm[i];
      old[i - b0] = v;
      if ((v & mask) !== mask) {
        if (lo < 0) lo = i;
        hi = i;
        added += POPCOUNT[mask & ~v & 0xff];
        bm[i] = v | mask;
      }
    }
    if (lo >= 0) {
      try {
        writeFull(this.fd, bm, lo, hi - lo + 1, STATE_MAP_HEADER_SIZE + lo);
      } catch (err) {
        for (let i = lo; i <= hi; i++) bm[i] = old[i - b0];
        throw err;
      }
      this.dirty += added;
    }
    this.loaded -= adopted;

    // Latest seq per region.
    if (this.seqMap !== null) {
      if (this.seqMap!.size + (last - first + 1) > this.regionCount / 8) this.toFlat();
    }
    if (this.seqArr === null) {
      const m = this.seqMap!;
      for (let r = first; r <= last; r++) {
        const cur = m.get(r);
        if (cur === undefined || cur < seq) m.set(r, seq);
      }
    } else {
      const arr = this.seqArr;
      const v = seq + 1;
      for (let r = first; r <= last; r++) if (arr[r] < v) arr[r] = v;
    }
  }

  /** fdatasync the bitmap file. */
  sync(): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`state map ${this.path} is closed`));
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  /**
   * Clear every region whose latest seq is <= committedSeq (regions written
   * again later stay dirty); loaded regions only once adoptLoaded() gave
   * them a seq <= committedSeq. Writes the changed bitmap pages (no fsync).
   * Returns how many bits were cleared.
   */
  clearCommitted(committedSeq: number): number {
    if (this.closed) return 0;
    const bm = this.bitmap;
    const pages = new Set<number>();
    let cleared = 0;
    const c1 = committedSeq + 1;
    if (this.seqArr !== null) {
      const arr = this.seqArr;
      const clearLoaded = this.loaded > 0 && this.loadedSeq <= committedSeq;
      // Walk the set bits only.
      for (let i = 0; i < bm.length; i++) {
        const v = bm[i];
        if (v === 0) continue;
        let nv = v;
        for (let bit = 0; bit < 8; bit++) {
          if (!(v & (1 << bit))) continue;
          const r = i * 8 + bit;
          const s = arr[r];
          if ((s === 0 ? clearLoaded : s <= c1) && !(this.pins.size > 0 && this.pins.has(r))) {
            nv &= ~(1 << bit);
            if (s === 0) this.loaded--;
            arr[r] = 0;
          }
        }
        if (nv !== v) {
          cleared += POPCOUNT[v & ~nv & 0xff];
          bm[i] = nv;
          pages.add(Math.floor(i / PAGE));
        }
      }
    } else {
      const m = this.seqMap!;
      for (const [r, s] of m) {
        if (s <= committedSeq && !(this.pins.size > 0 && this.pins.has(r))) {
          m.delete(r);
          const i = r >>> 3;
          bm[i] &= ~(1 << (r & 7));
          cleared++;
          pages.add(Math.floor(i / PAGE));
        }
      }
      if (this.loaded > 0 && this.loadedSeq <= committedSeq) {
        for (let i = 0; i < bm.length; i++) {
          const v = bm[i];
          if (v === 0) continue;
          let nv = v;
          for (let bit = 0; bit < 8; bit++) {
            if (v & (1 << bit) && !m.has(i * 8 + bit) && !this.pins.has(i * 8 + bit)) nv &= ~(1 << bit);
          }
          if (nv !== v) {
            const n = POPCOUNT[v & ~nv & 0xff];
            cleared += n;
            this.loaded -= n;
            bm[i] = nv;
            pages.add(Math.floor(i / PAGE));
          }
        }
      }
    }
    this.dirty -= cleared;
    this.writePages(pages);
    this.maybeToSparse();
    return cleared;
  }

  /**
   * Keep the regions of [offset, offset+length) dirty whatever commits
   * (until unpin()): their production content is not known to be in the
   * journal. They must already be marked dirty. Pins nest.
   */
  pin(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.regionSize);
    const last = Math.floor((offset + length - 1) / this.regionSize);
    for (let r = first; r <= last; r++) this.pins.set(r, (this.pins.get(r) ?? 0) + 1);
  }

  unpin(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.regionSize);
    const last = Math.floor((offset + length - 1) / this.regionSize);
    for (let r = first; r <= last; r++) {
      const n = this.pins.get(r) ?? 0;
      if (n <= 1) this.pins.delete(r);
      else this.pins.set(r, n - 1);
    }
  }

  /** Regions pinned dirty. */
  pinnedCount(): number {
    return this.pins.size;
  }

  /**
   * After a resync of the regions loaded dirty at open() (crash recovery),
   * record `seq` as their latest seq, so that clearCommitted(≥ seq) clears
   * them.
   */
  adoptLoaded(seq: number): void {
    this.loadedSeq = seq;
  }

  /** Clear every region still marked dirty from before open() now (no seq check). Returns the count. */
  clearLoaded(): number {
    if (this.closed || this.loaded === 0) return 0;
    const n = this.clearLoadedOnly();
    this.maybeToSparse();
    return n;
  }

  /**
   * Clear every region that lies wholly inside [offset, offset+length),
   * whatever its seq (e.g. after the range was resynced or discarded).
   * Returns how many bits were cleared.
   */
  clearRange(offset: number, length: number): number {
    if (this.closed || length <= 0) return 0;
    const rs = this.regionSize;
    const end = Math.min(offset + length, this.volumeSize);
    const first = Math.ceil(offset / rs);
    // The last region may be partial (volume end): it counts as whole if the range reaches the volume end.
    const last = end === this.volumeSize ? this.regionCount - 1 : Math.floor(end / rs) - 1;
    const bm = this.bitmap;
    const pages = new Set<number>();
    let cleared = 0;
    for (let r = first; r <= last; r++) {
      const i = r >>> 3;
      const bit = 1 << (r & 7);
      if (!(bm[i] & bit)) continue;
      bm[i] &= ~bit;
      cleared++;
      pages.add(Math.floor(i / PAGE));
      if (this.seqArr !== null) {
        if (this.seqArr[r] === 0) this.loaded--;
        this.seqArr[r] = 0;
      } else if (!this.seqMap!.delete(r)) {
        this.loaded--;
      }
    }
    this.dirty -= cleared;
    this.writePages(pages);
    this.maybeToSparse();
    return cleared;
  }

  isDirty(offset: number): boolean {
    const r = Math.floor(offset / this.regionSize);
    if (!(r >= 0 && r < this.regionCount)) return false;
    return (this.bitmap[r >>> 3] & (1 << (r & 7))) !== 0;
  }

  /** Number of dirty regions. */
  dirtyCount(): number {
    return this.dirty;
  }

  /** Dirty regions still waiting for adoptLoaded()/clearLoaded() (dirty at open, not written since). */
  loadedCount(): number {
    return this.loaded;
  }

  /**
   * Dirty regions as coalesced byte ranges, ascending (the last one clipped
   * to the volume size). With `minSeq`, only regions whose latest write has
   * a seq >= minSeq (or is unknown: loaded at open), e.g. the writes of a
   * degraded stretch that began at minSeq.
   */
  dirtyRanges(minSeq?: number): Array<{ offset: number; length: number }> {
    const out: Array<{ offset: number; length: number }> = [];
    const bm = this.bitmap;
    const rs = this.regionSize;
    let start = -1;
    const n = this.regionCount;
    const all = minSeq === undefined;
    for (let i = 0; i < bm.length; i++) {
      const v = bm[i];
      if (v === 0 && start < 0) continue;
      if (v === 0xff && start >= 0 && all) continue;
      for (let bit = 0; bit < 8; bit++) {
        const r = i * 8 + bit;
        if (r >= n) break;
        const set = (v & (1 << bit)) !== 0 && (all || this.latestSeq(r) >= minSeq);
        if (set && start < 0) start = r;
        else if (!set && start >= 0) {
          out.push({ offset: start * rs, length: (r - start) * rs });
          start = -1;
        }
      }
    }
    if (start >= 0) {
      const off = start * rs;
      out.push({ offset: off, length: this.volumeSize - off });
    }
    return out;
  }

  /** The latest seq recorded for a dirty region; +Infinity when it was loaded dirty at open (unknown). */
  private latestSeq(r: number): number {
    if (this.seqArr !== null) {
      const s = this.seqArr[r]!;
      return s === 0 ? Infinity : s - 1;
    }
    return this.seqMap!.get(r) ?? Infinity;
  }

  /** Flush nothing (writes are synchronous), close the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const fd = this.fd;
    this.fd = -1;
    await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
  }

  // -- internals ------------------------------------------------------------

  /** Regions in [first, last] whose bit is set but that have no recorded seq. */
  private countLoaded(first: number, last: number): number {
    const bm = this.bitmap;
    let n = 0;
    if (this.seqArr !== null) {
      const arr = this.seqArr;
      for (let r = first; r <= last; r++) if (bm[r >>> 3] & (1 << (r & 7)) && arr[r] === 0) n++;
    } else {
      const m = this.seqMap!;
      for (let r = first; r <= last; r++) if (bm[r >>> 3] & (1 << (r & 7)) && !m.has(r)) n++;
    }
    return n;
  }

  private clearLoadedOnly(): number {
    const bm = this.bitmap;
    const pages = new Set<number>();
    let cleared = 0;
    for (let i = 0; i < bm.length; i++) {
      const v = bm[i];
      if (v === 0) continue;
      let nv = v;
      for (let bit = 0; bit < 8; bit++) {
        if (!(v & (1 << bit))) continue;
        const r = i * 8 + bit;
        const recorded = this.seqArr !== null ? this.seqArr[r] !== 0 : this.seqMap!.has(r);
        if (!recorded) nv &= ~(1 << bit);
      }
      if (nv !== v) {
        cleared += POPCOUNT[v & ~nv & 0xff];
        bm[i] = nv;
        pages.add(Math.floor(i / PAGE));
      }
    }
    this.loaded -= cleared;
    this.dirty -= cleared;
    this.writePages(pages);
    return cleared;
  }

  /** Write back the given bitmap pages, merging adjacent ones. */
  private writePages(pages: Set<number>): void {
    if (pages.size === 0) return;
    const list = [...pages].sort((a, b) => a - b);
    const bm = this.bitmap;
    let i = 0;
    while (i < list.length) {
      let j = i;
      while (j + 1 < list.length && list[j + 1] === list[j] + 1) j++;
      const from = list[i] * PAGE;
      const to = Math.min((list[j] + 1) * PAGE, bm.length);
      writeFull(this.fd, bm, from, to - from, STATE_MAP_HEADER_SIZE + from);
      i = j + 1;
    }
  }

  /** Map → array when the map would be the bigger of the two. */
  private toFlat(): void {
    const arr = new Float64Array(this.regionCount);
    for (const [r, s] of this.seqMap!) arr[r] = s + 1;
    this.seqMap = null;
    this.seqArr = arr;
  }

  /** Array → map again once few regions are dirty (large volumes only). */
  private maybeToSparse(): void {
    if (this.seqArr === null || this.regionCount <= FLAT_ALWAYS) return;
    if (this.dirty - this.loaded > this.regionCount / 32) return;
    const m = new Map<number, number>();
    const arr = this.seqArr;
    const bm = this.bitmap;
    for (let i = 0; i < bm.length; i++) {
      const v = bm[i];
      if (v === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const r = i * 8 + bit;
        if (v & (1 << bit) && arr[r] !== 0) m.set(r, arr[r] - 1);
      }
    }
    this.seqArr = null;
    this.seqMap = m;
  }
}

/** Write header + zero bitmap under a temporary name, fsync, rename into place, fsync the directory. */
async function createFile(filePath: string, header: Buffer, size: number): Promise<void> {
  const tmp = `${filePath}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    writeFull(fd, header, 0, header.length, 0);
    fs.ftruncateSync(fd, size);
    await new Promise<void>((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  } finally {
    fs.closeSync(fd);
  }
  try {
    // link() refuses to replace a file another opener created meanwhile.
    fs.linkSync(tmp, filePath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
  }
  fs.rmSync(tmp, { force: true });
  const dfd = fs.openSync(path.dirname(filePath), 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}
