/**
 * Incremental surfaces (seed 000 L196): what changed between two points.
 *
 * The changed set of volume V between points A < B is every 4 KiB block
 * (the block index's granularity) that a write of V with A.seq < seq <=
 * B.seq touched. It comes from the index, not from reading images: the
 * block runs of each transaction wholly inside (A, B], and the record
 * headers of the AILFCs of the (at most two) transactions that hold A and B.
 *
 * Three forms: a JSON list of extents; a read-only export of B whose
 * block status is B's own (base:allocation never claims zeroes over data)
 * and which publishes the changed extents as the meta context
 * `qemu:dirty-bitmap:NAME` (dirty-bitmap.ts), so qemu or a libnbd client
 * copies just those onto a copy of A; and a diff file:
 *
 * Diff file format (little-endian; CRC-32 with the zlib polynomial):
 *   header, 64 bytes:
 *     0  u8[8] magic "RWDIFF\0\1"
 *     8  u32   format version (1)
 *    12  u32   block size of the extents
 *    16  u64   volume size
 *    24  u64   from seq        32  u64   to seq
 *    40  f64   from time (ms)  48  f64   to time (ms)
 *    56  u32   reserved (0)    60  u32   CRC-32 of bytes 0..59
 *   then one record per extent, ascending and disjoint:
 *     0  u64   offset      8  u32   length      12  u32   CRC-32 of the data
 *    16  data (length bytes: the content at "to")
 *   footer, 32 bytes:
 *     0  u8[8] magic "RWDIFEND"   8  u64 extent count   16  u64 data bytes
 *    24  u32   CRC-32 of every record byte (headers and data)
 *    28  u32   CRC-32 of footer bytes 0..27
 * `rewind apply-diff FILE IMAGE` checks every CRC before it writes anything,
 * and that IMAGE has the volume's size.
 */
import * as fs from 'node:fs';
import { crc32 } from '../util/crc32';
import { RecordKind } from '../lfc';
import { txnRecords, type PointHistory, type ResolvedPoint } from './point';
import type { ImageSource } from './point-image';

export interface BlockRunLite {
  start: number;
  count: number;
}

export interface Extent {
  offset: number;
  length: number;
}

/** What the diff needs from a manager: transactions' block runs (index "runs"). */
export interface DiffHistory extends PointHistory {
  readonly blockSize: number;
  transactionRuns(n: number, volumeId: number): BlockRunLite[];
}

function addRange(marks: BlockRunLite[], offset: number, length: number, bs: number): void {
  if (length <= 0) return;
  const a = Math.floor(offset / bs);
  const z = Math.floor((offset + length - 1) / bs);
  marks.push({ start: a, count: z - a + 1 });
}

function merge(marks: BlockRunLite[]): BlockRunLite[] {
  marks.sort((x, y) => x.start - y.start);
  const out: BlockRunLite[] = [];
  for (const m of marks) {
    const last = out[out.length - 1];
    if (last && m.start <= last.start + last.count) last.count = Math.max(last.count, m.start + m.count - last.start);
    else out.push({ ...m });
  }
  return out;
}

const applied = (k: number): boolean => k === RecordKind.Write || k === RecordKind.Resync || k === RecordKind.Trim || k === RecordKind.Zero;

/** Changed block runs of volume `volumeId` between points a < b (see the file comment). */
export async function changedRuns(h: DiffHistory, volumeId: number, a: ResolvedPoint, b: ResolvedPoint): Promise<BlockRunLite[]> {
  const bs = h.blockSize;
  const marks: BlockRunLite[] = [];
  // Transactions holding writes in (a.seq, b.seq]: from the one after a's boundary to b's.
  const firstTxn = a.overlay ?? a.k;
  const lastTxn = b.txn;
  for (let n = firstTxn; n <= lastTxn; n++) {
    const t = h.transaction(n);
    if (!t || t.records === 0) continue;
    const whole = t.firstSeq > a.seq && t.lastSeq <= b.seq;
    if (whole) {
      marks.push(...h.transactionRuns(n, volumeId));
      continue;
    }
    for (const r of await txnRecords(h, n)) {
      if (r.volumeId !== volumeId || r.seq <= a.seq || r.seq > b.seq || !applied(r.kind)) continue;
      addRange(marks, r.offset, r.length, bs);
    }
  }
  return merge(marks);
}

export function runsToExtents(runs: BlockRunLite[], bs: number, size: number): Extent[] {
  return runs.map((r) => ({ offset: r.start * bs, length: Math.min(size, (r.start + r.count) * bs) - r.start * bs }));
}

const HEADER = 64;
const FOOTER = 32;
const MAGIC = Buffer.from('RWDIFF\x00\x01', 'latin1');
const END = Buffer.from('RWDIFEND', 'latin1');

/** Writes a diff file (see the format above) to `file` (tmp + rename). */
export async function writeDiffFile(
  file: string,
  img: ImageSource,
  extents: Extent[],
  meta: { from: ResolvedPoint; to: ResolvedPoint },
  progress: (done: number, total: number) => void = () => undefined,
): Promise<{ extents: number; dataBytes: number; fileBytes: number }> {
  const tmp = `${file}.partial`;
  const fh = await fs.promises.open(tmp, 'wx', 0o600);
  try {
    const h = Buffer.alloc(HEADER);
    MAGIC.copy(h, 0);
    h.writeUInt32LE(1, 8);
    h.writeUInt32LE(img.blockSize, 12);
    h.writeBigUInt64LE(BigInt(img.size), 16);
    h.writeBigUInt64LE(BigInt(meta.from.seq), 24);
    h.writeBigUInt64LE(BigInt(meta.to.seq), 32);
    h.writeDoubleLE(meta.from.time, 40);
    h.writeDoubleLE(meta.to.time, 48);
    h.writeUInt32LE(crc32(h.subarray(0, 60)), 60);
    await fh.write(h, 0, HEADER, 0);
    let pos = HEADER;
    let crc = 0;
    let dataBytes = 0;
    const total = extents.reduce((a, e) => a + e.length, 0);
    const CHUNK = 1 << 20;
    for (const e of extents) {
      for (let off = e.offset; off < e.offset + e.length; off += CHUNK) {
        const len = Math.min(CHUNK, e.offset + e.length - off);
        const data = await img.read(off, len);
        const rh = Buffer.alloc(16);
        rh.writeBigUInt64LE(BigInt(off), 0);
        rh.writeUInt32LE(len, 8);
        rh.writeUInt32LE(crc32(data), 12);
        await fh.writev([rh, data], pos);
        crc = crc32(data, crc32(rh, crc));
        pos += 16 + len;
        dataBytes += len;
        progress(dataBytes, total);
      }
    }
    const f = Buffer.alloc(FOOTER);
    END.copy(f, 0);
    // Records are split at 1 MiB: the count is of records, as the reader sees them.
    const records = extents.reduce((a, e) => a + Math.ceil(e.length / CHUNK), 0);
    f.writeBigUInt64LE(BigInt(records), 8);
    f.writeBigUInt64LE(BigInt(dataBytes), 16);
    f.writeUInt32LE(crc, 24);
    f.writeUInt32LE(crc32(f.subarray(0, 28)), 28);
    await fh.write(f, 0, FOOTER, pos);
    await fh.sync();
    await fh.close();
    await fs.promises.rename(tmp, file);
    return { extents: records, dataBytes, fileBytes: pos + FOOTER };
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
}

export interface DiffFileInfo {
  blockSize: number;
  volumeSize: number;
  fromSeq: number;
  toSeq: number;
  fromTime: number;
  toTime: number;
  records: number;
  dataBytes: number;
}

export class DiffFileError extends Error {
  constructor(file: string, offset: number, problem: string) {
    super(`${file}: not a valid diff file at offset ${offset}: ${problem}`);
    this.name = 'DiffFileError';
  }
}

/** Checks every CRC of a diff file; calls onRecord for each record when given (after the header is checked). */
export async function readDiffFile(file: string, onRecord?: (offset: number, data: Buffer) => Promise<void>): Promise<DiffFileInfo> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size < HEADER + FOOTER) throw new DiffFileError(file, 0, 'too short');
    const h = Buffer.alloc(HEADER);
    await fh.read(h, 0, HEADER, 0);
    if (!h.subarray(0, 8).equals(MAGIC)) throw new DiffFileError(file, 0, 'bad magic');
    if (crc32(h.subarray(0, 60)) !== h.readUInt32LE(60)) throw new DiffFileError(file, 0, 'header checksum mismatch');
    if (h.readUInt32LE(8) !== 1)
      throw new DiffFileError(file, 8, `format version ${h.readUInt32LE(8)}: written by a newer Rewind (this one reads version 1)`);
    const f = Buffer.alloc(FOOTER);
    await fh.read(f, 0, FOOTER, size - FOOTER);
    if (!f.subarray(0, 8).equals(END) || crc32(f.subarray(0, 28)) !== f.readUInt32LE(28))
      throw new DiffFileError(file, size - FOOTER, 'bad footer');
    // Sizes and offsets past 2^53 would lose precision as numbers: order and bounds checks would lie.
    if (h.readBigUInt64LE(16) > BigInt(Number.MAX_SAFE_INTEGER)) throw new DiffFileError(file, 16, 'volume size past 2^53');
    const info: DiffFileInfo = {
      blockSize: h.readUInt32LE(12),
      volumeSize: Number(h.readBigUInt64LE(16)),
      fromSeq: Number(h.readBigUInt64LE(24)),
      toSeq: Number(h.readBigUInt64LE(32)),
      fromTime: h.readDoubleLE(40),
      toTime: h.readDoubleLE(48),
      records: Number(f.readBigUInt64LE(8)),
      dataBytes: Number(f.readBigUInt64LE(16)),
    };
    let pos = HEADER;
    let crc = 0;
    let n = 0;
    let prevEnd = 0;
    let bytes = 0;
    const rh = Buffer.alloc(16);
    while (pos < size - FOOTER) {
      if (pos + 16 > size - FOOTER) throw new DiffFileError(file, pos, 'truncated record header');
      await fh.read(rh, 0, 16, pos);
      const off64 = rh.readBigUInt64LE(0);
      if (off64 > BigInt(Number.MAX_SAFE_INTEGER)) throw new DiffFileError(file, pos, 'record offset past 2^53');
      const off = Number(off64);
      const len = rh.readUInt32LE(8);
      if (len === 0 || len > 64 << 20 || pos + 16 + len > size - FOOTER) throw new DiffFileError(file, pos, `bad record length ${len}`);
      if (off < prevEnd || off + len > info.volumeSize)
        throw new DiffFileError(file, pos, `record ${off}+${len} out of order or past the volume`);
      const data = Buffer.allocUnsafe(len);
      await fh.read(data, 0, len, pos + 16);
      if (crc32(data) !== rh.readUInt32LE(12)) throw new DiffFileError(file, pos, 'data checksum mismatch');
      crc = crc32(data, crc32(rh, crc));
      if (onRecord) await onRecord(off, data);
      prevEnd = off + len;
      bytes += len;
      pos += 16 + len;
      n++;
    }
    if (n !== info.records || bytes !== info.dataBytes || crc !== f.readUInt32LE(24))
      throw new DiffFileError(file, size - FOOTER, 'record count, data bytes or body checksum does not match the footer');
    return info;
  } finally {
    await fh.close();
  }
}
