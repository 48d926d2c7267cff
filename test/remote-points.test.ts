/**
 * Two-role acceptance for issue 18 (an intercept and a remote manager in
 * two network namespaces, see helpers/remote.ts; needs root, ip, qemu-io):
 * - a time inside a degraded stretch, before its super transaction is
 *   committed and after, is refused by every command that takes a point,
 *   naming the nearest valid points; --nearest takes one;
 * - markers placed on the manager sit at the intercept's current write:
 *   right after a flushed write, and after a quiesce pre-hook that writes
 *   and flushes (the marker's image holds that write);
 * - a burst larger than a small link pool, with the link up, does not
 *   degrade the group.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { haveCommand, run, sleep } from './helpers/daemon';
import { caughtUp, startPair, waitFor, type Pair, type VolStatus } from './helpers/remote';

const MiB = 1024 * 1024;

function need(cmd: string): void {
  if (!haveCommand(cmd)) throw new Error(`${cmd} missing (run tools/install-system-deps.sh)`);
}

async function refused(p: Pair, args: string[]): Promise<string> {
  const r = await p.m.cli(args);
  if (r.code === 0) throw new Error(`rewind ${args.join(' ')} on the manager succeeded: ${r.stdout}`);
  return r.stderr;
}

/** Reads [offset, offset+length) of an export on the manager. */
async function readOnManager(p: Pair, name: string, offset: number, length: number): Promise<Buffer> {
  const c = await NbdClient.connect({ path: p.m.nbdSocket, exportName: name });
  try {
    return await c.read(offset, length);
  } finally {
    c.destroy();
  }
}

test.serial(
  'times inside a degraded stretch and its super transaction are refused by every command, naming the nearest points; --nearest takes one',
  async (t) => {
    const p = await startPair(t, 'p', { i: ['--link-pool', '8M'] });
    await p.i.cliOk(['volume', 'create', 'pv', '--size', '32M', '--protected']);
    const c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'pv' });
    t.teardown(() => c.disconnect().catch(() => undefined));
    await c.write(0, Buffer.alloc(MiB, 0xaa));
    await c.flush();
    await caughtUp(p, 'pv');
    const lastBefore = (await p.m.json<{ seq: number }>(['point', 'pv', 'latest'])).seq;

    // The link goes down; 1 MiB writes of 0xbb fill the pool (sealed + one full active container) and the group degrades.
    await p.net.linkDown();
    await waitFor(
      'the intercept to see the link down',
      async () => (await p.i.json<VolStatus>(['status', 'pv'])).link.state !== 'up',
      30_000,
    );
    const times: number[] = [];
    for (let k = 1; k <= 30; k++) {
      await c.write(k * MiB, Buffer.alloc(MiB, 0xbb));
      times.push(Date.now());
      await sleep(5);
    }
    await c.flush();
    const deg = await p.i.json<VolStatus & { degraded: { since: string } | null }>(['status', 'pv']);
    t.is(deg.state, 'degraded');
    await sleep(20);
    const T = new Date().toISOString(); // inside the degraded stretch: the 0xbb writes up to 30M were made before it
    const early = new Date(times[2]! + 1).toISOString(); // after the third 0xbb write, journaled before the pool filled

    // While the intercept is out of reach the manager cannot know what came after its last report: refused, not guessed.
    const unknown = await refused(p, ['point', 'pv', T]);
    t.regex(unknown, new RegExp(`nearest valid points are @seq:${lastBefore} \\(.*\\) and none known`));
    t.regex(await refused(p, ['point', 'pv', 'latest']), /not connected/);
    t.regex(await p.m.cliOk(['point', 'pv', 'latest', '--nearest', 'before']), new RegExp(`is seq ${lastBefore}, [\\s\\S]*note: `));

    // The link comes back: drain, super transaction, normal.
    await p.net.linkUp();
    await caughtUp(p, 'pv', 180_000);
    const log = await p.m.json<
      Array<{
        n: number;
        lastSeq: number;
        lastTime: number;
        superTransaction?: { id: number; fromSeq: number; fromTime?: number; last: boolean };
      }>
    >(['log', 'pv']);
    const sup = log.filter((x) => x.superTransaction);
    t.true(sup.length >= 1, 'a super transaction was committed');
    const tag = sup[0]!.superTransaction!;
    t.true(typeof tag.fromTime === 'number', 'the super transaction records when its degraded stretch began');
    t.true(tag.fromTime! <= Date.parse(T) && tag.fromTime! >= times[0]!, 'it began during the 0xbb writes');
    const end = sup[sup.length - 1]!;
    const beforeSuper = log.filter((x) => !x.superTransaction && x.lastSeq < tag.fromSeq).pop()!;

    const nearest = new RegExp(
      `lies inside super transaction ${tag.id} .*from ${new Date(tag.fromTime!).toISOString().replace(/\./g, '\\.')} on.*nearest valid points are @seq:${beforeSuper.lastSeq} \\(.*\\) and @seq:${end.lastSeq} \\(`,
    );
    // Every command that takes a point refuses T.
    t.regex(await refused(p, ['point', 'pv', T]), nearest);
    t.regex(await refused(p, ['snapshot', 'pv', '--at', T, '--name', 'snap-t']), nearest);
    t.regex(await refused(p, ['clone', 'pv', '--at', T, '--name', 'clone-t']), nearest);
    await p.m.cliOk(['snapshot', 'pv', '--at', `@seq:${lastBefore}`, '--name', 'stepper']);
    t.regex(await refused(p, ['clone', 'step', 'stepper', '--to', T]), nearest);
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'rwpt-')), 't.raw');
    t.teardown(() => fs.rmSync(path.dirname(out), { recursive: true, force: true }));
    t.regex(await refused(p, ['export', 'pv', '--at', T, '--out', out, '--no-progress']), nearest);
    t.false(fs.existsSync(out));
    t.regex(await refused(p, ['diff', 'pv', '--from', `@seq:${lastBefore}`, '--to', T]), nearest);
    t.regex(await refused(p, ['restore', 'pv', '--to', T, '--force', '--no-progress']), nearest);
    t.regex(await refused(p, ['bisect', 'pv', '--good', `@seq:${lastBefore}`, '--bad', T, '--check', 'true']), nearest);

    // --nearest: before is the image before the stretch, after is the super transaction's end (0xbb everywhere written).
    const b = await p.m.cliOk(['snapshot', 'pv', '--at', T, '--nearest', 'before', '--name', 'snap-before']);
    t.regex(b, new RegExp(`at seq ${beforeSuper.lastSeq}, [\\s\\S]*note: .*super transaction`));
    const a = await p.m.cliOk(['clone', 'pv', '--at', T, '--nearest', 'after', '--name', 'clone-after']);
    t.regex(a, new RegExp(`at seq ${end.lastSeq}, `));
    t.true(
      (await readOnManager(p, 'clone-after', 15 * MiB, MiB)).equals(Buffer.alloc(MiB, 0xbb)),
      'the end of the super transaction has the write at 15M',
    );
    t.true((await readOnManager(p, 'clone-after', 30 * MiB, MiB)).equals(Buffer.alloc(MiB, 0xbb)));
    t.true((await readOnManager(p, 'snap-before', 0, MiB)).equals(Buffer.alloc(MiB, 0xaa)));
    // A time before the pool filled is an exact point: the first three 0xbb writes and nothing after.
    const e = await p.m.json<{ seq: number }>(['point', 'pv', early]);
    t.is(e.seq, lastBefore + 3);
    await p.m.cliOk(['snapshot', 'pv', '--at', early, '--name', 'snap-early']);
    t.true((await readOnManager(p, 'snap-early', 3 * MiB, MiB)).equals(Buffer.alloc(MiB, 0xbb)));
    t.true((await readOnManager(p, 'snap-early', 4 * MiB, MiB)).equals(Buffer.alloc(MiB)));
  },
);

test.serial(
  "markers placed on the manager sit at the intercept's current write: right after a flushed write, and after a quiesce pre-hook that writes and flushes",
  async (t) => {
    need('qemu-io');
    const p = await startPair(t, 'k');
    await p.i.cliOk(['volume', 'create', 'mv', '--size', '8M', '--protected']);
    await caughtUp(p, 'mv').catch(() => undefined);
    const uri = p.i.nbdUnixUri('mv');
    for (let k = 1; k <= 5; k++) {
      // qemu-io flushes before it exits: the write is durable and acknowledged when the marker is asked for.
      const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${(0x10 + k).toString(16)} 0 64k`, uri]);
      t.is(w.code, 0, w.stderr);
      const m = await p.m.json<{ seq: number; kind: string }>(['mark', 'mv', `after-${k}`]);
      t.is(m.seq, k, `marker ${k} sits at the write just made`);
      await p.m.cliOk(['snapshot', 'mv', '--at', `after-${k}`, '--name', `s-${k}`]);
      const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x${(0x10 + k).toString(16)} 0 64k`, p.m.nbdUnixUri(`s-${k}`)]);
      t.is(r.code, 0, r.stderr + r.stdout);
      t.notRegex(r.stdout, /Pattern verification failed/);
    }
    // A pre-hook that writes and flushes: the application-consistent marker includes its write.
    const hook = `qemu-io -f raw -c 'write -P 0xbb 0 64k' '${uri}'`;
    const app = await p.m.json<{ seq: number; kind: string }>(['mark', 'mv', 'app', '--quiesce-pre', hook]);
    t.is(app.kind, 'application-consistent');
    t.is(app.seq, 6);
    await p.m.cliOk(['snapshot', 'mv', '--at', 'app', '--name', 's-app']);
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xbb 0 64k', p.m.nbdUnixUri('s-app')]);
    t.is(r.code, 0, r.stderr + r.stdout);
    t.notRegex(r.stdout, /Pattern verification failed/);
  },
);

test.serial('a burst larger than a small link pool, with the link up, does not degrade the group', async (t) => {
  const p = await startPair(t, 'b', { i: ['--link-pool', '16M'] });
  await p.i.cliOk(['volume', 'create', 'bv', '--size', '64M', '--protected']);
  const c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'bv' });
  t.teardown(() => c.disconnect().catch(() => undefined));
  await waitFor('the link up', async () => (await p.i.json<VolStatus>(['status', 'bv'])).link.state === 'up', 30_000);
  // 24 x 1 MiB, all in flight at once: as fast as the intercept takes them. Any burst
  // under twice the pool fits (sealed containers up to the pool, plus the active one)
  // however slowly the manager commits.
  await Promise.all(Array.from({ length: 24 }, (_, k) => c.write(k * MiB, Buffer.alloc(MiB, 0x40 + k))));
  await c.flush();
  await caughtUp(p, 'bv', 120_000);
  // Another, one write after the other.
  for (let k = 24; k < 48; k++) await c.write(k * MiB, Buffer.alloc(MiB, 0x40 + k));
  await c.flush();
  const st = await caughtUp(p, 'bv', 120_000);
  t.is(st.state, 'normal');
  t.notRegex(p.i.logs, /LFC pool full|degraded mode/, 'never degraded');
  const log = await p.m.json<Array<{ superTransaction?: unknown; records: number }>>(['log', 'bv']);
  t.false(
    log.some((x) => x.superTransaction),
    'no super transaction',
  );
  t.is(
    log.reduce((a, x) => a + x.records, 0),
    48,
    'every write journaled and applied',
  );
  const v = await p.m.json<{ ok: boolean; equal: boolean }>(['verify', 'bv']);
  t.true(v.ok && v.equal, 'replica = production');
});
