/**
 * Logical-to-physical block maps: extent trees (any depth up to the cap)
 * and ext2/3 indirect blocks (single, double, triple). Both are walked
 * lazily, in logical order, and yield coalesced runs; holes are the gaps.
 * Each tree or indirect block is visited at most once (a loop or a shared
 * subtree is corruption), and every block number is range-checked, so a
 * hostile map costs at most one read per filesystem block.
 */
import { corrupt, limit } from '../errors';
import { LIMITS } from '../limits';
import type { BlockDevice } from './device';
import { FLAG, I_BLOCK, I_BLOCK_LEN, type Inode } from './inode';
import type { Superblock } from './superblock';

export interface Run {
  /** First logical block of the file. */
  logical: number;
  /** First physical block in the filesystem. */
  physical: number;
  /** Blocks, > 0. */
  length: number;
  /** Allocated but never written (reads as zeroes). */
  unwritten: boolean;
}

export interface MapContext {
  dev: BlockDevice;
  sb: Superblock;
  ino: number;
  /** Told of every tree or indirect block read (the file's metadata blocks). */
  onMeta?: (block: number) => void;
}

const EXT_MAGIC = 0xf30a;
const MAX_LOGICAL = 2 ** 32;

/** Merges runs that continue each other, so callers see one run per contiguous stretch. */
class Coalescer {
  private cur: Run | null = null;
  push(r: Run): Run | null {
    const c = this.cur;
    if (c && c.logical + c.length === r.logical && c.physical + c.length === r.physical && c.unwritten === r.unwritten) {
      c.length += r.length;
      return null;
    }
    this.cur = r;
    return c;
  }
  flush(): Run | null {
    const c = this.cur;
    this.cur = null;
    return c;
  }
}

/** The runs of `inode` whose blocks end after logical block `from`, in logical order. */
export async function* mapInode(ctx: MapContext, inode: Inode, from = 0): AsyncGenerator<Run> {
  const flags = inode.stat.flags;
  if (flags & FLAG.INLINE_DATA) return;
  const co = new Coalescer();
  const source = flags & FLAG.EXTENTS ? extentRuns(ctx, inode, from) : indirectRuns(ctx, inode, from);
  // Runs may not overlap logically, but a hostile map can point many runs at the same blocks:
  // no file maps more blocks than the filesystem has, so reading one never costs more than that.
  let mapped = 0;
  for await (const r of source) {
    mapped += r.length;
    if (mapped > ctx.sb.blocksCount)
      throw corrupt(`inode ${ctx.ino} block map`, `maps more blocks than the filesystem's ${ctx.sb.blocksCount}`);
    const out = co.push(r);
    if (out) yield out;
  }
  const last = co.flush();
  if (last) yield last;
}

/**
 * The runs of an inode whose map lives wholly in the inode itself (an
 * extent tree of depth 0, or direct blocks only), without I/O and with the
 * same checks as the lazy walks; undefined when the map needs a block read.
 * A walk describes most files this way, synchronously.
 */
export function inodeRunsSync(ctx: Omit<MapContext, 'dev'>, inode: Inode): Run[] | undefined {
  const flags = inode.stat.flags;
  if (flags & FLAG.INLINE_DATA) return [];
  const out: Run[] = [];
  const push = (r: Run): void => {
    const c = out[out.length - 1];
    if (c && c.logical + c.length === r.logical && c.physical + c.length === r.physical && c.unwritten === r.unwritten)
      c.length += r.length;
    else out.push(r);
  };
  if (flags & FLAG.EXTENTS) {
    const root = inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_LEN);
    const rh = header(ctx as MapContext, root, (I_BLOCK_LEN - 12) / 12, 'root');
    if (rh.depth !== 0) return undefined;
    let logicalEnd = 0;
    for (let i = 0; i < rh.entries; i++) {
      const r = leafRun(ctx, root, 12 + 12 * i, 'root', logicalEnd);
      logicalEnd = r.logical + r.length;
      push(r);
    }
    return out;
  }
  const nblocks = Math.ceil(inode.stat.size / ctx.sb.blockSize);
  if (nblocks > 12) return undefined;
  for (let i = 0; i < nblocks; i++) {
    const p = inode.raw.readUInt32LE(I_BLOCK + 4 * i);
    if (p !== 0) push(dataRun(ctx as MapContext, i, p));
  }
  return out;
}

/** The extent at byte e of a leaf node, checked (order, length, bounds). */
function leafRun(ctx: Omit<MapContext, 'dev'>, node: Buffer, e: number, where: string, logicalEnd: number): Run {
  const { sb, ino } = ctx;
  const what = `inode ${ino} extent tree`;
  const lblk = node.readUInt32LE(e);
  const rawLen = node.readUInt16LE(e + 4);
  const unwritten = rawLen > 32768;
  const length = unwritten ? rawLen - 32768 : rawLen;
  const physical = node.readUInt32LE(e + 8) + node.readUInt16LE(e + 6) * 2 ** 32;
  if (length === 0) throw corrupt(what, `${where}: extent at logical ${lblk} has length 0`);
  if (lblk < logicalEnd)
    throw corrupt(what, `${where}: extent at logical ${lblk} overlaps or precedes the one before (ends at ${logicalEnd})`);
  if (lblk + length > MAX_LOGICAL) throw corrupt(what, `${where}: extent at logical ${lblk} runs past 2^32 blocks`);
  if (physical < sb.firstDataBlock || physical + length > sb.blocksCount) {
    throw corrupt(what, `${where}: extent ${lblk}+${length} at block ${physical} is outside the filesystem (${sb.blocksCount} blocks)`);
  }
  return { logical: lblk, physical, length, unwritten };
}

interface Frame {
  node: Buffer; // header + entries
  depth: number;
  entries: number;
  next: number; // index of the next entry to visit
  where: string;
}

function header(ctx: Omit<MapContext, 'dev'>, node: Buffer, maxEntries: number, where: string): { entries: number; depth: number } {
  const what = `inode ${ctx.ino} extent tree`;
  if (node.readUInt16LE(0) !== EXT_MAGIC) throw corrupt(what, `${where}: bad magic 0x${node.readUInt16LE(0).toString(16)}`);
  const entries = node.readUInt16LE(2);
  const max = node.readUInt16LE(4);
  const depth = node.readUInt16LE(6);
  if (max > maxEntries || entries > max) throw corrupt(what, `${where}: ${entries} entries of max ${max} (room for ${maxEntries})`);
  if (depth > LIMITS.maxExtentDepth) throw corrupt(what, `depth ${depth} exceeds ${LIMITS.maxExtentDepth}`);
  return { entries, depth };
}

async function* extentRuns(ctx: MapContext, inode: Inode, from: number): AsyncGenerator<Run> {
  const { dev, sb, ino } = ctx;
  const what = `inode ${ino} extent tree`;
  const root = inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_LEN);
  const rh = header(ctx, root, (I_BLOCK_LEN - 12) / 12, 'root');
  const stack: Frame[] = [{ node: root, depth: rh.depth, entries: rh.entries, next: 0, where: 'root' }];
  const visited = new Set<number>();
  let logicalEnd = 0; // extents must come in increasing, non-overlapping logical order
  while (stack.length > 0) {
    const f = stack[stack.length - 1]!;
    if (f.next >= f.entries) {
      stack.pop();
      continue;
    }
    const i = f.next++;
    const e = 12 + 12 * i;
    const lblk = f.node.readUInt32LE(e);
    if (f.depth > 0) {
      // Index entry i covers [ei_block, next ei_block): skip subtrees wholly before `from`.
      if (i + 1 < f.entries && f.node.readUInt32LE(e + 12) <= from) continue;
      const child = f.node.readUInt32LE(e + 4) + f.node.readUInt16LE(e + 8) * 2 ** 32;
      const where = `index block ${child}`;
      if (visited.has(child)) throw corrupt(what, `${where} is reached twice (loop or shared subtree)`);
      if (child < sb.firstDataBlock) throw corrupt(what, `${where} is outside the filesystem`);
      visited.add(child);
      const node = await dev.metaBlock(child, what);
      ctx.onMeta?.(child);
      const h = header(ctx, node, (sb.blockSize - 12) / 12, where);
      if (h.depth !== f.depth - 1) throw corrupt(what, `${where}: depth ${h.depth} under a node of depth ${f.depth}`);
      stack.push({ node, depth: h.depth, entries: h.entries, next: 0, where });
      continue;
    }
    const { length, physical, unwritten } = leafRun(ctx, f.node, e, f.where, logicalEnd);
    logicalEnd = lblk + length;
    if (logicalEnd <= from) continue;
    yield { logical: lblk, physical, length, unwritten };
  }
}

async function* indirectRuns(ctx: MapContext, inode: Inode, from: number): AsyncGenerator<Run> {
  const { sb, ino } = ctx;
  const per = sb.blockSize / 4;
  const nblocks = Math.ceil(inode.stat.size / sb.blockSize);
  const maxBlocks = 12 + per + per * per + per * per * per;
  if (nblocks > maxBlocks) throw limit(`inode ${ino} block map`, `size ${inode.stat.size} exceeds what indirect blocks address`);
  const visited = new Set<number>();
  const ib = inode.raw;
  for (let i = 0; i < 12 && i < nblocks; i++) {
    const p = ib.readUInt32LE(I_BLOCK + 4 * i);
    if (p !== 0 && i >= from) yield dataRun(ctx, i, p);
  }
  let start = 12;
  for (let level = 1; level <= 3; level++) {
    const span = per ** level;
    if (start >= nblocks) return;
    const p = ib.readUInt32LE(I_BLOCK + 4 * (11 + level));
    if (p !== 0 && start + span > from) yield* pointerBlock(ctx, p, level, start, nblocks, from, visited);
    start += span;
  }
}

function dataRun(ctx: Omit<MapContext, 'dev'>, logical: number, physical: number): Run {
  if (physical < ctx.sb.firstDataBlock || physical >= ctx.sb.blocksCount) {
    throw corrupt(
      `inode ${ctx.ino} block map`,
      `logical block ${logical} at block ${physical} is outside the filesystem (${ctx.sb.blocksCount} blocks)`,
    );
  }
  return { logical, physical, length: 1, unwritten: false };
}

/** An indirect block of `level` (1 = pointers to data) mapping logical blocks from `start`. */
async function* pointerBlock(
  ctx: MapContext,
  block: number,
  level: number,
  start: number,
  nblocks: number,
  from: number,
  visited: Set<number>,
): AsyncGenerator<Run> {
  const what = `inode ${ctx.ino} block map`;
  if (visited.has(block)) throw corrupt(what, `indirect block ${block} is reached twice (loop or shared)`);
  if (block < ctx.sb.firstDataBlock) throw corrupt(what, `indirect block ${block} is outside the filesystem`);
  visited.add(block);
  const buf = await ctx.dev.metaBlock(block, what);
  ctx.onMeta?.(block);
  const per = ctx.sb.blockSize / 4;
  const span = per ** (level - 1);
  // Contiguous data pointers are merged here: one yield per run, not per block.
  let run: Run | null = null;
  for (let i = 0; i < per; i++) {
    const lstart = start + i * span;
    if (lstart >= nblocks) break;
    if (lstart + span <= from) continue;
    const p = buf.readUInt32LE(4 * i);
    if (p === 0) continue;
    if (level > 1) {
      yield* pointerBlock(ctx, p, level - 1, lstart, nblocks, from, visited);
      continue;
    }
    const r = dataRun(ctx, lstart, p);
    if (run && run.logical + run.length === lstart && run.physical + run.length === p) run.length++;
    else {
      if (run) yield run;
      run = r;
    }
  }
  if (run) yield run;
}
