/**
 * The backup manager's disk fills (history, replica and index on a small
 * tmpfs made for the test): the volume keeps serving every write, reports
 * degraded, loses nothing, and once the file system has room again
 * (remounted bigger) the manager catches up, a super transaction
 * re-captures what changed meanwhile, and the group is normal again by
 * itself, with the replica equal to production. Single process, and the
 * two-role mode (the manager's group directory on the small file system).
 * Needs root (mount).
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { run, startDaemon, type TestDaemon } from './helpers/daemon';
import { LINK_PORT, RoleDaemon, caughtUp, makeNetns, waitFor, writeSecret, type VolStatus } from './helpers/remote';

const MiB = 1024 * 1024;

async function mustRun(cmd: string, args: string[]): Promise<void> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** A tmpfs of `size` at dir; the returned function unmounts it (register it after the daemon's cleanup: teardowns run last first). */
async function tmpfs(dir: string, size: string): Promise<() => Promise<void>> {
  fs.mkdirSync(dir, { recursive: true });
  await mustRun('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  return async () => {
    await run('umount', ['-l', dir]);
  };
}

function data(i: number): Buffer {
  const b = Buffer.alloc(MiB);
  for (let k = 0; k < MiB; k += 4096) b.write(`mib ${i} block ${k / 4096} `.padEnd(4096, String.fromCharCode(97 + (i % 26))), k, 'latin1');
  return b;
}

async function cli(d: TestDaemon, args: string[]): Promise<string> {
  const r = await d.cli(args, { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

test.serial(
  "single process: the manager's disk fills, the volume goes on degraded, and recovers by itself when space returns",
  async (t) => {
    const d = await startDaemon({ logLevel: 'info' });
    t.teardown(() => d.cleanup());
    const managerDir = path.join(d.dataDir, 'groups', 'full', 'manager');
    t.teardown(await tmpfs(managerDir, '40m'));
    await cli(d, ['volume', 'create', 'full', '--size', '64M', '--protected']);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'full' });
    t.teardown(() => c.destroy());
    const model = Buffer.alloc(64 * MiB);
    const write = async (i: number, at: number) => {
      const b = data(i);
      await c.write(at * MiB, b);
      b.copy(model, at * MiB);
    };
    // 6 MiB fit (AILFC copy + BILFC + replica + index: about 3 bytes per byte written).
    for (let i = 0; i < 6; i++) await write(i, i);
    await c.flush();
    await cli(d, ['seal', 'full']);
    await cli(d, ['mark', 'full', 'before-full']);
    // Then far more than the file system holds: every write still succeeds.
    for (let i = 6; i < 40; i++) await write(i, i);
    await c.flush();
    const deg = await waitFor('the volume to report degraded', async () => {
      const s = JSON.parse(await cli(d, ['status', 'full', '--json']));
      return s.state === 'degraded' ? s : null;
    });
    t.regex(deg.degraded.reason, /backup manager cannot store containers .*(ENOSPC|no space)/i);
    t.truthy(deg.managerStalled, 'the manager says it waits for space');
    // Writes go on while degraded, and read back.
    for (let i = 40; i < 48; i++) await write(i, i);
    await c.flush();
    t.true((await c.read(0, 48 * MiB)).equals(model.subarray(0, 48 * MiB)), 'production holds every write');
    t.true(d.isRunning);

    // Space returns: the manager catches up, the super transaction re-captures the rest, normal again.
    await mustRun('mount', ['-o', 'remount,size=400m', 'tmpfs', managerDir]);
    const back = await waitFor(
      'the group to be normal again',
      async () => {
        const s = JSON.parse(await cli(d, ['status', 'full', '--json']));
        return s.state === 'normal' && !s.managerStalled && s.dirtyRegions === 0 ? s : null;
      },
      180_000,
    );
    t.is(back.lag.writes, 0);
    const v = JSON.parse(await cli(d, ['verify', 'full', '--json']));
    t.true(v.equal, 'replica = production');
    t.true(v.ok, JSON.stringify(v.containers.filter((x: { ok: boolean }) => !x.ok)));
    // History from before the disk filled is intact.
    await cli(d, ['snapshot', 'full', '--at', 'before-full', '--name', 'bf']);
    const s = await NbdClient.connect({ port: d.nbdPort, exportName: 'bf' });
    t.true((await s.read(0, 6 * MiB)).equals(model.subarray(0, 6 * MiB)));
    t.true((await s.read(6 * MiB, MiB)).equals(Buffer.alloc(MiB)));
    s.destroy();
    t.regex(d.logs, /the backup manager's disk is full/);
    t.regex(d.logs, /the backup manager applies again/);
  },
);

test.serial("two roles: the manager's disk fills, the intercept goes on degraded and recovers by itself when space returns", async (t) => {
  const net = await makeNetns('df');
  t.teardown(() => net.cleanup());
  const secret = writeSecret(os.tmpdir());
  t.teardown(() => fs.rmSync(secret, { force: true }));
  // The mount must exist before the manager starts: its network namespace has a mount namespace of its own.
  const mdir = fs.mkdtempSync(path.join(os.tmpdir(), 'rwr-'));
  const groupDir = path.join(mdir, 'groups', 'rd');
  const unmount = await tmpfs(groupDir, '40m');
  const m = await RoleDaemon.start({
    ns: net.managerNs,
    dataDir: mdir,
    args: ['--role', 'manager', '--listen', `${net.managerAddr}:${LINK_PORT}`, '--link-secret-file', secret],
  });
  t.teardown(() => m.cleanup());
  t.teardown(unmount);
  const i = await RoleDaemon.start({
    ns: net.interceptNs,
    args: [
      '--role',
      'intercept',
      '--manager',
      `${net.managerAddr}:${LINK_PORT}`,
      '--link-secret-file',
      secret,
      '--listen',
      'none',
      '--no-default-volume',
      '--link-pool',
      '8M',
    ],
  });
  t.teardown(() => i.cleanup());
  const p = { net, m, i, secret };
  await i.cliOk(['volume', 'create', 'rd', '--size', '64M', '--protected']);
  const c = await NbdClient.connect({ path: i.nbdSocket, exportName: 'rd' });
  t.teardown(() => c.destroy());
  const model = Buffer.alloc(64 * MiB);
  for (let k = 0; k < 6; k++) {
    const b = data(k);
    await c.write(k * MiB, b);
    b.copy(model, k * MiB);
  }
  await c.flush();
  await caughtUp(p, 'rd');
  let degraded: VolStatus | null = null;
  for (let k = 6; k < 56; k++) {
    const b = data(k);
    await c.write(k * MiB, b);
    b.copy(model, k * MiB);
    if (!degraded && k % 4 === 0) {
      const s = await i.json<VolStatus>(['status', 'rd']);
      if (s.state === 'degraded') degraded = s;
    }
  }
  await c.flush();
  degraded ??= await waitFor('the intercept to degrade', async () => {
    const s = await i.json<VolStatus>(['status', 'rd']);
    return s.state === 'degraded' ? s : null;
  });
  t.is(degraded.state, 'degraded', 'the pool filled while the manager could not store');
  const ms = await m.json<{ lastError: string | null; managerStalled: unknown }>(['status', 'rd']);
  t.regex(String(ms.lastError), /ENOSPC|no space/i, 'the manager says why');
  t.log(`manager: ${ms.lastError}; stalled: ${JSON.stringify(ms.managerStalled)}`);
  t.true((await c.read(0, 56 * MiB)).equals(model.subarray(0, 56 * MiB)), 'production holds every write');

  await mustRun('mount', ['-o', 'remount,size=400m', 'tmpfs', groupDir]);
  const after = await caughtUp(p, 'rd', 240_000);
  t.is(after.state, 'normal');
  const v = await m.json<{ ok: boolean; equal: boolean }>(['verify', 'rd']);
  t.true(v.equal && v.ok, 'replica = production');
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const out = path.join(mdir, 'latest.raw');
  await m.cliOk(['export', 'rd', '--at', 'latest', '--out', out]);
  t.is(sha(fs.readFileSync(out)), sha(model));
});
