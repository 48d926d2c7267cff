/**
 * Group descriptors (32-byte, or 64-byte and larger with the 64bit
 * feature), from the classic table after the superblock or, with meta_bg,
 * from the first group of each meta group. Only what the reader needs is
 * kept, in typed arrays: where each group's inode table and bitmaps are.
 */
import { corrupt, limit } from '../errors';
import { LIMITS } from '../limits';
import { groupHasSuper, INCOMPAT, RO_COMPAT, type Superblock } from './superblock';

export interface GroupTable {
  inodeTable: Float64Array; // first block of each group's inode table
  blockBitmap: Float64Array;
  inodeBitmap: Float64Array;
  /** bg_flags & INODE_UNINIT: the group's inode table was never written; its inodes read as unused. */
  inodeUninit: Uint8Array;
  /** Blocks that hold descriptors (for telling metadata blocks apart). */
  descriptorBlocks: number[];
}

const INODE_UNINIT = 0x1;

/** Where each descriptor block lives (block numbers, in table order). */
export function descriptorBlockNumbers(sb: Superblock): number[] {
  const perBlock = sb.blockSize / sb.descSize;
  const blocks = Math.ceil(sb.groupCount / perBlock);
  const first = sb.firstDataBlock + 1;
  if (!(sb.incompat & INCOMPAT.META_BG)) return Array.from({ length: blocks }, (_, i) => first + i);
  const out: number[] = [];
  for (let i = 0; i < blocks; i++) {
    if (i < sb.firstMetaBg) {
      out.push(first + i);
      continue;
    }
    const g = i * perBlock; // the meta group's first group holds its descriptor block
    out.push(sb.firstDataBlock + g * sb.blocksPerGroup + (groupHasSuper(sb, g) ? 1 : 0));
  }
  return out;
}

/** Parse the descriptors from their blocks (read by the caller, concatenated in table order). */
export function parseGroups(sb: Superblock, table: Buffer, descriptorBlocks: number[]): GroupTable {
  const n = sb.groupCount;
  const bit64 = (sb.incompat & INCOMPAT.BIT64) !== 0 && sb.descSize >= 64;
  const itableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
  const csumInit = (sb.roCompat & (RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM)) !== 0;
  const g: GroupTable = {
    inodeTable: new Float64Array(n),
    blockBitmap: new Float64Array(n),
    inodeBitmap: new Float64Array(n),
    inodeUninit: new Uint8Array(n),
    descriptorBlocks,
  };
  for (let i = 0; i < n; i++) {
    const o = i * sb.descSize;
    const hi = (off: number): number => (bit64 ? table.readUInt32LE(o + off) * 2 ** 32 : 0);
    const itab = table.readUInt32LE(o + 8) + hi(40);
    const where = `group descriptor ${i}`;
    if (itab < sb.firstDataBlock || itab + itableBlocks > sb.blocksCount) {
      throw corrupt(where, `inode table at block ${itab} (+${itableBlocks}) outside the filesystem (${sb.blocksCount} blocks)`);
    }
    g.inodeTable[i] = itab;
    g.blockBitmap[i] = table.readUInt32LE(o) + hi(32);
    g.inodeBitmap[i] = table.readUInt32LE(o + 4) + hi(36);
    g.inodeUninit[i] = csumInit && table.readUInt16LE(o + 18) & INODE_UNINIT ? 1 : 0;
  }
  return g;
}

/** Bytes of descriptor table to read, checked against the cap. */
export function descriptorTableBytes(sb: Superblock): number {
  const bytes = Math.ceil(sb.groupCount / (sb.blockSize / sb.descSize)) * sb.blockSize;
  if (bytes > LIMITS.maxGroupDescriptorBytes) {
    throw limit('group descriptors', `${sb.groupCount} groups need ${bytes} bytes of descriptors, over ${LIMITS.maxGroupDescriptorBytes}`);
  }
  return bytes;
}
