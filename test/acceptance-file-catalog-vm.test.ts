/**
 * The file catalog on a filesystem made and changed by the VM rig's guest
 * (a Linux kernel under qemu, writing over qemu's NBD client). One boot runs
 * 10 rounds; each mounts the filesystem, changes it (in-place writes,
 * appends, replacements, a deletion, a creation, a rename; a directory made,
 * renamed and removed), prints the sha256 of every file, unmounts, and waits
 * for the host: the host places a marker (the catalog is built at it by the
 * marker hook) and then writes "go N" to a second disk the guest polls. The
 * guest's checksums are the truth.
 *
 *  - the catalog equals `fls -r -p -m /` on `rewind export` of the first,
 *    a middle and the last point (path, inode, type, mode, owner, size, mtime);
 *  - 100 random (file, point) restores have the guest's checksums and read
 *    at most the file's blocks plus a few metadata blocks (counted);
 *  - --versions lists exactly the points at which the guest changed each
 *    file; changed-files lists exactly the files each round changed;
 *  - every point after the first was built incrementally.
 *
 * The rounds are awaited over three serial tests so each stays within AVA's
 * timeout (TCG is slow on a busy machine).
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FileInfo, PointRecord, Version } from '../src/file-catalog/service';
import { NbdClient } from '../src/nbd/client';
import { startDaemon, type TestDaemon } from './helpers/daemon';
import { download, metric, waitPoint } from './helpers/catalog-live';
import { fls, flsName, requireTools, tempDir } from './helpers/fs-images';
import { apiOk, cliOk } from './helpers/live';
import { rng } from './helpers/random';
import { describeRun, startGuest, volumeDisk, type GuestResult } from './helpers/vm';
import { escapeName } from '../src/fs';

const ROUNDS = 10;
const META: Record<string, string> = { file: 'r', dir: 'd', symlink: 'l' };

/** The guest's side (busybox sh; lib.sh gives arg, result, fail, gen_content, file_size, sha). */
const SCRIPT = String.raw`#!/bin/sh
. /etc/rewind/lib.sh
seed=$(arg seed 1); files=$(arg files 40); rounds=$(arg rounds 10)
mkfs.ext4 -q -F -L guest /dev/vda || fail "mkfs failed"
# pick K: one of the files there now, chosen by the round and K.
pick() {
  find tree -type f | LC_ALL=C sort >/tmp/list
  n=$(wc -l </tmp/list)
  sed -n "$(( (round * 7919 + $1 * 104729) % n + 1 ))p" /tmp/list
}
round=1
while [ $round -le "$rounds" ]; do
  mount -t ext4 /dev/vda /mnt || fail "mount failed"
  cd /mnt || fail "cd failed"
  if [ "$round" = 1 ]; then
    mkdir -p etc tree/d0 tree/d1 tree/d2 tree/d3
    echo "LABEL=guest / ext4 defaults 0 1" >etc/fstab
    i=0
    while [ $i -lt "$files" ]; do
      f=tree/d$((i % 4))/f$i
      gen_content "$seed" "$f" "$(file_size "$seed" "$i" 96)" >"$f" || fail "write $f"
      i=$((i + 1))
    done
  else
    for k in 1 2 3; do
      f=$(pick $k)
      gen_content "$seed$round" "$f" 3000 | dd of="$f" bs=512 seek=$k conv=notrunc 2>/dev/null || fail "overwrite $f"
    done
    f=$(pick 4); gen_content "$seed$round" "$f+" 5000 >>"$f" || fail "append $f"
    f=$(pick 5); gen_content "$seed$round" "$f" 20000 >"$f.tmp" && mv "$f.tmp" "$f" || fail "replace $f"
    f=$(pick 6); rm "$f" || fail "rm $f"
    gen_content "$seed$round" new 7000 >tree/d$((round % 4))/new$round || fail "create"
    f=$(pick 7); mv "$f" tree/d1/moved$round || fail "rename $f"
    if [ "$round" = 4 ]; then
      mkdir tree/sub
      for k in 1 2 3; do gen_content "$seed" sub$k 9000 >tree/sub/s$k; done
    fi
    [ "$round" = 6 ] && mv tree/sub tree/sub6
    [ "$round" = 8 ] && rm -rf tree/sub6
  fi
  find tree etc -type f | LC_ALL=C sort | xargs sha256sum >MANIFEST.sha256 || fail "manifest"
  count=1
  while read -r s p; do echo "REWIND-SHA $s /$p"; count=$((count + 1)); done <MANIFEST.sha256
  echo "REWIND-SHA $(sha MANIFEST.sha256) /MANIFEST.sha256"
  cd / && sync && umount /mnt || fail "umount failed"
  echo "REWIND-ROUND $round $count"
  # The host marks the point, then writes "go N" at the start of the second disk.
  while :; do
    echo 3 >/proc/sys/vm/drop_caches
    [ "$(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c 8 | tr -d '\000')" = "go $round" ] && break
    sleep 1
  done
  round=$((round + 1))
done
result "rounds=$rounds"
exit 0
`;

type Truth = Map<string, string>;

interface State {
  d: TestDaemon;
  tmp: ReturnType<typeof tempDir>;
  truth: Truth[];
  /** The marker's seq of each round, once placed. */
  seqs: number[];
  points: PointRecord[];
  /** Resolves when round n's marker is placed (index n - 1). */
  rounds: Array<Promise<void>>;
  guest: Promise<GuestResult>;
}
let s: State | null = null;

test.before(() => {
  requireTools('fls', 'qemu-system-x86_64');
});

test.after.always(async () => {
  await s?.d.cleanup();
  s?.tmp.cleanup();
});

/** Boots the guest once; each round's lines are collected and answered as they arrive. */
async function state(): Promise<State> {
  if (s) return s;
  const tmp = tempDir();
  const script = path.join(tmp.dir, 'rounds.sh');
  fs.writeFileSync(script, SCRIPT, { mode: 0o755 });
  const d = await startDaemon();
  await apiOk(d, 'POST', '/v1/volumes', { name: 'g', size: '128M', protected: true });
  await apiOk(d, 'POST', '/v1/volumes', { name: 'sig', size: '1M' });
  const sig = await NbdClient.connect({ path: d.nbdSocket, exportName: 'sig' });
  const settle: Array<{ ok: () => void; fail: (e: unknown) => void }> = [];
  const rounds = Array.from({ length: ROUNDS }, (_, i) => new Promise<void>((ok, fail) => (settle[i] = { ok, fail })));
  for (const r of rounds) r.catch(() => undefined); // awaited by the tests; a failure is reported there
  const st: State = { d, tmp, truth: [], seqs: [], points: [], rounds, guest: Promise.resolve({} as GuestResult) };
  let current: Truth = new Map();
  let chain = Promise.resolve();
  const run = await startGuest({
    disks: [volumeDisk(d, 'g'), volumeDisk(d, 'sig')],
    scenario: 'custom',
    script,
    args: { seed: 5, files: 40, rounds: ROUNDS },
    // A busy host can starve TCG's emulated timer long enough for the kernel's IO-APIC timer check to panic.
    cmdline: 'no_timer_check',
    timeoutMs: 1_200_000,
    onLine: (line) => {
      const sha = /^REWIND-SHA ([0-9a-f]{64}) (\/\S+)$/.exec(line);
      if (sha) current.set(sha[2]!, sha[1]!);
      const done = /^REWIND-ROUND (\d+) (\d+)$/.exec(line);
      if (!done) return;
      const n = Number(done[1]);
      const truth = current;
      current = new Map();
      chain = chain.then(async () => {
        try {
          if (truth.size !== Number(done[2])) throw new Error(`round ${n}: ${truth.size} checksums read, the guest printed ${done[2]}`);
          st.truth.push(truth);
          const m = await apiOk<{ seq: number }>(d, 'POST', '/v1/markers/g', { name: `g${n}` });
          st.seqs.push(m.seq);
          const go = Buffer.alloc(512);
          go.write(`go ${n}`);
          await sig.write(0, go);
          await sig.flush();
          settle[n - 1]!.ok();
        } catch (err) {
          settle[n - 1]!.fail(err);
        }
      });
    },
  });
  st.guest = run.done.then((r) => {
    sig.destroy();
    for (const x of settle) x.fail(new Error(`the guest ended before its rounds did: ${describeRun(r)}`));
    return r;
  });
  s = st;
  return st;
}

/** Waits for rounds up to n, then (at the end) for the guest and every point's catalog. */
async function roundsUpTo(n: number): Promise<State> {
  const st = await state();
  await Promise.race([Promise.all(st.rounds.slice(0, n)), st.guest.then(() => Promise.all(st.rounds.slice(0, n)))]);
  if (n === ROUNDS) {
    const r = await st.guest;
    if (r.exitCode !== 0) throw new Error(describeRun(r));
    for (const seq of st.seqs) st.points.push(await waitPoint(st.d, 'g', seq, 240_000));
  }
  return st;
}

async function listAll(d: TestDaemon, at: string): Promise<FileInfo[]> {
  const out: FileInfo[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams({ at, path: '/', recursive: '1', limit: '5000' });
    if (cursor) q.set('cursor', cursor);
    const r = await apiOk<{ entries: FileInfo[]; next: string | null }>(d, 'GET', `/v1/volumes/g/files?${q}`);
    out.push(...r.entries);
    cursor = r.next;
  } while (cursor);
  return out;
}

test.serial('the guest boots and makes its filesystem (round 1)', async (t) => {
  t.timeout(280_000);
  const st = await roundsUpTo(1);
  t.true(st.seqs.length >= 1);
});

test.serial('guest rounds 2-5', async (t) => {
  t.timeout(280_000);
  const st = await roundsUpTo(5);
  t.true(st.seqs.length >= 5);
});

test.serial('guest rounds 6-10, and every point cataloged', async (t) => {
  t.timeout(280_000);
  const st = await roundsUpTo(ROUNDS);
  t.is(st.points.length, ROUNDS);
  t.is(st.points[0]!.stats.mode, 'full');
  t.is(st.points[0]!.filesystems[0]!.fsLabel, 'guest');
  t.is(st.points[0]!.filesystems[0]!.mountPoint, '/', "the mount point from the guest's /etc/fstab");
});

test.serial("oracle: the catalog equals fls on rewind export of the guest's points", async (t) => {
  const st = s;
  if (st?.points.length !== ROUNDS) return t.fail('the rounds did not all run');
  for (const k of [1, 5, ROUNDS]) {
    const out = path.join(st.tmp.dir, `g${k}.raw`);
    await cliOk(st.d, ['export', 'g', '--at', `g${k}`, '--out', out]);
    const theirs = new Map(fls(out).map((e) => [escapeName(e.path), e]));
    const mine = await listAll(st.d, `g${k}`);
    const got = new Map(mine.map((e) => [escapeName(flsName(Buffer.from(e.pathRaw, 'base64'))), e]));
    t.deepEqual([...got.keys()].sort(), [...theirs.keys()].sort(), `g${k}: the paths of fls`);
    const bad: string[] = [];
    for (const [p, e] of got) {
      const x = theirs.get(p);
      if (!x) continue;
      const a = [e.ino, META[e.type] ?? e.type, e.mode & 0o7777, e.uid, e.gid, e.size, e.times.mtime[0]];
      const b = [x.ino, x.metaType, x.perm, x.uid, x.gid, x.size, x.mtime];
      if (JSON.stringify(a) !== JSON.stringify(b)) bad.push(`${p}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
    }
    t.deepEqual(bad, [], `g${k}: inode, type, mode, owner, size and mtime of fls`);
    fs.rmSync(out);
  }
});

test.serial('incremental builds after the first, each reading a small multiple of the changed metadata', (t) => {
  const st = s;
  if (st?.points.length !== ROUNDS) return t.fail('the rounds did not all run');
  for (const p of st.points.slice(1)) {
    t.is(p.stats.mode, 'incremental', `@seq:${p.seq}`);
    t.true(
      p.stats.blocksRead <= 3 * p.stats.changedMetadataBlocks + 24,
      `@seq:${p.seq}: ${p.stats.blocksRead} blocks read for ${p.stats.changedMetadataBlocks}`,
    );
  }
  t.log(
    `blocks read / changed metadata: ${st.points
      .slice(1)
      .map((p) => `${p.stats.blocksRead}/${p.stats.changedMetadataBlocks}`)
      .join(' ')}`,
  );
});

test.serial("100 random (file, point) restores have the guest's checksums, reading the file's blocks and a few more", async (t) => {
  const st = s;
  if (st?.points.length !== ROUNDS) return t.fail('the rounds did not all run');
  const r = rng(17);
  let worst = 0;
  for (let i = 0; i < 100; i++) {
    const k = Math.floor(r() * ROUNDS);
    const names = [...st.truth[k]!.keys()];
    const p = names[Math.floor(r() * names.length)]!;
    const before = await metric(st.d, 'rewind_file_restore_image_bytes_total');
    const got = await download(st.d, `/v1/volumes/g/files/content?${new URLSearchParams({ at: `g${k + 1}`, path: p })}`);
    const read = (await metric(st.d, 'rewind_file_restore_image_bytes_total')) - before;
    t.is(crypto.createHash('sha256').update(got.body).digest('hex'), st.truth[k]!.get(p) ?? 'absent', `${p} at g${k + 1}`);
    // The file's blocks, the superblock, descriptors, its inode's table block and one map block.
    const allowance = Math.ceil(got.body.length / 4096) * 4096 + 1024 + 3 * 4096;
    t.true(read <= allowance, `${p} at g${k + 1}: read ${read} bytes for ${got.body.length}`);
    worst = Math.max(worst, read - got.body.length);
  }
  t.log(`at most ${worst} bytes read beyond a file's size`);
});

test.serial('--versions and changed-files: exactly what the guest changed', async (t) => {
  const st = s;
  if (st?.points.length !== ROUNDS) return t.fail('the rounds did not all run');
  const every = new Set(st.truth.flatMap((m) => [...m.keys()]));
  for (const p of every) {
    const v = await apiOk<{ versions: Version[] }>(st.d, 'GET', `/v1/volumes/g/files/versions?${new URLSearchParams({ path: p })}`);
    const want: number[] = [];
    st.truth.forEach((m, k) => {
      if ((m.get(p) ?? null) !== (k > 0 ? (st.truth[k - 1]!.get(p) ?? null) : null)) want.push(st.points[k]!.seq);
    });
    t.deepEqual(
      v.versions.map((x) => x.seq),
      want,
      p,
    );
  }
  for (let k = 1; k < ROUNDS; k++) {
    const c = await apiOk<{ changes: Array<{ path: string; type: string; change: string }> }>(
      st.d,
      'GET',
      `/v1/volumes/g/changed-files?from=g${k}&to=g${k + 1}`,
    );
    const files = c.changes.filter((x) => x.type === 'file' && x.change !== 'metadata').map((x) => x.path);
    const a = st.truth[k - 1]!;
    const b = st.truth[k]!;
    const want = new Set<string>();
    for (const [p, sha] of b) if (a.get(p) !== sha) want.add(p);
    for (const p of a.keys()) if (!b.has(p)) want.add(p);
    t.deepEqual(files.sort(), [...want].sort(), `changed-files g${k}..g${k + 1}`);
  }
});
