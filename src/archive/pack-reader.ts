/**
 * Reading packs: the trailing index (to index a pack the pool does not
 * know, or to rebuild the whole index), a whole-pack scan when the index
 * is damaged, and single records. Everything read is hostile until its
 * CRCs and bounds check out; failures are ArchiveFormatError.
 */
import { crc32 } from '../util/crc32';
import { SEAL_OVERHEAD, unseal } from './crypto';
import { ArchiveFormatError } from './errors';
import { HANDLE_SIZE, type Handle } from './handle';
import {
  FOOTER_SIZE,
  MAX_PACK,
  PACK_HEADER_SIZE,
  RECORD_HEADER_SIZE,
  decodeFooter,
  decodeIndex,
  decodePackHeader,
  decodeRecordHeader,
  scanRecords,
  type ChunkType,
  type PackEntry,
  type PackHeader,
} from './pack-format';

/** Reads `length` bytes at `offset` of one pack (short at its end). */
export type RangeReader = (offset: number, length: number) => Promise<Buffer>;

export interface PackContents {
  header: PackHeader;
  entries: PackEntry[];
  /** True if the index was damaged and the records were found by a scan. */
  scanned: boolean;
}

async function exact(read: RangeReader, offset: number, length: number, what: string): Promise<Buffer> {
  const b = await read(offset, length);
  if (b.length !== length) throw new ArchiveFormatError(`${what}: pack truncated (wanted ${length} bytes at ${offset}, got ${b.length})`);
  return b;
}

function checkHeader(header: PackHeader, poolId: string, key: Buffer | null): void {
  if (header.poolId !== poolId) throw new ArchiveFormatError(`pack ${header.packId} belongs to pool ${header.poolId}, not ${poolId}`);
  if (header.encrypted !== (key !== null))
    throw new ArchiveFormatError(`pack ${header.packId} is ${header.encrypted ? '' : 'not '}encrypted, unlike its pool`);
}

/** Reads a sealed pack's header and trailing index. */
export async function readPackIndex(read: RangeReader, size: number, poolId: string, key: Buffer | null): Promise<PackContents> {
  if (size < PACK_HEADER_SIZE + FOOTER_SIZE || size > MAX_PACK) throw new ArchiveFormatError(`pack size ${size} out of range`);
  const header = decodePackHeader(await exact(read, 0, PACK_HEADER_SIZE, 'pack header'));
  checkHeader(header, poolId, key);
  const footer = decodeFooter(await exact(read, size - FOOTER_SIZE, FOOTER_SIZE, 'pack footer'), size, key ? SEAL_OVERHEAD : 0);
  const blob = await exact(read, footer.indexOffset, footer.indexLength, 'pack index');
  if (crc32(blob) !== footer.indexCrc) throw new ArchiveFormatError('pack index: CRC mismatch');
  let plain = blob;
  if (key) {
    const open = unseal(key, blob, Buffer.from(header.packId, 'hex'));
    if (!open) throw new ArchiveFormatError('pack index: authentication failed');
    plain = open;
  }
  return { header, entries: decodeIndex(plain, footer.entries, footer.indexOffset), scanned: false };
}

/**
 * The index, or when it is damaged, the records a scan of the whole pack
 * finds intact (reads the pack into memory; packs are tens of MiB).
 */
export async function readPackContents(read: RangeReader, size: number, poolId: string, key: Buffer | null): Promise<PackContents> {
  try {
    return await readPackIndex(read, size, poolId, key);
  } catch (err) {
    if (!(err instanceof ArchiveFormatError) || size < PACK_HEADER_SIZE || size > MAX_PACK) throw err;
    const all = await read(0, size);
    const header = decodePackHeader(all.subarray(0, PACK_HEADER_SIZE));
    checkHeader(header, poolId, key);
    return { header, entries: scanRecords(all).entries, scanned: true };
  }
}

export interface ExpectedRecord {
  handle: Handle;
  type: ChunkType;
  storedLength: number;
  rawLength: number;
  codec: number;
  crc: number;
}

/**
 * Checks one record (header and payload, as read from the pack) against
 * what the index says and returns its payload. Throws ArchiveFormatError
 * saying what differs.
 */
export function checkRecord(rec: Buffer, offset: number, want: ExpectedRecord): Buffer {
  if (rec.length < RECORD_HEADER_SIZE + want.storedLength) throw new ArchiveFormatError(`record at ${offset}: pack truncated`);
  const e = decodeRecordHeader(rec.subarray(0, RECORD_HEADER_SIZE), offset);
  if (
    !e.handle.equals(want.handle.subarray(0, HANDLE_SIZE)) ||
    e.type !== want.type ||
    e.storedLength !== want.storedLength ||
    e.rawLength !== want.rawLength ||
    e.codec !== want.codec
  ) {
    throw new ArchiveFormatError(`record at ${offset}: header does not match the index`);
  }
  const payload = rec.subarray(RECORD_HEADER_SIZE, RECORD_HEADER_SIZE + e.storedLength);
  if (crc32(payload) !== e.crc || e.crc !== want.crc) throw new ArchiveFormatError(`record at ${offset}: payload CRC mismatch`);
  return payload;
}

/** Reads of packs go in windows of whole records of at most this size: buffers this small are reused by malloc, 32 MiB ones are fresh pages every time. */
export const READ_WINDOW = 4 * 1024 * 1024;

export interface RecordWindow<T> {
  offset: number;
  length: number;
  items: T[];
}

/**
 * Groups records (sorted by offset) into windows of at most READ_WINDOW
 * bytes (a bigger record alone), reading through gaps of up to 256 KiB.
 */
export function recordWindows<T>(items: T[], at: (item: T) => { offset: number; storedLength: number }): Array<RecordWindow<T>> {
  const out: Array<RecordWindow<T>> = [];
  let cur: RecordWindow<T> | null = null;
  for (const it of items) {
    const { offset, storedLength } = at(it);
    const end = offset + RECORD_HEADER_SIZE + storedLength;
    if (cur && end - cur.offset <= READ_WINDOW && offset - (cur.offset + cur.length) <= 256 * 1024 && offset >= cur.offset + cur.length) {
      cur.length = end - cur.offset;
      cur.items.push(it);
    } else {
      cur = { offset, length: end - offset, items: [it] };
      out.push(cur);
    }
  }
  return out;
}
