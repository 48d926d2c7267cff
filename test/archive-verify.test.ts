/**
 * Verify and the quarantine: a flipped byte, a truncated pack and a missing
 * pack are found, each bad chunk is reported with its pack and every point
 * that references it, reads of those points fail with EIO naming the
 * chunk while other points still read, and archiving the same data again
 * heals the pool. Encryption: a round trip, a wrong key refused at open,
 * a flipped byte caught by authentication.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArchivePool, generateKeyFile, type ArchiveError } from '../src/archive';
import type { PackEntry } from '../src/archive/pack-format';
import { readPackIndex } from '../src/archive/pack-reader';
import { bufferSource, KiB, makeImage, MiB, openPool, readAll, sameBytes, SMALL, tempDir } from './helpers/archive-fixtures';
import { pattern } from './helpers/random';

function packFiles(dir: string): string[] {
  const root = path.join(dir, 'store', 'packs');
  return fs
    .readdirSync(root, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.pack'))
    .map((f) => path.join(root, f));
}

/** Three points: "shared" data in all, "only1" only in p1, "only3" only in p3. */
async function threePoints(dir: string, opts = {}): Promise<{ pool: ArchivePool; images: Buffer[] }> {
  const pool = await ArchivePool.open(dir, { create: SMALL, ...opts });
  const base = makeImage(1 * MiB, 8, 0);
  const images: Buffer[] = [];
  for (let i = 1; i <= 3; i++) {
    const img = Buffer.from(base);
    pattern(64 * KiB, 100 + i).copy(img, 512 * KiB); // each point's own leaves
    images.push(img);
    await pool.archive({ name: `p${i}`, volumes: [bufferSource('v', img)] });
  }
  return { pool, images };
}

/** The pack holding a leaf with this content, and the record's offset in it. */
function findRecord(dir: string, needle: Buffer): { file: string; at: number } | null {
  // Payloads are zstd frames of the leaf; search for the record header's handle instead.
  const handle = Buffer.concat([Buffer.from([1]), createHash('sha256').update(needle).digest()]);
  for (const file of packFiles(dir)) {
    const b = fs.readFileSync(file);
    const at = b.indexOf(handle);
    if (at > 0 && b.subarray(at - 4, at).toString('latin1') === 'RWC1') return { file, at: at - 4 };
  }
  return null;
}

test('a flipped byte: verify names the chunk, its pack and the one point using it; reads fail with EIO there only; re-archiving heals', async (t) => {
  const dir = tempDir(t);
  const { pool, images } = await threePoints(dir);
  const leaf = images[0]!.subarray(512 * KiB, 512 * KiB + 16 * KiB);
  const rec = findRecord(dir, leaf)!;
  t.truthy(rec);
  const b = fs.readFileSync(rec.file);
  b[rec.at + 56 + 10] ^= 0x01; // inside the payload
  fs.writeFileSync(rec.file, b);
  await pool.close();

  const again = await ArchivePool.open(dir); // a fresh process: nothing cached
  const rep = await again.verify();
  t.is(rep.bad.length, 1);
  const bad = rep.bad[0]!;
  t.deepEqual(bad.points, ['p1']);
  t.is(bad.pack, path.relative(path.join(dir, 'store'), rec.file));
  t.is(bad.offset, rec.at);
  t.regex(bad.reason, /CRC/);
  const err = await t.throwsAsync<ArchiveError>(readAll(again, 'p1'));
  t.is(err!.code, 'EIO');
  t.is(err!.chunk, bad.chunk);
  t.regex(err!.message, new RegExp(bad.chunk.slice(2, 18)));
  sameBytes(t, await readAll(again, 'p2'), images[1]!);
  sameBytes(t, await readAll(again, 'p3'), images[2]!);
  t.is(again.quarantined().length, 1);
  // The same data archived again is stored afresh; the quarantine lifts and p1 reads again.
  await again.archive({ name: 'p1-again', volumes: [bufferSource('v', images[0]!)] });
  t.is(again.quarantined().length, 0);
  sameBytes(t, await readAll(again, 'p1'), images[0]!);
  t.deepEqual((await again.verify()).bad, []);
  await again.close();
});

test('a truncated pack and a missing pack: verify reports exactly the chunks and points affected', async (t) => {
  const dir = tempDir(t);
  const { pool, images } = await threePoints(dir);
  await pool.close();
  // Truncate the pack holding p3's own first leaf in the middle of that record; delete the one holding p2's.
  const r3 = findRecord(dir, images[2]!.subarray(512 * KiB, 528 * KiB))!;
  const r2 = findRecord(dir, images[1]!.subarray(512 * KiB, 528 * KiB))!;
  t.not(r3.file, r2.file, 'the test needs them in different packs');
  // What must be reported: every chunk of the missing pack, and those of the truncated one past the cut.
  const poolId = (JSON.parse(fs.readFileSync(path.join(dir, 'store', 'config'), 'utf8')) as { poolId: string }).poolId;
  const entriesOf = async (file: string): Promise<PackEntry[]> => {
    const buf = fs.readFileSync(file);
    return (await readPackIndex(async (o, l) => buf.subarray(o, o + l), buf.length, poolId, null)).entries;
  };
  const cut = r3.at + 100;
  const expected = new Set([
    ...(await entriesOf(r2.file)).map((e) => e.handle.toString('hex')),
    ...(await entriesOf(r3.file)).filter((e) => e.offset + 56 + e.storedLength > cut).map((e) => e.handle.toString('hex')),
  ]);
  fs.truncateSync(r3.file, cut);
  fs.rmSync(r2.file);
  const again = await ArchivePool.open(dir);
  const rep = await again.verify();
  t.deepEqual(rep.missingPacks, [path.relative(path.join(dir, 'store'), r2.file)]);
  t.deepEqual(rep.truncatedPacks, [path.relative(path.join(dir, 'store'), r3.file)]);
  t.deepEqual(new Set(rep.bad.map((b) => b.chunk)), expected);
  for (const b of rep.bad) t.true(b.points.length > 0, `${b.chunk} is used by someone`);
  const byReason = (re: RegExp): string[] => [...new Set(rep.bad.filter((b) => re.test(b.reason)).flatMap((b) => b.points))].sort();
  t.true(byReason(/truncated/).includes('p3'));
  t.true(byReason(/missing/).includes('p2'));
  // Every point named fails with EIO; a point named by none reads.
  const named = new Set(rep.bad.flatMap((b) => b.points));
  for (let i = 1; i <= 3; i++) {
    if (named.has(`p${i}`)) t.is((await t.throwsAsync<ArchiveError>(readAll(again, `p${i}`)))!.code, 'EIO');
    else sameBytes(t, await readAll(again, `p${i}`), images[i - 1]!);
  }
  t.true(rep.bad.every((b) => b.pack !== null));
  await again.close();
});

test('encryption: round trip, wrong key refused at open, a flipped byte caught, an altered manifest fails authentication', async (t) => {
  const dir = tempDir(t);
  const key = path.join(dir, 'pool.key');
  const other = path.join(dir, 'other.key');
  generateKeyFile(key);
  generateKeyFile(other);
  const state = path.join(dir, 'state');
  const { pool, images } = await threePoints(state, { keyFile: key, create: { ...SMALL, encrypt: true } });
  t.is(pool.config.scheme, 'hmac-sha256');
  t.is(pool.point('p1').encrypted, true);
  for (let i = 0; i < 3; i++) sameBytes(t, await readAll(pool, `p${i + 1}`), images[i]!);
  await pool.close();
  // Nothing of the plaintext is in the packs or manifests.
  const needle = images[0]!.subarray(512 * KiB, 512 * KiB + 64);
  for (const f of packFiles(state)) t.is(fs.readFileSync(f).indexOf(needle), -1);
  for (const f of fs.readdirSync(path.join(state, 'store', 'points')))
    t.notRegex(fs.readFileSync(path.join(state, 'store', 'points', f), 'utf8'), /"volumes"/);

  const wrong = await t.throwsAsync<ArchiveError>(ArchivePool.open(state, { keyFile: other }));
  t.is(wrong!.code, 'EKEYREJECTED');
  t.regex(wrong!.message, /wrong key/);
  const none = await t.throwsAsync<ArchiveError>(ArchivePool.open(state));
  t.is(none!.code, 'EKEYREJECTED');

  // A flipped payload byte is caught (the record CRC, and under it authentication).
  const file = packFiles(state).sort((x, y) => fs.statSync(y).size - fs.statSync(x).size)[0]!;
  const b = fs.readFileSync(file);
  b[64 + 56 + 5] ^= 0x80; // inside the first record's payload
  fs.writeFileSync(file, b);
  // A manifest whose sealed body is altered, with its checksum recomputed: only authentication can catch it.
  const mf = path.join(state, 'store', 'points', 'p3.point');
  const env = JSON.parse(fs.readFileSync(mf, 'utf8')) as { body: string; sha256: string };
  const body = Buffer.from(env.body, 'base64');
  body[20] ^= 0x01;
  env.body = body.toString('base64');
  env.sha256 = createHash('sha256').update(env.body).digest('hex');
  fs.writeFileSync(mf, JSON.stringify(env));
  const again = await ArchivePool.open(state, { keyFile: key });
  t.deepEqual(
    again.recovery.damagedManifests.map((d) => d.reason),
    ['manifest p3: authentication failed'],
  );
  t.deepEqual(
    again.list().map((p) => p.name),
    ['p1', 'p2'],
  );
  const rep = await again.verify();
  t.is(rep.bad.length, 1);
  t.true(rep.bad[0]!.points.length >= 1);
  await again.close();
});

test('a sealed chunk altered under a matching CRC fails authentication', async (t) => {
  const { encodeChunk, decodeChunk } = await import('../src/archive/codec');
  const { randomBytes } = await import('node:crypto');
  const key = randomBytes(32);
  const h = Buffer.alloc(33, 1);
  const plain = pattern(20000, 3);
  const enc = await encodeChunk({ level: 3, key }, h, 1, plain);
  sameBytes(t, await decodeChunk({ level: 3, key }, h, 1, enc.codec, plain.length, enc.stored), plain);
  const bad = Buffer.from(enc.stored);
  bad[30] ^= 0x01;
  await t.throwsAsync(decodeChunk({ level: 3, key }, h, 1, enc.codec, plain.length, bad), { message: /authentication failed/ });
  await t.throwsAsync(decodeChunk({ level: 3, key: randomBytes(32) }, h, 1, enc.codec, plain.length, enc.stored), {
    message: /authentication failed/,
  });
  await t.throwsAsync(
    decodeChunk({ level: 3, key }, Buffer.alloc(33, 2), 1, enc.codec, plain.length, enc.stored),
    { message: /authentication failed/ },
    'bound to its handle',
  );
});

test('a fresh state directory rebuilds the whole index from the packs', async (t) => {
  const dir = tempDir(t);
  const { pool, images } = await threePoints(dir);
  const before = pool.stats();
  await pool.close();
  // Same backend, new state directory.
  const state2 = path.join(dir, 'elsewhere');
  const { LocalBackend } = await import('../src/archive');
  const moved = await ArchivePool.open(state2, { backend: new LocalBackend(path.join(dir, 'store')) });
  t.is(moved.recovery.indexedPacks, before.packs);
  t.is(moved.stats().chunks, before.chunks);
  for (let i = 0; i < 3; i++) sameBytes(t, await readAll(moved, `p${i + 1}`), images[i]!);
  const r = await moved.rebuildIndex();
  t.is(r.indexedPacks, before.packs);
  t.deepEqual((await moved.verify()).bad, []);
  await moved.close();
});

test('opening refuses a second process and a pool that does not exist', async (t) => {
  const dir = tempDir(t);
  await t.throwsAsync(ArchivePool.open(dir), { code: 'ENOENT' } as never);
  const pool = await openPool(dir);
  await t.throwsAsync(ArchivePool.open(dir), { code: 'EBUSY' } as never);
  await t.throwsAsync(pool.archive({ name: 'bad/name', volumes: [bufferSource('v', Buffer.alloc(1024))] }), { code: 'EINVAL' } as never);
  await pool.archive({ name: 'x', volumes: [bufferSource('v', Buffer.alloc(1024))] });
  await t.throwsAsync(pool.archive({ name: 'x', volumes: [bufferSource('v', Buffer.alloc(1024))] }), { code: 'EEXIST' } as never);
  await t.throwsAsync(pool.archive({ name: 'y', predecessor: 'nope', volumes: [bufferSource('v', Buffer.alloc(1024))] }), {
    code: 'ENOENT',
  } as never);
  await pool.close();
});
