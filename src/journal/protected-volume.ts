/**
 * A protected volume: the intercept. An NbdExport stacked on the volume's
 * production image (a FileExport), the way an nbdkit filter stacks on a
 * plugin. For every WRITE, TRIM and WRITE_ZEROES, in this order:
 *
 *   1. wait for earlier in-flight requests that overlap it (RangeLock), so
 *      overlapping writes reach the image in sequence order;
 *   2. reserve the next sequence number of the consistency group;
 *   3. mark the regions dirty in the persistent state map;
 *   4. apply it to the production image;
 *   5. append its record to the group's active AILFC (an error record if
 *      the production write failed);
 *   6. acknowledge (for FUA, after image, AILFC and state map are durable).
 *
 * A failed production write (step 4) is answered with the error and
 * journaled as an error record; then, still under the range lock, the
 * range's current production content is re-read and journaled as resync
 * records, because a failed (or short) write may have changed part of it:
 * so the replica never diverges from production. If that read fails too,
 * the range stays pinned dirty in the state map and is re-captured on the
 * next flush, by a retry timer, or at the next start-up.
 *
 * Reads, block status and cache go straight to the production image.
 * Failures of every kind are counted (ioStatus()) for the volume's status.
 * One ProtectedVolume serves every connection to the volume; it keeps no
 * per-connection state, so multi-conn holds.
 */
import {
  type BlockSizeConstraints,
  type ExportCapabilities,
  type Extent,
  type NbdExport,
  type ReadChunk,
  type WriteFlags,
  type ZeroFlags,
} from '../nbd';
import { RecordKind, RECORD_FLAG_FUA, RECORD_FLAG_RESTORE } from '../lfc';
import { RangeLock } from './range-lock';

/** Resync reads production in pieces of this size. */
const RESYNC_CHUNK = 1024 * 1024;
/** Retry re-capturing ranges a failed write left unknown this often. */
const RECAPTURE_RETRY_MS = 1000;

export type IoOp = 'read' | 'write' | 'trim' | 'zero' | 'flush';

/** Production I/O failures seen by a protected volume. */
export interface VolumeIoStatus {
  /** "failing" while the latest production operation failed; "ok" again after one succeeds. */
  state: 'ok' | 'failing';
  errors: Record<IoOp, number>;
  /** Error records journaled (one per failed write, trim or zero). */
  errorRecords: number;
  lastError: { time: string; op: IoOp; offset: number; length: number; code: string; message: string } | null;
  /** Ranges a failed write left unknown that could not be re-read yet. */
  recapturePending: number;
}

/**
 * What the intercept needs of the group's journal (GroupJournal): the next
 * seq, an append in seq order, and durability. A port, so the ordering
 * contract can be tested with a recording fake.
 */
export interface InterceptJournal {
  reserve(): number;
  append(
    seq: number,
    kind: RecordKind,
    volumeId: number,
    offset: number,
    length: number,
    payload: Buffer | null,
    flags?: number,
  ): Promise<void>;
  sync(): Promise<void>;
}

/** What the intercept (and the daemon that owns it) needs of the volume's persistent state map (StateMap). */
export interface DirtyMap {
  readonly regionSize: number;
  markDirty(offset: number, length: number, seq: number): void;
  pin(offset: number, length: number): void;
  unpin(offset: number, length: number): void;
  sync(): Promise<void>;
  /** Dirty regions as byte ranges; with minSeq, only those whose latest write has a seq >= minSeq (or is unknown). */
  dirtyRanges(minSeq?: number): Array<{ offset: number; length: number }>;
  dirtyCount(): number;
  adoptLoaded(seq: number): void;
  clearLoaded(): number;
  close(): Promise<void>;
}

/** What the replica holds, for crash recovery (the manager is caught up). */
export interface ReplicaComparer {
  /** The group's block size: differing() answers per block. */
  readonly blockSize: number;
  /** Per block of [offset, offset + data.length): true where the replica's content differs from `data`. */
  differing(offset: number, data: Buffer): Promise<boolean[]>;
}

/** What a start-up resync did. */
export interface RecoveryReport {
  /** Bytes the state map marked dirty. */
  dirtyBytes: number;
  /** Bytes compared with the replica (0 without one). */
  compared: number;
  /** Bytes journaled as resync records (history added). */
  bytes: number;
  ms: number;
}

export class ProtectedVolume implements NbdExport {
  readonly size: number;
  readonly readOnly = false;
  readonly capabilities: ExportCapabilities;
  readonly blockSize: BlockSizeConstraints | undefined;
  private readonly locks = new RangeLock();
  private writesInFlight = 0;
  private quiesceWaiters: Array<() => void> = [];
  private gate: Promise<void> | null = null;
  private readonly ioErrors: Record<IoOp, number> = { read: 0, write: 0, trim: 0, zero: 0, flush: 0 };
  private errorRecords = 0;
  private lastIoError: VolumeIoStatus['lastError'] = null;
  private failing = false;
  private readonly pendingRecapture: Array<{ offset: number; length: number }> = [];
  private recaptureTimer: NodeJS.Timeout | null = null;
  private disposed = false;

  constructor(
    readonly name: string,
    readonly volumeId: number,
    readonly production: NbdExport,
    readonly journal: InterceptJournal,
    readonly stateMap: DirtyMap,
  ) {
    this.size = production.size;
    this.blockSize = production.blockSize;
    this.capabilities = { ...production.capabilities, multiConn: true };
  }

  /**
   * Crash recovery: regions the state map still marks dirty may hold
   * production changes that never reached the journal (a crash between
   * steps 4 and 5, or journal records a machine crash lost). Re-capture
   * their current content as Resync records so the replicated image
   * converges on production.
   *
   * With `replica` (the caller has caught the manager up, so the replica
   * holds every surviving record), only the blocks where production differs
   * from the replica are journaled: after kill -9 that is the few writes
   * that were in flight, not every region random writes left dirty. Without
   * it (no manager reachable), every dirty region is re-captured.
   */
  async resyncDirtyRegions(replica?: ReplicaComparer): Promise<RecoveryReport> {
    const started = Date.now();
    const ranges = this.stateMap.dirtyRanges();
    let compared = 0;
    let bytes = 0;
    let lastSeq = 0;
    const journal = async (off: number, data: Buffer) => {
      const seq = this.journal.reserve();
      await this.journal.append(seq, RecordKind.Resync, this.volumeId, off, data.length, data);
      lastSeq = seq;
      bytes += data.length;
    };
    for (const r of ranges) {
      for (let off = r.offset; off < r.offset + r.length; off += RESYNC_CHUNK) {
        const len = Math.min(RESYNC_CHUNK, r.offset + r.length - off, this.size - off);
        if (len <= 0) break;
        const data = await this.production.read(off, len);
        if (!replica) {
          await journal(off, data);
          continue;
        }
        compared += len;
        const bs = replica.blockSize;
        const differs = await replica.differing(off, data);
        // Journal each run of differing blocks as one record.
        for (let i = 0; i < differs.length;) {
          if (!differs[i]) {
            i++;
            continue;
          }
          let j = i;
          while (j < differs.length && differs[j]) j++;
          await journal(off + i * bs, data.subarray(i * bs, Math.min(j * bs, len)));
          i = j;
        }
      }
    }
    // Regions that differed clear when their records commit; the rest now.
    if (lastSeq) this.stateMap.adoptLoaded(lastSeq);
    else this.stateMap.clearLoaded();
    return { dirtyBytes: ranges.reduce((a, r) => a + r.length, 0), compared, bytes, ms: Date.now() - started };
  }

  /**
   * Online resync (a super transaction after degraded mode): journal the
   * current production content of [offset, offset+length) as resync records
   * while writes go on. The range lock orders it with overlapping writes, so
   * a write journaled after it is also applied after it. Returns the bytes
   * journaled (0 if production could not be read: the range stays dirty).
   */
  async resyncRange(offset: number, length: number): Promise<number> {
    const len = Math.min(length, this.size - offset);
    if (len <= 0) return 0;
    if (this.gate) await this.gate;
    this.writesInFlight++;
    const lock = this.locks.acquire(offset, len);
    try {
      if (lock.wait) await lock.wait;
      return (await this.recapture(offset, len)) ? len : 0;
    } finally {
      lock.release();
      if (--this.writesInFlight === 0 && this.quiesceWaiters.length) {
        for (const w of this.quiesceWaiters.splice(0)) w();
      }
    }
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.production.read(offset, length, into).then(undefined, (err) => this.ioFailed('read', offset, length, err));
  }

  get readSparse(): ((offset: number, length: number, into?: Buffer) => Promise<ReadChunk[]>) | undefined {
    const p = this.production;
    return p.readSparse ? (o, l, into) => p.readSparse!(o, l, into).then(undefined, (err) => this.ioFailed('read', o, l, err)) : undefined;
  }

  /** Count a production failure, then rethrow it. */
  private ioFailed(op: IoOp, offset: number, length: number, err: unknown): never {
    this.ioErrors[op]++;
    this.failing = true;
    const e = err as NodeJS.ErrnoException | undefined;
    this.lastIoError = {
      time: new Date().toISOString(),
      op,
      offset,
      length,
      code: e?.code ?? 'EIO',
      message: String(e?.message ?? err).slice(0, 512),
    };
    throw err;
  }

  /** Production I/O failures, for the volume's status. */
  ioStatus(): VolumeIoStatus {
    return {
      state: this.failing ? 'failing' : 'ok',
      errors: { ...this.ioErrors },
      errorRecords: this.errorRecords,
      lastError: this.lastIoError,
      recapturePending: this.pendingRecapture.length,
    };
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.production.blockStatus(offset, length);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.production.cache(offset, length);
  }

  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.intercept(RecordKind.Write, offset, data.length, data, flags.fua, () => this.production.write(offset, data, NO_FUA));
  }

  trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    return this.intercept(RecordKind.Trim, offset, length, null, flags.fua, () => this.production.trim(offset, length, NO_FUA));
  }

  zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    const f = { fua: false, noHole: flags.noHole, fastZero: flags.fastZero };
    return this.intercept(RecordKind.Zero, offset, length, null, flags.fua, () => this.production.zero(offset, length, f));
  }

  /**
   * A production restore's write: journaled like any other (so the restore
   * is itself a point in history and can be undone), with the restore flag.
   */
  restoreWrite(offset: number, data: Buffer): Promise<void> {
    return this.intercept(
      RecordKind.Write,
      offset,
      data.length,
      data,
      false,
      () => this.production.write(offset, data, NO_FUA),
      RECORD_FLAG_RESTORE,
    );
  }

  /** A production restore's zeroing of a range (it reads as zero at the point restored to). */
  restoreZero(offset: number, length: number): Promise<void> {
    const f = { fua: false, noHole: false, fastZero: false };
    return this.intercept(RecordKind.Zero, offset, length, null, false, () => this.production.zero(offset, length, f), RECORD_FLAG_RESTORE);
  }

  /** FLUSH: production image, AILFC and state map durable. */
  async flush(): Promise<void> {
    if (this.pendingRecapture.length) await this.retryRecaptures();
    try {
      await Promise.all([this.production.flush(), this.journal.sync(), this.stateMap.sync()]);
    } catch (err) {
      this.ioFailed('flush', 0, 0, err);
    }
  }

  /**
   * Journal the current production content of [offset, offset+length) as
   * resync records (new seqs). The caller holds the range lock. Returns
   * false, leaving the range pinned dirty, if production cannot be read.
   */
  private async recapture(offset: number, length: number): Promise<boolean> {
    for (let off = offset; off < offset + length; off += RESYNC_CHUNK) {
      const len = Math.min(RESYNC_CHUNK, offset + length - off);
      let data: Buffer;
      try {
        data = await this.production.read(off, len);
      } catch (err) {
        this.ioErrors.read++;
        this.stateMap.pin(offset, length);
        this.pendingRecapture.push({ offset, length });
        this.scheduleRecaptureRetry();
        return false;
      }
      const seq = this.journal.reserve();
      let marked = true;
      try {
        this.stateMap.markDirty(off, len, seq);
      } catch {
        marked = false;
      }
      await this.journal.append(seq, RecordKind.Resync, this.volumeId, off, len, data);
      if (!marked) {
        this.stateMap.pin(offset, length);
        this.pendingRecapture.push({ offset, length });
        this.scheduleRecaptureRetry();
        return false;
      }
    }
    return true;
  }

  private scheduleRecaptureRetry(): void {
    if (this.recaptureTimer || this.disposed) return;
    this.recaptureTimer = setTimeout(() => {
      this.recaptureTimer = null;
      void this.retryRecaptures().catch(() => undefined);
    }, RECAPTURE_RETRY_MS);
    this.recaptureTimer.unref?.();
  }

  /** Re-capture the ranges earlier failures left unknown (each under its range lock). */
  private async retryRecaptures(): Promise<void> {
    const ranges = this.pendingRecapture.splice(0);
    for (const r of ranges) {
      const lock = this.locks.acquire(r.offset, r.length);
      try {
        if (lock.wait) await lock.wait;
        this.stateMap.unpin(r.offset, r.length);
        await this.recapture(r.offset, r.length);
      } finally {
        lock.release();
      }
    }
  }

  private async intercept(
    kind: RecordKind,
    offset: number,
    length: number,
    payload: Buffer | null,
    fua: boolean,
    apply: () => Promise<void>,
    extraFlags = 0,
  ): Promise<void> {
    if (this.gate) await this.gate;
    this.writesInFlight++;
    const lock = this.locks.acquire(offset, length);
    try {
      if (lock.wait) await lock.wait;
      const seq = this.journal.reserve();
      let failure: unknown = null;
      let marked = false;
      try {
        this.stateMap.markDirty(offset, length, seq);
        marked = true;
        await apply();
      } catch (err) {
        failure = err;
      }
      if (failure) {
        const msg = Buffer.from(String((failure as Error)?.message ?? failure).slice(0, 1024), 'utf8');
        await this.journal.append(seq, RecordKind.Error, this.volumeId, offset, length, msg);
        this.errorRecords++;
        // The image may hold part of the write: journal what it holds now,
        // before any later overlapping write can run (we hold the lock).
        if (marked) await this.recapture(offset, length);
        lock.release();
        this.ioFailed(kind === RecordKind.Write ? 'write' : kind === RecordKind.Trim ? 'trim' : 'zero', offset, length, failure);
      }
      this.failing = false;
      lock.release();
      await this.journal.append(seq, kind, this.volumeId, offset, length, payload, (fua ? RECORD_FLAG_FUA : 0) | extraFlags);
      if (fua) await this.flush();
    } finally {
      lock.release();
      if (--this.writesInFlight === 0 && this.quiesceWaiters.length) {
        for (const w of this.quiesceWaiters.splice(0)) w();
      }
    }
  }

  /**
   * Hold new writes and wait for those in flight, run `fn`, then let writes
   * go on. Reads are not affected. Used by verify.
   */
  async quiesced<T>(fn: () => Promise<T>): Promise<T> {
    while (this.gate) await this.gate;
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    try {
      if (this.writesInFlight > 0) await new Promise<void>((r) => this.quiesceWaiters.push(r));
      return await fn();
    } finally {
      this.gate = null;
      open();
    }
  }

  /** Connections come and go; the volume's lifetime is the daemon's business. */
  close(): void {}

  /** The daemon is closing the volume: stop retrying re-captures (start-up resyncs what stays dirty). */
  dispose(): void {
    this.disposed = true;
    if (this.recaptureTimer) clearTimeout(this.recaptureTimer);
    this.recaptureTimer = null;
  }
}

const NO_FUA: WriteFlags = Object.freeze({ fua: false });
