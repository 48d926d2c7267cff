/**
 * The file catalog's builder on real images, without a daemon (each point
 * an image file, the history's changed blocks found by comparing files):
 *
 *  - a full catalog equals `fls -r -p -m /` (path, inode, type, mode, owner,
 *    size, mtime) on ext2/3/4 inside MBR and GPT tables made by sfdisk;
 *  - an incremental catalog after ~1% of files changed reads a small
 *    multiple of the changed metadata blocks and equals a full build;
 *  - a point cataloged between two others leaves every point's view equal
 *    to a full build of it, and versions say where content changed;
 *  - a point's blob imports into an empty catalog as the same view;
 *  - damaged images are cataloged with errors, never a crash.
 */
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { escapeName } from '../src/fs';
import { exportBlob, importBlob, parseBlob } from '../src/file-catalog/blob';
import { listPartition, versionsOf, type FileInfo } from '../src/file-catalog/query';
import type { CatalogStore } from '../src/file-catalog/store';
import type { PointRecord } from '../src/file-catalog/types';
import {
  buildTree,
  debugfs,
  fls,
  flsName,
  makeDisk,
  makeFs,
  requireTools,
  tempDir,
  writeInto,
  type MkfsOptions,
} from './helpers/fs-images';
import { FilePoints, openStore } from './helpers/file-catalog';
import { pattern, rng } from './helpers/random';

const MiB = 1024 * 1024;
const TOOLS = ['fls', 'mkfs.ext4', 'debugfs', 'e2fsck', 'sfdisk'];
const META: Record<string, string> = { file: 'r', dir: 'd', symlink: 'l', chr: 'c', blk: 'b', fifo: 'p', socket: 'h' };

function listAll(store: CatalogStore, p: PointRecord, partition: number): FileInfo[] {
  const out: FileInfo[] = [];
  listPartition(store, p.vid, p.seq, partition, { path: Buffer.alloc(0), recursive: true, limit: 1e9 }, out);
  return out;
}

/** The catalog against fls on the same image: path, inode, type, permissions, owner, size, mtime. */
function compareFls(t: ExecutionContext, entries: FileInfo[], image: string, offset: number): void {
  const theirs = new Map(fls(image, offset).map((e) => [escapeName(e.path), e]));
  const mine = new Map(entries.map((e) => [escapeName(flsName(Buffer.from(e.pathRaw, 'base64'))), e]));
  t.deepEqual([...mine.keys()].sort(), [...theirs.keys()].sort(), 'the same paths as fls');
  const bad: string[] = [];
  for (const [k, e] of mine) {
    const f = theirs.get(k);
    if (!f) continue;
    const got = [e.ino, META[e.type], e.mode & 0o7777, e.uid, e.gid, e.size, e.times.mtime[0]];
    const want = [f.ino, f.metaType, f.perm, f.uid, f.gid, f.size, f.mtime];
    if (JSON.stringify(got) !== JSON.stringify(want)) bad.push(`${k}: ${JSON.stringify(got)} != fls ${JSON.stringify(want)}`);
  }
  t.deepEqual(bad, []);
}

interface DiskCase {
  name: string;
  script: string;
  parts: Array<{ mkfs: MkfsOptions; seed: number }>;
  sizeMiB: number;
}

const DISKS: DiskCase[] = [
  {
    name: 'MBR: ext4 + ext2 (1 KiB blocks)',
    sizeMiB: 100,
    script: 'label: dos\nstart=2048, size=56M, type=83\nsize=36M, type=83\n',
    parts: [
      { mkfs: { kind: 'ext4', blockSize: 4096, sizeMiB: 48, htree: true }, seed: 21 },
      { mkfs: { kind: 'ext2', blockSize: 1024, sizeMiB: 30 }, seed: 22 },
    ],
  },
  {
    name: 'GPT: ext3 + ext4 without extents',
    sizeMiB: 100,
    script: 'label: gpt\nstart=2048, size=48M, type=L\nsize=40M, type=L\n',
    parts: [
      { mkfs: { kind: 'ext3', blockSize: 4096, sizeMiB: 48 }, seed: 23 },
      { mkfs: { kind: 'ext4', blockSize: 1024, sizeMiB: 40, features: '^extent,^64bit' }, seed: 24 },
    ],
  },
];

for (const c of DISKS) {
  test(`full catalog equals fls: ${c.name}`, async (t) => {
    requireTools(...TOOLS);
    const tmp = tempDir();
    const store = openStore(path.join(tmp.dir, 'cat'));
    const pts = new FilePoints(store, 1);
    try {
      const disk = path.join(tmp.dir, 'disk.img');
      const layout = makeDisk(disk, c.sizeMiB, c.script);
      c.parts.forEach((p, i) => {
        const src = buildTree(path.join(tmp.dir, `src${i}`), { seed: p.seed, many: 300, blobs: 30 });
        const img = path.join(tmp.dir, `fs${i}.img`);
        makeFs(img, src, { ...p.mkfs, sizeMiB: Math.min(p.mkfs.sizeMiB, Math.floor(layout.partitions[i]!.size / MiB)) });
        writeInto(disk, layout.partitions[i]!.offset, img);
      });
      if (c.parts.some((p) => p.mkfs.kind === 'ext4')) {
        // An fstab naming both filesystems, as an installed system has.
        fs.writeFileSync(
          path.join(tmp.dir, 'fstab'),
          `# test\nLABEL=nolabel /nowhere ext4 defaults 0 0\n/dev/vda1 / ext4 defaults 0 1\n/dev/vda2 /data auto defaults 0 2\n`,
        );
        const first = layout.partitions[0]!;
        const fsImg = path.join(tmp.dir, 'fs0.img');
        debugfs(fsImg, ['mkdir /etc', `write ${path.join(tmp.dir, 'fstab')} /etc/fstab`]);
        writeInto(disk, first.offset, fsImg);
      }
      const rec = await pts.build(1, disk);
      t.is(rec.state, 'complete');
      t.deepEqual(rec.errors, []);
      t.is(rec.filesystems.length, c.parts.length);
      for (const [i, f] of rec.filesystems.entries()) {
        t.falsy(f.error, `${f.label}: ${f.error}`);
        t.is(f.fsType, c.parts[i]!.mkfs.kind);
        t.truthy(f.uuid);
        const entries = listAll(store, rec, f.partition);
        t.is(f.entries, entries.length);
        compareFls(t, entries, disk, f.offset);
      }
      if (c.parts.some((p) => p.mkfs.kind === 'ext4'))
        t.deepEqual(
          rec.filesystems.map((f) => f.mountPoint),
          ['/', '/data'],
        );
    } finally {
      await pts.close();
      await store.close();
      tmp.cleanup();
    }
  });
}

/** Files to change between points: debugfs requests on the image (rm, write, mkdir, rename by link/unlink). */
function changeRound(img: string, dir: string, round: number, names: string[]): { requests: string[]; changed: Set<string> } {
  const r = rng(1000 + round);
  const changed = new Set<string>();
  const requests: string[] = [];
  const pick = (): string => names[Math.floor(r() * names.length)]!;
  for (let i = 0; i < 10; i++) {
    const victim = pick();
    if (changed.has(victim)) continue;
    const local = path.join(dir, `r${round}-${i}`);
    fs.writeFileSync(local, pattern(500 + Math.floor(r() * 20000), round * 100 + i));
    requests.push(`rm ${victim}`, `write ${local} ${victim}`, `set_inode_field ${victim} mtime ${1_600_000_000 + round * 1000 + i}`);
    changed.add(victim);
  }
  for (let i = 0; i < 3; i++) {
    const local = path.join(dir, `n${round}-${i}`);
    fs.writeFileSync(local, pattern(3000 + i, round * 7 + i));
    const name = `/many/new-${round}-${i}`;
    requests.push(`write ${local} ${name}`);
    changed.add(name);
    names.push(name);
  }
  const gone = pick();
  if (!changed.has(gone)) {
    requests.push(`rm ${gone}`);
    changed.add(gone);
    names.splice(names.indexOf(gone), 1);
  }
  requests.push(`mkdir /newdir-${round}`, `write ${path.join(dir, `n${round}-0`)} /newdir-${round}/inside`);
  changed.add(`/newdir-${round}/inside`);
  void img;
  return { requests, changed };
}

async function fullView(dir: string, file: string, seq: number): Promise<Map<string, FileInfo>> {
  const s = openStore(dir);
  const p = new FilePoints(s, 1);
  try {
    const rec = await p.build(seq, file);
    const out = new Map<string, FileInfo>();
    for (const f of rec.filesystems) for (const e of listAll(s, rec, f.partition)) out.set(`${f.partition}:${e.path}`, e);
    return out;
  } finally {
    await p.close();
    await s.close();
  }
}

function view(store: CatalogStore, rec: PointRecord): Map<string, FileInfo> {
  const out = new Map<string, FileInfo>();
  for (const f of rec.filesystems) for (const e of listAll(store, rec, f.partition)) out.set(`${f.partition}:${e.path}`, e);
  return out;
}

/** Equal views, the content stamp aside (a fresh full build has no history to date content by). */
function sameView(t: ExecutionContext, got: Map<string, FileInfo>, want: Map<string, FileInfo>, what: string): void {
  const strip = (m: Map<string, FileInfo>) => [...m.entries()].map(([k, v]) => [k, { ...v, contentSeq: 0 }]).sort();
  t.deepEqual(strip(got), strip(want), what);
}

test('incremental after ~1% change: reads a small multiple of the changed metadata, equals a full build; out-of-order points and versions', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  const store = openStore(path.join(tmp.dir, 'cat'));
  const pts = new FilePoints(store, 1);
  try {
    const src = buildTree(path.join(tmp.dir, 'src'), { seed: 31, many: 2000, blobs: 20, big: false });
    const imgs: string[] = [path.join(tmp.dir, 'p1.img')];
    makeFs(imgs[0]!, src, { kind: 'ext4', blockSize: 4096, sizeMiB: 64, htree: true });
    const names = fs.readdirSync(path.join(src, 'many')).map((n) => `/many/${n}`);
    const changedAt: Array<Set<string>> = [new Set()];
    for (let round = 1; round <= 3; round++) {
      const next = path.join(tmp.dir, `p${round + 1}.img`);
      fs.copyFileSync(imgs[round - 1]!, next);
      const { requests, changed } = changeRound(next, tmp.dir, round, names);
      debugfs(next, requests);
      imgs.push(next);
      changedAt.push(changed);
    }
    // Points 1, 2 and 4 in order (1 full, 2 and 4 incremental), then 3 between 2 and 4.
    const full1 = await pts.build(1, imgs[0]!);
    t.is(full1.stats.mode, 'full');
    const inc2 = await pts.build(2, imgs[1]!);
    t.is(inc2.stats.mode, 'incremental');
    t.true(inc2.stats.changedMetadataBlocks > 0);
    // Reads: the changed metadata blocks (at both points, for directory blocks) plus a few for the partition table and superblock.
    t.true(
      inc2.stats.blocksRead <= 3 * inc2.stats.changedMetadataBlocks + 16,
      `incremental read ${inc2.stats.blocksRead} blocks for ${inc2.stats.changedMetadataBlocks} changed metadata blocks`,
    );
    t.true(
      inc2.stats.blocksRead * 4 < full1.stats.blocksRead,
      `incremental ${inc2.stats.blocksRead} blocks vs full ${full1.stats.blocksRead}`,
    );
    t.log(`full: ${full1.stats.blocksRead} blocks, ${full1.stats.durationMs} ms; incremental: ${JSON.stringify(inc2.stats)}`);
    const inc4 = await pts.build(4, imgs[3]!);
    t.is(inc4.stats.mode, 'incremental');
    const mid3 = await pts.build(3, imgs[2]!);
    t.is(mid3.stats.mode, 'incremental');
    for (const [i, seq] of [1, 2, 3, 4].entries()) {
      const rec = store.point(1, seq)!;
      sameView(t, view(store, rec), await fullView(path.join(tmp.dir, `full${seq}`), imgs[i]!, seq), `point ${seq} equals a full build`);
    }
    // Versions: exactly the points whose round changed the file.
    const points = new Map(store.pointsOf(1).map((p) => [p.seq, p]));
    for (let round = 1; round <= 3; round++) {
      for (const name of changedAt[round]!) {
        const v = versionsOf(store, 1, 0, Buffer.from(name), points);
        const expect = [1, 2, 3].filter((r) => changedAt[r]!.has(name)).map((r) => r + 1);
        const existedAt1 = !name.includes('new-') && !name.includes('newdir');
        const got = v.map((x) => x.seq).filter((s) => s !== 1 || !existedAt1);
        t.deepEqual(got, expect, `${name}: versions ${JSON.stringify(v.map((x) => [x.seq, x.deleted ?? false]))}`);
      }
    }
    const untouched = names.find((n) => ![1, 2, 3].some((r) => changedAt[r]!.has(n)))!;
    t.deepEqual(
      versionsOf(store, 1, 0, Buffer.from(untouched), points).map((v) => v.seq),
      [1],
    );
    // changed-files from the block diff: exactly the files a round changed.
    const diff = await pts.diff(4, imgs[3]!, 3);
    const files = diff.filter((c) => (c.after ?? c.before)!.type === 'file').map((c) => c.path.toString());
    t.deepEqual(files.sort(), [...changedAt[3]!].sort());
    // The blob of point 3 rebuilds the same view in an empty catalog.
    const blob = exportBlob(store, store.point(1, 3)!);
    const other = openStore(path.join(tmp.dir, 'imported'));
    try {
      const rec = await importBlob(other, parseBlob(blob), 7, 'vol');
      t.deepEqual([...view(other, rec).entries()].sort(), [...view(store, store.point(1, 3)!).entries()].sort());
      t.throws(() => parseBlob(Buffer.concat([blob.subarray(0, 100), Buffer.from([blob[100]! ^ 1]), blob.subarray(101)])));
    } finally {
      await other.close();
    }
  } finally {
    await pts.close();
    await store.close();
    tmp.cleanup();
  }
});

test('damaged images are cataloged with errors, never a crash', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  try {
    const src = buildTree(path.join(tmp.dir, 'src'), { seed: 41, many: 200, blobs: 10 });
    const clean = path.join(tmp.dir, 'clean.img');
    makeFs(clean, src, { kind: 'ext4', blockSize: 1024, sizeMiB: 24 });
    const base = fs.readFileSync(clean);
    let n = 0;
    let withErrors = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.nat({ max: 2 * MiB }), v: fc.nat({ max: 255 }) }), { minLength: 1, maxLength: 40 }),
        async (edits) => {
          const img = Buffer.from(base);
          for (const e of edits) img[e.at] = e.v;
          const file = path.join(tmp.dir, `m${n++}.img`);
          fs.writeFileSync(file, img);
          const store = openStore(path.join(tmp.dir, `cat${n}`));
          const pts = new FilePoints(store, 1);
          try {
            const rec = await pts.build(1, file);
            if (rec.errors.length || rec.filesystems.some((f) => f.error || f.warnings.length)) withErrors++;
          } finally {
            await pts.close();
            await store.close();
            fs.rmSync(file);
            fs.rmSync(path.join(tmp.dir, `cat${n}`), { recursive: true });
          }
        },
      ),
      { numRuns: 40, seed: 15 },
    );
    t.true(withErrors > 0, `${withErrors} of ${n} damaged images reported damage`);
  } finally {
    tmp.cleanup();
  }
});
