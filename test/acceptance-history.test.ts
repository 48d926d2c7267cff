/**
 * Acceptance for managing history (issue "Markers, ... diff, bisect"):
 * markers and their hooks, schedules, surfacing, diffs in three forms, and
 * bisect, through a live `rewind serve` and real clients (nbdcopy, nbdfuse +
 * ext4, qemu-io).
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { STATE_DIRTY } from '../src/nbd/export';
import { REPO_ROOT, run, startDaemon, sleep, tempDir, haveCommand } from './helpers/daemon';
import { pattern } from './helpers/nbd-fixtures';
import { apiOk as api, cliOk as cli, fuseExport, readExport, sha } from './helpers/live';

const MiB = 1024 * 1024;

function du(p: string): number {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.blocks * 512;
  let total = 0;
  for (const n of fs.readdirSync(p)) total += du(path.join(p, n));
  return total;
}

test.serial('markers copy nothing: 10,000 markers grow the data directory by less than 10 MiB, and each resolves to its seq', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'mk', '--size', '16M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'mk' });
  t.teardown(() => c.destroy());
  await c.write(0, pattern(4096, 1));
  await c.flush();
  await cli(d, ['seal', 'mk']);
  const before = du(d.dataDir);
  const want = new Map<string, number>();
  for (let i = 0; i < 1000; i++) {
    // Small writes within one block, so the writes themselves add little.
    await c.write((i % 8) * 512, pattern(512, i + 7));
    const seq = 2 + i;
    await Promise.all(
      Array.from({ length: 10 }, async (_, j) => {
        const name = `m${i}-${j}`;
        const m = await api(d, 'POST', '/v1/markers/mk', { name });
        if (m.seq !== seq) throw new Error(`marker ${name} placed at seq ${m.seq}, expected ${seq}`);
        want.set(name, seq);
      }),
    );
  }
  await c.flush();
  const grown = du(d.dataDir) - before;
  t.log(`10,000 markers (and 1,000 writes of 512 bytes to one block) grew the data directory by ${(grown / MiB).toFixed(2)} MiB`);
  t.true(grown < 10 * MiB, `grew ${grown} bytes`);
  const listed = (await api(d, 'GET', '/v1/markers/mk')).markers as Array<{ name: string; seq: number }>;
  t.is(listed.length, 10_000);
  for (const m of listed) if (want.get(m.name) !== m.seq) t.fail(`${m.name} listed at ${m.seq}`);
  // Every one resolves to its seq (spot-check a spread, resolving needs the manager).
  await cli(d, ['seal', 'mk']);
  for (let i = 0; i < 1000; i += 37) {
    const p = await api(d, 'POST', '/v1/volumes/mk/resolve', { at: `m${i}-${i % 10}` });
    t.is(p.seq, 2 + i, `m${i}-${i % 10}`);
  }
  // Filters.
  const some = (await api(d, 'GET', '/v1/markers/mk?name=m99-*')).markers;
  t.is(some.length, 10);
  const dup = await d.api('POST', '/v1/markers/mk', { name: 'm5-5' });
  t.is(dup.status, 409);
  t.regex(JSON.stringify(dup.body), /already exists/);
});

test.serial(
  'quiesce hooks: a pre-hook that syncs a file makes an application-consistent marker whose clone has the file; failures and hangs make crash-consistent ones',
  async (t) => {
    for (const c of ['nbdfuse', 'mkfs.ext4', 'mount', 'umount', 'fusermount3']) if (!haveCommand(c)) throw new Error(`${c} missing`);
    const d = await startDaemon();
    t.teardown(() => d.cleanup());
    await cli(d, ['volume', 'create', 'hk', '--size', '64M', '--protected']);
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    const { dev } = await fuseExport(t, d.nbdUri('hk'), path.join(dir, 'fuse'));
    t.teardown(() => run('umount', [mnt]));
    t.is((await run('mkfs.ext4', ['-q', '-F', dev])).code, 0);
    t.is((await run('mount', ['-o', 'loop', dev, mnt])).code, 0);
    // The pre-hook writes a file through the mounted file system and syncs it.
    const pre = `echo consistent > ${mnt}/app-state.txt && sync -f ${mnt}/app-state.txt && sync`;
    const out = await cli(d, ['mark', 'hk', 'app1', '--quiesce-pre', pre, '--quiesce-post', `touch ${dir}/post-ran`, '--json']);
    const m = JSON.parse(out);
    t.is(m.kind, 'application-consistent');
    t.is(m.reason, null);
    t.true(fs.existsSync(path.join(dir, 'post-ran')), 'the post-hook ran');
    // A failing pre-hook: crash-consistent with the reason; the post-hook still runs.
    const bad = JSON.parse(
      await cli(d, [
        'mark',
        'hk',
        'crash1',
        '--quiesce-pre',
        'echo cannot freeze >&2; exit 4',
        '--quiesce-post',
        `touch ${dir}/post-ran-2`,
        '--json',
      ]),
    );
    t.is(bad.kind, 'crash-consistent');
    t.regex(bad.reason, /pre-hook failed \(exit 4\): cannot freeze/);
    t.true(fs.existsSync(path.join(dir, 'post-ran-2')));
    // A hook that hangs is killed at its timeout (its whole process group).
    const t0 = Date.now();
    const hung = JSON.parse(
      await cli(d, ['mark', 'hk', 'hung1', '--quiesce-pre', `echo $$ > ${dir}/hook.pid; sleep 600`, '--timeout', '1', '--json']),
    );
    t.true(Date.now() - t0 < 10_000);
    t.is(hung.kind, 'crash-consistent');
    t.regex(hung.reason, /timed out after 1s and was killed/);
    const pid = Number(fs.readFileSync(path.join(dir, 'hook.pid'), 'utf8'));
    await sleep(200);
    t.throws(() => process.kill(pid, 0), undefined, 'the hung hook is gone');
    const list = await cli(d, ['markers', 'hk', '--kind', 'crash']);
    t.regex(list, /crash1/);
    t.regex(list, /hung1/);
    t.notRegex(list, /app1/);
    // The clone at the application-consistent marker has the file.
    await run('umount', [mnt]);
    await cli(d, ['clone', 'hk', '--at', 'app1', '--name', 'hk-app1']);
    const cmnt = path.join(dir, 'cmnt');
    fs.mkdirSync(cmnt);
    const cl = await fuseExport(t, d.nbdUri('hk-app1'), path.join(dir, 'cfuse'));
    t.teardown(() => run('umount', [cmnt]));
    const mr = await run('mount', ['-o', 'loop', cl.dev, cmnt]);
    t.is(mr.code, 0, mr.stderr);
    t.is(fs.readFileSync(path.join(cmnt, 'app-state.txt'), 'utf8'), 'consistent\n');
    // Surface the marker as its own read-only export, then submerge it.
    await cli(d, ['surface', 'hk', 'app1']);
    const info = await run('nbdinfo', ['--json', d.nbdUri('app1')]);
    t.regex(info.stdout, /"is_read_only": true/);
    await cli(d, ['submerge', 'app1']);
    t.not((await run('nbdinfo', [d.nbdUri('app1')])).code, 0, 'submerged export is gone');
  },
);

test.serial('schedules place markers on their own, survive a restart, and expired markers go', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'sc', '--size', '4M', '--protected']);
  const bad = await d.cli(['schedule', 'sc', '--add', 'every=5m,hours=25:00-26:00']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /bad time of day "25:00"/);
  const bad2 = await d.cli(['schedule', 'sc', '--add', 'every=5m,colour=blue']);
  t.regex(bad2.stderr, /unknown key "colour"/);
  await cli(d, ['checkpoint', 'sc', '--every', '1', '--keep', '12s']);
  await cli(d, ['schedule', 'sc', '--add', 'every=1h,days=mon-sun,hours=00:00-24:00']);
  const shown = await cli(d, ['schedule', 'sc']);
  t.regex(shown, /1\. every 1s, keep 12s/);
  t.regex(shown, /2\. every 1h, 00:00-24:00, sun,mon,tue,wed,thu,fri,sat, keep until deleted/);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'sc' });
  for (let i = 0; i < 5; i++) {
    await c.write(i * 4096, pattern(4096, i));
    await sleep(700);
  }
  c.destroy();
  const auto = (await api(d, 'GET', '/v1/markers/sc')).markers.filter((m: { auto: boolean }) => m.auto);
  t.true(auto.length >= 3, `${auto.length} scheduled markers`);
  // Coalesced: both rules were due at the first tick, one marker was placed, kept as long as the longest rule (forever).
  t.true(auto.some((m: { retainUntil: number | null }) => m.retainUntil === null));
  await d.restart();
  t.regex(await cli(d, ['schedule', 'sc']), /every 1s, keep 12s/);
  await sleep(2500);
  const after = (await api(d, 'GET', '/v1/markers/sc')).markers.filter((m: { auto: boolean }) => m.auto);
  t.true(after.length > auto.length, 'the schedule runs again after the restart');
  // Markers kept 12 s expire (the sweep runs every 10 s).
  await sleep(22_000);
  const late = (await api(d, 'GET', '/v1/markers/sc')).markers as Array<{ name: string; retainUntil: number | null }>;
  t.false(
    late.some((m) => m.name === auto.find((a: { retainUntil: number | null }) => a.retainUntil !== null)?.name),
    'an expired marker was deleted',
  );
  await cli(d, ['schedule', 'sc', '--clear']);
  t.regex(await cli(d, ['schedule', 'sc']), /no schedule/);
  // Deleting the volume takes its markers and schedule along: a new volume of the same name starts clean.
  await cli(d, ['checkpoint', 'sc', '--every', '3600']);
  await cli(d, ['volume', 'rm', 'sc']);
  await cli(d, ['volume', 'create', 'sc', '--size', '4M', '--protected']);
  t.is((await api(d, 'GET', '/v1/markers/sc')).markers.length, 0);
  t.regex(await cli(d, ['schedule', 'sc']), /no schedule/);
});

type Op = { offset: number; length: number; kind: 'write' | 'zero' | 'trim'; seed: number };

function randomOps(n: number, size: number, rnd: () => number): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const aligned = rnd() < 0.6;
    const offset = aligned ? Math.floor(rnd() * (size / 4096)) * 4096 : Math.floor(rnd() * size);
    const length = Math.max(1, Math.min(size - offset, aligned ? 4096 * (1 + Math.floor(rnd() * 16)) : 1 + Math.floor(rnd() * 50_000)));
    const r = rnd();
    ops.push({ offset, length, kind: r < 0.7 ? 'write' : r < 0.85 ? 'zero' : 'trim', seed: Math.floor(rnd() * 1e9) });
  }
  return ops;
}

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

test.serial(
  'diff: the changed extents match the model; the dirty bitmap of the diff export (libnbd) and apply-diff turn an image at A into B',
  async (t) => {
    if (!haveCommand('qemu-img')) throw new Error('qemu-img missing');
    if ((await run('/usr/bin/python3', ['-c', 'import nbd'])).code !== 0)
      throw new Error('python3-libnbd missing (run tools/install-system-deps.sh)');
    const d = await startDaemon();
    t.teardown(() => d.cleanup());
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const SIZE = 8 * MiB;
    const BS = 4096;
    await cli(d, ['volume', 'create', 'df', '--size', '8M', '--protected']);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'df' });
    t.teardown(() => c.destroy());
    const seed = Number(process.env.FC_SEED ?? Date.now() % 100000);
    t.log(`seed ${seed}`);
    const ops = randomOps(120, SIZE, rng(seed));
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      if (op.kind === 'write') await c.write(op.offset, pattern(op.length, op.seed));
      else if (op.kind === 'zero') await c.zero(op.offset, op.length);
      else await c.trim(op.offset, op.length);
      if (i % 17 === 16) void api(d, 'POST', '/v1/volumes/df/seal');
    }
    await c.flush();
    for (const [a, b] of [
      [10, 90],
      [1, 120],
      [33, 34],
      [55, 119],
    ] as const) {
      // seq i+1 is ops[i]; the diff (A, B] is ops[a..b-1] (seqs a+1..b).
      const want = new Set<number>();
      for (let i = a; i < b; i++) {
        const op = ops[i]!;
        for (let blk = Math.floor(op.offset / BS); blk <= Math.floor((op.offset + op.length - 1) / BS); blk++) want.add(blk);
      }
      const fromSeq = a;
      const r = await api(d, 'POST', '/v1/volumes/df/diff', { from: `@seq:${fromSeq}`, to: `@seq:${b}` });
      const got = new Set<number>();
      for (const e of r.extents as Array<{ offset: number; length: number }>) {
        for (let blk = e.offset / BS; blk < Math.ceil((e.offset + e.length) / BS); blk++) got.add(blk);
      }
      t.deepEqual(
        [...got].sort((x, y) => x - y),
        [...want].sort((x, y) => x - y),
        `changed blocks of (@seq:${fromSeq}, @seq:${b}]`,
      );
    }
    // The image at A and at B; the diff export between them.
    const A = 20;
    const B = 110;
    const imgA = path.join(dir, 'a.raw');
    await cli(d, ['export', 'df', '--at', `@seq:${A}`, '--out', imgA, '--no-progress']);
    const wantB = await (async () => {
      await cli(d, ['snapshot', 'df', '--at', `@seq:${B}`, '--name', 'df-b']);
      return readExport(d, 'df-b', SIZE);
    })();
    const out = await cli(d, [
      'diff',
      'df',
      '--from',
      `@seq:${A}`,
      '--to',
      `@seq:${B}`,
      '--export',
      'df-ab',
      '--out',
      path.join(dir, 'ab.rwdiff'),
    ]);
    t.regex(out, /changed extent\(s\)/);
    // The diff export's base:allocation is B's own (never zeroes over data); the changes are its dirty bitmap.
    const dc = await NbdClient.connect({
      port: d.nbdPort,
      exportName: 'df-ab',
      metaContexts: ['base:allocation', 'qemu:dirty-bitmap:df-ab'],
    });
    const sc = await NbdClient.connect({ port: d.nbdPort, exportName: 'df-b' });
    const both = await dc.blockStatusAll(0, SIZE);
    t.deepEqual(
      both.get(dc.contextIds.get('base:allocation')!),
      await sc.blockStatus(0, SIZE),
      'base:allocation of the diff export = of B',
    );
    let pos = 0;
    const dirty: Array<{ offset: number; length: number }> = [];
    for (const e of both.get(dc.contextIds.get('qemu:dirty-bitmap:df-ab')!)!) {
      if (e.flags & STATE_DIRTY) dirty.push({ offset: pos, length: e.length });
      pos += e.length;
    }
    dc.destroy();
    sc.destroy();
    const listed = await api(d, 'POST', '/v1/volumes/df/diff', { from: `@seq:${A}`, to: `@seq:${B}` });
    t.deepEqual(dirty, listed.extents, 'the dirty bitmap marks exactly the changed extents');
    t.true((await readExport(d, 'df-ab', SIZE)).equals(wantB), 'the diff export reads as B');
    // libnbd copies only the dirty extents onto a copy of A (served over NBD here): the result is B.
    const viaBitmap = path.join(dir, 'via-bitmap.raw');
    fs.copyFileSync(imgA, viaBitmap);
    await cli(d, ['volume', 'create', 'copy-of-a', '--path', viaBitmap]);
    const cp = await run(
      '/usr/bin/python3',
      [path.join(REPO_ROOT, 'tools', 'copy-dirty.py'), d.nbdUri('df-ab'), 'qemu:dirty-bitmap:df-ab', d.nbdUri('copy-of-a'), '--json'],
      { timeoutMs: 60_000 },
    );
    t.is(cp.code, 0, cp.stderr);
    t.deepEqual(JSON.parse(cp.stdout), listed.extents, 'it copied the changed extents, nothing else');
    t.is(sha(fs.readFileSync(viaBitmap)), sha(wantB), 'changes copied onto A give B');
    // qemu reads the same context in place of base:allocation (x-dirty-bitmap): changed extents map as "data": false.
    const map = await run('qemu-img', [
      'map',
      '--output=json',
      '--image-opts',
      `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${d.nbdPort},export=df-ab,x-dirty-bitmap=qemu:dirty-bitmap:df-ab`,
    ]);
    t.is(map.code, 0, map.stderr);
    const fromQemu: Array<{ offset: number; length: number }> = [];
    for (const e of JSON.parse(map.stdout) as Array<{ start: number; length: number; data: boolean }>) {
      if (e.data) continue;
      const last = fromQemu[fromQemu.length - 1];
      if (last && last.offset + last.length === e.start) last.length += e.length;
      else fromQemu.push({ offset: e.start, length: e.length });
    }
    t.deepEqual(fromQemu, listed.extents, 'qemu-img map with x-dirty-bitmap shows the changed extents');
    // Any two points: a snapshot at B answers qemu:dirty-bitmap:POINT for any earlier point; a clone's own writes count as changed.
    const dirtyOf = async (exportName: string, ctxName: string): Promise<Array<{ offset: number; length: number }>> => {
      const c2 = await NbdClient.connect({ port: d.nbdPort, exportName, metaContexts: [ctxName] });
      try {
        t.deepEqual([...c2.contextIds.keys()], [ctxName]);
        const out: Array<{ offset: number; length: number }> = [];
        for (let at = 0; at < SIZE;) {
          for (const e of await c2.blockStatus(at, SIZE - at)) {
            const len = Math.min(e.length, SIZE - at);
            const last = out[out.length - 1];
            if (e.flags & STATE_DIRTY) {
              if (last && last.offset + last.length === at) last.length += len;
              else out.push({ offset: at, length: len });
            }
            at += len;
          }
        }
        return out;
      } finally {
        c2.destroy();
      }
    };
    t.deepEqual(await dirtyOf('df-b', `qemu:dirty-bitmap:@seq:${A}`), listed.extents, 'snapshot at B: changes since @seq:A');
    const mid = await api(d, 'POST', '/v1/volumes/df/diff', { from: `@seq:${A + 30}`, to: `@seq:${B}` });
    t.deepEqual(await dirtyOf('df-b', `qemu:dirty-bitmap:@seq:${A + 30}`), mid.extents, 'and since any other point');
    await cli(d, ['clone', 'df', '--at', `@seq:${B}`, '--name', 'df-bc']);
    const cw = await NbdClient.connect({ port: d.nbdPort, exportName: 'df-bc' });
    await cw.write(SIZE - 4096, Buffer.alloc(4096, 0x77));
    await cw.flush();
    cw.destroy();
    const withOwn = await dirtyOf('df-bc', `qemu:dirty-bitmap:@seq:${A}`);
    const lastBlockDirty = withOwn.some((e) => e.offset <= SIZE - 4096 && e.offset + e.length >= SIZE);
    t.true(lastBlockDirty, "the clone's own write is dirty");
    const viaApply = path.join(dir, 'via-apply.raw');
    fs.copyFileSync(imgA, viaApply);
    const ap = await cli(d, ['apply-diff', path.join(dir, 'ab.rwdiff'), viaApply]);
    t.regex(ap, new RegExp(`went from seq ${A} to seq ${B}`));
    t.is(sha(fs.readFileSync(viaApply)), sha(wantB), 'apply-diff onto A gives B');
    // A corrupt diff file is refused before anything is written.
    const bad = path.join(dir, 'bad.rwdiff');
    const bytes = fs.readFileSync(path.join(dir, 'ab.rwdiff'));
    bytes[bytes.length >> 1] ^= 0xff;
    fs.writeFileSync(bad, bytes);
    const untouched = path.join(dir, 'untouched.raw');
    fs.copyFileSync(imgA, untouched);
    const r = await d.cli(['apply-diff', bad, untouched]);
    t.not(r.code, 0);
    t.regex(r.stderr, /not a valid diff file/);
    t.is(sha(fs.readFileSync(untouched)), sha(fs.readFileSync(imgA)), 'nothing was written');
    // Reversed or invalid endpoints.
    const rev = await d.cli(['diff', 'df', '--from', `@seq:${B}`, '--to', `@seq:${A}`]);
    t.regex(rev.stderr, /must come before --to/);
    const inv = await d.cli(['diff', 'df', '--from', '@seq:1', '--to', '@seq:99999']);
    t.regex(inv.stderr, /after the last write/);
  },
);

test.serial(
  'bisect finds the write that corrupted a file on ext4, in about log2(n) checks; a crashing check counts as bad, 125 skips',
  async (t) => {
    for (const c of ['nbdfuse', 'mkfs.ext4', 'mount', 'umount', 'fusermount3', 'filefrag'])
      if (!haveCommand(c)) throw new Error(`${c} missing`);
    const d = await startDaemon();
    t.teardown(() => d.cleanup());
    await cli(d, ['volume', 'create', 'bs', '--size', '64M', '--protected']);
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    const { dev } = await fuseExport(t, d.nbdUri('bs'), path.join(dir, 'fuse'));
    t.teardown(() => run('umount', [mnt]));
    t.is((await run('mkfs.ext4', ['-q', '-F', dev])).code, 0);
    const sums: string[] = [];
    const writeFiles = async (from: number, to: number) => {
      t.is((await run('mount', ['-o', 'loop', dev, mnt])).code, 0);
      for (let i = from; i < to; i++) {
        const data = crypto.randomBytes(4096 + (i % 7) * 1024);
        fs.writeFileSync(path.join(mnt, `f${i}`), data);
        sums[i] = sha(data);
      }
      t.is((await run('umount', [mnt])).code, 0); // clean: journal checkpointed
    };
    await writeFiles(0, 200);
    const good = (await api(d, 'POST', '/v1/volumes/bs/resolve', { at: 'latest' })).seq as number;
    // Corrupt f77's first block with a raw write at its physical offset.
    t.is((await run('mount', ['-o', 'loop,ro', dev, mnt])).code, 0);
    const frag = await run('filefrag', ['-v', '-b4096', path.join(mnt, 'f77')]);
    t.is((await run('umount', [mnt])).code, 0);
    const phys = /^\s*0:\s+0\.\.\s*\d+:\s+(\d+)\.\./m.exec(frag.stdout);
    t.truthy(phys, frag.stdout);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'bs' });
    await c.write(Number(phys![1]) * 4096, Buffer.alloc(4096, 0xee));
    await c.flush();
    c.destroy();
    const corrupting = (await api(d, 'POST', '/v1/volumes/bs/resolve', { at: 'latest' })).seq as number;
    await writeFiles(200, 400);
    fs.writeFileSync(
      path.join(dir, 'sums.txt'),
      sums
        .slice(0, 200)
        .map((s, i) => `${s}  f${i}\n`)
        .join(''),
    );
    const check = path.join(dir, 'check.sh');
    fs.writeFileSync(
      check,
      `#!/bin/sh
set -u
w=$(mktemp -d ${dir}/chk.XXXXXX)
mkdir -p "$w/f" "$w/m"
nbdfuse "$w/f" "$REWIND_URI" & fp=$!
for i in $(seq 100); do [ -e "$w/f/nbd" ] && break; sleep 0.1; done
rc=1
if mount -o loop,ro,noload "$w/f/nbd" "$w/m" 2>/dev/null; then
  (cd "$w/m" && sha256sum -c --quiet ${dir}/sums.txt >/dev/null 2>&1) && rc=0
  umount "$w/m"
fi
fusermount3 -u "$w/f"; wait $fp 2>/dev/null
rm -rf "$w"
exit $rc
`,
    );
    fs.chmodSync(check, 0o755);
    const r = await cli(d, ['bisect', 'bs', '--good', `@seq:${good}`, '--bad', 'latest', '--check', check, '--json'], 600_000);
    const res = JSON.parse(r);
    t.log(`bisect: ${res.checks} checks; first bad seq ${res.firstBad.seq}, corrupting write seq ${corrupting}`);
    t.is(res.firstBad.seq, corrupting, 'the corrupting write');
    t.is(res.firstBad.write.offset, Number(phys![1]) * 4096);
    t.true(res.checks <= 14, `${res.checks} checks`);
    // Bad input and odd checks.
    const rev = await d.cli(['bisect', 'bs', '--good', 'latest', '--bad', `@seq:${good}`, '--check', 'true']);
    t.regex(rev.stderr, /the good point .* must come before the bad point/);
    // A check that crashes (signal) is bad: the first candidate is the answer.
    const crash = JSON.parse(
      await cli(d, ['bisect', 'bs', '--good', `@seq:${good}`, '--bad', `@seq:${good + 8}`, '--check', 'kill -SEGV $$', '--json']),
    );
    t.is(crash.firstBad.seq, good + 1, 'every check bad: the first write after the good point');
    t.true(crash.exact);
    t.true(crash.steps.length >= 1 && crash.steps.every((s: { verdict: string }) => s.verdict === 'bad'));
    // 125 skips: with every check skipped nothing can be decided, and it says so.
    const skip = JSON.parse(
      await cli(d, ['bisect', 'bs', '--good', `@seq:${good}`, '--bad', `@seq:${good + 4}`, '--check', 'exit 125', '--json']),
    );
    t.false(skip.exact);
    t.true(skip.skipped >= 1);
  },
);
