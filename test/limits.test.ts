/**
 * Resource limits (issue 8), set with `rewind serve` flags or the
 * configuration file and checked with real sockets against a live daemon:
 * handshake time (slowloris, TLS included), connections, requests in
 * flight, bytes buffered per connection (a client that floods requests and
 * never reads replies is held, then disconnected, with the daemon's memory
 * bounded while other clients are served), and the memory budget all
 * connections share (200 clients flooding at once).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import * as P from '../src/nbd/protocol';
import { runRewind, sleep, startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { fails, MiB, need, ok, rssOf } from './helpers/hardening';
import { pattern, RawPeer, startFixture } from './helpers/nbd-fixtures';
import { makePki } from './helpers/tls-certs';

async function metric(d: TestDaemon, name: string): Promise<number> {
  const r = await d.client().raw('GET', '/v1/metrics');
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(r.text);
  return m ? Number(m[1]) : 0;
}

/** Resolves on 'drain' or after `ms`, whichever first (without leaving a listener behind). */
function drainOr(sock: import('node:net').Socket, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      sock.off('drain', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    sock.once('drain', done);
  });
}

async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(25);
  }
  return cond();
}

test.serial('slowloris: silent and trickling handshakes are closed at --handshake-timeout, TLS handshakes too', async (t) => {
  need('openssl');
  const root = tempDir('rw-lim-pki-');
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const pki = makePki(root);
  const d = await startDaemon({ args: ['--handshake-timeout', '1', '--tls', 'on', '--tls-dir', pki.serverDir] });
  t.teardown(() => d.cleanup());

  const silent = await RawPeer.connect(d.nbdPort);
  const t0 = Date.now();
  await silent.read(18);
  t.true(await silent.waitClosed(5000));
  const silentMs = Date.now() - t0;
  t.true(silentMs >= 800 && silentMs < 3000, `silent client closed after ${silentMs} ms`);

  // Activity does not extend the deadline: one byte of an option every 100 ms.
  const trickle = await RawPeer.connect(d.nbdPort);
  await trickle.handshake();
  const opt = Buffer.alloc(16 + 8);
  opt.writeBigUInt64BE(P.IHAVEOPT, 0);
  opt.writeUInt32BE(P.OPT_LIST, 8);
  opt.writeUInt32BE(8, 12);
  const t1 = Date.now();
  for (let i = 0; i < opt.length && !trickle.closed; i++) {
    trickle.write(opt.subarray(i, i + 1));
    await sleep(100);
  }
  t.true(await trickle.waitClosed(3000));
  const trickleMs = Date.now() - t1;
  t.true(trickleMs < 2500, `trickling client closed after ${trickleMs} ms`);

  // STARTTLS acknowledged, then no TLS ClientHello: closed at the same deadline.
  const tlsStall = await RawPeer.connect(d.nbdPort);
  await tlsStall.handshake();
  tlsStall.sendOption(P.OPT_STARTTLS);
  t.is((await tlsStall.optionReply()).type, P.REP_ACK);
  const t2 = Date.now();
  t.true(await tlsStall.waitClosed(5000));
  t.true(Date.now() - t2 < 3000);

  t.true((await metric(d, 'rewind_nbd_handshake_timeouts_total')) >= 3);
  // Still serving.
  need('nbdinfo');
  await ok('nbdinfo', [d.nbdUri('default')]);
});

test.serial('connections over --max-connections are refused at accept; freed slots are served again', async (t) => {
  need('nbdinfo');
  const d = await startDaemon({ args: ['--max-connections', '3'] });
  t.teardown(() => d.cleanup());
  const held: NbdClient[] = [];
  for (let i = 0; i < 3; i++) held.push(await NbdClient.connect({ port: d.nbdPort, exportName: 'default' }));
  const extra = await RawPeer.connect(d.nbdPort);
  await t.throwsAsync(extra.read(18, 3000), { message: /closed/ }, 'no greeting for the 4th connection');
  await fails('nbdinfo', [d.nbdUri('default')]);
  await fails('nbdinfo', [d.nbdUnixUri('default')]);
  t.true((await metric(d, 'rewind_nbd_connections_refused_total')) >= 3);
  // The held clients work meanwhile.
  await held[0]!.write(0, pattern(4096, 7));
  t.true((await held[1]!.read(0, 4096)).equals(pattern(4096, 7)));
  await held.pop()!.disconnect();
  t.true(await until(async () => (await d.api('GET', '/v1/health')).body.connections === 2, 3000));
  await ok('nbdinfo', [d.nbdUri('default')]);
  for (const c of held) await c.disconnect();
});

test.serial(
  'a client that floods requests and never reads replies is held to --max-buffer, then disconnected; memory stays bounded, others are served',
  async (t) => {
    need('nbdinfo');
    const d = await startDaemon({ args: ['--max-buffer', '2M', '--max-inflight', '16', '--write-stall-timeout', '2'] });
    t.teardown(() => d.cleanup());
    const baseline = rssOf(d.pid!);

    const flood = await RawPeer.connect(d.nbdPort);
    await flood.handshake();
    await flood.go('default');
    flood.sock.pause(); // never read a reply
    let floodClosed = false;
    flood.sock.on('close', () => (floodClosed = true));

    // A well-behaved client writes and checks its data throughout.
    const good = await NbdClient.connect({ port: d.nbdPort, exportName: 'default' });
    const goodRun = (async () => {
      let n = 0;
      while (!floodClosed && n < 2000) {
        const off = (1000 + (n % 200)) * 64 * 1024;
        const data = pattern(64 * 1024, n + 1);
        await good.write(off, data);
        if (!(await good.read(off, data.length)).equals(data)) throw new Error(`good client read back wrong data at ${off}`);
        n++;
      }
      return n;
    })();

    // Writes of 4 KiB and reads of 1 MiB, as fast as the socket takes them.
    const payload = Buffer.alloc(4096, 0xee);
    let sent = 0;
    let blocked = 0;
    let peakRss = baseline;
    const t0 = Date.now();
    while (!floodClosed && Date.now() - t0 < 30_000) {
      const off = (sent % 256) * 4096;
      const req =
        sent % 8 === 7
          ? P.encodeRequest(P.CMD_READ, 0, BigInt(sent), 0, MiB)
          : Buffer.concat([P.encodeRequest(P.CMD_WRITE, 0, BigInt(sent), off, payload.length), payload]);
      sent++;
      if (!flood.sock.write(req)) {
        blocked++;
        await drainOr(flood.sock, 200);
        peakRss = Math.max(peakRss, rssOf(d.pid!));
      } else if (sent % 256 === 0) {
        await new Promise((r) => setImmediate(r));
      }
    }
    const floodMs = Date.now() - t0;
    t.true(floodClosed, `flood client disconnected (after ${floodMs} ms, ${sent} requests sent)`);
    // Not a timing: the socket refused more at least once (the daemon stopped reading).
    t.true(blocked > 0, 'the flood client met backpressure');
    t.true((await metric(d, 'rewind_nbd_stall_disconnects_total')) >= 1);
    const growth = peakRss - baseline;
    t.log(
      `flood: ${sent} requests in ${floodMs} ms, daemon RSS ${Math.round(baseline / MiB)} MiB -> peak ${Math.round(peakRss / MiB)} MiB`,
    );
    t.true(growth < 160 * MiB, `daemon RSS grew by ${Math.round(growth / MiB)} MiB`);

    const n = await goodRun;
    t.true(n > 0, 'the good client made progress during the flood');
    await good.disconnect();
    await ok('nbdinfo', [d.nbdUri('default')]);
  },
);

test.serial('a client that only writes and never reads the (small) write replies is held and disconnected too', async (t) => {
  const d = await startDaemon({ args: ['--max-buffer', '1M', '--write-stall-timeout', '2'] });
  t.teardown(() => d.cleanup());
  const baseline = rssOf(d.pid!);
  const flood = await RawPeer.connect(d.nbdPort);
  await flood.handshake();
  await flood.go('default');
  flood.sock.pause();
  let closed = false;
  flood.sock.on('close', () => (closed = true));
  const payload = Buffer.alloc(512, 0xab);
  let sent = 0;
  let peakRss = baseline;
  const t0 = Date.now();
  while (!closed && Date.now() - t0 < 60_000) {
    const batch: Buffer[] = [];
    for (let i = 0; i < 256; i++, sent++) batch.push(P.encodeRequest(P.CMD_WRITE, 0, BigInt(sent), (sent % 4096) * 512, 512), payload);
    if (!flood.sock.write(Buffer.concat(batch))) {
      await drainOr(flood.sock, 100);
      peakRss = Math.max(peakRss, rssOf(d.pid!));
    } else await new Promise((r) => setImmediate(r));
  }
  t.log(`write flood: ${sent} writes in ${Date.now() - t0} ms, RSS ${Math.round(baseline / MiB)} -> ${Math.round(peakRss / MiB)} MiB`);
  t.true(closed, 'disconnected');
  t.true(peakRss - baseline < 160 * MiB);
  t.true((await metric(d, 'rewind_nbd_stall_disconnects_total')) >= 1);
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'default' });
  t.true((await c.read(0, 512)).equals(payload), 'the flood writes that were answered are on disk');
  await c.disconnect();
});

test('library: --max-inflight caps the requests an export sees at once from one connection', async (t) => {
  const f = await startFixture(t, { limits: { maxInflightPerConnection: 4 } });
  const rw = f.exports.get('rw')!;
  let now = 0;
  let peak = 0;
  rw.delays.read = () => {
    now++;
    peak = Math.max(peak, now);
    return 30;
  };
  const inner = rw.inner;
  const origRead = inner.read.bind(inner);
  inner.read = async (o: number, l: number, into?: Buffer) => {
    try {
      return await origRead(o, l, into);
    } finally {
      now--;
    }
  };
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  await Promise.all(Array.from({ length: 64 }, (_, i) => c.read(i * 4096, 4096)));
  t.true(peak <= 4, `peak in flight ${peak}`);
  t.true(peak >= 2, 'requests did overlap');
  await c.disconnect();
});

test.serial('limits come from the configuration file, flags override it, bad values are refused clearly', async (t) => {
  const dir = tempDir('rw-limcfg-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = path.join(dir, 'rewind.json');
  fs.writeFileSync(cfg, JSON.stringify({ nbd: { maxConnections: 1, handshakeTimeout: 2 } }));
  const d = await startDaemon({ args: ['--config', cfg] });
  t.teardown(() => d.cleanup());
  const a = await NbdClient.connect({ port: d.nbdPort, exportName: 'default' });
  await t.throwsAsync(NbdClient.connect({ port: d.nbdPort, exportName: 'default' }));
  await a.disconnect();
  await d.cleanup();

  const d2 = await startDaemon({ args: ['--config', cfg, '--max-connections', '2'] });
  t.teardown(() => d2.cleanup());
  const b1 = await NbdClient.connect({ port: d2.nbdPort, exportName: 'default' });
  const b2 = await NbdClient.connect({ port: d2.nbdPort, exportName: 'default' });
  await b1.disconnect();
  await b2.disconnect();

  for (const [args, msg] of [
    [['--max-connections', '0'], /max connections: expected a whole number from 1/],
    [['--max-inflight', 'lots'], /max requests in flight: expected a whole number/],
    [['--max-buffer', '4k'], /max buffer: at least 1M/],
    [['--memory-budget', '100k'], /memory budget: at least 1M/],
    [['--handshake-timeout', '-1'], /handshake timeout: expected seconds/],
    [['--config', path.join(dir, 'missing.json')], /cannot read configuration file/],
  ] as Array<[string[], RegExp]>) {
    const r = await runRewind(['--data-dir', dir, 'serve', '--listen', 'none', '--socket', 'none', ...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, msg);
  }
  fs.writeFileSync(cfg, JSON.stringify({ nbd: { maxConections: 3 } }));
  const typo = await runRewind(['--data-dir', dir, 'serve', '--config', cfg]);
  t.is(typo.code, 2);
  t.regex(typo.stderr, /unknown setting nbd\.maxConections/);
});

test.serial(
  '200 flooding clients share one memory budget: the daemon stays under it plus a per-connection overhead, a good client is served',
  async (t) => {
    const FLOODERS = 200;
    const budget = 64 * MiB;
    // Per connection the budget does not count: its 256 KiB receive buffer, the reserve a
    // connection holding nothing may take (128 KiB), socket and parser objects. Stated in the README.
    const perConnection = 512 * 1024;
    const slack = 64 * MiB; // V8 heap growth, malloc arenas, the good client's traffic
    const d = await startDaemon({
      args: ['--memory-budget', '64M', '--max-buffer', '16M', '--max-connections', '400', '--write-stall-timeout', '600'],
    });
    t.teardown(() => d.cleanup());
    const floods: RawPeer[] = [];
    t.teardown(() => {
      for (const f of floods) f.destroy();
    });
    for (let i = 0; i < FLOODERS; i++) {
      const f = await RawPeer.connect(d.nbdPort);
      await f.handshake();
      await f.go('default');
      floods.push(f);
    }
    await sleep(500);
    const baseline = rssOf(d.pid!);
    // Each asks for 64 reads of 1 MiB and never reads a reply: 12.5 GiB asked for in all,
    // 16 MiB per connection allowed by --max-buffer, 3.1 GiB for 200 without a shared budget.
    for (const f of floods) {
      f.sock.pause();
      const reqs: Buffer[] = [];
      for (let k = 0; k < 64; k++) reqs.push(P.encodeRequest(P.CMD_READ, 0, BigInt(k), (k % 32) * MiB, MiB));
      f.write(Buffer.concat(reqs));
    }
    let peakRss = baseline;
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssOf(d.pid!))), 50);
    t.teardown(() => clearInterval(sampler));

    // A well-behaved client keeps writing and reading back its own data meanwhile.
    const good = await NbdClient.connect({ port: d.nbdPort, exportName: 'default' });
    let n = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 8000) {
      const off = (40 + (n % 16)) * 64 * 1024;
      const data = pattern(64 * 1024, n + 7);
      await good.write(off, data);
      t.true((await good.read(off, data.length)).equals(data), `good client read back its data at ${off}`);
      n++;
    }
    await good.disconnect();
    clearInterval(sampler);
    peakRss = Math.max(peakRss, rssOf(d.pid!));

    const waiting = await metric(d, 'rewind_nbd_memory_waiting_connections');
    const peakHeld = await metric(d, 'rewind_nbd_memory_peak_bytes');
    t.true(n >= 20, `the good client completed ${n} write+read pairs in 8 s`);
    t.true(waiting >= FLOODERS / 2, `flooding connections wait for the budget (${waiting})`);
    t.true(peakHeld <= budget + FLOODERS * 128 * 1024, `the budget held at most ${Math.round(peakHeld / MiB)} MiB`);
    const growth = peakRss - baseline;
    t.log(
      `${FLOODERS} flooders: RSS ${Math.round(baseline / MiB)} -> peak ${Math.round(peakRss / MiB)} MiB (+${Math.round(growth / MiB)}), budget peak ${Math.round(peakHeld / MiB)} MiB, ${waiting} waiting, good client ${n} pairs`,
    );
    t.true(
      growth < budget + FLOODERS * perConnection + slack,
      `RSS grew by ${Math.round(growth / MiB)} MiB, over budget + ${FLOODERS} x ${perConnection / 1024} KiB + ${slack / MiB} MiB`,
    );
    // The flooders are still there and get their replies once they read.
    const f0 = floods[0]!;
    f0.sock.resume();
    const r = await f0.simpleReply(MiB);
    t.is(r.error, 0);
    t.is(r.data.length, MiB);
  },
);
