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
 * Reads, block status and cache go straight to the production image.
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
} from '../nbd/export';
import { RecordKind, RECORD_FLAG_FUA, RECORD_FLAG_RESTORE } from './format';
import type { GroupJournal } from './group-journal';
import { RangeLock } from './range-lock';
import type { StateMap } from './state-map';

/** Resync reads production in pieces of this size. */
const RESYNC_CHUNK = 1024 * 1024;

export class ProtectedVolume implements NbdExport {
  readonly size: number;
  readonly readOnly = false;
  readonly capabilities: ExportCapabilities;
  readonly blockSize: BlockSizeConstraints | undefined;
  private readonly locks = new RangeLock();
  private writesInFlight = 0;
  private quiesceWaiters: Array<() => void> = [];
  private gate: Promise<void> | null = null;

  constructor(
    readonly name: string,
    readonly volumeId: number,
    readonly production: NbdExport,
    readonly journal: GroupJournal,
    readonly stateMap: StateMap,
  ) {
    this.size = production.size;
    this.blockSize = production.blockSize;
    this.capabilities = { ...production.capabilities, multiConn: true };
  }

  /**
   * Crash recovery: regions the state map still marks dirty may hold
   * production changes that never reached the journal (a crash between
   * steps 4 and 5). Re-capture their current content as Resync records so
   * the replicated image converges on production.
   */
  async resyncDirtyRegions(): Promise<{ regions: number; bytes: number }> {
    const ranges = this.stateMap.dirtyRanges();
    let bytes = 0;
    let lastSeq = 0;
    for (const r of ranges) {
      for (let off = r.offset; off < r.offset + r.length; off += RESYNC_CHUNK) {
        const len = Math.min(RESYNC_CHUNK, r.offset + r.length - off, this.size - off);
        if (len <= 0) break;
        const data = await this.production.read(off, len);
        const seq = this.journal.reserve();
        await this.journal.append(seq, RecordKind.Resync, this.volumeId, off, len, data);
        lastSeq = seq;
        bytes += len;
      }
    }
    if (lastSeq) this.stateMap.adoptLoaded(lastSeq);
    return { regions: this.stateMap.dirtyCount(), bytes };
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.production.read(offset, length, into);
  }

  get readSparse(): ((offset: number, length: number, into?: Buffer) => Promise<ReadChunk[]>) | undefined {
    const p = this.production;
    return p.readSparse ? (o, l, into) => p.readSparse!(o, l, into) : undefined;
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.production.blockStatus(offset, length);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.production.cache(offset, length);
  }

  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.intercept(RecordKind.Write, offset, data.length, data, flags.fua, () =>
      this.production.write(offset, data, NO_FUA),
    );
  }

  trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    return this.intercept(RecordKind.Trim, offset, length, null, flags.fua, () =>
      this.production.trim(offset, length, NO_FUA),
    );
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
    return this.intercept(RecordKind.Write, offset, data.length, data, false, () => this.production.write(offset, data, NO_FUA), RECORD_FLAG_RESTORE);
  }

  /** A production restore's zeroing of a range (it reads as zero at the point restored to). */
  restoreZero(offset: number, length: number): Promise<void> {
    const f = { fua: false, noHole: false, fastZero: false };
    return this.intercept(RecordKind.Zero, offset, length, null, false, () => this.production.zero(offset, length, f), RECORD_FLAG_RESTORE);
  }

  /** FLUSH: production image, AILFC and state map durable. */
  async flush(): Promise<void> {
    await Promise.all([this.production.flush(), this.journal.sync(), this.stateMap.sync()]);
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
      try {
        this.stateMap.markDirty(offset, length, seq);
        await apply();
      } catch (err) {
        failure = err;
      }
      lock.release();
      if (failure) {
        const msg = Buffer.from(String((failure as Error)?.message ?? failure).slice(0, 1024), 'utf8');
        await this.journal.append(seq, RecordKind.Error, this.volumeId, offset, length, msg);
        throw failure;
      }
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
}

const NO_FUA: WriteFlags = Object.freeze({ fua: false });
