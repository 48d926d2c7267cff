/**
 * The VM test rig against a live `rewind serve`: a Linux guest (built from
 * Debian packages by vm-images/build.sh) boots under qemu with a Rewind
 * volume as its virtio disk, over qemu's NBD client, and runs scenarios on it.
 * See the issue "VM test rig". The guests run one at a time (TCG is CPU
 * bound).
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run, startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { describeRun, ensureGuestImage, runGuest, startGuest, syncedAtLeast, volumeDisk } from './helpers/vm';
import { REPO_ROOT } from '../tools/vm-run';

const VM_RUN = path.join(REPO_ROOT, 'dist', 'tools', 'vm-run.js');

let d: TestDaemon;

test.before(async () => {
  d = await startDaemon();
});

test.after.always(async () => {
  await d?.cleanup();
});

async function cli(args: string[]): Promise<string> {
  const r = await d.cli(args);
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function sha256File(p: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

test.serial('guest image: built from Debian packages, cached, with a manifest of its inputs', async (t) => {
  const image = await ensureGuestImage();
  const m = image.manifest;
  t.regex(m.kernel.package, /^linux-image-\d.*-cloud-amd64$/, 'a real kernel package, not the metapackage');
  const names = m.packages.map((p) => p.name);
  for (const p of [m.kernel.package, 'busybox-static', 'e2fsprogs', 'libc6', 'libext2fs2'])
    t.true(names.includes(p), `${p} in the manifest`);
  for (const p of m.packages) {
    t.regex(p.version, /^\S+$/, `${p.name} has a version`);
    t.regex(p.sha256, /^[0-9a-f]{64}$/, `${p.name} has the sha256 of its .deb`);
  }
  // The manifest describes the outputs exactly.
  t.is(sha256File(image.kernel), m.kernel.sha256);
  t.is(sha256File(image.initrd), m.initrd.sha256);
  t.is(fs.readFileSync(path.join(image.dir, 'packages.lock'), 'utf8'), m.packages.map((p) => `${p.name} ${p.version}\n`).join(''));
  // Modules load in dependency order; ext4 (built in or a module) is there.
  const at = (mod: string) => m.modules.indexOf(mod);
  for (const mod of ['virtio_ring', 'virtio', 'virtio_pci', 'virtio_blk']) t.true(at(mod) >= 0 || m.builtinModules.includes(mod), mod);
  if (at('virtio_ring') >= 0 && at('virtio') >= 0) t.true(at('virtio_ring') < at('virtio'), 'virtio_ring before virtio');
  t.true(at('virtio') < at('virtio_pci') && at('virtio') < at('virtio_blk'), 'virtio before virtio_pci and virtio_blk');
  t.true(m.modules.includes('ext4') || m.builtinModules.includes('ext4'));
  for (const s of ['write-tree', 'verify-tree', 'damage', 'writer', 'verify-synced']) t.true(m.scenarios.includes(s), s);
});

test.serial('ext4 on a protected volume: a guest writes a tree, a second boot verifies it, damage is detected', async (t) => {
  await cli(['volume', 'create', 'tree', '--size', '256M', '--protected']);
  const seed = 11;
  const disk = volumeDisk(d, 'tree');

  const w = await runGuest({ disks: [disk], scenario: 'write-tree', args: { seed, files: 64 } });
  t.log(`write-tree: ${(w.durationMs / 1000).toFixed(1)} s (boot ${w.bootSeconds} s guest uptime)`);
  t.is(w.exitCode, 0, describeRun(w));
  t.is(w.results.mkfs, 'ok');
  t.is(w.results.files, '64');
  const digest = w.results.manifest_sha256!;
  t.regex(digest, /^[0-9a-f]{64}$/);

  // Second boot, over NBD TCP this time: fsck clean, every checksum matches,
  // and the tree is the one the seed defines.
  const v = await runGuest({ disks: [{ uri: d.nbdUri('tree') }], scenario: 'verify-tree', args: { seed, files: 64, expect: digest } });
  t.log(`verify-tree: ${(v.durationMs / 1000).toFixed(1)} s`);
  t.is(v.exitCode, 0, describeRun(v));
  t.is(v.results.fsck, 'clean');
  t.is(v.results.manifest_sha256, digest);
  t.is(v.results.files_ok, '64');
  t.is(v.results.files_bad, '0');
  t.is(v.results.regen, 'match');
  t.is(v.results.tree, 'ok');

  // What the guests wrote went through the journal: production equals the replica.
  const ver = await d.cli(['verify', 'tree']);
  t.is(ver.code, 0, ver.stderr + ver.stdout);
  t.regex(ver.stdout, /\bequal\b/);

  // rm -rf of the tree, then garbage over the start of the disk.
  const dmg = await runGuest({ disks: [disk], scenario: 'damage', args: { mode: 'both', blocks: 64 } });
  t.log(`damage: ${(dmg.durationMs / 1000).toFixed(1)} s`);
  t.is(dmg.exitCode, 0, describeRun(dmg));
  t.is(dmg.results.damaged, 'rm,overwrite');
  t.is(dmg.results.removed_files, '64');

  const bad = await runGuest({ disks: [disk], scenario: 'verify-tree', args: { seed, expect: digest } });
  t.log(`verify-tree after damage: ${(bad.durationMs / 1000).toFixed(1)} s`);
  t.is(bad.exitCode, 1, describeRun(bad));
  t.is(bad.results.fsck, 'dirty');
  t.is(bad.results.tree, 'bad');
});

test.serial('crash: kill -9 of qemu mid-write loses no file the guest had synced', async (t) => {
  await cli(['volume', 'create', 'crash', '--size', '256M', '--protected']);
  const disk = volumeDisk(d, 'crash');
  const seed = 5;

  // The writer syncs after every file (up to 256 KiB) and says so; qemu dies
  // 250 ms after the line for file 10, while later files and syncs are in
  // flight.
  const g = await startGuest({
    disks: [disk],
    scenario: 'writer',
    args: { seed, every: 1, maxkb: 256 },
    killOn: { match: syncedAtLeast(10), delayMs: 250 },
  });
  const w = await g.done;
  t.log(`writer: killed after ${(w.durationMs / 1000).toFixed(1)} s, last synced n=${w.synced}`);
  t.true(w.killed, describeRun(w));
  t.is(w.qemu.signal, 'SIGKILL');
  t.is(w.exitCode, null, 'the guest did not finish');
  t.true(w.synced !== null && w.synced >= 10, describeRun(w));

  // The daemon's view: every acknowledged write journaled, replica equal.
  const ver = await d.cli(['verify', 'crash']);
  t.is(ver.code, 0, ver.stderr + ver.stdout);
  t.regex(ver.stdout, /\bequal\b/);

  // The guest's view: at most a journal replay, then fsck clean, and files
  // 1..synced all there with their exact content.
  const v = await runGuest({ disks: [disk], scenario: 'verify-synced', args: { seed, n: w.synced!, maxkb: 256 } });
  t.log(
    `verify-synced: ${(v.durationMs / 1000).toFixed(1)} s, needs_recovery=${v.results.needs_recovery}, files_total=${v.results.files_total}`,
  );
  t.is(v.exitCode, 0, describeRun(v));
  t.is(v.results.fsck, 'clean');
  t.is(v.results.synced_ok, String(w.synced));
  t.is(v.results.synced_bad, '0');
  t.true(Number(v.results.files_total) >= w.synced!);
});

test.serial('tools/vm-run: CLI with an NBD URI, a custom guest script, the exit status passed through', async (t) => {
  await cli(['volume', 'create', 'cli', '--size', '64M']);
  const image = await ensureGuestImage();
  const dir = tempDir('rwvm-');
  try {
    const script = path.join(dir, 'check.sh');
    fs.writeFileSync(
      script,
      '#!/bin/sh\n. /etc/rewind/lib.sh\n' +
        'result "size=$(( $(cat /sys/block/vda/size) * 512 ))" "word=$(arg word none)"\n' +
        'echo hello | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null\nexit 3\n',
    );
    const serialLog = path.join(dir, 'serial.log');
    const r = await run(
      process.execPath,
      [
        VM_RUN,
        '--image',
        image.dir,
        '--disk',
        d.nbdUnixUri('cli'),
        '--script',
        script,
        '--arg',
        'word=rewind',
        '--serial-log',
        serialLog,
        '--json',
      ],
      { timeoutMs: 200_000 },
    );
    t.is(r.code, 3, r.stderr + r.stdout);
    const out = JSON.parse(r.stdout) as { exitCode: number; results: Record<string, string> };
    t.is(out.exitCode, 3);
    t.is(out.results.size, String(64 * 1024 * 1024));
    t.is(out.results.word, 'rewind');
    t.regex(fs.readFileSync(serialLog, 'utf8'), /REWIND-SCENARIO-EXIT 3/);
    // The guest's write reached the volume.
    const head = Buffer.alloc(6);
    const fd = fs.openSync(path.join(d.dataDir, 'volumes', 'cli', 'image.raw'), 'r');
    fs.readSync(fd, head, 0, 6, 0);
    fs.closeSync(fd);
    t.is(head.toString(), 'hello\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

async function api<T = any>(method: string, p: string, body?: unknown): Promise<T> {
  const r = await d.api(method, p, body);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

test.serial('marker recovery: after the guest damages its disk, a clone at the marker boots with the tree intact', async (t) => {
  await cli(['volume', 'create', 'rec', '--size', '256M', '--protected']);
  const seed = 23;
  const disk = volumeDisk(d, 'rec');
  const w = await runGuest({ disks: [disk], scenario: 'write-tree', args: { seed, files: 48 } });
  t.is(w.exitCode, 0, describeRun(w));
  const digest = w.results.manifest_sha256!;
  // The host places a marker; then the guest deletes the tree and writes garbage over the start of the disk.
  await cli(['mark', 'rec', 'tree-a']);
  const dmg = await runGuest({ disks: [disk], scenario: 'damage', args: { mode: 'both', blocks: 64 } });
  t.is(dmg.exitCode, 0, describeRun(dmg));
  await cli(['clone', 'rec', '--at', 'tree-a', '--name', 'rec-good']);
  const v = await runGuest({ disks: [volumeDisk(d, 'rec-good')], scenario: 'verify-tree', args: { seed, files: 48, expect: digest } });
  t.is(v.exitCode, 0, describeRun(v));
  t.is(v.results.fsck, 'clean');
  t.is(v.results.files_ok, '48');
  t.is(v.results.manifest_sha256, digest);
  // The damaged source is left as it was.
  const bad = await runGuest({ disks: [disk], scenario: 'verify-tree', args: { seed, expect: digest } });
  t.is(bad.exitCode, 1, describeRun(bad));
  t.is(bad.results.tree, 'bad');
});

test.serial(
  'crash consistency on clones: at the last write before kill -9 at most a journal replay; at the last sync every synced file',
  async (t) => {
    await cli(['volume', 'create', 'cc', '--size', '256M', '--protected']);
    const seed = 9;
    // The point of each completed sync: the guest prints the line after sync returned,
    // so every write it flushed has a seq at or before the latest one when we see it.
    const syncPoints = new Map<number, Promise<number>>();
    const g = await startGuest({
      disks: [volumeDisk(d, 'cc')],
      scenario: 'writer',
      args: { seed, every: 1, maxkb: 256 },
      killOn: { match: syncedAtLeast(8), delayMs: 300 },
      onLine: (line) => {
        const m = /REWIND-SYNCED n=(\d+)/.exec(line);
        if (m)
          syncPoints.set(
            Number(m[1]),
            api('POST', '/v1/volumes/cc/resolve', { at: 'latest' }).then((p) => p.seq as number),
          );
      },
    });
    const w = await g.done;
    t.true(w.killed, describeRun(w));
    const n = w.synced!;
    t.true(n >= 8);
    const atSync = await syncPoints.get(n)!;
    await cli(['clone', 'cc', '--at', 'latest', '--name', 'cc-last']);
    await cli(['clone', 'cc', '--at', `@seq:${atSync}`, '--name', 'cc-sync']);
    const last = await runGuest({ disks: [volumeDisk(d, 'cc-last')], scenario: 'verify-synced', args: { seed, n, maxkb: 256 } });
    t.is(last.exitCode, 0, describeRun(last));
    t.is(last.results.fsck, 'clean', 'clean after at most a journal replay');
    t.is(last.results.synced_bad, '0');
    const sync = await runGuest({ disks: [volumeDisk(d, 'cc-sync')], scenario: 'verify-synced', args: { seed, n, maxkb: 256 } });
    t.is(sync.exitCode, 0, describeRun(sync));
    t.is(sync.results.synced_ok, String(n), `every file synced by @seq:${atSync} is in the clone`);
    t.is(sync.results.synced_bad, '0');
  },
);

test.serial('bisect a guest corruption: a check that boots the guest on each candidate clone finds the damaging write', async (t) => {
  await cli(['volume', 'create', 'bis', '--size', '128M', '--protected']);
  const seed = 31;
  const disk = volumeDisk(d, 'bis');
  const w = await runGuest({ disks: [disk], scenario: 'write-tree', args: { seed, files: 16 } });
  t.is(w.exitCode, 0, describeRun(w));
  const digest = w.results.manifest_sha256!;
  await cli(['mark', 'bis', 'good']);
  const good = (await api('POST', '/v1/volumes/bis/resolve', { at: 'good' })).seq as number;
  // The guest writes raw blocks: 24 harmless ones in the unused tail of the
  // disk, then garbage over the start of the file system, then 24 more.
  const dir = tempDir('rwvm-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const script = path.join(dir, 'damage.sh');
  fs.writeFileSync(
    script,
    `#!/bin/sh
. /etc/rewind/lib.sh
d=/dev/vda
last=$(( $(cat /sys/block/vda/size) / 8 - 64 ))
w() { dd if=/dev/urandom of=$d bs=4096 count=$2 seek=$1 conv=notrunc,fsync 2>/dev/null || fail "dd seek=$1"; }
i=0; while [ $i -lt 24 ]; do w $((last + i)) 1; i=$((i + 1)); done
w 0 4
while [ $i -lt 48 ]; do w $((last + i)) 1; i=$((i + 1)); done
result damaged=yes
exit 0
`,
  );
  const dmg = await runGuest({ disks: [disk], scenario: 'custom', script });
  t.is(dmg.exitCode, 0, describeRun(dmg));
  const image = await ensureGuestImage();
  const check = `node ${VM_RUN} --image ${image.dir} --ro-disk "$REWIND_URI" --scenario verify-tree --arg seed=${seed} --arg files=16 --arg expect=${digest} --timeout 180 >/dev/null 2>&1`;
  const r = await d.cli(['bisect', 'bis', '--good', 'good', '--bad', 'latest', '--check', check, '--json'], { timeoutMs: 900_000 });
  t.is(r.code, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  t.log(
    `bisect: ${res.checks} guest boots, first bad seq ${res.firstBad.seq} (${res.firstBad.write.kind} of ${res.firstBad.write.length} bytes at ${res.firstBad.write.offset})`,
  );
  t.true(res.exact);
  // The damaging write: the garbage at the start of the disk, after the 24 harmless writes.
  t.is(res.firstBad.write.offset, 0);
  t.is(res.firstBad.write.length, 16384);
  t.true(res.firstBad.seq > good + 24, `seq ${res.firstBad.seq} comes after the harmless writes`);
  t.true(res.checks >= 3 && res.checks <= 8, `${res.checks} checks`);
});

// On a loaded host TCG can be too slow for the kernel's IO-APIC timer check (a panic at boot).
const NO_TIMER_CHECK = { cmdline: 'no_timer_check' };

test.serial(
  'archive: trees written at three markers are archived; after retention fades the journal, a clone of each archived point boots and verify-tree passes',
  async (t) => {
    await cli(['volume', 'create', 'arc', '--size', '128M', '--protected']);
    const disk = volumeDisk(d, 'arc');
    const digests: string[] = [];
    for (let k = 1; k <= 3; k++) {
      // The first boot makes the filesystem; each later one replaces the tree (another seed).
      const w = await runGuest({
        ...NO_TIMER_CHECK,
        disks: [disk],
        scenario: 'write-tree',
        args: { seed: 40 + k, files: 32, mkfs: k === 1 ? 1 : 0 },
      });
      t.is(w.exitCode, 0, describeRun(w));
      digests.push(w.results.manifest_sha256!);
      await cli(['mark', 'arc', `tree-${k}`]);
      const a = JSON.parse(await cli(['archive', 'arc', '--at', `tree-${k}`, '--name', `arc-${k}`, '--json', '--no-progress']));
      t.is(a.point.marker, `tree-${k}`);
      if (k > 1) t.is(a.predecessor, `arc-${k - 1}`);
      // The marker would pin its history: without it, retention may fade everything.
      await cli(['unmark', 'arc', `tree-${k}`]);
    }
    await new Promise((r) => setTimeout(r, 1200));
    await cli(['retention', 'arc', '--policy', 'all:1s, every:1h:1d']);
    await cli(['retention', 'arc', '--run']);
    for (let k = 1; k <= 3; k++) {
      await cli(['clone', 'arc', '--at', `archive:arc-${k}`, '--name', `arc-${k}-clone`]);
      const v = await runGuest({
        ...NO_TIMER_CHECK,
        disks: [volumeDisk(d, `arc-${k}-clone`)],
        scenario: 'verify-tree',
        args: { seed: 40 + k, files: 32, expect: digests[k - 1]! },
      });
      t.is(v.exitCode, 0, describeRun(v));
      t.is(v.results.fsck, 'clean');
      t.is(v.results.files_ok, '32');
      t.is(v.results.manifest_sha256, digests[k - 1]);
    }
  },
);
