/**
 * Fixtures for protocol tests: an in-process NbdServer over memory exports,
 * a proxy that injects delays and faults into any export, and a raw socket
 * speaker for malformed input.
 */
import * as net from 'node:net';
import type { ExecutionContext } from 'ava';
import { NbdServer } from '../../src/nbd/server';
import type { NbdExport, OpenedExport, ExportProvider } from '../../src/nbd/export';
import type { ServerLimits } from '../../src/nbd/connection';
import { MemoryExport } from '../../src/storage/memory-export';
import * as P from '../../src/nbd/protocol';

export type Op = 'read' | 'write' | 'flush' | 'trim' | 'zero' | 'blockStatus';

/** Wraps an export; lets a test delay or fail chosen operations. */
export class FaultyExport implements NbdExport {
  delays: Partial<Record<Op, (offset: number) => number>> = {};
  faults: Partial<Record<Op, string>> = {};
  closed = 0;
  constructor(readonly inner: NbdExport) {}
  get size() {
    return this.inner.size;
  }
  get readOnly() {
    return this.inner.readOnly;
  }
  get capabilities() {
    return this.inner.capabilities;
  }
  get blockSize() {
    return this.inner.blockSize;
  }
  private async gate(op: Op, offset: number): Promise<void> {
    const d = this.delays[op]?.(offset) ?? 0;
    if (d > 0) await new Promise((r) => setTimeout(r, d));
    const code = this.faults[op];
    if (code) throw Object.assign(new Error(`injected ${code} on ${op}`), { code });
  }
  async read(o: number, l: number) {
    await this.gate('read', o);
    return this.inner.read(o, l);
  }
  async write(o: number, d: Buffer, f: { fua: boolean }) {
    await this.gate('write', o);
    return this.inner.write(o, d, f);
  }
  async flush() {
    await this.gate('flush', 0);
    return this.inner.flush();
  }
  async trim(o: number, l: number, f: { fua: boolean }) {
    await this.gate('trim', o);
    return this.inner.trim(o, l, f);
  }
  async zero(o: number, l: number, f: { fua: boolean; noHole: boolean; fastZero: boolean }) {
    await this.gate('zero', o);
    return this.inner.zero(o, l, f);
  }
  cache(o: number, l: number) {
    return this.inner.cache(o, l);
  }
  async blockStatus(o: number, l: number) {
    await this.gate('blockStatus', o);
    return this.inner.blockStatus(o, l);
  }
  get readSparse() {
    const inner = this.inner;
    return inner.readSparse
      ? async (o: number, l: number) => {
          await this.gate('read', o);
          return inner.readSparse!(o, l);
        }
      : undefined;
  }
  close() {
    this.closed++;
  }
}

export interface Fixture {
  server: NbdServer;
  port: number;
  exports: Map<string, FaultyExport>;
  close(): Promise<void>;
}

/** A server with exports "rw" (writable) and "ro" (read-only), both 64 MiB unless sized. */
export async function startFixture(t: ExecutionContext, opts: { size?: number; limits?: Partial<ServerLimits> } = {}): Promise<Fixture> {
  const size = opts.size ?? 64 * 1024 * 1024;
  const rw = new FaultyExport(new MemoryExport(size));
  const ro = new FaultyExport(new MemoryExport(size, { readOnly: true }));
  const exports = new Map([
    ['rw', rw],
    ['ro', ro],
  ]);
  const provider: ExportProvider = {
    list: () => [...exports.keys()].map((name) => ({ name, description: `test export ${name}` })),
    async open(name): Promise<OpenedExport | null> {
      const e = exports.get(name === '' ? 'rw' : name);
      return e ? { name: name === '' ? 'rw' : name, description: `test export ${name}`, export: e } : null;
    },
  };
  const server = new NbdServer({ provider, ...(opts.limits ? { limits: opts.limits } : {}) });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  const f: Fixture = { server, port, exports, close: () => server.close() };
  t.teardown(() => server.close());
  return f;
}

/** Speaks raw bytes to a server and reads what comes back. */
export class RawPeer {
  readonly sock: net.Socket;
  private buf = Buffer.alloc(0);
  private closedFlag = false;
  private waiters: Array<() => void> = [];
  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('close', () => {
      this.closedFlag = true;
      this.wake();
    });
    sock.on('error', () => {});
  }
  static async connect(port: number): Promise<RawPeer> {
    const s = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((r, j) => {
      s.once('connect', r);
      s.once('error', j);
    });
    return new RawPeer(s);
  }
  /** Over a Unix socket. */
  static async connectPath(socketPath: string): Promise<RawPeer> {
    const s = net.connect({ path: socketPath });
    await new Promise<void>((r, j) => {
      s.once('connect', r);
      s.once('error', j);
    });
    return new RawPeer(s);
  }
  /** Over an already connected socket (e.g. a TLS socket after STARTTLS). */
  static over(sock: net.Socket): RawPeer {
    return new RawPeer(sock);
  }
  /** Stop reading the socket (before handing it to tls.connect); returns bytes received but not consumed. */
  release(): Buffer {
    this.sock.removeAllListeners('data');
    this.sock.removeAllListeners('close');
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }
  private wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  get closed() {
    return this.closedFlag;
  }
  /** Read exactly n bytes, or reject on close / timeout. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closedFlag) throw new Error(`closed after ${this.buf.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout');
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Resolves true when the server closes the connection within the timeout. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closedFlag && Date.now() < deadline) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, deadline - Date.now());
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.closedFlag;
  }
  write(b: Buffer) {
    this.sock.write(b);
  }
  destroy() {
    this.sock.destroy();
  }
  /** Greeting + client flags; leaves the peer in option haggling. */
  async handshake(clientFlags = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES): Promise<void> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== P.NBDMAGIC) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags, 0);
    this.write(f);
  }
  sendOption(opt: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number) {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(lengthOverride ?? data.length, 12);
    this.write(Buffer.concat([h, data]));
  }
  async optionReply(): Promise<{ opt: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== P.OPT_REPLY_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.read(len) : Buffer.alloc(0) };
  }
  /** OPT_GO to an export with no structured replies; returns transmission flags. */
  async go(name: string): Promise<{ size: number; flags: number }> {
    const n = Buffer.from(name);
    const d = Buffer.alloc(4 + n.length + 2);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    this.sendOption(P.OPT_GO, d);
    let size = 0;
    let flags = 0;
    for (;;) {
      const r = await this.optionReply();
      if (r.type === P.REP_INFO && r.data.readUInt16BE(0) === P.INFO_EXPORT) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      }
      if (r.type === P.REP_ACK) return { size, flags };
      if (r.type & P.REP_FLAG_ERROR) throw new Error(`GO failed: ${r.type}`);
    }
  }
  request(type: number, flags: number, cookie: bigint, offset: bigint | number, length: number, payload?: Buffer) {
    const h = P.encodeRequest(type, flags, cookie, offset, length);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }
  async simpleReply(dataLen = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== P.SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic ${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    return { error, cookie: h.readBigUInt64BE(8), data: error === 0 && dataLen ? await this.read(dataLen) : Buffer.alloc(0) };
  }
}

export { pattern } from './random';
