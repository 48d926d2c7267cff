/**
 * Retention's piscina worker: merges the containers of transactions
 * T_from..T_to into one transaction T_to (fade-out), off the main thread and
 * at a low CPU priority.
 *
 *   merged BILFC  the OLDEST before-image of each block: the one in the
 *                 first transaction of the range that touched it. BeforeBlock
 *                 records back to back in ascending (volume, block) order,
 *                 copied verbatim (their CRCs are checked on the way).
 *   merged AILFC  the NEWEST write of each byte: every record that is still
 *                 the last writer of at least one byte (write, resync, trim,
 *                 zero), with its original seq, in seq order; plus the last
 *                 record of the range, so its end stays a resolvable point.
 *                 Replaying it over the image before T_from gives exactly
 *                 the image after T_to. Error records (which changed
 *                 nothing) are dropped.
 *   drop          the stub that ends dropped history: an empty BILFC and an
 *                 AILFC holding only the last record of the range.
 *
 * Files are written under a new name (given by the caller) as NAME.tmp,
 * fdatasync'ed, renamed and the directory fsync'ed. With dryRun nothing is
 * written: the sizes the merged files would have are computed from the
 * record headers and block runs only.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  ContainerKind,
  ContainerWriter,
  FILE_HEADER_SIZE,
  FOOTER_SIZE,
  RECORD_HEADER_SIZE,
  RecordKind,
  checkRecords,
  decodeFileHeader,
  type Footer,
} from '../lfc';
import { RecordTable, emptyStats, isApplied, scanHeaders, unpackBeforeBlocks } from './plan';
import type { BlockRun, ContainerFileInfo } from './types';

try {
  os.setPriority(0, Number(process.env.REWIND_FADE_NICE ?? 15));
} catch {
  // not permitted: normal priority
}

export interface MergeSource {
  n: number;
  ailfcPath: string;
  bilfcPath: string;
  runs: BlockRun[];
}

export interface MergeTask {
  op: 'merge';
  groupId: number;
  blockSize: number;
  historyDir: string;
  from: number;
  to: number;
  drop: boolean;
  dryRun: boolean;
  sources: MergeSource[];
  volumes: Array<{ volumeId: number; size: number }>;
  names: { ailfc: string; bilfc: string };
  /** Throttle: at most this many bytes read + written per second (0 = unlimited). */
  bytesPerSecond: number;
  /** Test hook: SIGKILL after about half of the output is written. */
  crashMid?: boolean;
}

export interface MergedContainer extends ContainerFileInfo {
  footer: Footer;
}

export interface MergeOk {
  ok: true;
  ailfc: MergedContainer;
  bilfc: MergedContainer;
  /** Kept AILFC records, and how many of them are error records. */
  records: number;
  errors: number;
  runs: BlockRun[];
  blocks: number;
  volumes: number[];
  bytesRead: number;
  bytesWritten: number;
  timings: Record<string, number>;
}

export interface MergeFailure {
  ok: false;
  problem: string;
}

const IO_CHUNK = 4 << 20;

export default async function run(task: MergeTask): Promise<MergeOk | MergeFailure> {
  const out = new Outputs(task);
  try {
    return await merge(task, out);
  } catch (err) {
    await out.abort();
    return { ok: false, problem: (err as Error).message };
  }
}

/** Both output files, so a failure removes whatever was written. */
class Outputs {
  files: string[] = [];
  private readonly writers: ContainerWriter[] = [];
  constructor(readonly task: MergeTask) {}

  /** A merged container, sealed under `final` (written as final.tmp until then). */
  async create(final: string, kind: ContainerKind, groupId: number, containerId: number, blockSize: number): Promise<ContainerWriter> {
    this.files.push(`${final}.tmp`);
    const w = await ContainerWriter.createAt(final, kind, { groupId, containerId, blockSize });
    this.writers.push(w);
    return w;
  }

  async seal(w: ContainerWriter): Promise<Footer> {
    const { path: final, footer } = await w.seal();
    this.files.push(final);
    return footer;
  }

  async abort(): Promise<void> {
    for (const w of this.writers) await w.close().catch(() => undefined);
    for (const f of this.files) fs.rmSync(f, { force: true });
  }
}

// --- sweep: for each elementary segment, the covering interval of highest priority ---

interface Interval {
  lo: number;
  hi: number;
  pri: number;
  id: number;
}

/** Max-heap of interval ids by priority. */
class Heap {
  private a: number[] = [];
  constructor(private readonly pri: (id: number) => number) {}
  get size(): number {
    return this.a.length;
  }
  top(): number {
    return this.a[0]!;
  }
  push(id: number): void {
    const a = this.a;
    a.push(id);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.pri(a[p]!) >= this.pri(a[i]!)) break;
      [a[p], a[i]] = [a[i]!, a[p]!];
      i = p;
    }
  }
  pop(): void {
    const a = this.a;
    const last = a.pop()!;
    if (a.length === 0) return;
    a[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < a.length && this.pri(a[l]!) > this.pri(a[m]!)) m = l;
      if (r < a.length && this.pri(a[r]!) > this.pri(a[m]!)) m = r;
      if (m === i) break;
      [a[m], a[i]] = [a[i]!, a[m]!];
      i = m;
    }
  }
}

/**
 * Cuts the union of the intervals into segments, each with the interval of
 * highest priority covering it: [lo, hi, id]. Ascending, disjoint; adjacent
 * segments may share an id.
 */
export function sweep(iv: Interval[]): Array<{ lo: number; hi: number; id: number }> {
  const out: Array<{ lo: number; hi: number; id: number }> = [];
  if (!iv.length) return out;
  const byId = new Map<number, Interval>(iv.map((x) => [x.id, x]));
  const starts = [...iv].sort((x, y) => x.lo - y.lo);
  const ends = [...iv].sort((x, y) => x.hi - y.hi);
  const ended = new Set<number>();
  const heap = new Heap((id) => byId.get(id)!.pri);
  let si = 0;
  let ei = 0;
  while (si < starts.length || ei < ends.length) {
    const x = Math.min(si < starts.length ? starts[si]!.lo : Infinity, ends[ei]!.hi);
    while (ei < ends.length && ends[ei]!.hi === x) ended.add(ends[ei++]!.id);
    while (si < starts.length && starts[si]!.lo === x) heap.push(starts[si++]!.id);
    while (heap.size && ended.has(heap.top())) heap.pop();
    if (!heap.size) continue;
    const next = Math.min(si < starts.length ? starts[si]!.lo : Infinity, ends[ei]!.hi);
    const id = heap.top();
    const prev = out[out.length - 1];
    if (prev && prev.hi === x && prev.id === id) prev.hi = next;
    else out.push({ lo: x, hi: next, id });
  }
  return out;
}

// --- output -------------------------------------------------------------------

function readFully(fd: number, buf: Buffer, off: number, len: number, position: number): void {
  while (len > 0) {
    const got = fs.readSync(fd, buf, off, len, position);
    if (got === 0) throw new Error(`short read at ${position}`);
    off += got;
    position += got;
    len -= got;
  }
}

class Throttle {
  private readonly t0 = performance.now();
  private bytes = 0;
  constructor(private readonly rate: number) {}
  async add(n: number): Promise<void> {
    this.bytes += n;
    if (!this.rate) return;
    const due = (this.bytes / this.rate) * 1000 - (performance.now() - this.t0);
    if (due > 5) await new Promise((r) => setTimeout(r, due));
  }
}

// --- the merge ----------------------------------------------------------------------

interface SrcRecords {
  table: RecordTable;
  fd: number;
  /** Offset of the footer: the end of the records. */
  footerAt: number;
}

async function merge(task: MergeTask, out: Outputs): Promise<MergeOk | MergeFailure> {
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const lap = (name: string, since: number): number => {
    const now = performance.now();
    timings[name] = Math.round((now - since) * 10) / 10;
    return now;
  };
  const bs = task.blockSize;
  const stride = RECORD_HEADER_SIZE + bs;
  const sizes = new Map(task.volumes.map((v) => [v.volumeId, v.size] as [number, number]));
  const throttle = new Throttle(task.bytesPerSecond);
  let bytesRead = 0;

  // 1. AILFC record headers of every source, and which records to keep.
  const srcs: SrcRecords[] = [];
  let aBlockSize = bs;
  try {
    for (const s of task.sources) {
      const fd = fs.openSync(s.ailfcPath, 'r');
      const st = fs.fstatSync(fd);
      srcs.push({ table: new RecordTable(), fd, footerAt: st.size - FOOTER_SIZE });
      const hdr = Buffer.allocUnsafe(FILE_HEADER_SIZE);
      readFully(fd, hdr, 0, FILE_HEADER_SIZE, 0);
      const fh = decodeFileHeader(hdr);
      if (typeof fh === 'string') throw new Error(`AILFC_${s.n}: ${fh}`);
      if (s === task.sources[0]) aBlockSize = fh.blockSize;
      const stats = emptyStats();
      scanHeaders(fd, st.size - FOOTER_SIZE, srcs[srcs.length - 1]!.table, stats, sizes);
    }
    let t = lap('scan', t0);
    // Global record numbering: source by source, in file (= seq) order.
    const keep: Uint8Array[] = srcs.map((s) => new Uint8Array(s.table.count));
    let lastSrc = -1;
    for (let i = srcs.length - 1; i >= 0; i--) {
      if (srcs[i]!.table.count > 0) {
        lastSrc = i;
        break;
      }
    }
    if (lastSrc >= 0) keep[lastSrc]![srcs[lastSrc]!.table.count - 1] = 1;
    if (!task.drop) {
      const perVol = new Map<number, Interval[]>();
      const where: Array<[number, number]> = [];
      let id = 0;
      srcs.forEach((s, si) => {
        const tb = s.table;
        for (let i = 0; i < tb.count; i++) {
          if (!isApplied(tb.kind[i]!) || tb.length[i]! === 0) continue;
          let l = perVol.get(tb.vol[i]!);
          if (!l) perVol.set(tb.vol[i]!, (l = []));
          l.push({ lo: tb.offset[i]!, hi: tb.offset[i]! + tb.length[i]!, pri: id, id });
          where.push([si, i]);
          id++;
        }
      });
      for (const iv of perVol.values()) {
        for (const seg of sweep(iv)) {
          const [si, i] = where[seg.id]!;
          keep[si]![i] = 1;
        }
      }
    }
    t = lap('plan', t);

    // 2. The merged AILFC.
    let records = 0;
    let errors = 0;
    let ailfcSize = FILE_HEADER_SIZE + FOOTER_SIZE;
    srcs.forEach((s, si) => {
      const tb = s.table;
      for (let i = 0; i < tb.count; i++) {
        if (!keep[si]![i]) continue;
        records++;
        if (tb.kind[i] === RecordKind.Error) errors++;
      }
    });
    const aPath = path.join(task.historyDir, task.names.ailfc);
    const bPath = path.join(task.historyDir, task.names.bilfc);
    let aOut: ContainerWriter | null = null;
    let ailfcFooter: Footer = { recordCount: 0, firstSeq: 0, lastSeq: 0, firstTime: 0, lastTime: 0, bodyCrc: 0, payloadBytes: 0 };
    if (!task.dryRun) aOut = await out.create(aPath, ContainerKind.AILFC, task.groupId, task.to, aBlockSize);
    for (let si = 0; si < srcs.length; si++) {
      const s = srcs[si]!;
      const { table: tb, fd } = s;
      let i = 0;
      while (i < tb.count) {
        if (!keep[si]![i]) {
          i++;
          continue;
        }
        // A run of kept records adjacent in the file: one read (up to IO_CHUNK).
        let j = i;
        const start = tb.position[i]!;
        let end = start;
        for (; j < tb.count && keep[si]![j]; j++) {
          // Records lie back to back: one ends where the next (or the footer) starts.
          const recEnd = j + 1 < tb.count ? tb.position[j + 1]! : s.footerAt;
          if (j > i && recEnd - start > IO_CHUNK) break;
          end = recEnd;
        }
        const len = end - start;
        if (aOut) {
          const raw = Buffer.allocUnsafe(len);
          readFully(fd, raw, 0, len, start);
          bytesRead += len;
          // Check every record before it replaces the original.
          const c = checkRecords(raw);
          if (typeof c === 'string') throw new Error(`AILFC_${task.sources[si]!.n}: ${c} (run at ${start})`);
          if (c.records !== j - i) throw new Error(`AILFC_${task.sources[si]!.n}: ${c.records} records at ${start}, expected ${j - i}`);
          await aOut.appendEncoded(raw, c.records, c.payloadBytes, {
            first: c.first!.seq,
            firstTime: c.first!.time,
            last: c.last!.seq,
            lastTime: c.last!.time,
          });
          await throttle.add(len * 2);
        }
        ailfcSize += len;
        i = j;
      }
    }
    if (aOut) ailfcFooter = await out.seal(aOut);
    t = lap('ailfc', t);

    // 3. The merged BILFC: per block, the before-image of the first source that touched it.
    const runs: BlockRun[] = [];
    const perVol = new Map<number, Interval[]>();
    const runOf: Array<{ si: number; run: BlockRun }> = [];
    if (!task.drop) {
      task.sources.forEach((s, si) => {
        for (const r of s.runs) {
          let l = perVol.get(r.volumeId);
          if (!l) perVol.set(r.volumeId, (l = []));
          l.push({ lo: r.start, hi: r.start + r.count, pri: -si, id: runOf.length });
          runOf.push({ si, run: r });
        }
      });
    }
    let bOut: ContainerWriter | null = null;
    if (!task.dryRun) bOut = await out.create(bPath, ContainerKind.BILFC, task.groupId, task.to, bs);
    let pos = FILE_HEADER_SIZE;
    let blocks = 0;
    const bfds = new Map<number, number>();
    let scratch = Buffer.allocUnsafe(0);
    let crashed = false;
    try {
      for (const vol of [...perVol.keys()].sort((a, b) => a - b)) {
        const size = sizes.get(vol);
        if (size === undefined) throw new Error(`block runs of unknown volume ${vol}`);
        for (const seg of sweep(perVol.get(vol)!)) {
          const { si, run } = runOf[seg.id]!;
          const prev = runs[runs.length - 1];
          const segBytes = (first: number, count: number): number =>
            count * RECORD_HEADER_SIZE + (Math.min(size, (first + count) * bs) - first * bs);
          const nb = seg.hi - seg.lo;
          if (prev && prev.volumeId === vol && prev.start + prev.count === seg.lo) prev.count += nb;
          else runs.push({ volumeId: vol, start: seg.lo, count: nb, position: pos });
          blocks += nb;
          const bytes = segBytes(seg.lo, nb);
          if (bOut) {
            let fd = bfds.get(si);
            if (fd === undefined) {
              fd = fs.openSync(task.sources[si]!.bilfcPath, 'r');
              bfds.set(si, fd);
            }
            const maxBlocks = Math.max(1, Math.floor(IO_CHUNK / stride));
            for (let b = seg.lo; b < seg.hi;) {
              const c = Math.min(maxBlocks, seg.hi - b);
              const len = segBytes(b, c);
              const raw = Buffer.allocUnsafe(len);
              const srcPos = run.position + (b - run.start) * stride;
              readFully(fd, raw, 0, len, srcPos);
              bytesRead += len;
              const dataLen = len - c * RECORD_HEADER_SIZE;
              if (scratch.length < dataLen) scratch = Buffer.allocUnsafe(Math.max(dataLen, IO_CHUNK));
              unpackBeforeBlocks(raw, srcPos, vol, b, c, bs, size, scratch, 0);
              await bOut.appendEncoded(raw, c, dataLen);
              await throttle.add(len * 2);
              b += c;
            }
            if (task.crashMid && !crashed) {
              crashed = true;
              await bOut.sync();
              process.kill(process.pid, 'SIGKILL');
            }
          }
          pos += bytes;
        }
      }
    } finally {
      for (const fd of bfds.values()) fs.closeSync(fd);
    }
    const bilfcSize = pos + FOOTER_SIZE;
    let bilfcFooter: Footer = { recordCount: blocks, firstSeq: 0, lastSeq: 0, firstTime: 0, lastTime: 0, bodyCrc: 0, payloadBytes: 0 };
    if (bOut) {
      if (bOut.size + FOOTER_SIZE !== bilfcSize) throw new Error(`merged BILFC is ${bOut.size + FOOTER_SIZE} bytes, expected ${bilfcSize}`);
      bilfcFooter = await out.seal(bOut);
    }
    if (!task.dryRun) {
      const dfd = fs.openSync(task.historyDir, 'r');
      try {
        fs.fsyncSync(dfd);
      } finally {
        fs.closeSync(dfd);
      }
    }
    lap('bilfc', t);
    const volumes = [...new Set(runs.map((r) => r.volumeId))].sort((a, b) => a - b);
    return {
      ok: true,
      ailfc: { file: task.names.ailfc, size: ailfcSize, bodyCrc: ailfcFooter.bodyCrc, recordCount: records, footer: ailfcFooter },
      bilfc: { file: task.names.bilfc, size: bilfcSize, bodyCrc: bilfcFooter.bodyCrc, recordCount: blocks, footer: bilfcFooter },
      records,
      errors,
      runs,
      blocks,
      volumes,
      bytesRead,
      bytesWritten: task.dryRun ? 0 : ailfcSize + bilfcSize,
      timings,
    };
  } finally {
    for (const s of srcs) fs.closeSync(s.fd);
  }
}
