/**
 * The history reader of one consistency group: the read side of the backup
 * manager, which time travel, diffs, restores and retention read through.
 *
 *   image before T_k (readBefore, zeroMapBefore): for each block, the
 *     before-image in BILFC_m of the first committed T_m (m >= k) that
 *     touched it (block index), else the BILFC of the transaction being
 *     applied, else the replica; AILFC_k's records overlay it (records()).
 *   changed runs (changedSince, transactionRuns): what transactions touched.
 *   pins (pins.ts): the points retention must keep.
 *
 * The applier (backup-manager.ts) tells it when the replica is about to
 * change (beginApply: readers of untouched blocks go to the new BILFC, and
 * replica reads already started finish first) and when the commit is
 * visible (endApply, in the same tick).
 */
import * as path from 'node:path';
import { FdCache, preadFully } from '../util/fd-cache';
import { mapExtentsRaw } from '../native';
import { RECORD_FLAG_ZERO, RECORD_HEADER_SIZE, containerFileName, decodeRecordHeader, readRecords } from '../lfc';
import type { ManagerCatalog, VolumeEntry } from './catalog';
import { blockLength, unpackBeforeBlocks } from './plan';
import { Pins } from './pins';
import type { DamageRegistry } from './damage';
import type { BlockRun, TransactionRecord, TxnRecord } from './types';

/** Sealed AILFCs whose record headers are kept in memory. */
const RECORD_CACHE_MAX = 16;

interface InFlight {
  n: number;
  runs: BlockRun[];
  bilfcPath: string;
}

export class HistoryReader {
  /** Descriptors of history files and replicas; retention closes a file here before deleting it. */
  readonly fds = new FdCache(256);
  readonly pins: Pins;
  /**
   * Per volume, per block: the last committed transaction that touched it
   * (0: none). A read of block b before T_k needs the block index only if
   * lastTouch[b] >= k; otherwise the replica (or the transaction being
   * applied) holds it. Built from the "runs" index at open, updated in the
   * same tick as each commit becomes visible.
   */
  private readonly lastTouch = new Map<number, Uint32Array>();
  private lastTouchReliable = true;
  private inflight: InFlight | null = null;
  private readonly replicaReads = new Set<Promise<unknown>>();
  private readonly recordCache = new Map<string, Promise<TxnRecord[]>>();
  /** Set by retention around a merge's commit: historyFile() does not cache meanwhile. */
  private fadeCommitting = false;

  constructor(
    private readonly catalog: ManagerCatalog,
    readonly blockSize: number,
    readonly historyDir: string,
    readonly replicaDir: string,
    /** The group's volumes (owned by the manager, which adds them). */
    private readonly volumes: ReadonlyMap<number, VolumeEntry>,
    checkPin: (k: number, overlay: boolean) => void,
    /** What scrubs found damaged: reads that need it refuse (EIO). */
    readonly damage: DamageRegistry,
  ) {
    this.pins = new Pins(catalog, checkPin);
  }

  /** Size of a volume of the group (undefined: not in the group). */
  volumeSize(volumeId: number): number | undefined {
    return this.volumes.get(volumeId)?.size;
  }

  replicaPath(volumeId: number): string {
    return path.join(this.replicaDir, `vol-${volumeId}.raw`);
  }

  /** The applied pointer: the last committed transaction, its last seq and time. */
  status(): { lastContainer: number; lastSeq: number; lastTime: number; firstContainer: number } {
    const a = this.catalog.applied();
    return {
      lastContainer: a.lastContainer,
      lastSeq: a.lastSeq,
      lastTime: a.lastTime,
      firstContainer: this.catalog.config()!.firstContainer,
    };
  }

  transaction(n: number): TransactionRecord | undefined {
    return this.catalog.transaction(n);
  }

  transactions(opts?: { from?: number; to?: number; limit?: number }): TransactionRecord[] {
    return this.catalog.transactions(opts);
  }

  /** The committed transaction whose AILFC holds seq p. */
  transactionForSeq(p: number): number | undefined {
    return this.catalog.transactionForSeq(p);
  }

  /** Record headers of AILFC_n, cached (sealed containers never change). */
  records(n: number): Promise<TxnRecord[]> {
    const file = this.historyFile('ailfc', n);
    let p = this.recordCache.get(file);
    if (p) {
      this.recordCache.delete(file);
      this.recordCache.set(file, p);
      return p;
    }
    p = (async () => {
      const out: TxnRecord[] = [];
      for await (const r of readRecords(file, { payloads: false })) {
        out.push({
          seq: r.seq,
          time: r.time,
          kind: r.kind,
          flags: r.flags,
          volumeId: r.volumeId,
          offset: r.offset,
          length: r.length,
          position: r.position,
        });
      }
      return out;
    })();
    p.catch(() => this.recordCache.delete(file));
    this.recordCache.set(file, p);
    while (this.recordCache.size > RECORD_CACHE_MAX) this.recordCache.delete(this.recordCache.keys().next().value!);
    return p;
  }

  /** A history file was removed or replaced (retention): drop what is cached of it. */
  forgetFile(file: string): void {
    this.recordCache.delete(file);
    this.fds.forget(file);
  }

  /** Around a merge's commit by retention: file names are not cached meanwhile. */
  committing(on: boolean): void {
    this.fadeCommitting = on;
    this.fileNames.clear();
  }

  /** File names of committed transactions (a merge by retention may rename them); see historyFile. */
  private readonly fileNames = new Map<number, { ailfc: string; bilfc: string }>();

  /**
   * Path of T_n's stored container as the catalog records it (retention may
   * have merged T_n and written it under a new name). For an uncommitted n,
   * the default name. Call forgetFileNames() after changing records.
   */
  historyFile(kind: 'ailfc' | 'bilfc', n: number): string {
    let names = this.fadeCommitting ? undefined : this.fileNames.get(n);
    if (!names) {
      const rec = this.catalog.transaction(n);
      if (!rec) return this.historyPath(kind, n);
      names = { ailfc: rec.ailfc.file, bilfc: rec.bilfc.file };
      if (this.fileNames.size > 100_000) this.fileNames.clear();
      // While retention commits a merge, a name must come from the same index snapshot as its position.
      if (!this.fadeCommitting) this.fileNames.set(n, names);
    }
    return path.join(this.historyDir, names[kind]);
  }

  forgetFileNames(): void {
    this.fileNames.clear();
  }

  /** The default path of AILFC_n / BILFC_n (where the apply writes them). */
  historyPath(kind: 'ailfc' | 'bilfc', n: number): string {
    return path.join(this.historyDir, containerFileName(kind, n));
  }

  /**
   * The content of block `blockIndex` of volume `volumeId` at T_{k-1}, i.e.
   * just before AILFC_k was applied (k = lastContainer + 1: the replica as it
   * is now). The image at seq p in AILFC_k is this, for every block,
   * overlaid with AILFC_k's records of seq <= p (history/ailfc-k.lfc).
   *
   * Lookup: the smallest committed m >= k that touched the block (one LMDB
   * range read) → its before-image in BILFC_m; else, if the transaction
   * being applied right now touches it, its before-image in that BILFC
   * (sealed before the replica is touched); else the replica, which no
   * transaction from k on has changed there. Replica reads are tracked, and
   * an apply waits for the ones that started before it, so a read never
   * sees a half-applied block.
   */
  readBlockBefore(volumeId: number, blockIndex: number, k: number): Promise<Buffer> {
    const v = this.volumes.get(volumeId);
    if (!v) return Promise.reject(new RangeError(`unknown volume ${volumeId}`));
    const nblocks = Math.ceil(v.size / this.blockSize);
    if (!Number.isInteger(blockIndex) || blockIndex < 0 || blockIndex >= nblocks) {
      return Promise.reject(new RangeError(`block ${blockIndex} is outside volume ${volumeId}`));
    }
    try {
      return this.readBefore(volumeId, blockIndex * this.blockSize, blockLength(blockIndex, this.blockSize, v.size), k);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private touchArray(volumeId: number): Uint32Array | undefined {
    let a = this.lastTouch.get(volumeId);
    if (!a) {
      const v = this.volumes.get(volumeId);
      if (!v) return undefined;
      a = new Uint32Array(Math.ceil(v.size / this.blockSize));
      this.lastTouch.set(volumeId, a);
    }
    return a;
  }

  /** Records that T_n touched these runs (for the time-travel fast path). */
  private noteTouched(n: number, runs: Array<{ volumeId: number; start: number; count: number }>): void {
    for (const r of runs) {
      const a = this.touchArray(r.volumeId);
      if (!a) continue;
      for (let b = r.start; b < r.start + r.count && b < a.length; b++) if (a[b]! < n) a[b] = n;
    }
  }

  private buildLastTouch(): void {
    this.lastTouch.clear();
    this.lastTouchReliable = true;
    // In chunks: a million records read at once would be held in memory together (GBs, seconds of GC).
    const CHUNK = 8192;
    for (let from = 0; ;) {
      const recs = this.catalog.transactions({ from, limit: CHUNK });
      for (const rec of recs) {
        const runs = this.catalog.runs(rec.n);
        // A transaction committed without its runs (an older index): no fast path.
        if (rec.blocks > 0 && runs.length === 0) this.lastTouchReliable = false;
        this.noteTouched(rec.n, runs);
      }
      if (recs.length < CHUNK) break;
      from = recs[recs.length - 1]!.n + 1;
    }
  }

  /**
   * Where each block first..first+count-1 of volume `volumeId` was at
   * T_{k-1}: a BeforeBlock record (file, position) or the replica (file
   * null). Synchronous, so the caller can start replica reads in the same
   * tick (see readBefore).
   */
  private blockSources(volumeId: number, first: number, count: number, k: number): Array<{ file: string | null; position: number }> {
    const inf = this.inflight;
    const touched = this.lastTouchReliable ? this.lastTouch.get(volumeId) : undefined;
    const out = new Array<{ file: string | null; position: number }>(count);
    for (let i = 0; i < count; i++) {
      const b = first + i;
      // No committed transaction from k on touched b: skip the index lookup.
      const src = touched && touched[b]! < k ? undefined : this.catalog.beforeBlockSource(volumeId, b, k);
      if (src) {
        out[i] = { file: this.historyFile('bilfc', src.n), position: src.position };
        continue;
      }
      if (inf && inf.n >= k) {
        const pos = runPosition(inf.runs, volumeId, b, this.blockSize);
        if (pos !== undefined) {
          out[i] = { file: inf.bilfcPath, position: pos };
          continue;
        }
      }
      out[i] = { file: null, position: b * this.blockSize };
    }
    return out;
  }

  private checkRange(volumeId: number, offset: number, length: number, k: number): VolumeEntry {
    const v = this.volumes.get(volumeId);
    if (!v) throw new RangeError(`unknown volume ${volumeId}`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > v.size) {
      throw new RangeError(`range ${offset}+${length} is outside volume ${volumeId} (${v.size} bytes)`);
    }
    const first = this.catalog.config()!.firstContainer;
    const next = this.catalog.nextContainer();
    if (!Number.isInteger(k) || k < first || k > next)
      throw new RangeError(`T_${k - 1} is not available (transactions ${first}..${next - 1} are committed)`);
    return v;
  }

  /** Groups consecutive blocks whose sources are adjacent in one file. */
  private segments(
    srcs: Array<{ file: string | null; position: number }>,
  ): Array<{ i: number; count: number; file: string | null; position: number }> {
    const segs: Array<{ i: number; count: number; file: string | null; position: number }> = [];
    const stride = RECORD_HEADER_SIZE + this.blockSize;
    for (let i = 0; i < srcs.length; i++) {
      const s = srcs[i]!;
      const last = segs[segs.length - 1];
      if (last && last.file === s.file && s.position === last.position + last.count * (s.file === null ? this.blockSize : stride)) {
        last.count++;
      } else {
        segs.push({ i, count: 1, file: s.file, position: s.position });
      }
    }
    return segs;
  }

  /**
   * Bytes [offset, offset+length) of volume `volumeId` as they were at
   * T_{k-1} (k = lastContainer + 1: as the replica is now, yet stable while
   * later transactions are applied). Before-images are checked against
   * their CRCs. The same lookup as readBlockBefore, for a whole range, with
   * adjacent blocks read together and descriptors cached. Blocks a scrub
   * found damaged are refused (DamagedError, EIO) unless `unchecked`.
   */
  readBefore(volumeId: number, offset: number, length: number, k: number, into?: Buffer, unchecked = false): Promise<Buffer> {
    const v = this.checkRange(volumeId, offset, length, k);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const count = last - first + 1;
    const out = into && into.length === length ? into : Buffer.allocUnsafe(length);
    const end = Math.min(v.size, (last + 1) * bs);
    const aligned = offset === first * bs && offset + length === end;
    const dest = aligned ? out : Buffer.allocUnsafe(end - first * bs);
    const srcs = this.blockSources(volumeId, first, count, k);
    const replicaFile = this.replicaPath(volumeId);
    // `unchecked`: a scrub re-reading what it marked damaged, to see whether it still is.
    const refused = unchecked ? null : this.refuseDamaged(volumeId, first, srcs, replicaFile);
    if (refused) return Promise.reject(refused);
    const replicaReads: Promise<void>[] = [];
    const others: Promise<void>[] = [];
    for (const seg of this.segments(srcs)) {
      const at = seg.i * bs;
      const byteStart = (first + seg.i) * bs;
      const bytes = Math.min(v.size, byteStart + seg.count * bs) - byteStart;
      if (seg.file === null) {
        const fd = this.fds.acquire(replicaFile);
        replicaReads.push(preadFully(fd, dest, at, bytes, byteStart).finally(() => this.fds.release(replicaFile, fd)));
      } else {
        const file = seg.file;
        const fd = this.fds.acquire(file);
        const rawLen = seg.count * RECORD_HEADER_SIZE + bytes;
        const raw = Buffer.allocUnsafe(rawLen);
        others.push(
          preadFully(fd, raw, 0, rawLen, seg.position)
            .then(() => unpackBeforeBlocks(raw, seg.position, volumeId, first + seg.i, seg.count, bs, v.size, dest, at))
            .finally(() => this.fds.release(file, fd)),
        );
      }
    }
    if (replicaReads.length) this.trackReplicaRead(Promise.all(replicaReads));
    return Promise.all([...replicaReads, ...others]).then(() => {
      if (!aligned) dest.copy(out, 0, offset - first * bs, offset - first * bs + length);
      return out;
    });
  }

  /**
   * For blocks first..first+count-1 of the volume at T_{k-1}: 1 where the
   * block read as zero and held no data (a hole), 0 where it held data.
   * From the before-blocks' zero flag and the replica's holes.
   */
  zeroMapBefore(volumeId: number, first: number, count: number, k: number): Promise<Uint8Array> {
    const bs = this.blockSize;
    const size = this.volumes.get(volumeId)?.size ?? 0;
    const v = this.checkRange(volumeId, first * bs, Math.min(count * bs, size - first * bs), k);
    const map = new Uint8Array(count);
    const srcs = this.blockSources(volumeId, first, count, k);
    const replicaFile = this.replicaPath(volumeId);
    const refused = this.refuseDamaged(volumeId, first, srcs, replicaFile);
    if (refused) return Promise.reject(refused);
    const replicaReads: Promise<void>[] = [];
    const others: Promise<void>[] = [];
    const stride = RECORD_HEADER_SIZE + bs;
    for (const seg of this.segments(srcs)) {
      const byteStart = (first + seg.i) * bs;
      const bytes = Math.min(v.size, byteStart + seg.count * bs) - byteStart;
      if (seg.file === null) {
        const fd = this.fds.acquire(replicaFile);
        replicaReads.push(
          mapExtentsRaw(fd, byteStart, bytes, v.size, 1 << 16)
            .then((raw) => {
              let pos = byteStart;
              for (let j = 0; j < raw.length && pos < byteStart + bytes; j += 2) {
                const len = raw[j]!;
                if (raw[j + 1] === 0) {
                  // A hole: every block wholly inside it reads as zero.
                  const holeEnd = pos + len;
                  for (let b = Math.ceil(pos / bs); Math.min((b + 1) * bs, v.size) <= holeEnd && b < first + seg.i + seg.count; b++) {
                    const idx = b - first;
                    if (idx >= seg.i) map[idx] = 1;
                  }
                }
                pos += len;
              }
            })
            .finally(() => this.fds.release(replicaFile, fd)),
        );
      } else {
        const file = seg.file;
        const fd = this.fds.acquire(file);
        const hdr = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
        others.push(
          (async () => {
            for (let j = 0; j < seg.count; j++) {
              const at = seg.position + j * stride;
              await preadFully(fd, hdr, 0, RECORD_HEADER_SIZE, at);
              const h = decodeRecordHeader(hdr, 0);
              if (typeof h === 'string') throw Object.assign(new Error(`${file}: before-block at ${at}: ${h}`), { code: 'EIO' });
              map[seg.i + j] = h.flags & RECORD_FLAG_ZERO ? 1 : 0;
            }
          })().finally(() => this.fds.release(file, fd)),
        );
      }
    }
    if (replicaReads.length) this.trackReplicaRead(Promise.all(replicaReads));
    return Promise.all([...replicaReads, ...others]).then(() => map);
  }

  /** The error a read of these sources must fail with, if any of them is damaged (see damage.ts). */
  private refuseDamaged(
    volumeId: number,
    first: number,
    srcs: Array<{ file: string | null; position: number }>,
    replicaFile: string,
  ): Error | null {
    if (this.damage.empty) return null;
    try {
      for (let i = 0; i < srcs.length; i++) {
        const f = srcs[i]!.file;
        if (f === null) this.damage.checkReplica(replicaFile, volumeId, first + i);
        else this.damage.checkFile(f, volumeId, first + i);
      }
    } catch (err) {
      return err as Error;
    }
    return null;
  }

  /** Throws DamagedError if T_n's stored AILFC or BILFC is damaged as a whole (time travel's overlays read AILFCs). */
  checkReadable(kind: 'ailfc' | 'bilfc', n: number): void {
    if (this.damage.empty) return;
    const file = this.historyFile(kind, n);
    if (this.damage.fileMark(file)) this.damage.checkFile(file, 0, 0);
  }

  /** Where block `block` of the volume is read from for the image before T_k: a history file, or null for the replica. */
  sourceOf(volumeId: number, block: number, k: number): string | null {
    return this.blockSources(volumeId, block, 1, k)[0]!.file;
  }

  /** The last committed transaction that touched the block (0: none), or undefined when that is not known (an older index). */
  lastTouched(volumeId: number, block: number): number | undefined {
    if (!this.lastTouchReliable) return undefined;
    return this.touchArray(volumeId)?.[block];
  }

  private trackReplicaRead(p: Promise<unknown>): void {
    const tracked = p.catch(() => undefined);
    this.replicaReads.add(tracked);
    void tracked.finally(() => this.replicaReads.delete(tracked));
  }

  /**
   * The blocks of volume `volumeId` that T_k, T_{k+1}, ... (every committed
   * transaction from k on) touched, as sorted disjoint [start, count) runs.
   * What a restore to a point before T_k must rewrite.
   */
  changedSince(volumeId: number, k: number): Array<{ start: number; count: number }> {
    const marks: Array<[number, number]> = [];
    const last = this.catalog.applied().lastContainer;
    for (let n = Math.max(k, this.catalog.config()!.firstContainer); n <= last; n++) {
      for (const r of this.catalog.runs(n)) if (r.volumeId === volumeId) marks.push([r.start, r.count]);
    }
    marks.sort((a, b) => a[0] - b[0]);
    const out: Array<{ start: number; count: number }> = [];
    for (const [start, count] of marks) {
      const prev = out[out.length - 1];
      if (prev && start <= prev.start + prev.count) prev.count = Math.max(prev.count, start + count - prev.start);
      else out.push({ start, count });
    }
    return out;
  }

  /** Block runs T_n touched on one volume (index "runs"). */
  transactionRuns(n: number, volumeId: number): Array<{ start: number; count: number }> {
    return this.catalog
      .runs(n)
      .filter((r) => r.volumeId === volumeId)
      .map((r) => ({ start: r.start, count: r.count }));
  }

  // --- the applier's side ---------------------------------------------------------

  /**
   * T_n is about to change the replica: readers of blocks it touches go to
   * BILFC_n (sealed already), and replica reads that started before finish
   * first, so no reader sees a half-applied block.
   */
  async beginApply(n: number, runs: BlockRun[], bilfcPath: string): Promise<void> {
    this.inflight = { n, runs, bilfcPath };
    if (this.replicaReads.size) await Promise.allSettled([...this.replicaReads]);
  }

  /** T_n's commit is visible (same tick): later reads find it in the index. */
  endApply(n: number, runs: BlockRun[]): void {
    this.noteTouched(n, runs);
    this.inflight = null;
  }

  /** The apply of the transaction in flight stopped (failed or recovered later). */
  abortApply(): void {
    this.inflight = null;
  }

  /** Rebuilds the per-block last-touch map from the "runs" index (open, retention). */
  rebuild(): void {
    this.buildLastTouch();
  }

  close(): void {
    this.fds.closeAll();
    this.recordCache.clear();
  }
}

/** Position of (volumeId, block)'s BeforeBlock record in the BILFC described by `runs`, if it is there. */
export function runPosition(runs: BlockRun[], volumeId: number, block: number, blockSize: number): number | undefined {
  let a = 0;
  let z = runs.length - 1;
  while (a <= z) {
    const m = (a + z) >> 1;
    const r = runs[m]!;
    if (r.volumeId < volumeId || (r.volumeId === volumeId && r.start + r.count <= block)) a = m + 1;
    else if (r.volumeId > volumeId || r.start > block) z = m - 1;
    else return r.position + (block - r.start) * (RECORD_HEADER_SIZE + blockSize);
  }
  return undefined;
}
