/**
 * Which filesystem blocks are which metadata, so that an incremental
 * catalog can turn a set of changed blocks into the inodes to re-read:
 * an inode-table block names its inodes; directory and extent blocks are
 * recognised by the catalog from the maps it kept (FileExtents, the walk's
 * directory() callback); anything else is file data or free space.
 */
import { groupHasSuper, type Superblock } from './superblock';
import type { GroupTable } from './groups';

export type BlockClass =
  | { kind: 'superblock'; group: number }
  | { kind: 'group-descriptors' }
  | { kind: 'block-bitmap'; group: number }
  | { kind: 'inode-bitmap'; group: number }
  /** Inodes firstIno .. firstIno+count-1 live in this block. */
  | { kind: 'inode-table'; group: number; firstIno: number; count: number }
  | { kind: 'other' };

interface LayoutOwner {
  superblock: Superblock;
  groups: GroupTable;
}

interface Index {
  start: Float64Array; // inode-table starts, sorted
  group: Uint32Array; // their groups
  fixed: Map<number, BlockClass>; // bitmaps and descriptor blocks
}

/** Built once per filesystem object: classifying many changed blocks stays O(log groups) each. */
const indexes = new WeakMap<GroupTable, Index>();

function indexOf(g: GroupTable): Index {
  let ix = indexes.get(g);
  if (!ix) {
    const order = Array.from(g.inodeTable.keys()).sort((a, b) => g.inodeTable[a]! - g.inodeTable[b]!);
    const fixed = new Map<number, BlockClass>();
    for (const b of g.descriptorBlocks) fixed.set(b, { kind: 'group-descriptors' });
    g.blockBitmap.forEach((b, group) => fixed.set(b, { kind: 'block-bitmap', group }));
    g.inodeBitmap.forEach((b, group) => fixed.set(b, { kind: 'inode-bitmap', group }));
    ix = { start: Float64Array.from(order, (i) => g.inodeTable[i]!), group: Uint32Array.from(order), fixed };
    indexes.set(g, ix);
  }
  return ix;
}

export function classifyBlock(fs: LayoutOwner, block: number): BlockClass {
  const sb = fs.superblock;
  const t = indexOf(fs.groups);
  const itableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
  // The last inode table starting at or before `block`.
  let lo = 0;
  let hi = t.start.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (t.start[mid]! <= block) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (found >= 0 && block < t.start[found]! + itableBlocks) {
    const group = t.group[found]!;
    const perBlock = sb.blockSize / sb.inodeSize;
    const firstIno = group * sb.inodesPerGroup + (block - t.start[found]!) * perBlock + 1;
    return { kind: 'inode-table', group, firstIno, count: perBlock };
  }
  const fixed = t.fixed.get(block);
  if (fixed) return fixed;
  const rel = block - sb.firstDataBlock;
  if (rel >= 0 && rel % sb.blocksPerGroup === 0) {
    const group = rel / sb.blocksPerGroup;
    if (group < sb.groupCount && groupHasSuper(sb, group)) return { kind: 'superblock', group };
  }
  return { kind: 'other' };
}
