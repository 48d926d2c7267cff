/**
 * Marking what points reference (the mark phase of gc, and the reachable
 * set of verify). Trees are walked from their roots; a node already
 * marked is not entered again, so the many points that share most of
 * their tree cost only their differences (the effect seed 003 L344-L350
 * gets by differencing neighbours in the temporal graph).
 *
 * Nodes are remembered exactly (skipping a subtree on a false match would
 * lose its chunks); leaves, which are most of the chunks, by an 8-byte
 * digest prefix in an open-addressing table (16 bytes per leaf at the
 * worst load): a false match only keeps a dead chunk one more gc.
 */
import type { ChunkStore } from './chunk-store';
import { handleHex, isZeroHandle, type Handle } from './handle';
import { child, childCount, type TreeShape } from './tree';

export class FingerprintSet {
  private table = new Uint32Array(2 * 1024);
  private count = 0;

  get size(): number {
    return this.count;
  }

  private static fp(h: Buffer): [number, number] {
    const hi = h.readUInt32LE(1);
    const lo = h.readUInt32LE(5);
    return hi === 0 && lo === 0 ? [0, 1] : [hi, lo];
  }

  /** Adds h; returns false if it was (probably) there already. */
  add(h: Buffer): boolean {
    if ((this.count + 1) * 2 > this.table.length / 2) this.grow();
    const [hi, lo] = FingerprintSet.fp(h);
    return this.insert(hi, lo);
  }

  has(h: Buffer): boolean {
    const [hi, lo] = FingerprintSet.fp(h);
    const t = this.table;
    const mask = t.length / 2 - 1;
    for (let i = lo & mask; ; i = (i + 1) & mask) {
      const a = t[2 * i]!;
      const b = t[2 * i + 1]!;
      if (a === 0 && b === 0) return false;
      if (a === hi && b === lo) return true;
    }
  }

  private insert(hi: number, lo: number): boolean {
    const t = this.table;
    const mask = t.length / 2 - 1;
    for (let i = lo & mask; ; i = (i + 1) & mask) {
      const a = t[2 * i]!;
      const b = t[2 * i + 1]!;
      if (a === hi && b === lo) return false;
      if (a === 0 && b === 0) {
        t[2 * i] = hi;
        t[2 * i + 1] = lo;
        this.count++;
        return true;
      }
    }
  }

  private grow(): void {
    const old = this.table;
    this.table = new Uint32Array(old.length * 2);
    this.count = 0;
    for (let i = 0; i < old.length; i += 2) if (old[i] !== 0 || old[i + 1] !== 0) this.insert(old[i]!, old[i + 1]!);
  }
}

export class MarkSet {
  readonly nodes = new Set<string>();
  readonly leaves = new FingerprintSet();

  has(h: Buffer): boolean {
    return this.leaves.has(h) || this.nodes.has(handleHex(h));
  }
}

export interface MarkOptions {
  /** Called for each node read (progress). */
  onNode?: () => void;
  /** Called for each leaf handle marked for the first time (not ZERO). */
  onLeaf?: (h: Handle) => void;
  /** Verify: keep walking past nodes that cannot be read, and collect them. Gc leaves this unset and fails. */
  unreadable?: Map<string, Error>;
}

/** Marks every chunk of one tree that is not marked yet. */
export async function markTree(store: ChunkStore, shape: TreeShape, root: Handle, marks: MarkSet, opts: MarkOptions = {}): Promise<void> {
  const walk = async (h: Handle, level: number, index: number): Promise<void> => {
    if (isZeroHandle(h)) return;
    if (level === 0) {
      if (marks.leaves.add(h)) opts.onLeaf?.(h);
      return;
    }
    const hex = handleHex(h);
    if (marks.nodes.has(hex)) return;
    marks.nodes.add(hex);
    let n;
    try {
      n = await store.node(h, level, childCount(shape, level, index));
    } catch (err) {
      if (!opts.unreadable) throw err;
      opts.unreadable.set(hex, err as Error);
      return;
    }
    opts.onNode?.();
    for (let c = 0; c < n.count; c++) await walk(child(n, c), level - 1, index * shape.fanout + c);
  };
  await walk(root, shape.height, 0);
}
