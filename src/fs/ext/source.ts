/**
 * What file reads (read.ts) and tree walks (walk.ts) need of an open
 * filesystem: ExtFilesystem implements it. A port of its own, so those
 * modules do not import the class that uses them.
 */
import type { Run } from './blockmap';
import type { BlockDevice } from './device';
import type { DirEntry } from './dir';
import type { Inode, Stat } from './inode';
import type { Superblock } from './superblock';

/** A file named by a UTF-8 path, a path as bytes, or an inode number. */
export type Target = string | Buffer | number;

export interface ExtSource {
  readonly blockSize: number;
  /** "partition 2 (ext4)": where errors are located. */
  readonly where: string;
  readonly superblock: Superblock;
  readonly dev: BlockDevice;
  imageOffset(block: number): number;
  inode(ino: number): Promise<Inode>;
  statOf(ino: number): Promise<Stat>;
  peekStat(ino: number): Stat | undefined;
  prefetchInodes(inos: Iterable<number>): Promise<void>;
  resolve(target: Target, opts: { follow?: boolean }): Promise<number>;
  runs(inode: Inode, from?: number, onMeta?: (b: number) => void): AsyncGenerator<Run>;
  dirBatches(ino: number, inode: Inode, onBlocks?: (run: Run) => void, onMeta?: (block: number) => void): AsyncGenerator<DirEntry[]>;
}
