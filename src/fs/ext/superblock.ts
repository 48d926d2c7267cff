/**
 * The ext2/3/4 superblock: geometry, features, and the checks that keep a
 * hostile one from steering the reader outside the partition. Incompatible
 * features this reader does not understand are refused by name, as the
 * kernel refuses to mount them.
 */
import { corrupt, unsupported } from '../errors';
import { crc32cRaw } from '../crc32c';

export const COMPAT = { HAS_JOURNAL: 0x4, RESIZE_INODE: 0x10, DIR_INDEX: 0x20, SPARSE_SUPER2: 0x200 } as const;
export const RO_COMPAT = {
  SPARSE_SUPER: 0x1,
  LARGE_FILE: 0x2,
  HUGE_FILE: 0x8,
  GDT_CSUM: 0x10,
  DIR_NLINK: 0x20,
  EXTRA_ISIZE: 0x40,
  BIGALLOC: 0x200,
  METADATA_CSUM: 0x400,
} as const;
export const INCOMPAT = {
  COMPRESSION: 0x1,
  FILETYPE: 0x2,
  RECOVER: 0x4,
  JOURNAL_DEV: 0x8,
  META_BG: 0x10,
  EXTENTS: 0x40,
  BIT64: 0x80,
  MMP: 0x100,
  FLEX_BG: 0x200,
  EA_INODE: 0x400,
  DIRDATA: 0x1000,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;

/** Incompatible features this reader reads correctly (the rest are refused). */
const UNDERSTOOD =
  INCOMPAT.FILETYPE |
  INCOMPAT.RECOVER |
  INCOMPAT.META_BG |
  INCOMPAT.EXTENTS |
  INCOMPAT.BIT64 |
  INCOMPAT.MMP |
  INCOMPAT.FLEX_BG |
  INCOMPAT.EA_INODE |
  INCOMPAT.CSUM_SEED |
  INCOMPAT.LARGEDIR |
  INCOMPAT.INLINE_DATA |
  INCOMPAT.ENCRYPT | // names are shown as stored; encrypted contents are refused per file
  INCOMPAT.CASEFOLD; // lookups here are byte-exact; casefolded names are stored as created

const INCOMPAT_NAMES: Record<number, string> = {
  0x1: 'compression',
  0x8: 'journal_dev (an external journal, not a filesystem)',
  0x1000: 'dirdata',
};

export interface Superblock {
  inodesCount: number;
  blocksCount: number;
  firstDataBlock: number;
  blockSize: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  firstIno: number;
  revLevel: number;
  compat: number;
  incompat: number;
  roCompat: number;
  descSize: number;
  groupCount: number;
  firstMetaBg: number;
  backupBgs: [number, number];
  logGroupsPerFlex: number;
  uuid: string;
  label: string;
  lastMounted: string;
  /** Seconds since the epoch (0 if never). */
  mtime: number;
  wtime: number;
  mkfsTime: number;
  /** The journal needs recovery: what is read is the state before its replay (noload). */
  needsRecovery: boolean;
  /** Head of the orphan inode list (0 if empty). */
  lastOrphan: number;
}

const str = (b: Buffer): string => {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
};

/** Parse and check the 1024-byte superblock of a partition of `partitionBytes`. */
export function parseSuperblock(sb: Buffer, partitionBytes: number): Superblock {
  const S = 'superblock';
  if (sb.readUInt16LE(56) !== 0xef53) throw corrupt(S, 'bad magic (not ext2/3/4)');
  const revLevel = sb.readUInt32LE(76);
  const compat = revLevel >= 1 ? sb.readUInt32LE(92) : 0;
  const incompat = revLevel >= 1 ? sb.readUInt32LE(96) : 0;
  const roCompat = revLevel >= 1 ? sb.readUInt32LE(100) : 0;
  if (revLevel > 1) throw unsupported(S, `revision ${revLevel}`);
  const unknown = incompat & ~UNDERSTOOD;
  if (unknown) {
    const names: string[] = [];
    for (let bit = 1; bit !== 0 && bit <= 0x80000000; bit = (bit << 1) >>> 0) {
      if (unknown & bit) names.push(INCOMPAT_NAMES[bit] ?? `0x${bit.toString(16)}`);
    }
    throw unsupported(S, `incompatible features not understood: ${names.join(', ')}`);
  }
  if (roCompat & RO_COMPAT.METADATA_CSUM) {
    const want = sb.readUInt32LE(1020);
    const got = crc32cRaw(sb.subarray(0, 1020));
    if (want !== got) throw corrupt(S, `checksum mismatch (stored 0x${want.toString(16)}, computed 0x${got.toString(16)})`);
  }
  const logBlock = sb.readUInt32LE(24);
  if (logBlock > 6) throw corrupt(S, `block size 2^${10 + logBlock} exceeds 64 KiB`);
  const blockSize = 1024 << logBlock;
  const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
  const blocksCount = sb.readUInt32LE(4) + (bit64 ? sb.readUInt32LE(336) * 2 ** 32 : 0);
  const firstDataBlock = sb.readUInt32LE(20);
  const blocksPerGroup = sb.readUInt32LE(32);
  const inodesPerGroup = sb.readUInt32LE(40);
  const inodesCount = sb.readUInt32LE(0);
  const inodeSize = revLevel >= 1 ? sb.readUInt16LE(88) : 128;
  const firstIno = revLevel >= 1 ? sb.readUInt32LE(84) : 11;
  const descSize = bit64 ? sb.readUInt16LE(254) : 32;
  const check = (ok: boolean, detail: string): void => {
    if (!ok) throw corrupt(S, detail);
  };
  check(blocksCount > firstDataBlock, `${blocksCount} blocks, first data block ${firstDataBlock}`);
  check(firstDataBlock === (blockSize === 1024 ? 1 : 0) || firstDataBlock === 0, `first data block ${firstDataBlock}`);
  check(
    blocksCount * blockSize <= partitionBytes,
    `${blocksCount} blocks of ${blockSize} bytes exceed the partition (${partitionBytes} bytes)`,
  );
  check(blocksPerGroup > 0 && blocksPerGroup <= 8 * blockSize, `${blocksPerGroup} blocks per group`);
  check(inodesPerGroup > 0 && inodesPerGroup <= 8 * blockSize, `${inodesPerGroup} inodes per group`);
  check(inodeSize >= 128 && inodeSize <= blockSize && (inodeSize & (inodeSize - 1)) === 0, `inode size ${inodeSize}`);
  check(!bit64 || (descSize >= 32 && descSize <= 1024 && (descSize & (descSize - 1)) === 0), `group descriptor size ${descSize}`);
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  check(inodesCount <= groupCount * inodesPerGroup, `${inodesCount} inodes exceed ${groupCount} groups of ${inodesPerGroup}`);
  check(firstIno >= 11 && firstIno <= inodesCount, `first inode ${firstIno}`);
  return {
    inodesCount,
    blocksCount,
    firstDataBlock,
    blockSize,
    blocksPerGroup,
    inodesPerGroup,
    inodeSize,
    firstIno,
    revLevel,
    compat,
    incompat,
    roCompat,
    descSize,
    groupCount,
    firstMetaBg: sb.readUInt32LE(260),
    backupBgs: [sb.readUInt32LE(0x24c), sb.readUInt32LE(0x250)],
    logGroupsPerFlex: sb[0x174]!,
    uuid: sb
      .subarray(104, 120)
      .toString('hex')
      .replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-'),
    label: str(sb.subarray(120, 136)),
    lastMounted: str(sb.subarray(136, 200)),
    mtime: sb.readUInt32LE(44),
    wtime: sb.readUInt32LE(48),
    mkfsTime: sb.readUInt32LE(264),
    needsRecovery: (incompat & INCOMPAT.RECOVER) !== 0,
    lastOrphan: sb.readUInt32LE(232),
  };
}

/** Whether group `g` holds a superblock backup (and, without meta_bg, a descriptor table copy). */
export function groupHasSuper(sb: Superblock, g: number): boolean {
  if (g === 0) return true;
  if (sb.compat & COMPAT.SPARSE_SUPER2) return g === sb.backupBgs[0] || g === sb.backupBgs[1];
  if (g <= 1 || !(sb.roCompat & RO_COMPAT.SPARSE_SUPER)) return true;
  if (!(g & 1)) return false;
  for (const base of [3, 5, 7]) {
    let p = base;
    while (p < g) p *= base;
    if (p === g) return true;
  }
  return false;
}
