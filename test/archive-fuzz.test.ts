/**
 * The archive's readers against hostile files (test/helpers/archive-fuzz.ts):
 * packs and their trailing indexes (plain and encrypted), manifests, bloom
 * filters and tree nodes, mutated at random. Clean errors only, no read
 * outside the file, nothing inconsistent accepted. Also a whole pool whose
 * packs were mangled opens, reports the damage and keeps reading the rest.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { ArchivePool, LocalBackend } from '../src/archive';
import { exerciseBloom, exerciseManifest, exerciseNode, exercisePack, makeSeeds, mutate, mutationArb } from './helpers/archive-fuzz';
import { bufferSource, makeImage, MiB, openPool, readAll, sameBytes, tempDir } from './helpers/archive-fixtures';
import { rng } from './helpers/random';

const RUNS = Number(process.env.REWIND_ARCHIVE_FUZZ_RUNS ?? 10000);

test('pack readers: every single-byte flip and every cut of a real pack fails cleanly or reads consistently', async (t) => {
  const seeds = await makeSeeds();
  let n = 0;
  for (const p of seeds.packs) {
    for (let at = 0; at < p.bytes.length; at += 3) {
      const b = Buffer.from(p.bytes);
      b[at]! ^= 0x20;
      await exercisePack(b, p.key);
      await exercisePack(p.bytes.subarray(0, at), p.key);
      n += 2;
    }
  }
  t.log(`${n} deterministic cases`);
  t.pass();
});

test(`random mutations (${RUNS} runs each): packs, manifests, bloom filters, nodes`, async (t) => {
  const seeds = await makeSeeds();
  await fc.assert(
    fc.asyncProperty(fc.nat(), mutationArb, async (pick, ms) => {
      const p = seeds.packs[pick % seeds.packs.length]!;
      await exercisePack(mutate(p.bytes, ms), p.key);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(fc.nat(), mutationArb, (pick, ms) => {
      const m = seeds.manifests[pick % seeds.manifests.length]!;
      exerciseManifest(mutate(m.bytes, ms), m.key);
      exerciseBloom(mutate(seeds.bloom, ms));
      exerciseNode(mutate(seeds.node, ms));
    }),
    { numRuns: RUNS },
  );
  t.pass();
});

test('a pool with mangled packs opens from scratch, reports what it could not index, and reads the points it can', async (t) => {
  const dir = tempDir(t);
  const pool = await openPool(dir);
  const img = makeImage(1 * MiB, 2);
  await pool.archive({ name: 'p', volumes: [bufferSource('v', img)] });
  await pool.close();
  const r = rng(9);
  const packs = fs
    .readdirSync(path.join(dir, 'store', 'packs'), { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.pack'));
  for (let round = 0; round < 6; round++) {
    // A copy of the store with one pack mangled, opened with a fresh state directory (rebuild from the packs).
    const copy = path.join(dir, `copy${round}`);
    fs.cpSync(path.join(dir, 'store'), path.join(copy, 'store'), { recursive: true });
    const victim = path.join(copy, 'store', 'packs', packs[Math.floor(r() * packs.length)]!);
    const b = fs.readFileSync(victim);
    fs.writeFileSync(
      victim,
      mutate(b, [
        { k: 'u32', at: Math.floor(r() * b.length), v: 0xffffffff },
        { k: 'cut', at: b.length - Math.floor(r() * 40) },
      ]),
    );
    const again = await ArchivePool.open(path.join(copy, 'state'), { backend: new LocalBackend(path.join(copy, 'store')) });
    const v = await again.verify();
    const damaged = again.recovery.damagedPacks.length;
    t.log(`round ${round}: ${damaged} pack(s) not indexable, ${v.bad.length} bad chunk(s)`);
    try {
      sameBytes(t, await readAll(again, 'p'), img);
      t.true(v.bad.length === 0, 'a point that reads has no bad chunks');
    } catch (err) {
      t.is((err as { code?: string }).code, 'EIO', `round ${round}: ${(err as Error).message}`);
      t.true(v.bad.length > 0 || damaged > 0, `round ${round}: a failing read is explained by verify or recovery`);
    }
    await again.close();
  }
});
