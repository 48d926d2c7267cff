/**
 * Issue 12, end to end: deep request queues and option floods against real
 * sockets and a live daemon.
 * - 1000 WRITEs of 128 KiB with distinct patterns sent in one burst (far
 *   past the in-flight limit, so reading pauses and resumes many times),
 *   then everything read back;
 * - fio's NBD engine at iodepth 128 and 256, 4 KiB to 1 MiB blocks, with
 *   crc32c verify, on a plain and a protected volume (the replica verified
 *   equal afterwards);
 * - a client that floods unknown options and never reads a reply: the
 *   daemon's memory stays bounded and the connection is closed.
 */
import test from 'ava';
import * as net from 'node:net';
import * as P from '../src/nbd/protocol';
import { NbdClient } from '../src/nbd/client';
import { startDaemon, sleep } from './helpers/daemon';
import { createVolume, MiB, need, ok, rssOf } from './helpers/hardening';
import { cliOk } from './helpers/live';
import { startFixture } from './helpers/nbd-fixtures';

function patternFor(k: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  const seed = (k * 2654435761) >>> 0;
  for (let i = 0; i < len; i += 4) b.writeUInt32LE((seed ^ (i * 40503)) >>> 0, i);
  return b;
}

test('1000 WRITEs of 128 KiB in one burst over a slow export: every block reads back as its own pattern', async (t) => {
  const f = await startFixture(t, { size: 160 * MiB });
  const rw = f.exports.get('rw')!;
  let n = 0;
  rw.delays.write = () => (n++ % 7 === 0 ? 2 : 0); // slow enough that the in-flight limit is hit over and over
  const N = 1000;
  const LEN = 128 * 1024;
  const sock = net.connect(f.port, '127.0.0.1');
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const chunks: Buffer[] = [];
  let got = 0;
  sock.on('data', (d) => {
    chunks.push(d);
    got += d.length;
  });
  const name = Buffer.from('rw');
  const goData = Buffer.alloc(4 + name.length + 2);
  goData.writeUInt32BE(name.length, 0);
  name.copy(goData, 4);
  const hs = Buffer.alloc(4 + 16);
  hs.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0);
  hs.writeBigUInt64BE(P.IHAVEOPT, 4);
  hs.writeUInt32BE(P.OPT_GO, 12);
  hs.writeUInt32BE(goData.length, 16);
  const burst: Buffer[] = [hs, goData];
  for (let k = 0; k < N; k++) {
    burst.push(P.encodeRequest(P.CMD_WRITE, 0, BigInt(k + 1), k * LEN, LEN), patternFor(k, LEN));
  }
  sock.write(Buffer.concat(burst));
  // Replies: the handshake's, then N simple replies of 16 bytes.
  const deadline = Date.now() + 60_000;
  const replies = () => {
    const all = Buffer.concat(chunks);
    let p = 18;
    while (p + 20 <= all.length) {
      const type = all.readUInt32BE(p + 12);
      p += 20 + all.readUInt32BE(p + 16);
      if (type === P.REP_ACK) return { all, start: p };
    }
    return { all, start: -1 };
  };
  while (Date.now() < deadline) {
    const { all, start } = replies();
    if (start >= 0 && all.length - start >= 16 * N) break;
    if (sock.destroyed) break;
    await sleep(20);
  }
  const { all, start } = replies();
  t.true(start >= 0, 'handshake completed');
  t.is(all.length - start, 16 * N, `got ${got} bytes of replies`);
  const seen = new Set<bigint>();
  for (let p = start; p + 16 <= all.length; p += 16) {
    t.is(all.readUInt32BE(p), P.SIMPLE_REPLY_MAGIC);
    t.is(all.readUInt32BE(p + 4), 0, 'no error reply');
    seen.add(all.readBigUInt64BE(p + 8));
  }
  t.is(seen.size, N);
  sock.destroy();
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  let bad = 0;
  for (let k = 0; k < N; k++) {
    if (!(await c.read(k * LEN, LEN)).equals(patternFor(k, LEN))) bad++;
  }
  await c.disconnect();
  t.is(bad, 0, `${bad} blocks hold bytes other than their own write's`);
});

async function fioDeep(uri: string, bs: string, depth: number): Promise<{ error: number; written: number; verified: number }> {
  const out = await ok(
    'fio',
    [
      `--name=deep-${bs}-${depth}`,
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--size=48M',
      '--rw=randwrite',
      `--bs=${bs}`,
      `--iodepth=${depth}`,
      `--iodepth_batch_submit=${depth}`,
      '--iodepth_batch_complete_min=1',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--output-format=json',
    ],
    300_000,
  );
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  return { error: job.error, written: job.write.io_bytes, verified: job.read.io_bytes };
}

test.serial('fio at iodepth 128 and 256, 4k to 1M blocks, crc32c verify: no errors on plain and protected volumes', async (t) => {
  need('fio');
  const d = await startDaemon();
  t.teardown(() => d.cleanup());
  await createVolume(d, 'plain', '64M');
  await createVolume(d, 'prot', '64M', '--protected');
  for (const vol of ['plain', 'prot']) {
    for (const depth of [128, 256]) {
      for (const bs of ['4k', '64k', '128k', '1M']) {
        const r = await fioDeep(d.nbdUri(vol), bs, depth);
        t.is(r.error, 0, `${vol} bs=${bs} iodepth=${depth}`);
        t.true(r.written > 0 && r.verified > 0, `${vol} bs=${bs} iodepth=${depth}: wrote ${r.written}, verified ${r.verified}`);
      }
    }
  }
  t.false(/protocol violation/.test(d.logs), 'no protocol violation logged');
  // The replica got exactly what production holds.
  const v = await cliOk(d, ['verify', 'prot'], 600_000);
  t.regex(v, /equal/);
});

test.serial('an option flood that never reads replies is held to bounded memory and closed; others are served', async (t) => {
  need('nbdinfo');
  const d = await startDaemon({ args: ['--handshake-timeout', '10'] });
  t.teardown(() => d.cleanup());
  await sleep(500);
  const baseline = rssOf(d.pid!);
  const opt = Buffer.alloc(16);
  opt.writeBigUInt64BE(P.IHAVEOPT, 0);
  opt.writeUInt32BE(0x7fff, 8); // unknown: answered with ERR_UNSUP
  opt.writeUInt32BE(0, 12);
  const batch = Buffer.concat(Array.from({ length: 4096 }, () => opt));
  const floods: net.Socket[] = [];
  let sent = 0;
  let peak = baseline;
  for (let i = 0; i < 4; i++) {
    const s = net.connect(d.nbdPort, '127.0.0.1');
    s.on('error', () => undefined);
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.pause(); // never read a reply
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE, 0);
    s.write(flags);
    floods.push(s);
  }
  const t0 = Date.now();
  while (Date.now() - t0 < 4000) {
    for (const s of floods) {
      if (!s.destroyed && s.writableLength < 4 * MiB) {
        s.write(batch);
        sent += 4096;
      }
    }
    peak = Math.max(peak, rssOf(d.pid!));
    await sleep(5);
  }
  // Meanwhile a well-behaved client is served.
  await ok('nbdinfo', [d.nbdUri('default')]);
  const growth = peak - baseline;
  t.log(
    `option flood: ${sent} options queued by 4 clients in 4 s; daemon RSS ${Math.round(baseline / MiB)} MiB -> peak ${Math.round(peak / MiB)} MiB`,
  );
  t.true(growth < 64 * MiB, `RSS grew by ${Math.round(growth / MiB)} MiB`);
  for (const s of floods) s.destroy();

  // Too many options in one handshake: closed, even when the client reads every reply.
  const greedy = net.connect(d.nbdPort, '127.0.0.1');
  greedy.on('error', () => undefined);
  await new Promise<void>((r) => greedy.once('connect', () => r()));
  let closed = false;
  greedy.on('close', () => (closed = true));
  greedy.on('data', () => undefined);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE, 0);
  greedy.write(flags);
  const t1 = Date.now();
  while (!closed && Date.now() - t1 < 8000) {
    if (greedy.writableLength < MiB) greedy.write(batch);
    await sleep(2);
  }
  t.true(closed, 'a client that never chooses an export is closed after the option limit');
  t.regex(d.logs, /options without choosing an export/);
});
