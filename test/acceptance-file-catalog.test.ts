/**
 * The file catalog against a live daemon, on protected volumes written over
 * NBD:
 *
 *  - oracle: ext2/3/4 in sfdisk-made MBR and GPT tables; each marker's
 *    catalog (built by the marker hook) equals `fls -r -p -m /` on
 *    `rewind export` of the same point;
 *  - 10 points of an ext4 changed by the kernel (loop-mounted: in-place
 *    writes, replacements, renames, deletions, new directories): 100 random
 *    (file, point) restores have the checksums recorded at each point and
 *    read at most the file's blocks plus a few metadata blocks; --versions
 *    lists exactly the points where a file changed; changed-files lists
 *    exactly the files a round changed; every incremental build read a small
 *    multiple of the changed metadata, and the last point equals a full
 *    catalog of the same image;
 *  - restore-file --out (refusals without --force, odd names, directories)
 *    and --into a clone;
 *  - kill -9 during a catalog build: the restarted daemon finishes it.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openFilesystem, type FsImage } from '../src/fs';
import type { FileInfo, PointRecord, Version } from '../src/file-catalog/service';
import { NbdClient } from '../src/nbd/client';
import { startDaemon, type TestDaemon } from './helpers/daemon';
import { download, fileShas, markCataloged, metric, waitPoint, withMounted, writeChangedBlocks } from './helpers/catalog-live';
import { buildTree, fls, flsName, makeDisk, makeFs, requireTools, tempDir, writeInto } from './helpers/fs-images';
import { apiOk, cliOk } from './helpers/live';
import { rng } from './helpers/random';
import { escapeName, unescapeName } from '../src/fs';

const MiB = 1024 * 1024;
const META: Record<string, string> = { file: 'r', dir: 'd', symlink: 'l', chr: 'c', blk: 'b', fifo: 'p', socket: 'h' };

async function listAll(d: TestDaemon, volume: string, at: string, partition?: number): Promise<FileInfo[]> {
  const out: FileInfo[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams({ at, path: '/', recursive: '1', limit: '5000' });
    if (partition !== undefined) q.set('partition', String(partition));
    if (cursor) q.set('cursor', cursor);
    const r = await apiOk<{ entries: FileInfo[]; next: string | null }>(d, 'GET', `/v1/volumes/${volume}/files?${q}`);
    out.push(...r.entries);
    cursor = r.next;
  } while (cursor);
  return out;
}

async function createVolume(d: TestDaemon, name: string, sizeMiB: number): Promise<void> {
  await apiOk(d, 'POST', '/v1/volumes', { name, size: `${sizeMiB}M`, protected: true });
}

test("oracle: each marker's catalog equals fls on rewind export of the point (MBR and GPT, ext2/3/4)", async (t) => {
  requireTools('fls', 'mkfs.ext4', 'sfdisk', 'debugfs', 'e2fsck');
  const tmp = tempDir();
  const d = await startDaemon();
  try {
    const disks = [
      { name: 'mbr', script: 'label: dos\nstart=2048, size=40M, type=83\nsize=30M, type=83\n', kinds: ['ext4', 'ext2'] as const },
      { name: 'gpt', script: 'label: gpt\nstart=2048, size=40M, type=L\nsize=30M, type=L\n', kinds: ['ext3', 'ext4'] as const },
    ];
    for (const [i, disk] of disks.entries()) {
      const file = path.join(tmp.dir, `${disk.name}.img`);
      const layout = makeDisk(file, 80, disk.script);
      disk.kinds.forEach((kind, k) => {
        const src = buildTree(path.join(tmp.dir, `${disk.name}-src${k}`), { seed: 50 + i * 2 + k, many: 200, blobs: 20, big: k === 0 });
        const img = path.join(tmp.dir, `${disk.name}-fs${k}.img`);
        makeFs(img, src, { kind, blockSize: k === 1 ? 1024 : 4096, sizeMiB: Math.floor(layout.partitions[k]!.size / MiB), htree: k === 0 });
        writeInto(file, layout.partitions[k]!.offset, img);
      });
      await createVolume(d, disk.name, 80);
      await writeChangedBlocks(d, disk.name, fs.readFileSync(file), null);
      const p = await markCataloged(d, disk.name, 'm1');
      t.is(p.filesystems.length, 2);
      const out = path.join(tmp.dir, `${disk.name}-export.raw`);
      await cliOk(d, ['export', disk.name, '--at', 'm1', '--out', out]);
      for (const f of p.filesystems) {
        t.falsy(f.error);
        const mine = await listAll(d, disk.name, 'm1', f.partition);
        const theirs = new Map(fls(out, f.offset).map((e) => [escapeName(e.path), e]));
        const got = new Map(mine.map((e) => [escapeName(flsName(Buffer.from(e.pathRaw, 'base64'))), e]));
        t.deepEqual([...got.keys()].sort(), [...theirs.keys()].sort(), `${disk.name} ${f.label}: the paths of fls`);
        const bad: string[] = [];
        for (const [k, e] of got) {
          const x = theirs.get(k);
          if (!x) continue;
          const a = [e.ino, META[e.type], e.mode & 0o7777, e.uid, e.gid, e.size, e.times.mtime[0]];
          const b = [x.ino, x.metaType, x.perm, x.uid, x.gid, x.size, x.mtime];
          if (JSON.stringify(a) !== JSON.stringify(b)) bad.push(`${k}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
        }
        t.deepEqual(bad, [], `${disk.name} ${f.label}: inode, type, mode, owner, size and mtime of fls`);
      }
    }
  } finally {
    await d.cleanup();
    tmp.cleanup();
  }
});

type Truth = Map<string, { sha: string; size: number }>;

/** One round of changes by the kernel: in-place writes, replacements, a deletion, creations, a rename; some rounds touch directories. */
function changeRound(mnt: string, round: number, before: Truth): void {
  const r = rng(7000 + round);
  const files = [...before.keys()].filter((p) => p.startsWith('/data/')).sort();
  const pick = (): string => {
    for (;;) {
      const p = files[Math.floor(r() * files.length)]!;
      if (fs.existsSync(path.join(mnt, p))) return p;
    }
  };
  const bytes = (n: number): Buffer => crypto.randomBytes(n);
  for (let i = 0; i < 5; i++) {
    const p = path.join(mnt, pick());
    const fd = fs.openSync(p, 'r+');
    fs.writeSync(fd, bytes(500 + Math.floor(r() * 8000)), 0, undefined, Math.floor(r() * fs.fstatSync(fd).size));
    fs.closeSync(fd);
  }
  for (let i = 0; i < 2; i++) {
    const p = path.join(mnt, pick());
    fs.writeFileSync(`${p}.tmp`, bytes(1000 + Math.floor(r() * 60_000)));
    fs.renameSync(`${p}.tmp`, p);
  }
  fs.rmSync(path.join(mnt, pick()));
  for (let i = 0; i < 2; i++) fs.writeFileSync(path.join(mnt, `data/d${i}`, `new-${round}-${i}`), bytes(2000 + Math.floor(r() * 30_000)));
  const moved = pick();
  fs.renameSync(path.join(mnt, moved), path.join(mnt, 'data/d3', `moved-${round}`));
  if (round === 5) {
    fs.mkdirSync(path.join(mnt, 'data/new5'));
    for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(mnt, 'data/new5', `x${i}`), bytes(5000 + i));
  }
  if (round === 7) fs.renameSync(path.join(mnt, 'data/new5'), path.join(mnt, 'data/moved7'));
  if (round === 9) fs.rmSync(path.join(mnt, 'data/d4/sub'), { recursive: true });
}

function changedPaths(a: Truth, b: Truth): Set<string> {
  const out = new Set<string>();
  for (const [p, v] of b) if (a.get(p)?.sha !== v.sha) out.add(p);
  for (const p of a.keys()) if (!b.has(p)) out.add(p);
  return out;
}

const ODD = [Buffer.from([0x6e, 0x61, 0xff, 0x6d, 0x65]), Buffer.from('ctl\x01\x1b[1m tab\tend')];

test('10 points changed by the kernel: restores, versions, changed-files, incremental builds, restore-file --out and --into', async (t) => {
  requireTools('mkfs.ext4', 'mount', 'fls', 'nbdfuse', 'fusermount3', 'debugfs', 'e2fsck');
  if (process.getuid?.() !== 0) throw new Error('this test needs root (loop mounts)');
  const tmp = tempDir();
  const d = await startDaemon();
  try {
    // The first state: /etc/fstab, 100 files in /data/d0..d4, a subdirectory, names that are not text.
    const src = path.join(tmp.dir, 'src');
    fs.mkdirSync(path.join(src, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(src, 'etc/fstab'), 'LABEL=root / ext4 defaults 0 1\n');
    const r0 = rng(99);
    for (let dd = 0; dd < 5; dd++) {
      fs.mkdirSync(path.join(src, `data/d${dd}`), { recursive: true });
      for (let i = 0; i < 20; i++)
        fs.writeFileSync(path.join(src, `data/d${dd}/f${i}`), crypto.randomBytes(1024 + Math.floor(r0() * 150_000)));
    }
    fs.mkdirSync(path.join(src, 'data/d4/sub'));
    for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(src, `data/d4/sub/s${i}`), crypto.randomBytes(3000));
    fs.mkdirSync(path.join(src, 'odd'));
    for (const n of ODD) fs.writeFileSync(Buffer.concat([Buffer.from(path.join(src, 'odd') + '/'), n]), n);
    const image = path.join(tmp.dir, 'disk.img');
    makeFs(image, src, { kind: 'ext4', blockSize: 4096, sizeMiB: 96 });
    execFileSync('tune2fs', ['-L', 'root', image], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
    await createVolume(d, 'v', 96);
    let prev = fs.readFileSync(image);
    await writeChangedBlocks(d, 'v', prev, null);
    const mnt = path.join(tmp.dir, 'mnt');
    const truth: Truth[] = [];
    const points: PointRecord[] = [];
    withMounted(image, mnt, (m) => void truth.push(fileShas(m)));
    points.push(await markCataloged(d, 'v', 'm1'));
    t.is(points[0]!.stats.mode, 'full');
    t.is(points[0]!.filesystems[0]!.mountPoint, '/', "the mount point from the image's /etc/fstab");
    t.is(points[0]!.filesystems[0]!.fsLabel, 'root');
    for (let round = 2; round <= 10; round++) {
      withMounted(image, mnt, (m) => {
        changeRound(m, round, truth[truth.length - 1]!);
        truth.push(fileShas(m));
      });
      const next = fs.readFileSync(image);
      await writeChangedBlocks(d, 'v', next, prev);
      prev = next;
      points.push(await markCataloged(d, 'v', `m${round}`));
    }
    // Every later point was built incrementally, reading a small multiple of the metadata that changed.
    for (const p of points.slice(1)) {
      t.is(p.stats.mode, 'incremental', `@seq:${p.seq}`);
      t.true(
        p.stats.blocksRead <= 3 * p.stats.changedMetadataBlocks + 24,
        `@seq:${p.seq}: read ${p.stats.blocksRead} blocks for ${p.stats.changedMetadataBlocks} changed metadata blocks`,
      );
    }
    t.log(
      `incremental builds: ${points
        .slice(1)
        .map((p) => `${p.stats.blocksRead}/${p.stats.changedMetadataBlocks}`)
        .join(' ')} blocks read / changed metadata`,
    );

    // 100 random (file, point) restores: the recorded checksums, reading the file's blocks plus a few metadata blocks.
    const r = rng(5);
    let worst = 0;
    for (let i = 0; i < 100; i++) {
      const k = Math.floor(r() * 10);
      const names = [...truth[k]!.keys()];
      const p = names[Math.floor(r() * names.length)]!;
      const before = await metric(d, 'rewind_file_restore_image_bytes_total');
      const got = await download(
        d,
        `/v1/volumes/v/files/content?${new URLSearchParams({ at: `m${k + 1}`, pathB64: unescapeName(p).toString('base64') })}`,
      );
      const read = (await metric(d, 'rewind_file_restore_image_bytes_total')) - before;
      t.is(crypto.createHash('sha256').update(got.body).digest('hex'), truth[k]!.get(p)!.sha, `${p} at m${k + 1}`);
      const allowance = Math.ceil(got.body.length / 4096) * 4096 + 1024 + 3 * 4096; // superblock, descriptors, inode block, one map block
      t.true(read <= allowance, `${p} at m${k + 1}: read ${read} bytes for ${got.body.length}`);
      worst = Math.max(worst, read - got.body.length);
    }
    t.log(`restores: at most ${worst} bytes read beyond the file's size`);

    // --versions: exactly the points where the file's content changed (or it appeared or vanished).
    const every = new Set(truth.flatMap((m) => [...m.keys()]));
    for (const p of every) {
      const v = await apiOk<{ versions: Version[] }>(
        d,
        'GET',
        `/v1/volumes/v/files/versions?${new URLSearchParams({ pathB64: unescapeName(p).toString('base64') })}`,
      );
      const want: number[] = [];
      truth.forEach((m, k) => {
        const was = k > 0 ? truth[k - 1]!.get(p) : undefined;
        if ((m.get(p)?.sha ?? null) !== (was?.sha ?? null)) want.push(points[k]!.seq);
      });
      t.deepEqual(
        v.versions.map((x) => x.seq),
        want,
        `${p}: ${JSON.stringify(v.versions.map((x) => [x.seq, x.deleted ?? x.size]))}`,
      );
    }

    // changed-files between consecutive markers: exactly the files each round changed.
    for (let k = 1; k < 10; k++) {
      const c = await apiOk<{ changes: Array<{ path: string; pathRaw: string; type: string; change: string }> }>(
        d,
        'GET',
        `/v1/volumes/v/changed-files?from=m${k}&to=m${k + 1}`,
      );
      const files = c.changes.filter((x) => x.type === 'file' && x.change !== 'metadata').map((x) => x.path);
      t.deepEqual(files.sort(), [...changedPaths(truth[k - 1]!, truth[k]!)].sort(), `changed-files m${k}..m${k + 1}`);
    }

    // The last point equals a full catalog of the same image (another volume, written whole).
    await createVolume(d, 'w', 96);
    await writeChangedBlocks(d, 'w', prev, null);
    const full = await markCataloged(d, 'w', 'all');
    t.is(full.stats.mode, 'full');
    const strip = (l: FileInfo[]) => l.map((e) => ({ ...e, contentSeq: 0 })).sort((a, b) => a.pathRaw.localeCompare(b.pathRaw));
    t.deepEqual(strip(await listAll(d, 'v', 'm10')), strip(await listAll(d, 'w', 'all')), 'incremental m10 equals a full build');

    // restore-file --out: a file, refusals, a directory with names that are not text.
    const out = path.join(tmp.dir, 'out');
    fs.mkdirSync(out);
    const someFile = [...truth[2]!.keys()].find((p) => p.startsWith('/data/d1/'))!;
    await cliOk(d, ['restore-file', 'v', someFile, '--at', 'm3', '--out', path.join(out, 'one')]);
    t.is(
      crypto
        .createHash('sha256')
        .update(fs.readFileSync(path.join(out, 'one')))
        .digest('hex'),
      truth[2]!.get(someFile)!.sha,
    );
    const again = await d.cli(['restore-file', 'v', someFile, '--at', 'm3', '--out', path.join(out, 'one')]);
    t.is(again.code, 1);
    t.regex(again.stderr, /already exists/);
    await cliOk(d, ['restore-file', 'v', someFile, '--at', 'm3', '--out', path.join(out, 'one'), '--force']);
    await cliOk(d, ['restore-file', 'v', '/data', '--at', 'm6', '--out', path.join(out, 'data')]);
    const back = fileShas(path.join(out, 'data'));
    const want6 = new Map([...truth[5]!].filter(([p]) => p.startsWith('/data/')).map(([p, v]) => [p.slice('/data'.length), v]));
    t.deepEqual(new Map([...back].sort()), new Map([...want6].sort()), 'the /data tree at m6');
    await cliOk(d, ['restore-file', 'v', '/odd', '--at', 'm1', '--out', path.join(out, 'odd')]);
    t.deepEqual(fs.readdirSync(path.join(out, 'odd'), { encoding: 'buffer' }).sort(Buffer.compare), [...ODD].sort(Buffer.compare));
    // A symlink inside the target that points elsewhere: restoring through it is refused without --force.
    fs.mkdirSync(path.join(out, 'trap'));
    fs.mkdirSync(path.join(tmp.dir, 'elsewhere'));
    fs.symlinkSync(path.join(tmp.dir, 'elsewhere'), path.join(out, 'trap/sub'));
    const trap = await d.cli(['restore-file', 'v', '/data/d4', '--at', 'm1', '--out', path.join(out, 'trap'), '--force']);
    t.is(trap.code, 0, trap.stderr);
    t.deepEqual(fs.readdirSync(path.join(tmp.dir, 'elsewhere')), [], 'a symlink in the way is replaced, never written through');
    const refused = await d.cli(['restore-file', 'v', '/data/d4', '--at', 'm1', '--out', path.join(out, 'trap')]);
    t.is(refused.code, 1, 'an existing --out is refused without --force');
    t.regex(refused.stderr, /already exists/);

    // --into a writable clone: the file at m3 written into the clone of m10, read back through the clone's export.
    await apiOk(d, 'POST', '/v1/volumes/v/clones', { at: 'm10', name: 'cl' });
    const target = [...truth[2]!.keys()].find((p) => p.startsWith('/data/d2/') && truth[9]!.get(p)?.sha !== truth[2]!.get(p)!.sha)!;
    const into = await cliOk(d, ['restore-file', 'v', target, '--at', 'm3', '--into', 'cl', '--force']);
    t.regex(into, /e2fsck -fn: clean/);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'cl' });
    try {
      const img: FsImage = { size: 96 * MiB, read: (o, l) => c.read(o, l) };
      const efs = await openFilesystem(img);
      const parts: Buffer[] = [];
      for await (const chunk of efs.readFile(target)) parts.push(Buffer.from(chunk));
      t.is(crypto.createHash('sha256').update(Buffer.concat(parts)).digest('hex'), truth[2]!.get(target)!.sha);
    } finally {
      c.destroy();
    }
    void waitPoint;
  } finally {
    await d.cleanup();
    tmp.cleanup();
  }
});

test('kill -9 during a catalog build: the restarted daemon builds the point again, complete', async (t) => {
  requireTools('mkfs.ext4', 'fls');
  const tmp = tempDir();
  // A slow background build (5% duty), so the kill lands in the middle of it.
  const d = await startDaemon({ env: { REWIND_CATALOG_DUTY: '0.05' } });
  let again: TestDaemon | null = null;
  try {
    const src = path.join(tmp.dir, 'src');
    for (let dd = 0; dd < 10; dd++) {
      fs.mkdirSync(path.join(src, `d${dd}`), { recursive: true });
      for (let i = 0; i < 1000; i++) fs.writeFileSync(path.join(src, `d${dd}/file-${i}`), i % 10 === 0 ? `${dd}/${i}\n` : '');
    }
    const image = path.join(tmp.dir, 'disk.img');
    makeFs(image, src, { kind: 'ext4', blockSize: 4096, sizeMiB: 128 });
    await createVolume(d, 'k', 128);
    await writeChangedBlocks(d, 'k', fs.readFileSync(image), null);
    const r = await apiOk<{ job: { id: number; seq: number } }>(d, 'POST', '/v1/volumes/k/catalog', { at: 'latest' });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const j = await apiOk<{ state: string; progress: { done: number } }>(d, 'GET', `/v1/catalog/jobs/${r.job.id}`);
      if (j.state === 'running' && j.progress.done >= 1024) break;
      if (j.state === 'done') throw new Error('the build finished before the kill: make it slower');
      if (Date.now() > deadline) throw new Error(`the build did not get going: ${JSON.stringify(j)}`);
      await new Promise((res) => setTimeout(res, 50));
    }
    type DaemonJobs = { jobs: Array<{ kind: string; target: string; state: string; progress: { done: number } | null }> };
    const running = (await apiOk<DaemonJobs>(d, 'GET', '/v1/jobs')).jobs;
    t.truthy(
      running.find((x) => x.kind === 'catalog' && x.target === 'k' && x.state === 'running' && (x.progress?.done ?? 0) > 0),
      `the build is among the daemon's jobs, with progress: ${JSON.stringify(running)}`,
    );
    const killed = await d.kill('SIGKILL');
    t.is(killed.signal, 'SIGKILL');
    // The same data directory, now at full speed.
    const d2 = (again = await startDaemon({ dataDir: d.dataDir }));
    const p = await waitPoint(d2, 'k', r.job.seq, 180_000);
    // The point is complete a moment before its job is marked done.
    let job = await apiOk<{ state: string; attempts: number }>(d2, 'GET', `/v1/catalog/jobs/${r.job.id}`);
    for (let i = 0; i < 100 && job.state === 'running'; i++) {
      await new Promise((res) => setTimeout(res, 100));
      job = await apiOk<{ state: string; attempts: number }>(d2, 'GET', `/v1/catalog/jobs/${r.job.id}`);
    }
    t.is(job.state, 'done');
    t.is(job.attempts, 2, 'run again after the restart');
    const finished = (await apiOk<DaemonJobs>(d2, 'GET', '/v1/jobs')).jobs;
    t.truthy(
      finished.find((x) => x.kind === 'catalog' && x.target === 'k' && x.state === 'done'),
      `the restarted build is a finished daemon job: ${JSON.stringify(finished)}`,
    );
    const listed = await listAll(d2, 'k', `@seq:${r.job.seq}`);
    t.is(listed.length, fls(image).length, 'every path, once');
    t.is(new Set(listed.map((e) => e.pathRaw)).size, listed.length);
    t.is(p.filesystems[0]!.entries, listed.length);
  } finally {
    await again?.cleanup();
    await d.cleanup();
    tmp.cleanup();
  }
});

test("search by --name and --newer; a point's catalog exported as a blob answers in another daemon without the volume", async (t) => {
  requireTools('mkfs.ext4', 'fls');
  const tmp = tempDir();
  const d = await startDaemon();
  let d2: TestDaemon | null = null;
  try {
    const src = path.join(tmp.dir, 'src');
    fs.mkdirSync(path.join(src, 'etc/nginx'), { recursive: true });
    fs.mkdirSync(path.join(src, 'var/log'), { recursive: true });
    const old = new Date('2001-01-01T00:00:00Z');
    const files: Record<string, Date> = {
      'etc/nginx/nginx.conf': new Date('2025-06-01T00:00:00Z'),
      'etc/resolv.conf': old,
      'etc/hosts': old,
      'var/log/app.log': new Date('2025-07-01T00:00:00Z'),
    };
    for (const [p, when] of Object.entries(files)) {
      fs.writeFileSync(path.join(src, p), `${p}\n`);
      fs.utimesSync(path.join(src, p), when, when);
    }
    const image = path.join(tmp.dir, 'disk.img');
    makeFs(image, src, { kind: 'ext4', blockSize: 4096, sizeMiB: 32 });
    await createVolume(d, 'v', 32);
    await writeChangedBlocks(d, 'v', fs.readFileSync(image), null);
    const p = await markCataloged(d, 'v', 'm1');

    const names = async (dd: TestDaemon, args: string[]): Promise<string[]> =>
      (JSON.parse(await cliOk(dd, ['files', 'v', ...args, '--json'])) as { entries: FileInfo[] }).entries
        .filter((e) => e.type === 'file') // directories made by mkfs -d are new too
        .map((e) => e.path)
        .sort();
    t.deepEqual(await names(d, ['/', '--at', 'm1', '--name', '*.conf']), ['/etc/nginx/nginx.conf', '/etc/resolv.conf']);
    t.deepEqual(await names(d, ['/etc', '--at', 'm1', '--name', '*.conf']), ['/etc/nginx/nginx.conf', '/etc/resolv.conf']);
    t.deepEqual(await names(d, ['/', '--at', 'm1', '--newer', '2020-01-01T00:00:00Z']), ['/etc/nginx/nginx.conf', '/var/log/app.log']);
    const all = await listAll(d, 'v', 'm1');

    // The blob, into a daemon that has no such volume (an archive's catalog): the same listing, by marker and by seq.
    const blob = path.join(tmp.dir, 'v.rwfcat');
    await cliOk(d, ['catalog', 'v', '--at', 'm1', '--export', blob]);
    const again = await d.cli(['catalog', 'v', '--at', 'm1', '--export', blob]);
    t.is(again.code, 1, 'an existing --export file is refused without --force');
    d2 = await startDaemon();
    await cliOk(d2, ['catalog', 'v', '--import', blob]);
    t.deepEqual(await listAll(d2, 'v', 'm1'), all);
    t.deepEqual(await listAll(d2, 'v', `@seq:${p.seq}`), all);
    t.deepEqual(await names(d2, ['/', '--at', 'm1', '--name', '*.conf']), ['/etc/nginx/nginx.conf', '/etc/resolv.conf']);
    const v = await apiOk<{ versions: Version[] }>(d2, 'GET', '/v1/volumes/v/files/versions?path=/etc/hosts');
    t.deepEqual(
      v.versions.map((x) => x.seq),
      [p.seq],
    );
  } finally {
    await d2?.cleanup();
    await d.cleanup();
    tmp.cleanup();
  }
});
