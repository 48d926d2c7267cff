/**
 * Inodes: the 128-byte core plus the extra fields of larger inodes
 * (nanoseconds, creation time, high bits of the epoch). Parsing is
 * synchronous and allocation-light: a walk parses one per entry.
 */
import { corrupt } from '../errors';
import { RO_COMPAT, type Superblock } from './superblock';

export type FileType = 'file' | 'dir' | 'symlink' | 'chr' | 'blk' | 'fifo' | 'socket' | 'unknown';

export const S_IFMT = 0xf000;
const TYPES: Record<number, FileType> = {
  0x1000: 'fifo',
  0x2000: 'chr',
  0x4000: 'dir',
  0x6000: 'blk',
  0x8000: 'file',
  0xa000: 'symlink',
  0xc000: 'socket',
};

export const FLAG = {
  COMPR: 0x4,
  ENCRYPT: 0x800,
  INDEX: 0x1000, // hashed (htree) directory
  HUGE_FILE: 0x40000,
  EXTENTS: 0x80000,
  EA_INODE: 0x200000,
  INLINE_DATA: 0x10000000,
} as const;

export interface Timespec {
  /** Seconds since the epoch (may be negative; 34 bits with extra fields). */
  sec: number;
  /** 0..999999999; 0 where the inode has no extra time fields. */
  nsec: number;
}

export interface Stat {
  ino: number;
  type: FileType;
  /** Full st_mode: type bits and permissions (incl. setuid, setgid, sticky). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  /** Bytes allocated (i_blocks in 512-byte units, or blocks with huge_file). */
  allocated: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
  /** Creation time: only in inodes with room for it (256-byte inodes). */
  crtime: Timespec | undefined;
  dtime: number;
  flags: number;
  generation: number;
  /** chr/blk only. */
  rdev: { major: number; minor: number } | undefined;
  /** Filesystem block that holds this inode, for incremental catalogs. */
  inodeBlock: number;
}

/** Raw inode bytes plus the decoded stat; the block map reads i_block from `raw`. */
export interface Inode {
  stat: Stat;
  raw: Buffer;
  /** Extended attribute block (0 if none). */
  fileAcl: number;
  /** Bytes after the 128-byte core that are valid (128 + i_extra_isize). */
  coreEnd: number;
}

/** The 60-byte i_block area: extent root, block pointers, fast symlink or inline data. */
export const I_BLOCK = 40;
export const I_BLOCK_LEN = 60;

// Byte arithmetic rather than Buffer.readUInt*: a walk parses one inode per entry, and these are measurably faster.
const u16 = (b: Buffer, o: number): number => b[o]! | (b[o + 1]! << 8);
const i32 = (b: Buffer, o: number): number => b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24);
const u32 = (b: Buffer, o: number): number => i32(b, o) >>> 0;

function time(raw: Buffer, off: number, extraOff: number, coreEnd: number): Timespec {
  const sec = i32(raw, off);
  if (extraOff + 4 > coreEnd) return { sec, nsec: 0 };
  const extra = u32(raw, extraOff);
  // Low two bits extend the seconds past 2038; the rest are nanoseconds.
  return { sec: sec + (extra & 3) * 2 ** 32, nsec: Math.min(extra >>> 2, 999_999_999) };
}

export function parseInode(sb: Superblock, ino: number, raw: Buffer, inodeBlock: number): Inode {
  const mode = u16(raw, 0);
  let coreEnd = 128;
  if (sb.inodeSize > 128) {
    const extra = u16(raw, 128);
    if (extra > sb.inodeSize - 128 || extra % 4 !== 0) {
      throw corrupt(`inode ${ino}`, `extra size ${extra} does not fit a ${sb.inodeSize}-byte inode`);
    }
    coreEnd = 128 + extra;
  }
  const flags = u32(raw, 32);
  const blocksLo = u32(raw, 28);
  const blocksHi = u16(raw, 116);
  const blocks = blocksLo + blocksHi * 2 ** 32;
  const huge = (sb.roCompat & RO_COMPAT.HUGE_FILE) !== 0;
  const allocated = huge && flags & FLAG.HUGE_FILE ? blocks * sb.blockSize : blocks * 512;
  const type = TYPES[mode & S_IFMT] ?? 'unknown';
  const stat: Stat = {
    ino,
    type,
    mode,
    uid: (u16(raw, 2) | (u16(raw, 120) << 16)) >>> 0,
    gid: (u16(raw, 24) | (u16(raw, 122) << 16)) >>> 0,
    size: u32(raw, 4) + u32(raw, 108) * 2 ** 32,
    nlink: u16(raw, 26),
    allocated,
    atime: time(raw, 8, 140, coreEnd),
    mtime: time(raw, 16, 136, coreEnd),
    ctime: time(raw, 12, 132, coreEnd),
    // Every property present from the start: one object shape for all inodes keeps the walk's code monomorphic.
    crtime: coreEnd >= 152 ? time(raw, 144, 148, coreEnd) : undefined,
    dtime: u32(raw, 20),
    flags,
    generation: u32(raw, 100),
    rdev: undefined,
    inodeBlock,
  };
  if (type === 'chr' || type === 'blk') {
    const old = u32(raw, I_BLOCK);
    if (old !== 0) stat.rdev = { major: (old >>> 8) & 0xff, minor: old & 0xff };
    else {
      const dev = u32(raw, I_BLOCK + 4);
      stat.rdev = { major: (dev >>> 8) & 0xfff, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
    }
  }
  return { stat, raw, fileAcl: u32(raw, 104) + u16(raw, 118) * 2 ** 32, coreEnd };
}
