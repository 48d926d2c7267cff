/**
 * Scrub of one group's stored data (as ZFS scrubs a pool): a throttled
 * background pass that reads everything the group keeps and checks it,
 * so damage is found before a restore needs the data.
 *
 * 1. Containers: every committed AILFC and BILFC is read whole (header,
 *    every record's header and payload CRC, footer, body CRC) and compared
 *    with its catalog record (name, size, body CRC).
 * 2. The replica against the transaction index: each block of a replica
 *    must hold what its LAST transaction T_m made of it, and that is known
 *    independently of the replica: BILFC_m's before-image of the block
 *    (CRC-checked) overlaid with AILFC_m's records, which is what the
 *    apply computed and wrote. For every retained T_m, the blocks whose
 *    last toucher is T_m (the per-block last-touch map of the read side)
 *    are rebuilt that way and compared with the image after T_m as the
 *    read side serves it (readBefore(.., m + 1)), which for those blocks is
 *    the replica: the same reads, with the same coordination against a
 *    concurrent apply, as time travel's. Blocks no retained transaction
 *    touched must read as zero when no history was dropped before the
 *    volume joined (only the replica's data extents are read).
 *    This needs no state kept at apply time, so it costs production
 *    nothing; blocks whose history retention dropped are not covered.
 * 3. What it finds becomes damage marks (damage.ts) at once, so reads that
 *    need the data refuse from then on; marks it re-examined and found
 *    good again, and marks of files retention removed, are cleared at the end.
 *
 * The pass reads at most `bytesPerSecond` on average (util/throttle.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mapExtentsRaw } from '../native';
import { RecordKind, RECORD_HEADER_SIZE } from '../lfc';
import { Throttle } from '../util/throttle';
import { isZero } from '../util/zero';
import { preadFully } from '../util/fd-cache';
import type { DamageMark } from './damage';
import { DamagedError, reconcileMarks } from './damage';
import type { HistoryReader } from './history';
import type { TransactionRecord } from './types';
import { checkStored } from './verify-history';

/** Blocks rebuilt and compared at once. */
const CHUNK_BLOCKS = 256;

export interface ScrubOptions {
  /** Average read rate (bytes/s); 0: unthrottled. */
  bytesPerSecond: number;
  /** Polled between steps: true stops the pass (the report says "aborted"). */
  aborted?: () => boolean;
  /** Progress: bytes read so far. */
  onProgress?: (bytes: number) => void;
}

export interface ScrubReport {
  started: string;
  finished: string;
  durationMs: number;
  state: 'done' | 'aborted' | 'failed';
  error?: string;
  /** Bytes read (containers, before-images, replica), and the average rate achieved. */
  bytesRead: number;
  bytesPerSecond: number;
  containersChecked: number;
  containerErrors: number;
  replicaBlocksChecked: number;
  replicaBlockErrors: number;
  /** Transactions scrubbed: T_first..T_last (what was committed when the pass started). */
  transactions: { first: number; last: number } | null;
  /** Damage found by this pass. */
  found: DamageMark[];
  /** Damage marks cleared by this pass (re-examined and good, or their file gone). */
  cleared: number;
}

/** What a scrub needs of its backup manager. */
export interface ScrubTarget {
  history: HistoryReader;
  transactions(): TransactionRecord[];
  volumes(): Array<{ volumeId: number; size: number; sinceContainer: number }>;
}

export async function scrubGroup(target: ScrubTarget, opts: ScrubOptions): Promise<ScrubReport> {
  const t0 = Date.now();
  const h = target.history;
  const throttle = new Throttle(opts.bytesPerSecond);
  const aborted = opts.aborted ?? (() => false);
  const found: DamageMark[] = [];
  /** Subjects this pass examined: "file" names, and "replica:vol:block". */
  const examined = new Set<string>();
  const report: ScrubReport = {
    started: new Date(t0).toISOString(),
    finished: '',
    durationMs: 0,
    state: 'done',
    bytesRead: 0,
    bytesPerSecond: 0,
    containersChecked: 0,
    containerErrors: 0,
    replicaBlocksChecked: 0,
    replicaBlockErrors: 0,
    transactions: null,
    found,
    cleared: 0,
  };
  const take = async (n: number): Promise<void> => {
    await throttle.take(n, aborted);
    opts.onProgress?.(throttle.bytes);
  };
  const note = async (m: DamageMark): Promise<void> => {
    found.push(m);
    await h.damage.add([m]);
  };
  try {
    const txns = target.transactions();
    if (txns.length) report.transactions = { first: txns[0]!.n, last: txns[txns.length - 1]!.n };
    for (const rec of txns) {
      if (aborted()) break;
      const bad = await checkContainers(h, rec, examined, take, note);
      report.containersChecked += 2;
      report.containerErrors += bad;
      const r = await checkReplica(h, rec, examined, take, note, aborted);
      report.replicaBlocksChecked += r.checked;
      report.replicaBlockErrors += r.bad;
    }
    if (!aborted()) {
      const z = await checkUntouched(h, target, examined, take, note, aborted);
      report.replicaBlocksChecked += z.checked;
      report.replicaBlockErrors += z.bad;
    }
    if (aborted()) report.state = 'aborted';
    else report.cleared = await reconcileMarks(h.damage, liveFiles(target), examined, found);
  } catch (err) {
    report.state = 'failed';
    report.error = (err as Error).message;
  }
  report.finished = new Date().toISOString();
  report.durationMs = Date.now() - t0;
  report.bytesRead = throttle.bytes;
  report.bytesPerSecond = report.durationMs > 0 ? Math.round((throttle.bytes / report.durationMs) * 1000) : 0;
  return report;
}

type Take = (n: number) => Promise<void>;
type Note = (m: DamageMark) => Promise<void>;

/** Step 1 for T_n: both stored files, whole. Returns how many are bad. */
async function checkContainers(h: HistoryReader, rec: TransactionRecord, examined: Set<string>, take: Take, note: Note): Promise<number> {
  let bad = 0;
  for (const kind of ['ailfc', 'bilfc'] as const) {
    const want = rec[kind];
    const file = path.join(h.historyDir, want.file);
    let size: number;
    try {
      size = (await fs.promises.stat(file)).size;
    } catch (err) {
      // Retention merged T_n away meanwhile: nothing to check. Otherwise the file is missing.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && h.transaction(rec.n)?.[kind].file !== want.file) continue;
      examined.add(want.file);
      bad++;
      await note(mark(rec.n, kind, want.file, -1, `${want.file} is missing: ${(err as Error).message}`));
      continue;
    }
    const c = await checkStored(rec.n, kind, file, size, want);
    await take(size);
    if (!c.ok && h.transaction(rec.n)?.[kind].file !== want.file) continue; // replaced by retention while it was read
    examined.add(want.file);
    if (!c.ok) {
      bad++;
      await note(mark(rec.n, kind, want.file, c.offset ?? -1, c.problem ?? 'corrupt'));
    }
  }
  return bad;
}

function mark(n: number, container: 'ailfc' | 'bilfc', file: string, offset: number, problem: string): DamageMark {
  return {
    kind: 'container',
    file,
    n,
    container,
    offset,
    problem: offset >= 0 ? `${problem} (at offset ${offset})` : problem,
    found: new Date().toISOString(),
  };
}

/** Step 2 for T_m: the replica blocks whose last change is T_m's, rebuilt from BILFC_m + AILFC_m. */
async function checkReplica(
  h: HistoryReader,
  rec: TransactionRecord,
  examined: Set<string>,
  take: Take,
  note: Note,
  aborted: () => boolean,
): Promise<{ checked: number; bad: number }> {
  const m = rec.n;
  const out = { checked: 0, bad: 0 };
  // A damaged AILFC_m or BILFC_m cannot say what the replica holds.
  if (h.damage.fileMark(rec.ailfc.file) || h.damage.fileMark(rec.bilfc.file)) return out;
  const bs = h.blockSize;
  for (const volumeId of rec.volumes) {
    const size = h.volumeSize(volumeId);
    if (size === undefined) continue;
    for (const run of h.transactionRuns(m, volumeId)) {
      let b = run.start;
      const end = run.start + run.count;
      while (b < end) {
        if (aborted()) return out;
        // The next stretch of blocks T_m changed last, at most CHUNK_BLOCKS long.
        const last = h.lastTouched(volumeId, b);
        if (last === undefined) return out; // an index without runs: no last-touch map
        if (last !== m) {
          b++;
          continue;
        }
        let z = b + 1;
        while (z < end && z - b < CHUNK_BLOCKS && h.lastTouched(volumeId, z) === m) z++;
        const r = await compareStretch(h, rec, volumeId, size, b, z - b, examined, note);
        out.checked += r.checked;
        out.bad += r.bad;
        await take(2 * (Math.min(size, z * bs) - b * bs));
        b = z;
      }
    }
  }
  return out;
}

async function compareStretch(
  h: HistoryReader,
  rec: TransactionRecord,
  volumeId: number,
  size: number,
  first: number,
  count: number,
  examined: Set<string>,
  note: Note,
): Promise<{ checked: number; bad: number }> {
  const m = rec.n;
  const bs = h.blockSize;
  const offset = first * bs;
  const length = Math.min(size, (first + count) * bs) - offset;
  let want: Buffer;
  try {
    want = await h.readBefore(volumeId, offset, length, m);
  } catch (err) {
    if (!(err instanceof DamagedError) || count === 1) return { checked: 0, bad: 0 }; // what T_m started from is damaged: unknown
    // Some of the before-images are damaged: the rest block by block.
    const out = { checked: 0, bad: 0 };
    for (let i = 0; i < count; i++) {
      const r = await compareStretch(h, rec, volumeId, size, first + i, 1, examined, note);
      out.checked += r.checked;
      out.bad += r.bad;
    }
    return out;
  }
  await overlay(h, m, volumeId, offset, length, want);
  const have = await h.readBefore(volumeId, offset, length, m + 1, undefined, true);
  const replica = h.replicaPath(volumeId);
  const bad: number[] = [];
  let checked = 0;
  for (let i = 0; i < count; i++) {
    const a = i * bs;
    const z = Math.min(length, a + bs);
    const blk = first + i;
    // Only blocks still read from the replica, and still last changed by T_m (a commit may have come meanwhile).
    if (h.lastTouched(volumeId, blk) !== m || h.sourceOf(volumeId, blk, m + 1) !== null) continue;
    checked++;
    examined.add(`replica:${volumeId}:${blk}`);
    if (!want.subarray(a, z).equals(have.subarray(a, z))) bad.push(blk);
  }
  if (bad.length)
    await note({
      kind: 'replica',
      file: path.basename(replica),
      volumeId,
      blocks: bad,
      problem: `differs from what T_${m} (${rec.bilfc.file} + ${rec.ailfc.file}) made of it`,
      found: new Date().toISOString(),
    });
  return { checked, bad: bad.length };
}

/** Paints AILFC_m's records of the volume over buf (the image before T_m at [offset, offset+length)). */
async function overlay(h: HistoryReader, m: number, volumeId: number, offset: number, length: number, buf: Buffer): Promise<void> {
  const file = h.historyFile('ailfc', m);
  const recs = (await h.records(m)).filter(
    (r) =>
      r.volumeId === volumeId &&
      r.length > 0 &&
      r.offset < offset + length &&
      offset < r.offset + r.length &&
      (r.kind === RecordKind.Write || r.kind === RecordKind.Resync || r.kind === RecordKind.Trim || r.kind === RecordKind.Zero),
  );
  if (!recs.length) return;
  const fd = h.fds.acquire(file);
  try {
    for (const r of recs) {
      const from = Math.max(offset, r.offset);
      const to = Math.min(offset + length, r.offset + r.length);
      if (r.kind === RecordKind.Write || r.kind === RecordKind.Resync)
        await preadFully(fd, buf, from - offset, to - from, r.position + RECORD_HEADER_SIZE + (from - r.offset));
      else buf.fill(0, from - offset, to - offset);
    }
  } finally {
    h.fds.release(file, fd);
  }
}

/**
 * Blocks no retained transaction touched read as zero, if no history was
 * dropped since the volume joined (then nothing else can have written
 * them). Only the replica's data extents are read: a sparse replica's holes
 * are zero by construction.
 */
async function checkUntouched(
  h: HistoryReader,
  target: ScrubTarget,
  examined: Set<string>,
  take: Take,
  note: Note,
  aborted: () => boolean,
): Promise<{ checked: number; bad: number }> {
  const out = { checked: 0, bad: 0 };
  const bs = h.blockSize;
  const first = h.status().firstContainer;
  for (const v of target.volumes()) {
    if (first > v.sinceContainer + 1) continue;
    const replica = h.replicaPath(v.volumeId);
    const extents = await dataExtents(replica, v.size);
    const bad: number[] = [];
    for (const [start, len] of extents) {
      for (let b = Math.floor(start / bs); b * bs < start + len && b * bs < v.size; b++) {
        if (aborted()) return out;
        if (h.lastTouched(v.volumeId, b) !== 0) continue;
        const k = h.status().lastContainer + 1;
        if (h.sourceOf(v.volumeId, b, k) !== null) continue; // being applied right now
        const data = await h.readBefore(v.volumeId, b * bs, Math.min(bs, v.size - b * bs), k, undefined, true);
        // Touched meanwhile: the commit raced the read; the next pass checks it.
        if (h.lastTouched(v.volumeId, b) !== 0) continue;
        out.checked++;
        examined.add(`replica:${v.volumeId}:${b}`);
        if (!isZero(data)) bad.push(b);
        await take(data.length);
      }
    }
    if (bad.length) {
      out.bad += bad.length;
      await note({
        kind: 'replica',
        file: path.basename(replica),
        volumeId: v.volumeId,
        blocks: bad,
        problem: 'holds data where no transaction ever wrote (it must read as zero)',
        found: new Date().toISOString(),
      });
    }
  }
  return out;
}

/** [offset, length] of the data extents of a sparse file (SEEK_DATA/SEEK_HOLE). */
async function dataExtents(file: string, size: number): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  const fd = fs.openSync(file, 'r');
  try {
    let pos = 0;
    while (pos < size) {
      const raw = await mapExtentsRaw(fd, pos, size - pos, size);
      if (raw.length === 0) break;
      for (let j = 0; j < raw.length; j += 2) {
        const len = raw[j]!;
        if (raw[j + 1] !== 0) out.push([pos, len]);
        pos += len;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** History files some committed transaction references. */
function liveFiles(target: ScrubTarget): Set<string> {
  const live = new Set<string>();
  for (const rec of target.transactions()) {
    live.add(rec.ailfc.file);
    live.add(rec.bilfc.file);
  }
  return live;
}
