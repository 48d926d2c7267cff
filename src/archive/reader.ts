/**
 * Reading an archived volume: any byte range is resolved through the tree
 * (interior nodes come from the store's node cache) to leaves; ZERO
 * subtrees read as zeroes without I/O. A small cache of decoded leaves
 * serves the many small reads an NBD client makes inside one leaf.
 */
import type { ChunkStore } from './chunk-store';
import { ArchiveError } from './errors';
import { handleHex, isZeroHandle, type Handle } from './handle';
import { LruCache } from './lru';
import { child, childCount, leafLength, span, type TreeShape } from './tree';

export interface AllocationExtent {
  offset: number;
  length: number;
  /** True where the point is known to read as zeroes (a ZERO leaf or subtree). */
  zero: boolean;
}

const READ_PARALLEL = 8;

export class ArchivedVolume {
  private readonly leaves: LruCache<Buffer>;

  constructor(
    private readonly store: ChunkStore,
    readonly point: string,
    readonly volume: string,
    readonly shape: TreeShape,
    readonly root: Handle,
    private readonly onClose: () => void = () => undefined,
    leafCacheBytes = 16 * 1024 * 1024,
  ) {
    this.leaves = new LruCache<Buffer>(leafCacheBytes, (b) => b.length);
  }

  /** Releases the view: until then gc keeps its chunks even if the point is forgotten. */
  close(): void {
    this.leaves.clear();
    this.onClose();
  }

  get size(): number {
    return this.shape.size;
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.shape.size) {
      throw new ArchiveError(
        'EINVAL',
        `read of ${length} bytes at ${offset} is outside ${this.point}/${this.volume} (${this.shape.size} bytes)`,
      );
    }
  }

  /** The handle of leaf `i`, walking down from the root. */
  async leafHandle(i: number): Promise<Handle> {
    let h = this.root;
    const s = this.shape;
    for (let l = s.height; l > 0 && !isZeroHandle(h); l--) {
      const at = Math.floor(i / span(s, l));
      const n = await this.store.node(h, l, childCount(s, l, at));
      h = child(n, Math.floor(i / span(s, l - 1)) - at * s.fanout);
    }
    return h;
  }

  private async leaf(i: number): Promise<Buffer | null> {
    const h = await this.leafHandle(i);
    if (isZeroHandle(h)) return null;
    const hex = handleHex(h);
    let b = this.leaves.get(hex);
    if (!b) {
      b = await this.store.read(h);
      if (b.length !== leafLength(this.shape, i)) {
        throw new ArchiveError(
          'EIO',
          `archive chunk ${hex.slice(2, 18)} has ${b.length} bytes where leaf ${i} of ${this.point}/${this.volume} has ${leafLength(this.shape, i)}`,
          { chunk: hex },
        );
      }
      this.leaves.set(hex, b);
    }
    return b;
  }

  /** Reads [offset, offset+length). Fails with EIO naming a bad chunk. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const L = this.shape.leafSize;
    const first = Math.floor(offset / L);
    const last = Math.floor((offset + length - 1) / L);
    let next = first;
    const worker = async (): Promise<void> => {
      while (next <= last) {
        const i = next++;
        const data = await this.leaf(i);
        if (!data) continue; // zeroes: out is zero-filled
        const from = Math.max(offset, i * L);
        const to = Math.min(offset + length, i * L + data.length);
        data.copy(out, from - offset, from - i * L, to - i * L);
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_PARALLEL, last - first + 1) }, worker));
    return out;
  }

  /** Which parts of a range are ZERO in the tree (for NBD block status); no leaf data is read. */
  async allocation(offset: number, length: number): Promise<AllocationExtent[]> {
    this.check(offset, length);
    const out: AllocationExtent[] = [];
    const L = this.shape.leafSize;
    const push = (o: number, n: number, zero: boolean): void => {
      const a = Math.max(o, offset);
      const z = Math.min(o + n, offset + length, this.shape.size);
      if (z <= a) return;
      const prev = out[out.length - 1];
      if (prev && prev.zero === zero && prev.offset + prev.length === a) prev.length += z - a;
      else out.push({ offset: a, length: z - a, zero });
    };
    const walk = async (h: Handle, level: number, index: number): Promise<void> => {
      const lo = index * span(this.shape, level) * L;
      const hi = (index + 1) * span(this.shape, level) * L;
      if (hi <= offset || lo >= offset + length) return;
      if (isZeroHandle(h) || level === 0) return push(lo, hi - lo, isZeroHandle(h));
      const n = await this.store.node(h, level, childCount(this.shape, level, index));
      for (let c = 0; c < n.count; c++) await walk(child(n, c), level - 1, index * this.shape.fanout + c);
    };
    if (length > 0) await walk(this.root, this.shape.height, 0);
    return out;
  }
}
