/**
 * Journal container fuzzing harness (the LFC reader used at recovery),
 * shared by test/fuzz-container.test.ts and tools/fuzz-container.ts.
 *
 * Valid AILFCs and BILFCs (sealed and still active) are written with the
 * real ContainerWriter, then mutated (bit flips, interesting 32/64-bit
 * values at header fields, truncations, insertions, deletions, random
 * tails) and fed to scanContainer, readRecords, verifyContainer and
 * repairActive, the functions journal and manager recovery run on start-up.
 *
 * Invariants: they fail only with LfcFormatError (verify never throws for
 * content); no allocation beyond the file's own size; after repairActive a
 * scan finds no torn tail and reads the same records; a repaired file is
 * a prefix of what it was; and for a single flipped byte in an active
 * container, repair keeps exactly the records wholly before that byte.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import fc from 'fast-check';
import {
  ContainerWriter,
  LfcFormatError,
  readRecords,
  repairActive,
  scanContainer,
  verifyContainer,
  type RecordInput,
  type StoredRecord,
} from '../../src/lfc';
import { ContainerKind, FILE_HEADER_SIZE, RecordKind } from '../../src/lfc';

export interface Seed {
  name: string;
  bytes: Buffer;
  /** Record start offsets and ends (active containers: for the single-flip property). */
  records: Array<{ start: number; end: number }>;
  sealed: boolean;
}

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

/** Writes a few real containers into `dir` and returns their bytes. */
export async function makeSeeds(dir: string): Promise<Seed[]> {
  fs.mkdirSync(dir, { recursive: true });
  const seeds: Seed[] = [];
  let n = 1;
  for (const [kind, count, sealed, maxPayload] of [
    [ContainerKind.AILFC, 6, true, 3000],
    [ContainerKind.AILFC, 12, false, 1500],
    [ContainerKind.AILFC, 1, true, 70000],
    [ContainerKind.AILFC, 0, true, 0],
    [ContainerKind.BILFC, 5, true, 4096],
    [ContainerKind.AILFC, 20, false, 600],
  ] as Array<[ContainerKind, number, boolean, number]>) {
    const sub = path.join(dir, `seed-${n}`);
    fs.mkdirSync(sub, { recursive: true });
    const w = await ContainerWriter.create(sub, kind, { groupId: 3, containerId: n, blockSize: 4096, created: 1.7e12 });
    const r = rng(n * 7919);
    const records: Array<{ start: number; end: number }> = [];
    let seq = 1;
    for (let i = 0; i < count; i++) {
      const start = w.size;
      let input: RecordInput;
      let payload: Buffer | null = null;
      if (kind === ContainerKind.BILFC) {
        payload = Buffer.alloc(maxPayload, i + 1);
        input = { kind: RecordKind.BeforeBlock, volumeId: 1, seq: 0, time: 0, offset: i * 4096, length: maxPayload };
      } else {
        const k = [RecordKind.Write, RecordKind.Write, RecordKind.Trim, RecordKind.Zero, RecordKind.Error, RecordKind.Resync][i % 6]!;
        const len = 512 * (1 + Math.floor(r() * Math.max(1, maxPayload / 512)));
        if (k === RecordKind.Write || k === RecordKind.Resync) payload = Buffer.alloc(len, (i * 13) & 0xff);
        if (k === RecordKind.Error) payload = Buffer.from(`EIO on write ${i}`);
        input = { kind: k, volumeId: 1 + (i % 2), seq: seq, time: 1.7e12 + i, offset: Math.floor(r() * 1000) * 512, length: len };
        seq += 1 + (i % 3);
      }
      await w.append(input, payload);
      records.push({ start, end: w.size });
    }
    let file: string;
    if (sealed) file = (await w.seal()).path;
    else {
      await w.sync();
      file = w.path;
      await w.close();
    }
    seeds.push({ name: path.basename(file), bytes: fs.readFileSync(file), records, sealed });
    n++;
  }
  return seeds;
}

export type CMutation =
  | { t: 'flip'; pos: number; bit: number }
  | { t: 'byte'; pos: number; v: number }
  | { t: 'u32'; pos: number; v: number }
  | { t: 'u64'; pos: number; v: bigint }
  | { t: 'truncate'; pos: number }
  | { t: 'insert'; pos: number; bytes: Uint8Array }
  | { t: 'delete'; pos: number; len: number }
  | { t: 'tail'; bytes: Uint8Array };

const I32 = [0, 1, 48, 64, 0x7fffffff, 0x80000000, 0xffffffff, 0x52524543, 0x5253454c];
const I64 = [0n, 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

export const cmutationArb: fc.Arbitrary<CMutation> = fc.oneof(
  fc.record({ t: fc.constant('flip' as const), pos: fc.nat(), bit: fc.nat(7) }),
  fc.record({ t: fc.constant('byte' as const), pos: fc.nat(), v: fc.nat(255) }),
  fc.record({ t: fc.constant('u32' as const), pos: fc.nat(), v: fc.constantFrom(...I32) }),
  fc.record({ t: fc.constant('u64' as const), pos: fc.nat(), v: fc.constantFrom(...I64) }),
  fc.record({ t: fc.constant('truncate' as const), pos: fc.nat() }),
  fc.record({ t: fc.constant('insert' as const), pos: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  fc.record({ t: fc.constant('delete' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 96 }) }),
  fc.record({ t: fc.constant('tail' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 200 }) }),
);

export function cmutate(input: Buffer, muts: CMutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of muts) {
    const pos = b.length ? ('pos' in m ? m.pos % b.length : 0) : 0;
    switch (m.t) {
      case 'flip':
        if (b.length) b[pos]! ^= 1 << m.bit;
        break;
      case 'byte':
        if (b.length) b[pos] = m.v;
        break;
      case 'u32':
        if (pos + 4 <= b.length) b.writeUInt32LE(m.v >>> 0, pos);
        break;
      case 'u64':
        if (pos + 8 <= b.length) b.writeBigUInt64LE(m.v, pos);
        break;
      case 'truncate':
        b = b.subarray(0, pos);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, pos), Buffer.from(m.bytes), b.subarray(pos)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.length, pos + m.len))]);
        break;
      case 'tail':
        b = Buffer.concat([b, Buffer.from(m.bytes)]);
        break;
    }
  }
  return b;
}

export class ContainerFuzzFailure extends Error {}

function clean(what: string, err: unknown): void {
  if (!(err instanceof LfcFormatError)) {
    throw new ContainerFuzzFailure(`${what} threw ${(err as Error)?.name}: ${(err as Error)?.message ?? err}`);
  }
}

async function collect(file: string): Promise<StoredRecord[] | null> {
  const out: StoredRecord[] = [];
  try {
    for await (const r of readRecords(file)) out.push(r);
  } catch (err) {
    clean('readRecords', err);
    return null;
  }
  return out;
}

/** Runs the recovery readers over one file and checks the invariants. */
export async function exerciseFile(file: string, original: Buffer): Promise<void> {
  const size = original.length;
  const before = process.memoryUsage().arrayBuffers;
  let scanned = true;
  await scanContainer(file).catch((e) => {
    scanned = false;
    clean('scanContainer', e);
  });
  const v = await verifyContainer(file).catch((e) => {
    throw new ContainerFuzzFailure(`verifyContainer threw for content: ${(e as Error).message}`);
  });
  if (v.ok !== true && v.ok !== false) throw new ContainerFuzzFailure('verifyContainer gave no verdict');
  await collect(file);
  const grew = process.memoryUsage().arrayBuffers - before;
  if (grew > Math.max(64 * 1024 * 1024, size * 4))
    throw new ContainerFuzzFailure(`readers allocated ${grew} bytes for a ${size}-byte file`);
  let repaired;
  try {
    repaired = await repairActive(file);
  } catch (err) {
    clean('repairActive', err);
    if (scanned) throw new ContainerFuzzFailure('repairActive failed on a file scanContainer accepted');
    return;
  }
  const after = fs.readFileSync(file);
  if (!after.equals(original.subarray(0, after.length))) throw new ContainerFuzzFailure('repair changed bytes instead of only truncating');
  if (after.length !== repaired.validEnd)
    throw new ContainerFuzzFailure(`repair left ${after.length} bytes, valid end ${repaired.validEnd}`);
  const again = await scanContainer(file).catch((e) => {
    throw new ContainerFuzzFailure(`scan after repair failed: ${(e as Error).message}`);
  });
  if (again.tornAt !== undefined) throw new ContainerFuzzFailure(`scan after repair still finds a torn tail at ${again.tornAt}`);
  if (again.recordCount !== repaired.recordCount) throw new ContainerFuzzFailure('record count changed by the repair');
  const recs = await collect(file);
  if (!recs || recs.length !== repaired.recordCount) throw new ContainerFuzzFailure('records readable after repair do not match the scan');
  for (const r of recs) {
    if (r.payload && zlib.crc32(r.payload) !== r.payloadCrc)
      throw new ContainerFuzzFailure(`record at ${r.position}: payload CRC mismatch after repair`);
  }
}

/** Single flipped byte in an active container: repair keeps exactly the records wholly before it. */
export async function checkFlipPrefix(file: string, seed: Seed, pos: number, xor: number): Promise<void> {
  const b = Buffer.from(seed.bytes);
  b[pos]! ^= xor || 1;
  fs.writeFileSync(file, b);
  let res;
  try {
    res = await repairActive(file);
  } catch (err) {
    clean('repairActive', err);
    if (pos >= FILE_HEADER_SIZE) throw new ContainerFuzzFailure(`a flip at ${pos} (after the header) made the whole container unreadable`);
    return;
  }
  const keep = seed.records.filter((r) => r.end <= pos).length;
  // A flip inside a record's payload or header breaks that record; none after it can count.
  const hit = seed.records.findIndex((r) => r.start <= pos && pos < r.end);
  if (hit >= 0 && res.recordCount !== keep) {
    throw new ContainerFuzzFailure(`flip at ${pos} (record ${hit}): repair kept ${res.recordCount} records, expected ${keep}`);
  }
  if (pos < FILE_HEADER_SIZE) throw new ContainerFuzzFailure(`a corrupt file header (flip at ${pos}) was accepted`);
}

export interface ContainerFuzzStats {
  executions: number;
  flipChecks: number;
}

export async function fuzzContainers(o: {
  dir: string;
  seeds: Seed[];
  timeLimitMs: number;
  seed?: number;
  onProgress?(s: ContainerFuzzStats): void;
}): Promise<ContainerFuzzStats> {
  const stats: ContainerFuzzStats = { executions: 0, flipChecks: 0 };
  const file = path.join(o.dir, 'fuzz.lfc');
  const seeds = o.seeds;
  const active = seeds.filter((s) => !s.sealed && s.records.length > 0);
  const arb = fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant('mutate' as const),
        seed: fc.nat(seeds.length - 1),
        muts: fc.array(cmutationArb, { minLength: 1, maxLength: 5 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('flip' as const),
        seed: fc.nat(Math.max(0, active.length - 1)),
        pos: fc.nat(),
        xor: fc.integer({ min: 1, max: 255 }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('random' as const),
        bytes: fc.uint8Array({ maxLength: 600 }),
        header: fc.boolean(),
        seed: fc.nat(seeds.length - 1),
      }),
    },
  );
  await fc.assert(
    fc.asyncProperty(arb, async (c) => {
      if (c.kind === 'flip') {
        const s = active[c.seed]!;
        await checkFlipPrefix(file, s, c.pos % s.bytes.length, c.xor);
        stats.flipChecks++;
      } else {
        const bytes =
          c.kind === 'mutate'
            ? cmutate(seeds[c.seed]!.bytes, c.muts)
            : Buffer.concat([c.header ? seeds[c.seed]!.bytes.subarray(0, FILE_HEADER_SIZE) : Buffer.alloc(0), Buffer.from(c.bytes)]);
        fs.writeFileSync(file, bytes);
        await exerciseFile(file, bytes);
      }
      stats.executions++;
      if (stats.executions % 500 === 0) o.onProgress?.(stats);
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
