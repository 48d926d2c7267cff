/**
 * Diff file fuzzing harness (src/timetravel/diff.ts, what `rewind
 * apply-diff` reads), shared by test/fuzz-diff.test.ts and tools/fuzz-diff.ts.
 *
 * Real diff files written by writeDiffFile are mutated (the container
 * harness's mutations: flips, interesting values, truncations, insertions,
 * deletions, tails) and then, most of the time, re-signed: the header,
 * record, body and footer checksums are recomputed over the mutated bytes,
 * so the structural checks behind the CRCs are reached too.
 *
 * Invariants: readDiffFile fails only with DiffFileError; when it accepts a
 * file, the records it hands over lie inside the volume, ascending and
 * disjoint, each matches its checksum, and their count and byte total are
 * the footer's; an unmutated seed is read back exactly as written.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import type { ResolvedPoint } from '../../src/timetravel/point';
import { DiffFileError, readDiffFile, writeDiffFile, type Extent } from '../../src/timetravel/diff';
import { crc32 } from '../../src/util/crc32';
import { cmutate, cmutationArb } from './fuzz-container';

const HEADER = 64;
const FOOTER = 32;

export interface DiffSeed {
  bytes: Buffer;
  extents: Extent[];
}

function point(seq: number): ResolvedPoint {
  return { seq, time: 1.7e12 + seq } as ResolvedPoint;
}

/** A few small real diff files (small, so an execution is cheap). */
export async function makeDiffSeeds(dir: string): Promise<DiffSeed[]> {
  fs.mkdirSync(dir, { recursive: true });
  const size = 8 << 20;
  const img = {
    blockSize: 4096,
    size,
    read: async (off: number, len: number) => Buffer.alloc(len, (off / 4096) & 0xff),
  };
  const sets: Extent[][] = [
    [],
    [{ offset: 0, length: 4096 }],
    [
      { offset: 4096, length: 8192 },
      { offset: 65536, length: 4096 },
      { offset: size - 4096, length: 4096 },
    ],
    Array.from({ length: 8 }, (_, k) => ({ offset: (k * 37 + 5) * 4096, length: 4096 * (1 + (k % 3)) })),
  ];
  const out: DiffSeed[] = [];
  for (const [i, extents] of sets.entries()) {
    const f = path.join(dir, `seed-${i}.diff`);
    await writeDiffFile(f, img as never, extents, { from: point(10), to: point(20 + i) });
    out.push({ bytes: fs.readFileSync(f), extents });
  }
  return out;
}

export interface Resign {
  header: boolean;
  records: boolean;
  footer: boolean;
  /** Also make the footer's record count and byte total match the records found. */
  counts: boolean;
}

/** Recomputes the checksums of a (mutated) diff file where its structure can be followed. */
export function resign(b: Buffer, how: Resign): Buffer {
  if (b.length >= HEADER && how.header) b.writeUInt32LE(crc32(b.subarray(0, 60)), 60);
  if (b.length < HEADER + FOOTER) return b;
  const end = b.length - FOOTER;
  let pos = HEADER;
  let body = 0;
  let n = 0;
  let bytes = 0;
  while (pos + 16 <= end) {
    const len = b.readUInt32LE(pos + 8);
    if (pos + 16 + len > end) break;
    if (how.records) b.writeUInt32LE(crc32(b.subarray(pos + 16, pos + 16 + len)), pos + 12);
    body = crc32(b.subarray(pos + 16, pos + 16 + len), crc32(b.subarray(pos, pos + 16), body));
    pos += 16 + len;
    n++;
    bytes += len;
  }
  if (how.counts) {
    b.writeBigUInt64LE(BigInt(n), end + 8);
    b.writeBigUInt64LE(BigInt(bytes), end + 16);
  }
  if (how.footer) {
    b.writeUInt32LE(body, end + 24);
    b.writeUInt32LE(crc32(b.subarray(end, end + 28)), end + 28);
  }
  return b;
}

export class DiffFuzzFailure extends Error {}

/** Reads `file` (holding `bytes`) and checks the invariants. */
export async function exerciseDiff(file: string, bytes: Buffer): Promise<'accepted' | 'refused'> {
  const recs: Array<{ offset: number; length: number; crc: number }> = [];
  let info;
  try {
    info = await readDiffFile(file, async (offset, data) => void recs.push({ offset, length: data.length, crc: crc32(data) }));
  } catch (err) {
    if (err instanceof DiffFileError) return 'refused';
    throw new DiffFuzzFailure(`readDiffFile threw ${(err as Error)?.name}: ${(err as Error)?.message}`, { cause: err });
  }
  if (!Number.isSafeInteger(info.volumeSize)) throw new DiffFuzzFailure(`accepted a volume size of ${info.volumeSize}`);
  let prevEnd = 0;
  let total = 0;
  let pos = HEADER;
  for (const r of recs) {
    if (!Number.isSafeInteger(r.offset) || r.length <= 0 || r.offset < prevEnd || r.offset + r.length > info.volumeSize)
      throw new DiffFuzzFailure(`accepted record ${r.offset}+${r.length} (previous end ${prevEnd}, volume ${info.volumeSize})`);
    // The record as the bytes hold it (u64 read exactly, not through a double).
    if (bytes.readBigUInt64LE(pos) !== BigInt(r.offset))
      throw new DiffFuzzFailure(`record at ${pos}: offset ${r.offset} is not the file's`);
    if (bytes.readUInt32LE(pos + 12) !== r.crc) throw new DiffFuzzFailure(`record at ${pos}: data does not match its checksum`);
    pos += 16 + r.length;
    prevEnd = r.offset + r.length;
    total += r.length;
  }
  if (recs.length !== info.records) throw new DiffFuzzFailure(`footer says ${info.records} records, ${recs.length} handed over`);
  if (total !== info.dataBytes) throw new DiffFuzzFailure(`footer says ${info.dataBytes} data bytes, records hold ${total}`);
  return 'accepted';
}

export interface DiffFuzzStats {
  executions: number;
  accepted: number;
}

export async function fuzzDiffs(o: {
  dir: string;
  seeds: DiffSeed[];
  timeLimitMs: number;
  seed?: number;
  onProgress?(s: DiffFuzzStats): void;
}): Promise<DiffFuzzStats> {
  const stats: DiffFuzzStats = { executions: 0, accepted: 0 };
  const file = path.join(o.dir, 'fuzz.diff');
  const arb = fc.record({
    seed: fc.nat(o.seeds.length - 1),
    muts: fc.array(cmutationArb, { minLength: 1, maxLength: 4 }),
    resign: fc.option(fc.record({ header: fc.boolean(), records: fc.boolean(), footer: fc.boolean(), counts: fc.boolean() }), {
      freq: 4,
    }),
  });
  await fc.assert(
    fc.asyncProperty(arb, async (c) => {
      let b = cmutate(o.seeds[c.seed]!.bytes, c.muts);
      if (c.resign) b = resign(b, c.resign);
      fs.writeFileSync(file, b);
      if ((await exerciseDiff(file, b)) === 'accepted') stats.accepted++;
      stats.executions++;
      if (stats.executions % 2000 === 0) o.onProgress?.(stats);
    }),
    {
      numRuns: Number.MAX_SAFE_INTEGER,
      interruptAfterTimeLimit: o.timeLimitMs,
      markInterruptAsFailure: false,
      ...(o.seed !== undefined ? { seed: o.seed } : {}),
    },
  );
  return stats;
}
