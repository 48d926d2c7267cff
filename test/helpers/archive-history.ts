/**
 * A deterministic history of one volume for the crash tests: generation g
 * is the base image with the writes of generations 1..g applied, so parent
 * and child agree on every point's content without sharing memory.
 */
import type { ArchivePool, Extent } from '../../src/archive';
import { KiB, makeImage, MiB, scribble } from './archive-fixtures';
import { rng } from './random';

const SIZE = 3 * MiB;
const cache = new Map<number, { image: Buffer; changed: Extent[] }>();

/** The image at generation g and the extents written since g-1. */
export function generation(g: number): { image: Buffer; changed: Extent[] } {
  const hit = cache.get(g);
  if (hit) return hit;
  let image: Buffer;
  let changed: Extent[] = [];
  if (g <= 1) image = makeImage(SIZE, 99, 0.15);
  else {
    image = Buffer.from(generation(g - 1).image);
    changed = scribble(image, rng(1000 + g), 40, 24 * KiB);
  }
  const v = { image, changed };
  cache.set(g, v);
  return v;
}

/** The newest generation archived in the pool (0 if none). */
export function lastGeneration(pool: ArchivePool): number {
  return Math.max(0, ...pool.list().map((p) => Number(p.name.slice(1))));
}
