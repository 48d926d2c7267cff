/**
 * The bloom filter in front of the chunk index (seed 003 L318): a lookup
 * of a handle the pool does not have usually ends here without touching
 * the LMDB B-tree. Handles are uniform digests, so the bit positions come
 * straight from their bytes (double hashing over two 32-bit words).
 *
 * Sized for 1% false positives at its capacity (9.6 bits and 7 probes per
 * entry, rounded up to a power of two of bits); rebuilt from the index
 * with twice the capacity when it fills, and after a gc (bits cannot be
 * removed). Persisted to a file stamped with the index generation it
 * matches: at open, a filter whose generation differs (a crash after
 * inserts) is rebuilt rather than trusted. A stale filter could only cause
 * duplicate chunks, never lost ones, but rebuilding is cheap.
 *
 * File: magic "RWBLOOM1" | log2(bits) u8 | probes u8 | u16 0 | u32 0 |
 * count u48 + u16 0 | generation u48 + u16 0 | CRC of bits u32 |
 * CRC of bytes 0..36 u32 | bits.
 */
import { crc32 } from '../util/crc32';
import { ArchiveFormatError } from './errors';

const MAGIC = Buffer.from('RWBLOOM1', 'latin1');
const HEADER = 40;
const MIN_LOG2 = 13;
const MAX_LOG2 = 31;
const PROBES = 7;

export class BloomFilter {
  private readonly mask: number;

  private constructor(
    private readonly bits: Buffer,
    readonly log2: number,
    readonly probes: number,
    public count: number,
  ) {
    this.mask = 2 ** log2 - 1;
  }

  /** An empty filter for about `capacity` entries at 1% false positives. */
  static forCapacity(capacity: number): BloomFilter {
    const want = Math.max(1, capacity) * 9.6;
    let log2 = MIN_LOG2;
    while (2 ** log2 < want && log2 < MAX_LOG2) log2++;
    return new BloomFilter(Buffer.alloc(2 ** (log2 - 3)), log2, PROBES, 0);
  }

  /** Entries it was sized for. */
  get capacity(): number {
    return Math.floor(2 ** this.log2 / 9.6);
  }

  get byteLength(): number {
    return this.bits.length;
  }

  add(h: Buffer): void {
    let a = h.readUInt32LE(1);
    const b = h.readUInt32LE(5) | 1;
    for (let i = 0; i < this.probes; i++) {
      const bit = (a & this.mask) >>> 0;
      this.bits[bit >>> 3]! |= 1 << (bit & 7);
      a = (a + b) >>> 0;
    }
    this.count++;
  }

  mightContain(h: Buffer): boolean {
    let a = h.readUInt32LE(1);
    const b = h.readUInt32LE(5) | 1;
    for (let i = 0; i < this.probes; i++) {
      const bit = (a & this.mask) >>> 0;
      if ((this.bits[bit >>> 3]! & (1 << (bit & 7))) === 0) return false;
      a = (a + b) >>> 0;
    }
    return true;
  }

  serialize(generation: number): Buffer {
    const head = Buffer.alloc(HEADER);
    MAGIC.copy(head, 0);
    head[8] = this.log2;
    head[9] = this.probes;
    head.writeUIntLE(this.count, 16, 6);
    head.writeUIntLE(generation, 24, 6);
    head.writeUInt32LE(crc32(this.bits), 32);
    head.writeUInt32LE(crc32(head.subarray(0, 36)), 36);
    return Buffer.concat([head, this.bits]);
  }

  /** Parses a filter file; throws ArchiveFormatError on anything malformed. */
  static deserialize(buf: Buffer): { filter: BloomFilter; generation: number } {
    if (buf.length < HEADER || !buf.subarray(0, 8).equals(MAGIC)) throw new ArchiveFormatError('bloom filter: bad magic');
    if (buf.readUInt32LE(36) !== crc32(buf.subarray(0, 36))) throw new ArchiveFormatError('bloom filter: header CRC mismatch');
    const log2 = buf[8]!;
    const probes = buf[9]!;
    if (log2 < MIN_LOG2 || log2 > MAX_LOG2 || probes < 1 || probes > 32) throw new ArchiveFormatError('bloom filter: bad parameters');
    if (buf.length !== HEADER + 2 ** (log2 - 3)) throw new ArchiveFormatError('bloom filter: wrong size');
    const bits = buf.subarray(HEADER);
    if (crc32(bits) !== buf.readUInt32LE(32)) throw new ArchiveFormatError('bloom filter: CRC mismatch');
    return { filter: new BloomFilter(bits, log2, probes, buf.readUIntLE(16, 6)), generation: buf.readUIntLE(24, 6) };
  }
}
