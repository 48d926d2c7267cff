/**
 * On-disk format versions: a data directory written by the previous
 * release's format (test/fixtures/format-v1-161dee2.tar.gz, made by
 * tools/make-format-fixture.ts running commit 161dee2) opens, is upgraded
 * and reads byte-exact; a directory, a store or a state file stamped with
 * a newer version is refused with a message naming it.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open } from 'lmdb';
import { NbdClient } from '../src/nbd/client';
import { REPO_ROOT, run, runRewind, startDaemon, tempDir } from './helpers/daemon';

const FIXTURE = path.join(REPO_ROOT, 'test', 'fixtures', 'format-v1-161dee2.tar.gz');
const MiB = 1 << 20;

interface Expected {
  by: string;
  exports: Record<string, { size: number; sha256: string }>;
  marker: string;
}

async function unpack(): Promise<{ dir: string; dataDir: string; expected: Expected }> {
  const dir = tempDir('rw-format-');
  const r = await run('tar', ['--sparse', '-xzf', FIXTURE, '-C', dir]);
  if (r.code !== 0) throw new Error(`tar: ${r.stderr}`);
  return {
    dir,
    dataDir: path.join(dir, 'data'),
    expected: JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected,
  };
}

async function sha(port: number, name: string, size: number): Promise<string> {
  const c = await NbdClient.connect({ port, exportName: name });
  try {
    const h = createHash('sha256');
    for (let off = 0; off < size; off += MiB) h.update(await c.read(off, Math.min(MiB, size - off)));
    return h.digest('hex');
  } finally {
    c.destroy();
  }
}

function lmdbFormat(dir: string): unknown {
  const root = open({ path: dir, maxDbs: 8 });
  try {
    return root.openDB<unknown, string>('meta', {}).get('format');
  } finally {
    void root.close();
  }
}

function setLmdbFormat(dir: string, v: number): void {
  const root = open({ path: dir, maxDbs: 8 });
  try {
    root.openDB<unknown, string>('meta', {}).putSync('format', v);
  } finally {
    void root.close();
  }
}

/** `rewind serve` on dataDir, expected to refuse: its exit code and output. */
async function serveRefused(dataDir: string, extra: string[] = []): Promise<{ code: number | null; out: string }> {
  const r = await runRewind(['serve', '--data-dir', dataDir, '--listen', 'none', '--socket', 'none', '--no-default-volume', ...extra], {
    timeoutMs: 60_000,
  });
  return { code: r.code, out: r.stdout + r.stderr };
}

test.serial('a data directory written by the previous release (161dee2) opens, is upgraded, and reads byte-exact', async (t) => {
  const { dir, dataDir, expected } = await unpack();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.false(fs.existsSync(path.join(dataDir, 'format.json')), 'the fixture predates format.json');
  t.is(lmdbFormat(path.join(dataDir, 'catalog')), undefined, 'and its stores carry no version');
  const d = await startDaemon({ dataDir });
  t.teardown(() => d.cleanup());
  const marker = JSON.parse(fs.readFileSync(path.join(dataDir, 'format.json'), 'utf8'));
  t.is(marker.magic, 'rewind-data-dir');
  t.is(marker.format, 2);
  t.is(marker.upgradedFrom, 1);
  for (const [name, e] of Object.entries(expected.exports)) {
    t.is(await sha(d.nbdPort, name, e.size), e.sha256, `${name} reads as the old release served it`);
  }
  // The journaled container the old daemon left for the manager was applied: replica = production, history intact.
  const v = await d.api('POST', '/v1/volumes/pv/verify?full=1');
  t.is(v.status, 200, JSON.stringify(v.body));
  t.true(v.body.equal, 'replica equals production');
  t.true(v.body.ok, JSON.stringify(v.body.containers));
  // Time travel over the old history: a new snapshot at the old marker reads as the old snapshot did.
  const s = await d.cli(['snapshot', 'pv', '--at', expected.marker, '--name', 's2']);
  t.is(s.code, 0, s.stderr);
  t.is(await sha(d.nbdPort, 's2', 4 * MiB), expected.exports.s1!.sha256);
  // New writes on the upgraded directory, across a restart.
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'pv' });
  await c.write(3 * MiB, Buffer.alloc(4096, 0x5a));
  await c.flush();
  c.destroy();
  await d.restart();
  const after = await d.api('POST', '/v1/volumes/pv/verify');
  t.true(after.body.ok && after.body.equal);
  await d.stop();
  for (const store of ['catalog', 'timetravel/index', 'groups/pv/manager/index'])
    t.is(lmdbFormat(path.join(dataDir, store)), 1, `${store} records its version`);
  const ls = JSON.parse(fs.readFileSync(path.join(dataDir, 'format.json'), 'utf8'));
  t.is(ls.format, 2, 'the marker stays');
});

test.serial('a data directory from a newer Rewind is refused with a clear message, and left untouched', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await d.stop();
  const file = path.join(d.dataDir, 'format.json');
  t.is(JSON.parse(fs.readFileSync(file, 'utf8')).format, 2, 'a new directory is marked at once');
  const future = JSON.stringify({ magic: 'rewind-data-dir', format: 99, written: new Date().toISOString() });
  fs.writeFileSync(file, future);
  const r = await serveRefused(d.dataDir);
  t.not(r.code, 0);
  t.regex(r.out, /format\.json: the data directory has format version 99, written by a newer Rewind \(this one reads versions up to 2\)/);
  t.is(fs.readFileSync(file, 'utf8'), future, 'the marker is not rewritten');
  const st = await runRewind(['serve', '--data-dir', d.dataDir, '--stdio', 'default'], { timeoutMs: 30_000 });
  t.not(st.code, 0);
  t.regex(st.stdout + st.stderr, /format version 99, written by a newer Rewind/, 'the --stdio mode refuses it too');
  fs.writeFileSync(file, '{"magic": "something-else", "format": 1}');
  t.regex((await serveRefused(d.dataDir)).out, /not a Rewind format marker/);
});

test.serial('a store or state file stamped with a newer version is refused, naming it', async (t) => {
  const { dir, dataDir } = await unpack();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const index = path.join(dataDir, 'groups', 'pv', 'manager', 'index');
  setLmdbFormat(index, 7);
  let r = await serveRefused(dataDir);
  t.not(r.code, 0);
  t.true(r.out.includes(`${index}: the backup manager's index has format version 7, written by a newer Rewind`), r.out);
  t.false(fs.existsSync(path.join(dataDir, 'format.json')), 'a refused directory is not marked');
  setLmdbFormat(index, 1);
  setLmdbFormat(path.join(dataDir, 'timetravel', 'index'), 3);
  r = await serveRefused(dataDir);
  t.regex(r.out, /time travel's index has format version 3/);
  setLmdbFormat(path.join(dataDir, 'timetravel', 'index'), 1);
  const superFile = path.join(dataDir, 'groups', 'pv', 'journal', 'super.json');
  fs.writeFileSync(superFile, JSON.stringify({ format: 5, degraded: { since: new Date().toISOString(), reason: 'x', kind: 'pool' } }));
  r = await serveRefused(dataDir);
  t.true(r.out.includes(`${superFile}: the degraded and super-transaction state has format version 5`), r.out);
  fs.rmSync(superFile);
  const sm = path.join(dataDir, 'volumes', 'pv', 'statemap');
  const fd = fs.openSync(sm, 'r+');
  fs.writeSync(fd, Buffer.from([2]), 0, 1, 7);
  fs.closeSync(fd);
  r = await serveRefused(dataDir);
  t.regex(r.out, /the state map has format version 2, written by a newer Rewind/);
});
