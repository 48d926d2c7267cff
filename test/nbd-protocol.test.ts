/**
 * nbd-server-ts against its own client and raw sockets: negotiation,
 * transmission, concurrency, and every kind of bad input the issue names.
 */
import test from 'ava';
import { NbdClient, NbdClientError } from '../src/nbd/client';
import * as P from '../src/nbd/protocol';
import { STATE_DIRTY, STATE_HOLE, STATE_ZERO, type Extent, type MetaContext, type NbdExport } from '../src/nbd/export';
import { NbdServer } from '../src/nbd/server';
import { MemoryExport } from '../src/storage/memory-export';
import { RawPeer, pattern, startFixture } from './helpers/nbd-fixtures';

const MiB = 1024 * 1024;

async function expectNbdError(p: Promise<unknown>, errno: number): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NbdClientError && e.errno === errno) return;
    throw new Error(`expected NBD error ${errno}, got ${(e as Error).message} (${(e as NbdClientError).errno})`, { cause: e });
  }
  throw new Error(`expected NBD error ${errno}, got success`);
}

test('OPT_LIST, OPT_INFO and OPT_GO report exports, names, descriptions and block sizes', async (t) => {
  const f = await startFixture(t);
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  peer.sendOption(P.OPT_LIST);
  const names: string[] = [];
  for (;;) {
    const r = await peer.optionReply();
    if (r.type === P.REP_ACK) break;
    t.is(r.type, P.REP_SERVER);
    const n = r.data.readUInt32BE(0);
    names.push(r.data.toString('utf8', 4, 4 + n));
  }
  t.deepEqual(names.sort(), ['ro', 'rw']);
  peer.destroy();

  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  t.is(c.info.size, 64 * MiB);
  t.is(c.info.name, 'rw');
  t.is(c.info.description, 'test export rw');
  t.is(c.info.minBlock, 1);
  t.is(c.info.prefBlock, 4096);
  t.is(c.info.maxPayload, 64 * MiB);
  t.truthy(c.info.flags & P.FLAG_SEND_FLUSH);
  t.truthy(c.info.flags & P.FLAG_CAN_MULTI_CONN);
  t.truthy(c.info.flags & P.FLAG_SEND_DF);
  t.is(c.metaContextId, 1);
  await c.disconnect();
});

test('unknown options get NBD_REP_ERR_UNSUP and negotiation goes on', async (t) => {
  const f = await startFixture(t);
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  peer.sendOption(4242, Buffer.from('whatever'));
  const r = await peer.optionReply();
  t.is(r.opt, 4242);
  t.is(r.type, P.REP_ERR_UNSUP);
  const { size } = await peer.go('rw');
  t.is(size, 64 * MiB);
  peer.destroy();
});

test('EXPORT_NAME enters transmission with size and flags; unknown name closes', async (t) => {
  const f = await startFixture(t);
  const peer = await RawPeer.connect(f.port);
  await peer.handshake(P.FLAG_C_FIXED_NEWSTYLE); // no NO_ZEROES: expect 124 zero bytes
  peer.sendOption(P.OPT_EXPORT_NAME, Buffer.from('rw'));
  const b = await peer.read(134);
  t.is(Number(b.readBigUInt64BE(0)), 64 * MiB);
  t.true(b.subarray(10).every((x) => x === 0));
  peer.request(P.CMD_WRITE, 0, 7n, 0, 4, Buffer.from('abcd'));
  const w = await peer.simpleReply();
  t.is(w.error, 0);
  t.is(w.cookie, 7n);
  peer.request(P.CMD_READ, 0, 8n, 0, 4);
  const r = await peer.simpleReply(4);
  t.is(r.data.toString(), 'abcd');
  peer.destroy();

  const bad = await RawPeer.connect(f.port);
  await bad.handshake();
  bad.sendOption(P.OPT_EXPORT_NAME, Buffer.from('nope'));
  t.true(await bad.waitClosed());
});

test('OPT_GO for an unknown export gets NBD_REP_ERR_UNKNOWN', async (t) => {
  const f = await startFixture(t);
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  await t.throwsAsync(peer.go('missing'), { message: `GO failed: ${P.REP_ERR_UNKNOWN}` });
  peer.destroy();
});

test('meta contexts: list, set, and block status with holes', async (t) => {
  const f = await startFixture(t);
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  await c.write(1 * MiB, pattern(64 * 1024, 1));
  const ex = await c.blockStatus(0, 4 * MiB);
  t.true(ex.length >= 3);
  t.is(ex[0]!.flags, STATE_HOLE | STATE_ZERO);
  t.is(ex[0]!.length, 1 * MiB);
  t.is(ex[1]!.flags & STATE_HOLE, 0);
  const one = await c.blockStatus(0, 4096, P.CMD_FLAG_REQ_ONE);
  t.is(one.length, 1);
  t.is(one[0]!.length, 4096);
  // LIST_META_CONTEXT with the "base:" wildcard
  const lst = Buffer.alloc(4 + 2 + 4 + 4 + 5);
  lst.writeUInt32BE(2, 0);
  lst.write('rw', 4);
  lst.writeUInt32BE(1, 6);
  lst.writeUInt32BE(5, 10);
  lst.write('base:', 14);
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  peer.sendOption(P.OPT_STRUCTURED_REPLY);
  t.is((await peer.optionReply()).type, P.REP_ACK);
  peer.sendOption(P.OPT_LIST_META_CONTEXT, lst);
  const r1 = await peer.optionReply();
  t.is(r1.type, P.REP_META_CONTEXT);
  t.is(r1.data.toString('utf8', 4), 'base:allocation');
  t.is((await peer.optionReply()).type, P.REP_ACK);
  // A truncated query is invalid
  peer.sendOption(P.OPT_SET_META_CONTEXT, lst.subarray(0, lst.length - 2));
  t.is((await peer.optionReply()).type, P.REP_ERR_INVALID);
  peer.destroy();
  await c.disconnect();
});

/** A memory export offering two qemu dirty bitmaps: "listed" (first MiB dirty) and "hidden" (selectable, not listed). */
async function startBitmapServer(t: { teardown(fn: () => void): void }): Promise<number> {
  const bitmap = (name: string, dirtyEnd: number): MetaContext => ({
    name,
    async blockStatus(offset: number, length: number): Promise<Extent[]> {
      if (offset < dirtyEnd)
        return [
          { length: Math.min(dirtyEnd - offset, length), flags: STATE_DIRTY },
          { length: 1 * MiB, flags: 0 },
        ];
      return [{ length, flags: 0 }];
    },
  });
  const ctxs = new Map([
    ['qemu:dirty-bitmap:listed', bitmap('qemu:dirty-bitmap:listed', 1 * MiB)],
    ['qemu:dirty-bitmap:hidden', bitmap('qemu:dirty-bitmap:hidden', 2 * MiB)],
  ]);
  const exp: NbdExport = Object.assign(new MemoryExport(8 * MiB), {
    metaContexts: { list: () => ['qemu:dirty-bitmap:listed'], open: (n: string) => ctxs.get(n) ?? null },
  });
  const server = new NbdServer({ provider: { list: () => [{ name: 'bm' }], open: async () => ({ name: 'bm', export: exp }) } });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  t.teardown(() => void server.close());
  return port;
}

function metaQuery(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name), 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q), 0);
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

async function metaReplies(peer: RawPeer, opt: number, data: Buffer): Promise<{ names: Map<string, number>; final: number }> {
  peer.sendOption(opt, data);
  const names = new Map<string, number>();
  for (;;) {
    const r = await peer.optionReply();
    if (r.type !== P.REP_META_CONTEXT) return { names, final: r.type };
    names.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
  }
}

test('meta contexts besides base:allocation: LIST wildcards, SET ids, one block-status chunk per context, DONE on the last', async (t) => {
  const port = await startBitmapServer(t);
  const peer = await RawPeer.connect(port);
  t.teardown(() => peer.destroy());
  await peer.handshake();
  peer.sendOption(P.OPT_STRUCTURED_REPLY);
  t.is((await peer.optionReply()).type, P.REP_ACK);
  const list = async (qs: string[]) => [...(await metaReplies(peer, P.OPT_LIST_META_CONTEXT, metaQuery('bm', qs))).names.keys()].sort();
  t.deepEqual(await list([]), ['base:allocation', 'qemu:dirty-bitmap:listed']);
  t.deepEqual(await list(['qemu:']), ['qemu:dirty-bitmap:listed']);
  t.deepEqual(await list(['qemu:dirty-bitmap:']), ['qemu:dirty-bitmap:listed']);
  t.deepEqual(await list(['qemu:dirty-bitmap:hidden', 'base:']), ['base:allocation', 'qemu:dirty-bitmap:hidden']);
  t.deepEqual(await list(['x-unknown:thing', 'qemu:dirty-bitmap:none']), []);
  // SET: exact names select (each its own id), wildcards and unknown names are ignored.
  const set = await metaReplies(
    peer,
    P.OPT_SET_META_CONTEXT,
    metaQuery('bm', ['base:allocation', 'qemu:dirty-bitmap:hidden', 'qemu:', 'qemu:dirty-bitmap:nope']),
  );
  t.is(set.final, P.REP_ACK);
  t.deepEqual([...set.names.keys()].sort(), ['base:allocation', 'qemu:dirty-bitmap:hidden']);
  const idBase = set.names.get('base:allocation')!;
  const idBm = set.names.get('qemu:dirty-bitmap:hidden')!;
  t.not(idBase, idBm);
  await peer.go('bm');
  const chunks = async (cookie: bigint, flags: number, offset: number, length: number) => {
    peer.request(P.CMD_BLOCK_STATUS, flags, cookie, offset, length);
    const out: Array<{ flags: number; id: number; extents: Array<[number, number]> }> = [];
    for (;;) {
      const h = await peer.read(20);
      t.is(h.readUInt32BE(0), P.STRUCTURED_REPLY_MAGIC);
      t.is(h.readBigUInt64BE(8), cookie);
      t.is(h.readUInt16BE(6), P.REPLY_TYPE_BLOCK_STATUS);
      const body = await peer.read(h.readUInt32BE(16));
      const extents: Array<[number, number]> = [];
      for (let i = 4; i < body.length; i += 8) extents.push([body.readUInt32BE(i), body.readUInt32BE(i + 4)]);
      out.push({ flags: h.readUInt16BE(4), id: body.readUInt32BE(0), extents });
      if (h.readUInt16BE(4) & P.REPLY_FLAG_DONE) return out;
    }
  };
  const r = await chunks(7n, 0, 0, 4 * MiB);
  t.is(r.length, 2, 'one chunk per selected context');
  t.deepEqual(
    r.map((c) => c.flags & P.REPLY_FLAG_DONE),
    [0, P.REPLY_FLAG_DONE],
    'only the last chunk is DONE',
  );
  t.deepEqual(r.map((c) => c.id).sort(), [idBase, idBm].sort());
  const bm = r.find((c) => c.id === idBm)!;
  t.deepEqual(bm.extents[0], [2 * MiB, STATE_DIRTY]);
  t.is(r.find((c) => c.id === idBase)!.extents[0]![1], STATE_HOLE | STATE_ZERO);
  const one = await chunks(8n, P.CMD_FLAG_REQ_ONE, 4096, 4096);
  t.is(one.length, 2);
  for (const c of one) t.deepEqual(c.extents.length, 1, 'REQ_ONE: one extent per chunk');
  t.deepEqual(one.find((c) => c.id === idBm)!.extents[0], [4096, STATE_DIRTY]);
});

test('the in-tree client selects several contexts; a SET with none leaves block status EINVAL', async (t) => {
  const port = await startBitmapServer(t);
  const c = await NbdClient.connect({ port, exportName: 'bm', metaContexts: ['qemu:dirty-bitmap:listed'] });
  t.deepEqual([...c.contextIds.keys()], ['qemu:dirty-bitmap:listed']);
  t.deepEqual(await c.blockStatus(0, 8 * MiB), [
    { length: 1 * MiB, flags: STATE_DIRTY },
    { length: 1 * MiB, flags: 0 },
  ]);
  await c.disconnect();
  const none = await NbdClient.connect({ port, exportName: 'bm', metaContexts: ['qemu:dirty-bitmap:absent'] });
  t.is(none.contextIds.size, 0);
  await expectNbdError(none.blockStatus(0, 4096), P.EINVAL);
  await none.disconnect();
});

test('block status without a negotiated context is EINVAL', async (t) => {
  const f = await startFixture(t);
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw', blockStatus: false });
  await expectNbdError(c.blockStatus(0, 4096), P.EINVAL);
  t.is((await c.read(0, 16)).length, 16);
  await c.disconnect();
});

test('structured reads send hole chunks for sparse ranges and data for the rest', async (t) => {
  const f = await startFixture(t);
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const d = pattern(100_000, 5);
  await c.write(3 * MiB + 12345, d);
  const got = await c.read(2 * MiB, 4 * MiB);
  const want = Buffer.alloc(4 * MiB);
  d.copy(want, 1 * MiB + 12345);
  t.true(got.equals(want));
  // DF: one content chunk
  const df = await c.read(3 * MiB, 256 * 1024, P.CMD_FLAG_DF);
  t.true(df.subarray(12345, 12345 + 1000).equals(d.subarray(0, 1000)));
  await c.disconnect();
});

test('write, trim, zero with flags, FUA and flush read back exactly', async (t) => {
  const f = await startFixture(t);
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const d = pattern(1 * MiB, 9);
  await c.write(0, d, P.CMD_FLAG_FUA);
  await c.write(777, Buffer.from('unaligned!'));
  await c.trim(64 * 1024, 64 * 1024);
  await c.zero(200 * 1024, 8192, P.CMD_FLAG_NO_HOLE);
  await c.zero(300 * 1024, 8192, P.CMD_FLAG_FAST_ZERO);
  await c.flush();
  await c.cache(0, 1 * MiB);
  const back = await c.read(0, 1 * MiB);
  const want = Buffer.from(d);
  want.write('unaligned!', 777);
  want.fill(0, 64 * 1024, 128 * 1024);
  want.fill(0, 200 * 1024, 200 * 1024 + 8192);
  want.fill(0, 300 * 1024, 300 * 1024 + 8192);
  t.true(back.equals(want));
  await c.disconnect();
});

test('requests beyond the end: EINVAL for read/trim/cache/status, ENOSPC for write/zero', async (t) => {
  const f = await startFixture(t, { size: 1 * MiB });
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  await expectNbdError(c.read(1 * MiB - 10, 20), P.EINVAL);
  await expectNbdError(c.write(1 * MiB - 10, Buffer.alloc(20)), P.ENOSPC);
  await expectNbdError(c.trim(1 * MiB, 1), P.EINVAL);
  await expectNbdError(c.zero(1 * MiB - 1, 2), P.ENOSPC);
  await expectNbdError(c.cache(2 * MiB, 1), P.EINVAL);
  await expectNbdError(c.blockStatus(1 * MiB, 1), P.EINVAL);
  await expectNbdError(c.read(2 ** 62, 1), P.EINVAL);
  await expectNbdError(c.write(2 ** 62, Buffer.alloc(1)), P.ENOSPC);
  // Still serving
  await c.write(0, Buffer.from('ok'));
  t.is((await c.read(0, 2)).toString(), 'ok');
  await c.disconnect();
});

test('writes to a read-only export get EPERM; unknown commands and flags get EINVAL', async (t) => {
  const f = await startFixture(t);
  const c = await NbdClient.connect({ port: f.port, exportName: 'ro' });
  t.truthy(c.info.flags & P.FLAG_READ_ONLY);
  await expectNbdError(c.write(0, Buffer.alloc(512)), P.EPERM);
  await expectNbdError(c.trim(0, 512), P.EPERM);
  await expectNbdError(c.zero(0, 512), P.EPERM);
  await expectNbdError(c.raw(99, 0, 0, 0), P.EINVAL);
  await expectNbdError(c.raw(P.CMD_READ, 0x8000, 0, 16), P.EINVAL);
  await expectNbdError(c.raw(P.CMD_READ, P.CMD_FLAG_NO_HOLE, 0, 16), P.EINVAL);
  t.is((await c.read(0, 512)).length, 512);
  await c.disconnect();
});

test('a payload over the maximum is refused and discarded; the connection goes on', async (t) => {
  const f = await startFixture(t, { size: 128 * MiB });
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  await expectNbdError(c.write(0, Buffer.alloc(64 * MiB + 4096, 1)), P.EINVAL);
  await expectNbdError(c.read(0, 64 * MiB + 1), P.EINVAL);
  await c.write(0, Buffer.from('after'));
  t.is((await c.read(0, 5)).toString(), 'after');
  t.true((await c.read(0, 32 * MiB)).subarray(5).every((x) => x === 0));
  await c.disconnect();
});

test('a payload far over any sane size ends the connection, other clients unaffected', async (t) => {
  const f = await startFixture(t);
  const other = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  await peer.go('rw');
  peer.request(P.CMD_WRITE, 0, 1n, 0, 0xffffffff);
  t.true(await peer.waitClosed());
  await other.write(0, Buffer.from('x'));
  t.is((await other.read(0, 1)).toString(), 'x');
  await other.disconnect();
});

test('malformed handshakes close only that connection', async (t) => {
  const f = await startFixture(t);
  const good = await NbdClient.connect({ port: f.port, exportName: 'rw' });

  // Wrong option magic
  const a = await RawPeer.connect(f.port);
  await a.handshake();
  a.write(Buffer.from('NOTMAGIC\0\0\0\x07\0\0\0\0'));
  t.true(await a.waitClosed());

  // Unknown client flags
  const b = await RawPeer.connect(f.port);
  await b.handshake(0xff00);
  t.true(await b.waitClosed());

  // Option length over the limit
  const c = await RawPeer.connect(f.port);
  await c.handshake();
  c.sendOption(P.OPT_GO, Buffer.alloc(0), 1 << 30);
  const r = await c.optionReply();
  t.is(r.type, P.REP_ERR_TOO_BIG);
  t.true(await c.waitClosed());

  // Truncated option, then the client vanishes
  const d = await RawPeer.connect(f.port);
  await d.handshake();
  d.write(Buffer.from('IHAVEOPT\0\0\0\x07\0\0\0\x20abc'));
  d.destroy();

  // Bad request magic in transmission
  const e = await RawPeer.connect(f.port);
  await e.handshake();
  await e.go('rw');
  e.write(Buffer.alloc(28, 0x41));
  t.true(await e.waitClosed());

  // Garbage instead of a handshake
  const g = await RawPeer.connect(f.port);
  await g.read(18);
  g.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  t.true(await g.waitClosed());

  await good.write(4096, Buffer.from('still here'));
  t.is((await good.read(4096, 10)).toString(), 'still here');
  await good.disconnect();
});

test('the handshake times out for a client that stalls', async (t) => {
  const f = await startFixture(t, { limits: { handshakeTimeoutMs: 300 } });
  const p = await RawPeer.connect(f.port);
  await p.read(18);
  t.true(await p.waitClosed(3000));
});

test('many requests in flight are answered as they complete, out of order', async (t) => {
  const f = await startFixture(t);
  const rw = f.exports.get('rw')!;
  rw.delays.read = (off) => (off === 0 ? 300 : 0);
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const order: number[] = [];
  const reads = [0, 4096, 8192, 12288].map((off) => c.read(off, 4096).then(() => order.push(off)));
  await Promise.all(reads);
  t.is(order[order.length - 1], 0, `slow read must finish last, order ${order}`);
  // 500 concurrent writes and reads of distinct blocks
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 500; i++) ops.push(c.write(i * 4096, pattern(4096, i + 1)));
  await Promise.all(ops);
  const got = await Promise.all(Array.from({ length: 500 }, (_, i) => c.read(i * 4096, 4096)));
  got.forEach((g, i) => t.true(g.equals(pattern(4096, i + 1)), `block ${i}`));
  await c.disconnect();
});

test('I/O errors from the export become NBD error replies, and the server recovers', async (t) => {
  const f = await startFixture(t);
  const rw = f.exports.get('rw')!;
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  rw.faults.write = 'EIO';
  await expectNbdError(c.write(0, Buffer.alloc(4096, 1)), P.EIO);
  rw.faults.write = 'ENOSPC';
  await expectNbdError(c.write(0, Buffer.alloc(4096, 1)), P.ENOSPC);
  rw.faults.read = 'EIO';
  await expectNbdError(c.read(0, 4096), P.EIO);
  await expectNbdError(c.read(0, 1 * MiB), P.EIO); // sparse path
  rw.faults.flush = 'EIO';
  await expectNbdError(c.flush(), P.EIO);
  rw.faults = {};
  await c.write(0, Buffer.alloc(4096, 2));
  t.true((await c.read(0, 4096)).equals(Buffer.alloc(4096, 2)));
  await c.disconnect();
});

test('a client that vanishes mid-request leaves the server serving and releases the export', async (t) => {
  const f = await startFixture(t);
  const rw = f.exports.get('rw')!;
  for (let i = 0; i < 20; i++) {
    const p = await RawPeer.connect(f.port);
    await p.handshake();
    await p.go('rw');
    // Header of a 1 MiB write, then half the payload, then gone.
    p.write(Buffer.concat([P.encodeRequest(P.CMD_WRITE, 0, 0n, 0, MiB), Buffer.alloc(MiB / 2, 7)]));
    p.destroy();
  }
  // Slow in-flight reads when the peer disappears
  rw.delays.read = () => 100;
  const q = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const pend = q.read(0, 4096).catch(() => 'closed');
  q.destroy();
  t.is(await pend, 'closed');
  rw.delays = {};
  await new Promise((r) => setTimeout(r, 300));
  t.is(f.server.connectionCount(), 0);
  t.is(rw.closed, 22); // 20 raw peers, plus the meta-context probe and the GO of `q`
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  t.true(
    (await c.read(0, 4096)).every((x) => x === 0),
    'partial write never applied',
  );
  await c.disconnect();
});

test('a client that floods writes and never reads replies is held to the limit, then disconnected', async (t) => {
  const f = await startFixture(t, {
    limits: { maxBufferedBytesPerConnection: 4 * MiB, maxInflightPerConnection: 16, writeStallTimeoutMs: 1500 },
  });
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  await peer.go('rw');
  peer.sock.pause(); // never read replies
  const before = f.server.stats().requests;
  // Reads produce 1 MiB replies each: the output backlog fills quickly.
  let sent = 0;
  const deadline = Date.now() + 1000;
  while (Date.now() < deadline) {
    for (let i = 0; i < 64; i++) peer.request(P.CMD_READ, 0, BigInt(sent++), 0, MiB);
    await new Promise((r) => setTimeout(r, 10));
  }
  const processed = f.server.stats().requests - before;
  t.true(processed < 64, `server stopped reading after ${processed} of ${sent} requests`);
  const other = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  t.is((await other.read(0, 4096)).length, 4096);
  await other.disconnect();
  // The server drops the stalled connection after writeStallTimeoutMs.
  const deadline2 = Date.now() + 5000;
  while (f.server.connectionCount() > 0 && Date.now() < deadline2) await new Promise((r) => setTimeout(r, 50));
  t.is(f.server.connectionCount(), 0, 'stalled client disconnected by the server');
  peer.sock.resume(); // the client sees it once it reads again
  t.true(await peer.waitClosed(), 'client observes the disconnect');
});

test('DISC waits for requests in flight, then closes', async (t) => {
  const f = await startFixture(t);
  const rw = f.exports.get('rw')!;
  rw.delays.write = () => 200;
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const w = c.write(0, Buffer.from('late'));
  const d = c.disconnect();
  await w;
  await d;
  rw.delays = {};
  const c2 = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  t.is((await c2.read(0, 4)).toString(), 'late');
  await c2.disconnect();
});

test('server limits: connections over the maximum are refused', async (t) => {
  const f = await startFixture(t, { limits: { maxConnections: 2 } });
  const a = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const b = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  await t.throwsAsync(NbdClient.connect({ port: f.port, exportName: 'rw' }));
  await a.disconnect();
  await new Promise((r) => setTimeout(r, 50));
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  await c.disconnect();
  await b.disconnect();
  t.pass();
});

test('disconnectExport drops the clients of that export only', async (t) => {
  const f = await startFixture(t);
  const a = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const b = await NbdClient.connect({ port: f.port, exportName: 'ro' });
  t.is(f.server.disconnectExport('rw'), 1);
  await t.throwsAsync(a.read(0, 1));
  t.is((await b.read(0, 1)).length, 1);
  await b.disconnect();
});

test('close() ends handshaking and transmitting clients promptly', async (t) => {
  const f = await startFixture(t);
  const c = await NbdClient.connect({ port: f.port, exportName: 'rw' });
  const half = await RawPeer.connect(f.port);
  await half.read(18); // stays in the handshake
  const t0 = Date.now();
  await f.server.close();
  t.true(Date.now() - t0 < 2000, `close took ${Date.now() - t0} ms`);
  t.true(await half.waitClosed());
  await t.throwsAsync(c.read(0, 1));
});

test('close() answers the requests in flight and refuses those only queued with ESHUTDOWN, each exactly once', async (t) => {
  const f = await startFixture(t, { limits: { maxInflightPerConnection: 2 } });
  const rw = f.exports.get('rw')!;
  rw.delays.write = () => 300;
  const peer = await RawPeer.connect(f.port);
  await peer.handshake();
  await peer.go('rw');
  const n = 12;
  for (let i = 0; i < n; i++) peer.request(P.CMD_WRITE, 0, BigInt(i + 1), i * 4096, 4096, Buffer.alloc(4096, i + 1));
  await new Promise((r) => setTimeout(r, 100)); // two are running, the rest are queued
  const closing = f.server.close();
  const replies = new Map<bigint, number>();
  for (let i = 0; i < n; i++) {
    const r = await peer.simpleReply().catch((e: Error) => {
      throw new Error(`after ${replies.size} replies (${[...replies].join(' ')}): ${e.message}`, { cause: e });
    });
    t.false(replies.has(r.cookie), `cookie ${r.cookie} answered twice`);
    replies.set(r.cookie, r.error);
  }
  await closing;
  t.true(await peer.waitClosed());
  const ok = [...replies].filter(([, e]) => e === 0).map(([c]) => Number(c));
  const refused = [...replies].filter(([, e]) => e === P.ESHUTDOWN).length;
  t.is(ok.length + refused, n);
  t.true(ok.length >= 2 && refused >= 1, `${ok.length} written, ${refused} refused`);
  // What was answered OK is on the export; what was refused was never run.
  for (let i = 0; i < n; i++) {
    const got = await rw.inner.read(i * 4096, 4096);
    t.is(got[0], ok.includes(i + 1) ? i + 1 : 0, `block ${i}`);
  }
});
