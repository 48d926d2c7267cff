/**
 * Hostile-file harness for the archive's readers: real packs (plain and
 * encrypted), manifests, bloom filters and tree nodes, mutated by
 * fast-check (bit flips, interesting 32-bit values at any offset,
 * truncations, insertions, deletions, random tails) and fed to the
 * readers. They must fail only with ArchiveFormatError (ArchiveError for
 * the manifest's key check), never read outside the file (every range a
 * pack reader asks for lies inside it, so nothing is allocated from a
 * hostile length), and anything they accept must be self-consistent.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { ArchiveError } from '../../src/archive';
import { BloomFilter } from '../../src/archive/bloom';
import { encodeChunk } from '../../src/archive/codec';
import { ArchiveFormatError } from '../../src/archive/errors';
import { makeHasher } from '../../src/archive/handle';
import { decodeManifest, encodeManifest, type PointManifest } from '../../src/archive/manifest';
import {
  encodeFooter,
  encodePackHeader,
  encodeRecordHeader,
  recordSize,
  scanRecords,
  KIND_DATA,
  TYPE_LEAF,
  PACK_HEADER_SIZE,
  type PackEntry,
} from '../../src/archive/pack-format';
import { readPackContents } from '../../src/archive/pack-reader';
import { packIndexBlob } from '../../src/archive/pack-writer';
import { decodeNode, encodeNode } from '../../src/archive/tree';
import { crc32 } from '../../src/util/crc32';
import { pattern } from './random';

export const POOL_ID = '00112233445566778899aabbccddeeff';

export interface Seeds {
  packs: Array<{ bytes: Buffer; key: Buffer | null; entries: number }>;
  manifests: Array<{ bytes: Buffer; key: Buffer | null }>;
  bloom: Buffer;
  node: Buffer;
}

async function makePack(key: Buffer | null, n: number): Promise<Buffer> {
  const hasher = makeHasher('sha256');
  const parts: Buffer[] = [
    encodePackHeader({ kind: KIND_DATA, encrypted: key !== null, poolId: POOL_ID, packId: 'ab'.repeat(16), created: 1_700_000_000_000 }),
  ];
  const entries: PackEntry[] = [];
  let at = PACK_HEADER_SIZE;
  for (let i = 0; i < n; i++) {
    const plain = i % 2 ? pattern(300 + i * 50, i) : Buffer.from('leaf '.repeat(100 + i));
    const h = hasher.hash(plain);
    const enc = await encodeChunk({ level: 3, key }, h, TYPE_LEAF, plain);
    const e: PackEntry = {
      handle: h,
      type: TYPE_LEAF,
      codec: enc.codec,
      offset: at,
      rawLength: plain.length,
      storedLength: enc.stored.length,
      crc: enc.crc,
    };
    parts.push(encodeRecordHeader(e), enc.stored);
    entries.push(e);
    at += recordSize(e);
  }
  const blob = packIndexBlob(entries, 'ab'.repeat(16), key);
  parts.push(blob, encodeFooter({ indexOffset: at, indexLength: blob.length, entries: n, indexCrc: crc32(blob) }));
  return Buffer.concat(parts);
}

export async function makeSeeds(): Promise<Seeds> {
  const key = randomBytes(32);
  const manifest: PointManifest = {
    name: 'p1',
    poolId: POOL_ID,
    created: 1,
    group: 'g',
    seq: 5,
    time: 2,
    marker: 'm',
    quiesce: { kind: 'application', ok: true },
    predecessor: null,
    scheme: 'sha256',
    leafSize: 65536,
    fanout: 256,
    compression: 'zstd-3',
    encrypted: false,
    volumes: [{ volume: 'v', size: 1 << 20, root: `01${'ab'.repeat(32)}`, height: 1, leaves: 16, stats: {} as never }],
    meta: { a: 1 },
  };
  const bloom = BloomFilter.forCapacity(100);
  for (let i = 0; i < 50; i++) bloom.add(Buffer.concat([Buffer.from([1]), randomBytes(32)]));
  return {
    packs: [
      { bytes: await makePack(null, 6), key: null, entries: 6 },
      { bytes: await makePack(key, 5), key, entries: 5 },
    ],
    manifests: [
      { bytes: encodeManifest(manifest, null), key: null },
      { bytes: encodeManifest({ ...manifest, encrypted: true }, key), key },
    ],
    bloom: bloom.serialize(7),
    node: encodeNode(2, [Buffer.concat([Buffer.from([1]), randomBytes(32)]), Buffer.alloc(33)])!,
  };
}

const INTERESTING = [0, 1, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 56, 64, 4 * 1024 * 1024];

export type Mutation =
  | { k: 'flip'; at: number; bit: number }
  | { k: 'u32'; at: number; v: number }
  | { k: 'cut'; at: number }
  | { k: 'insert'; at: number; bytes: Uint8Array }
  | { k: 'delete'; at: number; n: number }
  | { k: 'tail'; bytes: Uint8Array };

export const mutationArb: fc.Arbitrary<Mutation[]> = fc.array(
  fc.oneof(
    fc.record({ k: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ k: fc.constant('u32' as const), at: fc.nat(), v: fc.constantFrom(...INTERESTING) }),
    fc.record({ k: fc.constant('cut' as const), at: fc.nat() }),
    fc.record({ k: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
    fc.record({ k: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 200 }) }),
    fc.record({ k: fc.constant('tail' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 300 }) }),
  ),
  { minLength: 1, maxLength: 4 },
);

export function mutate(src: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(src);
  for (const m of ms) {
    const at = b.length === 0 ? 0 : m.k === 'tail' ? 0 : m.at % b.length;
    switch (m.k) {
      case 'flip':
        if (b.length) b[at]! ^= 1 << m.bit;
        break;
      case 'u32':
        if (b.length >= 4) b.writeUInt32LE(m.v >>> 0, Math.min(at, b.length - 4));
        break;
      case 'cut':
        b = b.subarray(0, at);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]);
        break;
      case 'tail':
        b = Buffer.concat([b, Buffer.from(m.bytes)]);
        break;
    }
  }
  return b;
}

function expectClean(err: unknown, what: string): void {
  if (err instanceof ArchiveFormatError || err instanceof ArchiveError) return;
  throw new Error(`${what} failed uncleanly: ${(err as Error)?.stack ?? String(err)}`);
}

/** Feeds one mutated pack to the pack readers; throws if an invariant breaks. */
export async function exercisePack(bytes: Buffer, key: Buffer | null): Promise<void> {
  const read = async (off: number, len: number): Promise<Buffer> => {
    if (off < 0 || len < 0 || off + len > bytes.length)
      throw new Error(`reader asked for ${len} bytes at ${off} of a ${bytes.length}-byte pack`);
    return bytes.subarray(off, off + len);
  };
  try {
    const c = await readPackContents(read, bytes.length, POOL_ID, key);
    let end = PACK_HEADER_SIZE;
    for (const e of c.entries) {
      if (e.offset < end || e.offset + recordSize(e) > bytes.length) throw new Error('accepted an entry outside the data or overlapping');
      end = e.offset + recordSize(e);
    }
  } catch (err) {
    expectClean(err, 'readPackContents');
  }
  const s = scanRecords(bytes);
  if (s.end > bytes.length) throw new Error('scan ran past the end');
  for (const e of s.entries)
    if (crc32(bytes.subarray(e.offset + 56, e.offset + recordSize(e))) !== e.crc) throw new Error('scan accepted a record with a bad CRC');
}

export function exerciseManifest(bytes: Buffer, key: Buffer | null): void {
  try {
    const p = decodeManifest(bytes, POOL_ID, key);
    if (!Array.isArray(p.volumes) || p.volumes.length === 0) throw new Error('accepted a manifest without volumes');
  } catch (err) {
    expectClean(err, 'decodeManifest');
  }
}

export function exerciseBloom(bytes: Buffer): void {
  try {
    BloomFilter.deserialize(bytes).filter.mightContain(Buffer.alloc(33, 7));
  } catch (err) {
    expectClean(err, 'BloomFilter.deserialize');
  }
}

export function exerciseNode(bytes: Buffer): void {
  try {
    const n = decodeNode(bytes);
    if (n.children.length !== n.count * 33) throw new Error('node children do not match its count');
  } catch (err) {
    expectClean(err, 'decodeNode');
  }
}
