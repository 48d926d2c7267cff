/**
 * The pure part of processing AILFC_n: which blocks it touches, where their
 * before-images go in BILFC_n, how the apply is cut into bounded batches,
 * and how one block's final content is computed. Used by the piscina
 * workers (apply-worker.ts) and by time-travel readers.
 *
 * Memory: the record table holds ~41 bytes per AILFC record (no payloads),
 * and a record header alone is 48 bytes on disk, so the table is never
 * larger than the container. Block runs are intervals, so a trim of a whole
 * volume is one run, not a set of blocks.
 */
import * as fs from 'node:fs';
import { crc32 } from '../util/crc32';
import { FILE_HEADER_SIZE, RECORD_HEADER_SIZE, RecordKind, decodeRecordHeader } from '../lfc';
import type { BlockRun } from './types';

/** AILFC records in file (= seq) order, columnar. Error records are kept but flagged. */
export class RecordTable {
  count = 0;
  kind: Uint8Array = new Uint8Array(1024);
  vol: Uint16Array = new Uint16Array(1024);
  seq: Float64Array = new Float64Array(1024);
  offset: Float64Array = new Float64Array(1024);
  length: Float64Array = new Float64Array(1024);
  /** File offset of the record header; the payload follows it. */
  position: Float64Array = new Float64Array(1024);

  push(kind: number, vol: number, seq: number, offset: number, length: number, position: number): void {
    if (this.count === this.kind.length) this.grow();
    const i = this.count++;
    this.kind[i] = kind;
    this.vol[i] = vol;
    this.seq[i] = seq;
    this.offset[i] = offset;
    this.length[i] = length;
    this.position[i] = position;
  }

  /** The filled part, for passing to another thread (structured clone). */
  data(): RecordTableData {
    return {
      count: this.count,
      kind: this.kind.slice(0, this.count),
      vol: this.vol.slice(0, this.count),
      seq: this.seq.slice(0, this.count),
      offset: this.offset.slice(0, this.count),
      length: this.length.slice(0, this.count),
      position: this.position.slice(0, this.count),
    };
  }

  static from(d: RecordTableData): RecordTable {
    const t = new RecordTable();
    t.count = d.count;
    t.kind = d.kind;
    t.vol = d.vol;
    t.seq = d.seq;
    t.offset = d.offset;
    t.length = d.length;
    t.position = d.position;
    if (t.kind.length === 0) {
      t.kind = new Uint8Array(16);
      t.vol = new Uint16Array(16);
      t.seq = new Float64Array(16);
      t.offset = new Float64Array(16);
      t.length = new Float64Array(16);
      t.position = new Float64Array(16);
    }
    return t;
  }

  private grow(): void {
    const n = this.kind.length * 2;
    const u8 = new Uint8Array(n);
    u8.set(this.kind);
    this.kind = u8;
    const u16 = new Uint16Array(n);
    u16.set(this.vol);
    this.vol = u16;
    const f = (a: Float64Array): Float64Array => {
      const b = new Float64Array(n);
      b.set(a);
      return b;
    };
    this.seq = f(this.seq);
    this.offset = f(this.offset);
    this.length = f(this.length);
    this.position = f(this.position);
  }
}

export interface RecordTableData {
  count: number;
  kind: Uint8Array;
  vol: Uint16Array;
  seq: Float64Array;
  offset: Float64Array;
  length: Float64Array;
  position: Float64Array;
}

/** Does a record of this kind change the image? (Error records do not.) */
export function isApplied(kind: number): boolean {
  return kind === RecordKind.Write || kind === RecordKind.Resync || kind === RecordKind.Trim || kind === RecordKind.Zero;
}

/** Does a record of this kind carry the new data as its payload? */
export function carriesData(kind: number): boolean {
  return kind === RecordKind.Write || kind === RecordKind.Resync;
}

export interface RecordStats {
  records: number;
  errors: number;
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
}

export class PlanError extends Error {
  constructor(
    message: string,
    readonly offset?: number,
  ) {
    super(message);
    this.name = 'PlanError';
  }
}

/**
 * Checks one AILFC record against the volumes of the group and adds it to
 * the table. Throws PlanError for a record the manager cannot apply.
 */
export function addRecord(
  t: RecordTable,
  stats: RecordStats,
  kind: number,
  volumeId: number,
  seq: number,
  time: number,
  offset: number,
  length: number,
  payloadLength: number,
  position: number,
  sizes: ReadonlyMap<number, number>,
): void {
  if (stats.records > 0 && seq <= stats.lastSeq) {
    throw new PlanError(`record at ${position}: seq ${seq} does not follow ${stats.lastSeq}`, position);
  }
  if (stats.records === 0) {
    stats.firstSeq = seq;
    stats.firstTime = time;
  }
  stats.records++;
  stats.lastSeq = seq;
  stats.lastTime = time;
  if (kind === RecordKind.Error) {
    stats.errors++;
    t.push(kind, volumeId, seq, offset, length, position);
    return;
  }
  if (!isApplied(kind)) {
    throw new PlanError(`record at ${position}: kind ${kind} does not belong in an AILFC`, position);
  }
  const size = sizes.get(volumeId);
  if (size === undefined) {
    throw new PlanError(`record at ${position} (seq ${seq}): unknown volume ${volumeId}`, position);
  }
  if (offset + length > size) {
    throw new PlanError(
      `record at ${position} (seq ${seq}): range ${offset}+${length} is beyond volume ${volumeId} (${size} bytes)`,
      position,
    );
  }
  if (carriesData(kind) ? payloadLength !== length : payloadLength !== 0) {
    throw new PlanError(`record at ${position}: payload of ${payloadLength} bytes for a kind ${kind} record of ${length} bytes`, position);
  }
  t.push(kind, volumeId, seq, offset, length, position);
}

/**
 * Reads the record headers of a sealed, already verified container from
 * `fd` into the table: header magic and CRC are checked again, payloads are
 * skipped (a 64 KiB window while records are small, 48-byte reads when
 * they are large). `end` is the footer's offset.
 */
export function scanHeaders(fd: number, end: number, t: RecordTable, stats: RecordStats, sizes: ReadonlyMap<number, number>): void {
  const WIN = 64 * 1024;
  const win = Buffer.allocUnsafe(WIN);
  let winStart = 0;
  let winLen = 0;
  let pos = FILE_HEADER_SIZE;
  let lastPayload = 0;
  while (pos < end) {
    if (pos + RECORD_HEADER_SIZE > end) throw new PlanError(`record at ${pos}: truncated`, pos);
    if (pos < winStart || pos + RECORD_HEADER_SIZE > winStart + winLen) {
      winStart = pos;
      const want = lastPayload >= 4096 ? RECORD_HEADER_SIZE : Math.min(WIN, end - pos);
      winLen = fs.readSync(fd, win, 0, want, pos);
      if (winLen < RECORD_HEADER_SIZE) throw new PlanError(`record at ${pos}: short read`, pos);
    }
    const h = decodeRecordHeader(win, pos - winStart);
    if (typeof h === 'string') throw new PlanError(`record at ${pos}: ${h}`, pos);
    const plen = h.payloadLength;
    addRecord(t, stats, h.kind, h.volumeId, h.seq, h.time, h.offset, h.length, plen, pos, sizes);
    lastPayload = plen;
    pos += RECORD_HEADER_SIZE + plen;
  }
  if (pos !== end) throw new PlanError(`records end at ${pos}, the footer is at ${end}`, end);
}

export function emptyStats(): RecordStats {
  return { records: 0, errors: 0, firstSeq: 0, lastSeq: 0, firstTime: 0, lastTime: 0 };
}

/** Length of block b of a volume of `size` bytes (the last one may be short). */
export function blockLength(b: number, blockSize: number, size: number): number {
  return Math.min(blockSize, size - b * blockSize);
}

/**
 * The runs of blocks touched by the applied records, merged (overlapping or
 * adjacent), in ascending (volume, block) order, with the position each
 * run's first BeforeBlock record gets in BILFC_n.
 */
export function computeRuns(t: RecordTable, blockSize: number, sizes: ReadonlyMap<number, number>, headerEnd: number): BlockRun[] {
  const idx: number[] = [];
  const firstB = new Float64Array(t.count);
  const lastB = new Float64Array(t.count);
  const key = new Float64Array(t.count);
  for (let i = 0; i < t.count; i++) {
    if (!isApplied(t.kind[i]!) || t.length[i]! === 0) continue;
    idx.push(i);
    firstB[i] = Math.floor(t.offset[i]! / blockSize);
    lastB[i] = Math.floor((t.offset[i]! + t.length[i]! - 1) / blockSize);
    key[i] = t.vol[i]! * 2 ** 36 + firstB[i]!; // blocks < 2^36, volume ids < 2^16: exact in a double
  }
  const first = (i: number) => firstB[i]!;
  const last = (i: number) => lastB[i]!;
  idx.sort((a, b) => key[a]! - key[b]!);
  const runs: BlockRun[] = [];
  let cur: BlockRun | null = null;
  for (const i of idx) {
    const v = t.vol[i]!;
    const s = first(i);
    const e = last(i);
    if (cur && cur.volumeId === v && s <= cur.start + cur.count) {
      if (e + 1 > cur.start + cur.count) cur.count = e + 1 - cur.start;
    } else {
      cur = { volumeId: v, start: s, count: e + 1 - s, position: 0 };
      runs.push(cur);
    }
  }
  let pos = headerEnd;
  for (const r of runs) {
    r.position = pos;
    const size = sizes.get(r.volumeId)!;
    const end = r.start + r.count;
    const lastLen = blockLength(end - 1, blockSize, size);
    pos += (r.count - 1) * (RECORD_HEADER_SIZE + blockSize) + RECORD_HEADER_SIZE + lastLen;
  }
  return runs;
}

/** Total size of the BeforeBlock records of `runs` (= BILFC body size). */
export function runsBytes(runs: BlockRun[], blockSize: number, sizes: ReadonlyMap<number, number>): number {
  let total = 0;
  for (const r of runs) {
    const size = sizes.get(r.volumeId)!;
    total += r.count * RECORD_HEADER_SIZE + (r.count - 1) * blockSize + blockLength(r.start + r.count - 1, blockSize, size);
  }
  return total;
}

/** A slice of a run, inside one batch. */
export interface Piece {
  volumeId: number;
  /** First block. */
  start: number;
  count: number;
  /** Position of block `start`'s BeforeBlock record in BILFC_n. */
  position: number;
  /** Byte offset in the volume, and length (clamped at the volume's end). */
  byteStart: number;
  byteLength: number;
  /** Where the piece lives in its batch buffer. */
  bufOffset: number;
}

export interface Batch {
  volumeId: number;
  pieces: Piece[];
  bytes: number;
  /** Indexes into the RecordTable of the applied records touching this batch, in seq order. */
  records: number[];
}

/**
 * Cuts the runs of one volume into batches of at most `batchBytes` of block
 * data (at least one block each), in ascending block order, and assigns
 * every applied record of that volume to the batches it touches (keeping
 * seq order inside each batch).
 */
export function planBatches(
  t: RecordTable,
  runs: BlockRun[],
  volumeId: number,
  blockSize: number,
  size: number,
  batchBytes: number,
): Batch[] {
  const maxBlocks = Math.max(1, Math.floor(batchBytes / blockSize));
  const batches: Batch[] = [];
  const pieces: Array<{ piece: Piece; batch: number }> = [];
  let cur: Batch | null = null;
  let curBlocks = 0;
  const stride = RECORD_HEADER_SIZE + blockSize;
  for (const r of runs) {
    if (r.volumeId !== volumeId) continue;
    let b = r.start;
    const end = r.start + r.count;
    while (b < end) {
      if (!cur || curBlocks >= maxBlocks) {
        cur = { volumeId, pieces: [], bytes: 0, records: [] };
        batches.push(cur);
        curBlocks = 0;
      }
      const n = Math.min(end - b, maxBlocks - curBlocks);
      const byteStart = b * blockSize;
      const byteEnd = Math.min((b + n) * blockSize, size);
      const piece: Piece = {
        volumeId,
        start: b,
        count: n,
        position: r.position + (b - r.start) * stride,
        byteStart,
        byteLength: byteEnd - byteStart,
        bufOffset: cur.bytes,
      };
      cur.pieces.push(piece);
      pieces.push({ piece, batch: batches.length - 1 });
      cur.bytes += piece.byteLength;
      curBlocks += n;
      b += n;
    }
  }
  // Assign records: pieces are sorted by start block; binary-search the
  // piece holding a record's first byte and walk forward.
  for (let i = 0; i < t.count; i++) {
    if (t.vol[i] !== volumeId || !isApplied(t.kind[i]!) || t.length[i] === 0) continue;
    const lo = t.offset[i]!;
    const hi = lo + t.length[i]!;
    let a = 0;
    let z = pieces.length - 1;
    while (a < z) {
      const m = (a + z + 1) >> 1;
      if (pieces[m]!.piece.byteStart <= lo) a = m;
      else z = m - 1;
    }
    let lastBatch = -1;
    for (let p = a; p < pieces.length && pieces[p]!.piece.byteStart < hi; p++) {
      const { piece, batch } = pieces[p]!;
      if (piece.byteStart + piece.byteLength <= lo) continue;
      if (batch !== lastBatch) {
        batches[batch]!.records.push(i);
        lastBatch = batch;
      }
    }
  }
  return batches;
}

/**
 * Reads `count` BeforeBlock records laid back to back in `buf` (from offset
 * 0), checks each (magic, header CRC, payload CRC, kind, volume, offset,
 * length) and copies each payload into `dest` at `destOffset` onward.
 * Throws PlanError with the file offset (basePosition + offset in buf) of
 * the first bad record.
 */
export function unpackBeforeBlocks(
  buf: Buffer,
  basePosition: number,
  volumeId: number,
  firstBlock: number,
  count: number,
  blockSize: number,
  size: number,
  dest: Buffer,
  destOffset: number,
): void {
  let off = 0;
  let d = destOffset;
  for (let i = 0; i < count; i++) {
    const b = firstBlock + i;
    const len = blockLength(b, blockSize, size);
    const where = basePosition + off;
    if (buf.length - off < RECORD_HEADER_SIZE) throw new PlanError(`BILFC record at ${where}: truncated record header`, where);
    const h = decodeRecordHeader(buf, off);
    if (typeof h === 'string') throw new PlanError(`BILFC record at ${where}: ${h}`, where);
    const { kind, volumeId: vol, offset, length, payloadLength: plen, payloadCrc } = h;
    if (kind !== RecordKind.BeforeBlock || vol !== volumeId || offset !== b * blockSize || length !== len || plen !== len) {
      throw new PlanError(
        `BILFC record at ${where} is (kind ${kind}, volume ${vol}, offset ${offset}, length ${length}), expected the before-block of volume ${volumeId} block ${b}`,
        where,
      );
    }
    const p = off + RECORD_HEADER_SIZE;
    if (p + len > buf.length) throw new PlanError(`BILFC record at ${where}: truncated payload`, where);
    const payload = buf.subarray(p, p + len);
    if (crc32(payload) !== payloadCrc) throw new PlanError(`BILFC record at ${where}: payload checksum mismatch`, where);
    payload.copy(dest, d);
    d += len;
    off = p + len;
  }
}
