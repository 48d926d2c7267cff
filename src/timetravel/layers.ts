/**
 * Clones: a point in history plus write layers, the three-level hierarchy
 * of seed 001 [1153]: the replicated image, the read-only journal (history:
 * BILFCs and AILFCs, read through a PointImage) and the clone's own
 * read/write journal (its write layers). Clone writes never touch the
 * replicated image or the history.
 *
 * A write layer is a sparse file the size of the volume plus the set of
 * blocks it holds, kept in LMDB. A block in the set reads from the layer
 * file (a hole there reads as zero: a trimmed or zeroed block); any other
 * block reads from the layer below, and at the bottom from the point in
 * history. Partial-block writes read the rest of the block from below
 * first, so the layer always holds whole blocks.
 *
 * Durability: a write goes to the layer file; FLUSH (or FUA) fdatasyncs the
 * file and only then commits the new blocks to LMDB. A crash loses only
 * unflushed writes, and never exposes a block whose data is not durable.
 *
 * A clone of a clone freezes the parent's top layer (now shared, read-only)
 * and gives the parent and the child each a fresh top layer, so nothing is
 * copied.
 *
 * Their records are kept by ViewStore (store.ts).
 */
import * as fs from 'node:fs';
import { fallocateSync, fdatasync, isNotSupported, mapExtentsRaw, nativeAvailable } from '../native';
import { RangeLock } from '../journal/range-lock';
import { preadFully } from '../util/fd-cache';
import type { ImageSource } from './point-image';
import type { LayerRecord, ViewStore } from './store';

/** One write layer: its file and the set of blocks it holds. */
export class WriteLayer {
  private readonly bits: Uint8Array;
  /** Written since the last flush: committed to LMDB by flush(). */
  private pending = new Set<number>();
  private flushing: Promise<void> | null = null;

  private constructor(
    private readonly store: ViewStore,
    readonly record: LayerRecord,
    readonly fd: number,
  ) {
    this.bits = new Uint8Array(Math.ceil(Math.ceil(record.size / record.blockSize) / 8));
  }

  static open(store: ViewStore, record: LayerRecord): WriteLayer {
    const fd = fs.openSync(record.file, record.frozen ? 'r' : 'r+');
    const l = new WriteLayer(store, record, fd);
    for (const b of store.layerBlocks(record.id)) l.bits[b >> 3]! |= 1 << (b & 7);
    return l;
  }

  get id(): number {
    return this.record.id;
  }

  has(b: number): boolean {
    return (this.bits[b >> 3]! & (1 << (b & 7))) !== 0;
  }

  /** Blocks held (committed or pending). */
  count(): number {
    let n = 0;
    for (const byte of this.bits) for (let x = byte; x; x &= x - 1) n++;
    return n;
  }

  mark(first: number, count: number): void {
    for (let b = first; b < first + count; b++) {
      this.bits[b >> 3]! |= 1 << (b & 7);
      this.pending.add(b);
    }
  }

  /** Data durable first, then the block set. */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.record.frozen) return;
    const batch = this.pending;
    this.pending = new Set();
    this.flushing = (async () => {
      try {
        await fdatasync(this.fd);
        if (batch.size) await this.store.commitBlocks(this.record.id, batch);
      } catch (err) {
        for (const b of batch) this.pending.add(b);
        throw err;
      }
    })();
    try {
      await this.flushing;
    } finally {
      this.flushing = null;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

let punchWorks = nativeAvailable();

/**
 * A clone's image: write layers (bottom first) over a base image. The top
 * layer takes writes unless the image is read-only.
 */
export class LayeredImage implements ImageSource {
  readonly size: number;
  readonly blockSize: number;
  private readonly locks = new RangeLock();

  constructor(
    readonly base: ImageSource,
    readonly layers: WriteLayer[],
    readonly readOnly: boolean,
  ) {
    this.size = base.size;
    this.blockSize = base.blockSize;
  }

  private get top(): WriteLayer {
    const t = this.layers[this.layers.length - 1];
    if (!t || this.readOnly) throw Object.assign(new Error('this image is read-only'), { code: 'EPERM' });
    return t;
  }

  /** Index of the topmost layer holding block b among layers[0..below), or -1 for the base. */
  private holder(b: number, below = this.layers.length): number {
    for (let i = below - 1; i >= 0; i--) if (this.layers[i]!.has(b)) return i;
    return -1;
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.readBelow(offset, length, this.layers.length, into);
  }

  /** Reads as seen through layers[0..below) and the base. */
  private async readBelow(offset: number, length: number, below: number, into?: Buffer): Promise<Buffer> {
    const out = into && into.length === length ? into : Buffer.allocUnsafe(length);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const jobs: Promise<unknown>[] = [];
    let i = first;
    while (i <= last) {
      const h = this.holder(i, below);
      let j = i + 1;
      while (j <= last && this.holder(j, below) === h) j++;
      const from = Math.max(offset, i * bs);
      const to = Math.min(offset + length, j * bs);
      const slice = out.subarray(from - offset, to - offset);
      if (h < 0) jobs.push(this.base.read(from, to - from, slice).then((b) => b !== slice && b.copy(slice)));
      else jobs.push(preadFully(this.layers[h]!.fd, slice, 0, to - from, from));
      i = j;
    }
    await Promise.all(jobs);
    return out;
  }

  async zeroMap(first: number, count: number): Promise<Uint8Array> {
    const map = await this.base.zeroMap(first, count);
    const bs = this.blockSize;
    for (let li = 0; li < this.layers.length; li++) {
      const layer = this.layers[li]!;
      // Blocks whose topmost holder is this layer: data unless the layer file has a hole there.
      let i = 0;
      while (i < count) {
        if (this.holder(first + i) !== li) {
          i++;
          continue;
        }
        let j = i + 1;
        while (j < count && this.holder(first + j) === li) j++;
        const start = (first + i) * bs;
        const end = Math.min(this.size, (first + j) * bs);
        for (let b = i; b < j; b++) map[b] = 0;
        const raw = await mapExtentsRaw(layer.fd, start, end - start, this.size, 1 << 16);
        let pos = start;
        for (let e = 0; e < raw.length && pos < end; e += 2) {
          const len = raw[e]!;
          if (raw[e + 1] === 0) {
            for (let b = Math.ceil(pos / bs); Math.min((b + 1) * bs, this.size) <= pos + len && b < first + j; b++) {
              if (b - first >= i) map[b - first] = 1;
            }
          }
          pos += len;
        }
        i = j;
      }
    }
    return map;
  }

  /**
   * Writes data (or zeroes when data is null) at offset in the top layer.
   * Partial blocks the top layer does not hold yet are filled from below.
   */
  async write(offset: number, data: Buffer | null, length: number): Promise<void> {
    const top = this.top;
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const start = first * bs;
    const end = Math.min(this.size, (last + 1) * bs);
    const lock = this.locks.acquire(start, end - start);
    try {
      if (lock.wait) await lock.wait;
      const below = this.layers.length - 1;
      if (data === null) {
        // Whole blocks: punch them out of the layer (they read as zero); edges: write zeroes.
        const wholeA = offset === start ? first : first + 1;
        const endsAtBlock = offset + length === end;
        const wholeZ = endsAtBlock ? last : last - 1;
        if (wholeZ >= wholeA && punchWorks) {
          const a = wholeA * bs;
          const z = Math.min(this.size, (wholeZ + 1) * bs);
          try {
            fallocateSync(top.fd, 'punch', a, z - a);
            top.mark(wholeA, wholeZ - wholeA + 1);
            if (wholeA > first) await this.writeRange(top, below, offset, null, a - offset);
            if (wholeZ < last) await this.writeRange(top, below, z, null, offset + length - z);
            return;
          } catch (err) {
            if (!isNotSupported(err)) throw err;
            punchWorks = false;
          }
        }
      }
      await this.writeRange(top, below, offset, data, length);
    } finally {
      lock.release();
    }
  }

  private async writeRange(top: WriteLayer, below: number, offset: number, data: Buffer | null, length: number): Promise<void> {
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const start = first * bs;
    const end = Math.min(this.size, (last + 1) * bs);
    let buf: Buffer;
    if (offset === start && offset + length === end && data) {
      buf = data;
    } else {
      buf = Buffer.alloc(end - start);
      // Edges not already in the top layer come from below; those in it from the layer itself.
      for (const b of new Set([first, last])) {
        const bStart = b * bs;
        const bEnd = Math.min(this.size, bStart + bs);
        const covered = offset <= bStart && offset + length >= bEnd;
        if (covered) continue;
        const slice = buf.subarray(bStart - start, bEnd - start);
        if (top.has(b)) await preadFully(top.fd, slice, 0, bEnd - bStart, bStart);
        else await this.readBelow(bStart, bEnd - bStart, below, slice);
      }
      if (data) data.copy(buf, offset - start, 0, length);
      else buf.fill(0, offset - start, offset - start + length);
    }
    await writeAll(top.fd, buf, start);
    top.mark(first, last - first + 1);
  }

  async flush(): Promise<void> {
    if (this.readOnly || !this.layers.length) return;
    await this.layers[this.layers.length - 1]!.flush();
  }
}

function writeAll(fd: number, buf: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let off = 0;
    const step = (): void => {
      fs.write(fd, buf, off, buf.length - off, position + off, (err, n) => {
        if (err) return reject(err);
        off += n;
        if (off >= buf.length) resolve();
        else step();
      });
    };
    step();
  });
}
