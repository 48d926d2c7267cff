/**
 * The LFC codec: byte helpers and the encoders and decoders of the three
 * on-disk structures (file header, record header, footer) specified in
 * format.ts. Decoders validate everything they return (magic, CRC, ranges,
 * the payload rule of the record kind) and answer a problem string instead
 * of throwing, so readers can report where a file went bad.
 */
import { crc32, crc32Small } from '../util/crc32';
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
  type ContainerStats,
  type FileHeader,
  type Footer,
  type RecordHeader,
  type RecordInput,
} from './format';

export const TWO32 = 4294967296;
export const MAX_U53 = Number.MAX_SAFE_INTEGER;
export const MAX_U32 = 0xffffffff;

export function putU32(b: Buffer, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

export function getU32(b: Buffer, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}

export function putU64(b: Buffer, o: number, v: number): void {
  putU32(b, o, v >>> 0);
  putU32(b, o + 4, Math.floor(v / TWO32));
}

/** A u64 field; -1 if it is 2^53 or more (corrupt: we never write such values). */
export function getU64(b: Buffer, o: number): number {
  const hi = getU32(b, o + 4);
  if (hi >= 0x200000) return -1;
  return hi * TWO32 + getU32(b, o);
}

/** Record kinds a container may hold. */
export const KIND_OK = new Uint8Array(256);
KIND_OK[RecordKind.Write] = 1;
KIND_OK[RecordKind.Trim] = 1;
KIND_OK[RecordKind.Zero] = 1;
KIND_OK[RecordKind.Error] = 1;
KIND_OK[RecordKind.Resync] = 1;
KIND_OK[RecordKind.BeforeBlock] = 1;

/** 1: payload length must equal `length`; 2: must be 0; 0: free (error message). */
export const KIND_PAYLOAD = new Uint8Array(256);
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
  if (b[9] !== LFC_VERSION)
    return b[9]! > LFC_VERSION
      ? `container format version ${b[9]}, written by a newer Rewind (this one reads version ${LFC_VERSION})`
      : `unsupported container format version ${b[9]}`;
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
export function decodeFooter(b: Buffer, o: number): Footer | string {
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
export function decodeRecordHeader(b: Buffer, o: number): RecordHeader | string {
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

export function pickStats(s: ContainerStats): ContainerStats {
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

export function emptyStats(): ContainerStats {
  return { recordCount: 0, firstSeq: 0, lastSeq: 0, firstTime: 0, lastTime: 0, bodyCrc: 0, payloadBytes: 0 };
}

/**
 * Encode the header of `rec` (whose payload has `plen` bytes and CRC `pcrc`)
 * into b[o..o+48). The caller has validated the fields (validRecord).
 */
export function encodeRecordHeader(b: Buffer, o: number, rec: RecordInput, plen: number, pcrc: number): void {
  const volumeId = rec.volumeId;
  putU32(b, o, RECORD_MAGIC);
  b[o + 4] = rec.kind;
  b[o + 5] = rec.flags ?? 0;
  b[o + 6] = volumeId;
  b[o + 7] = volumeId >>> 8;
  putU64(b, o + 8, rec.seq);
  b.writeDoubleLE(rec.time, o + 16);
  putU64(b, o + 24, rec.offset);
  putU32(b, o + 32, rec.length);
  putU32(b, o + 36, plen);
  putU32(b, o + 40, pcrc);
  putU32(b, o + 44, crc32Small(b, o, o + 44, 0));
}

/** Why `rec` with a payload of `plen` bytes cannot be encoded, or null. */
export function invalidRecord(rec: RecordInput, plen: number): string | null {
  const flags = rec.flags ?? 0;
  const { kind, seq, offset, length, time, volumeId } = rec;
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
    return `invalid record ${JSON.stringify(rec)}`;
  }
  const rule = KIND_PAYLOAD[kind];
  if ((rule === 1 && plen !== length) || (rule === 2 && plen !== 0)) {
    return `record kind ${kind}: payload length ${plen} does not fit length ${length}`;
  }
  return null;
}

/** A run of encoded records, checked: how many, their payload bytes, the first and last header. */
export interface CheckedRecords {
  records: number;
  payloadBytes: number;
  first: RecordHeader | null;
  last: RecordHeader | null;
}

/** Checks a run of encoded records (headers and payloads back to back): every header and payload CRC. */
export function checkRecords(raw: Buffer): CheckedRecords | string {
  let off = 0;
  let records = 0;
  let payloadBytes = 0;
  let first: RecordHeader | null = null;
  let last: RecordHeader | null = null;
  while (off < raw.length) {
    if (off + RECORD_HEADER_SIZE > raw.length) return `record header cut short at ${off}`;
    const h = decodeRecordHeader(raw, off);
    if (typeof h === 'string') return `${h} at ${off}`;
    const end = off + RECORD_HEADER_SIZE + h.payloadLength;
    if (end > raw.length) return `record payload cut short at ${off}`;
    if (h.payloadLength > 0 && crc32(raw.subarray(off + RECORD_HEADER_SIZE, end)) !== h.payloadCrc)
      return `payload checksum mismatch in the record at ${off}`;
    records++;
    payloadBytes += h.payloadLength;
    first ??= h;
    last = h;
    off = end;
  }
  return { records, payloadBytes, first, last };
}
