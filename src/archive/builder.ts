/**
 * Building one volume's tree for a new point (seed 003 L364-L382, copy-in
 * with a predecessor). Given the predecessor's tree and the extents that
 * changed since it, only the changed leaves are read; each is checked for
 * zeroes, hashed and compared with the predecessor's leaf at the same
 * offset (temporal dedup: equal means nothing to store and no index
 * lookup); otherwise it goes to the session (global dedup, then storage).
 * Every subtree without a changed leaf is the predecessor's, by handle,
 * unread. Without a predecessor every leaf is read.
 *
 * The walk is top-down over the new shape; at level 1 the changed leaves
 * are read in runs of consecutive leaves (up to 1 MiB per read), with the
 * bytes in flight bounded.
 */
import type { ChunkStore } from './chunk-store';
import { ArchiveError } from './errors';
import { isZeroHandle, ZERO_HANDLE, type Handle, type Hasher } from './handle';
import { Limiter } from './limiter';
import type { VolumeStats } from './manifest';
import { TYPE_LEAF, TYPE_NODE } from './pack-format';
import type { WriteSession } from './session';
import { child, childCount, encodeNode, leafLength, leafRange, nodesAt, span, type TreeNode, type TreeShape } from './tree';

export interface Extent {
  offset: number;
  length: number;
}

/** Where a volume's data comes from: the image at the point being archived. */
export interface VolumeSource {
  volume: string;
  size: number;
  /** Reads `length` bytes at `offset` (never past `size`). The buffer is not reused by the caller. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Byte extents that may differ from the predecessor's image of this
   * volume (any alignment; over-reporting is fine, under-reporting is
   * not). Ignored without a predecessor; omitted means "read everything".
   */
  changed?: Iterable<Extent>;
}

export interface BaseTree {
  shape: TreeShape;
  root: Handle;
}

export interface BuildContext {
  store: ChunkStore;
  session: WriteSession;
  hasher: Hasher;
  /** Bytes of leaf data in flight (read, not yet stored). */
  inFlight: Limiter;
  signal?: AbortSignal;
  onLeaves?: (leaves: number, bytes: number) => void;
}

const MAX_RUN = 1024 * 1024;
const CHILD_PARALLEL = 4;

export function emptyStats(): VolumeStats {
  return {
    leavesRead: 0,
    bytesRead: 0,
    bytesHashed: 0,
    leavesZero: 0,
    leavesSameAsBase: 0,
    leavesDedup: 0,
    leavesStored: 0,
    bytesStored: 0,
    nodesStored: 0,
    subtreesReused: 0,
  };
}

/** Sorted, unique leaf indexes touched by `extents`, clipped to the volume. */
export function leavesOf(extents: Iterable<Extent>, shape: TreeShape): number[] {
  const set = new Set<number>();
  for (const e of extents) {
    if (!(e.length > 0) || !(e.offset >= 0)) continue;
    const first = Math.floor(e.offset / shape.leafSize);
    const last = Math.min(shape.leaves - 1, Math.floor((e.offset + e.length - 1) / shape.leafSize));
    for (let i = first; i <= last; i++) set.add(i);
  }
  return [...set].sort((a, b) => a - b);
}

export async function buildTree(
  ctx: BuildContext,
  src: VolumeSource,
  shape: TreeShape,
  base: BaseTree | null,
  stats: VolumeStats,
): Promise<Handle> {
  const b = new Builder(ctx, src, shape, base, stats);
  return b.node(shape.height, 0);
}

class Builder {
  private readonly changed: number[] | null;
  /** Leaves from here on are always read (the predecessor's size differs). */
  private readonly forcedFrom: number;

  constructor(
    private readonly ctx: BuildContext,
    private readonly src: VolumeSource,
    private readonly shape: TreeShape,
    private readonly base: BaseTree | null,
    private readonly stats: VolumeStats,
  ) {
    this.changed = base && src.changed ? leavesOf(src.changed, shape) : null;
    this.forcedFrom =
      !base || !src.changed
        ? 0
        : base.shape.size === shape.size
          ? shape.leaves
          : Math.floor(Math.min(base.shape.size, shape.size) / shape.leafSize);
  }

  private isChanged(i: number): boolean {
    if (i >= this.forcedFrom) return true;
    return this.changed !== null && lowerBound(this.changed, i) < this.changed.length && this.changed[lowerBound(this.changed, i)] === i;
  }

  private anyChanged(lo: number, hi: number): boolean {
    if (hi > this.forcedFrom) return true;
    if (!this.changed) return false;
    const k = lowerBound(this.changed, lo);
    return k < this.changed.length && this.changed[k]! < hi;
  }

  /** The predecessor's node (level, index) if it covers exactly the same leaves, else null. */
  private async baseHandle(level: number, index: number): Promise<Handle | null> {
    const base = this.base;
    if (!base || level > base.shape.height) return null;
    const [lo, hi] = leafRange(this.shape, level, index);
    const [blo, bhi] = leafRange(base.shape, level, index);
    if (lo !== blo || hi !== bhi || lo >= hi || leafLength(this.shape, hi - 1) !== leafLength(base.shape, hi - 1)) return null;
    return this.baseDescend(level, index);
  }

  /** Walks the predecessor's tree from its root down to node (level, index), which must exist. */
  private async baseDescend(level: number, index: number): Promise<Handle> {
    const base = this.base!;
    let h = base.root;
    for (let l = base.shape.height; l > level; l--) {
      const at = Math.floor(index / span(base.shape, l - level));
      const n = await this.ctx.store.node(h, l, childCount(base.shape, l, at));
      h = child(n, Math.floor(index / span(base.shape, l - 1 - level)) - at * base.shape.fanout);
    }
    return h;
  }

  async node(level: number, index: number): Promise<Handle> {
    if (this.ctx.signal?.aborted) throw new ArchiveError('EINVAL', 'archive aborted', { cause: this.ctx.signal.reason });
    const [lo, hi] = leafRange(this.shape, level, index);
    if (this.base && !this.anyChanged(lo, hi)) {
      const bh = await this.baseHandle(level, index);
      if (bh) {
        this.stats.subtreesReused++;
        return bh;
      }
    }
    const n = childCount(this.shape, level, index);
    const children: Handle[] = new Array<Handle>(n);
    if (level === 1) await this.leaves(index, n, children);
    else {
      // Children in parallel (bytes in flight are bounded by ctx.inFlight): with
      // scattered changes each subtree waits mostly on read and compress round trips.
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < n) {
          const c = next++;
          children[c] = await this.node(level - 1, index * this.shape.fanout + c);
        }
      };
      await Promise.all(Array.from({ length: Math.min(CHILD_PARALLEL, n) }, worker));
    }
    const enc = encodeNode(level, children);
    if (!enc) return ZERO_HANDLE;
    const h = this.ctx.hasher.hash(enc);
    if ((await this.ctx.session.put(h, TYPE_NODE, enc)) === 'stored') this.stats.nodesStored++;
    return h;
  }

  /** Fills out[] with the handles of the `n` leaves under level-1 node `index`. */
  private async leaves(index: number, n: number, out: Handle[]): Promise<void> {
    const first = index * this.shape.fanout;
    let baseNode: TreeNode | null = null;
    const base = this.base;
    if (base && index < nodesAt(base.shape, 1)) {
      baseNode = await this.ctx.store.node(await this.baseDescend(1, index), 1, childCount(base.shape, 1, index));
    }
    const baseLeaf = (i: number): Handle | null => {
      if (!baseNode || !base || i >= base.shape.leaves || leafLength(base.shape, i) !== leafLength(this.shape, i)) return null;
      return child(baseNode, i - first);
    };
    // Runs of consecutive leaves to read; the rest come from the predecessor.
    const runs: Array<[number, number]> = [];
    for (let i = first; i < first + n; i++) {
      const bl = this.base ? baseLeaf(i) : null;
      if (bl && !this.isChanged(i)) {
        out[i - first] = bl;
        continue;
      }
      const last = runs[runs.length - 1];
      if (last && last[1] === i && (i + 1 - last[0]) * this.shape.leafSize <= Math.max(MAX_RUN, this.shape.leafSize)) last[1] = i + 1;
      else runs.push([i, i + 1]);
    }
    await Promise.all(runs.map(([a, z]) => this.readRun(a, z, first, out, baseLeaf)));
  }

  private async readRun(a: number, z: number, first: number, out: Handle[], baseLeaf: (i: number) => Handle | null): Promise<void> {
    const off = a * this.shape.leafSize;
    const len = Math.min(this.shape.size, z * this.shape.leafSize) - off;
    await this.ctx.inFlight.acquire(len);
    let released = false;
    const release = (): void => {
      if (!released) this.ctx.inFlight.release(len);
      released = true;
    };
    try {
      if (this.ctx.signal?.aborted) throw new ArchiveError('EINVAL', 'archive aborted', { cause: this.ctx.signal.reason });
      const buf = await this.src.read(off, len);
      if (buf.length !== len)
        throw new ArchiveError('EIO', `volume ${this.src.volume}: source returned ${buf.length} bytes for ${len} at ${off}`);
      const st = this.stats;
      const put: Array<{ h: Handle; plain: Buffer }> = [];
      // Zero checks and hashes on the threadpool, while this thread reads and stores other runs.
      const handles = await this.ctx.hasher.leaves(buf, this.shape.leafSize);
      for (let i = a; i < z; i++) {
        const s = (i - a) * this.shape.leafSize;
        const data = buf.subarray(s, s + leafLength(this.shape, i));
        st.leavesRead++;
        st.bytesRead += data.length;
        const h = handles[i - a]!;
        if (isZeroHandle(h)) {
          st.leavesZero++;
          out[i - first] = ZERO_HANDLE;
          continue;
        }
        st.bytesHashed += data.length;
        out[i - first] = h;
        const baseH = baseLeaf(i);
        if (baseH && h.equals(baseH))
          st.leavesSameAsBase++; // temporal dedup: nothing to look up or store
        else put.push({ h, plain: data });
      }
      const res = await this.ctx.session.putMany(put.map((p) => ({ h: p.h, type: TYPE_LEAF, plain: p.plain })));
      for (const r of res) {
        if (r === 'stored') st.leavesStored++;
        else st.leavesDedup++;
      }
      this.ctx.onLeaves?.(z - a, len);
    } finally {
      release();
    }
  }
}

function lowerBound(a: number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
