/**
 * The difference engine (seed 003 L338): the extents where two archived
 * volumes may differ, by walking both trees in parallel and pruning every
 * pair of equal handles. Cost grows with the differences, not the size.
 * Both trees must have the same leaf size and fan-out (points of one pool
 * do unless the pool's defaults changed between them). Where one volume
 * is longer, everything past the shorter one's end differs.
 */
import type { ChunkStore } from './chunk-store';
import { ArchiveError } from './errors';
import { child, childCount, leafLength, leafRange, type TreeShape } from './tree';
import type { Handle } from './handle';
import type { Extent } from './builder';

export interface TreeRef {
  shape: TreeShape;
  root: Handle;
}

/** A subtree of one side: a real node, the root seen from above the tree's height, or nothing. */
type Side = { h: Handle } | { virtual: true } | null;

export async function diffTrees(store: ChunkStore, a: TreeRef, b: TreeRef): Promise<Extent[]> {
  if (a.shape.leafSize !== b.shape.leafSize || a.shape.fanout !== b.shape.fanout) {
    throw new ArchiveError('EINVAL', 'archived volumes with different leaf sizes or fan-outs cannot be compared by tree');
  }
  const L = a.shape.leafSize;
  const F = a.shape.fanout;
  const out: Extent[] = [];
  const emit = (lo: number, hi: number): void => {
    const end = Math.min(hi, Math.max(a.shape.size, b.shape.size));
    if (end <= lo) return;
    const prev = out[out.length - 1];
    if (prev && prev.offset + prev.length === lo) prev.length += end - lo;
    else out.push({ offset: lo, length: end - lo });
  };
  const top = Math.max(a.shape.height, b.shape.height);
  const start = (t: TreeRef): Side => (t.shape.height === top ? { h: t.root } : { virtual: true });

  const children = async (t: TreeRef, s: Side, level: number, index: number): Promise<Side[]> => {
    if (s === null) return [];
    if ('virtual' in s) return [level - 1 === t.shape.height ? { h: t.root } : { virtual: true }];
    const n = await store.node(s.h, level, childCount(t.shape, level, index));
    return Array.from({ length: n.count }, (_, c) => ({ h: child(n, c) }));
  };
  // Same handle and same leaves covered, with the same lengths: equal content.
  const same = (x: Side, y: Side, level: number, index: number): boolean => {
    if (!x || !y || 'virtual' in x || 'virtual' in y || !x.h.equals(y.h)) return false;
    const [alo, ahi] = leafRange(a.shape, level, index);
    const [blo, bhi] = leafRange(b.shape, level, index);
    return alo === blo && ahi === bhi && (ahi === alo || leafLength(a.shape, ahi - 1) === leafLength(b.shape, bhi - 1));
  };

  const walk = async (x: Side, y: Side, level: number, index: number): Promise<void> => {
    if (x === null && y === null) return;
    if (same(x, y, level, index)) return;
    const w = F ** level;
    if (level === 0 || x === null || y === null) return emit(index * w * L, (index + 1) * w * L);
    const [cx, cy] = await Promise.all([children(a, x, level, index), children(b, y, level, index)]);
    for (let c = 0; c < Math.max(cx.length, cy.length); c++) await walk(cx[c] ?? null, cy[c] ?? null, level - 1, index * F + c);
  };
  await walk(start(a), start(b), top, 0);
  return out;
}
