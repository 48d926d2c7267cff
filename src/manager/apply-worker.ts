/**
 * The backup manager's piscina worker: the heavy lifting of one transaction.
 *
 *   verify   verify every checksum of AILFC_n, scan its record headers,
 *            compute the touched block runs (needs no replica: it may run
 *            while the previous container is still being applied).
 *   bilfc    (unless a sealed BILFC_n already exists) read each touched
 *            block of the replicated images once, in ascending (volume,
 *            offset) order, append it to BILFC_n and seal it.
 *   apply    for one volume: final block = before-image (read from BILFC_n,
 *            never from the replica, so a redo after a crash gives the same
 *            result) overlaid with AILFC_n's records in seq order; each
 *            final block written once, ascending, in coalesced runs;
 *            fdatasync.
 *
 * Files are read and written with synchronous calls: this thread has
 * nothing else to do, and it keeps the main thread's event loop free.
 * Expected failures (a corrupt container, a record the group cannot take)
 * come back as { ok: false } results, because piscina clones thrown errors
 * without their extra fields.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  ContainerKind,
  ContainerWriter,
  FILE_HEADER_SIZE,
  FOOTER_SIZE,
  RECORD_FLAG_ZERO,
  RECORD_HEADER_SIZE,
  RecordKind,
  containerFileName,
  decodeFileHeader,
  journalDirectIo,
  verifyContainer,
  type Footer,
} from '../lfc';
import { crashPoint } from './crash-hook';
import { fadviseRandom, fallocateSync, isNotSupported, nativeAvailable } from '../native';
import { isZero } from '../util/zero';
import {
  PlanError,
  RecordTable,
  blockLength,
  carriesData,
  computeRuns,
  emptyStats,
  planBatches,
  runsBytes,
  addRecord,
  unpackBeforeBlocks,
  type RecordStats,
  type RecordTableData,
} from './plan';
import type { BlockRun, ContainerFileInfo } from './types';

// The manager is background work that may lag: its threads yield the CPU to
// the intercept (client I/O) and to the clients themselves. On Linux the
// nice value is per thread, and pid 0 means the calling thread.
try {
  os.setPriority(0, Number(process.env.REWIND_MANAGER_NICE ?? 10));
} catch {
  // not permitted or not supported: run at normal priority
}

export interface WorkerVolume {
  volumeId: number;
  size: number;
  replicaPath: string;
}

export interface VerifyTask {
  op: 'verify';
  n: number;
  groupId: number;
  blockSize: number;
  ailfcPath: string;
  volumes: WorkerVolume[];
}

export interface BilfcTask {
  op: 'bilfc';
  n: number;
  groupId: number;
  blockSize: number;
  historyDir: string;
  /** A sealed BILFC_n is already there (crash recovery): verify it, do not rebuild it. */
  bilfcExists: boolean;
  volumes: WorkerVolume[];
  /** From verify. */
  runs: BlockRun[];
  blocks: number;
  bilfcSize: number;
}

export interface ApplyTask {
  op: 'apply';
  n: number;
  blockSize: number;
  ailfcPath: string;
  bilfcPath: string;
  volume: WorkerVolume;
  /** From prepare: AILFC_n's record headers and the touched runs (with BILFC positions). */
  table: RecordTableData;
  runs: BlockRun[];
  batchBytes: number;
  /** fdatasync the replica at the end (default). False: the caller runs a SyncTask. */
  sync?: boolean;
}

/** fdatasync of replicated images written by apply tasks with sync: false. */
export interface SyncTask {
  op: 'sync';
  paths: string[];
}

export type Failure = {
  ok: false;
  /** corrupt: a checksum/framing problem in a container; invalid: records the group cannot apply. */
  reason: 'corrupt' | 'invalid';
  container: 'ailfc' | 'bilfc';
  offset: number;
  problem: string;
};

export interface VerifyOk {
  ok: true;
  stats: RecordStats;
  footer: Footer;
  ailfc: ContainerFileInfo;
  /** Touched block runs, ascending (volume, block), with their BILFC positions. */
  runs: BlockRun[];
  blocks: number;
  /** Size BILFC_n must have. */
  bilfcSize: number;
  /** AILFC_n's record headers, for the apply tasks. */
  table: RecordTableData;
  /** Phase times, ms. */
  timings: Record<string, number>;
}

export interface BilfcOk {
  ok: true;
  bilfc: ContainerFileInfo;
  /** The BILFC was built by this task (false: an existing one was verified). */
  built: boolean;
  timings: Record<string, number>;
}

export interface ApplyOk {
  ok: true;
  volumeId: number;
  blocks: number;
  bytes: number;
  batches: number;
  /** Phase times, ms. */
  timings: Record<string, number>;
}

export interface SyncOk {
  ok: true;
  timings: Record<string, number>;
}

export type Task = VerifyTask | BilfcTask | ApplyTask | SyncTask;

export default async function run(task: Task): Promise<VerifyOk | BilfcOk | ApplyOk | SyncOk | Failure> {
  try {
    if (task.op === 'verify') return await verify(task);
    if (task.op === 'bilfc') return await bilfc(task);
    if (task.op === 'sync') return syncFiles(task.paths);
    return await apply(task);
  } catch (err) {
    if (err instanceof PlanError) {
      return { ok: false, reason: 'invalid', container: 'ailfc', offset: err.offset ?? -1, problem: err.message };
    }
    throw err;
  }
}

function fail(reason: Failure['reason'], container: Failure['container'], offset: number, problem: string): Failure {
  return { ok: false, reason, container, offset, problem };
}

/** Reads and checks the 64-byte file header; returns a problem or null. */
function checkFileHeader(file: string, kind: ContainerKind, groupId: number, n: number): string | null {
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(FILE_HEADER_SIZE);
    if (fs.readSync(fd, h, 0, FILE_HEADER_SIZE, 0) !== FILE_HEADER_SIZE) return 'truncated file header';
    const fh = decodeFileHeader(h);
    if (typeof fh === 'string') return fh;
    if (fh.kind !== kind) return `container kind ${fh.kind}, expected ${kind}`;
    if (fh.groupId !== groupId) return `group ${fh.groupId}, expected ${groupId}`;
    if (fh.containerId !== n) return `container id ${fh.containerId}, expected ${n}`;
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

function volumeSizes(volumes: WorkerVolume[]): Map<number, number> {
  return new Map(volumes.map((v) => [v.volumeId, v.size] as [number, number]));
}

/** Step 1a: every checksum of AILFC_n, its identity, its records against the group; the touched runs. */
async function verify(task: VerifyTask): Promise<VerifyOk | Failure> {
  const { n, blockSize } = task;
  const clock = new Clock();
  // One pass: the headers go into the table as the checksums are verified.
  // A record the group cannot take is reported only if the container is
  // intact (corruption is the more important finding).
  const sizes = volumeSizes(task.volumes);
  const table = new RecordTable();
  const stats = emptyStats();
  let invalid: PlanError | null = null;
  const v = await verifyContainer(task.ailfcPath, (rec) => {
    if (invalid) return;
    try {
      addRecord(table, stats, rec.kind, rec.volumeId, rec.seq, rec.time, rec.offset, rec.length, rec.payloadLength, rec.position, sizes);
    } catch (err) {
      if (!(err instanceof PlanError)) throw err;
      invalid = err;
    }
  });
  clock.lap('verify');
  if (!v.ok) return fail('corrupt', 'ailfc', v.offset, v.problem);
  const hp = checkFileHeader(task.ailfcPath, ContainerKind.AILFC, task.groupId, n);
  if (hp) return fail('corrupt', 'ailfc', 0, hp);
  if (invalid) throw invalid;
  const footer = v.footer;
  const runs = computeRuns(table, blockSize, sizes, FILE_HEADER_SIZE);
  clock.lap('scan');
  if (
    stats.records !== footer.recordCount ||
    (stats.records > 0 && (stats.firstSeq !== footer.firstSeq || stats.lastSeq !== footer.lastSeq))
  ) {
    return fail(
      'corrupt',
      'ailfc',
      -1,
      `records (${stats.records}, seq ${stats.firstSeq}..${stats.lastSeq}) disagree with the footer (${footer.recordCount}, seq ${footer.firstSeq}..${footer.lastSeq})`,
    );
  }
  const ailfcSize = fs.statSync(task.ailfcPath).size;
  return {
    ok: true,
    stats,
    footer,
    ailfc: { file: path.basename(task.ailfcPath), size: ailfcSize, bodyCrc: footer.bodyCrc, recordCount: footer.recordCount },
    runs,
    blocks: runs.reduce((a, r) => a + r.count, 0),
    bilfcSize: FILE_HEADER_SIZE + runsBytes(runs, blockSize, sizes) + FOOTER_SIZE,
    table: table.data(),
    timings: clock.laps,
  };
}

/**
 * Step 1b: BILFC_n. Each touched block read once from the replica, in
 * ascending (volume, offset) order, appended, and the container sealed
 * (fdatasync + rename + dir fsync). Or, after a crash, the sealed one
 * verified: checksums, identity, and exactly the blocks AILFC_n touches.
 */
async function bilfc(task: BilfcTask): Promise<BilfcOk | Failure> {
  const { n, blockSize, runs, blocks } = task;
  const clock = new Clock();
  const expectSize = task.bilfcSize;
  const bilfcPath = path.join(task.historyDir, containerFileName('bilfc', n));
  if (task.bilfcExists) {
    const bv = await verifyContainer(bilfcPath);
    if (!bv.ok) return fail('corrupt', 'bilfc', bv.offset, bv.problem);
    const bh = checkFileHeader(bilfcPath, ContainerKind.BILFC, task.groupId, n);
    if (bh) return fail('corrupt', 'bilfc', 0, bh);
    const size = fs.statSync(bilfcPath).size;
    if (bv.footer.recordCount !== blocks || size !== expectSize) {
      return fail(
        'corrupt',
        'bilfc',
        -1,
        `BILFC_${n} holds ${bv.footer.recordCount} blocks in ${size} bytes; AILFC_${n} touches ${blocks} blocks (${expectSize} bytes)`,
      );
    }
    return {
      ok: true,
      bilfc: { file: path.basename(bilfcPath), size, bodyCrc: bv.footer.bodyCrc, recordCount: bv.footer.recordCount },
      built: false,
      timings: clock.lap('verifyBilfc'),
    };
  }

  const w = await ContainerWriter.create(task.historyDir, ContainerKind.BILFC, {
    groupId: task.groupId,
    containerId: n,
    blockSize,
    direct: journalDirectIo(),
  });
  let sealed: { path: string; footer: Footer };
  const fds = new Map<number, number>();
  try {
    // Blocks are read into 1 MiB arenas (a fresh one when full: the writer
    // keeps payload references until its group commit). Appends share one
    // promise per writer batch; a window of WINDOW bytes is kept in flight
    // while the next is read, so reads and writes overlap and memory stays
    // around 2 windows.
    const ARENA = Math.max(blockSize, 1 << 20);
    const WINDOW = 4 << 20;
    let arena = Buffer.allocUnsafe(ARENA);
    let arenaUsed = 0;
    let last: Promise<void> | null = null;
    let prevWindow: Promise<void> | null = null;
    let windowBytes = 0;
    let appended = 0;
    const half = Math.floor(blocks / 2);
    for (const r of runs) {
      const vol = task.volumes.find((x) => x.volumeId === r.volumeId)!;
      let fd = fds.get(r.volumeId);
      if (fd === undefined) {
        fd = fs.openSync(vol.replicaPath, 'r');
        fds.set(r.volumeId, fd);
        // Runs come sorted by offset: scattered small reads in ascending
        // order would ramp readahead up to whole large folios (10k reads/s
        // instead of 200k over holes). Each run is read whole anyway.
        if (nativeAvailable()) fadviseRandom(fd);
      }
      const maxChunk = Math.floor(ARENA / blockSize);
      for (let b = r.start; b < r.start + r.count;) {
        let nb = Math.min(maxChunk, r.start + r.count - b);
        if (arenaUsed + blockSize > ARENA) {
          arena = Buffer.allocUnsafe(ARENA);
          arenaUsed = 0;
        }
        nb = Math.min(nb, Math.floor((ARENA - arenaUsed) / blockSize));
        const byteStart = b * blockSize;
        const byteLen = Math.min(nb * blockSize, vol.size - byteStart);
        readFully(fd, arena, byteStart, arenaUsed, byteLen);
        for (let i = 0; i < nb; i++) {
          const len = blockLength(b + i, blockSize, vol.size);
          const at = arenaUsed + i * blockSize;
          const block = arena.subarray(at, at + len);
          // Flag an all-zero before-image, so block status at a point in time can tell holes from data.
          const flags = isZero(block) ? RECORD_FLAG_ZERO : 0;
          const p = w.append(
            { kind: RecordKind.BeforeBlock, flags, volumeId: r.volumeId, seq: 0, time: 0, offset: (b + i) * blockSize, length: len },
            block,
          );
          if (p !== last) {
            p.catch(() => undefined); // awaited below through `last` (batches complete in order)
            last = p;
          }
          appended++;
          if (appended === half && half > 0 && process.env.REWIND_MANAGER_CRASH_AT) {
            await last;
            await w.sync();
            crashPoint('bilfc-mid', n);
          }
        }
        arenaUsed += nb * blockSize;
        b += nb;
        windowBytes += byteLen;
        if (windowBytes >= WINDOW) {
          if (prevWindow) await prevWindow;
          prevWindow = last;
          windowBytes = 0;
        }
      }
    }
    if (last) await last;
    clock.lap('bilfcWrite');
    sealed = await w.seal();
    clock.lap('bilfcSeal');
  } catch (err) {
    await w.close().catch(() => undefined);
    fs.rmSync(`${bilfcPath}.tmp`, { force: true });
    throw err;
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd);
  }
  crashPoint('bilfc-sealed', n);
  const size = fs.statSync(sealed.path).size;
  if (path.resolve(sealed.path) !== path.resolve(bilfcPath) || sealed.footer.recordCount !== blocks || size !== expectSize) {
    throw new Error(
      `BILFC_${n}: sealed ${sealed.path} with ${sealed.footer.recordCount} records in ${size} bytes, expected ${bilfcPath}, ${blocks} records, ${expectSize} bytes`,
    );
  }
  return {
    ok: true,
    bilfc: { file: path.basename(sealed.path), size, bodyCrc: sealed.footer.bodyCrc, recordCount: blocks },
    built: true,
    timings: clock.laps,
  };
}

function syncFiles(paths: string[]): SyncOk {
  const clock = new Clock();
  for (const p of paths) {
    const fd = fs.openSync(p, 'r+');
    try {
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
  return { ok: true, timings: clock.lap('fdatasync') };
}

class Clock {
  private t = performance.now();
  readonly laps: Record<string, number> = {};
  lap(name?: string): Record<string, number> {
    const now = performance.now();
    if (name) this.laps[name] = (this.laps[name] ?? 0) + Math.round((now - this.t) * 10) / 10;
    this.t = now;
    return this.laps;
  }
}

function readFully(fd: number, buf: Buffer, position: number, off = 0, len = buf.length - off): void {
  while (len > 0) {
    const got = fs.readSync(fd, buf, off, len, position);
    if (got === 0) {
      // Past the end of a sparse image: zeroes (cannot happen for a replica created with its size).
      buf.fill(0, off, off + len);
      return;
    }
    off += got;
    position += got;
    len -= got;
  }
}

let punchWorks = nativeAvailable();

/**
 * Writes buf[off, off+len) at `position` (block aligned, whole blocks but
 * the volume's last), punching runs of all-zero blocks instead of writing
 * them (when the file system can punch holes).
 */
function writeOrPunch(fd: number, buf: Buffer, off: number, len: number, position: number, blockSize: number): void {
  if (!punchWorks) return writeFully(fd, buf, off, len, position);
  let runStart = 0; // start (relative) of the pending run
  let runZero: boolean | null = null;
  const flush = (end: number): void => {
    if (end <= runStart || runZero === null) return;
    if (runZero) {
      try {
        fallocateSync(fd, 'punch', position + runStart, end - runStart);
      } catch (err) {
        if (!isNotSupported(err)) throw err;
        punchWorks = false;
        writeFully(fd, buf, off + runStart, end - runStart, position + runStart);
      }
    } else {
      writeFully(fd, buf, off + runStart, end - runStart, position + runStart);
    }
  };
  for (let at = 0; at < len; at += blockSize) {
    const n = Math.min(blockSize, len - at);
    const zero = isZero(buf.subarray(off + at, off + at + n));
    if (runZero !== null && zero !== runZero) {
      flush(at);
      runStart = at;
    }
    runZero = zero;
  }
  flush(len);
}

function writeFully(fd: number, buf: Buffer, off: number, len: number, position: number): void {
  while (len > 0) {
    const put = fs.writeSync(fd, buf, off, len, position);
    off += put;
    position += put;
    len -= put;
  }
}

async function apply(task: ApplyTask): Promise<ApplyOk | Failure> {
  const { n, blockSize } = task;
  const vol = task.volume;
  const t = RecordTable.from(task.table);
  const runs = task.runs;
  const batches = planBatches(t, runs, vol.volumeId, blockSize, vol.size, task.batchBytes);
  if (batches.length === 0) return { ok: true, volumeId: vol.volumeId, blocks: 0, bytes: 0, batches: 0, timings: {} };

  const clock = new Clock();
  let maxBytes = 0;
  let maxRaw = 0;
  for (const b of batches) {
    maxBytes = Math.max(maxBytes, b.bytes);
    let raw = 0;
    for (const p of b.pieces) raw += p.count * RECORD_HEADER_SIZE + p.byteLength;
    maxRaw = Math.max(maxRaw, raw);
  }
  const buf = Buffer.allocUnsafe(maxBytes);
  const raw = Buffer.allocUnsafe(maxRaw);
  const ailfcFd = fs.openSync(task.ailfcPath, 'r');
  const bilfcFd = fs.openSync(task.bilfcPath, 'r');
  const replicaFd = fs.openSync(vol.replicaPath, 'r+');
  let blocks = 0;
  let bytes = 0;
  clock.lap('plan');
  try {
    for (let bi = 0; bi < batches.length; bi++) {
      const batch = batches[bi]!;
      const pieces = batch.pieces;
      // 1. Before-images from BILFC_n, checked record by record. A batch's
      //    records are back to back in the BILFC (ascending volume, block),
      //    so they are read with one pread.
      const first = pieces[0]!.position;
      let rawLen = 0;
      for (const p of pieces) {
        if (p.position !== first + rawLen) throw new Error(`BILFC_${n}: batch pieces are not contiguous at ${p.position}`);
        rawLen += p.count * RECORD_HEADER_SIZE + p.byteLength;
      }
      readFully(bilfcFd, raw, first, 0, rawLen);
      clock.lap('readBefore');
      try {
        for (const p of pieces) {
          const at = p.position - first;
          const len = p.count * RECORD_HEADER_SIZE + p.byteLength;
          unpackBeforeBlocks(raw.subarray(at, at + len), p.position, vol.volumeId, p.start, p.count, blockSize, vol.size, buf, p.bufOffset);
        }
      } catch (err) {
        if (err instanceof PlanError) return fail('corrupt', 'bilfc', err.offset ?? -1, err.message);
        throw err;
      }
      clock.lap('checkBefore');
      // 2. Overlay AILFC_n's records in seq order: the last writer wins per
      //    byte. Pieces are sorted and disjoint: binary-search the first one
      //    a record reaches.
      for (const i of batch.records) {
        const lo = t.offset[i]!;
        const hi = lo + t.length[i]!;
        const data = carriesData(t.kind[i]!);
        const payloadPos = t.position[i]! + RECORD_HEADER_SIZE;
        let a = 0;
        let z = pieces.length - 1;
        while (a < z) {
          const m = (a + z) >> 1;
          if (pieces[m]!.byteStart + pieces[m]!.byteLength <= lo) a = m + 1;
          else z = m;
        }
        for (let k = a; k < pieces.length; k++) {
          const p = pieces[k]!;
          if (p.byteStart >= hi) break;
          const from = Math.max(lo, p.byteStart);
          const to = Math.min(hi, p.byteStart + p.byteLength);
          if (from >= to) continue;
          const at = p.bufOffset + (from - p.byteStart);
          if (data) readFully(ailfcFd, buf, payloadPos + (from - lo), at, to - from);
          else buf.fill(0, at, at + (to - from));
        }
      }
      clock.lap('overlay');
      // 3. Each final block once, ascending; a piece is a run of adjacent
      //    blocks. Whole blocks that end up all zero (trimmed, zeroed, or
      //    written with zeroes) are punched out instead, so the replica stays
      //    sparse and its holes say where the image reads as zero.
      for (const p of pieces) {
        writeOrPunch(replicaFd, buf, p.bufOffset, p.byteLength, p.byteStart, blockSize);
        blocks += p.count;
        bytes += p.byteLength;
      }
      clock.lap('write');
      if (bi === Math.floor(batches.length / 2)) crashPoint('apply-mid', n);
    }
    if (task.sync !== false) {
      fs.fdatasyncSync(replicaFd);
      clock.lap('fdatasync');
    }
  } finally {
    fs.closeSync(ailfcFd);
    fs.closeSync(bilfcFd);
    fs.closeSync(replicaFd);
  }
  return { ok: true, volumeId: vol.volumeId, blocks, bytes, batches: batches.length, timings: clock.laps };
}
