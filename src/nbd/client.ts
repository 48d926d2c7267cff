/**
 * A small NBD client: fixed newstyle, OPT_GO, structured replies,
 * base:allocation, many requests in flight. Used by Rewind's tests and
 * tools; acceptance tests use independent clients (libnbd, qemu, fio).
 */
import * as net from 'node:net';
import { InputQueue } from './inbuf';
import * as P from './protocol';
import type { Extent } from './export';

export interface ConnectOptions {
  host?: string;
  port?: number;
  path?: string;
  exportName?: string;
  structured?: boolean;
  blockStatus?: boolean;
  /** Contexts to select (default: base:allocation alone). */
  metaContexts?: string[];
}

export class NbdClientError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'NbdClientError';
  }
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve(v: unknown): void;
  reject(e: Error): void;
  data?: Buffer;
  /** Block status chunks by context id. */
  byContext?: Map<number, Extent[]>;
  error?: NbdClientError;
}

export interface ExportInfo {
  size: number;
  flags: number;
  name?: string;
  description?: string;
  minBlock?: number;
  prefBlock?: number;
  maxPayload?: number;
}

export class NbdClient {
  info!: ExportInfo;
  structured = false;
  metaContextId: number | null = null;
  /** Selected contexts: name -> id (from SET_META_CONTEXT). */
  readonly contextIds = new Map<string, number>();
  private sock!: net.Socket;
  private readonly input = new InputQueue();
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | null = null;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closedErr: Error | null = null;
  private transmission = false;

  static async connect(opts: ConnectOptions): Promise<NbdClient> {
    const c = new NbdClient();
    await c.open(opts);
    return c;
  }

  private async open(opts: ConnectOptions): Promise<void> {
    this.sock = opts.path ? net.connect({ path: opts.path }) : net.connect({ host: opts.host ?? '127.0.0.1', port: opts.port! });
    this.sock.setNoDelay?.(true);
    await new Promise<void>((resolve, reject) => {
      this.sock.once('connect', resolve);
      this.sock.once('error', reject);
    });
    this.sock.on('error', (e) => this.fail(e));
    this.sock.on('close', () => this.fail(new Error('connection closed by server')));
    this.sock.on('data', (chunk: Buffer) => {
      this.input.push(chunk);
      this.drive();
    });
    const greet = await this.readExact(18);
    if (greet.readBigUInt64BE(0) !== P.NBDMAGIC || greet.readBigUInt64BE(8) !== P.IHAVEOPT) {
      throw new Error('not a fixed-newstyle NBD server');
    }
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0);
    this.sock.write(cflags);
    const name = opts.exportName ?? '';
    if (opts.structured !== false) {
      const r = await this.option(P.OPT_STRUCTURED_REPLY, Buffer.alloc(0));
      this.structured = r[r.length - 1]!.type === P.REP_ACK;
    }
    if (this.structured && opts.blockStatus !== false) {
      const qs = (opts.metaContexts ?? [P.BASE_ALLOCATION]).map((q) => Buffer.from(q));
      const n = Buffer.from(name);
      const d = Buffer.alloc(4 + n.length + 4 + qs.reduce((a, q) => a + 4 + q.length, 0));
      d.writeUInt32BE(n.length, 0);
      n.copy(d, 4);
      let at = 4 + n.length;
      d.writeUInt32BE(qs.length, at);
      at += 4;
      for (const q of qs) {
        d.writeUInt32BE(q.length, at);
        q.copy(d, at + 4);
        at += 4 + q.length;
      }
      const replies = await this.option(P.OPT_SET_META_CONTEXT, d);
      for (const r of replies) {
        if (r.type !== P.REP_META_CONTEXT) continue;
        const id = r.data.readUInt32BE(0);
        const cname = r.data.toString('utf8', 4);
        this.contextIds.set(cname, id);
        if (cname === P.BASE_ALLOCATION || this.metaContextId === null) this.metaContextId = id;
      }
    }
    const n = Buffer.from(name);
    const go = Buffer.alloc(4 + n.length + 2 + 6);
    go.writeUInt32BE(n.length, 0);
    n.copy(go, 4);
    go.writeUInt16BE(3, 4 + n.length);
    go.writeUInt16BE(P.INFO_NAME, 6 + n.length);
    go.writeUInt16BE(P.INFO_DESCRIPTION, 8 + n.length);
    go.writeUInt16BE(P.INFO_BLOCK_SIZE, 10 + n.length);
    const replies = await this.option(P.OPT_GO, go);
    const last = replies[replies.length - 1]!;
    if (last.type !== P.REP_ACK) {
      this.sock.destroy();
      throw new NbdClientError(last.type, `OPT_GO failed: ${last.data.toString()}`);
    }
    const info: ExportInfo = { size: 0, flags: 0 };
    for (const r of replies) {
      if (r.type !== P.REP_INFO) continue;
      const t = r.data.readUInt16BE(0);
      if (t === P.INFO_EXPORT) {
        info.size = Number(r.data.readBigUInt64BE(2));
        info.flags = r.data.readUInt16BE(10);
      } else if (t === P.INFO_NAME) info.name = r.data.toString('utf8', 2);
      else if (t === P.INFO_DESCRIPTION) info.description = r.data.toString('utf8', 2);
      else if (t === P.INFO_BLOCK_SIZE) {
        info.minBlock = r.data.readUInt32BE(2);
        info.prefBlock = r.data.readUInt32BE(6);
        info.maxPayload = r.data.readUInt32BE(10);
      }
    }
    this.info = info;
    this.transmission = true;
    this.drive();
  }

  /** Send an option and collect replies up to the final one. */
  async option(opt: number, data: Buffer): Promise<Array<{ type: number; data: Buffer }>> {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.sock.write(Buffer.concat([h, data]));
    const out: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const rh = await this.readExact(20);
      if (rh.readBigUInt64BE(0) !== P.OPT_REPLY_MAGIC) throw new Error('bad option reply magic');
      const type = rh.readUInt32BE(12);
      const len = rh.readUInt32BE(16);
      const d = len ? await this.readExact(len) : Buffer.alloc(0);
      out.push({ type, data: d });
      if (type === P.REP_SERVER || type === P.REP_INFO || type === P.REP_META_CONTEXT) continue;
      return out;
    }
  }

  private readExact(n: number): Promise<Buffer> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    if (this.input.length >= n) return Promise.resolve(this.input.take(n));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private fail(e: Error): void {
    if (this.closedErr) return;
    this.closedErr = e;
    if (this.waiter) {
      this.waiter.reject(e);
      this.waiter = null;
    }
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  private drive(): void {
    if (this.waiter && this.input.length >= this.waiter.n) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(this.input.take(w.n));
    }
    if (!this.transmission) return;
    for (;;) {
      if (this.input.length < 4) return;
      const magic = this.input.peek(4).readUInt32BE(0);
      if (magic === P.SIMPLE_REPLY_MAGIC) {
        if (this.input.length < 16) return;
        const h = this.input.peek(16);
        const cookie = h.readBigUInt64BE(8);
        const p = this.pending.get(cookie);
        if (!p) return this.protocolError(`reply for unknown cookie ${cookie}`);
        const err = h.readUInt32BE(4);
        const dataLen = p.type === P.CMD_READ && err === 0 ? p.length : 0;
        if (this.input.length < 16 + dataLen) return;
        this.input.take(16);
        const data = dataLen ? Buffer.from(this.input.take(dataLen)) : undefined;
        this.pending.delete(cookie);
        if (err) p.reject(new NbdClientError(err, `NBD error ${err}`));
        else p.resolve(data ?? (p.type === P.CMD_READ ? Buffer.alloc(0) : undefined));
      } else if (magic === P.STRUCTURED_REPLY_MAGIC) {
        if (this.input.length < 20) return;
        const h = this.input.peek(20);
        const len = h.readUInt32BE(16);
        if (this.input.length < 20 + len) return;
        const flags = h.readUInt16BE(4);
        const type = h.readUInt16BE(6);
        const cookie = h.readBigUInt64BE(8);
        this.input.take(20);
        const payload = Buffer.from(this.input.take(len));
        const p = this.pending.get(cookie);
        if (!p) return this.protocolError(`chunk for unknown cookie ${cookie}`);
        this.chunk(p, type, payload);
        if (flags & P.REPLY_FLAG_DONE) {
          this.pending.delete(cookie);
          if (p.error) p.reject(p.error);
          else if (p.type === P.CMD_READ) p.resolve(p.data);
          else if (p.type === P.CMD_BLOCK_STATUS) p.resolve(p.byContext ?? new Map());
          else p.resolve(undefined);
        }
      } else {
        return this.protocolError(`bad reply magic 0x${magic.toString(16)}`);
      }
    }
  }

  private chunk(p: Pending, type: number, payload: Buffer): void {
    switch (type) {
      case P.REPLY_TYPE_NONE:
        return;
      case P.REPLY_TYPE_OFFSET_DATA: {
        const off = Number(payload.readBigUInt64BE(0));
        p.data ??= Buffer.alloc(p.length);
        payload.copy(p.data, off - p.offset, 8);
        return;
      }
      case P.REPLY_TYPE_OFFSET_HOLE: {
        const off = Number(payload.readBigUInt64BE(0));
        const n = payload.readUInt32BE(8);
        p.data ??= Buffer.alloc(p.length);
        p.data.fill(0, off - p.offset, off - p.offset + n);
        return;
      }
      case P.REPLY_TYPE_BLOCK_STATUS: {
        const ex: Extent[] = [];
        for (let i = 4; i + 8 <= payload.length; i += 8) {
          ex.push({ length: payload.readUInt32BE(i), flags: payload.readUInt32BE(i + 4) });
        }
        (p.byContext ??= new Map()).set(payload.readUInt32BE(0), ex);
        return;
      }
      case P.REPLY_TYPE_ERROR:
      case P.REPLY_TYPE_ERROR_OFFSET: {
        const errno = payload.readUInt32BE(0);
        const ml = payload.readUInt16BE(4);
        p.error = new NbdClientError(errno, payload.toString('utf8', 6, 6 + ml) || `NBD error ${errno}`);
        return;
      }
      default:
        p.error = new NbdClientError(P.EINVAL, `unknown chunk type ${type}`);
    }
  }

  private protocolError(msg: string): void {
    this.fail(new Error(msg));
    this.sock.destroy();
  }

  private request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<unknown> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const cookie = this.nextCookie++;
    const h = P.encodeRequest(type, flags, cookie, offset, length);
    const pr = new Promise((resolve, reject) => {
      this.pending.set(cookie, { type, offset, length, resolve, reject });
    });
    if (payload) {
      this.sock.cork();
      this.sock.write(h);
      this.sock.write(payload);
      process.nextTick(() => this.sock.uncork());
    } else {
      this.sock.write(h);
    }
    return pr;
  }

  read(offset: number, length: number, flags = 0): Promise<Buffer> {
    return this.request(P.CMD_READ, flags, offset, length) as Promise<Buffer>;
  }
  async write(offset: number, data: Buffer, flags = 0): Promise<void> {
    await this.request(P.CMD_WRITE, flags, offset, data.length, data);
  }
  async flush(): Promise<void> {
    await this.request(P.CMD_FLUSH, 0, 0, 0);
  }
  async trim(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(P.CMD_TRIM, flags, offset, length);
  }
  async zero(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(P.CMD_WRITE_ZEROES, flags, offset, length);
  }
  async cache(offset: number, length: number): Promise<void> {
    await this.request(P.CMD_CACHE, 0, offset, length);
  }
  /** base:allocation extents (or those of the only context selected). */
  async blockStatus(offset: number, length: number, flags = 0): Promise<Extent[]> {
    const all = await this.blockStatusAll(offset, length, flags);
    return all.get(this.metaContextId ?? -1) ?? [...all.values()][0] ?? [];
  }
  /** One chunk per selected context: context id -> extents. */
  blockStatusAll(offset: number, length: number, flags = 0): Promise<Map<number, Extent[]>> {
    return this.request(P.CMD_BLOCK_STATUS, flags, offset, length) as Promise<Map<number, Extent[]>>;
  }
  /** Send a request with arbitrary fields (for tests of bad input). */
  raw(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<unknown> {
    return this.request(type, flags, offset, length, payload);
  }

  /** Soft disconnect: NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    if (this.closedErr) return;
    const h = P.encodeRequest(P.CMD_DISC, 0, 0n, 0, 0);
    const closed = new Promise<void>((r) => this.sock.once('close', () => r()));
    this.sock.write(h);
    this.sock.end();
    await closed;
  }

  destroy(): void {
    this.sock.destroy();
  }
}
