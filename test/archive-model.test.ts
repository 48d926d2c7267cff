/**
 * Model check of the archive pool: random write histories of two volumes
 * (in memory), archived at random moments as group points built from a
 * random surviving predecessor with only the extents written since it,
 * resizes, forgets, gcs and reopens. After every gc and at the end, every
 * surviving point reads byte for byte what the volumes held when it was
 * archived, the difference engine reports exactly the leaves that differ
 * between neighbouring points, and verify finds every reachable chunk
 * intact (gc never removed one).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { ArchivePool, type Extent } from '../src/archive';
import { bufferSource, KiB, openPool, readAll, tempDir } from './helpers/archive-fixtures';
import { pattern } from './helpers/random';

type Op =
  | { k: 'write'; vol: number; at: number; len: number; seed: number; zero: boolean }
  | { k: 'resize'; vol: number; size: number }
  | { k: 'archive'; pred: number | null; leafSize: 16 | 32 }
  | { k: 'forget'; pick: number }
  | { k: 'gc' }
  | { k: 'reopen' };

const VOLS = ['a', 'b'];

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant('write' as const),
      vol: fc.integer({ min: 0, max: 1 }),
      at: fc.double({ min: 0, max: 1, noNaN: true }),
      len: fc.integer({ min: 1, max: 40 * KiB }),
      seed: fc.nat(),
      zero: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant('resize' as const),
      vol: fc.integer({ min: 0, max: 1 }),
      size: fc.integer({ min: 0, max: 2048 }).map((n) => n * 512),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      k: fc.constant('archive' as const),
      pred: fc.option(fc.nat(), { nil: null }),
      leafSize: fc.constantFrom(16 as const, 32 as const),
    }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('forget' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('gc' as const) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('reopen' as const) }) },
);

interface ModelPoint {
  images: Buffer[];
  /** Extents written (per volume) since this point was archived. */
  dirty: Extent[][];
}

/**
 * The difference engine against the model: every differing byte lies in a
 * reported extent, and every reported leaf really differs (or lies past
 * the shorter volume's end, or has another length there).
 */
async function checkDiff(pool: ArchivePool, a: string, b: string, v: number, x: Buffer, y: Buffer): Promise<void> {
  const d = await pool.diff({ point: a, volume: VOLS[v] }, { point: b, volume: VOLS[v] });
  const leaf = pool.point(a).leafSize;
  const inside = (i: number): boolean => d.some((e) => i >= e.offset && i < e.offset + e.length);
  const n = Math.max(x.length, y.length);
  for (let i = 0; i < n; i++)
    if ((i >= x.length || i >= y.length || x[i] !== y[i]) && !inside(i)) throw new Error(`diff ${a}..${b}/${VOLS[v]} misses byte ${i}`);
  for (const e of d) {
    if (e.offset + e.length > n) throw new Error(`diff ${a}..${b} reports past the end`);
    for (let o = e.offset; o < e.offset + e.length; o += leaf) {
      const end = Math.min(o + leaf, n);
      const same =
        end <= Math.min(x.length, y.length) &&
        x.subarray(o, end).equals(y.subarray(o, end)) &&
        Math.min(o + leaf, x.length) === Math.min(o + leaf, y.length);
      if (same) throw new Error(`diff ${a}..${b}/${VOLS[v]} reports the equal leaf at ${o}`);
    }
  }
}

async function checkAll(pool: ArchivePool, points: Map<string, ModelPoint>): Promise<void> {
  for (const [name, p] of points) {
    for (let v = 0; v < VOLS.length; v++) {
      const got = await readAll(pool, name, VOLS[v]);
      if (!got.equals(p.images[v]!)) throw new Error(`point ${name} volume ${VOLS[v]} reads differently from the model`);
    }
  }
  const names = [...points.keys()];
  for (let i = 0; i + 1 < names.length; i++) {
    const a = names[i]!;
    const b = names[i + 1]!;
    if (pool.point(a).leafSize !== pool.point(b).leafSize) continue;
    for (let v = 0; v < VOLS.length; v++) await checkDiff(pool, a, b, v, points.get(a)!.images[v]!, points.get(b)!.images[v]!);
  }
  const rep = await pool.verify();
  if (rep.bad.length > 0) throw new Error(`verify found bad chunks: ${JSON.stringify(rep.bad.slice(0, 3))}`);
}

async function run(dir: string, ops: Op[]): Promise<void> {
  const images = [Buffer.alloc(256 * KiB), Buffer.alloc(300 * KiB + 512)];
  const points = new Map<string, ModelPoint>();
  let pool = await openPool(dir);
  let n = 0;
  try {
    for (const op of ops) {
      switch (op.k) {
        case 'write': {
          const img = images[op.vol]!;
          if (img.length === 0) break;
          const len = Math.min(op.len, img.length);
          const at = Math.floor(op.at * (img.length - len));
          if (op.zero) img.fill(0, at, at + len);
          else pattern(len, op.seed).copy(img, at);
          for (const p of points.values()) p.dirty[op.vol]!.push({ offset: at, length: len });
          break;
        }
        case 'resize': {
          const old = images[op.vol]!;
          const img = Buffer.alloc(op.size);
          old.copy(img, 0, 0, Math.min(old.length, op.size));
          images[op.vol] = img;
          break; // the builder re-reads whatever lies past the shorter size
        }
        case 'archive': {
          const names = [...points.keys()];
          const pred = op.pred === null || names.length === 0 ? null : names[op.pred % names.length]!;
          const name = `p${++n}`;
          await pool.archive({
            name,
            group: 'g',
            seq: n,
            time: n * 1000,
            predecessor: pred,
            ...(pred ? {} : { leafSize: op.leafSize * KiB }),
            volumes: VOLS.map((vol, v) => bufferSource(vol, images[v]!, pred ? points.get(pred)!.dirty[v] : undefined)),
          });
          points.set(name, { images: images.map((b) => Buffer.from(b)), dirty: VOLS.map(() => []) });
          break;
        }
        case 'forget': {
          const names = [...points.keys()];
          if (names.length === 0) break;
          const victim = names[op.pick % names.length]!;
          await pool.forget([victim]);
          points.delete(victim);
          break;
        }
        case 'gc':
          await pool.gc({ repackBelow: 0.9 });
          await checkAll(pool, points);
          break;
        case 'reopen':
          await pool.close();
          pool = await ArchivePool.open(dir);
          break;
      }
    }
    await checkAll(pool, points);
    // Forget everything: a gc then leaves no chunk and no pack behind.
    await pool.forget([...points.keys()]);
    await pool.gc();
    const s = pool.stats();
    if (s.chunks !== 0 || s.packs !== 0) throw new Error(`after forgetting all: ${s.chunks} chunks in ${s.packs} packs remain`);
  } finally {
    await pool.close();
  }
}

test('random histories: every surviving archived point reads as the model; gc keeps every reachable chunk', async (t) => {
  const root = tempDir(t, 'rw-arch-model-');
  let i = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 28 }), async (ops) => {
      const dir = path.join(root, `run${i++}`);
      try {
        await run(dir, ops);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }),
    { numRuns: Number(process.env.REWIND_ARCHIVE_MODEL_RUNS ?? 25) },
  );
  t.pass();
});
