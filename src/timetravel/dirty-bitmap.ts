/**
 * What changed between two points, published the way NBD clients already
 * read changed blocks: as qemu's `qemu:dirty-bitmap:NAME` meta context
 * (flag NBD_STATE_DIRTY = 1 on changed extents). qemu's NBD client reads
 * such a context in place of base:allocation with
 * `x-dirty-bitmap=qemu:dirty-bitmap:NAME` in its --image-opts (then
 * `qemu-img map` shows changed extents as "data": false), and libnbd reads
 * it with add_meta_context + block_status; an incremental backup copies
 * just those extents onto a copy of the older point.
 *
 * Which bitmaps a point-in-time export offers (ViewBitmaps):
 *   - a diff export NAME (A -> B): `qemu:dirty-bitmap:NAME`, and
 *     `qemu:dirty-bitmap:@seq:A` (listed);
 *   - any snapshot, clone or diff export at B: `qemu:dirty-bitmap:POINT` for
 *     any point A up to B (a marker name, @seq:N, @txn:N, a time): the
 *     blocks writes of the volume touched in (A, B]; for a clone also every
 *     block it holds itself (its own writes differ from B too). Markers
 *     before B are listed; other points are selectable without being listed.
 * base:allocation stays the image's own, truthful allocation.
 */
import { STATE_DIRTY, type Extent, type MetaContext, type MetaContextSource } from '../nbd';
import type { BlockRunLite } from './diff';

export const BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/** Most blocks one answer looks at when a per-block test (a clone's own writes) is involved. */
const SCAN_BLOCKS = 1 << 16;

/** A dirty bitmap from sorted, disjoint block runs, plus blocks `alsoDirty` says are (a clone's writes, read live). */
export class DirtyBitmap implements MetaContext {
  constructor(
    readonly name: string,
    private readonly runs: BlockRunLite[],
    private readonly blockSize: number,
    private readonly size: number,
    private readonly alsoDirty: ((block: number) => boolean) | null = null,
  ) {}

  /** Blocks marked dirty, by the runs only. */
  get dirtyBlocks(): number {
    return this.runs.reduce((a, r) => a + r.count, 0);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const bs = this.blockSize;
    const runs = this.runs;
    const end = Math.min(this.size, offset + length);
    let b = Math.floor(offset / bs);
    const lastBlock = Math.ceil(end / bs);
    // A per-block test is bounded per answer; the client asks again from where it stops.
    const limit = this.alsoDirty ? Math.min(lastBlock, b + SCAN_BLOCKS) : lastBlock;
    const out: Extent[] = [];
    let pos = offset;
    const push = (stopBlock: number, dirty: boolean): void => {
      const stop = Math.min(this.size, stopBlock * bs);
      const flags = dirty ? STATE_DIRTY : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += stop - pos;
      else out.push({ length: stop - pos, flags });
      pos = stop;
    };
    let i = this.firstRun(b);
    while (b < limit) {
      while (i < runs.length && runs[i]!.start + runs[i]!.count <= b) i++;
      const r = runs[i];
      const inRun = r !== undefined && r.start <= b;
      const next = Math.min(inRun ? r.start + r.count : r ? r.start : Infinity, limit);
      if (inRun || !this.alsoDirty) {
        push(next, inRun);
        b = next;
        continue;
      }
      const d = this.alsoDirty(b);
      let n = b + 1;
      while (n < next && this.alsoDirty(n) === d) n++;
      push(n, d);
      b = n;
    }
    return out;
  }

  private firstRun(blk: number): number {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      if (this.runs[m]!.start + this.runs[m]!.count <= blk) lo = m + 1;
      else hi = m;
    }
    return lo;
  }
}

export interface ViewBitmapsOptions {
  /** Bitmaps this view has by its own names (a diff export's), with their runs. */
  own: Array<{ leaf: string; runs: () => Promise<BlockRunLite[]> }>;
  /** Runs changed from point `leaf` up to the view's point; null when `leaf` names no point at or before it. */
  since: (leaf: string) => Promise<BlockRunLite[] | null>;
  /** Leaves worth listing besides the own ones (markers before the view's point). */
  listed: () => string[];
  blockSize: number;
  size: number;
  /** A clone: blocks it holds itself are dirty whatever the point. */
  alsoDirty?: (block: number) => boolean;
}

/** The qemu:dirty-bitmap contexts of a snapshot, clone or diff export (see the file comment). */
export class ViewBitmaps implements MetaContextSource {
  private readonly cache = new Map<string, Promise<DirtyBitmap | null>>();

  constructor(private readonly o: ViewBitmapsOptions) {}

  list(): string[] {
    return [...new Set([...this.o.own.map((x) => x.leaf), ...this.o.listed()])].map((l) => BITMAP_PREFIX + l);
  }

  open(name: string): Promise<DirtyBitmap | null> {
    if (!name.startsWith(BITMAP_PREFIX) || name.length === BITMAP_PREFIX.length) return Promise.resolve(null);
    let p = this.cache.get(name);
    if (!p) {
      p = this.build(name);
      // A point that does not resolve (now) is not cached: it may later.
      p.then(
        (b) => b || this.cache.delete(name),
        () => this.cache.delete(name),
      );
      this.cache.set(name, p);
      while (this.cache.size > 32) this.cache.delete(this.cache.keys().next().value!);
    }
    return p;
  }

  private async build(name: string): Promise<DirtyBitmap | null> {
    const leaf = name.slice(BITMAP_PREFIX.length);
    const own = this.o.own.find((x) => x.leaf === leaf);
    let runs: BlockRunLite[] | null;
    try {
      runs = own ? await own.runs() : await this.o.since(leaf);
    } catch {
      // A leaf that is no point (or a refused one): no such context, as the protocol wants for unknown names.
      return null;
    }
    return runs && new DirtyBitmap(name, runs, this.o.blockSize, this.o.size, this.o.alsoDirty ?? null);
  }
}
