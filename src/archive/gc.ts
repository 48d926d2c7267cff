/**
 * Garbage collection: mark, sweep, repack (seed 003 L340-L352).
 *
 * Safety with archives running at the same time (the pool is one process,
 * lock.ts). Every chunk carries a stamp: the epoch of the last writer that
 * stored it or found it through the global index. Gc takes its own epoch
 * G at the start and a cutoff = min(G, the epoch of the oldest running
 * writer), like Proxmox Backup Server's cutoff at the oldest writer. It
 * then marks every tree of the committed points and every predecessor tree
 * a running writer reuses subtrees from, and sweeps only chunks that are
 * unmarked AND stamped before the cutoff. So a running writer never loses:
 *   - a chunk it stored (stamped with its epoch >= cutoff),
 *   - a chunk it found by global dedup (its stamp is raised to the
 *     writer's epoch; until that commits, ChunkStore.touchOverlay holds it,
 *     and the sweep checks both inside the same synchronous LMDB
 *     transaction that deletes, so "looked up" and "deleted" never cross),
 *   - a subtree of its predecessor (marked: pinned at writer start),
 * and a writer starting after G stamps everything it touches after the
 * cutoff. Chunks of a crashed archive are stamped with an epoch older than
 * the next gc's cutoff: that gc reclaims them (ENOSPC included).
 *
 * Crash safety: sweep deletes index entries only; a pack is deleted only
 * when no entry points into it, and only after being marked 'deleting'
 * (the next open finishes the deletion). A repack writes a new pack,
 * publishes it, moves the index entries in one transaction, and only then
 * deletes the old pack; a crash between leaves two copies, never none.
 */
import { crashPoint } from './crash-hook';
import { treeOf, type PoolCore, type TreeRoot } from './core';
import { handleHex } from './handle';
import type { ChunkLocation } from './index-db';
import { markTree, MarkSet } from './mark';
import { RECORD_HEADER_SIZE, recordSize, type PackEntry } from './pack-format';
import { checkRecord, recordWindows } from './pack-reader';
import { PackWriter, packKey } from './pack-writer';

export interface GcOptions {
  /** Repack a pack when less than this fraction of its bytes is live (0..1, default 0.5). */
  repackBelow?: number;
  onProgress?: (p: { phase: 'mark' | 'sweep' | 'repack'; done: number; total: number }) => void;
}

export interface GcReport {
  epoch: number;
  cutoff: number;
  points: number;
  nodesMarked: number;
  leavesMarked: number;
  chunksSwept: number;
  /** Stored bytes of the chunks swept. */
  bytesSwept: number;
  packsDeleted: number;
  packsRepacked: number;
  /** Live bytes copied into new packs. */
  bytesRepacked: number;
  packBytesBefore: number;
  packBytesAfter: number;
  /** Packs left alone because they could not be read or hold a corrupt live record. */
  skipped: Array<{ pack: string; reason: string }>;
  ms: { mark: number; sweep: number; repack: number };
}

const BATCH = 4096;

export async function collectGarbage(core: PoolCore, opts: GcOptions = {}): Promise<GcReport> {
  const { index, store } = core;
  const repackBelow = opts.repackBelow ?? 0.5;
  const t0 = Date.now();
  const epoch = index.nextEpoch();
  const cutoff = Math.min(epoch, ...[...core.writers.values()].map((w) => w.stamp));
  const firstNewPack = index.nextPackNo();
  const packsBefore = index.packs();
  const report: GcReport = {
    epoch,
    cutoff,
    points: core.manifests.size,
    nodesMarked: 0,
    leavesMarked: 0,
    chunksSwept: 0,
    bytesSwept: 0,
    packsDeleted: 0,
    packsRepacked: 0,
    bytesRepacked: 0,
    packBytesBefore: packsBefore.reduce((a, p) => a + p.size, 0),
    packBytesAfter: 0,
    skipped: [],
    ms: { mark: 0, sweep: 0, repack: 0 },
  };

  // 1. Mark: committed points, then predecessors pinned by running writers
  // and trees of open readers, again until nothing new is pinned.
  const marks = new MarkSet();
  const roots: TreeRoot[] = [];
  for (const p of core.manifests.values()) for (const v of p.volumes) roots.push(treeOf(p, v));
  let done = 0;
  const markAll = async (list: TreeRoot[]): Promise<void> => {
    for (const r of list) {
      await markTree(store, r.shape, r.root, marks);
      opts.onProgress?.({ phase: 'mark', done: ++done, total: roots.length });
    }
  };
  await markAll(roots);
  const pinned = new Set<string>();
  for (;;) {
    const pins = [...[...core.writers.values()].flatMap((w) => w.pins), ...core.readers.values()];
    const fresh = pins.filter((r) => !pinned.has(handleHex(r.root)));
    if (fresh.length === 0) break;
    for (const r of fresh) pinned.add(handleHex(r.root));
    await markAll(fresh);
  }
  report.nodesMarked = marks.nodes.size;
  report.leavesMarked = marks.leaves.size;
  report.ms.mark = Date.now() - t0;
  crashPoint('gc-marked');

  // 2. Sweep: delete unmarked entries stamped before the cutoff; tally live bytes per pack.
  const t1 = Date.now();
  const dead = (h: Buffer, loc: ChunkLocation): boolean => !marks.has(h) && store.effectiveStamp(h, loc) < cutoff;
  const live = new Map<number, number>();
  const addLive = (loc: ChunkLocation): void => void live.set(loc.pack, (live.get(loc.pack) ?? 0) + recordSize(loc));
  let batch: Array<[Buffer, ChunkLocation]> = [];
  const flush = async (): Promise<void> => {
    const gone = index.sweepSync(
      batch.map(([h]) => h),
      dead,
    );
    const goneHex = new Set(gone.map(([h]) => handleHex(h)));
    for (const [h, loc] of gone) {
      report.chunksSwept++;
      report.bytesSwept += loc.storedLength;
      store.quarantinedHex.delete(handleHex(h));
    }
    for (const [h, loc] of batch) if (!goneHex.has(handleHex(h))) addLive(loc);
    batch = [];
    crashPoint('gc-sweep-batch');
    await new Promise<void>((resolve) => setImmediate(resolve)); // let archives and reads run
  };
  for (const [h, loc] of index.entries()) {
    if (dead(h, loc)) {
      batch.push([h, loc]);
      if (batch.length >= BATCH) await flush();
    } else addLive(loc);
  }
  if (batch.length > 0) await flush();
  report.ms.sweep = Date.now() - t1;
  crashPoint('gc-swept');

  // 3. Delete empty packs; repack sparse ones.
  const t2 = Date.now();
  const old = index.packs().filter((p) => p.no < firstNewPack && p.state === 'live');
  const sparse = new Set<number>();
  for (const p of old) {
    const l = live.get(p.no) ?? 0;
    if (l === 0) {
      await deletePack(core, p.no, p.key);
      report.packsDeleted++;
    } else if (l < repackBelow * p.size) sparse.add(p.no);
  }
  if (sparse.size > 0) await repack(core, sparse, report, opts);
  report.ms.repack = Date.now() - t2;
  await core.refreshBloom();
  report.packBytesAfter = index.packs().reduce((a, p) => a + p.size, 0);
  return report;
}

async function deletePack(core: PoolCore, no: number, key: string): Promise<void> {
  await core.index.setPackState(no, 'deleting');
  crashPoint('gc-pack-deleting');
  await core.backend.delete(key);
  crashPoint('gc-pack-deleted');
  await core.index.removePack(no);
}

interface Move {
  from: number;
  fromOffset: number;
  entry: PackEntry;
}

/** Copies the live records of `packs` into new packs, moves the index, deletes the old packs. */
async function repack(core: PoolCore, packs: Set<number>, report: GcReport, opts: GcOptions): Promise<void> {
  const { index, store } = core;
  const byPack = new Map<number, Array<[Buffer, ChunkLocation]>>();
  for (const [h, loc] of index.entries()) {
    if (!packs.has(loc.pack)) continue;
    let l = byPack.get(loc.pack);
    if (!l) byPack.set(loc.pack, (l = []));
    l.push([h, loc]);
  }
  const writers: Writers = new Map();
  const publish = async (kind: number): Promise<void> => {
    const cur = writers.get(kind);
    if (!cur) return;
    writers.delete(kind);
    const sealed = await cur.w.seal(store.codec.key);
    const key = packKey(sealed.header.packId);
    await core.backend.put(key, { file: sealed.file });
    crashPoint('gc-repack-put');
    for (const e of sealed.entries) store.bloom.add(e.handle);
    await index.addRelocatedPack(
      { key, kind: sealed.header.kind, size: sealed.size, entries: sealed.entries.length, created: sealed.header.created, state: 'live' },
      cur.moves,
    );
    crashPoint('gc-repack-indexed');
    for (const no of cur.olds) {
      const rec = index.pack(no);
      const still = (byPack.get(no) ?? []).some(([h]) => index.get(h)?.pack === no);
      if (rec && !still) {
        await deletePack(core, no, rec.key);
        report.packsDeleted++;
      }
    }
  };
  try {
    await copyLive(core, packs, byPack, writers, publish, report, opts);
    for (const kind of [...writers.keys()]) await publish(kind);
  } catch (err) {
    for (const { w } of writers.values()) await w.abort();
    throw err;
  }
}

type Writers = Map<number, { w: PackWriter; moves: Move[]; olds: Set<number> }>;

async function copyLive(
  core: PoolCore,
  packs: Set<number>,
  byPack: Map<number, Array<[Buffer, ChunkLocation]>>,
  writers: Writers,
  publish: (kind: number) => Promise<void>,
  report: GcReport,
  opts: GcOptions,
): Promise<void> {
  const { index, store } = core;
  let done = 0;
  for (const no of [...packs].sort((a, b) => a - b)) {
    opts.onProgress?.({ phase: 'repack', done: done++, total: packs.size });
    const rec = index.pack(no);
    const entries = (byPack.get(no) ?? []).sort((a, b) => a[1].offset - b[1].offset);
    if (!rec || entries.length === 0) continue;
    let records: Array<{ h: Buffer; loc: ChunkLocation; payload: Buffer }> = [];
    try {
      for (const w of recordWindows(entries, ([, loc]) => loc)) {
        const buf = await core.backend.get(rec.key, { offset: w.offset, length: w.length });
        for (const [h, loc] of w.items) {
          const at = loc.offset - w.offset;
          records.push({
            h,
            loc,
            payload: checkRecord(buf.subarray(at, at + RECORD_HEADER_SIZE + loc.storedLength), loc.offset, { handle: h, ...loc }),
          });
        }
      }
    } catch (err) {
      report.skipped.push({ pack: rec.key, reason: (err as Error).message });
      records = [];
      continue;
    }
    let cur = writers.get(rec.kind);
    if (!cur) {
      cur = {
        w: await PackWriter.create(core.stagingDir, rec.kind, core.config.poolId, store.codec.key !== null),
        moves: [],
        olds: new Set(),
      };
      writers.set(rec.kind, cur);
    }
    for (const r of records) {
      const entry = cur.w.append(r.h, r.loc.type, r.loc.codec, r.loc.rawLength, r.payload, r.loc.crc);
      await cur.w.backpressure();
      cur.moves.push({ from: no, fromOffset: r.loc.offset, entry });
      report.bytesRepacked += recordSize(r.loc);
    }
    cur.olds.add(no);
    report.packsRepacked++;
    if (cur.w.size >= core.config.packTarget) await publish(rec.kind);
  }
}
