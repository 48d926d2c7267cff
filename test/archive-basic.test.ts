/**
 * The archive pool's core paths: full and incremental archives read back
 * byte for byte, zero leaves cost nothing, temporal dedup reads only what
 * changed, the difference engine, forget + gc, reopen.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArchivePool } from '../src/archive';
import { bufferSource, makeImage, MiB, KiB, openPool, readAll, sameBytes, scribble, tempDir } from './helpers/archive-fixtures';
import { pattern, rng } from './helpers/random';

test('full archive, incremental archive, read back, diff, reopen', async (t) => {
  const dir = tempDir(t);
  const pool = await openPool(dir);
  const img = makeImage(3 * MiB + 5000, 1);
  const p1 = await pool.archive({ name: 'p1', volumes: [bufferSource('vol', img)], seq: 10, time: 1000 });
  t.is(p1.volumes[0]!.stats.leavesRead, Math.ceil(img.length / (16 * KiB)));
  sameBytes(t, await readAll(pool, 'p1'), img);

  const r = rng(7);
  const img2 = Buffer.from(img);
  const changed = scribble(img2, r, 20);
  const p2 = await pool.archive({ name: 'p2', predecessor: 'p1', volumes: [bufferSource('vol', img2, changed)], seq: 20, time: 2000 });
  sameBytes(t, await readAll(pool, 'p2'), img2);
  sameBytes(t, await readAll(pool, 'p1'), img);
  t.true(p2.volumes[0]!.stats.leavesRead <= 40, `read ${p2.volumes[0]!.stats.leavesRead} leaves`);

  const d = await pool.diff({ point: 'p1' }, { point: 'p2' });
  // Every real difference is inside a reported extent.
  const missed: number[] = [];
  for (let i = 0; i < img.length; i++) {
    if (img[i] !== img2[i] && !d.some((e) => i >= e.offset && i < e.offset + e.length)) missed.push(i);
  }
  t.deepEqual(missed, []);
  t.true(d.reduce((a, e) => a + e.length, 0) <= 40 * 16 * KiB);
  t.deepEqual(await pool.diff({ point: 'p1' }, { point: 'p1' }), []);
  await pool.close();

  const again = await ArchivePool.open(dir);
  sameBytes(t, await readAll(again, 'p2'), img2);
  t.deepEqual(
    again.list().map((p) => p.name),
    ['p1', 'p2'],
  );
  await again.forget(['p1']);
  const gc = await again.gc();
  t.true(gc.chunksSwept > 0);
  sameBytes(t, await readAll(again, 'p2'), img2);
  const v = await again.verify();
  t.deepEqual(v.bad, []);
  await again.close();
});

test('many concurrent chunks across pack rotations: each lands in exactly one sealed pack', async (t) => {
  const dir = tempDir(t);
  const pool = await ArchivePool.open(dir, { create: { leafSize: 16 * KiB, fanout: 16, packTarget: 64 * KiB, level: 1 } });
  const img = Buffer.concat(Array.from({ length: 512 }, (_, i) => pattern(16 * KiB, i + 1)));
  const p = await pool.archive({ name: 'many', volumes: [bufferSource('v', img)] });
  const s = pool.stats();
  t.is(p.volumes[0]!.stats.leavesStored, 512);
  t.is(s.chunks, 512 + p.volumes[0]!.stats.nodesStored);
  t.true(s.packs > 100);
  sameBytes(t, await readAll(pool, 'many'), img);
  const v = await pool.verify();
  t.is(v.chunksChecked, s.chunks);
  t.deepEqual(v.bad, []);
  await pool.close();
});

test('bloom filter: no false negatives, about 1% false positives at capacity, a stale file is rebuilt', async (t) => {
  const { BloomFilter } = await import('../src/archive/bloom');
  const { randomBytes } = await import('node:crypto');
  const f = BloomFilter.forCapacity(20_000);
  const keys = Array.from({ length: f.capacity }, () => Buffer.concat([Buffer.from([1]), randomBytes(32)]));
  for (const k of keys) f.add(k);
  t.true(keys.every((k) => f.mightContain(k)));
  let fp = 0;
  for (let i = 0; i < 50_000; i++) if (f.mightContain(Buffer.concat([Buffer.from([1]), randomBytes(32)]))) fp++;
  t.log(`${f.capacity} entries in ${f.byteLength} bytes: ${(fp / 500).toFixed(2)}% false positives`);
  t.true(fp < 1000, `${fp} false positives in 50000`);
  const { filter, generation } = BloomFilter.deserialize(f.serialize(42));
  t.is(generation, 42);
  t.true(keys.every((k) => filter.mightContain(k)));

  // A pool whose bloom file is stale (an older generation) rebuilds it at open.
  const dir = tempDir(t);
  const pool = await openPool(dir);
  await pool.archive({ name: 'a', volumes: [bufferSource('v', makeImage(256 * KiB, 1, 0))] });
  await pool.close();
  const stale = fs.readFileSync(path.join(dir, 'bloom.bin'));
  const again = await ArchivePool.open(dir);
  await again.archive({ name: 'b', volumes: [bufferSource('v', makeImage(256 * KiB, 2, 0))] });
  await again.close();
  fs.writeFileSync(path.join(dir, 'bloom.bin'), stale); // as after a crash: the file predates b's chunks
  const third = await ArchivePool.open(dir);
  const p = await third.archive({ name: 'c', volumes: [bufferSource('v', makeImage(256 * KiB, 2, 0))] });
  t.is(p.volumes[0]!.stats.leavesStored, 0, "b's chunks are found, not stored again");
  await third.close();
});

test('native handles equal node:crypto: leaves (zero, partial, SHA-256 and HMAC) and decompress-and-digest batches with bad frames', async (t) => {
  const { makeHasher } = await import('../src/archive/handle');
  const { zstdCompressSync, zstdDigestBatch } = await import('../src/native');
  const { createHash, createHmac, randomBytes } = await import('node:crypto');
  const leaf = 64 * KiB;
  // Leaves: random, zero, random with one non-zero byte at the very end, a short tail.
  const buf = Buffer.alloc(3 * leaf + 1000);
  randomBytes(leaf).copy(buf, 0);
  buf[3 * leaf - 1] = 1;
  randomBytes(1000).copy(buf, 3 * leaf);
  const key = randomBytes(32);
  for (const [hasher, ref] of [
    [makeHasher('sha256'), () => createHash('sha256')],
    [makeHasher('hmac-sha256', key), () => createHmac('sha256', key)],
  ] as const) {
    const hs = await hasher.leaves(buf, leaf);
    t.is(hs.length, 4);
    for (let i = 0; i < 4; i++) {
      const data = buf.subarray(i * leaf, Math.min(buf.length, (i + 1) * leaf));
      if (i === 1) t.true(hs[i]!.equals(Buffer.alloc(33)), 'an all-zero leaf has the zero handle');
      else {
        t.true(hs[i]!.equals(hasher.hash(data)), `leaf ${i}`);
        t.true(hs[i]!.subarray(1).equals(ref().update(data).digest()));
      }
    }
    const plain = buf.subarray(0, leaf);
    const z = zstdCompressSync(plain, 3);
    const bad = Buffer.from(z);
    bad[bad.length - 5]! ^= 0xff;
    const r = await zstdDigestBatch([z, plain, z, Buffer.from('not zstd'), bad], [leaf, -1, leaf + 1, leaf, leaf], hasher.nativeKey);
    t.true((r[0] as Buffer).equals(hasher.hash(plain)));
    t.true((r[1] as Buffer).equals(hasher.hash(plain)));
    t.regex(r[2] as string, /expected 65537/);
    t.regex(r[3] as string, /not a zstd frame/);
    t.true(typeof r[4] === 'string' || !(r[4] as Buffer).equals(hasher.hash(plain)), 'a damaged frame never yields the right handle');
  }
});

test('archive jobs run at the background nice level on threadpool threads, which return to their own level after', async (t) => {
  const { digestLeaves, setBackgroundNice } = await import('../src/native');
  const { randomBytes } = await import('node:crypto');
  // Root (as the suite runs) can return a thread to nice 0; the daemon sets 19.
  t.is(setBackgroundNice(19), 19);
  t.teardown(() => setBackgroundNice(0));
  const niceOf = (): number[] =>
    fs.readdirSync('/proc/self/task').map((tid) => {
      const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
    });
  const big = randomBytes(256 * MiB);
  let seen = 0;
  const job = digestLeaves(big, 64 * KiB, null);
  const poll = setInterval(() => (seen = Math.max(seen, ...niceOf())), 1);
  await job;
  clearInterval(poll);
  t.is(seen, 19, 'a thread ran the job at nice 19');
  t.deepEqual([...new Set(niceOf())], [0], 'every thread is back at nice 0');
});
