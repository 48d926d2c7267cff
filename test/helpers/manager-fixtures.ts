/**
 * Fixtures for the backup manager tests: AILFC generation with the real
 * ContainerWriter, a plain in-memory model of the volumes, BILFC rollback,
 * and a seeded random workload generator (for the crash campaign, where
 * fast-check's shrinking is of no use).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ContainerWriter, readRecords } from '../../src/lfc';
import { ContainerKind, RecordKind } from '../../src/lfc';
import type { ManagedVolume, SealedContainerRef } from '../../src/manager/types';

export interface Op {
  kind: RecordKind;
  volumeId: number;
  offset: number;
  length: number;
  /** Write/Resync data; Error message bytes; null for Trim/Zero. */
  data: Buffer | null;
}

/** Volume images of the model: volumeId -> content. */
export type Images = Map<number, Buffer>;

export function emptyImages(volumes: ManagedVolume[]): Images {
  return new Map(volumes.map((v) => [v.volumeId, Buffer.alloc(v.size)] as [number, Buffer]));
}

export function cloneImages(m: Images): Images {
  return new Map([...m].map(([k, v]) => [k, Buffer.from(v)] as [number, Buffer]));
}

/** Applies one record to the model the plain way: replay in seq order. */
export function applyOp(m: Images, op: Op): void {
  const img = m.get(op.volumeId)!;
  switch (op.kind) {
    case RecordKind.Write:
    case RecordKind.Resync:
      op.data!.copy(img, op.offset);
      break;
    case RecordKind.Trim:
    case RecordKind.Zero:
      img.fill(0, op.offset, op.offset + op.length);
      break;
    case RecordKind.Error:
      break; // the production image was not changed
    default:
      throw new Error(`unexpected kind ${op.kind}`);
  }
}

/**
 * Writes AILFC_n with the real writer into `dir` (active-n.lfc, sealed to
 * ailfc-n.lfc) and returns the ref a sender would submit. Seqs are
 * firstSeq, firstSeq+1, ...
 */
export async function writeAilfc(
  dir: string,
  groupId: number,
  n: number,
  ops: Op[],
  firstSeq: number,
  time0 = 1_700_000_000_000,
): Promise<SealedContainerRef> {
  await fs.promises.mkdir(dir, { recursive: true });
  const w = await ContainerWriter.create(dir, ContainerKind.AILFC, { groupId, containerId: n, blockSize: 4096 });
  const pending: Array<Promise<void>> = [];
  ops.forEach((op, i) => {
    const payload = op.kind === RecordKind.Write || op.kind === RecordKind.Resync || op.kind === RecordKind.Error ? op.data : null;
    pending.push(
      w.append(
        { kind: op.kind, volumeId: op.volumeId, seq: firstSeq + i, time: time0 + firstSeq + i, offset: op.offset, length: op.length },
        payload,
      ),
    );
  });
  await Promise.all(pending);
  const sealed = await w.seal();
  return { groupId, containerId: n, path: sealed.path, footer: sealed.footer };
}

/** Applies BILFC file's before-blocks to the model images (rolls T_n back to T_{n-1}). */
export async function applyBilfc(m: Images, bilfcPath: string): Promise<number> {
  let count = 0;
  for await (const r of readRecords(bilfcPath, { payloads: true })) {
    if (r.kind !== RecordKind.BeforeBlock) throw new Error(`${bilfcPath}: record kind ${r.kind} at ${r.position}`);
    r.payload!.copy(m.get(r.volumeId)!, r.offset);
    count++;
  }
  return count;
}

export async function readImages(replicaPath: (id: number) => string, volumes: ManagedVolume[]): Promise<Images> {
  const out: Images = new Map();
  for (const v of volumes) out.set(v.volumeId, await fs.promises.readFile(replicaPath(v.volumeId)));
  return out;
}

/** First difference between two image sets, or null. */
export function diffImages(a: Images, b: Images): string | null {
  for (const [id, ia] of a) {
    const ib = b.get(id);
    if (!ib) return `volume ${id} missing`;
    if (ia.length !== ib.length) return `volume ${id}: ${ia.length} vs ${ib.length} bytes`;
    if (!ia.equals(ib)) {
      let i = 0;
      while (ia[i] === ib[i]) i++;
      return `volume ${id}: first difference at byte ${i} (${ia[i]} vs ${ib[i]})`;
    }
  }
  return null;
}

// --- seeded workload ---------------------------------------------------------------

/** sfc32 PRNG (deterministic across runs and processes). */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  int(lo: number, hi: number): number {
    return lo + (this.u32() % (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(0, xs.length - 1)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      b[i] = v & 255;
      if (i + 1 < n) b[i + 1] = (v >>> 8) & 255;
      if (i + 2 < n) b[i + 2] = (v >>> 16) & 255;
      if (i + 3 < n) b[i + 3] = v >>> 24;
    }
    return b;
  }
}

/** A random op: mostly writes (aligned and not), some trims/zeroes/resyncs/errors. */
export function randomOp(rng: Rng, volumes: ManagedVolume[], maxLen: number): Op {
  const v = rng.pick(volumes);
  const roll = rng.int(0, 99);
  const aligned = rng.int(0, 1) === 0;
  let offset: number;
  let length: number;
  if (aligned) {
    const blocks = Math.floor(v.size / 4096);
    const b = rng.int(0, blocks - 1);
    offset = b * 4096;
    length = Math.min(4096 * rng.int(1, Math.max(1, Math.floor(maxLen / 4096))), v.size - offset);
  } else {
    offset = rng.int(0, v.size - 1);
    length = Math.min(rng.int(1, maxLen), v.size - offset);
  }
  if (roll < 70) return { kind: RecordKind.Write, volumeId: v.volumeId, offset, length, data: rng.bytes(length) };
  if (roll < 78) return { kind: RecordKind.Resync, volumeId: v.volumeId, offset, length, data: rng.bytes(length) };
  if (roll < 86) return { kind: RecordKind.Trim, volumeId: v.volumeId, offset, length, data: null };
  if (roll < 94) return { kind: RecordKind.Zero, volumeId: v.volumeId, offset, length, data: null };
  return { kind: RecordKind.Error, volumeId: v.volumeId, offset, length, data: Buffer.from(`EIO writing ${length} bytes at ${offset}`) };
}

export function tmpDir(prefix: string): string {
  const base = process.env.REWIND_TEST_TMP ?? '/tmp';
  return fs.mkdtempSync(path.join(base, `rewind-${prefix}-`));
}

/** Flips one byte of a file (XOR 0xff) at `offset`. */
export function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, offset);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
}
