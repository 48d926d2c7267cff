/**
 * The intercept side of the link (src/link/client.ts) against a scripted
 * manager on a real TCP socket: the handshake and its secret, containers
 * sent in id order within the window, the commit recorded durably before
 * submit resolves, resumed and skipped transfers, resend after a dropped
 * connection, a commit made while the ack was lost, NACKs, garbage from
 * the manager, and a manager that goes silent.
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  FrameReader,
  LINK_MAGIC,
  LINK_VERSION,
  MsgType,
  clientMac,
  encodeJson,
  nonce,
  parseData,
  parseJson,
  serverMac,
  type GroupOkMsg,
  type PutMsg,
} from '../src/link/protocol';
import { RemoteLink, readLinkState } from '../src/link/client';
import type { CommitInfo, SealedContainerRef } from '../src/journal/link';
import { SILENT_LOGGER } from '../src/util/logger';

const SECRET = Buffer.from('a shared secret of the pair');

interface Put {
  msg: PutMsg;
  conn: ManagerConn;
  data: Buffer;
  /** Offset the manager asked for. */
  from: number;
  ended: boolean;
}

/** One connection the scripted manager accepted. */
class ManagerConn {
  readonly frames: MsgType[] = [];
  constructor(
    readonly sock: net.Socket,
    readonly fake: FakeManager,
  ) {}
  send(type: MsgType, body: unknown): void {
    if (!this.sock.destroyed) this.sock.write(encodeJson(type, body));
  }
  commit(p: Put): void {
    const c: CommitInfo = {
      groupId: 1,
      containerId: p.msg.containerId,
      firstSeq: p.msg.footer.firstSeq,
      lastSeq: p.msg.footer.lastSeq,
      firstTime: p.msg.footer.firstTime,
      lastTime: p.msg.footer.lastTime,
      blocks: 1,
      bytesApplied: p.msg.size,
    };
    this.fake.committed = Math.max(this.fake.committed, p.msg.containerId);
    this.send(MsgType.COMMIT, c);
  }
}

/**
 * A manager that speaks the link protocol and lets each test decide what
 * to do with a PUT (onPut) and a finished transfer (onEnd).
 */
class FakeManager {
  readonly server: net.Server;
  readonly conns: ManagerConn[] = [];
  readonly puts: Put[] = [];
  committed = 0;
  /** What GROUP_OK reports as committed (default: `committed`). */
  reportCommitted: (() => number) | null = null;
  /** The MAC the manager proves the secret with (a wrong secret for the "impostor" test). */
  secret = SECRET;
  /** Answer pings (false: a manager that went silent). */
  alive = true;
  onPut: (p: Put) => number = () => 0;
  onEnd: (p: Put) => void = (p) => p.conn.commit(p);
  private arrived: Array<() => void> = [];

  constructor() {
    this.server = net.createServer((sock) => this.accept(sock));
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as net.AddressInfo).port;
  }

  close(): Promise<void> {
    for (const c of this.conns) c.sock.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }

  /** Resolves once cond() holds, re-checked after every frame. */
  async until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.arrived.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private accept(sock: net.Socket): void {
    const conn = new ManagerConn(sock, this);
    this.conns.push(conn);
    const reader = new FrameReader();
    const serverNonce = nonce();
    const current = new Map<number, Put>();
    sock.on('error', () => undefined);
    conn.send(MsgType.HELLO, { magic: LINK_MAGIC, version: LINK_VERSION, nonce: serverNonce });
    sock.on('data', (d: Buffer) => {
      for (const f of reader.push(d)) {
        conn.frames.push(f.type);
        switch (f.type) {
          case MsgType.AUTH: {
            const m = parseJson<{ nonce: string; mac: string }>(f);
            if (m.mac !== clientMac(SECRET, serverNonce, m.nonce)) {
              conn.send(MsgType.ERROR, { message: 'bad secret' });
              sock.end();
              break;
            }
            conn.send(MsgType.AUTH_OK, { mac: serverMac(this.secret, m.nonce, serverNonce) });
            break;
          }
          case MsgType.GROUP: {
            const c = this.reportCommitted ? this.reportCommitted() : this.committed;
            const ok: GroupOkMsg = { committedContainer: c, committedSeq: c * 10, committedTime: c * 1000 };
            conn.send(MsgType.GROUP_OK, ok);
            break;
          }
          case MsgType.PING:
            if (this.alive) conn.send(MsgType.PONG, {});
            break;
          case MsgType.PUT: {
            const msg = parseJson<PutMsg>(f);
            const p: Put = { msg, conn, data: Buffer.alloc(msg.size), from: 0, ended: false };
            this.puts.push(p);
            current.set(msg.containerId, p);
            p.from = this.onPut(p);
            conn.send(MsgType.PUT_READY, { containerId: msg.containerId, offset: p.from });
            break;
          }
          case MsgType.DATA: {
            const d2 = parseData(f);
            const p = current.get(d2.containerId);
            if (!p) throw new Error(`DATA for container ${d2.containerId} without a PUT`);
            if (d2.offset < p.from) throw new Error(`DATA at ${d2.offset}, before the offset asked for (${p.from})`);
            d2.data.copy(p.data, d2.offset);
            break;
          }
          case MsgType.END: {
            const m = parseJson<{ containerId: number }>(f);
            const p = current.get(m.containerId)!;
            p.ended = true;
            this.onEnd(p);
            break;
          }
          default:
            break;
        }
      }
      for (const w of this.arrived.splice(0)) w();
    });
  }
}

async function setup(t: { teardown(fn: () => unknown): void }, window = 4) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-link-'));
  const fake = new FakeManager();
  const port = await fake.listen();
  const stateFile = path.join(dir, 'link-state.json');
  const link = new RemoteLink({
    host: '127.0.0.1',
    port,
    secret: SECRET,
    tls: null,
    group: { group: 'g', groupId: 1, blockSize: 4096, regionSize: 1 << 20, volumes: [{ volumeId: 1, name: 'v', size: 1 << 30 }] },
    stateFile,
    window,
    logger: SILENT_LOGGER,
  });
  t.teardown(async () => {
    await link.close();
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  /** A sealed container file of `size` random bytes. */
  const container = (id: number, size = 64 * 1024 + id): { ref: SealedContainerRef; bytes: Buffer } => {
    const bytes = crypto.randomBytes(size);
    const file = path.join(dir, `ailfc-${id}.lfc`);
    fs.writeFileSync(file, bytes);
    const ref: SealedContainerRef = {
      groupId: 1,
      containerId: id,
      path: file,
      footer: {
        recordCount: 1,
        firstSeq: id * 10 - 9,
        lastSeq: id * 10,
        firstTime: id * 1000 - 1,
        lastTime: id * 1000,
        bodyCrc: 0,
        payloadBytes: size,
      },
    };
    return { ref, bytes };
  };
  return { dir, fake, link, stateFile, container };
}

test('sends containers in id order within its window and records each commit before submit resolves', async (t) => {
  const { fake, link, stateFile, container } = await setup(t, 2);
  const held: Array<{ conn: ManagerConn; p: Put }> = [];
  fake.onEnd = (p) => held.push({ conn: p.conn, p });
  const items = [6, 5, 4, 3, 2, 1].map((id) => container(id, id === 3 ? 9 * 1024 * 1024 : undefined));
  const resolvedWith: Array<{ id: number; durable: number }> = [];
  link.start();
  const done = items.map(({ ref }) =>
    link.submit(ref).then((c) => {
      // What the journal may forget once this resolves must already be on disk.
      resolvedWith.push({ id: c.containerId, durable: readLinkState(stateFile)?.committedContainer ?? 0 });
      return c;
    }),
  );
  let maxOutstanding = 0;
  for (let committed = 0; committed < 6;) {
    await fake.until(() => held.length > 0, `container ${committed + 1} to arrive`);
    maxOutstanding = Math.max(maxOutstanding, fake.puts.length - committed);
    const { conn, p } = held.shift()!;
    conn.commit(p);
    committed++;
  }
  const commits = await Promise.all(done);
  t.deepEqual(
    fake.puts.map((p) => p.msg.containerId),
    [1, 2, 3, 4, 5, 6],
    'sent in id order, not submit order',
  );
  t.true(maxOutstanding <= 2, `at most the window in flight (saw ${maxOutstanding})`);
  for (const p of fake.puts) {
    const src = items.find((i) => i.ref.containerId === p.msg.containerId)!;
    t.true(p.data.equals(src.bytes), `container ${p.msg.containerId} arrived byte for byte (9 MiB one in chunks too)`);
  }
  for (const r of resolvedWith) t.true(r.durable >= r.id, `commit of ${r.id} durable before submit resolved`);
  t.deepEqual(
    commits.map((c) => c.containerId),
    [6, 5, 4, 3, 2, 1],
  );
  t.deepEqual(readLinkState(stateFile), { committedContainer: 6, committedSeq: 60, committedTime: 6000 });
  const st = link.status();
  t.is(st.state, 'up');
  t.is(st.containersCommitted, 6);
  t.is(st.queued, 0);
});

test('resends what was not acknowledged after the connection drops, from where the manager asks', async (t) => {
  const { fake, link, stateFile, container } = await setup(t);
  const a = container(1, 3 * 1024 * 1024);
  const b = container(2);
  let round = 0;
  fake.onPut = (p) => (round === 0 ? 0 : p.msg.containerId === 1 ? 1024 * 1024 + 7 : 0);
  fake.onEnd = (p) => {
    if (round === 0) {
      // The manager crashes after the data arrived and before the commit.
      round = 1;
      p.conn.sock.destroy();
      return;
    }
    p.conn.commit(p);
  };
  link.start();
  const pa = link.submit(a.ref);
  const pb = link.submit(b.ref);
  const [ca, cb] = await Promise.all([pa, pb]);
  t.is(ca.containerId, 1);
  t.is(cb.containerId, 2);
  t.true(fake.conns.length >= 2, 'reconnected');
  const resumed = fake.puts.filter((p) => p.msg.containerId === 1 && p.conn !== fake.conns[0]);
  t.is(resumed.length, 1, 'container 1 sent again on the new connection');
  t.is(resumed[0]!.from, 1024 * 1024 + 7);
  t.true(resumed[0]!.data.subarray(resumed[0]!.from).equals(a.bytes.subarray(resumed[0]!.from)), 'the rest arrived intact');
  t.is(readLinkState(stateFile)?.committedContainer, 2);
  t.true(link.status().reconnects >= 1);
});

test('a container the manager committed while the ack was lost is not applied twice, and numbering follows it', async (t) => {
  const { fake, link, stateFile, container } = await setup(t);
  const a = container(1);
  let first = true;
  fake.onEnd = (p) => {
    if (first) {
      // Committed, but the COMMIT never reaches the intercept.
      first = false;
      fake.committed = 1;
      p.conn.sock.destroy();
      return;
    }
    p.conn.commit(p);
  };
  // On the second connection the manager has it: PUT_READY -1, then the COMMIT.
  fake.onPut = (p) => {
    if (fake.committed >= p.msg.containerId) {
      setImmediate(() => p.conn.commit(p));
      return -1;
    }
    return 0;
  };
  link.start();
  const c = await link.submit(a.ref);
  t.is(c.containerId, 1);
  t.is(readLinkState(stateFile)?.committedContainer, 1, 'recorded from GROUP_OK before the resent PUT');
  const second = fake.puts.filter((p) => p.conn !== fake.conns[0]);
  t.is(second.length, 1);
  t.is(second[0]!.from, -1);
  t.false(second[0]!.ended, 'no data streamed for a committed container');
});

test('a manager that cannot prove the secret is never sent a byte', async (t) => {
  const { fake, link, container } = await setup(t);
  fake.secret = Buffer.from('someone else');
  link.start();
  const p = link.submit(container(1).ref);
  let rejected: Error | null = null;
  p.catch((e: Error) => (rejected = e));
  await fake.until(() => fake.conns.length >= 2, 'a second attempt');
  t.is(fake.puts.length, 0);
  for (const c of fake.conns) t.false(c.frames.includes(MsgType.PUT));
  t.not(link.status().state, 'up');
  t.regex(link.status().lastError ?? '', /does not hold the shared secret/);
  t.is(rejected, null, 'the submit waits (the pool keeps the container)');
  await link.close();
  await t.throwsAsync(p, { message: /link closed/ });
});

test('NACK: resend=true sends again, resend=false fails the submit', async (t) => {
  const { fake, link, container } = await setup(t);
  const nacks = new Map<number, number>();
  fake.onEnd = (p) => {
    const id = p.msg.containerId;
    const n = nacks.get(id) ?? 0;
    nacks.set(id, n + 1);
    if (id === 1 && n === 0) return p.conn.send(MsgType.NACK, { containerId: 1, message: 'checksum mismatch', resend: true });
    if (id === 2) return p.conn.send(MsgType.NACK, { containerId: 2, message: 'not a container of this group', resend: false });
    p.conn.commit(p);
  };
  link.start();
  const p1 = link.submit(container(1).ref);
  const p2 = link.submit(container(2).ref);
  t.is((await p1).containerId, 1);
  await t.throwsAsync(p2, { message: /not a container of this group/ });
  t.is(nacks.get(1), 2, 'container 1 went twice');
  t.is(nacks.get(2), 1, 'container 2 was not retried');
});

test('garbage from the manager drops the connection and the link comes back', async (t) => {
  const { fake, link, container } = await setup(t);
  let spoiled = false;
  fake.onPut = (p) => {
    if (!spoiled) {
      spoiled = true;
      const junk = Buffer.alloc(5);
      junk.writeUInt32BE(1, 0);
      junk[4] = 200; // no such frame type
      p.conn.sock.write(junk);
    }
    return 0;
  };
  link.start();
  const c = await link.submit(container(1).ref);
  t.is(c.containerId, 1);
  t.true(fake.conns.length >= 2);
  t.is(link.status().state, 'up');
});

test('a manager that goes silent is declared dead and the link reconnects', async (t) => {
  const { fake, link } = await setup(t);
  link.start();
  t.true(await link.waitUp(10_000));
  fake.alive = false;
  // Pings are not answered; the TCP connection itself stays open.
  await fake.until(() => link.status().state === 'down', 'the link to notice', 15_000);
  t.regex(link.status().lastError ?? '', /no frame from the manager/);
  fake.alive = true;
  await fake.until(() => link.isUp && fake.conns.length >= 2, 'the link to come back', 15_000);
  t.pass();
});
