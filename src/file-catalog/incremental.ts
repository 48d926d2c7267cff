/**
 * An incremental catalog of one filesystem, from the complete point A
 * before it: only the metadata blocks the block history says changed
 * between A and B are read.
 *
 *  1. Changed blocks are classified: inode-table blocks name their inodes;
 *     any other changed block that A's catalog knows as a directory block
 *     names its directory ("dirblocks").
 *  2. Each inode in a changed inode-table block is read at B. An inode A
 *     knew (its paths, from the "inodes" row of its bucket of 16) whose
 *     stat print differs is described again; a directory whose inode
 *     changed may have new blocks. Most inodes of a changed table block
 *     did not change: their print matches and nothing else is read.
 *  3. Each touched directory is diffed block by block: its changed blocks
 *     are read at B and at A (dropped blocks at A only, new ones at B only),
 *     and the entries that appear or vanish, as (name, inode) pairs, are
 *     the directory's changes. A new subdirectory is walked whole; a
 *     vanished one takes its subtree with it. Without A's image (history
 *     faded), the directory is read whole at B and compared with A's catalog.
 *
 * A file rewritten in place without any change to its inode (no new mtime,
 * size or block) is not noticed here; the kernel updates the inode on
 * every write, and a full build compares every file's blocks.
 */
import { ExtFilesystem, escapeName, type DirEntry, type FsError, type Stat } from '../fs';
import { describe, stampOf } from './describe';
import { sameStat, statPrint, type Entry } from './entry';
import { joinPath } from './keys';
import { childrenAt, dirsOfBlocks, entryAt, pathsOfInode, type Scope } from './reads';
import type { BlockRanges } from './ranges';
import type { Throttle } from './throttle';
import { dirBlocks, type PointWriter } from './writer';

export interface IncrementalJob {
  fsB: ExtFilesystem;
  /** The same filesystem at A, for directory blocks; null when A's image cannot be read. */
  fsA: () => Promise<ExtFilesystem | null>;
  partition: number;
  writer: PointWriter;
  /** A's view. */
  a: Scope;
  seq: number;
  changed: BlockRanges;
  throttle: Throttle;
  warn(message: string): void;
  /** Adds ms per step (classify, inodes, directories, write). */
  phases?: Record<string, number>;
}

export interface IncrementalResult {
  changedMetadataBlocks: number;
  inodesRead: number;
  directoriesRead: number;
}

type Change =
  { kind: 'gone'; prev: Entry } | { kind: 'ino'; ino: number; prev: Entry | undefined } | { kind: 'stat'; stat: Stat; prev: Entry };

const key = (p: Buffer): string => p.toString('latin1');

export async function catalogIncremental(j: IncrementalJob): Promise<IncrementalResult> {
  const { fsB, a, writer, partition: part } = j;
  const res: IncrementalResult = { changedMetadataBlocks: 0, inodesRead: 0, directoriesRead: 0 };
  let t = performance.now();
  const step = (name: string): void => {
    const now = performance.now();
    if (j.phases) j.phases[name] = Math.round((j.phases[name] ?? 0) + now - t);
    t = now;
  };
  const changes = new Map<string, { path: Buffer; change: Change }>();
  const setChange = (path: Buffer, change: Change, override: boolean): void => {
    if (override || !changes.has(key(path))) changes.set(key(path), { path, change });
  };

  // 1. Classify the changed blocks.
  const itable: Array<{ firstIno: number; count: number }> = [];
  const dirBlocksChanged = new Map<number, Set<number>>();
  for (const span of j.changed.spans()) {
    let b = span.first;
    const end = span.first + span.count;
    while (b < end) {
      const c = fsB.classifyBlock(b);
      if (c.kind === 'inode-table') {
        itable.push({ firstIno: c.firstIno, count: c.count });
        res.changedMetadataBlocks++;
        b++;
        continue;
      }
      // Runs of other blocks: one range read of A's directory-block map per stretch.
      let e = b + 1;
      while (e < end && fsB.classifyBlock(e).kind !== 'inode-table') e++;
      dirsOfBlocks(a, b, e - b, dirBlocksChanged);
      b = e;
    }
  }
  for (const blocks of dirBlocksChanged.values()) res.changedMetadataBlocks += blocks.size;

  step('classify');
  // 2. Inodes in changed inode-table blocks, against A's entries of their paths.
  const dirsToDiff = new Map<number, { path: Buffer; prev: Entry; stat: Stat | null }>();
  const recheckParents = new Set<string>();
  const buckets = new Map<number, Array<number | Uint8Array>>();
  const inodeChanged = async (ino: number): Promise<void> => {
    const paths = pathsOfInode(a, ino, buckets);
    if (!paths.length) return; // new inodes are found through their directory
    res.inodesRead++;
    let stat: Stat;
    try {
      stat = await fsB.stat(ino);
    } catch (err) {
      j.warn(`inode ${ino}: ${(err as FsError).message}`);
      return;
    }
    const print = statPrint(stat);
    for (const { path, print: then } of paths) {
      // Same stat as at A (the usual case for the other inodes of a changed table block): nothing to look up.
      if (then === print && ExtFilesystem.inUse(stat)) continue;
      const prev = entryAt(a, path);
      if (!prev) continue;
      if (!ExtFilesystem.inUse(stat) || (stat.type === 'dir') !== (prev.type === 'dir')) {
        // Freed or reused as another kind: its directory entry changed too; make sure that directory is read.
        recheckParents.add(key(path.subarray(0, Math.max(0, path.lastIndexOf(0x2f)))));
        continue;
      }
      if (sameStat(prev, stat)) continue;
      setChange(path, { kind: 'stat', stat, prev }, false);
      if (stat.type === 'dir') dirsToDiff.set(ino, { path, prev, stat });
    }
  };
  // Each changed inode-table block is read once, many at a time (they are scattered: one read each).
  await pool(itable, 32, async (blk) => {
    const inos: number[] = [];
    for (let i = 0; i < blk.count; i++) if (blk.firstIno + i <= fsB.superblock.inodesCount) inos.push(blk.firstIno + i);
    try {
      await fsB.prefetchInodes(inos);
    } catch {
      // Reported per inode.
    }
    for (const ino of inos) await inodeChanged(ino);
  });
  for (const [dirIno, blocks] of dirBlocksChanged) {
    if (dirsToDiff.has(dirIno)) continue;
    const path = pathsOfInode(a, dirIno, buckets)[0]?.path;
    const prev = path && entryAt(a, path);
    if (path && prev && prev.type === 'dir') dirsToDiff.set(dirIno, { path, prev, stat: null });
    void blocks;
  }

  step('inodes');
  // 3. Directories: block-by-block diffs.
  const diffs: Array<{
    dir: Buffer;
    removed: Map<string, { name: Buffer; ino: number }>;
    added: Map<string, { name: Buffer; ino: number }>;
  }> = [];
  for (const [dirIno, d] of dirsToDiff) {
    recheckParents.delete(key(d.path));
    res.directoriesRead++;
    try {
      diffs.push({ dir: d.path, ...(await diffDirectory(j, dirIno, d.prev, d.stat)) });
    } catch (err) {
      j.warn(`directory ${escapeName(d.path)}: ${(err as Error).message}`);
    }
  }
  for (const dk of recheckParents) {
    const dir = Buffer.from(dk, 'latin1');
    const prev = dir.length ? entryAt(a, dir) : undefined;
    if (dir.length && !prev) continue;
    res.directoriesRead++;
    try {
      const ino = dir.length ? prev!.ino : 2;
      diffs.push({ dir, ...wholeDiff(childrenAt(a, dir), await fsB.readdir(ino)) });
    } catch (err) {
      j.warn(`directory ${escapeName(dir)}: ${(err as Error).message}`);
    }
  }
  const children = new Map<string, Map<string, { name: Buffer; entry: Entry }>>();
  const prevChild = (dir: Buffer, name: Buffer): Entry | undefined => {
    let m = children.get(key(dir));
    if (!m) children.set(key(dir), (m = childrenAt(a, dir)));
    return m.get(key(name))?.entry;
  };
  for (const { dir, removed, added } of diffs) {
    for (const [k, r] of removed) {
      if (added.has(k)) continue;
      const prev = prevChild(dir, r.name);
      if (prev && prev.ino === r.ino) setChange(joinPath(dir, r.name), { kind: 'gone', prev }, true);
    }
    for (const add of added.values()) {
      const path = joinPath(dir, add.name);
      setChange(path, { kind: 'ino', ino: add.ino, prev: prevChild(dir, add.name) }, true);
    }
  }

  step('directories');
  // 4. Write what changed. Inside a directory that vanished or was replaced, only its new subtree counts.
  const cut = [...changes.values()]
    .filter(({ change }) => change.kind === 'gone' || (change.kind === 'ino' && change.prev?.type === 'dir'))
    .map(({ path }) => Buffer.concat([path, Buffer.from('/')]));
  const inside = (p: Buffer): boolean => cut.some((c) => p.length > c.length && p.subarray(0, c.length).equals(c));
  for (const { path, change } of changes.values()) {
    if (inside(path)) continue;
    const p = j.throttle.pause();
    if (p) await p;
    if (change.kind === 'gone') {
      await writer.set(part, path, null, change.prev);
      if (change.prev.type === 'dir') await writer.removeUnseen(part, path);
      continue;
    }
    let stat: Stat;
    try {
      stat = change.kind === 'stat' ? change.stat : await fsB.stat(change.ino);
    } catch (err) {
      j.warn(`${escapeName(path)}: ${(err as Error).message}`);
      continue;
    }
    await setOne(j, path, stat, change.prev);
    if (change.kind === 'ino' && stat.type === 'dir') {
      await walkNew(j, path, stat.ino);
      if (change.prev?.type === 'dir') await writer.removeUnseen(part, path);
    } else if (change.kind === 'ino' && change.prev?.type === 'dir') {
      await writer.removeUnseen(part, path);
    }
  }
  step('write');
  return res;
}

async function setOne(j: IncrementalJob, path: Buffer, stat: Stat, prev: Entry | undefined): Promise<void> {
  try {
    const d = await describe(j.fsB, stat);
    d.entry.stamp = stampOf(d, prev, j.changed, j.seq);
    await j.writer.set(j.partition, path, d.entry, prev ?? null);
  } catch (err) {
    j.warn(`${escapeName(path)}: ${(err as Error).message}`);
  }
}

/** A directory that is new at this path: its whole subtree. */
async function walkNew(j: IncrementalJob, root: Buffer, ino: number): Promise<void> {
  const pending = new Map<string, { path: Buffer; stat: Stat }>();
  await j.fsB.walk(
    {
      entry: async (e) => {
        if (e.stat!.type === 'dir') pending.set(key(e.path), { path: e.path, stat: e.stat! });
        else await setOne(j, e.path, e.stat!, j.writer.before(j.partition, e.path));
      },
      directory: async (d) => {
        const p = pending.get(key(d.path));
        if (!p) return;
        pending.delete(key(d.path));
        await setOne(j, p.path, p.stat, j.writer.before(j.partition, p.path));
      },
      error: (err, at) => j.warn(`${escapeName(at.path)}: ${err.message}`),
    },
    { root: ino, rootPath: root },
  );
  for (const p of pending.values()) await setOne(j, p.path, p.stat, j.writer.before(j.partition, p.path));
}

type NameIno = { name: Buffer; ino: number };

/** (name, inode) pairs in `after` and not in `before`, and the reverse, as multisets. */
function pairDiff(before: DirEntry[], after: DirEntry[]): { removed: Map<string, NameIno>; added: Map<string, NameIno> } {
  const count = new Map<string, { e: NameIno; n: number }>();
  const bump = (e: DirEntry, by: number): void => {
    const k = `${e.ino}:${key(e.name)}`;
    const c = count.get(k) ?? { e: { name: e.name, ino: e.ino }, n: 0 };
    c.n += by;
    count.set(k, c);
  };
  for (const e of before) bump(e, -1);
  for (const e of after) bump(e, 1);
  const removed = new Map<string, NameIno>();
  const added = new Map<string, NameIno>();
  for (const { e, n } of count.values()) {
    if (n < 0) removed.set(key(e.name), e);
    if (n > 0) added.set(key(e.name), e);
  }
  return { removed, added };
}

function wholeDiff(before: Map<string, { name: Buffer; entry: Entry }>, after: DirEntry[]): ReturnType<typeof pairDiff> {
  return pairDiff(
    [...before.values()].map((c) => ({ name: c.name, ino: c.entry.ino, dtype: 'unknown' })),
    after,
  );
}

async function diffDirectory(j: IncrementalJob, dirIno: number, prev: Entry, stat: Stat | null): Promise<ReturnType<typeof pairDiff>> {
  const { fsB } = j;
  let runsB = prev.runs;
  if (stat) {
    const x = await fsB.fileExtents(dirIno);
    runsB = x.inline ? null : x.runs.filter((r) => !r.unwritten).flatMap((r) => [r.logical, r.physical, r.length]);
  }
  if (prev.runs === null || runsB === null) return wholeDiff(childrenAt(j.a, prevPath(j, dirIno)), await fsB.readdir(dirIno));
  const blocksA = new Set(dirBlocks(prev.runs));
  const blocksB = new Set(dirBlocks(runsB));
  const readB = [...blocksB].filter((b) => j.changed.has(b) || !blocksA.has(b));
  const readA = [...blocksA].filter((b) => j.changed.has(b) || !blocksB.has(b));
  if (!readA.length && !readB.length) return { removed: new Map(), added: new Map() };
  const fsA = readA.length ? await j.fsA() : null;
  if (readA.length && !fsA) return wholeDiff(childrenAt(j.a, prevPath(j, dirIno)), await fsB.readdir(dirIno));
  const before: DirEntry[] = [];
  const after: DirEntry[] = [];
  for (const b of readA) before.push(...(await fsA!.dirBlockEntries(b, dirIno)));
  for (const b of readB) after.push(...(await fsB.dirBlockEntries(b, dirIno)));
  return pairDiff(before, after);
}

function prevPath(j: IncrementalJob, dirIno: number): Buffer {
  return pathsOfInode(j.a, dirIno)[0]?.path ?? Buffer.alloc(0);
}

/** Runs fn over items with at most `limit` running at once. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
