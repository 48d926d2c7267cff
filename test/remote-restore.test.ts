/**
 * Production restore in the two-role mode (issue 17): `rewind restore` on
 * the manager, which sends the blocks to rewrite to the intercept, which
 * journals them. An intercept and a manager in two network namespaces
 * (helpers/remote.ts; needs root and ip). Production is read back over
 * NBD from the intercept and compared by checksum with what the test
 * wrote; the replica with production by `rewind verify` on the manager.
 * kill -9 of either side during the restore: after the restart the volume
 * is exactly the restored image (the single-process semantics of
 * acceptance-timetravel's 'kill -9 during a production restore').
 */
import test, { type ExecutionContext } from 'ava';
import * as crypto from 'node:crypto';
import { ControlClient } from '../src/control/client';
import { NbdClient } from '../src/nbd/client';
import { sleep } from './helpers/daemon';
import { caughtUp, startPair, waitFor, type Pair, type RoleDaemon, type VolStatus } from './helpers/remote';

const MiB = 1024 * 1024;
const SIZE = 96 * MiB;

function sha(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

async function api<T = any>(d: RoleDaemon, method: string, p: string): Promise<T> {
  const c = new ControlClient({ kind: 'unix', path: d.controlSocket, display: d.controlSocket } as never, { timeoutMs: 30_000 });
  return c.request<T>(method, p);
}

/** The whole of production, read from the intercept over NBD (fails while the volume is offline). */
async function readProduction(p: Pair): Promise<Buffer> {
  const c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'pv' });
  try {
    const out = Buffer.alloc(SIZE);
    for (let off = 0; off < SIZE; off += 4 * MiB) (await c.read(off, 4 * MiB)).copy(out, off);
    return out;
  } finally {
    c.destroy();
  }
}

/** Waits until production can be read again (the restore released it), and reads it. */
async function readWhenOnline(p: Pair): Promise<Buffer | null> {
  for (let i = 0; i < 900; i++) {
    const v = await api<{ offline?: string | null }>(p.i, 'GET', '/v1/volumes/pv').catch(() => null);
    if (v && !v.offline) {
      const img = await readProduction(p).catch(() => null);
      if (img) return img;
    }
    await sleep(200);
  }
  return null;
}

/** State A (the point restored to) and state B (production before the restore), written through the intercept. */
async function twoStates(p: Pair): Promise<{ point: number; a: string; b: string }> {
  await p.i.cliOk(['volume', 'create', 'pv', '--size', '96M', '--protected']);
  const c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'pv' });
  for (let off = 0; off < 64 * MiB; off += MiB) await c.write(off, crypto.randomBytes(MiB));
  await c.flush();
  await caughtUp(p, 'pv');
  const point = (await p.m.json<{ seq: number }>(['point', 'pv', 'latest'])).seq;
  const a = sha(await readProduction(p));
  // B: most of A rewritten, some of it zeroed, and new data past it.
  for (let off = 0; off < 80 * MiB; off += MiB) {
    if (off % (8 * MiB) === 0) await c.zero(off, MiB);
    else await c.write(off, crypto.randomBytes(MiB));
  }
  await c.flush();
  c.destroy();
  const b = sha(await readProduction(p));
  return { point, a, b };
}

async function replicaAgrees(t: ExecutionContext, p: Pair, what: string): Promise<void> {
  await caughtUp(p, 'pv');
  const v = await p.m.json<{ ok: boolean; productionSha256: string; replicaSha256: string }>(['verify', 'pv']);
  t.true(v.ok, `${what}: replica = production (${v.replicaSha256} / ${v.productionSha256})`);
}

interface Restored {
  undo: string | null;
  resumed: boolean;
  bytesWritten: number;
  durationMs: number;
  phases: Record<string, number>;
}

async function lastRestore(p: Pair): Promise<Restored> {
  const r = await api<{ restores: Restored[] }>(p.m, 'GET', '/v1/volumes/pv/restores');
  return r.restores.at(-1)!;
}

test.serial('two roles: restore on the manager makes production the point; its undo brings back the image before it', async (t) => {
  const p = await startPair(t, 'r');
  const { point, a, b } = await twoStates(p);
  const out = await p.m.cliOk(['restore', 'pv', '--to', `@seq:${point}`, '--no-progress'], 300_000);
  t.regex(out, /undo it with: rewind restore pv --to @seq:\d+/);
  t.is(sha(await readProduction(p)), a, 'production reads as the point restored to');
  await replicaAgrees(t, p, 'after the restore');
  const last = await lastRestore(p);
  t.log(`restore: ${last.bytesWritten / MiB} MiB rewritten in ${last.durationMs} ms ${JSON.stringify(last.phases)}`);
  t.true(last.bytesWritten > 0);
  t.false(last.resumed);
  // The restore is journaled: it is itself undone by restoring to its undo point.
  await p.m.cliOk(['restore', 'pv', '--to', last.undo!, '--no-progress'], 300_000);
  t.is(sha(await readProduction(p)), b, 'undo brings back the image before the restore');
  await replicaAgrees(t, p, 'after the undo');
  // A restore to where production already is writes nothing.
  const again = await p.m.json<{ bytesWritten: number }>(['restore', 'pv', '--to', last.undo!, '--no-progress']);
  t.is(again.bytesWritten, 0);
  // On the intercept a restore points to the manager; on the manager it is refused while the intercept is away.
  const onIntercept = await p.i.cli(['restore', 'pv', '--to', `@seq:${point}`, '--no-progress']);
  t.not(onIntercept.code, 0);
  t.regex(onIntercept.stderr, /served by the backup manager/);
  await p.net.linkDown();
  await waitFor('the manager to see the link down', async () => (await p.m.json<VolStatus>(['status', 'pv'])).link.state !== 'up', 30_000);
  const away = await p.m.cli(['restore', 'pv', '--to', `@seq:${point}`, '--no-progress']);
  t.not(away.code, 0);
  t.regex(away.stderr, /not connected/);
  await p.net.linkUp();
  await caughtUp(p, 'pv');
  t.falsy((await api(p.i, 'GET', '/v1/volumes/pv')).offline);
  t.is(sha(await readProduction(p)), b, 'a refused restore is not carried out later');
});

/**
 * Starts a restore on the manager through the API and resolves once its
 * progress reaches `at`: the hold (the intercept has the volume offline,
 * before the catch-up) or a third of the rewrite done (those blocks are
 * written on the intercept).
 */
function restoreUntil(p: Pair, to: string, at: 'held' | 'rewriting'): { reached: Promise<boolean>; ended: Promise<unknown> } {
  const c = new ControlClient({ kind: 'unix', path: p.m.controlSocket, display: p.m.controlSocket } as never, {});
  let reach: (v: boolean) => void = () => undefined;
  const reached = new Promise<boolean>((resolve) => (reach = resolve));
  const ended = c
    .streamJson('POST', '/v1/volumes/pv/restore', { to }, (line) => {
      const pr = line.progress as { phase: string; done: number; total: number } | undefined;
      if (!pr) return;
      if (at === 'held' && pr.phase === 'catch-up') reach(true);
      if (at === 'rewriting' && pr.phase === 'restore' && pr.done * 3 >= pr.total && pr.total > 0) reach(true);
    })
    .then(
      (r) => r,
      (err: Error) => err,
    )
    .finally(() => reach(false));
  return { reached, ended };
}

for (const victim of ['intercept', 'manager'] as const) {
  test.serial(
    `two roles: kill -9 of the ${victim} during a restore; after the restart the volume is exactly the restored image`,
    async (t) => {
      const p = await startPair(t, victim === 'intercept' ? 'ki' : 'km');
      const { point, a, b } = await twoStates(p);
      let undo = `@seq:${point}`;
      let full = 0;
      // Round 1 kills before anything is rewritten, round 2 a third into the rewrite (and goes back to B).
      for (const at of ['held', 'rewriting'] as const) {
        const [to, want, other] = at === 'held' ? [`@seq:${point}`, a, b] : [undo, b, a];
        const run = restoreUntil(p, to, at);
        if (!(await run.reached)) t.fail(`the restore ended before reaching ${at}: ${String(await run.ended)}`);
        const d = victim === 'intercept' ? p.i : p.m;
        await d.kill('SIGKILL');
        const ended = await run.ended;
        t.true(ended instanceof Error, 'the restore that was running failed');
        if (victim === 'manager') t.truthy((await api(p.i, 'GET', '/v1/volumes/pv')).offline, 'the intercept keeps the volume held');
        await d.startProcess();
        const img = await readWhenOnline(p);
        t.truthy(img, 'the volume came back online');
        const h = sha(img!);
        t.true(h === want || h === other, 'production is one of the two states');
        t.is(h, want, 'the interrupted restore was finished');
        const last = await lastRestore(p);
        t.true(last.resumed, 'the restore was resumed after the restart');
        t.log(`killed at ${at}: the run that finished rewrote ${(last.bytesWritten / MiB).toFixed(1)} MiB`);
        if (at === 'held') full = last.bytesWritten;
        // What the interrupted run wrote is not written again.
        else t.true(last.bytesWritten < full, `resumed, not started over (${last.bytesWritten} < ${full} bytes)`);
        await replicaAgrees(t, p, `killed at ${at}`);
        undo = last.undo!;
      }
    },
  );
}
