/**
 * The pack file format (pure: no I/O). A pack holds many chunks so that a
 * TiB is thousands of files, not millions; like restic's packs it ends
 * with an index of its chunks, so the pool's index can be rebuilt from the
 * packs alone. Integers are little-endian. CRCs are CRC-32 (zlib's).
 *
 *   header  64 bytes
 *     0  magic "RWPACK\0\1"        8
 *     8  version u16 = 1           10 kind u8 (1 data, 2 tree)
 *     11 flags u8 (bit 0: encrypted)
 *     12 reserved u32              16 pool id (16 bytes)
 *     32 pack id (16 bytes)        48 created, ms since the epoch (u48) + u16 0
 *     56 reserved u32              60 CRC of bytes 0..60
 *   records, back to back, each a 56-byte header and its payload
 *     0  magic "RWC1"              4  handle (33 bytes)
 *     37 type u8 (1 leaf, 2 tree node)
 *     38 codec u8 (bit 0: zstd; bit 7: sealed with AES-256-GCM, aad = handle|type)
 *     39 reserved u8               40 raw length u32 (plaintext)
 *     44 stored length u32         48 CRC of the payload
 *     52 CRC of header bytes 0..52
 *   index: one 56-byte entry per record, in file order (sealed as a whole
 *   when the pack is encrypted, aad = pack id)
 *     0  handle (33)   33 type u8   34 codec u8   35 reserved u8
 *     36 record offset u48 + u16 0   44 raw length u32   48 stored length u32
 *     52 payload CRC u32
 *   footer  32 bytes
 *     0  magic "RWPKEND1"          8  index offset u48 + u16 0
 *     16 index length u32          20 entry count u32
 *     24 CRC of the index bytes    28 CRC of footer bytes 0..28
 *
 * Every length read from a file is checked against hard bounds and the
 * file's size before anything is allocated (the fuzzer holds us to it).
 */
import { crc32 } from '../util/crc32';
import { ArchiveFormatError } from './errors';
import { HANDLE_SIZE, checkHandle, type Handle } from './handle';

export const PACK_MAGIC = Buffer.from('RWPACK\0\x01', 'latin1');
export const FOOTER_MAGIC = Buffer.from('RWPKEND1', 'latin1');
export const RECORD_MAGIC = Buffer.from('RWC1', 'latin1');
export const PACK_HEADER_SIZE = 64;
export const RECORD_HEADER_SIZE = 56;
export const INDEX_ENTRY_SIZE = 56;
export const FOOTER_SIZE = 32;
export const PACK_VERSION = 1;

/** Largest plaintext chunk: a 4 MiB leaf (a node of 65535 handles is ~2.1 MiB). */
export const MAX_RAW = 4 * 1024 * 1024;
/** Largest stored payload: raw plus sealing overhead, with room to spare. */
export const MAX_STORED = MAX_RAW + 64 * 1024;
/** Largest pack this code writes or reads. */
export const MAX_PACK = 4 * 1024 * 1024 * 1024;

export const KIND_DATA = 1;
export const KIND_TREE = 2;
export type PackKind = typeof KIND_DATA | typeof KIND_TREE;

export const TYPE_LEAF = 1;
export const TYPE_NODE = 2;
export type ChunkType = typeof TYPE_LEAF | typeof TYPE_NODE;

export const CODEC_ZSTD = 0x01;
export const CODEC_SEALED = 0x80;

export interface PackHeader {
  kind: PackKind;
  encrypted: boolean;
  poolId: string;
  packId: string;
  created: number;
}

/** One chunk of a pack: what the record header and the index entry both say. */
export interface PackEntry {
  handle: Handle;
  type: ChunkType;
  codec: number;
  /** Offset of the record header in the pack. */
  offset: number;
  rawLength: number;
  storedLength: number;
  crc: number;
}

export interface PackFooter {
  indexOffset: number;
  indexLength: number;
  entries: number;
  indexCrc: number;
}

export function recordSize(e: { storedLength: number }): number {
  return RECORD_HEADER_SIZE + e.storedLength;
}

export function encodePackHeader(h: PackHeader): Buffer {
  const b = Buffer.alloc(PACK_HEADER_SIZE);
  PACK_MAGIC.copy(b, 0);
  b.writeUInt16LE(PACK_VERSION, 8);
  b[10] = h.kind;
  b[11] = h.encrypted ? 1 : 0;
  Buffer.from(h.poolId, 'hex').copy(b, 16);
  Buffer.from(h.packId, 'hex').copy(b, 32);
  b.writeUIntLE(h.created, 48, 6);
  b.writeUInt32LE(crc32(b.subarray(0, 60)), 60);
  return b;
}

export function decodePackHeader(b: Buffer): PackHeader {
  if (b.length < PACK_HEADER_SIZE) throw new ArchiveFormatError(`pack header: ${b.length} bytes, need ${PACK_HEADER_SIZE}`);
  if (!b.subarray(0, 8).equals(PACK_MAGIC)) throw new ArchiveFormatError('not a rewind archive pack (bad magic)');
  if (b.readUInt32LE(60) !== crc32(b.subarray(0, 60))) throw new ArchiveFormatError('pack header: CRC mismatch');
  const version = b.readUInt16LE(8);
  if (version !== PACK_VERSION) throw new ArchiveFormatError(`pack version ${version} is not supported`);
  const kind = b[10]!;
  if (kind !== KIND_DATA && kind !== KIND_TREE) throw new ArchiveFormatError(`pack kind ${kind} unknown`);
  if (b[11]! > 1) throw new ArchiveFormatError(`pack flags ${b[11]} unknown`);
  return {
    kind: kind as PackKind,
    encrypted: b[11] === 1,
    poolId: b.toString('hex', 16, 32),
    packId: b.toString('hex', 32, 48),
    created: b.readUIntLE(48, 6),
  };
}

export function encodeRecordHeader(e: Omit<PackEntry, 'offset'>): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_SIZE);
  RECORD_MAGIC.copy(b, 0);
  e.handle.copy(b, 4);
  b[37] = e.type;
  b[38] = e.codec;
  b.writeUInt32LE(e.rawLength, 40);
  b.writeUInt32LE(e.storedLength, 44);
  b.writeUInt32LE(e.crc, 48);
  b.writeUInt32LE(crc32(b.subarray(0, 52)), 52);
  return b;
}

function checkLengths(type: number, codec: number, raw: number, stored: number, what: string): void {
  if (type !== TYPE_LEAF && type !== TYPE_NODE) throw new ArchiveFormatError(`${what}: chunk type ${type} unknown`);
  if ((codec & ~(CODEC_ZSTD | CODEC_SEALED)) !== 0) throw new ArchiveFormatError(`${what}: codec ${codec} unknown`);
  if (raw < 1 || raw > MAX_RAW) throw new ArchiveFormatError(`${what}: raw length ${raw} out of range`);
  if (stored < 1 || stored > MAX_STORED) throw new ArchiveFormatError(`${what}: stored length ${stored} out of range`);
}

/** Decodes a record header found at `offset`; throws ArchiveFormatError if it is not one. */
export function decodeRecordHeader(b: Buffer, offset: number): PackEntry {
  if (b.length < RECORD_HEADER_SIZE) throw new ArchiveFormatError(`record at ${offset}: truncated header`);
  if (!b.subarray(0, 4).equals(RECORD_MAGIC)) throw new ArchiveFormatError(`record at ${offset}: bad magic`);
  if (b.readUInt32LE(52) !== crc32(b.subarray(0, 52))) throw new ArchiveFormatError(`record at ${offset}: header CRC mismatch`);
  checkHandle(b, 4, `record at ${offset}`);
  const e: PackEntry = {
    handle: Buffer.from(b.subarray(4, 4 + HANDLE_SIZE)),
    type: b[37] as ChunkType,
    codec: b[38]!,
    offset,
    rawLength: b.readUInt32LE(40),
    storedLength: b.readUInt32LE(44),
    crc: b.readUInt32LE(48),
  };
  checkLengths(e.type, e.codec, e.rawLength, e.storedLength, `record at ${offset}`);
  return e;
}

export function encodeIndex(entries: PackEntry[]): Buffer {
  const b = Buffer.alloc(entries.length * INDEX_ENTRY_SIZE);
  entries.forEach((e, i) => {
    const at = i * INDEX_ENTRY_SIZE;
    e.handle.copy(b, at);
    b[at + 33] = e.type;
    b[at + 34] = e.codec;
    b.writeUIntLE(e.offset, at + 36, 6);
    b.writeUInt32LE(e.rawLength, at + 44);
    b.writeUInt32LE(e.storedLength, at + 48);
    b.writeUInt32LE(e.crc, at + 52);
  });
  return b;
}

/**
 * Decodes an index whose records must lie, in order and without overlap,
 * between the header and `end` (the index offset).
 */
export function decodeIndex(b: Buffer, count: number, end: number): PackEntry[] {
  if (b.length !== count * INDEX_ENTRY_SIZE) throw new ArchiveFormatError(`pack index: ${b.length} bytes for ${count} entries`);
  const out: PackEntry[] = new Array(count);
  let next = PACK_HEADER_SIZE;
  for (let i = 0; i < count; i++) {
    const at = i * INDEX_ENTRY_SIZE;
    checkHandle(b, at, `pack index entry ${i}`);
    const e: PackEntry = {
      handle: Buffer.from(b.subarray(at, at + HANDLE_SIZE)),
      type: b[at + 33] as ChunkType,
      codec: b[at + 34]!,
      offset: b.readUIntLE(at + 36, 6),
      rawLength: b.readUInt32LE(at + 44),
      storedLength: b.readUInt32LE(at + 48),
      crc: b.readUInt32LE(at + 52),
    };
    checkLengths(e.type, e.codec, e.rawLength, e.storedLength, `pack index entry ${i}`);
    if (e.offset < next || e.offset + recordSize(e) > end)
      throw new ArchiveFormatError(`pack index entry ${i}: record at ${e.offset} overlaps or lies outside the data`);
    next = e.offset + recordSize(e);
    out[i] = e;
  }
  return out;
}

export function encodeFooter(f: PackFooter): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  FOOTER_MAGIC.copy(b, 0);
  b.writeUIntLE(f.indexOffset, 8, 6);
  b.writeUInt32LE(f.indexLength, 16);
  b.writeUInt32LE(f.entries, 20);
  b.writeUInt32LE(f.indexCrc, 24);
  b.writeUInt32LE(crc32(b.subarray(0, 28)), 28);
  return b;
}

/** Decodes the footer of a pack of `size` bytes, checking it fits. */
export function decodeFooter(b: Buffer, size: number, sealedOverhead: number): PackFooter {
  if (b.length !== FOOTER_SIZE) throw new ArchiveFormatError('pack footer: truncated');
  if (!b.subarray(0, 8).equals(FOOTER_MAGIC)) throw new ArchiveFormatError('pack footer: bad magic (pack truncated or not sealed)');
  if (b.readUInt32LE(28) !== crc32(b.subarray(0, 28))) throw new ArchiveFormatError('pack footer: CRC mismatch');
  const f: PackFooter = {
    indexOffset: b.readUIntLE(8, 6),
    indexLength: b.readUInt32LE(16),
    entries: b.readUInt32LE(20),
    indexCrc: b.readUInt32LE(24),
  };
  if (f.indexOffset < PACK_HEADER_SIZE || f.indexOffset + f.indexLength + FOOTER_SIZE !== size) {
    throw new ArchiveFormatError(`pack footer: index at ${f.indexOffset}+${f.indexLength} does not end the ${size}-byte pack`);
  }
  if (f.indexLength !== f.entries * INDEX_ENTRY_SIZE + sealedOverhead)
    throw new ArchiveFormatError(`pack footer: index length ${f.indexLength} does not match ${f.entries} entries`);
  if (f.entries * (RECORD_HEADER_SIZE + 1) > f.indexOffset - PACK_HEADER_SIZE)
    throw new ArchiveFormatError(`pack footer: ${f.entries} entries cannot fit`);
  return f;
}

/**
 * Walks records from the header on and returns those whose header and
 * payload CRC check out, stopping at the first that does not: the valid
 * prefix of a torn staging pack, or of a pack whose index is lost.
 */
export function scanRecords(b: Buffer, limit = b.length): { entries: PackEntry[]; end: number } {
  const entries: PackEntry[] = [];
  let at = PACK_HEADER_SIZE;
  while (at + RECORD_HEADER_SIZE <= limit) {
    let e: PackEntry;
    try {
      e = decodeRecordHeader(b.subarray(at, at + RECORD_HEADER_SIZE), at);
    } catch {
      break;
    }
    const payloadEnd = at + recordSize(e);
    if (payloadEnd > limit) break;
    if (crc32(b.subarray(at + RECORD_HEADER_SIZE, payloadEnd)) !== e.crc) break;
    entries.push(e);
    at = payloadEnd;
  }
  return { entries, end: Math.min(at, limit) };
}
