/**
 * Log file containers (AILFC and BILFC): writer, scanner, reader, crash
 * repair and verification. The on-disk format is defined in ./format.ts.
 *
 * Writer (hot path of every client write)
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
 *   into it (crc32_combine, GF(2) arithmetic, see crc32Combine below).
 * - Direct mode (option `direct`; REWIND_JOURNAL_IO=direct turns it on for
 *   AILFCs and BILFCs): batches larger than the inline limit are copied
 *   into an aligned staging buffer (borrowed from a small per-thread pool)
 *   and written with O_DIRECT in
 *   whole 4 KiB blocks, on the threadpool; small batches still go inline
 *   through the page cache. The journal is write-once data: going around
 *   the page cache spares the kernel allocating (and later evicting) a
 *   fresh page for every byte journaled. The last partial block is kept in
 *   memory and rewritten, with the next records, by the next batch; the
 *   zero padding past the last record is cut off at seal and close (after
 *   a crash it reads as a torn tail, which recovery cuts). Where O_DIRECT
 *   is refused (tmpfs, or EINVAL on a write), the writer goes buffered.
 * - sync() waits until everything appended so far is written, then
 *   fdatasyncs; callers that arrive while an fdatasync is in flight share
 *   the next one.
 * - A write or fdatasync error makes the writer "failed": every pending and
 *   later append()/sync()/seal() rejects with that error.
 *
 * The position of a record in its file is `writer.size` read just before
 * the append() that queued it.
 *
 * Readers stream the file in 1 MiB chunks, bound-check every length against
 * the file size before allocating, and never trust a field they have not
 * CRC-checked.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from '../util/fsync-dir';
import { alignedBuffer } from '../native';
import { crc32 } from '../util/crc32';
import {
  ContainerKind,
  FILE_HEADER_SIZE,
  FOOTER_MAGIC,
  FOOTER_SIZE,
  LFC_MAGIC,
  LFC_VERSION,
  RECORD_HEADER_SIZE,
  RECORD_MAGIC,
  RecordKind,
  containerFileName,
  type FileHeader,
  type Footer,
  type RecordHeader,
} from './format';

export interface RecordInput {
  kind: RecordKind;
  flags?: number;
  volumeId: number;
  seq: number;
  time: number;
  offset: number;
  length: number;
}

export interface StoredRecord extends RecordHeader {
  /** File offset of the record header. */
  position: number;
  /** The payload, or null when the record has none or payloads were not requested. */
  payload: Buffer | null;
}

/** Running statistics of a container: exactly what its footer records at seal. */
export type ContainerStats = Footer;

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

export interface ScanResult extends ContainerStats {
  header: FileHeader;
  sealed: boolean;
  footer?: Footer;
  /** Offset just past the last valid record (or past the footer if sealed). */
  validEnd: number;
  /** Set when the file has bytes after validEnd that are not a valid record. */
  tornAt?: number;
  problem?: string;
  /** File size when scanned. */
  fileSize: number;
}

export interface RepairResult extends ScanResult {
  /** Bytes cut off the end of the file (0 if nothing was torn). */
  truncatedBytes: number;
}

/** Corrupt or torn content. `offset` is the file offset of the bad structure. */
export class LfcFormatError extends Error {
  readonly code = 'ERR_LFC_CORRUPT';
  constructor(
    readonly path: string,
    readonly offset: number,
    readonly problem: string,
  ) {
    super(`${path}: ${problem} at offset ${offset}`);
    this.name = 'LfcFormatError';
  }
}

/** Default for WriterOptions.inlineWriteMax. */
export const INLINE_WRITE_MAX = 256 * 1024;
/** A batch is closed (later appends start the next one) at this many bytes... */
const BATCH_MAX_BYTES = 16 * 1024 * 1024;
/** ...or at this many iovecs (Linux IOV_MAX is 1024). */
const BATCH_MAX_IOV = 1024;
/**
 * Whether the daemon writes AILFCs and BILFCs in direct mode: only when the
 * environment sets REWIND_JOURNAL_IO=direct (see GroupJournalOptions.directIo).
 */
export function journalDirectIo(): boolean {
  return process.env.REWIND_JOURNAL_IO === 'direct';
}

/** Direct mode: the unit of alignment of offsets, lengths and memory. */
const DIRECT_BLOCK = 4096;
/** Direct mode: staging buffer size (a multiple of DIRECT_BLOCK). */
const DIRECT_STAGING = 8 * 1024 * 1024;
/** Direct mode: staging buffers kept for reuse in this thread (one per writer writing at once). */
const stagingPool: Buffer[] = [];
const STAGING_POOL_MAX = 4;
/** Read granularity of scanners. */
const CHUNK = 1024 * 1024;
const HEADER_ARENA = 64 * 1024;

const TWO32 = 4294967296;
const MAX_U53 = Number.MAX_SAFE_INTEGER;
const MAX_U32 = 0xffffffff;

// ---------------------------------------------------------------------------
// Encoding helpers

function putU32(b: Buffer, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

function getU32(b: Buffer, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}

function putU64(b: Buffer, o: number, v: number): void {
  putU32(b, o, v >>> 0);
  putU32(b, o + 4, Math.floor(v / TWO32));
}

/** A u64 field; -1 if it is 2^53 or more (corrupt: we never write such values). */
function getU64(b: Buffer, o: number): number {
  const hi = getU32(b, o + 4);
  if (hi >= 0x200000) return -1;
  return hi * TWO32 + getU32(b, o);
}

// ---------------------------------------------------------------------------
// CRC-32 combination: crc(A || B) from crc(A), crc(B) and len(B), so that a
// payload is read once for both its own CRC and the container's body CRC.
// Polynomial arithmetic modulo the reflected CRC-32 polynomial.

const POLY = 0xedb88320;

function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) mod p for k = 0..31. */
const X2N = new Uint32Array(32);
X2N[0] = 0x40000000; // x^1
for (let k = 1; k < 32; k++) X2N[k] = multModP(X2N[k - 1], X2N[k - 1]);

/** x^(8 * len) mod p: the operator that shifts a CRC past `len` zero bytes. */
function shiftOperator(len: number): number {
  let p = 0x80000000; // x^0
  let k = 3;
  let n = len;
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k & 31], p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

const shiftCache = new Map<number, number>();

/** Byte-wise CRC-32 table, for the short header ranges (cheaper than a native call plus a view). */
const CRC_TABLE = new Int32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  CRC_TABLE[n] = c;
}

/** crc32(b.subarray(start, end), crc) for short ranges. */
function crcSmall(b: Buffer, start: number, end: number, crc: number): number {
  let c = ~crc;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 of A||B given crc1 = crc32(A), crc2 = crc32(B), len2 = |B|. */
export function crc32Combine(crc1: number, crc2: number, len2: number): number {
  if (len2 === 0) return crc1 >>> 0;
  let op = shiftCache.get(len2);
  if (op === undefined) {
    op = shiftOperator(len2);
    if (shiftCache.size < 4096) shiftCache.set(len2, op);
  }
  return (multModP(op, crc1 >>> 0) ^ crc2) >>> 0;
}

// ---------------------------------------------------------------------------
// Structures

const KIND_OK = new Uint8Array(256);
KIND_OK[RecordKind.Write] = 1;
KIND_OK[RecordKind.Trim] = 1;
KIND_OK[RecordKind.Zero] = 1;
KIND_OK[RecordKind.Error] = 1;
KIND_OK[RecordKind.Resync] = 1;
KIND_OK[RecordKind.BeforeBlock] = 1;

/** 1: payload length must equal `length`; 2: must be 0; 0: free (error message). */
const KIND_PAYLOAD = new Uint8Array(256);
KIND_PAYLOAD[RecordKind.Write] = 1;
KIND_PAYLOAD[RecordKind.Resync] = 1;
KIND_PAYLOAD[RecordKind.BeforeBlock] = 1;
KIND_PAYLOAD[RecordKind.Trim] = 2;
KIND_PAYLOAD[RecordKind.Zero] = 2;

export function encodeFileHeader(h: FileHeader): Buffer {
  const b = Buffer.alloc(FILE_HEADER_SIZE);
  LFC_MAGIC.copy(b, 0);
  b[8] = h.kind;
  b[9] = LFC_VERSION;
  putU32(b, 12, h.groupId >>> 0);
  putU64(b, 16, h.containerId);
  b.writeDoubleLE(h.created, 24);
  putU32(b, 32, h.blockSize >>> 0);
  putU32(b, 60, crc32(b.subarray(0, 60)));
  return b;
}

/** Decode a file header; returns a problem string if it is invalid. */
export function decodeFileHeader(b: Buffer): FileHeader | string {
  if (b.length < FILE_HEADER_SIZE) return 'file too short for a container header';
  if (!b.subarray(0, 8).equals(LFC_MAGIC)) return 'bad container magic';
  if (getU32(b, 60) !== crc32(b.subarray(0, 60))) return 'container header CRC mismatch';
  const kind = b[8];
  if (kind !== ContainerKind.AILFC && kind !== ContainerKind.BILFC) return `unknown container kind ${kind}`;
  if (b[9] !== LFC_VERSION) return `unsupported container format version ${b[9]}`;
  const containerId = getU64(b, 16);
  if (containerId < 0) return 'container id out of range';
  return {
    kind,
    groupId: getU32(b, 12),
    containerId,
    created: b.readDoubleLE(24),
    blockSize: getU32(b, 32),
  };
}

export function encodeFooter(f: Footer): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  putU32(b, 0, FOOTER_MAGIC);
  putU64(b, 8, f.recordCount);
  putU64(b, 16, f.firstSeq);
  putU64(b, 24, f.lastSeq);
  b.writeDoubleLE(f.firstTime, 32);
  b.writeDoubleLE(f.lastTime, 40);
  putU64(b, 48, f.payloadBytes);
  putU32(b, 56, f.bodyCrc >>> 0);
  putU32(b, 60, crc32(b.subarray(0, 60)));
  return b;
}

/** Decode a footer (b at least 64 bytes); a problem string if invalid. */
function decodeFooter(b: Buffer, o: number): Footer | string {
  if (getU32(b, o) !== FOOTER_MAGIC) return 'bad footer magic';
  if (getU32(b, o + 60) !== crc32(b.subarray(o, o + 60))) return 'footer CRC mismatch';
  const recordCount = getU64(b, o + 8);
  const firstSeq = getU64(b, o + 16);
  const lastSeq = getU64(b, o + 24);
  const payloadBytes = getU64(b, o + 48);
  if (recordCount < 0 || firstSeq < 0 || lastSeq < 0 || payloadBytes < 0) return 'footer field out of range';
  return {
    recordCount,
    firstSeq,
    lastSeq,
    firstTime: b.readDoubleLE(o + 32),
    lastTime: b.readDoubleLE(o + 40),
    payloadBytes,
    bodyCrc: getU32(b, o + 56),
  };
}

/**
 * Decode and validate a record header at b[o..o+48). Returns the header or
 * a problem string. Does not check the payload.
 */
function decodeRecordHeader(b: Buffer, o: number): RecordHeader | string {
  if (getU32(b, o) !== RECORD_MAGIC) return 'bad record magic';
  if (getU32(b, o + 44) !== crc32(b.subarray(o, o + 44))) return 'record header CRC mismatch';
  const kind = b[o + 4];
  if (!KIND_OK[kind]) return `unknown record kind ${kind}`;
  const seq = getU64(b, o + 8);
  const offset = getU64(b, o + 24);
  if (seq < 0) return 'record seq out of range';
  if (offset < 0) return 'record offset out of range';
  const time = b.readDoubleLE(o + 16);
  if (!Number.isFinite(time)) return 'record time not finite';
  const length = getU32(b, o + 32);
  const payloadLength = getU32(b, o + 36);
  const rule = KIND_PAYLOAD[kind];
  if ((rule === 1 && payloadLength !== length) || (rule === 2 && payloadLength !== 0)) {
    return 'payload length does not match record kind';
  }
  return {
    kind,
    flags: b[o + 5],
    volumeId: b[o + 6] | (b[o + 7] << 8),
    seq,
    time,
    offset,
    length,
    payloadLength,
    payloadCrc: getU32(b, o + 40),
  };
}

function pickStats(s: ContainerStats): ContainerStats {
  return {
    recordCount: s.recordCount,
    firstSeq: s.firstSeq,
    lastSeq: s.lastSeq,
    firstTime: s.firstTime,
    lastTime: s.lastTime,
    bodyCrc: s.bodyCrc >>> 0,
    payloadBytes: s.payloadBytes,
  };
}

function emptyStats(): ContainerStats {
  return { recordCount: 0, firstSeq: 0, lastSeq: 0, firstTime: 0, lastTime: 0, bodyCrc: 0, payloadBytes: 0 };
}

function writeAllSync(fd: number, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.writeSync(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    done += n;
  }
}

function readAllSync(fd: number, buf: Buffer, off: number, len: number, position: number): number {
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, off + done, len - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function readFully(fd: number, buf: Buffer, off: number, len: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      if (done >= len) return resolve(done);
      fs.read(fd, buf, off + done, len - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return resolve(done);
        done += n;
        step();
      });
    };
    step();
  });
}

// ---------------------------------------------------------------------------
// Writer

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

/** Direct-mode state of a writer. */
interface DirectIo {
  /** A second descriptor of the file, opened O_WRONLY | O_DIRECT. */
  fd: number;
  /** File bytes [writtenEnd - tailLen, writtenEnd): the last partial block. */
  tail: Buffer;
  tailLen: number;
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
  private dio: DirectIo | null = null;
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
    const n = opts.containerId;
    const exists = async (p: string): Promise<boolean> =>
      fs.promises.access(p).then(
        () => true,
        () => false,
      );
    const refuse = (p: string): never => {
      throw Object.assign(new Error(`container ${p} already exists`), { code: 'EEXIST', path: p });
    };

    if (kind === ContainerKind.AILFC) {
      const final = path.join(dir, containerFileName('active', n));
      const sealed = path.join(dir, containerFileName('ailfc', n));
      if (await exists(sealed)) refuse(sealed);
      if (await exists(final)) refuse(final);
      const tmp = `${final}.init`;
      await fs.promises.rm(tmp, { force: true });
      const fd = await openFd(tmp, 'wx');
      try {
        writeAllSync(fd, hbuf, 0);
        await fdatasyncFd(fd);
        await fs.promises.link(tmp, final);
      } catch (err) {
        fs.closeSync(fd);
        await fs.promises.rm(tmp, { force: true });
        throw err;
      }
      await fs.promises.unlink(tmp);
      await fsyncDir(dir);
      const w = new ContainerWriter(final, fd, header, FILE_HEADER_SIZE, FILE_HEADER_SIZE, emptyStats(), opts);
      if (opts.direct) await w.openDirect(hbuf);
      return w;
    }

    const sealedPath = path.join(dir, containerFileName('bilfc', n));
    if (await exists(sealedPath)) refuse(sealedPath);
    const tmpPath = `${sealedPath}.tmp`;
    const fd = await openFd(tmpPath, 'wx');
    try {
      writeAllSync(fd, hbuf, 0);
      await fdatasyncFd(fd);
      await fsyncDir(dir);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    const w = new ContainerWriter(tmpPath, fd, header, FILE_HEADER_SIZE, FILE_HEADER_SIZE, emptyStats(), opts);
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
    const O_DIRECT = fs.constants.O_DIRECT;
    if (!O_DIRECT) return;
    let dfd: number;
    try {
      dfd = await new Promise<number>((resolve, reject) =>
        fs.open(this.path, fs.constants.O_WRONLY | O_DIRECT, (err, fd) => (err ? reject(err) : resolve(fd))),
      );
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EINVAL') return; // no O_DIRECT here (tmpfs)
      throw err;
    }
    const tail = Buffer.alloc(DIRECT_BLOCK);
    const tailLen = lastBlock.length % DIRECT_BLOCK;
    lastBlock.copy(tail, 0, lastBlock.length - tailLen);
    this.dio = { fd: dfd, tail, tailLen };
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
    const kind = rec.kind;
    const plen = payload === null ? 0 : payload.length;
    const flags = rec.flags ?? 0;
    const { seq, offset, length, time, volumeId } = rec;
    const st = this.stats;
    if (
      !KIND_OK[kind] ||
      !(flags >= 0 && flags <= 255) ||
      !(volumeId >= 0 && volumeId <= 0xffff) ||
      !Number.isInteger(seq) ||
      seq < 0 ||
      seq > MAX_U53 ||
      !Number.isInteger(offset) ||
      offset < 0 ||
      offset > MAX_U53 ||
      !Number.isInteger(length) ||
      length < 0 ||
      length > MAX_U32 ||
      !Number.isFinite(time) ||
      plen > MAX_U32
    ) {
      return Promise.reject(new RangeError(`invalid record ${JSON.stringify(rec)}`));
    }
    const rule = KIND_PAYLOAD[kind];
    if ((rule === 1 && plen !== length) || (rule === 2 && plen !== 0)) {
      return Promise.reject(new RangeError(`record kind ${kind}: payload length ${plen} does not fit length ${length}`));
    }
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
    putU32(a, o, RECORD_MAGIC);
    a[o + 4] = kind;
    a[o + 5] = flags;
    a[o + 6] = volumeId;
    a[o + 7] = volumeId >>> 8;
    putU64(a, o + 8, seq);
    a.writeDoubleLE(time, o + 16);
    putU64(a, o + 24, offset);
    putU32(a, o + 32, length);
    putU32(a, o + 36, plen);
    const pcrc = plen > 0 ? crc32(payload!) : 0;
    putU32(a, o + 40, pcrc);
    putU32(a, o + 44, crcSmall(a, o, o + 44, 0));
    const h = a.subarray(o, o + RECORD_HEADER_SIZE);

    // Statistics.
    let body = crcSmall(a, o, o + RECORD_HEADER_SIZE, st.bodyCrc);
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
    const dir = path.dirname(this.path);
    const n = this.header.containerId;
    const final =
      this.header.kind === ContainerKind.AILFC
        ? path.join(dir, containerFileName('ailfc', n))
        : path.join(dir, containerFileName('bilfc', n));
    try {
      if (final !== this.path) {
        const taken = await fs.promises.access(final).then(
          () => true,
          () => false,
        );
        if (taken) throw Object.assign(new Error(`container ${final} already exists`), { code: 'EEXIST', path: final });
        await fs.promises.rename(this.path, final);
        (this as { path: string }).path = final;
        await fsyncDir(dir);
      }
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
        if (this.dio) this.keepTail(b);
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

  /**
   * Direct mode: write batch b (which starts at writtenEnd) as whole blocks:
   * the kept partial block, then the batch's bytes, through the staging
   * buffer; the last block is padded with zeros and kept for the next batch.
   */
  private async writeDirect(b: Batch): Promise<void> {
    const d = this.dio!;
    const st = stagingPool.pop() ?? alignedBuffer(DIRECT_STAGING, DIRECT_BLOCK);
    const cap = st.length;
    let pos = b.start - d.tailLen;
    let fill = d.tailLen;
    d.tail.copy(st, 0, 0, fill);
    try {
      for (const buf of b.bufs) {
        let off = 0;
        while (off < buf.length) {
          const n = Math.min(cap - fill, buf.length - off);
          buf.copy(st, fill, off, off + n);
          fill += n;
          off += n;
          if (fill === cap) {
            this.padded = true;
            await this.pwriteDirect(d.fd, st, cap, pos);
            pos += cap;
            fill = 0;
          }
        }
      }
      const keep = fill % DIRECT_BLOCK;
      if (fill > 0) {
        const padded = keep ? fill - keep + DIRECT_BLOCK : fill;
        if (keep) st.fill(0, fill, padded);
        this.padded = true;
        await this.pwriteDirect(d.fd, st, padded, pos);
      }
      st.copy(d.tail, 0, fill - keep, fill);
      d.tailLen = keep;
    } catch (err) {
      if (stagingPool.length < STAGING_POOL_MAX) stagingPool.push(st);
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
    if (stagingPool.length < STAGING_POOL_MAX) stagingPool.push(st);
    this.writing = false;
    if (this.failed) return;
    this.batchDone(b);
    this.flush();
  }

  /** Leave direct mode for good (the padding, if any, is still cut at seal and close). */
  private dropDirect(): void {
    const d = this.dio;
    if (!d) return;
    this.dio = null;
    fs.close(d.fd, () => undefined);
  }

  /**
   * Direct mode, after a small batch went through the page cache: keep the
   * file's last partial block up to date for the next direct write.
   */
  private keepTail(b: Batch): void {
    const d = this.dio!;
    const end = b.start + b.bytes;
    const keep = end % DIRECT_BLOCK;
    if (b.bytes < keep) {
      // Still inside the same block: the batch extends the kept bytes.
      let at = d.tailLen;
      for (const buf of b.bufs) at += buf.copy(d.tail, at);
    } else {
      // The last `keep` bytes of the batch.
      let need = keep;
      for (let i = b.bufs.length - 1; i >= 0 && need > 0; i--) {
        const buf = b.bufs[i]!;
        const n = Math.min(need, buf.length);
        buf.copy(d.tail, need - n, buf.length - n);
        need -= n;
      }
    }
    d.tailLen = keep;
  }

  /** pwrite all of st[0, len) at pos on the threadpool; short writes continue from a block boundary. */
  private async pwriteDirect(fd: number, st: Buffer, len: number, pos: number): Promise<void> {
    let done = 0;
    while (done < len) {
      this.counters.writeCalls++;
      const n = await new Promise<number>((resolve, reject) =>
        fs.write(fd, st, done, len - done, pos + done, (err, written) => (err ? reject(err) : resolve(written))),
      );
      if (n <= 0 || (done + n < len && n % DIRECT_BLOCK !== 0)) {
        throw Object.assign(new Error(`direct write of ${len - done} bytes at ${pos + done} wrote ${n}`), { code: 'EIO' });
      }
      done += n;
    }
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
    if (this.dio) {
      const dfd = this.dio.fd;
      await new Promise<void>((resolve) => fs.close(dfd, () => resolve()));
    }
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

function openFd(p: string, flags: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(p, flags, 0o644, (err, fd) => (err ? reject(err) : resolve(fd))));
}

function fdatasyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

// ---------------------------------------------------------------------------
// Reading

/** Bytes kept in front of a chunk so a header straddling two chunks can be made contiguous. */
const HEADROOM = 64;

/**
 * A sliding 1 MiB window over a file, with read-ahead: while the caller
 * works on one chunk, the next one is read into a second buffer.
 */
class ChunkReader {
  private cur: Buffer;
  private spare: Buffer | null = null;
  /** Index in `cur` of the byte at file offset bufStart. */
  private base = HEADROOM;
  private bufStart = 0;
  private bufLen = 0;
  private pf: Promise<number> | null = null;
  private pfStart = -1;

  constructor(
    readonly fd: number,
    public fileSize: number,
  ) {
    this.cur = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(fileSize, 4096)) + HEADROOM);
  }

  get buf(): Buffer {
    return this.cur;
  }

  /** Index of pos in `buf` if [pos, pos+need) is buffered, else -1. */
  at(pos: number, need: number): number {
    return pos >= this.bufStart && pos + need <= this.bufStart + this.bufLen ? this.base + (pos - this.bufStart) : -1;
  }

  /** Buffered bytes from pos on (pos must be buffered). */
  availFrom(pos: number): number {
    return this.bufStart + this.bufLen - pos;
  }

  /**
   * Make [pos, pos+need) available (need <= HEADROOM, or 1 to get whatever
   * follows pos); returns the index of pos in `buf`, or -1 if the file
   * ends first.
   */
  async window(pos: number, need: number): Promise<number> {
    if (pos + need > this.fileSize) return -1;
    const i = this.at(pos, need);
    if (i >= 0) return i;
    await this.load(pos);
    return this.at(pos, need);
  }

  /** window() without a promise when the range is buffered already. */
  sync(pos: number, need: number): number | Promise<number> {
    if (pos + need > this.fileSize) return -1;
    const i = this.at(pos, need);
    return i >= 0 ? i : this.window(pos, need);
  }

  /** Wait for a read-ahead in flight (before the descriptor is closed). */
  async drain(): Promise<void> {
    const pf = this.pf;
    this.pf = null;
    if (pf) await pf.catch(() => 0);
  }

  private async load(pos: number): Promise<void> {
    const end = this.bufStart + this.bufLen;
    if (this.pf !== null && this.pfStart === end && pos >= this.bufStart && pos <= end && end - pos <= HEADROOM) {
      // Continue into the read-ahead chunk, carrying the tail of this one.
      const pf = this.pf;
      this.pf = null;
      const got = await pf;
      const next = this.spare!;
      const carry = end - pos;
      this.cur.copy(next, HEADROOM - carry, this.base + (pos - this.bufStart), this.base + this.bufLen);
      this.spare = this.cur;
      this.cur = next;
      this.base = HEADROOM - carry;
      this.bufStart = pos;
      this.bufLen = carry + got;
      const want = Math.min(CHUNK, this.fileSize - end);
      if (got < want) this.fileSize = end + got; // the file shrank under us
    } else {
      await this.drain();
      const want = Math.min(CHUNK, this.fileSize - pos, this.cur.length - HEADROOM);
      const got = await readFully(this.fd, this.cur, HEADROOM, want, pos);
      this.base = HEADROOM;
      this.bufStart = pos;
      this.bufLen = got;
      if (got < want) this.fileSize = pos + got;
    }
    const nextStart = this.bufStart + this.bufLen;
    if (nextStart < this.fileSize) {
      this.spare ??= Buffer.allocUnsafe(this.cur.length);
      this.pfStart = nextStart;
      this.pf = readFully(this.fd, this.spare, HEADROOM, Math.min(this.spare.length - HEADROOM, this.fileSize - nextStart), nextStart);
      this.pf.catch(() => undefined);
    }
  }
}

/** A scan in progress: everything but the header, which is read first. */
type WalkState = Omit<ScanResult, 'header'>;

async function readHeader(r: ChunkReader, filePath: string): Promise<FileHeader> {
  const at = r.fileSize < FILE_HEADER_SIZE ? -1 : await r.window(0, FILE_HEADER_SIZE);
  if (at < 0) throw new LfcFormatError(filePath, 0, `file too short for a container header (${r.fileSize} bytes)`);
  const h = decodeFileHeader(r.buf.subarray(at, at + FILE_HEADER_SIZE));
  if (typeof h === 'string') throw new LfcFormatError(filePath, 0, h);
  return h;
}

/**
 * Walks the records after the header, validating every CRC, and leaves the
 * outcome in `st`. trySync() handles a record that is wholly buffered
 * without any promise; slow() does the rest (reads, large payloads).
 */
class Walker {
  private pos = FILE_HEADER_SIZE;
  private readonly ailfc: boolean;
  private ended = false;

  constructor(
    private readonly r: ChunkReader,
    header: FileHeader,
    private readonly payloads: boolean,
    readonly st: WalkState,
  ) {
    this.ailfc = header.kind === ContainerKind.AILFC;
  }

  /** The next record, null at the end, undefined if slow() must be used. */
  trySync(): StoredRecord | null | undefined {
    if (this.ended) return null;
    const r = this.r;
    const pos = this.pos;
    const remaining = r.fileSize - pos;
    if (remaining <= 0) return this.end();
    const i = r.at(pos, Math.min(remaining, FOOTER_SIZE));
    if (i < 0) return undefined;
    const rh = this.header(i, remaining);
    if (rh === null) return null;
    const plen = rh.payloadLength;
    if (plen === 0) return this.accept(rh, crcSmall(r.buf, i, i + RECORD_HEADER_SIZE, this.st.bodyCrc), null);
    const j = r.at(pos + RECORD_HEADER_SIZE, plen);
    if (j < 0) return undefined;
    const hcrc = crcSmall(r.buf, i, i + RECORD_HEADER_SIZE, this.st.bodyCrc);
    const piece = r.buf.subarray(j, j + plen);
    if (crc32(piece) !== rh.payloadCrc) return this.stop('payload CRC mismatch');
    return this.accept(rh, hcrc, this.payloads ? Buffer.from(piece) : null);
  }

  async slow(): Promise<StoredRecord | null> {
    if (this.ended) return null;
    const r = this.r;
    const pos = this.pos;
    const remaining = r.fileSize - pos;
    if (remaining <= 0) return this.end();
    const i = await r.window(pos, Math.min(remaining, FOOTER_SIZE));
    if (i < 0) return this.stop('file shrank while reading');
    const rh = this.header(i, remaining);
    if (rh === null) return null;
    const hcrc = crcSmall(r.buf, i, i + RECORD_HEADER_SIZE, this.st.bodyCrc);
    const plen = rh.payloadLength;
    let payload: Buffer | null = null;
    if (plen > 0) {
      // Bounded by the file size (checked in header()).
      if (this.payloads) payload = Buffer.allocUnsafe(plen);
      let crc = 0;
      let done = 0;
      while (done < plen) {
        const at = pos + RECORD_HEADER_SIZE + done;
        let pi = r.sync(at, 1);
        if (typeof pi !== 'number') pi = await pi;
        if (pi < 0) return this.stop('truncated payload');
        const n = Math.min(plen - done, r.availFrom(at));
        const piece = r.buf.subarray(pi, pi + n);
        crc = crc32(piece, crc);
        if (payload) piece.copy(payload, done);
        done += n;
      }
      if (crc !== rh.payloadCrc) return this.stop('payload CRC mismatch');
    }
    return this.accept(rh, hcrc, payload);
  }

  /** Checks at pos with min(remaining, 64) bytes at r.buf[i]; null when the walk ends here. */
  private header(i: number, remaining: number): RecordHeader | null {
    const b = this.r.buf;
    const magic = remaining >= 4 ? getU32(b, i) : -1;
    const st = this.st;
    if (magic === FOOTER_MAGIC) {
      if (remaining < FOOTER_SIZE) return this.stop('truncated footer');
      const f = decodeFooter(b, i);
      if (typeof f === 'string') return this.stop(f);
      st.sealed = true;
      st.footer = f;
      st.validEnd = this.pos + FOOTER_SIZE;
      if (remaining > FOOTER_SIZE) {
        st.tornAt = this.pos + FOOTER_SIZE;
        st.problem = 'bytes after the footer';
      }
      this.ended = true;
      return null;
    }
    if (remaining < RECORD_HEADER_SIZE) {
      return this.stop(magic === RECORD_MAGIC || magic === -1 ? 'truncated record header' : 'bad record magic');
    }
    const rh = decodeRecordHeader(b, i);
    if (typeof rh === 'string') return this.stop(rh);
    if (this.ailfc && st.recordCount > 0 && rh.seq <= st.lastSeq) return this.stop('record seq not above the previous record');
    if (rh.payloadLength > remaining - RECORD_HEADER_SIZE) return this.stop('truncated payload');
    return rh;
  }

  private accept(rh: RecordHeader, hcrc: number, payload: Buffer | null): StoredRecord {
    const st = this.st;
    const plen = rh.payloadLength;
    st.bodyCrc = plen > 0 ? crc32Combine(hcrc, rh.payloadCrc, plen) : hcrc;
    if (st.recordCount === 0) {
      st.firstSeq = rh.seq;
      st.firstTime = rh.time;
    }
    st.recordCount++;
    st.lastSeq = rh.seq;
    st.lastTime = rh.time;
    st.payloadBytes += plen;
    const rec = rh as StoredRecord;
    rec.position = this.pos;
    rec.payload = payload;
    this.pos += RECORD_HEADER_SIZE + plen;
    st.validEnd = this.pos;
    return rec;
  }

  private end(): null {
    this.st.validEnd = this.pos;
    this.ended = true;
    return null;
  }

  private stop(problem: string): null {
    this.st.tornAt = this.pos;
    this.st.problem = problem;
    this.st.validEnd = this.pos;
    this.ended = true;
    return null;
  }
}

function newWalkState(fileSize: number): WalkState {
  return { ...emptyStats(), sealed: false, validEnd: FILE_HEADER_SIZE, fileSize };
}

async function withFd<T>(filePath: string, flags: string, fn: (fd: number, size: number) => Promise<T>): Promise<T> {
  const fd = await openFd(filePath, flags);
  try {
    const size = fs.fstatSync(fd).size;
    return await fn(fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Read the whole file sequentially in 1 MiB chunks, validating every CRC.
 * Throws LfcFormatError (with path and offset) if the file header itself is
 * invalid; anything wrong after it is reported in tornAt/problem.
 */
export function scanContainer(filePath: string): Promise<ScanResult> {
  return withFd(filePath, 'r', async (fd, size) => {
    const r = new ChunkReader(fd, size);
    try {
      const header = await readHeader(r, filePath);
      const st = newWalkState(size);
      const w = new Walker(r, header, false, st);
      for (;;) {
        let rec = w.trySync();
        if (rec === undefined) rec = await w.slow();
        if (rec === null) break;
      }
      return toScanResult(header, st);
    } finally {
      await r.drain();
    }
  });
}

function toScanResult(header: FileHeader, st: WalkState): ScanResult {
  const res: ScanResult = {
    header,
    sealed: st.sealed,
    recordCount: st.recordCount,
    firstSeq: st.firstSeq,
    lastSeq: st.lastSeq,
    firstTime: st.firstTime,
    lastTime: st.lastTime,
    bodyCrc: st.bodyCrc >>> 0,
    payloadBytes: st.payloadBytes,
    validEnd: st.validEnd,
    fileSize: st.fileSize,
  };
  if (st.footer) res.footer = st.footer;
  if (st.tornAt !== undefined) {
    res.tornAt = st.tornAt;
    res.problem = st.problem;
  }
  return res;
}

/** True if the last 64 bytes of the file are a valid footer. */
async function tailIsFooter(r: ChunkReader): Promise<boolean> {
  if (r.fileSize < FILE_HEADER_SIZE + FOOTER_SIZE) return false;
  const b = Buffer.allocUnsafe(FOOTER_SIZE);
  const got = await readFully(r.fd, b, 0, FOOTER_SIZE, r.fileSize - FOOTER_SIZE);
  return got === FOOTER_SIZE && typeof decodeFooter(b, 0) !== 'string';
}

/**
 * Iterate records in file order, validating CRCs; stops at the footer.
 * A corrupt record in a sealed container (one that ends with a valid
 * footer) throws LfcFormatError with `.offset`; a torn tail of an active
 * one ends the iteration. An invalid file header always throws.
 */
export async function* readRecords(filePath: string, opts: { payloads?: boolean } = {}): AsyncGenerator<StoredRecord, void, undefined> {
  const fd = await openFd(filePath, 'r');
  let r: ChunkReader | null = null;
  try {
    r = new ChunkReader(fd, fs.fstatSync(fd).size);
    const header = await readHeader(r, filePath);
    const sealedTail = await tailIsFooter(r);
    const st = newWalkState(r.fileSize);
    const w = new Walker(r, header, opts.payloads !== false, st);
    for (;;) {
      let rec = w.trySync();
      if (rec === undefined) rec = await w.slow();
      if (rec === null) break;
      yield rec;
    }
    if (st.tornAt !== undefined && (sealedTail || st.sealed)) {
      throw new LfcFormatError(filePath, st.tornAt, st.problem ?? 'corrupt record');
    }
  } finally {
    if (r) await r.drain();
    fs.closeSync(fd);
  }
}

/** Read the record at a known position, validating its CRCs. Throws LfcFormatError if it is not valid. */
export async function readRecordAt(fd: number, position: number): Promise<StoredRecord> {
  const where = `fd ${fd}`;
  const size = (await new Promise<fs.Stats>((res, rej) => fs.fstat(fd, (e, s) => (e ? rej(e) : res(s))))).size;
  if (!Number.isInteger(position) || position < FILE_HEADER_SIZE || position + RECORD_HEADER_SIZE > size) {
    throw new LfcFormatError(where, position, 'record position outside the file');
  }
  const hb = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
  const got = await readFully(fd, hb, 0, RECORD_HEADER_SIZE, position);
  if (got < RECORD_HEADER_SIZE) throw new LfcFormatError(where, position, 'truncated record header');
  const rh = decodeRecordHeader(hb, 0);
  if (typeof rh === 'string') throw new LfcFormatError(where, position, rh);
  const plen = rh.payloadLength;
  if (plen > size - position - RECORD_HEADER_SIZE) throw new LfcFormatError(where, position, 'truncated payload');
  let payload: Buffer | null = null;
  if (plen > 0) {
    payload = Buffer.allocUnsafe(plen);
    const n = await readFully(fd, payload, 0, plen, position + RECORD_HEADER_SIZE);
    if (n < plen) throw new LfcFormatError(where, position, 'truncated payload');
    if (crc32(payload) !== rh.payloadCrc) throw new LfcFormatError(where, position, 'payload CRC mismatch');
  }
  const rec = rh as StoredRecord;
  rec.position = position;
  rec.payload = payload;
  return rec;
}

/**
 * Crash recovery of an active container: scan, and cut a torn tail
 * (ftruncate to validEnd, fdatasync). Does not seal. The result describes
 * what the scan found (tornAt/problem say what was cut).
 */
export async function repairActive(filePath: string): Promise<RepairResult> {
  const res = await scanContainer(filePath);
  let truncatedBytes = 0;
  if (res.fileSize > res.validEnd) {
    const fd = await openFd(filePath, 'r+');
    try {
      fs.ftruncateSync(fd, res.validEnd);
      await fdatasyncFd(fd);
    } finally {
      fs.closeSync(fd);
    }
    truncatedBytes = res.fileSize - res.validEnd;
  }
  return { ...res, truncatedBytes };
}

/**
 * Full verification of a sealed container: header CRC, every record CRC,
 * footer CRC and footer fields against the records. Never throws for bad
 * content; throws for I/O errors (ENOENT, EIO...).
 */
export async function verifyContainer(
  filePath: string,
): Promise<{ ok: true; footer: Footer } | { ok: false; offset: number; problem: string }> {
  let res: ScanResult;
  try {
    res = await scanContainer(filePath);
  } catch (err) {
    if (err instanceof LfcFormatError) return { ok: false, offset: err.offset, problem: err.problem };
    throw err;
  }
  if (res.tornAt !== undefined) {
    const footerAt = res.fileSize - FOOTER_SIZE;
    if (!res.sealed && res.tornAt === footerAt && res.fileSize >= FILE_HEADER_SIZE + FOOTER_SIZE) {
      return { ok: false, offset: res.tornAt, problem: `footer corrupt or missing (${res.problem})` };
    }
    return { ok: false, offset: res.tornAt, problem: res.problem ?? 'corrupt' };
  }
  if (!res.sealed || !res.footer) return { ok: false, offset: res.validEnd, problem: 'not sealed: no footer' };
  const f = res.footer;
  const at = res.validEnd - FOOTER_SIZE;
  const mismatch = (what: string, inFooter: number, actual: number): { ok: false; offset: number; problem: string } => ({
    ok: false,
    offset: at,
    problem: `footer ${what} ${inFooter} does not match the records (${actual})`,
  });
  if (f.recordCount !== res.recordCount) return mismatch('record count', f.recordCount, res.recordCount);
  if (f.firstSeq !== res.firstSeq) return mismatch('first seq', f.firstSeq, res.firstSeq);
  if (f.lastSeq !== res.lastSeq) return mismatch('last seq', f.lastSeq, res.lastSeq);
  if (!Object.is(f.firstTime, res.firstTime)) return mismatch('first time', f.firstTime, res.firstTime);
  if (!Object.is(f.lastTime, res.lastTime)) return mismatch('last time', f.lastTime, res.lastTime);
  if (f.payloadBytes !== res.payloadBytes) return mismatch('payload bytes', f.payloadBytes, res.payloadBytes);
  if (f.bodyCrc >>> 0 !== res.bodyCrc >>> 0) return mismatch('body CRC', f.bodyCrc, res.bodyCrc);
  return { ok: true, footer: f };
}

const NAME_RE = /^(active|ailfc|bilfc)-(\d{1,20})\.lfc(\.tmp|\.init)?$/;

/**
 * Containers in a directory, sorted by n: kind 'active' | 'ailfc' | 'bilfc'
 * | 'bilfc-tmp', plus 'partial' for an active-<n>.lfc.init left by a crash
 * during create() (it holds no records and may be deleted).
 */
export async function listContainers(dir: string): Promise<Array<{ kind: string; n: number; path: string }>> {
  const names = await fs.promises.readdir(dir);
  const out: Array<{ kind: string; n: number; path: string }> = [];
  for (const name of names) {
    const m = NAME_RE.exec(name);
    if (!m) continue;
    const n = Number(m[2]);
    if (!Number.isSafeInteger(n)) continue;
    let kind: string = m[1];
    if (m[3] === '.tmp') {
      if (kind !== 'bilfc') continue;
      kind = 'bilfc-tmp';
    } else if (m[3] === '.init') {
      if (kind !== 'active') continue;
      kind = 'partial';
    }
    out.push({ kind, n, path: path.join(dir, name) });
  }
  const order: Record<string, number> = { partial: 0, active: 1, ailfc: 2, 'bilfc-tmp': 3, bilfc: 4 };
  out.sort((a, b) => a.n - b.n || order[a.kind] - order[b.kind]);
  return out;
}
