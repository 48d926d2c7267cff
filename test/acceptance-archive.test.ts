/**
 * Acceptance for the archive pool through a live `rewind serve`, the CLI
 * and real NBD clients (issue 14): archived points read byte-equal to
 * `rewind export` of the same point taken before, after retention has
 * faded the journal; incremental cost counted by the archiver; five
 * clones of one base; a consistency group at one seq; archive:NAME as a
 * snapshot, clone, export, restore (undoable) and diff end; list, show,
 * verify, forget (by name and policy), gc and metrics.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { NbdClient } from '../src/nbd/client';
import { startDaemon, sleep, type TestDaemon } from './helpers/daemon';
import { pattern } from './helpers/nbd-fixtures';

const MiB = 1024 * 1024;
const LEAF = 64 * 1024;

async function cli(d: TestDaemon, args: string[]): Promise<string> {
  const r = await d.cli(args, { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function cliJson<T = any>(d: TestDaemon, args: string[]): Promise<T> {
  return JSON.parse(await cli(d, [...args, '--json'])) as T;
}

/** The control API (what the CLI calls); most steps use it, since each CLI run costs a node start. */
async function api<T = any>(d: TestDaemon, method: string, p: string, body?: unknown): Promise<T> {
  const r = await d.api(method, p, body);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

async function apiFails(d: TestDaemon, method: string, p: string, body?: unknown): Promise<string> {
  const r = await d.api(method, p, body);
  if (r.status < 400) throw new Error(`${method} ${p} succeeded`);
  return String(r.body?.error);
}

async function readExport(d: TestDaemon, name: string, size: number): Promise<Buffer> {
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: name });
  try {
    const parts: Buffer[] = [];
    for (let o = 0; o < size; o += MiB) parts.push(await c.read(o, Math.min(MiB, size - o)));
    return Buffer.concat(parts);
  } finally {
    c.destroy();
  }
}

async function writeAt(d: TestDaemon, vol: string, writes: Array<[number, Buffer]>): Promise<void> {
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: vol });
  try {
    for (const [off, data] of writes) await c.write(off, data);
    await c.flush();
  } finally {
    c.destroy();
  }
}

async function lastSeq(d: TestDaemon, vol: string): Promise<number> {
  await api(d, 'POST', `/v1/volumes/${vol}/seal`);
  return (await api(d, 'POST', `/v1/volumes/${vol}/resolve`, { at: 'latest' })).seq as number;
}

async function exportFile(d: TestDaemon, vol: string, at: string, name: string, viaCli = false): Promise<Buffer> {
  const out = path.join(d.dataDir, `${name}.raw`);
  if (viaCli) await cli(d, ['export', vol, '--at', at, '--out', out, '--no-progress']);
  else await api(d, 'POST', `/v1/volumes/${vol}/export`, { at, out });
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}

test.serial(
  'archived points equal exports taken before, after retention fades the journal; incremental cost; archive:NAME as snapshot, clone, export, diff and undoable restore',
  async (t) => {
    const d = await startDaemon({ env: { REWIND_RETENTION_INTERVAL_MS: '0' } });
    t.teardown(() => d.cleanup());
    const SIZE = 4 * MiB;
    await api(d, 'POST', '/v1/volumes', { name: 'a', size: SIZE, protected: true });

    // Generation 0: the whole volume.
    const img = Buffer.alloc(SIZE);
    const full: Array<[number, Buffer]> = [];
    for (let o = 0; o < SIZE; o += 256 * 1024) full.push([o, pattern(256 * 1024, 7 + o)]);
    await writeAt(d, 'a', full);
    for (const [o, b] of full) b.copy(img, o);
    const seqs = [await lastSeq(d, 'a')];
    const images = [Buffer.from(img)];
    const exports = [await exportFile(d, 'a', `@seq:${seqs[0]}`, 'e0')];
    t.true(exports[0]!.equals(images[0]!));
    const a0 = await cliJson(d, ['archive', 'a', '--at', `@seq:${seqs[0]}`, '--name', 'g0']);
    t.is(a0.point.name, 'g0');
    t.is(a0.predecessor, null);
    t.is(a0.point.seq, seqs[0]);
    t.is(a0.point.volumes[0].size, SIZE);
    t.is(a0.point.leafSize, LEAF);

    // Generations 1..3: about 1% of the volume changes each time (10 scattered 4 KiB writes).
    for (let g = 1; g <= 3; g++) {
      const writes: Array<[number, Buffer]> = [];
      const leaves = new Set<number>();
      for (let i = 0; i < 10; i++) {
        const off = ((g * 13 + i * 7) % 64) * LEAF + ((i * 3) % 16) * 4096;
        writes.push([off, pattern(4096, g * 100 + i)]);
        leaves.add(Math.floor(off / LEAF));
      }
      await writeAt(d, 'a', writes);
      for (const [o, b] of writes) b.copy(img, o);
      seqs.push(await lastSeq(d, 'a'));
      images.push(Buffer.from(img));
      exports.push(await exportFile(d, 'a', `@seq:${seqs[g]}`, `e${g}`));
      const r = await api(d, 'POST', '/v1/archives', { target: 'a', at: `@seq:${seqs[g]}`, name: `g${g}` });
      t.is(r.predecessor, `g${g - 1}`);
      const st = r.point.volumes[0].stats;
      // Incremental cost, as the archiver counted it: reads and hashes within 1.1x the changed bytes rounded to leaves.
      const changedRounded = leaves.size * LEAF;
      t.true(
        st.bytesRead <= 1.1 * changedRounded,
        `generation ${g}: read ${st.bytesRead} for ${changedRounded} changed (rounded to leaves)`,
      );
      t.true(st.bytesHashed <= 1.1 * changedRounded);
      t.true(st.subtreesReused > 0 || st.leavesRead < SIZE / LEAF);
    }
    for (let g = 0; g < exports.length; g++) t.true(exports[g]!.equals(images[g]!), `export ${g}`);

    // An archive by marker records the marker and its quiesce result.
    await api(d, 'POST', '/v1/markers/a', { name: 'm-last', pre: 'true' });
    const am = await api(d, 'POST', '/v1/archives', { target: 'a', at: 'm-last', name: 'by-marker' });
    t.is(am.point.marker, 'm-last');
    t.deepEqual(am.point.quiesce, { kind: 'application', ok: true });
    t.is(am.point.volumes[0].stats.bytesRead, 0, 'nothing changed since g3');
    await api(d, 'DELETE', '/v1/markers/a/m-last');

    // Retention fades the journal: the points inside merged history are gone from the journal.
    await sleep(1200);
    await api(d, 'PUT', '/v1/volumes/a/retention', { policy: 'all:1s, every:1h:1d' });
    await api(d, 'POST', '/v1/volumes/a/retention/fade', {});
    t.regex(
      await apiFails(d, 'POST', '/v1/volumes/a/export', { at: `@seq:${seqs[1]}`, out: path.join(d.dataDir, 'x.raw') }),
      /merged|retained|history/,
      'the journal no longer holds generation 1',
    );

    // Every archived point still reads as the export taken before.
    for (let g = 0; g < exports.length; g++) {
      t.true((await exportFile(d, 'a', `archive:g${g}`, `ae${g}`, g === 0)).equals(exports[g]!), `archive:g${g} export`);
    }
    // As a read-only NBD export (a snapshot) and as a writable clone.
    const snap = await api(d, 'POST', '/v1/volumes/a/snapshots', { at: 'archive:g1', name: 'g1-snap' });
    t.regex(snap.point.description, /archived point g1/);
    t.true((await readExport(d, 'g1-snap', SIZE)).equals(exports[1]!));
    await cli(d, ['clone', 'a', '--at', 'archive:g2', '--name', 'g2-clone']);
    await writeAt(d, 'g2-clone', [[0, Buffer.alloc(4096, 0xab)]]);
    const cl = await readExport(d, 'g2-clone', SIZE);
    t.true(cl.subarray(4096).equals(exports[2]!.subarray(4096)));
    t.true(cl.subarray(0, 4096).equals(Buffer.alloc(4096, 0xab)));
    // Stepping an archived point has no history to step through.
    t.regex(await apiFails(d, 'POST', '/v1/views/g1-snap/step', { forward: 1 }), /archived point g1/);

    // Diff: two archived points (pruned tree walk), and an archived point against the journal.
    const dd = await cliJson(d, ['diff', 'a', '--from', 'archive:g0', '--to', 'archive:g3']);
    const covered = (off: number) =>
      dd.extents.some((e: { offset: number; length: number }) => off >= e.offset && off < e.offset + e.length);
    for (let o = 0; o < SIZE; o += 4096) {
      if (!exports[0]!.subarray(o, o + 4096).equals(exports[3]!.subarray(o, o + 4096)))
        t.true(covered(o), `changed block at ${o} reported`);
    }
    t.true(dd.changedBytes <= 30 * LEAF);
    const dj = await api(d, 'POST', '/v1/volumes/a/diff', { from: 'archive:g3', to: 'latest' });
    t.is(dj.changedBytes, 0);

    // Forget refuses a point a view reads; list and show say who uses it.
    const busy = await d.cli(['archive', 'forget', 'g1']);
    t.not(busy.code, 0);
    t.regex(busy.stderr, /g1-snap/);
    const shown = await api(d, 'GET', '/v1/archives/g1');
    t.regex(await cli(d, ['archive', 'show', 'g1']), /used by g1-snap/);
    t.deepEqual(shown.usedBy, ['g1-snap']);
    t.is(shown.volumes[0].volume, 'a');
    t.is(shown.group, 'a');

    // Restore production to an archived point; the restore is journaled and undoable.
    await api(d, 'DELETE', '/v1/views/g1-snap');
    await api(d, 'DELETE', '/v1/views/g2-clone');
    const rr = await cliJson(d, ['restore', 'a', '--to', 'archive:g1', '--no-progress']);
    t.truthy(rr.undo);
    t.true((await readExport(d, 'a', SIZE)).equals(exports[1]!));
    await api(d, 'POST', '/v1/volumes/a/restore', { to: rr.undo });
    t.true((await readExport(d, 'a', SIZE)).equals(images[3]!));

    // Verify, forget by policy (dry run, then for real), gc; the survivors still read.
    const v = await cliJson(d, ['archive', 'verify', '--no-progress']);
    t.is(v.bad.length, 0);
    t.true(v.chunksChecked > 0);
    const plan = await cliJson(d, ['archive', 'forget', '--policy', 'last:2', '--dry-run']);
    t.true(plan.dryRun);
    await api(d, 'POST', '/v1/archives/forget', { names: ['g0', 'g1'] });
    const gc = await cliJson(d, ['archive', 'gc', '--no-progress']);
    t.true(gc.chunksSwept > 0);
    t.regex(await cli(d, ['archive', 'list']), /by-marker[\s\S]*dedup ratio/);
    const list = await api(d, 'GET', '/v1/archives');
    t.deepEqual(
      list.points.map((p: { name: string }) => p.name),
      ['g2', 'g3', 'by-marker'],
    );
    t.true((await exportFile(d, 'a', 'archive:g2', 'after-gc')).equals(exports[2]!));
    const metrics = (await d.api('GET', '/v1/metrics')).raw.text;
    t.regex(metrics, /rewind_archive_dedup_ratio \d/);
    t.regex(metrics, /rewind_archive_points 3/);
    t.regex(metrics, /rewind_archive_logical_bytes \d/);

    // The pool comes back after a restart, with archived views.
    await api(d, 'POST', '/v1/volumes/a/clones', { at: 'archive:g3', name: 'g3-clone', readOnly: true });
    await d.restart();
    t.true((await readExport(d, 'g3-clone', SIZE)).equals(exports[3]!));
    t.regex(await apiFails(d, 'POST', '/v1/volumes/a/clones', { at: 'archive:nope' }), /no archived point "nope"/);
  },
);

test.serial('a consistency group is archived at one seq; five clones of one base archive to about one base plus deltas', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await api(d, 'POST', '/v1/volumes', { name: 'x', size: 2 * MiB, group: 'g' });
  await api(d, 'POST', '/v1/volumes', { name: 'y', size: 2 * MiB, group: 'g' });
  // Interleaved writes; the group point at a seq between them holds x's and y's writes up to it.
  const cx = await NbdClient.connect({ port: d.nbdPort, exportName: 'x' });
  const cy = await NbdClient.connect({ port: d.nbdPort, exportName: 'y' });
  for (let i = 0; i < 8; i++) {
    await cx.write(i * LEAF, pattern(LEAF, 1000 + i));
    await cy.write(i * LEAF, pattern(LEAF, 2000 + i));
  }
  await cx.flush();
  await cy.flush();
  const mid = await lastSeq(d, 'x');
  for (let i = 8; i < 12; i++) await cx.write(i * LEAF, pattern(LEAF, 1000 + i));
  await cx.flush();
  cx.destroy();
  cy.destroy();
  const ex = await exportFile(d, 'x', `@seq:${mid}`, 'x');
  const ey = await exportFile(d, 'y', `@seq:${mid}`, 'y');
  const r = await cliJson(d, ['archive', 'g', '--at', `@seq:${mid}`, '--name', 'gp']);
  t.is(r.point.seq, mid);
  t.is(r.point.group, 'g');
  t.deepEqual(r.point.volumes.map((v: { volume: string }) => v.volume).sort(), ['x', 'y']);
  t.true((await exportFile(d, 'x', 'archive:gp', 'ax')).equals(ex));
  t.true((await exportFile(d, 'y', 'archive:gp', 'ay')).equals(ey));
  t.true(ex.subarray(8 * LEAF, 12 * LEAF).equals(Buffer.alloc(4 * LEAF)), 'x writes after the seq are not in the point');

  // Five volumes cloned from one base image, each with its own small delta.
  const BASE = 2 * MiB;
  const base = pattern(BASE, 42);
  const before = (await api(d, 'GET', '/v1/archives')).stats.packBytes as number;
  for (let i = 0; i < 5; i++) {
    await api(d, 'POST', '/v1/volumes', { name: `c${i}`, size: BASE, protected: true });
    const w: Array<[number, Buffer]> = [];
    for (let o = 0; o < BASE; o += 256 * 1024) w.push([o, base.subarray(o, o + 256 * 1024)]);
    w.push([i * 3 * LEAF, pattern(LEAF, 500 + i)]);
    await writeAt(d, `c${i}`, w);
    await api(d, 'POST', '/v1/archives', { target: `c${i}`, at: 'latest', name: `c${i}-base` });
  }
  const stats = (await api(d, 'GET', '/v1/archives')).stats;
  const added = stats.packBytes - before;
  // One base plus five leaves of delta, plus tree nodes and pack overheads: well under two bases.
  t.true(added < BASE + 5 * LEAF + 256 * 1024, `five clones added ${added} bytes for a ${BASE}-byte base`);
  t.true(stats.dedupRatio > 1);

  // Archives are jobs, listed with restores and exports.
  const jobs = (await api(d, 'GET', '/v1/jobs')).jobs as Array<{ kind: string; target: string; state: string; summary: string | null }>;
  t.true(jobs.some((j) => j.kind === 'archive' && j.target === 'g' && j.state === 'done' && /^gp: read/.test(j.summary ?? '')));

  // Bad input gets clear errors.
  t.regex(await apiFails(d, 'POST', '/v1/archives', { at: 'latest' }), /"target"/);
  t.regex(await apiFails(d, 'POST', '/v1/archives', { target: 'c0' }), /--at POINT is required/);
  t.regex(await apiFails(d, 'POST', '/v1/archives', { target: 'c0', at: 'archive:c0-base' }), /already an archived point/);
  t.regex(await apiFails(d, 'POST', '/v1/archives', { target: 'c0', at: 'latest', name: 'c0-base' }), /exists already/);
  t.regex(
    await apiFails(d, 'POST', '/v1/archives', { target: 'nope', at: 'latest' }),
    /no protected volume or consistency group named "nope"/,
  );
  t.regex(await apiFails(d, 'POST', '/v1/archives/forget', { policy: 'daily:forever:x' }), /daily/);
  t.regex(await apiFails(d, 'POST', '/v1/volumes/c0/schedule', { add: 'every=1s,archive=maybe' }), /archive must be yes or no/);
  t.regex(
    await apiFails(d, 'POST', '/v1/volumes/c1/export', { at: 'archive:c0-base', out: path.join(d.dataDir, 'w.raw') }),
    /holds no volume "c1"/,
  );

  // A schedule rule with archive=yes archives each marker it places.
  await api(d, 'POST', '/v1/volumes/c0/schedule', { add: 'every=1s,archive=yes' });
  let auto: { name: string; marker: string } | undefined;
  for (let i = 0; i < 60 && !auto; i++) {
    await sleep(500);
    auto = (await api(d, 'GET', '/v1/archives')).points.find((p: { marker: string | null }) => p.marker?.startsWith('auto-'));
  }
  await api(d, 'POST', '/v1/volumes/c0/schedule', { clear: true });
  t.truthy(auto, 'a scheduled marker was archived');
  t.true((await exportFile(d, 'c0', `archive:${auto!.name}`, 'auto')).subarray(LEAF).equals(base.subarray(LEAF)));
});

test.serial(
  'an encrypted pool: keygen, archive with --archive-key; without the key or with a wrong one the daemon still serves and archive commands say why',
  async (t) => {
    const keys = fs.mkdtempSync(path.join(os.tmpdir(), 'rw-keys-'));
    t.teardown(() => fs.rmSync(keys, { recursive: true, force: true }));
    const key = path.join(keys, 'pool.key');
    const other = path.join(keys, 'other.key');
    const d = await startDaemon({ args: ['--archive-key', key] });
    t.teardown(() => d.cleanup());
    t.regex(await cli(d, ['archive', 'keygen', key]), /wrote a new archive key/);
    await cli(d, ['archive', 'keygen', other]);
    const again = await d.cli(['archive', 'keygen', key]);
    t.not(again.code, 0);
    t.regex(again.stderr, /already exists/);
    await api(d, 'POST', '/v1/volumes', { name: 'e', size: MiB, protected: true });
    await writeAt(d, 'e', [[0, pattern(MiB, 3)]]);
    const r = await api(d, 'POST', '/v1/archives', { target: 'e', at: 'latest', name: 'e1' });
    t.true(r.point.encrypted);
    const want = await exportFile(d, 'e', 'archive:e1', 'e1');
    t.true(want.equals(pattern(MiB, 3)));
    // No plaintext in the packs.
    const store = path.join(d.dataDir, 'archive', 'store');
    const files = fs
      .readdirSync(store, { recursive: true })
      .map(String)
      .filter((f) => fs.statSync(path.join(store, f)).isFile());
    for (const f of files) t.is(fs.readFileSync(path.join(store, f)).indexOf(pattern(MiB, 3).subarray(0, 64)), -1, f);
    await d.stop();

    const bare = await startDaemon({ dataDir: d.dataDir });
    t.teardown(() => bare.cleanup());
    t.regex(await apiFails(bare, 'GET', '/v1/archives/e1'), /encrypted: give its key file/);
    t.is((await api(bare, 'GET', '/v1/volumes/e')).name, 'e', 'the volumes are served all the same');
    await bare.stop();
    const wrong = await startDaemon({ dataDir: d.dataDir, args: ['--archive-key', other] });
    t.teardown(() => wrong.cleanup());
    t.regex(await apiFails(wrong, 'POST', '/v1/archives', { target: 'e', at: 'latest' }), /wrong key/);
    await wrong.stop();
    const right = await startDaemon({ dataDir: d.dataDir, args: ['--archive-key', key] });
    t.teardown(() => right.cleanup());
    t.true((await exportFile(right, 'e', 'archive:e1', 'e1b')).equals(want));
    await right.stop();
  },
);
