/**
 * Chunks by handle: the bloom filter and LMDB index in front, packs on the
 * backend behind, a cache of decoded tree nodes (seed 003 L316, "data
 * handle cache") and the quarantine. Reading a chunk checks its record
 * against the index, its CRC, decrypts, decompresses and re-hashes it; any
 * mismatch quarantines the chunk and fails with EIO naming it and its
 * pack, so only the points that reference it stop reading.
 */
import type { ArchiveBackend } from './backend';
import { BloomFilter } from './bloom';
import { crashPoint } from './crash-hook';
import { decodeChunk, ChunkDecodeError, type CodecOptions } from './codec';
import { ArchiveError, ArchiveFormatError, errnoOf } from './errors';
import { handleHex, isZeroHandle, shortHex, type Handle, type Hasher } from './handle';
import type { ChunkLocation, IndexDb } from './index-db';
import { LruCache } from './lru';
import { RECORD_HEADER_SIZE } from './pack-format';
import { checkRecord } from './pack-reader';
import type { SealedPack } from './pack-writer';
import { packKey } from './pack-writer';
import { decodeNode, zeroNode, type TreeNode } from './tree';

export interface StoreOptions {
  backend: ArchiveBackend;
  index: IndexDb;
  bloom: BloomFilter;
  codec: CodecOptions;
  hasher: Hasher;
  /** Re-hash every chunk read (default true; verify always does). */
  verifyReads: boolean;
  nodeCacheBytes: number;
}

export class ChunkStore {
  readonly backend: ArchiveBackend;
  readonly index: IndexDb;
  bloom: BloomFilter;
  readonly codec: CodecOptions;
  readonly hasher: Hasher;
  private readonly nodes: LruCache<TreeNode>;
  /** Hex handles of quarantined chunks (a small set, mirrored from LMDB). */
  readonly quarantinedHex = new Map<string, string>();
  /** Stamps raised by writers whose LMDB update has not committed yet (gc reads these). */
  readonly touchOverlay = new Map<string, number>();
  private touchBatch: Array<[Buffer, number]> = [];
  private touchFlush: Promise<void> | null = null;

  constructor(private readonly opts: StoreOptions) {
    this.backend = opts.backend;
    this.index = opts.index;
    this.bloom = opts.bloom;
    this.codec = opts.codec;
    this.hasher = opts.hasher;
    this.nodes = new LruCache<TreeNode>(opts.nodeCacheBytes, (n) => n.children.length + 64);
    for (const [h, q] of this.index.quarantined()) this.quarantinedHex.set(handleHex(h), q.reason);
  }

  /** The index entry of a usable chunk (bloom filter first), or undefined. */
  lookup(h: Handle): ChunkLocation | undefined {
    if (!this.bloom.mightContain(h)) return undefined;
    const loc = this.index.get(h);
    if (!loc || this.quarantinedHex.has(handleHex(h))) return undefined;
    return loc;
  }

  /** Records that a running writer (epoch `stamp`) references an indexed chunk. */
  touch(h: Handle, stamp: number): void {
    const hex = handleHex(h);
    if ((this.touchOverlay.get(hex) ?? 0) >= stamp) return;
    this.touchOverlay.set(hex, stamp);
    this.touchBatch.push([h, stamp]);
    // A failed LMDB update only loses the persistent stamp: the overlay entry stays and protects in-process.
    this.touchFlush ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.flushTouches()).catch(() => undefined);
  }

  private async flushTouches(): Promise<void> {
    const batch = this.touchBatch;
    this.touchBatch = [];
    this.touchFlush = null;
    const byStamp = new Map<number, Buffer[]>();
    for (const [h, s] of batch) byStamp.set(s, [...(byStamp.get(s) ?? []), h]);
    for (const [s, hs] of byStamp) await this.index.touch(hs, s);
    for (const [h, s] of batch) {
      const hex = handleHex(h);
      if (this.touchOverlay.get(hex) === s) this.touchOverlay.delete(hex);
    }
  }

  /** Waits for every pending touch to be in LMDB. */
  async settle(): Promise<void> {
    while (this.touchFlush) await this.touchFlush;
  }

  /** The stamp gc must respect for a chunk: its own or a pending touch's. */
  effectiveStamp(h: Handle, loc: ChunkLocation): number {
    return Math.max(loc.stamp, this.touchOverlay.get(handleHex(h)) ?? 0);
  }

  /** Puts a sealed pack on the backend and indexes its chunks. Returns the pack number. */
  async publish(sealed: SealedPack, stamp: number): Promise<number> {
    const key = packKey(sealed.header.packId);
    await this.backend.put(key, { file: sealed.file });
    crashPoint('pack-put');
    // Bloom first: every key in LMDB must be in the filter.
    if (this.bloom.count + sealed.entries.length > this.bloom.capacity) this.growBloom();
    for (const e of sealed.entries) this.bloom.add(e.handle);
    const { no, healed } = await this.index.addPack(
      { key, kind: sealed.header.kind, size: sealed.size, entries: sealed.entries.length, created: sealed.header.created, state: 'live' },
      sealed.entries,
      stamp,
      (hex) => this.quarantinedHex.has(hex),
    );
    for (const h of healed) this.quarantinedHex.delete(handleHex(h));
    return no;
  }

  /** A filter with twice the room, from the index (handles still being published are re-added by their publish). */
  private growBloom(): void {
    const f = BloomFilter.forCapacity(2 * Math.max(this.bloom.capacity, this.index.totals().chunks));
    for (const k of this.index.keys()) f.add(k);
    this.bloom = f;
  }

  async quarantine(h: Handle, pack: string, offset: number, reason: string): Promise<void> {
    this.quarantinedHex.set(handleHex(h), reason);
    this.nodes.delete(handleHex(h));
    await this.index.quarantine(h, { pack, offset, reason, at: Date.now() });
  }

  forgetCached(h: Handle): void {
    this.nodes.delete(handleHex(h));
  }

  /** Reads, checks and decodes one chunk. Fails with EIO naming the chunk. */
  async read(h: Handle): Promise<Buffer> {
    for (let attempt = 0; ; attempt++) {
      const hex = handleHex(h);
      const q = this.quarantinedHex.get(hex);
      const loc = this.index.get(h);
      const pack = loc ? this.index.pack(loc.pack) : undefined;
      const where = pack ? `pack ${pack.key} at ${loc!.offset}` : 'no pack';
      if (q !== undefined) throw eio(h, `is quarantined (${q}); ${where}`, pack?.key);
      if (!loc || !pack) throw eio(h, 'is missing from the index (no copy left)', pack?.key);
      let rec: Buffer;
      try {
        rec = await this.backend.get(pack.key, { offset: loc.offset, length: RECORD_HEADER_SIZE + loc.storedLength });
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw eio(h, `could not be read from ${where}: ${(err as Error).message}`, pack.key, err);
        rec = Buffer.alloc(0);
      }
      if (rec.length < RECORD_HEADER_SIZE + loc.storedLength) {
        // A gc repack may have moved it meanwhile: look again once.
        const now = this.index.get(h);
        if (attempt === 0 && now && (now.pack !== loc.pack || now.offset !== loc.offset)) continue;
        throw eio(h, rec.length === 0 ? `is in a missing pack (${where})` : `is cut off: ${where} is truncated`, pack.key);
      }
      let plain: Buffer;
      try {
        const payload = checkRecord(rec, loc.offset, { handle: h, ...loc });
        plain = await decodeChunk(this.codec, h, loc.type, loc.codec, loc.rawLength, payload);
        if (this.opts.verifyReads && !this.hasher.hash(plain).equals(h)) throw new ChunkDecodeError('content does not match its handle');
      } catch (err) {
        if (!(err instanceof ArchiveFormatError || err instanceof ChunkDecodeError)) throw err;
        await this.quarantine(h, pack.key, loc.offset, err.message);
        throw eio(h, `is corrupt in ${where}: ${err.message}`, pack.key, err);
      }
      return plain;
    }
  }

  /** A tree node, through the cache; checks its level and child count. */
  async node(h: Handle, level: number, count: number): Promise<TreeNode> {
    if (isZeroHandle(h)) return zeroNode(level, count);
    const hex = handleHex(h);
    let n = this.nodes.get(hex);
    if (!n) {
      const raw = await this.read(h);
      try {
        n = decodeNode(raw);
      } catch (err) {
        throw eio(h, `is not a valid tree node: ${(err as Error).message}`);
      }
      this.nodes.set(hex, n);
    }
    if (n.level !== level || n.count !== count)
      throw eio(h, `is a level-${n.level} node of ${n.count} children where level ${level} with ${count} was expected`);
    return n;
  }
}

export function eio(h: Handle, what: string, pack?: string, cause?: unknown): ArchiveError {
  return new ArchiveError('EIO', `archive chunk ${shortHex(h)} ${what}`, { chunk: handleHex(h), ...(pack ? { pack } : {}), cause });
}
