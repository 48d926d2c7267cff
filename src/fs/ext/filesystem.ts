/**
 * An ext2/3/4 filesystem opened read-only inside an image: inodes, path
 * lookup, directories, symlinks. File data and walks are in read.ts and
 * walk.ts. Nothing is written and the journal is not replayed (like
 * mounting with noload), so a filesystem that needs recovery is read as
 * its metadata stands.
 *
 * Every public method throws FsError located at this partition, e.g.
 * "partition 2 (ext4): inode 1234 extent tree: depth 9 exceeds 5".
 */
import { asFsError, corrupt, FsError, limit } from '../errors';
import type { FsImage } from '../image';
import { LIMITS } from '../limits';
import { escapeName } from '../names';
import type { Partition } from '../partitions';
import { inodeRunsSync, mapInode, type Run } from './blockmap';
import { BlockDevice, type DeviceOptions } from './device';
import { parseDirEntries, type DirEntry, type DirFormat } from './dir';
import { descriptorBlockNumbers, descriptorTableBytes, parseGroups, type GroupTable } from './groups';
import { inlineContents, inlineRegions } from './inline';
import { FLAG, I_BLOCK, parseInode, type Inode, type Stat } from './inode';
import { INCOMPAT, parseSuperblock, type Superblock } from './superblock';
import {
  readFileChunks,
  fileExtents,
  fileExtentsSync,
  checkOverlap,
  dataInInode,
  type FileChunk,
  type FileExtents,
  type ReadOptions,
} from './read';
import { walk, type WalkOptions, type WalkSummary, type WalkVisitor } from './walk';
import { classifyBlock, type BlockClass } from './layout';
import type { ExtSource, Target } from './source';

export type OpenOptions = DeviceOptions;
/** A path as text (UTF-8) or bytes, or an inode number. */
export type { Target } from './source';

export const ROOT_INO = 2;
const SLASH = 0x2f;

export class ExtFilesystem implements ExtSource {
  readonly type: 'ext2' | 'ext3' | 'ext4';
  /** "partition 2 (ext4)": how errors name this filesystem. */
  readonly where: string;
  readonly blockSize: number;
  /**
   * What a reader of this point should know: the journal holds transactions
   * not replayed here (the point was taken while mounted, as after a crash),
   * or unlinked inodes wait on the orphan list.
   */
  readonly warnings: string[] = [];
  /** @internal */ readonly dev: BlockDevice;
  /** @internal */ readonly dirFormat: DirFormat;
  private readonly itableBlocks: number;

  private constructor(
    readonly partition: Partition,
    readonly superblock: Superblock,
    /** @internal */ readonly groups: GroupTable,
    dev: BlockDevice,
    type: 'ext2' | 'ext3' | 'ext4',
  ) {
    this.type = type;
    this.where = `${partition.label} (${type})`;
    this.dev = dev;
    this.blockSize = superblock.blockSize;
    this.itableBlocks = Math.ceil((superblock.inodesPerGroup * superblock.inodeSize) / superblock.blockSize);
    if (superblock.needsRecovery) this.warnings.push('the journal needs recovery: read without replaying it (as mount -o noload)');
    if (superblock.lastOrphan !== 0) this.warnings.push(`orphan inodes pending (first: inode ${superblock.lastOrphan})`);
    this.dirFormat = {
      filetype: (superblock.incompat & INCOMPAT.FILETYPE) !== 0,
      blockSize: superblock.blockSize,
      inodesCount: superblock.inodesCount,
    };
  }

  static async open(image: FsImage, partition: Partition, type: 'ext2' | 'ext3' | 'ext4', opts: OpenOptions = {}): Promise<ExtFilesystem> {
    const where = `${partition.label} (${type})`;
    try {
      if (partition.offset + partition.size > image.size) throw corrupt('partition', `runs past the end of the image`);
      if (partition.size < 2048) throw corrupt('superblock', 'partition too small to hold one');
      const probe = new BlockDevice(image, partition.offset, 1024, Math.floor(partition.size / 1024), opts);
      const sb = parseSuperblock(await probe.readBytes(1024, 1024), partition.size);
      const dev = new BlockDevice(image, partition.offset, sb.blockSize, sb.blocksCount, opts);
      const blocks = descriptorBlockNumbers(sb);
      descriptorTableBytes(sb);
      const table = await readDescriptorBlocks(dev, blocks);
      return new ExtFilesystem(partition, sb, parseGroups(sb, table, blocks), dev, type);
    } catch (err) {
      throw asFsError(err, where);
    }
  }

  /** Byte offset in the image of filesystem block `block`. */
  imageOffset(block: number): number {
    return this.partition.offset + block * this.blockSize;
  }

  /**
   * The filesystem blocks overlapping bytes [offset, offset+length) of the
   * image (a changed range from the block history), or null if the range
   * misses this filesystem.
   */
  blocksOfImageRange(offset: number, length: number): { first: number; count: number } | null {
    const start = Math.max(offset, this.partition.offset);
    const end = Math.min(offset + length, this.imageOffset(this.superblock.blocksCount));
    if (end <= start) return null;
    const first = Math.floor((start - this.partition.offset) / this.blockSize);
    return { first, count: Math.ceil((end - this.partition.offset) / this.blockSize) - first };
  }

  /** Where an inode is stored: its block, byte offset in it, and the image offset. */
  inodeLocation(ino: number): { group: number; block: number; offset: number; imageOffset: number } {
    const sb = this.superblock;
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > sb.inodesCount) {
      throw new FsError('INVALID', this.where, `inode ${ino}`, `not in 1..${sb.inodesCount}`);
    }
    const group = Math.floor((ino - 1) / sb.inodesPerGroup);
    const byte = ((ino - 1) % sb.inodesPerGroup) * sb.inodeSize;
    const block = this.groups.inodeTable[group]! + Math.floor(byte / sb.blockSize);
    const offset = byte % sb.blockSize;
    return { group, block, offset, imageOffset: this.imageOffset(block) + offset };
  }

  /** What a filesystem block is, for mapping changed blocks onto inodes (incremental catalogs). */
  classifyBlock(block: number): BlockClass {
    return classifyBlock(this, block);
  }

  /** @internal Chunk key, first block and length of the inode-table chunk holding `ino`. */
  chunkOf(ino: number): { key: number; block: number; count: number; offset: number; group: number } {
    const loc = this.inodeLocation(ino);
    const inTable = loc.block - this.groups.inodeTable[loc.group]!;
    const ci = Math.floor(inTable / this.dev.chunkBlocks);
    const first = ci * this.dev.chunkBlocks;
    return {
      key: loc.group * 2 ** 20 + ci,
      block: this.groups.inodeTable[loc.group]! + first,
      count: Math.min(this.dev.chunkBlocks, this.itableBlocks - first),
      offset: (inTable - first) * this.blockSize + loc.offset,
      group: loc.group,
    };
  }

  /**
   * The inode's bytes if its table chunk is cached (no I/O), else undefined:
   * a view into the cache, valid only until the next await (chunk buffers
   * are recycled), so callers parse it at once or copy it.
   */
  private rawView(ino: number, c = this.chunkOf(ino)): Buffer | undefined {
    if (this.groups.inodeUninit[c.group]) return Buffer.alloc(this.superblock.inodeSize);
    return this.dev.peekChunk(c.key)?.subarray(c.offset, c.offset + this.superblock.inodeSize);
  }

  /** @internal An inode's stat if its table chunk is cached (the walk's synchronous path), else undefined. */
  peekStat(ino: number): Stat | undefined {
    const c = this.chunkOf(ino);
    const raw = this.rawView(ino, c);
    return raw && this.parse(ino, raw, c).stat;
  }

  /** @internal An inode, with its own copy of the raw bytes (it outlives the cache entry). */
  async inode(ino: number): Promise<Inode> {
    const c = this.chunkOf(ino);
    let raw = this.rawView(ino, c);
    if (!raw)
      raw = (await this.dev.loadChunk(c.key, c.block, c.count, `inode ${ino} table`)).subarray(
        c.offset,
        c.offset + this.superblock.inodeSize,
      );
    return this.parse(ino, Buffer.from(raw), c);
  }

  /** @internal */
  async statOf(ino: number): Promise<Stat> {
    return this.peekStat(ino) ?? (await this.inode(ino)).stat;
  }

  /** @internal Read the inode-table chunks of these inodes, a few at a time. */
  async prefetchInodes(inos: Iterable<number>): Promise<void> {
    const want = new Map<number, ReturnType<ExtFilesystem['chunkOf']>>();
    for (const ino of inos) {
      const c = this.chunkOf(ino);
      if (!this.groups.inodeUninit[c.group] && !this.dev.peekChunk(c.key)) want.set(c.key, c);
    }
    const all = [...want.values()];
    for (let i = 0; i < all.length; i += 8) {
      await Promise.all(all.slice(i, i + 8).map((c) => this.dev.loadChunk(c.key, c.block, c.count, `inode table of group ${c.group}`)));
    }
  }

  private parse(ino: number, raw: Buffer, c: { block: number; offset: number }): Inode {
    return parseInode(this.superblock, ino, raw, c.block + Math.floor(c.offset / this.blockSize));
  }

  /** Runs this method's body and places any error in this partition. */
  async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw asFsError(err, this.where);
    }
  }

  /** stat of a path (not following a final symlink unless `follow`) or an inode number. */
  stat(target: Target, opts: { follow?: boolean } = {}): Promise<Stat> {
    return this.guard(async () => (await this.inode(await this.resolve(target, opts))).stat);
  }

  /** The inode number of a path; intermediate symlinks are followed inside the image. */
  lookup(path: string | Buffer, opts: { follow?: boolean } = {}): Promise<number> {
    return this.guard(() => this.resolve(path, opts));
  }

  /** Entries of a directory, without "." and "..", in on-disk order. */
  readdir(target: Target): Promise<DirEntry[]> {
    return this.guard(async () => {
      const ino = await this.resolve(target, { follow: true });
      const out: DirEntry[] = [];
      for await (const batch of this.dirBatches(ino, await this.inode(ino))) out.push(...batch);
      return out;
    });
  }

  /** A symlink's target, as bytes. */
  readlink(target: Target): Promise<Buffer> {
    return this.guard(async () => {
      const ino = await this.resolve(target, {});
      return this.linkTarget(await this.inode(ino));
    });
  }

  /** A file's contents as chunks; holes are zero-filled. See ReadOptions (reuseBuffers for streaming). */
  async *readFile(target: Target, opts: ReadOptions = {}): AsyncGenerator<Buffer> {
    let zeroes: Buffer | undefined;
    for await (const c of this.readChunks(target, opts)) {
      if (c.data) yield c.data;
      else if (opts.reuseBuffers) yield (zeroes ??= Buffer.alloc(opts.chunkSize ?? LIMITS.readChunk)).subarray(0, c.length);
      else yield Buffer.alloc(c.length);
    }
  }

  /** A file's contents as chunks in order; holes and unwritten extents come without data. */
  async *readChunks(target: Target, opts: ReadOptions = {}): AsyncGenerator<FileChunk> {
    try {
      const ino = await this.resolve(target, {});
      yield* readFileChunks(this, await this.inode(ino), opts);
    } catch (err) {
      throw asFsError(err, this.where);
    }
  }

  /** Physical runs and metadata blocks of a file or directory (for digests and changed-block matching). */
  fileExtents(target: Target): Promise<FileExtents> {
    return this.guard(async () => fileExtents(this, await this.inode(await this.resolve(target, {}))));
  }

  /**
   * The entries of one directory data block (linear, or an htree leaf; index
   * blocks hold none), for incremental catalogs that re-read only the
   * directory blocks the block history says changed.
   */
  dirBlockEntries(block: number, dirIno = 0): Promise<DirEntry[]> {
    return this.guard(async () => {
      const where = `directory ${dirIno ? `inode ${dirIno} ` : ''}block ${block}`;
      const buf = await this.dev.readBlocks(block, 1, where);
      const out: DirEntry[] = [];
      parseDirEntries(buf, 0, this.blockSize, this.dirFormat, where, out);
      return out;
    });
  }

  /** Is this inode in use (linked, with a type)? Free inodes read as zeroes or carry a deletion time. */
  static inUse(stat: Stat): boolean {
    return stat.mode !== 0 && stat.nlink > 0 && stat.dtime === 0;
  }

  /**
   * fileExtents without I/O, for a walk's hot path: undefined when the
   * inode's table chunk is not cached or its map needs a block read.
   * Throws FsError for a damaged map, as fileExtents does.
   */
  peekExtents(ino: number): FileExtents | undefined {
    const c = this.chunkOf(ino);
    const raw = this.rawView(ino, c);
    if (!raw) return undefined;
    try {
      return fileExtentsSync(this, this.parse(ino, raw, c));
    } catch (err) {
      throw asFsError(err, this.where);
    }
  }

  /**
   * The block runs of the inode a walk just gave the stat of, without I/O
   * and without parsing the inode again: undefined when its table chunk is
   * not cached or the map needs a block read; [] for data kept in the inode.
   * Throws FsError for a damaged map.
   */
  peekRuns(stat: Stat): Run[] | undefined {
    const c = this.chunkOf(stat.ino);
    const raw = this.rawView(stat.ino, c);
    if (!raw) return undefined;
    const inode = { stat, raw, fileAcl: raw.readUInt32LE(104) + raw.readUInt16LE(118) * 2 ** 32, coreEnd: 128 };
    try {
      if (dataInInode(this, inode)) return [];
      const runs = inodeRunsSync({ sb: this.superblock, ino: stat.ino }, inode);
      if (runs && runs.length > 1) checkOverlap(runs, stat.ino);
      return runs;
    } catch (err) {
      throw asFsError(err, this.where);
    }
  }

  /** A fast symlink's target (kept in the inode) without I/O; undefined when it needs a read. */
  peekLink(ino: number): Buffer | undefined {
    const c = this.chunkOf(ino);
    const raw = this.rawView(ino, c);
    if (!raw) return undefined;
    const inode = this.parse(ino, raw, c);
    const { stat } = inode;
    if (stat.type !== 'symlink' || stat.flags & (FLAG.INLINE_DATA | FLAG.ENCRYPT)) return undefined;
    const eaBlocks = inode.fileAcl !== 0 ? this.blockSize / 512 : 0;
    if (stat.allocated / 512 - eaBlocks > 0 || stat.size >= 60) return undefined;
    return Buffer.from(raw.subarray(I_BLOCK, I_BLOCK + stat.size));
  }

  /** Depth-first walk with an explicit stack (bounded memory); see WalkVisitor. */
  walk(visitor: WalkVisitor, opts: WalkOptions = {}): Promise<WalkSummary> {
    return this.guard(() => walk(this, visitor, opts));
  }

  /** @internal Block runs of an inode (extents or indirect), lazily. */
  runs(inode: Inode, from = 0, onMeta?: (b: number) => void): AsyncGenerator<Run> {
    return mapInode({ dev: this.dev, sb: this.superblock, ino: inode.stat.ino, ...(onMeta ? { onMeta } : {}) }, inode, from);
  }

  /** @internal A directory's entries, one batch per block (or inline region). */
  async *dirBatches(
    ino: number,
    inode: Inode,
    onBlocks?: (run: Run) => void,
    onMeta?: (block: number) => void,
  ): AsyncGenerator<DirEntry[]> {
    if (inode.stat.type !== 'dir') throw new FsError('NOT_DIR', this.where, `inode ${ino}`, 'not a directory');
    const where = `directory inode ${ino}`;
    if (inode.stat.flags & FLAG.INLINE_DATA) {
      const [a, b] = inlineRegions(this.superblock, inode);
      for (const [region, start, name] of [
        [a, 4, 'inline'],
        [b, 0, 'inline xattr'],
      ] as const) {
        const out: DirEntry[] = [];
        parseDirEntries(region, start, region.length, this.dirFormat, `${where} ${name}`, out);
        yield out;
      }
      return;
    }
    const size = inode.stat.size;
    if (size > LIMITS.maxDirectoryBytes) throw limit(where, `size ${size} exceeds ${LIMITS.maxDirectoryBytes} bytes`);
    const nblocks = Math.ceil(size / this.blockSize);
    const readahead = Math.max(1, Math.floor(65536 / this.blockSize));
    const scratch = Buffer.allocUnsafe(readahead * this.blockSize); // entries copy their names out of it
    for await (const run of this.runs(inode, 0, onMeta)) {
      if (run.logical >= nblocks) break;
      const length = Math.min(run.length, nblocks - run.logical);
      onBlocks?.({ ...run, length });
      if (run.unwritten) continue;
      for (let i = 0; i < length; i += readahead) {
        const n = Math.min(readahead, length - i);
        const buf = await this.dev.readBlocks(run.physical + i, n, where, scratch.subarray(0, n * this.blockSize));
        for (let k = 0; k < n; k++) {
          const out: DirEntry[] = [];
          const lblk = run.logical + i + k;
          parseDirEntries(buf, k * this.blockSize, (k + 1) * this.blockSize, this.dirFormat, `${where} block ${lblk}`, out);
          yield out;
        }
      }
    }
  }

  /** @internal */
  async linkTarget(inode: Inode): Promise<Buffer> {
    const { stat } = inode;
    const what = `symlink inode ${stat.ino}`;
    if (stat.type !== 'symlink') throw new FsError('INVALID', this.where, `inode ${stat.ino}`, 'not a symlink');
    if (stat.size > LIMITS.maxSymlinkLength || stat.size > this.blockSize) throw corrupt(what, `target length ${stat.size}`);
    if (stat.flags & FLAG.ENCRYPT) throw new FsError('UNSUPPORTED', this.where, what, 'encrypted');
    if (stat.flags & FLAG.INLINE_DATA) return inlineContents(this.superblock, inode);
    // A fast symlink keeps its target in i_block: it owns no blocks (an xattr block aside).
    const eaBlocks = inode.fileAcl !== 0 ? this.blockSize / 512 : 0;
    const blocks512 = stat.allocated / 512;
    if (blocks512 - eaBlocks <= 0) {
      if (stat.size >= 60) throw corrupt(what, `fast symlink of ${stat.size} bytes`);
      return Buffer.from(inode.raw.subarray(I_BLOCK, I_BLOCK + stat.size));
    }
    const parts: Buffer[] = [];
    for await (const c of readFileChunks(this, inode, {})) parts.push(c.data ?? Buffer.alloc(c.length));
    return Buffer.concat(parts);
  }

  /** @internal Path or inode to an inode number. */
  async resolve(target: Target, opts: { follow?: boolean }): Promise<number> {
    if (typeof target === 'number') {
      this.inodeLocation(target); // range check
      return target;
    }
    const bytes = typeof target === 'string' ? Buffer.from(target, 'utf8') : target;
    let pending = splitPath(bytes);
    const stack: number[] = [ROOT_INO]; // ancestors, so ".." needs no lookup
    let hops = 0;
    let steps = 0;
    while (pending.length > 0) {
      if (++steps > LIMITS.maxPathComponents) throw limit('path', `more than ${LIMITS.maxPathComponents} components`);
      const name = pending.shift()!;
      if (name.length === 1 && name[0] === 0x2e) continue;
      if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = stack[stack.length - 1]!;
      const child = await this.findEntry(dir, name);
      if (child === null) throw new FsError('NOT_FOUND', this.where, `path ${escapeName(bytes)}`, `no entry "${escapeName(name)}"`);
      const inode = await this.inode(child);
      if (inode.stat.type === 'symlink' && (pending.length > 0 || opts.follow)) {
        if (++hops > LIMITS.maxSymlinkHops) throw limit(`path ${escapeName(bytes)}`, 'too many levels of symbolic links');
        const dest = await this.linkTarget(inode);
        if (dest[0] === SLASH) stack.length = 1;
        pending = [...splitPath(dest), ...pending];
        continue;
      }
      if (pending.length > 0 && inode.stat.type !== 'dir') {
        throw new FsError('NOT_DIR', this.where, `path ${escapeName(bytes)}`, `"${escapeName(name)}" is not a directory`);
      }
      stack.push(child);
    }
    return stack[stack.length - 1]!;
  }

  private async findEntry(dir: number, name: Buffer): Promise<number | null> {
    for await (const batch of this.dirBatches(dir, await this.inode(dir))) {
      for (const e of batch) if (e.name.equals(name)) return e.ino;
    }
    return null;
  }
}

function splitPath(p: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= p.length; i++) {
    if (i === p.length || p[i] === SLASH) {
      if (i > start) out.push(p.subarray(start, i));
      start = i + 1;
    }
  }
  return out;
}

async function readDescriptorBlocks(dev: BlockDevice, blocks: number[]): Promise<Buffer> {
  // Consecutive blocks (the classic layout) in one read; meta_bg's scattered ones one by one.
  const parts: Buffer[] = [];
  let i = 0;
  while (i < blocks.length) {
    let n = 1;
    while (i + n < blocks.length && blocks[i + n] === blocks[i]! + n) n++;
    parts.push(await dev.readBlocks(blocks[i]!, n, 'group descriptors'));
    i += n;
  }
  return Buffer.concat(parts);
}
