/**
 * What archiving costs: after 1% of a volume changed, an incremental
 * archive reads and hashes about the changed bytes rounded to leaves (the
 * archiver's counters and the source's own count agree); five volumes
 * cloned from one base store about one base plus their deltas; a sparse
 * volume stores nothing for its holes.
 */
import test from 'ava';
import { ArchivePool, type Extent } from '../src/archive';
import { bufferSource, KiB, makeImage, MiB, readAll, sameBytes, tempDir } from './helpers/archive-fixtures';
import { pattern, rng } from './helpers/random';

const LEAF = 64 * KiB;

/** `count` writes of exactly `len` bytes at random 4 KiB-aligned offsets. */
function writeBlocks(img: Buffer, r: () => number, count: number, len: number): Extent[] {
  const out: Extent[] = [];
  for (let i = 0; i < count; i++) {
    const offset = Math.floor((r() * (img.length - len)) / (4 * KiB)) * 4 * KiB;
    pattern(len, Math.floor(r() * 1e9)).copy(img, offset);
    out.push({ offset, length: len });
  }
  return out;
}

function touchedLeaves(extents: Extent[]): number {
  const s = new Set<number>();
  for (const e of extents) for (let i = Math.floor(e.offset / LEAF); i <= Math.floor((e.offset + e.length - 1) / LEAF); i++) s.add(i);
  return s.size;
}

for (const [label, writes] of [
  [
    'scattered 4 KiB writes',
    (img: Buffer, r: () => number): Extent[] => writeBlocks(img, r, Math.round((img.length * 0.01) / (4 * KiB)), 4 * KiB),
  ],
  ['a few long runs', (img: Buffer, r: () => number): Extent[] => writeBlocks(img, r, 4, img.length / 400)],
] as const) {
  test(`incremental cost after 1% changed (${label}): read and hashed <= 1.1x the changed bytes rounded to leaves`, async (t) => {
    const pool = await ArchivePool.open(tempDir(t), { create: {} });
    const img = makeImage(64 * MiB, 3, 0.1);
    await pool.archive({ name: 'full', volumes: [bufferSource('v', img)] });
    const img2 = Buffer.from(img);
    const changed = writes(img2, rng(11));
    const changedBytes = changed.reduce((a, e) => a + e.length, 0);
    const rounded = touchedLeaves(changed) * LEAF;
    const src = bufferSource('v', img2, changed);
    const p = await pool.archive({ name: 'inc', predecessor: 'full', volumes: [src] });
    const st = p.volumes[0]!.stats;
    t.log(
      `changed ${(changedBytes / KiB).toFixed(0)} KiB in ${touchedLeaves(changed)} leaves (${(rounded / MiB).toFixed(2)} MiB rounded); read ${(st.bytesRead / MiB).toFixed(2)} MiB, hashed ${(st.bytesHashed / MiB).toFixed(2)} MiB, source asked for ${(src.bytes / MiB).toFixed(2)} MiB; stored ${(st.bytesStored / KiB).toFixed(0)} KiB; ${st.subtreesReused} subtrees reused`,
    );
    t.true(changedBytes >= 0.009 * img.length);
    t.true(st.bytesRead <= 1.1 * rounded, `read ${st.bytesRead} > 1.1 x ${rounded}`);
    t.true(st.bytesHashed <= 1.1 * rounded, `hashed ${st.bytesHashed} > 1.1 x ${rounded}`);
    t.true(src.bytes <= 1.1 * rounded, `source read ${src.bytes} > 1.1 x ${rounded}`);
    sameBytes(t, await readAll(pool, 'inc'), img2);
    await pool.close();
  });
}

test('five volumes cloned from one base archive to about one base plus their deltas', async (t) => {
  const base = makeImage(16 * MiB, 5, 0.05);
  const ref = await ArchivePool.open(tempDir(t), { create: {} });
  await ref.archive({ name: 'base', volumes: [bufferSource('base', base)] });
  const baseBytes = ref.stats().packBytes;
  await ref.close();

  const pool = await ArchivePool.open(tempDir(t), { create: {} });
  const r = rng(21);
  let deltaBytes = 0;
  const clones: Buffer[] = [];
  for (let c = 0; c < 5; c++) {
    const img = Buffer.from(base);
    const changed: Extent[] = [];
    for (let k = 0; k < 20; k++) {
      const off = Math.floor(r() * (img.length - 8 * KiB));
      pattern(8 * KiB, Math.floor(r() * 1e9)).copy(img, off); // incompressible delta
      changed.push({ offset: off, length: 8 * KiB });
    }
    deltaBytes += touchedLeaves(changed) * LEAF;
    clones.push(img);
    await pool.archive({ name: `clone${c}`, volumes: [bufferSource(`clone${c}`, img)] });
  }
  const s = pool.stats();
  t.log(
    `base alone ${(baseBytes / MiB).toFixed(2)} MiB; deltas ${(deltaBytes / MiB).toFixed(2)} MiB (leaves touched); five clones stored ${(s.packBytes / MiB).toFixed(2)} MiB for ${(s.logicalBytes / MiB).toFixed(0)} MiB logical (dedup ${s.dedupRatio.toFixed(1)}x)`,
  );
  t.true(s.packBytes <= 1.1 * (baseBytes + deltaBytes), `stored ${s.packBytes} > 1.1 x (${baseBytes} + ${deltaBytes})`);
  for (let c = 0; c < 5; c++) sameBytes(t, await readAll(pool, `clone${c}`), clones[c]!, `clone${c}`);
  await pool.close();
});

test('holes cost nothing: a sparse volume stores only its data, and reads report the zero extents', async (t) => {
  const pool = await ArchivePool.open(tempDir(t), { create: {} });
  const img = Buffer.alloc(256 * MiB);
  pattern(100 * KiB, 1).copy(img, 10 * MiB + 123);
  const p = await pool.archive({ name: 'sparse', volumes: [bufferSource('v', img)] });
  const st = p.volumes[0]!.stats;
  t.is(st.leavesStored, 2);
  t.is(st.leavesZero, 4096 - 2);
  t.true(pool.stats().packBytes < 200 * KiB + 64 * KiB);
  const alloc = await pool.openVolume('sparse').allocation(0, img.length);
  t.deepEqual(
    alloc.filter((e) => !e.zero),
    [{ offset: 10 * MiB, length: 2 * LEAF, zero: false }],
  );
  sameBytes(t, await readAll(pool, 'sparse'), img);
  await pool.close();
});
