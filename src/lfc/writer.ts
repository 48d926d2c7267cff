/**
 * The LFC writer: appends records to an AILFC or BILFC (hot path of every
 * client write, and of every before-image the manager keeps).
 *
 * - One file descriptor; every write is positioned at the writer's known end
 *   (no O_APPEND, no lseek).
 * - Group commit: append() encodes the 48-byte record header at once into a
 *   shared arena, computes the payload CRC and queues [header, payload] into
 *   the open batch. A batch is written with one writev when the event loop
 *   reaches its check phase (setImmediate) or, while a write is in flight,
 *   as soon as that write completes. All records of a batch share one
 *   promise: append() allocates no closure and no promise of its own.
 * - Small batches are written synchronously (writevSync to the page cache,
 *   which costs less than a threadpool round trip); larger ones go to the
 *   threadpool so the event loop keeps serving sockets while the kernel
 *   copies megabytes.
 * - The body CRC of the footer (a CRC over every record byte) is kept up to
 *   date without reading payloads twice: the payload's own CRC is combined
 *   into it (crc32Combine, util/crc32.ts).
 * - Direct mode (option `direct`): large batches go through DirectSink
 *   (direct.ts) with O_DIRECT; small ones still through the page cache.
 * - appendEncoded() copies records already in LFC format verbatim (retention
 *   merges history without decoding payloads).
 * - sync() waits until everything appended so far is written, then
 *   fdatasyncs; callers that arrive while an fdatasync is in flight share
 *   the next one.
 * - A write or fdatasync error makes the writer "failed": every pending and
 *   later append()/sync()/seal() rejects with that error.
 *
 * The position of a record in its file is `writer.size` read just before
 * the append() that queued it.
 *
 * One class of about 650 lines, on purpose: batching, the direct-mode
 * hand-off, sealing and the sync waiters are one state machine (end,
 * writtenEnd, syncedEnd) that must be read together.
 */
import * as fs from 'node:fs';
import { crc32, crc32Combine, crc32Small } from '../util/crc32';
import {
  decodeFileHeader,
  emptyStats,
  encodeFileHeader,
  encodeFooter,
  encodeRecordHeader,
  invalidRecord,
  MAX_U32,
  MAX_U53,
  pickStats,
} from './codec';
import { DIRECT_BLOCK, DirectSink } from './direct';
import { createContainerFile, createContainerFileAt, renameSealed } from './files';
import {
  ContainerKind,
  FILE_HEADER_SIZE,
  FOOTER_SIZE,
  LfcFormatError,
  RECORD_HEADER_SIZE,
  type ContainerStats,
  type FileHeader,
  type Footer,
  type RecordInput,
} from './format';
import { openFd, readAllSync } from './io';

/** Default for WriterOptions.inlineWriteMax. */
export const INLINE_WRITE_MAX = 256 * 1024;
/** A batch is closed (later appends start the next one) at this many bytes... */
const BATCH_MAX_BYTES = 16 * 1024 * 1024;
/** ...or at this many iovecs (Linux IOV_MAX is 1024). */
const BATCH_MAX_IOV = 1024;
const HEADER_ARENA = 64 * 1024;

export interface WriterOptions {
  /**
   * Batches up to this many bytes are written synchronously (writevSync
   * into the page cache) instead of on the threadpool. 0 = always use the
   * threadpool. Default INLINE_WRITE_MAX.
   */
  inlineWriteMax?: number;
  /**
   * Write records with O_DIRECT through an aligned staging buffer (see the
   * module comment). Falls back to buffered writes where the filesystem
   * refuses O_DIRECT. Default false.
   */
  direct?: boolean;
}

/**
 * Whether the daemon writes AILFCs and BILFCs in direct mode: only when the
 * environment sets REWIND_JOURNAL_IO=direct (see GroupJournalOptions.directIo).
 */
export function journalDirectIo(): boolean {
  return process.env.REWIND_JOURNAL_IO === 'direct';
}

type Resolve = () => void;
type Reject = (err: Error) => void;

/** Captures resolve/reject without a closure per promise. */
let capturedResolve: Resolve | undefined;
let capturedReject: Reject | undefined;
function capture(resolve: Resolve, reject: Reject): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

class Batch {
  readonly bufs: Buffer[] = [];
  bytes = 0;
  readonly promise: Promise<void>;
  readonly resolve: Resolve;
  readonly reject: Reject;
  next: Batch | null = null;
  constructor(readonly start: number) {
    this.promise = new Promise<void>(capture);
    this.resolve = capturedResolve!;
    this.reject = capturedReject!;
  }
}

interface SyncWaiter {
  target: number;
  resolve: Resolve;
  reject: Reject;
}

export class ContainerWriter {
  readonly path: string;
  readonly header: FileHeader;
  private fd: number;
  private readonly inlineMax: number;
  private dio: DirectSink | null = null;
  /** Direct writes may have left zero padding past writtenEnd. */
  private padded = false;

  /** End of everything appended (queued or written). */
  private end: number;
  /** End of what is in the file. */
  private writtenEnd: number;
  /** End of what has been fdatasync'ed. */
  private syncedEnd: number;

  private stats: ContainerStats;

  private head: Batch | null = null;
  private tail: Batch | null = null;
  /** The tail batch still accepts records. */
  private tailOpen = false;
  private writing = false;
  private flushScheduled = false;

  private syncing = false;
  private readonly syncWaiters: SyncWaiter[] = [];

  private arena: Buffer = Buffer.allocUnsafe(HEADER_ARENA);
  private arenaUsed = 0;

  private failed: Error | null = null;
  /** The name seal() gives the file, when not the standard one (createAt). */
  private finalName: string | null = null;
  private closed = false;
  private closing = false;

  /** writev/write and fdatasync calls made, for tests and metrics. */
  readonly counters = { writeCalls: 0, syncCalls: 0 };

  private constructor(
    filePath: string,
    fd: number,
    header: FileHeader,
    end: number,
    synced: number,
    stats: ContainerStats,
    opts: WriterOptions,
  ) {
    this.path = filePath;
    this.fd = fd;
    this.header = header;
    this.end = end;
    this.writtenEnd = end;
    this.syncedEnd = synced;
    this.stats = stats;
    this.inlineMax = opts.inlineWriteMax ?? INLINE_WRITE_MAX;
  }

  /**
   * Create a new container file and write its header durably.
   * AILFC: <dir>/active-<n>.lfc, created under a temporary name and linked
   * into place, so an active file always has a complete header.
   * BILFC: <dir>/bilfc-<n>.lfc.tmp (renamed to bilfc-<n>.lfc at seal).
   * Refuses (EEXIST) to overwrite an existing file, including a sealed one
   * with the same n.
   */
  static async create(
    dir: string,
    kind: ContainerKind,
    opts: { groupId: number; containerId: number; blockSize: number; created?: number } & WriterOptions,
  ): Promise<ContainerWriter> {
    if (kind !== ContainerKind.AILFC && kind !== ContainerKind.BILFC) throw new RangeError(`bad container kind ${kind}`);
    if (!Number.isInteger(opts.containerId) || opts.containerId < 0 || opts.containerId > MAX_U53) {
      throw new RangeError(`bad container id ${opts.containerId}`);
    }
    if (!Number.isInteger(opts.groupId) || opts.groupId < 0 || opts.groupId > MAX_U32) {
      throw new RangeError(`bad group id ${opts.groupId}`);
    }
    if (!Number.isInteger(opts.blockSize) || opts.blockSize < 0 || opts.blockSize > MAX_U32) {
      throw new RangeError(`bad block size ${opts.blockSize}`);
    }
    const header: FileHeader = {
      kind,
      groupId: opts.groupId,
      containerId: opts.containerId,
      created: opts.created ?? Date.now(),
      blockSize: opts.blockSize,
    };
    const hbuf = encodeFileHeader(header);
    const { path: file, fd } = await createContainerFile(dir, kind, opts.containerId, hbuf);
    const w = new ContainerWriter(file, fd, header, FILE_HEADER_SIZE, FILE_HEADER_SIZE, emptyStats(), opts);
    if (opts.direct) await w.openDirect(hbuf);
    return w;
  }

  /**
   * Create a container that will be sealed under `final` (any name; written
   * as `<final>.tmp` until then): retention's merged AILFCs and BILFCs.
   */
  static async createAt(
    final: string,
    kind: ContainerKind,
    opts: { groupId: number; containerId: number; blockSize: number; created?: number } & WriterOptions,
  ): Promise<ContainerWriter> {
    const header: FileHeader = {
      kind,
      groupId: opts.groupId,
      containerId: opts.containerId,
      created: opts.created ?? Date.now(),
      blockSize: opts.blockSize,
    };
    const hbuf = encodeFileHeader(header);
    const { path: file, fd } = await createContainerFileAt(final, hbuf);
    const w = new ContainerWriter(file, fd, header, FILE_HEADER_SIZE, FILE_HEADER_SIZE, emptyStats(), opts);
    w.finalName = final;
    if (opts.direct) await w.openDirect(hbuf);
    return w;
  }

  /**
   * Reopen an active container after recovery (repairActive) for further
   * appends at validEnd, with the statistics the scan returned. Anything
   * past validEnd is cut off. Nothing is assumed durable until the next
   * sync().
   */
  static async reopen(filePath: string, validEnd: number, stats: ContainerStats, opts: WriterOptions = {}): Promise<ContainerWriter> {
    const fd = await openFd(filePath, 'r+');
    try {
      const hb = Buffer.alloc(FILE_HEADER_SIZE);
      const got = readAllSync(fd, hb, 0, FILE_HEADER_SIZE, 0);
      const header = decodeFileHeader(hb.subarray(0, got));
      if (typeof header === 'string') throw new LfcFormatError(filePath, 0, header);
      const size = fs.fstatSync(fd).size;
      if (!Number.isInteger(validEnd) || validEnd < FILE_HEADER_SIZE || validEnd > size) {
        throw new RangeError(`${filePath}: validEnd ${validEnd} outside the file (size ${size})`);
      }
      if (size > validEnd) fs.ftruncateSync(fd, validEnd);
      const w = new ContainerWriter(filePath, fd, header, validEnd, 0, pickStats(stats), opts);
      if (opts.direct) {
        const from = validEnd - (validEnd % DIRECT_BLOCK);
        const tail = Buffer.alloc(validEnd - from);
        readAllSync(fd, tail, 0, tail.length, from);
        await w.openDirect(tail);
      }
      return w;
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /**
   * Direct mode: open the O_DIRECT descriptor. `lastBlock` holds the file's
   * bytes from the last 4 KiB boundary up to its end. Stays buffered if the
   * filesystem refuses O_DIRECT.
   */
  private async openDirect(lastBlock: Buffer): Promise<void> {
    this.dio = await DirectSink.open(this.path, lastBlock, this.counters);
  }

  /** True when records are written with O_DIRECT. */
  get isDirect(): boolean {
    return this.dio !== null;
  }

  /** Bytes in the file once everything appended so far is written. */
  get size(): number {
    return this.end;
  }
  get recordCount(): number {
    return this.stats.recordCount;
  }
  get firstSeq(): number {
    return this.stats.firstSeq;
  }
  get lastSeq(): number {
    return this.stats.lastSeq;
  }
  get firstTime(): number {
    return this.stats.firstTime;
  }
  get lastTime(): number {
    return this.stats.lastTime;
  }
  get payloadBytes(): number {
    return this.stats.payloadBytes;
  }
  /** The error that failed this writer, if any. */
  get error(): Error | null {
    return this.failed;
  }

  /**
   * Queue a record. Records reach the file in call order. The promise
   * resolves when the record is in the file (page cache), not necessarily
   * durable. The payload must not be modified afterwards (it is not copied).
   */
  append(rec: RecordInput, payload: Buffer | null): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closing) return Promise.reject(closedError(this.path));
    const plen = payload === null ? 0 : payload.length;
    const st = this.stats;
    const bad = invalidRecord(rec, plen);
    if (bad !== null) return Promise.reject(new RangeError(bad));
    const { seq, time } = rec;
    if (this.header.kind === ContainerKind.AILFC && st.recordCount > 0 && seq <= st.lastSeq) {
      return Promise.reject(new RangeError(`seq ${seq} not above the last seq ${st.lastSeq}`));
    }

    // Header into the arena.
    if (this.arenaUsed + RECORD_HEADER_SIZE > HEADER_ARENA) {
      this.arena = Buffer.allocUnsafe(HEADER_ARENA);
      this.arenaUsed = 0;
    }
    const a = this.arena;
    const o = this.arenaUsed;
    this.arenaUsed = o + RECORD_HEADER_SIZE;
    const pcrc = plen > 0 ? crc32(payload!) : 0;
    encodeRecordHeader(a, o, rec, plen, pcrc);
    const h = a.subarray(o, o + RECORD_HEADER_SIZE);

    // Statistics.
    let body = crc32Small(a, o, o + RECORD_HEADER_SIZE, st.bodyCrc);
    if (plen > 0) body = crc32Combine(body, pcrc, plen);
    st.bodyCrc = body;
    if (st.recordCount === 0) {
      st.firstSeq = seq;
      st.firstTime = time;
    }
    st.recordCount++;
    st.lastSeq = seq;
    st.lastTime = time;
    st.payloadBytes += plen;

    // Queue.
    let b = this.tail;
    if (!this.tailOpen || b === null || b.bufs.length + 2 > BATCH_MAX_IOV || b.bytes >= BATCH_MAX_BYTES) {
      b = this.newBatch();
    }
    b.bufs.push(h);
    if (plen > 0) b.bufs.push(payload!);
    const n = RECORD_HEADER_SIZE + plen;
    b.bytes += n;
    this.end += n;
    this.schedule();
    return b.promise;
  }

  /**
   * Queue records already in LFC format (headers and payloads back to back,
   * checked by the caller, e.g. with checkRecords), copied verbatim: how
   * retention merges history. `seqs` gives the first and last record's seq
   * and time (AILFC); BILFC records carry none.
   */
  appendEncoded(
    raw: Buffer,
    records: number,
    payloadBytes: number,
    seqs?: { first: number; firstTime: number; last: number; lastTime: number },
  ): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closing) return Promise.reject(closedError(this.path));
    if (raw.length === 0) return Promise.resolve();
    const st = this.stats;
    if (seqs) {
      if (this.header.kind === ContainerKind.AILFC && st.recordCount > 0 && seqs.first <= st.lastSeq) {
        return Promise.reject(new RangeError(`seq ${seqs.first} not above the last seq ${st.lastSeq}`));
      }
      if (st.recordCount === 0) {
        st.firstSeq = seqs.first;
        st.firstTime = seqs.firstTime;
      }
      st.lastSeq = seqs.last;
      st.lastTime = seqs.lastTime;
    }
    st.bodyCrc = crc32(raw, st.bodyCrc);
    st.recordCount += records;
    st.payloadBytes += payloadBytes;
    let b = this.tail;
    if (!this.tailOpen || b === null || b.bufs.length + 1 > BATCH_MAX_IOV || b.bytes >= BATCH_MAX_BYTES) {
      b = this.newBatch();
    }
    b.bufs.push(raw);
    b.bytes += raw.length;
    this.end += raw.length;
    this.schedule();
    return b.promise;
  }

  /** Everything appended so far written and fdatasync'ed. */
  sync(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(closedError(this.path));
    const target = this.end;
    if (target <= this.syncedEnd) return Promise.resolve();
    const p = new Promise<void>(capture);
    this.syncWaiters.push({ target, resolve: capturedResolve!, reject: capturedReject! });
    this.kickSync();
    return p;
  }

  /**
   * Append the footer, fdatasync, rename to the sealed name (active-<n> →
   * ailfc-<n>, bilfc-<n>.lfc.tmp → bilfc-<n>.lfc), fsync the directory and
   * close. No append may follow.
   */
  async seal(): Promise<{ path: string; footer: Footer }> {
    if (this.failed) throw this.failed;
    if (this.closing) throw closedError(this.path);
    const st = this.stats;
    const footer: Footer = pickStats(st);
    const fb = encodeFooter(footer);
    const b = this.newBatch();
    b.bufs.push(fb);
    b.bytes += FOOTER_SIZE;
    this.end += FOOTER_SIZE;
    this.tailOpen = false;
    this.closing = true;
    this.schedule();
    try {
      await b.promise;
      await this.cutPadding();
      await this.syncInternal();
    } catch (err) {
      await this.closeFd().catch(() => undefined);
      throw err;
    }
    let final: string;
    try {
      final = await renameSealed(this.path, this.header.kind, this.header.containerId, this.finalName ?? undefined);
      (this as { path: string }).path = final;
    } catch (err) {
      this.fail(err as Error);
      await this.closeFd();
      throw err;
    }
    await this.closeFd();
    return { path: final, footer };
  }

  /** Close without sealing: what was appended is written (not synced), then the descriptor is closed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    this.tailOpen = false;
    const t = this.tail;
    if (t && !this.failed) {
      try {
        await t.promise;
      } catch {
        // The writer failed; close anyway.
      }
    }
    // Wait for an in-flight fdatasync so the fd is not closed under it.
    while (this.syncing) await new Promise<void>((r) => setImmediate(r));
    if (!this.failed) await this.cutPadding().catch(() => undefined);
    await this.closeFd();
  }

  // -- internals ------------------------------------------------------------

  private newBatch(): Batch {
    const b = new Batch(this.end);
    if (this.tail) this.tail.next = b;
    else this.head = b;
    this.tail = b;
    this.tailOpen = true;
    return b;
  }

  private schedule(): void {
    if (this.writing || this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(this.onFlush);
  }

  private readonly onFlush = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  /** Direct mode: cut the zero padding after the last record off the file. */
  private async cutPadding(): Promise<void> {
    if (!this.padded || this.fd < 0) return;
    const fd = this.fd;
    const end = this.writtenEnd;
    await new Promise<void>((resolve, reject) => fs.ftruncate(fd, end, (err) => (err ? reject(err) : resolve())));
  }

  /** Write queued batches: inline ones synchronously, a large one on the threadpool. */
  private flush(): void {
    while (!this.writing && !this.failed) {
      const b = this.head;
      if (b === null) return;
      if (b === this.tail) this.tailOpen = false;
      // Direct: large batches, and the footer (which ends the file exactly).
      if (this.dio && (b.bytes > this.inlineMax || this.closing)) {
        this.writing = true;
        void this.writeDirect(b);
        return;
      }
      if (b.bytes <= this.inlineMax) {
        this.counters.writeCalls++;
        try {
          const n = fs.writevSync(this.fd, b.bufs, b.start);
          if (n < b.bytes) this.finishPartialSync(b, n);
        } catch (err) {
          this.fail(err as Error);
          return;
        }
        this.dio?.noteBuffered(b.start, b.bytes, b.bufs);
        this.batchDone(b);
      } else {
        this.writing = true;
        this.issueAsync(b, 0);
        return;
      }
    }
  }

  private finishPartialSync(b: Batch, done: number): void {
    while (done < b.bytes) {
      const rest = remainingIov(b.bufs, done);
      this.counters.writeCalls++;
      const n = fs.writevSync(this.fd, rest, b.start + done);
      if (n <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
      done += n;
    }
  }

  private issueAsync(b: Batch, done: number): void {
    const bufs = done === 0 ? b.bufs : remainingIov(b.bufs, done);
    this.counters.writeCalls++;
    fs.writev(this.fd, bufs, b.start + done, (err, n) => {
      this.writing = false;
      if (this.failed) return;
      if (err) return this.fail(err);
      if (n <= 0) return this.fail(Object.assign(new Error('write made no progress'), { code: 'EIO' }));
      if (done + n < b.bytes) {
        this.writing = true;
        this.issueAsync(b, done + n);
        return;
      }
      this.batchDone(b);
      this.flush();
    });
  }

  /** Direct mode: write batch b (which starts at writtenEnd) through the O_DIRECT descriptor. */
  private async writeDirect(b: Batch): Promise<void> {
    try {
      this.padded = true;
      await this.dio!.write(b.start, b.bufs);
    } catch (err) {
      this.writing = false;
      if ((err as NodeJS.ErrnoException).code === 'EINVAL' && !this.failed) {
        // The filesystem took O_DIRECT at open but refuses the writes (its
        // alignment rules differ): write buffered from here on. Batch b is
        // still at the head and goes again, through the page cache.
        this.dropDirect();
        this.flush();
        return;
      }
      this.fail(err as Error);
      return;
    }
    this.writing = false;
    if (this.failed) return;
    this.batchDone(b);
    this.flush();
  }

  /** Leave direct mode for good (the padding, if any, is still cut at seal and close). */
  private dropDirect(): void {
    this.dio?.closeQuietly();
    this.dio = null;
  }

  private batchDone(b: Batch): void {
    this.head = b.next;
    if (this.head === null) this.tail = null;
    b.next = null;
    this.writtenEnd = b.start + b.bytes;
    b.resolve();
    if (this.syncWaiters.length > 0) this.kickSync();
  }

  private kickSync(): void {
    if (this.syncing || this.failed) return;
    const w = this.syncWaiters;
    if (w.length === 0 || w[0].target > this.writtenEnd) return;
    this.syncing = true;
    const upTo = this.writtenEnd;
    this.counters.syncCalls++;
    fs.fdatasync(this.fd, (err) => {
      this.syncing = false;
      if (this.failed) return;
      if (err) return this.fail(err);
      if (upTo > this.syncedEnd) this.syncedEnd = upTo;
      let i = 0;
      while (i < w.length && w[i].target <= upTo) i++;
      const done = w.splice(0, i);
      for (const x of done) x.resolve();
      this.kickSync();
    });
  }

  /** sync() that also works while closing (for seal). */
  private syncInternal(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const target = this.end;
    if (target <= this.syncedEnd) return Promise.resolve();
    const p = new Promise<void>(capture);
    this.syncWaiters.push({ target, resolve: capturedResolve!, reject: capturedReject! });
    this.kickSync();
    return p;
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    this.tailOpen = false;
    for (let b = this.head; b !== null; b = b.next) b.reject(err);
    this.head = this.tail = null;
    const w = this.syncWaiters.splice(0);
    for (const x of w) x.reject(err);
  }

  private async closeFd(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing = true;
    const fd = this.fd;
    this.fd = -1;
    await this.dio?.close();
    await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
  }
}

function closedError(p: string): Error {
  return Object.assign(new Error(`container ${p} is sealed or closed`), { code: 'ERR_LFC_CLOSED' });
}

function remainingIov(bufs: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const buf of bufs) {
    if (skip >= buf.length) {
      skip -= buf.length;
      continue;
    }
    out.push(skip > 0 ? buf.subarray(skip) : buf);
    skip = 0;
  }
  return out;
}
