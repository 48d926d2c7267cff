/**
 * Fixtures for the retention tests: a synthetic timeline (transactions
 * whose record times are spread over months, relative to an injected "now"),
 * the plain model of every write, and checks of retained history against
 * the model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ContainerWriter } from '../../src/lfc';
import { ContainerKind, RecordKind } from '../../src/lfc';
import type { BackupManager } from '../../src/manager/backup-manager';
import type { ManagedVolume, SealedContainerRef } from '../../src/manager/types';
import { resolvePoint } from '../../src/timetravel/point';
import { PointImage } from '../../src/timetravel/point-image';
import { Rng, applyOp, cloneImages, emptyImages, randomOp, type Images, type Op } from './manager-fixtures';

export const DAY = 86_400_000;
export const HOUR = 3_600_000;

export const RVOLS: ManagedVolume[] = [
  { volumeId: 0, name: 'a', size: 192 * 1024 },
  { volumeId: 1, name: 'b', size: 100_000 }, // the last block is short
];
export const RGROUP = 5;

export interface TimedOp extends Op {
  seq: number;
  time: number;
}

export interface Timeline {
  /** Per transaction n (1-based): its ops. */
  txns: TimedOp[][];
  refs: SealedContainerRef[];
  /** after[n] = model images after T_n (after[0] = empty). */
  after: Images[];
  now: number;
}

/** Writes AILFC_n with explicit record times. */
export async function writeTimedAilfc(dir: string, groupId: number, n: number, ops: TimedOp[]): Promise<SealedContainerRef> {
  await fs.promises.mkdir(dir, { recursive: true });
  const w = await ContainerWriter.create(dir, ContainerKind.AILFC, { groupId, containerId: n, blockSize: 4096 });
  const pending = ops.map((op) => {
    const payload = op.kind === RecordKind.Write || op.kind === RecordKind.Resync || op.kind === RecordKind.Error ? op.data : null;
    return w.append({ kind: op.kind, volumeId: op.volumeId, seq: op.seq, time: op.time, offset: op.offset, length: op.length }, payload);
  });
  await Promise.all(pending);
  const sealed = await w.seal();
  return { groupId, containerId: n, path: sealed.path, footer: sealed.footer };
}

/**
 * Transactions at the given ages (ms before `now`, oldest first), each with
 * 1..maxOps random ops a few seconds apart.
 */
export async function buildTimeline(dir: string, ages: number[], now: number, seed: number, maxOps = 6): Promise<Timeline> {
  const rng = new Rng(seed);
  const model = emptyImages(RVOLS);
  const after: Images[] = [cloneImages(model)];
  const txns: TimedOp[][] = [];
  const refs: SealedContainerRef[] = [];
  let seq = 1;
  for (let i = 0; i < ages.length; i++) {
    const n = i + 1;
    const count = rng.int(1, maxOps);
    const t0 = now - ages[i]!;
    const ops: TimedOp[] = [];
    for (let j = 0; j < count; j++) {
      const op = randomOp(rng, RVOLS, 12_000);
      ops.push({ ...op, seq: seq++, time: t0 + j * 1000 });
      applyOp(model, op);
    }
    txns.push(ops);
    refs.push(await writeTimedAilfc(dir, RGROUP, n, ops));
    after.push(cloneImages(model));
  }
  return { txns, refs, after, now };
}

/** The model image right after write `seq`. */
export function modelAt(tl: Timeline, seq: number): Images {
  const n = tl.txns.findIndex((ops) => ops.length && ops[ops.length - 1]!.seq >= seq) + 1;
  const img = cloneImages(tl.after[n - 1]!);
  for (const op of tl.txns[n - 1]!) if (op.seq <= seq) applyOp(img, op);
  return img;
}

/** The model image at the end of original transaction n. */
export function modelAfterTxn(tl: Timeline, n: number): Images {
  return tl.after[n]!;
}

/** The image before T_k through readBefore, every volume. */
export async function readBeforeAll(m: BackupManager, k: number): Promise<Images> {
  const out: Images = new Map();
  for (const v of RVOLS) out.set(v.volumeId, Buffer.from(await m.history.readBefore(v.volumeId, 0, v.size, k)));
  return out;
}

/** The image at seq through resolvePoint + PointImage, every volume. */
export async function readAtSeq(m: BackupManager, seq: number): Promise<Images> {
  const point = await resolvePoint(m.history, { kind: 'seq', seq, text: `@seq:${seq}` });
  const out: Images = new Map();
  for (const v of RVOLS) {
    const img = await PointImage.open(m.history, v.volumeId, v.size, point);
    out.set(v.volumeId, Buffer.from(await img.read(0, v.size)));
  }
  return out;
}

/** Sum of the sizes of the files in history/. */
export function historyBytes(m: BackupManager): number {
  let sum = 0;
  for (const f of fs.readdirSync(m.historyDir)) sum += fs.statSync(path.join(m.historyDir, f)).size;
  return sum;
}

/**
 * Checks every retained point against the model: each transaction's end
 * through readBefore (merged ends included), and every write inside an
 * unmerged transaction through PointImage. Returns a problem or null.
 */
export async function checkRetained(m: BackupManager, tl: Timeline, diff: (a: Images, b: Images) => string | null): Promise<string | null> {
  for (const r of m.transactions()) {
    const d = diff(modelAfterTxn(tl, r.n), await readBeforeAll(m, r.n + 1));
    if (d) return `end of T_${r.n}${r.mergedFrom !== undefined ? ` (merged from ${r.mergedFrom})` : ''}: ${d}`;
    if (r.mergedFrom === undefined) {
      for (const op of tl.txns[r.n - 1]!) {
        const d2 = diff(modelAt(tl, op.seq), await readAtSeq(m, op.seq));
        if (d2) return `@seq:${op.seq} in T_${r.n}: ${d2}`;
      }
    }
  }
  return null;
}

/** History files no transaction record references. */
export function orphans(m: BackupManager): string[] {
  const refd = new Set<string>();
  for (const r of m.transactions()) {
    refd.add(r.ailfc.file);
    refd.add(r.bilfc.file);
  }
  const last = m.status().lastContainer;
  return fs.readdirSync(m.historyDir).filter((f) => {
    if (refd.has(f)) return false;
    const mm = /^(ailfc|bilfc)-(\d{16})\.lfc$/.exec(f);
    return !(mm && Number(mm[2]) > last);
  });
}

/**
 * What a merge of original transactions a..b must take on disk, computed the
 * plain way: BILFC = one before-block per block any of them touched; AILFC =
 * every applied record that is still the last writer of some byte, plus the
 * last record. Sizes in bytes.
 */
export function expectedMergedBytes(tl: Timeline, a: number, b: number, drop: boolean): number {
  const ops = tl.txns.slice(a - 1, b).flat();
  if (drop) {
    const last = ops[ops.length - 1];
    return 128 + 128 + (last ? 48 + payloadLen(last) : 0);
  }
  const blocks = new Map<number, Set<number>>();
  const lastWriter = new Map<number, Int32Array>();
  for (const v of RVOLS) lastWriter.set(v.volumeId, new Int32Array(v.size).fill(-1));
  ops.forEach((op, i) => {
    if (op.kind === RecordKind.Error || op.length === 0) return;
    const lw = lastWriter.get(op.volumeId)!;
    lw.fill(i, op.offset, op.offset + op.length);
    let s = blocks.get(op.volumeId);
    if (!s) blocks.set(op.volumeId, (s = new Set()));
    for (let blk = Math.floor(op.offset / 4096); blk <= Math.floor((op.offset + op.length - 1) / 4096); blk++) s.add(blk);
  });
  const kept = new Set<number>();
  for (const lw of lastWriter.values()) for (const i of lw) if (i >= 0) kept.add(i);
  if (ops.length) kept.add(ops.length - 1);
  let ailfc = 128;
  for (const i of kept) ailfc += 48 + payloadLen(ops[i]!);
  let bilfc = 128;
  for (const [vid, s] of blocks) {
    const size = RVOLS.find((v) => v.volumeId === vid)!.size;
    for (const blk of s) bilfc += 48 + Math.min(4096, size - blk * 4096);
  }
  return ailfc + bilfc;
}

function payloadLen(op: Op): number {
  return op.kind === RecordKind.Write || op.kind === RecordKind.Resync || op.kind === RecordKind.Error ? op.data!.length : 0;
}
