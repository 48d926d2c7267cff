/**
 * LFC readers: scan (validate a whole container and sum it up), stream its
 * records, read one record at a position, repair a torn active container,
 * verify a sealed one, and list the containers of a directory.
 *
 * Readers stream the file in 1 MiB chunks, bound-check every length against
 * the file size before allocating, and never trust a field they have not
 * CRC-checked.
 */
import * as fs from 'node:fs';
import { crc32, crc32Combine, crc32Small } from '../util/crc32';
import { decodeFileHeader, decodeFooter, decodeRecordHeader, emptyStats, getU32 } from './codec';
import {
  ContainerKind,
  FILE_HEADER_SIZE,
  FOOTER_MAGIC,
  FOOTER_SIZE,
  LfcFormatError,
  RECORD_HEADER_SIZE,
  RECORD_MAGIC,
  type FileHeader,
  type Footer,
  type RecordHeader,
  type RepairResult,
  type ScanResult,
  type StoredRecord,
} from './format';
import { fdatasyncFd, openFd, readFully } from './io';

/** Read granularity of scanners. */
const CHUNK = 1024 * 1024;
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
    if (plen === 0) return this.accept(rh, crc32Small(r.buf, i, i + RECORD_HEADER_SIZE, this.st.bodyCrc), null);
    const j = r.at(pos + RECORD_HEADER_SIZE, plen);
    if (j < 0) return undefined;
    const hcrc = crc32Small(r.buf, i, i + RECORD_HEADER_SIZE, this.st.bodyCrc);
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
    const hcrc = crc32Small(r.buf, i, i + RECORD_HEADER_SIZE, this.st.bodyCrc);
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
export function scanContainer(filePath: string, onRecord?: (rec: StoredRecord) => void): Promise<ScanResult> {
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
        onRecord?.(rec);
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
 * content; throws for I/O errors (ENOENT, EIO...). `onRecord` sees each
 * record whose checksums held, in order, without its payload (so a caller
 * that needs the headers reads the file once); what it throws propagates.
 */
export async function verifyContainer(
  filePath: string,
  onRecord?: (rec: StoredRecord) => void,
): Promise<{ ok: true; footer: Footer } | { ok: false; offset: number; problem: string }> {
  let res: ScanResult;
  try {
    res = await scanContainer(filePath, onRecord);
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
