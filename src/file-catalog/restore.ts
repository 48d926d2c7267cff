/**
 * Single-file restore: one file's bytes at a point, read straight from the
 * block history with no mount. With the point cataloged, the catalog names
 * the partition and the inode, so only the inode's table block, its extent
 * or indirect blocks and its data blocks are read (holes are not read at
 * all); without it, the path is looked up through the directories.
 * Everything goes through a CountingImage, so the cost is known.
 */
import {
  CountingImage,
  escapeName,
  listPartitions,
  openFilesystem,
  type ExtFilesystem,
  type FsImage,
  type FsType,
  type Partition,
  type Stat,
} from '../fs';
import { UserError } from '../util/errors';
import type { FsContext } from './types';

export interface OpenedFile {
  partition: number;
  stat: Stat;
  /** The file's bytes in order (holes as zeroes); each chunk valid until the one after the next is asked for. */
  chunks: () => AsyncGenerator<Buffer>;
  counter: CountingImage;
}

/** The partition as cataloged, its signature included (so opening it probes nothing). */
export function partitionOf(ctx: FsContext): Partition {
  const content: NonNullable<Partition['content']> = { type: ctx.fsType as FsType, supported: true };
  if (ctx.uuid) content.uuid = ctx.uuid;
  if (ctx.fsLabel) content.label = ctx.fsLabel;
  return {
    index: ctx.partition,
    scheme: ctx.scheme,
    offset: ctx.offset,
    size: ctx.size,
    type: ctx.partitionType,
    label: ctx.label,
    content,
  };
}

/**
 * Opens `path` (or inode `ino`, from the catalog) in the filesystem of
 * `ctx` (or, without it, the only readable ext filesystem of the image, or
 * partition `partition`).
 */
export async function openFile(
  image: FsImage,
  where: { ctx?: FsContext; partition?: number },
  target: { path: Buffer; ino?: number },
): Promise<OpenedFile> {
  const counter = new CountingImage(image);
  let fs: ExtFilesystem;
  // One inode-table block per lookup: a restore reads what it needs, not a walk's readahead.
  const opts = { inodeReadahead: where.ctx?.blockSize ?? 4096 };
  if (where.ctx) fs = await openFilesystem(counter, partitionOf(where.ctx), opts);
  else {
    const table = await listPartitions(counter);
    const ext = table.partitions.filter((p) => p.content?.supported && (where.partition === undefined || p.index === where.partition));
    if (ext.length !== 1) {
      throw new UserError(
        'invalid',
        ext.length === 0
          ? `no readable ext2/3/4 filesystem${where.partition !== undefined ? ` in partition ${where.partition}` : ''}`
          : `the image has ${ext.length} filesystems (partitions ${ext.map((p) => p.index).join(', ')}): name one with partition`,
      );
    }
    fs = await openFilesystem(counter, ext[0]!, opts);
  }
  const ino = target.ino ?? (await fs.lookup(target.path));
  const stat = await fs.stat(ino);
  if (stat.type === 'dir')
    throw new UserError('invalid', `${escapeName(target.path)} is a directory: restore its files one by one (restore-file does)`);
  if (stat.type !== 'file' && stat.type !== 'symlink')
    throw new UserError('invalid', `${escapeName(target.path)} is a ${stat.type}: it has no content to restore`);
  return {
    partition: fs.partition.index,
    stat,
    counter,
    // A few chunks read ahead: the image is the block history, whose reads may wait on a busy disk.
    chunks: () => fs.readFile(ino, { reuseBuffers: true, readAhead: 4 }),
  };
}
