/**
 * kill -9 while archiving and in each gc phase (a real child process,
 * killed at named steps and at random moments), then reopen: no point is
 * half-committed, every committed point reads back exactly, verify finds
 * every referenced chunk, torn staging packs are cut and salvaged, and a
 * gc afterwards reclaims what the dead process left.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArchivePool } from '../src/archive';
import { CRASH_ENV } from '../src/archive/crash-hook';
import { openPool, readAll, sameBytes, tempDir } from './helpers/archive-fixtures';
import { generation } from './helpers/archive-history';
import { rng } from './helpers/random';

const CHILD = path.join(__dirname, 'helpers', 'archive-crash-child.js');

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
}

function child(spec: object, opts: { crashAt?: string; killAfterMs?: number } = {}): Promise<ChildResult> {
  return new Promise((resolve) => {
    const env = { ...process.env };
    if (opts.crashAt) env[CRASH_ENV] = opts.crashAt;
    else delete env[CRASH_ENV];
    const c = spawn(process.execPath, [CHILD, JSON.stringify(spec)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = opts.killAfterMs !== undefined ? setTimeout(() => c.kill('SIGKILL'), opts.killAfterMs) : null;
    c.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
}

/** Reopens and checks everything; returns the newest generation committed. */
async function checkConsistent(t: ExecutionContext, dir: string, what: string): Promise<number> {
  const pool = await openPool(dir);
  try {
    let newest = 0;
    for (const p of pool.list()) {
      const g = Number(p.name.slice(1));
      newest = Math.max(newest, g);
      sameBytes(t, await readAll(pool, p.name), generation(g).image, `${what}: ${p.name}`);
    }
    const v = await pool.verify();
    t.deepEqual(v.bad, [], `${what}: verify`);
    t.deepEqual(fs.readdirSync(path.join(dir, 'staging')), [], `${what}: staging left over`);
    return newest;
  } finally {
    await pool.close();
  }
}

test('kill -9 at each step of an archive: no half-committed point, nothing referenced lost', async (t) => {
  const dir = tempDir(t, 'rw-arch-crash-');
  t.is((await child({ dir, mode: 'archive', gens: 2 })).code, 0);
  let gens = 2;
  for (const step of ['pack-sealed@3', 'pack-put@2', 'before-manifest', 'after-manifest']) {
    gens++;
    const r = await child({ dir, mode: 'archive', gens }, { crashAt: step });
    t.is(r.signal, 'SIGKILL', `${step}: ${r.out}`);
    const newest = await checkConsistent(t, dir, step);
    t.is(newest, step === 'after-manifest' ? gens : gens - 1, `${step}: the point exists exactly when its manifest was written`);
    if (newest < gens) t.is((await child({ dir, mode: 'archive', gens })).code, 0, `${step}: archiving again after the crash`);
  }
  // The crashed archives' chunks are garbage now; a gc reclaims them and everything still reads.
  const pool = await openPool(dir);
  const before = pool.stats();
  const gc = await pool.gc();
  t.log(`after the crashes: ${before.chunks} chunks; gc swept ${gc.chunksSwept}, deleted ${gc.packsDeleted} packs`);
  await pool.close();
  await checkConsistent(t, dir, 'after gc');
});

test('kill -9 in each gc phase: reopen is consistent and the next gc completes', async (t) => {
  const dir = tempDir(t, 'rw-arch-crashgc-');
  let gens = 0;
  for (const step of [
    'gc-marked',
    'gc-sweep-batch@1',
    'gc-swept',
    'gc-repack-put',
    'gc-repack-indexed',
    'gc-pack-deleting',
    'gc-pack-deleted',
  ]) {
    gens += 3;
    t.is((await child({ dir, mode: 'archive', gens })).code, 0);
    const r = await child({ dir, mode: 'gc', keep: 2 }, { crashAt: step });
    t.is(r.signal, 'SIGKILL', `${step} was never reached: ${r.out}`);
    await checkConsistent(t, dir, step);
    const again = await child({ dir, mode: 'gc', keep: 2 });
    t.is(again.code, 0, `${step}: gc after the crash: ${again.out}`);
    await checkConsistent(t, dir, `${step}, then gc`);
  }
});

test('kill -9 at random moments of archives and gcs', async (t) => {
  const dir = tempDir(t, 'rw-arch-crashrnd-');
  const r = rng(5);
  let gens = 1;
  t.is((await child({ dir, mode: 'archive', gens })).code, 0);
  for (let round = 0; round < 8; round++) {
    gens += 6;
    const gc = round % 2 === 1;
    const res = await child(gc ? { dir, mode: 'gc', keep: 3 } : { dir, mode: 'archive', gens }, {
      killAfterMs: 300 + Math.floor(r() * 1500),
    });
    t.log(
      `round ${round} (${gc ? 'gc' : 'archive'}): ${res.signal ?? `exit ${res.code}`} after ${JSON.stringify(res.out.trim().split('\n').filter(Boolean))}`,
    );
    if (res.signal === null) t.is(res.code, 0, res.out);
    await checkConsistent(t, dir, `round ${round}`);
  }
});

test('a torn staging pack is cut at its last whole record and its chunks are indexed', async (t) => {
  const dir = tempDir(t, 'rw-arch-torn-');
  const pool = await openPool(dir);
  await pool.archive({
    name: 'g1',
    volumes: [
      { volume: 'vol', size: generation(1).image.length, read: async (o, l) => Buffer.from(generation(1).image.subarray(o, o + l)) },
    ],
  });
  await pool.close();
  // A pack as a crash mid-append leaves it: a copy of a real one, cut inside its last records.
  const packs = fs
    .readdirSync(path.join(dir, 'store', 'packs'), { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.pack'));
  const src = fs.readFileSync(path.join(dir, 'store', 'packs', packs[0]!));
  const torn = Buffer.from(src.subarray(0, Math.floor(src.length * 0.6)));
  torn[40] ^= 0xff; // a different pack id, so it is a new pack
  const { crc32 } = await import('../src/util/crc32');
  torn.writeUInt32LE(crc32(torn.subarray(0, 60)), 60);
  fs.writeFileSync(path.join(dir, 'staging', 'torn.pack'), torn);
  const again = await ArchivePool.open(dir);
  t.is(again.recovery.salvagedPacks, 1);
  t.true(again.recovery.salvagedChunks > 0);
  t.deepEqual(fs.readdirSync(path.join(dir, 'staging')), []);
  await again.close();
  await checkConsistent(t, dir, 'torn');
});
