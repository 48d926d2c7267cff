/**
 * Gc alongside running archives (one process, as the daemon runs it), and
 * forget policies. A writer paused in the middle of its archive, with
 * chunks already published, chunks found by global dedup in a point that
 * is then forgotten, and subtrees reused from a predecessor that is
 * forgotten too, loses nothing to a complete gc run meanwhile. Random
 * interleavings of archives, forgets and gcs keep every point readable.
 */
import test from 'ava';
import { parseForgetPolicy, planForget, type ArchivePool, type Extent, type VolumeSource } from '../src/archive';
import { bufferSource, KiB, makeImage, MiB, openPool, readAll, sameBytes, scribble, tempDir } from './helpers/archive-fixtures';
import { pattern, rng } from './helpers/random';

/** A source that stops before reading at or past `gateAt` until released. */
function gatedSource(
  volume: string,
  image: Buffer,
  changed: Extent[],
  gateAt: number,
): VolumeSource & { reached: Promise<void>; release(): void } {
  let release!: () => void;
  let reached!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const reachedP = new Promise<void>((r) => (reached = r));
  const copy = Buffer.from(image);
  return {
    volume,
    size: copy.length,
    changed,
    reached: reachedP,
    release,
    async read(offset, length) {
      if (offset + length > gateAt) {
        reached();
        await gate;
      }
      return Buffer.from(copy.subarray(offset, offset + length));
    },
  };
}

test('a writer paused mid-archive loses nothing to a whole gc (forgotten predecessor, dedup hits, published packs)', async (t) => {
  const pool = await openPool(tempDir(t));
  const size = 2 * MiB;
  const a = makeImage(size, 1, 0.1);
  const c = makeImage(size, 2, 0.1);
  await pool.archive({ name: 'A', volumes: [bufferSource('v', a)] });
  await pool.archive({ name: 'C', volumes: [bufferSource('v', c)] });
  // B = A with: [0, 512K) new data (stored, packs published), [512K, 1M) equal to C's (global dedup hits), the rest unchanged but [1.5M, 2M) changed after the gate.
  const b = Buffer.from(a);
  pattern(512 * KiB, 77).copy(b, 0);
  c.copy(b, 512 * KiB, 512 * KiB, 1024 * KiB);
  pattern(512 * KiB, 78).copy(b, 1536 * KiB);
  const src = gatedSource(
    'v',
    b,
    [
      { offset: 0, length: 1024 * KiB },
      { offset: 1536 * KiB, length: 512 * KiB },
    ],
    1536 * KiB,
  );
  const writing = pool.archive({ name: 'B', predecessor: 'A', volumes: [src] });
  await src.reached;
  await new Promise((r) => setTimeout(r, 100)); // let its full packs publish
  await pool.forget(['A', 'C']);
  const gc = await pool.gc({ repackBelow: 0.99 });
  t.log(
    `gc during the archive: cutoff ${gc.cutoff} < epoch ${gc.epoch}; swept ${gc.chunksSwept}, deleted ${gc.packsDeleted}, repacked ${gc.packsRepacked}`,
  );
  t.true(gc.cutoff < gc.epoch);
  t.true(gc.chunksSwept > 0, 'C and A had chunks of their own to sweep');
  src.release();
  const p = await writing;
  t.true(p.volumes[0]!.stats.leavesDedup > 0, 'B found chunks of C by global dedup');
  t.true(p.volumes[0]!.stats.subtreesReused + p.volumes[0]!.stats.leavesSameAsBase >= 0);
  sameBytes(t, await readAll(pool, 'B'), b);
  t.deepEqual((await pool.verify()).bad, []);
  // With the writer gone, a second gc may take what only it protected; B still reads.
  await pool.gc({ repackBelow: 0.99 });
  sameBytes(t, await readAll(pool, 'B'), b);
  t.deepEqual((await pool.verify()).bad, []);
  await pool.close();
});

test('random interleavings of archives, forgets and gcs keep every committed point readable', async (t) => {
  const pool = await openPool(tempDir(t));
  const r = rng(3);
  const size = 1 * MiB;
  let image = makeImage(size, 9, 0.2);
  const expected = new Map<string, Buffer>();
  const dirtySince = new Map<string, Extent[]>();
  let n = 0;
  const slow = (src: VolumeSource): VolumeSource => ({
    ...src,
    read: async (o, l) => {
      await new Promise((res) => setTimeout(res, Math.floor(r() * 3)));
      return src.read(o, l);
    },
  });
  const archiveOne = async (): Promise<void> => {
    const names = [...expected.keys()];
    const pred = names.length > 0 && r() < 0.8 ? names[Math.floor(r() * names.length)]! : null;
    const name = `p${++n}`;
    const snapshot = Buffer.from(image);
    const changed = pred ? [...dirtySince.get(pred)!] : undefined;
    dirtySince.set(name, []);
    try {
      await pool.archive({ name, predecessor: pred, volumes: [slow(bufferSource('v', snapshot, changed))] });
      expected.set(name, snapshot);
    } catch (err) {
      // The predecessor may have been forgotten meanwhile: only that is acceptable.
      if ((err as { code?: string }).code !== 'ENOENT') throw err;
      dirtySince.delete(name);
    }
  };
  for (let round = 0; round < 12; round++) {
    const ext = scribble(image, r, 6, 32 * KiB);
    for (const d of dirtySince.values()) d.push(...ext);
    const jobs: Array<Promise<unknown>> = [archiveOne(), archiveOne()];
    const names = [...expected.keys()];
    if (names.length > 2) {
      const victim = names[Math.floor(r() * names.length)]!;
      expected.delete(victim);
      jobs.push(pool.forget([victim]));
    }
    jobs.push(pool.gc({ repackBelow: 0.9 }).catch((err: { code?: string }) => (err.code === 'EBUSY' ? null : Promise.reject(err))));
    await Promise.all(jobs);
    image = Buffer.from(image);
  }
  await pool.gc({ repackBelow: 0.9 });
  for (const [name, img] of expected) sameBytes(t, await readAll(pool, name), img, name);
  t.deepEqual((await pool.verify()).bad, []);
  await pool.close();
});

test('an open view keeps its chunks through a forget and a gc until it is closed', async (t) => {
  const pool = await openPool(tempDir(t));
  const img = makeImage(512 * KiB, 12, 0);
  await pool.archive({ name: 'x', volumes: [bufferSource('v', img)] });
  const view = pool.openVolume('x');
  await pool.forget(['x']);
  t.is((await pool.gc()).chunksSwept, 0);
  sameBytes(t, await view.read(0, view.size), img);
  view.close();
  t.true((await pool.gc()).chunksSwept > 0);
  await pool.close();
});

test('forget policies: tiers by age, newest of each bucket, newest of each series always kept', (t) => {
  const day = 86_400_000;
  const now = Date.UTC(2025, 5, 30, 12);
  const points = Array.from({ length: 400 }, (_, i) => ({ name: `d${i}`, series: 'vol', time: now - (i * day) / 2 })); // two a day, 200 days back
  const plan = planForget(points, parseForgetPolicy('daily:30d, weekly:26w, monthly:forever'), now);
  const kept = new Set(plan.keep.map((k) => k.name));
  t.true(kept.has('d0'));
  t.is(plan.keep.length + plan.forget.length, 400);
  const keptDays = points.filter((p) => kept.has(p.name) && now - p.time <= 30 * day);
  t.true(keptDays.length >= 30 && keptDays.length <= 32, `${keptDays.length} daily points`);
  const keptWeeks = points.filter((p) => kept.has(p.name) && now - p.time > 30 * day && now - p.time <= 182 * day);
  t.true(keptWeeks.length >= 21 && keptWeeks.length <= 23, `${keptWeeks.length} weekly points`);
  t.true(points.filter((p) => kept.has(p.name) && now - p.time > 182 * day).length <= 2);
  t.deepEqual(
    planForget(points, parseForgetPolicy('last:3'), now).keep.map((k) => k.name),
    ['d0', 'd1', 'd2'],
  );
  // Every series keeps its newest point whatever the policy says.
  t.deepEqual(planForget([{ name: 'old', series: 's', time: 0 }], parseForgetPolicy('daily:1d'), now).forget, []);
  for (const bad of ['', 'daily', 'daily:30x', 'every:1h', 'last:0', 'fortnightly:2w']) {
    t.throws(() => parseForgetPolicy(bad), { code: 'EINVAL' } as never, bad);
  }
});

test('forgetByPolicy on a pool forgets what the plan says, and gc reclaims it', async (t) => {
  const pool: ArchivePool = await openPool(tempDir(t));
  const img = makeImage(512 * KiB, 4);
  const day = 86_400_000;
  const now = Date.UTC(2025, 0, 31);
  for (let i = 0; i < 10; i++) {
    pattern(32 * KiB, i).copy(img, 0);
    await pool.archive({
      name: `n${i}`,
      time: now - (9 - i) * day,
      predecessor: i > 0 ? `n${i - 1}` : null,
      volumes: [bufferSource('v', img, [{ offset: 0, length: 32 * KiB }])],
    });
  }
  const dry = await pool.forgetByPolicy('last:2, daily:5d', { now, dryRun: true });
  t.is(pool.list().length, 10);
  t.deepEqual(dry.forget.sort(), ['n0', 'n1', 'n2', 'n3']);
  await pool.forgetByPolicy('last:2, daily:5d', { now });
  t.deepEqual(
    pool.list().map((p) => p.name),
    ['n4', 'n5', 'n6', 'n7', 'n8', 'n9'],
  );
  const gc = await pool.gc();
  t.true(gc.chunksSwept >= 4);
  await pool.close();
});
