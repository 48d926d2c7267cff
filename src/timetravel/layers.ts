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
 * LMDB (DATA_DIR/timetravel/index):
 *   views   name -> ViewRecord (the daemon's snapshots and clones)
 *   layers  id -> LayerRecord
 *   blocks  [layerId, block] -> true  (blocks a layer holds, committed at flush)
 *   meta    'nextLayerId'
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { fallocateSync, fdatasync, isNotSupported, mapExtentsRaw, nativeAvailable } from '../native';
import { RangeLock } from '../journal/range-lock';
import { preadFully } from '../util/fd-cache';
import type { ImageSource } from './point-image';
import type { ResolvedPoint } from './point';
import type { MarkerRecord, Schedule } from './markers';

export interface LayerRecord {
  id: number;
  /** Absolute path of the sparse layer file. */
  file: string;
  size: number;
  blockSize: number;
  /** Frozen layers are shared by clones and never written again. */
  frozen: boolean;
  created: string;
}

export interface ViewRecord {
  name: string;
  /** diff: the image of `point` restricted to what changed since `from` (see diff.ts). */
  kind: 'snapshot' | 'clone' | 'diff';
  /** The protected volume whose history it reads. */
  volume: string;
  group: string;
  volumeId: number;
  size: number;
  point: ResolvedPoint;
  /** For a clone of a clone: the clone it was made from. */
  parent: string | null;
  /** Write layers, bottom first; a clone's last one is its writable top. Empty for a snapshot. */
  layers: number[];
  readOnly: boolean;
  created: string;
  /** Steps taken (snapshots and unwritten clones can be stepped). */
  steps: number;
  /** Set for a surfaced marker (rewind surface): the marker's name. */
  surfaced?: string;
  /** For a diff export: the earlier point. */
  from?: ResolvedPoint;
  /** Its own access list (allow entries); absent: the source volume's. */
  allow?: string[];
  /** Set when its base is an archived point (archive:NAME), not the journal: the point's name. */
  archive?: string;
}

type BlockKey = [number, number];

export interface RestoreIntentRecord {
  volume: string;
  seq: number;
  ranges: Array<{ offset: number; length: number }> | null;
  undoSeq: number | null;
  started: string;
  archive?: string;
}

export class ViewStore {
  private constructor(
    readonly dir: string,
    private readonly root: RootDatabase,
    private readonly viewsDb: Database<ViewRecord, string>,
    private readonly layersDb: Database<LayerRecord, number>,
    private readonly blocksDb: Database<boolean, BlockKey>,
    private readonly meta: Database<unknown, string>,
    private readonly markersDb: Database<MarkerRecord, [string, string]>,
    private readonly schedulesDb: Database<Schedule, string>,
  ) {}

  static open(dir: string): ViewStore {
    fs.mkdirSync(path.join(dir, 'layers'), { recursive: true, mode: 0o700 });
    const root = open({ path: path.join(dir, 'index'), maxDbs: 8 });
    return new ViewStore(
      dir,
      root,
      root.openDB<ViewRecord, string>('views', {}),
      root.openDB<LayerRecord, number>('layers', {}),
      root.openDB<boolean, BlockKey>('blocks', {}),
      root.openDB<unknown, string>('meta', {}),
      root.openDB<MarkerRecord, [string, string]>('markers', {}),
      root.openDB<Schedule, string>('schedules', {}),
    );
  }

  // ---- markers (see markers.ts) ----

  marker(group: string, name: string): MarkerRecord | undefined {
    return this.markersDb.get([group, name]);
  }

  markers(group?: string): MarkerRecord[] {
    const range = group === undefined ? {} : { start: [group, ''] as [string, string], end: [group + '\u0000', ''] as [string, string] };
    return [...this.markersDb.getRange(range)].map((e) => e.value).filter((m) => group === undefined || m.group === group);
  }

  /** Adds a marker unless the name is taken in its group (then false). */
  async addMarker(m: MarkerRecord): Promise<boolean> {
    const ok = await this.markersDb.transaction(() => {
      if (this.markersDb.get([m.group, m.name]) !== undefined) return false;
      void this.markersDb.put([m.group, m.name], m);
      return true;
    });
    return ok;
  }

  async removeMarkers(keys: Array<[string, string]>): Promise<void> {
    await this.root.transaction(() => {
      for (const k of keys) void this.markersDb.remove(k);
    });
  }

  schedules(): Schedule[] {
    return [...this.schedulesDb.getRange({})].map((e) => e.value);
  }

  schedule(volume: string): Schedule | undefined {
    return this.schedulesDb.get(volume);
  }

  async putSchedule(s: Schedule | null, volume: string): Promise<void> {
    if (s) await this.schedulesDb.put(volume, s);
    else await this.schedulesDb.remove(volume);
    await this.root.flushed;
  }

  views(): ViewRecord[] {
    return [...this.viewsDb.getRange({})].map((e) => e.value);
  }

  view(name: string): ViewRecord | undefined {
    return this.viewsDb.get(name);
  }

  layer(id: number): LayerRecord | undefined {
    return this.layersDb.get(id);
  }

  layers(): LayerRecord[] {
    return [...this.layersDb.getRange({})].map((e) => e.value);
  }

  /** Blocks committed to a layer, ascending. */
  layerBlocks(id: number): number[] {
    const out: number[] = [];
    for (const { key } of this.blocksDb.getRange({ start: [id, 0], end: [id + 1, 0] })) out.push(key[1]);
    return out;
  }

  /** Creates the sparse file of a new layer and returns its record (not yet stored). */
  async newLayer(size: number, blockSize: number): Promise<LayerRecord> {
    const id = await this.root.transaction(() => {
      const n = (this.meta.get('nextLayerId') as number | undefined) ?? 1;
      void this.meta.put('nextLayerId', n + 1);
      return n;
    });
    const file = path.join(this.dir, 'layers', `layer-${id}.raw`);
    const fh = await fs.promises.open(file, 'w', 0o600);
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return { id, file, size, blockSize, frozen: false, created: new Date().toISOString() };
  }

  /** Stores views and layers (and deletes others) in one transaction. */
  async put(change: { views?: ViewRecord[]; layers?: LayerRecord[]; removeViews?: string[]; removeLayers?: number[] }): Promise<void> {
    await this.root.transaction(() => {
      for (const v of change.views ?? []) void this.viewsDb.put(v.name, v);
      for (const l of change.layers ?? []) void this.layersDb.put(l.id, l);
      for (const n of change.removeViews ?? []) void this.viewsDb.remove(n);
      for (const id of change.removeLayers ?? []) {
        void this.layersDb.remove(id);
        for (const { key } of this.blocksDb.getRange({ start: [id, 0], end: [id + 1, 0] })) void this.blocksDb.remove(key);
      }
    });
    await this.root.flushed;
  }

  /** Sets (or with null, clears, optionally logging the result) the volume's restore intent. */
  async putRestoreIntent(intent: RestoreIntentRecord | null, volume?: string, result?: unknown): Promise<void> {
    await this.root.transaction(() => {
      if (intent) void this.meta.put(`restore:${intent.volume}`, intent);
      else {
        void this.meta.remove(`restore:${volume}`);
        if (result) {
          const n = ((this.meta.get('restoreCount') as number | undefined) ?? 0) + 1;
          void this.meta.put('restoreCount', n);
          void this.meta.put(`restored:${String(n).padStart(10, '0')}`, result);
        }
      }
    });
    await this.root.flushed;
  }

  restoreIntents(): RestoreIntentRecord[] {
    return [...this.meta.getRange({ start: 'restore:', end: 'restore;' })].map((e) => e.value as RestoreIntentRecord);
  }

  restoreLog<T = never>(): T[] {
    return [...this.meta.getRange({ start: 'restored:', end: 'restored;' })].map((e) => e.value as T);
  }

  async commitBlocks(id: number, blocks: Iterable<number>): Promise<void> {
    await this.root.transaction(() => {
      for (const b of blocks) void this.blocksDb.put([id, b], true);
    });
    await this.root.flushed;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

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
