/**
 * Running out of space in the middle of an archive: the archive fails with
 * ENOSPC and a message saying so, no point is committed (not now, not
 * after a reopen), the pool keeps working, and the next gc reclaims what
 * the failed archive wrote. Once with a backend that fails puts (always
 * runs), and on real, tiny tmpfs mounts for the backend and for the
 * staging directory where mounting is allowed (root on Linux).
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArchivePool, LocalBackend, type ArchiveBackend, type ArchiveError } from '../src/archive';
import { bufferSource, KiB, MiB, readAll, sameBytes, SMALL, tempDir } from './helpers/archive-fixtures';
import { pattern } from './helpers/random';

/** A local backend that says ENOSPC once `limit` bytes of packs have been put. */
class FullBackend extends LocalBackend {
  used = 0;
  constructor(
    root: string,
    public limit: number,
  ) {
    super(root);
  }
  override async put(key: string, body: Buffer | { file: string }, opts?: { exclusive?: boolean }): Promise<void> {
    const n = Buffer.isBuffer(body) ? body.length : fs.statSync(body.file).size;
    if (key.startsWith('packs/') && this.used + n > this.limit)
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    this.used += n;
    return super.put(key, body, opts);
  }
}

async function scenario(
  t: ExecutionContext,
  stateDir: string,
  backend: ArchiveBackend | undefined,
  reopenBackend: () => ArchiveBackend | undefined,
  packTarget = 64 * KiB,
): Promise<void> {
  const pool = await ArchivePool.open(stateDir, { create: { ...SMALL, level: 0, packTarget }, ...(backend ? { backend } : {}) });
  const small = pattern(256 * KiB, 1);
  await pool.archive({ name: 'small', volumes: [bufferSource('v', small)] });
  const packsBefore = pool.stats().packs;
  const big = pattern(16 * MiB, 2); // incompressible, and more than the space left
  const err = await t.throwsAsync<ArchiveError>(pool.archive({ name: 'big', volumes: [bufferSource('v', big)] }));
  t.is(err!.code, 'ENOSPC');
  t.regex(err!.message, /archive "big": no space left .*nothing was committed.*gc reclaims/);
  t.deepEqual(
    pool.list().map((p) => p.name),
    ['small'],
  );
  const published = pool.stats().packs - packsBefore;
  t.deepEqual(fs.readdirSync(path.join(stateDir, 'staging')), [], 'the failed archive left no staging pack');
  await pool.close();
  const again = await ArchivePool.open(stateDir, reopenBackend() ? { backend: reopenBackend()! } : {});
  t.deepEqual(
    again.list().map((p) => p.name),
    ['small'],
  );
  const gc = await again.gc();
  t.log(`the failed archive had published ${published} pack(s); gc swept ${gc.chunksSwept} chunks and deleted ${gc.packsDeleted} packs`);
  if (published > 0) t.true(gc.chunksSwept > 0 && gc.packsDeleted > 0, 'gc reclaims the failed archive');
  t.is(again.stats().packs, packsBefore);
  sameBytes(t, await readAll(again, 'small'), small);
  await again.archive({ name: 'after', volumes: [bufferSource('v', pattern(128 * KiB, 3))] });
  t.deepEqual((await again.verify()).bad, []);
  await again.close();
}

test('ENOSPC from the backend mid-archive: clear error, nothing committed, gc reclaims', async (t) => {
  const dir = tempDir(t);
  const backend = new FullBackend(path.join(dir, 'store'), 4 * MiB);
  await scenario(t, path.join(dir, 'state'), backend, () => new LocalBackend(path.join(dir, 'store')));
});

function mountTmpfs(t: ExecutionContext, dir: string, size: string): boolean {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return false;
  fs.mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
  } catch {
    return false;
  }
  t.teardown(() => execFileSync('umount', ['-l', dir], { stdio: 'ignore' }));
  return true;
}

test('ENOSPC on a real, full file system (backend, then staging)', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store-mnt');
  if (!mountTmpfs(t, store, '6m')) {
    t.log('cannot mount tmpfs here (not root on Linux): covered by the injected test only');
    t.pass();
    return;
  }
  await scenario(t, path.join(dir, 'state1'), new LocalBackend(store), () => new LocalBackend(store));
  const state2 = path.join(dir, 'state2');
  // A staging file system smaller than one pack: the pack write itself fails.
  if (!mountTmpfs(t, path.join(state2, 'staging'), '512k')) return;
  await scenario(t, state2, undefined, () => undefined, 1 * MiB);
});
