/**
 * Block I/O for one filesystem inside an image: bounds-checked reads of
 * filesystem blocks at the partition's offset, an LRU of metadata blocks
 * (extent nodes, indirect blocks) and an LRU of inode-table chunks, each
 * with in-flight de-duplication so concurrent lookups read a block once.
 */
import { corrupt } from '../errors';
import type { FsImage } from '../image';

class Lru<V extends { length: number }> {
  private readonly map = new Map<number, V>();
  private bytes = 0;
  constructor(
    private readonly capacity: number,
    private readonly onEvict?: (v: V) => void,
  ) {}

  private lastKey = -1;
  private lastValue: V | undefined;

  get(key: number): V | undefined {
    // Consecutive lookups mostly hit the same entry (inodes of one directory share a chunk): skip the reordering.
    if (key === this.lastKey && this.lastValue !== undefined) return this.lastValue;
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
      this.lastKey = key;
      this.lastValue = v;
    }
    return v;
  }

  set(key: number, v: V): void {
    if (this.map.has(key)) return;
    this.map.set(key, v);
    this.bytes += v.length;
    for (const [k, old] of this.map) {
      if (this.bytes <= this.capacity) break;
      this.map.delete(k);
      this.bytes -= old.length;
      if (k === this.lastKey) this.lastValue = undefined;
      this.onEvict?.(old);
    }
  }
}

export interface DeviceOptions {
  /** Bytes of inode table read at once (a walk's inodes are near each other). Default 32 KiB. */
  inodeReadahead?: number;
  /** Bytes of cached metadata (each of the two caches). Default 8 MiB. */
  cacheBytes?: number;
}

export class BlockDevice {
  private readonly meta: Lru<Buffer>;
  private readonly chunks: Lru<Buffer>;
  private readonly inflight = new Map<number, Promise<Buffer>>();
  private readonly inflightChunks = new Map<number, Promise<Buffer>>();
  private readonly spare: Buffer[] = [];
  readonly chunkBlocks: number;

  constructor(
    private readonly image: FsImage,
    /** Byte offset of the partition in the image. */
    readonly base: number,
    readonly blockSize: number,
    /** Blocks in the filesystem: nothing at or past it is read. */
    private readonly blocksCount: number,
    opts: DeviceOptions = {},
  ) {
    const cache = opts.cacheBytes ?? 8 * 1024 * 1024;
    this.meta = new Lru(cache);
    // Evicted inode-table chunks are read into again: fresh memory costs more than the copy (page faults).
    // Safe because nothing keeps a view of a chunk across an await (ExtFilesystem copies what it keeps).
    this.chunks = new Lru(cache, (buf) => {
      if (this.spare.length < 16) this.spare.push(buf);
    });
    this.chunkBlocks = Math.max(1, Math.floor((opts.inodeReadahead ?? 32 * 1024) / blockSize));
  }

  check(block: number, count: number, what: string): void {
    if (!Number.isSafeInteger(block) || block < 0 || count < 1 || block + count > this.blocksCount) {
      throw corrupt(what, `block ${block}${count > 1 ? ` (+${count})` : ''} outside the filesystem (${this.blocksCount} blocks)`);
    }
  }

  /** Raw bytes at a byte offset within the partition (the superblock is not block-aligned on 1 KiB-block filesystems). */
  readBytes(offset: number, length: number): Promise<Buffer> {
    return this.image.read(this.base + offset, length);
  }

  /** `count` blocks from `block`, uncached (file and directory data), into `into` if the image takes it. */
  readBlocks(block: number, count: number, what: string, into?: Buffer): Promise<Buffer> {
    this.check(block, count, what);
    return this.image.read(this.base + block * this.blockSize, count * this.blockSize, into);
  }

  /** Bytes [offset, offset+length) of the data starting at `block`: file reads end mid-block. */
  readSpan(block: number, offset: number, length: number, what: string, into?: Buffer): Promise<Buffer> {
    this.check(block, Math.ceil((offset + length) / this.blockSize), what);
    return this.image.read(this.base + block * this.blockSize + offset, length, into);
  }

  /** One metadata block, cached. */
  async metaBlock(block: number, what: string): Promise<Buffer> {
    const hit = this.meta.get(block);
    if (hit) return hit;
    let p = this.inflight.get(block);
    if (!p) {
      this.check(block, 1, what);
      p = this.image.read(this.base + block * this.blockSize, this.blockSize).finally(() => this.inflight.delete(block));
      this.inflight.set(block, p);
    }
    const buf = await p;
    this.meta.set(block, buf);
    return buf;
  }

  /** A cached inode-table chunk if present (the walk's synchronous fast path). */
  peekChunk(key: number): Buffer | undefined {
    return this.chunks.get(key);
  }

  /** Read (once) and cache the chunk `key` = `count` blocks from `block`. */
  async loadChunk(key: number, block: number, count: number, what: string): Promise<Buffer> {
    const hit = this.chunks.get(key);
    if (hit) return hit;
    let p = this.inflightChunks.get(key);
    if (!p) {
      const len = count * this.blockSize;
      const i = this.spare.findIndex((b) => b.length === len);
      const into = i >= 0 ? this.spare.splice(i, 1)[0] : undefined;
      p = this.readBlocks(block, count, what, into).finally(() => this.inflightChunks.delete(key));
      this.inflightChunks.set(key, p);
    }
    const buf = await p;
    this.chunks.set(key, buf);
    return buf;
  }
}
