/**
 * Scrub: a flipped byte in a stored BILFC and one in the replica are found;
 * from then on the points that need the damaged data refuse it (EIO, with
 * the damaged thing named) while every other point and block still reads;
 * the marks survive a restart and are cleared by a scrub that finds the
 * data good again. Results in `rewind status`, the API and the metrics.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient, NbdClientError } from '../src/nbd/client';
import { startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { pattern } from './helpers/nbd-fixtures';

const KiB = 1024;
const MiB = 1024 * KiB;

async function cli(d: TestDaemon, args: string[]): Promise<string> {
  const r = await d.cli(args, { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function flip(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0x5a;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
}

async function readAt(d: TestDaemon, exportName: string, offset: number, length: number): Promise<Buffer> {
  const c = await NbdClient.connect({ port: d.nbdPort, exportName });
  try {
    return await c.read(offset, length);
  } finally {
    c.destroy();
  }
}

async function refused(t: any, d: TestDaemon, exportName: string, offset: number): Promise<void> {
  const err = await t.throwsAsync(readAt(d, exportName, offset, 4 * KiB));
  t.true(err instanceof NbdClientError && err.errno === 5, `${exportName} at ${offset}: EIO (${err?.message})`);
}

test.serial('scrub finds a flipped byte in a BILFC and in the replica; the points that need them refuse, the others read', async (t) => {
  const d = await startDaemon({ args: ['--scrub-interval', 'off'] });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'sv', '--size', '8M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'sv' });
  const p1 = pattern(256 * KiB, 1);
  const p2 = pattern(64 * KiB, 2);
  const p3 = pattern(64 * KiB, 3);
  const p4 = pattern(128 * KiB, 4);
  const p5 = pattern(64 * KiB, 5);
  // T_1: [0, 256K) and [1M, 1M+64K); T_2: [0, 64K) again and [2M, 2M+128K); T_3: [4M, 4M+64K).
  await c.write(0, p1);
  await c.write(MiB, p2);
  await c.flush();
  await cli(d, ['seal', 'sv']);
  await c.write(0, p3);
  await c.write(2 * MiB, p4);
  await c.flush();
  await cli(d, ['seal', 'sv']);
  await c.write(4 * MiB, p5);
  await c.flush();
  await cli(d, ['seal', 'sv']);
  c.destroy();
  const log = JSON.parse(await cli(d, ['log', 'sv', '--json'])) as Array<{ n: number; bilfc: { file: string } }>;
  t.is(log.length, 3);
  const history = path.join(d.dataDir, 'groups', 'sv', 'manager', 'history');
  const bilfc2 = log[1]!.bilfc.file;
  const replica = path.join(d.dataDir, 'groups', 'sv', 'manager', 'replica', 'vol-1.raw');

  const clean = JSON.parse(await cli(d, ['scrub', 'sv', '--json']));
  t.is(clean.reports[0].state, 'done');
  t.is(clean.reports[0].found.length, 0, JSON.stringify(clean.reports[0].found));
  t.is(clean.reports[0].containersChecked, 6);
  t.true(clean.reports[0].replicaBlocksChecked >= (256 + 64 + 128 + 64) / 4, `${clean.reports[0].replicaBlocksChecked} replica blocks`);

  // A byte inside BILFC_2's first before-image (block 0 as T_1 left it), and one in the replica's block 1024 (last written by T_3).
  flip(path.join(history, bilfc2), 64 + 48 + 100);
  flip(replica, 4 * MiB + 10);
  const r = await d.cli(['scrub', 'sv']);
  t.not(r.code, 0, 'rewind scrub fails when it finds damage');
  t.true(r.stdout.includes(`DAMAGED BILFC_2 (${bilfc2})`), r.stdout);
  t.regex(r.stdout, /DAMAGED replica vol-1\.raw: 1 block\(s\) from 1024: differs from what T_3/);

  for (const [name, at] of [
    ['s1', '@txn:1'],
    ['s2', '@txn:2'],
    ['s3', 'latest'],
  ])
    await cli(d, ['snapshot', 'sv', '--at', at!, '--name', name!]);
  // Before T_2, block 0 comes from BILFC_2: refused. Blocks T_2 never touched read (the replica, BILFC_3).
  await refused(t, d, 's1', 0);
  t.true((await readAt(d, 's1', MiB, 64 * KiB)).equals(p2));
  t.true((await readAt(d, 's1', 4 * MiB, 4 * KiB)).equals(Buffer.alloc(4 * KiB)));
  // After T_3, block 1024 comes from the damaged replica block: refused; its neighbours and block 0 read.
  await refused(t, d, 's3', 4 * MiB);
  t.true((await readAt(d, 's3', 4 * MiB + 4 * KiB, 60 * KiB)).equals(p5.subarray(4 * KiB)));
  t.true((await readAt(d, 's3', 0, 64 * KiB)).equals(p3));
  // Between the two, neither damaged thing is needed.
  t.true((await readAt(d, 's2', 0, 64 * KiB)).equals(p3));
  t.true((await readAt(d, 's2', 4 * MiB, 64 * KiB)).equals(Buffer.alloc(64 * KiB)));
  t.true((await readAt(d, 's2', 2 * MiB, 128 * KiB)).equals(p4));
  // A command that needs the damaged container names it.
  const out = path.join(tempDir(), 'x.raw');
  t.teardown(() => fs.rmSync(path.dirname(out), { recursive: true, force: true }));
  const ex = await d.cli(['export', 'sv', '--at', '@txn:1', '--out', out]);
  t.not(ex.code, 0);
  t.true(ex.stderr.includes(`BILFC_2 (`) && ex.stderr.includes(bilfc2) && ex.stderr.includes('is damaged'), ex.stderr);

  // Status, API, metrics.
  const st = JSON.parse(await cli(d, ['status', 'sv', '--json']));
  t.is(st.scrub.damage.length, 2);
  t.regex(await cli(d, ['status']), /DAMAGED BILFC_2/);
  const api = await d.api('GET', '/v1/scrub');
  t.is(api.body.groups[0].group, 'sv');
  t.is(api.body.groups[0].last.containerErrors, 1);
  t.is(api.body.groups[0].last.replicaBlockErrors, 1);
  const metrics = (await d.client().raw('GET', '/v1/metrics')).text;
  t.regex(metrics, /rewind_scrub_damage_marks\{group="sv"\} 2/);
  t.regex(metrics, /rewind_scrub_damaged_replica_blocks\{group="sv"\} 1/);

  // The marks survive a restart.
  await d.restart();
  await refused(t, d, 's3', 4 * MiB);
  await refused(t, d, 's1', 0);

  // Repaired (the bytes flipped back): the next scrub clears the marks and the points read again.
  flip(path.join(history, bilfc2), 64 + 48 + 100);
  flip(replica, 4 * MiB + 10);
  const again = JSON.parse(await cli(d, ['scrub', 'sv', '--json']));
  t.is(again.reports[0].found.length, 0);
  t.is(again.reports[0].cleared, 2);
  t.true((await readAt(d, 's1', 0, 256 * KiB)).equals(p1));
  t.true((await readAt(d, 's3', 4 * MiB, 64 * KiB)).equals(p5));
  t.is(JSON.parse(await cli(d, ['status', 'sv', '--json'])).scrub.damage.length, 0);
});

test.serial('a write over a damaged replica block carries the damage into the new BILFC, and the scrub is throttled', async (t) => {
  const d = await startDaemon({ args: ['--scrub-interval', 'off', '--scrub-rate', '4M'] });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'cw', '--size', '4M', '--protected']);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'cw' });
  await c.write(0, pattern(2 * MiB, 7));
  await c.flush();
  await cli(d, ['seal', 'cw']);
  flip(path.join(d.dataDir, 'groups', 'cw', 'manager', 'replica', 'vol-1.raw'), 8192 + 1);
  const r = JSON.parse((await d.cli(['scrub', 'cw', '--json'], { timeoutMs: 120_000 })).stdout);
  t.deepEqual(r.reports[0].found[0].blocks, [2]);
  // 2 MiB of before-images + 2 MiB of AILFC + 2 x 2 MiB compared at 4 MiB/s: at least a second.
  t.true(r.reports[0].bytesPerSecond <= 4.5 * MiB, `${r.reports[0].bytesPerSecond} B/s`);
  // Half of block 2 rewritten: T_2's before-image of it is the damaged block, so the point before T_2 refuses it.
  await c.write(8192, Buffer.alloc(2048, 0x11));
  await c.flush();
  await cli(d, ['seal', 'cw']);
  c.destroy();
  await cli(d, ['snapshot', 'cw', '--at', '@txn:1', '--name', 'before']);
  await refused(t, d, 'before', 8192);
  t.true((await readAt(d, 'before', 0, 8192)).equals(pattern(2 * MiB, 7).subarray(0, 8192)));
  const st = JSON.parse(await cli(d, ['status', 'cw', '--json']));
  t.true(
    st.scrub.damage.some((m: any) => m.kind === 'container' && m.n === 2 && m.container === 'bilfc' && m.blocks?.[0] === 2),
    JSON.stringify(st.scrub.damage),
  );
});
