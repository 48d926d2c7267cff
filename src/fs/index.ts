/**
 * src/fs: a read-only filesystem reader over any image (a snapshot, clone,
 * archived point or live volume), with no mount, no root, no journal replay.
 *
 *   const table = await listPartitions(image);        // GPT, MBR (+ logical) or whole disk, probed
 *   const fs = await openFilesystem(image, table.partitions[0]);
 *   await fs.walk({ entry(e) {}, directory(d) {} });  // every path with its stat; each directory's blocks
 *   await fs.stat('/etc/fstab'); await fs.readdir(ino); await fs.readlink(ino);
 *   for await (const buf of fs.readFile(ino)) ...     // or readChunks: holes without data
 *   const ext = await fs.fileExtents(ino);             // physical runs + map blocks, for digests
 *   fs.blocksOfImageRange(off, len); fs.classifyBlock(b); fs.inodeLocation(ino)  // incremental catalogs
 *
 * The image is anything with `size` and `read(offset, length)`: every
 * NbdExport qualifies. Paths are UTF-8 strings or Buffers (names are bytes;
 * escapeName gives a printable, reversible form). Only ext2/3/4 are read;
 * other signatures are named and refused with code UNSUPPORTED. Errors are
 * FsError: code, where ("partition 2 (ext4)"), structure ("inode 12
 * extent tree") and detail.
 */
import { detectFilesystem } from './detect';
import { FsError, asFsError } from './errors';
import { ExtFilesystem, type OpenOptions } from './ext/filesystem';
import type { FsImage } from './image';
import { wholeDisk, type Partition } from './partitions';

export { listPartitions, wholeDisk, type Partition, type PartitionTable, type PartitionScheme } from './partitions';
export { detectFilesystem, type FsSignature, type FsType } from './detect';
export { FsError, type FsErrorCode } from './errors';
export { CountingImage, memoryImage, openImageFile, type FsImage } from './image';
export { escapeName, unescapeName } from './names';
export { LIMITS } from './limits';
export { ExtFilesystem, ROOT_INO, type OpenOptions, type Target } from './ext/filesystem';
export type { Stat, Timespec, FileType } from './ext/inode';
export type { DirEntry } from './ext/dir';
export type { Run } from './ext/blockmap';
export type { ReadOptions, FileChunk, FileExtents, ExtentRun } from './ext/read';
export type { WalkEntry, WalkDirectory, WalkVisitor, WalkOptions, WalkSummary } from './ext/walk';
export type { BlockClass } from './ext/layout';
export type { Superblock } from './ext/superblock';

/**
 * Open the filesystem in `partition` (default: the whole image). Throws
 * FsError UNSUPPORTED for a recognised but unsupported filesystem
 * ("partition 1 (xfs): filesystem: xfs is not supported yet"), CORRUPT or
 * LIMIT for a damaged one.
 */
export async function openFilesystem(
  image: FsImage,
  partition: Partition = wholeDisk(image),
  opts: OpenOptions = {},
): Promise<ExtFilesystem> {
  let content = partition.content;
  if (!content) {
    try {
      content = await detectFilesystem(image, partition.offset, partition.size);
    } catch (err) {
      throw asFsError(err, partition.label, 'filesystem signature');
    }
  }
  const t = content.type;
  if (t === 'ext2' || t === 'ext3' || t === 'ext4') return ExtFilesystem.open(image, partition, t, opts);
  if (t === 'unknown') throw new FsError('UNSUPPORTED', partition.label, 'filesystem', 'no known filesystem signature');
  throw new FsError('UNSUPPORTED', `${partition.label} (${t})`, 'filesystem', `${t} is not supported yet`);
}
