/**
 * One NBD client connection: the fixed-newstyle handshake, then the
 * transmission phase with many requests in flight, answered as they finish.
 *
 * Memory per connection is bounded:
 * - reading stops while the requests in flight (count or bytes) are at
 *   their limit, or while replies the client has not read exceed the
 *   output limit; a client that leaves replies unread past a stall timeout
 *   is disconnected;
 * - an option or request payload over the limits is refused, and the
 *   connection closed where the spec allows no other answer.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { Receiver } from './receiver';
import * as P from './protocol';
import {
  NbdError,
  STATE_HOLE,
  STATE_ZERO,
  type ClientInfo,
  type Extent,
  type MetaContext,
  type NbdExport,
  type OpenedExport,
  type ExportProvider,
} from './export';
import { upgradeToTls, type TlsSettings } from './tls';

export type { TlsMode, TlsSettings } from './tls';

export interface ServerLimits {
  /** Connections served at once; further ones are closed at accept. */
  maxConnections: number;
  /** Requests in flight per connection before reading pauses. */
  maxInflightPerConnection: number;
  /** Bytes of request payloads and read results in flight, plus unread replies, before reading pauses. */
  maxBufferedBytesPerConnection: number;
  /** The handshake must finish within this time. */
  handshakeTimeoutMs: number;
  /** Largest option payload accepted during the handshake. */
  maxOptionLength: number;
  /** A client that leaves replies unread this long while over the output limit is disconnected. */
  writeStallTimeoutMs: number;
  /** Largest WRITE payload discarded (and refused) rather than ending the connection. */
  maxDiscardPayload: number;
  /** Options one handshake may send; past it the connection is closed (a client must choose an export). */
  maxOptions: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxConnections: 256,
  maxInflightPerConnection: 64,
  maxBufferedBytesPerConnection: 64 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  maxOptionLength: 64 * 1024,
  writeStallTimeoutMs: 60_000,
  maxDiscardPayload: 256 * 1024 * 1024,
  maxOptions: 16384,
};

export interface NbdLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const silentLogger: NbdLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

export interface ConnectionStats {
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  /** Connections closed for not finishing the handshake in time. */
  handshakeTimeouts: number;
  /** Connections closed for leaving replies unread past the stall timeout. */
  stallDisconnects: number;
}

interface Hooks {
  provider: ExportProvider;
  limits: ServerLimits;
  logger: NbdLogger;
  tls: TlsSettings;
  stats: ConnectionStats;
  onClose(conn: Connection): void;
}

const enum Phase {
  ClientFlags,
  Options,
  Transmission,
  Closing,
  Closed,
}

/** Context id of base:allocation; extra contexts get 2, 3, ... in the order selected. */
const META_CONTEXT_ID = 1;
/** Most contexts one SET_META_CONTEXT may select (NBD_REP_ERR_TOO_BIG beyond). */
const MAX_META_CONTEXTS = 64;
const REQUEST_HEADER = 28;
const SPARSE_READ_THRESHOLD = 64 * 1024;
const MAX_EXTENTS = 1 << 16;
const MAX_NAME = 4096;
/** WRITE payloads at least this large are received straight into their own buffer. */
const DIRECT_MIN_PAYLOAD = 32 * 1024;
/**
 * During the handshake, reading pauses while more than this is queued
 * (options waiting behind a slow one) or while the client leaves more than
 * this of our replies unread: an option flood costs bounded memory.
 */
const HANDSHAKE_BUFFER_MAX = 256 * 1024;
/** Reads at least this large use recycled buffers (direct WRITE payloads always do). */
const POOL_MIN = 64 * 1024;
/** Bytes of idle read buffers a connection keeps. */
const POOL_MAX_BYTES = 16 * 1024 * 1024;

class ProtocolViolation extends Error {}

export class Connection {
  readonly info: ClientInfo;
  /** Name of the export in transmission, once chosen. */
  exportName: string | null = null;

  private sock: Duplex;
  private readonly hooks: Hooks;
  private readonly rx = new Receiver({ input: () => this.pumpSafe() });
  private phase = Phase.ClientFlags;
  private noZeroes = false;
  private structured = false;
  private metaExport: string | null = null;
  private metaSelected = false;
  /** Contexts the last SET selected; an extra context's handle is opened on the export in transmission at first use. */
  private metaChosen: Array<{ id: number; name: string; ctx?: Promise<MetaContext | null> }> = [];
  private exp: NbdExport | null = null;
  private size = 0;
  private minBlock = 1;
  private maxPayload = P.DEFAULT_MAX_PAYLOAD;
  private transmitFlags = 0;

  private handshakeTimer: NodeJS.Timeout | null = null;
  private readonly startedAt = Date.now();
  /** The plaintext socket while STARTTLS is upgrading it. */
  private tlsUpgrading: Duplex | null = null;
  private stallTimer: NodeJS.Timeout | null = null;
  private optionBusy = false;
  private inflight = 0;
  private inflightBytes = 0;
  private readPaused = false;
  private optionCount = 0;
  private discMode = false;
  private corkScheduled = false;
  private inputEnded = false;
  /**
   * Buffers lent to the export, by length: read buffers (back once the
   * socket has sent them) and WRITE payloads received directly (back once
   * the write is done).
   */
  private readonly bufferPool = new Map<number, Buffer[]>();
  private poolBytes = 0;
  private closeWaiters: Array<() => void> = [];

  /**
   * Data arrives as 'data' events, or, when the caller created `sock` with
   * Node's `onread` option wired to readBuffer()/onRead(), in buffers the
   * receiver chooses (large WRITE payloads straight into their own buffer).
   */
  constructor(sock: Duplex, info: ClientInfo, hooks: Hooks) {
    this.sock = sock;
    this.info = info;
    this.hooks = hooks;
    this.attach(sock);
    this.handshakeTimer = setTimeout(() => {
      this.log('warn', { timeoutMs: hooks.limits.handshakeTimeoutMs }, 'handshake timed out');
      hooks.stats.handshakeTimeouts++;
      this.destroy();
    }, hooks.limits.handshakeTimeoutMs);
    this.handshakeTimer.unref?.();
    // Greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    const g = Buffer.allocUnsafe(18);
    g.writeBigUInt64BE(P.NBDMAGIC, 0);
    g.writeBigUInt64BE(P.IHAVEOPT, 8);
    g.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    this.send(g);
  }

  /** Resolves once the connection is fully closed and its export released. */
  closed(): Promise<void> {
    if (this.phase === Phase.Closed) return Promise.resolve();
    return new Promise((r) => this.closeWaiters.push(r));
  }

  /** Hard disconnect. */
  destroy(): void {
    this.tlsUpgrading?.destroy();
    if (this.phase === Phase.Closed || this.phase === Phase.Closing) {
      this.sock.destroy();
      return;
    }
    this.phase = Phase.Closing;
    this.sock.destroy();
    this.maybeFinish();
  }

  // ---------------------------------------------------------------- I/O

  private attach(sock: Duplex): void {
    sock.on('data', this.onData);
    sock.on('error', this.onError);
    sock.on('close', this.onSockClose);
    sock.on('drain', this.onDrain);
    sock.on('end', this.onEnd);
  }

  private detach(sock: Duplex): void {
    sock.off('data', this.onData);
    sock.off('error', this.onError);
    sock.off('close', this.onSockClose);
    sock.off('drain', this.onDrain);
    sock.off('end', this.onEnd);
  }

  private readonly onError = (err: Error): void => {
    this.log('debug', { err: err.message }, 'socket error');
  };

  private readonly onSockClose = (): void => {
    if (this.phase !== Phase.Closed) this.phase = Phase.Closing;
    this.maybeFinish();
  };

  /** The client half-closed: finish what is in flight, then close our side. */
  private readonly onEnd = (): void => {
    this.inputEnded = true;
    if (this.phase === Phase.Transmission) this.maybeEndAfterDisc();
    else if (this.phase !== Phase.Closed) this.destroy();
  };

  /** Next buffer for the socket to read into (onread mode). */
  readBuffer(): Buffer {
    return this.rx.nextBuffer();
  }

  /** `n` bytes arrived in `buf`, a buffer readBuffer() returned (onread mode). */
  onRead(n: number, buf: Buffer): boolean {
    if (this.phase === Phase.Closing || this.phase === Phase.Closed) return true;
    this.rx.received(n, buf);
    return true;
  }

  private readonly onDrain = (): void => {
    if (this.stallTimer) {
      clearTimeout(this.stallTimer);
      this.stallTimer = null;
    }
    this.updateFlow();
  };

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase === Phase.Closing || this.phase === Phase.Closed) return;
    this.rx.push(chunk);
  };

  private pumpSafe(): void {
    if (this.phase === Phase.Closing || this.phase === Phase.Closed) return;
    try {
      this.pump();
    } catch (e) {
      this.violation(e);
    }
    this.updateFlow();
  }

  private send(buf: Buffer): void {
    if (this.sock.destroyed) return;
    this.sock.write(buf);
  }

  /** Batch reply writes issued in one tick into one writev. */
  private cork(): void {
    if (this.corkScheduled || this.sock.destroyed) return;
    this.corkScheduled = true;
    this.sock.cork();
    process.nextTick(() => {
      this.corkScheduled = false;
      this.sock.uncork();
    });
  }

  private violation(e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    this.log('warn', { err: msg }, 'protocol violation; closing connection');
    this.destroy();
  }

  private log(level: keyof NbdLogger, obj: object, msg: string): void {
    this.hooks.logger[level]({ conn: this.info.id, export: this.exportName ?? undefined, ...obj }, msg);
  }

  private pump(): void {
    const input = this.rx.queue;
    while (true) {
      switch (this.phase) {
        case Phase.ClientFlags: {
          if (input.length < 4) return;
          const flags = input.take(4).readUInt32BE(0);
          const known = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES;
          if (flags & ~known) throw new ProtocolViolation(`unknown client flags 0x${flags.toString(16)}`);
          this.noZeroes = (flags & P.FLAG_C_NO_ZEROES) !== 0;
          this.phase = Phase.Options;
          break;
        }
        case Phase.Options: {
          // One option at a time; none while the client leaves our replies unread.
          if (this.optionBusy || this.sock.writableLength > HANDSHAKE_BUFFER_MAX) return;
          if (input.length < 16) return;
          const hdr = input.peek(16);
          if (hdr.readBigUInt64BE(0) !== P.IHAVEOPT) throw new ProtocolViolation('bad option magic');
          const opt = hdr.readUInt32BE(8);
          const len = hdr.readUInt32BE(12);
          if (len > this.hooks.limits.maxOptionLength) {
            input.take(16);
            this.optionReply(opt, P.REP_ERR_TOO_BIG, `option length ${len} exceeds limit`);
            throw new ProtocolViolation(`option ${opt} length ${len} over limit`);
          }
          if (input.length < 16 + len) return;
          if (++this.optionCount > this.hooks.limits.maxOptions) {
            throw new ProtocolViolation(`${this.hooks.limits.maxOptions} options without choosing an export`);
          }
          input.take(16);
          const data = input.take(len);
          this.optionBusy = true;
          this.handleOption(opt, data).then(
            () => {
              this.optionBusy = false;
              if (this.phase === Phase.Options || this.phase === Phase.Transmission) this.pumpSafe();
            },
            (e) => {
              this.optionBusy = false;
              this.violation(e);
            },
          );
          return;
        }
        case Phase.Transmission: {
          if (this.discMode || this.rx.busy || this.readPaused) return;
          if (input.length < REQUEST_HEADER) return;
          const h = input.peek(REQUEST_HEADER);
          if (h.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new ProtocolViolation('bad request magic');
          const type = h.readUInt16BE(6);
          const len = h.readUInt32BE(24);
          if (type === P.CMD_WRITE) {
            if (len > this.maxPayload) {
              if (len > this.hooks.limits.maxDiscardPayload) {
                throw new ProtocolViolation(`write payload ${len} far over maximum ${this.maxPayload}`);
              }
              const hdr = Buffer.from(input.take(REQUEST_HEADER));
              this.rx.discard(len, () => this.finishDiscard(hdr));
              return;
            }
            if (input.length < REQUEST_HEADER + len) {
              if (len >= DIRECT_MIN_PAYLOAD) {
                // Receive the rest of the payload straight into its buffer.
                const hdr = Buffer.from(input.take(REQUEST_HEADER));
                // From the pool: a fresh 1 MiB buffer makes the export's
                // fs.write call itself ~30x dearer than a reused one.
                const payload = this.borrow(len) ?? Buffer.allocUnsafe(len);
                this.rx.receiveInto(payload, (p) => this.onPayload(hdr, p));
              }
              return;
            }
          }
          const hdr = input.take(REQUEST_HEADER);
          const payload = type === P.CMD_WRITE ? input.take(len) : null;
          this.dispatch(hdr, payload);
          break;
        }
        default:
          return;
      }
    }
  }

  /** A WRITE payload received with receiveInto() is complete. */
  private onPayload(hdr: Buffer, payload: Buffer): void {
    if (this.phase !== Phase.Transmission) return;
    try {
      this.dispatch(hdr, payload, true);
    } catch (e) {
      this.violation(e);
    }
  }

  // ----------------------------------------------------------- handshake

  private optionReply(opt: number, type: number, data?: Buffer | string): void {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const len = payload ? payload.length : 0;
    const b = Buffer.allocUnsafe(20 + len);
    b.writeBigUInt64BE(P.OPT_REPLY_MAGIC, 0);
    b.writeUInt32BE(opt, 8);
    b.writeUInt32BE(type >>> 0, 12);
    b.writeUInt32BE(len, 16);
    if (payload) payload.copy(b, 20);
    this.send(b);
  }

  private async handleOption(opt: number, data: Buffer): Promise<void> {
    const tlsMode = this.hooks.tls.mode;
    if (tlsMode === 'require' && !this.info.tls && opt !== P.OPT_STARTTLS && opt !== P.OPT_ABORT) {
      if (opt === P.OPT_EXPORT_NAME) throw new ProtocolViolation('EXPORT_NAME before STARTTLS on a TLS-only server');
      this.optionReply(opt, P.REP_ERR_TLS_REQD, 'TLS is required: use STARTTLS');
      return;
    }
    switch (opt) {
      case P.OPT_EXPORT_NAME:
        return this.optExportName(data);
      case P.OPT_ABORT:
        this.optionReply(opt, P.REP_ACK);
        this.phase = Phase.Closing;
        this.sock.end();
        return;
      case P.OPT_LIST:
        return this.optList(data);
      case P.OPT_STARTTLS:
        return this.optStartTls(data);
      case P.OPT_INFO:
      case P.OPT_GO:
        return this.optInfoGo(opt, data);
      case P.OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.optionReply(opt, P.REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.optionReply(opt, P.REP_ACK);
      case P.OPT_LIST_META_CONTEXT:
      case P.OPT_SET_META_CONTEXT:
        return this.optMetaContext(opt, data);
      default:
        return this.optionReply(opt, P.REP_ERR_UNSUP, `option ${opt} is not supported`);
    }
  }

  private async optList(data: Buffer): Promise<void> {
    if (data.length !== 0) return this.optionReply(P.OPT_LIST, P.REP_ERR_INVALID, 'LIST takes no data');
    const provider = this.hooks.provider;
    const list = await provider.list(this.info);
    for (const e of list) {
      if (provider.authorize && !(await this.authorized(e.name))) continue;
      const name = Buffer.from(e.name, 'utf8');
      const desc = Buffer.from(e.description ?? '', 'utf8');
      const b = Buffer.allocUnsafe(4 + name.length + desc.length);
      b.writeUInt32BE(name.length, 0);
      name.copy(b, 4);
      desc.copy(b, 4 + name.length);
      this.optionReply(P.OPT_LIST, P.REP_SERVER, b);
    }
    this.optionReply(P.OPT_LIST, P.REP_ACK);
  }

  private async optStartTls(data: Buffer): Promise<void> {
    const t = this.hooks.tls;
    if (data.length !== 0) return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_INVALID, 'STARTTLS takes no data');
    if (t.mode === 'off' || !t.credentials) {
      return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_POLICY, 'TLS is not enabled on this server');
    }
    if (this.info.tls) return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_INVALID, 'TLS is already active');
    if (!(this.sock instanceof net.Socket)) {
      return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_POLICY, 'TLS is not available on this transport');
    }
    // The client must wait for our ACK before its TLS ClientHello: bytes
    // already here would be plaintext smuggled past the upgrade.
    if (this.rx.queue.length > 0) throw new ProtocolViolation('data sent after STARTTLS before its reply');
    this.optionReply(P.OPT_STARTTLS, P.REP_ACK);
    // Upgrade in place. Any state negotiated before TLS is forgotten.
    const raw = this.sock;
    this.detach(raw);
    raw.on('error', this.onError);
    this.tlsUpgrading = raw;
    this.structured = false;
    this.metaExport = null;
    this.metaSelected = false;
    const left = this.hooks.limits.handshakeTimeoutMs - (Date.now() - this.startedAt);
    let up;
    try {
      up = await upgradeToTls(raw, t, left);
    } catch (err) {
      throw new ProtocolViolation((err as Error).message);
    } finally {
      this.tlsUpgrading = null;
    }
    if (this.phase !== Phase.Options) {
      up.socket.destroy();
      return;
    }
    this.sock = up.socket;
    this.attach(up.socket);
    this.info.tls = true;
    if (up.cert) this.info.cert = up.cert;
    if (up.certSubject !== undefined) this.info.certSubject = up.certSubject;
    this.log('debug', { cert: up.certSubject }, 'TLS established');
  }

  /** The provider's access decision for `name`; a failing check denies. */
  private async authorized(name: string): Promise<boolean> {
    const p = this.hooks.provider;
    if (!p.authorize) return true;
    try {
      return (await p.authorize(name, this.info)) === true;
    } catch (e) {
      this.log('warn', { err: (e as Error).message, name }, 'access check failed; denying');
      return false;
    }
  }

  /** Opens `name` for this client: the export, null if there is none, or 'denied'. */
  private async openExport(name: string): Promise<OpenedExport | null | 'denied'> {
    if (!(await this.authorized(name))) {
      this.log('info', { name, remote: this.info.remoteAddress, peer: this.info.peer, cert: this.info.certSubject }, 'access denied');
      return 'denied';
    }
    try {
      return await this.hooks.provider.open(name, this.info);
    } catch (e) {
      this.log('warn', { err: (e as Error).message, name }, 'export open failed');
      return null;
    }
  }

  private computeFlags(e: NbdExport): number {
    const c = e.capabilities;
    let f = P.FLAG_HAS_FLAGS;
    if (e.readOnly) f |= P.FLAG_READ_ONLY;
    else {
      if (c.flush) f |= P.FLAG_SEND_FLUSH;
      if (c.fua) f |= P.FLAG_SEND_FUA;
      if (c.trim) f |= P.FLAG_SEND_TRIM;
      f |= P.FLAG_SEND_WRITE_ZEROES; // emulated by writing zeroes when the export cannot
      if (c.zero && c.fastZero) f |= P.FLAG_SEND_FAST_ZERO;
    }
    if (this.structured) f |= P.FLAG_SEND_DF;
    if (c.multiConn) f |= P.FLAG_CAN_MULTI_CONN;
    if (c.cache) f |= P.FLAG_SEND_CACHE;
    return f;
  }

  private async optExportName(data: Buffer): Promise<void> {
    const name = data.toString('utf8');
    const opened = await this.openExport(name);
    if (opened === 'denied') throw new ProtocolViolation(`EXPORT_NAME for export ${JSON.stringify(name)}: access denied`);
    if (!opened) throw new ProtocolViolation(`EXPORT_NAME for unknown export ${JSON.stringify(name)}`);
    if (this.phase !== Phase.Options) {
      await opened.export.close?.();
      return;
    }
    const flags = this.computeFlags(opened.export);
    const b = Buffer.alloc(this.noZeroes ? 10 : 134);
    b.writeBigUInt64BE(BigInt(opened.export.size), 0);
    b.writeUInt16BE(flags, 8);
    this.send(b);
    this.enterTransmission(opened, flags);
  }

  private async optInfoGo(opt: number, data: Buffer): Promise<void> {
    if (data.length < 6) return this.optionReply(opt, P.REP_ERR_INVALID, 'option data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6) return this.optionReply(opt, P.REP_ERR_INVALID, 'name length overruns option');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const nreq = data.readUInt16BE(4 + nameLen);
    if (data.length !== 6 + nameLen + 2 * nreq) {
      return this.optionReply(opt, P.REP_ERR_INVALID, 'information request count does not match length');
    }
    const requests = new Set<number>();
    for (let i = 0; i < nreq; i++) requests.add(data.readUInt16BE(6 + nameLen + 2 * i));

    const opened = await this.openExport(name);
    if (opened === 'denied') return this.optionReply(opt, P.REP_ERR_POLICY, `access to export ${JSON.stringify(name)} denied`);
    if (!opened) {
      return this.optionReply(opt, P.REP_ERR_UNKNOWN, `export ${JSON.stringify(name)} not found`);
    }
    if (this.phase !== Phase.Options) {
      await opened.export.close?.();
      return;
    }
    const e = opened.export;
    const flags = this.computeFlags(e);
    const ex = Buffer.allocUnsafe(12);
    ex.writeUInt16BE(P.INFO_EXPORT, 0);
    ex.writeBigUInt64BE(BigInt(e.size), 2);
    ex.writeUInt16BE(flags, 10);
    this.optionReply(opt, P.REP_INFO, ex);
    if (requests.has(P.INFO_NAME) || opened.name !== name) {
      const n = Buffer.from(opened.name, 'utf8');
      const b = Buffer.allocUnsafe(2 + n.length);
      b.writeUInt16BE(P.INFO_NAME, 0);
      n.copy(b, 2);
      this.optionReply(opt, P.REP_INFO, b);
    }
    if (requests.has(P.INFO_DESCRIPTION) && opened.description) {
      const d = Buffer.from(opened.description, 'utf8');
      const b = Buffer.allocUnsafe(2 + d.length);
      b.writeUInt16BE(P.INFO_DESCRIPTION, 0);
      d.copy(b, 2);
      this.optionReply(opt, P.REP_INFO, b);
    }
    const bs = e.blockSize;
    const bsb = Buffer.allocUnsafe(14);
    bsb.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
    bsb.writeUInt32BE(bs?.minimum ?? P.DEFAULT_MIN_BLOCK, 2);
    bsb.writeUInt32BE(bs?.preferred ?? P.DEFAULT_PREFERRED_BLOCK, 6);
    bsb.writeUInt32BE(bs?.maximum ?? P.DEFAULT_MAX_PAYLOAD, 10);
    this.optionReply(opt, P.REP_INFO, bsb);
    this.optionReply(opt, P.REP_ACK);
    if (opt === P.OPT_GO) {
      this.enterTransmission(opened, flags);
    } else {
      await e.close?.();
    }
  }

  private async optMetaContext(opt: number, data: Buffer): Promise<void> {
    const set = opt === P.OPT_SET_META_CONTEXT;
    if (set) {
      // SET replaces the selection even when it fails.
      this.metaExport = null;
      this.metaSelected = false;
      this.metaChosen = [];
      if (!this.structured) {
        return this.optionReply(opt, P.REP_ERR_INVALID, 'negotiate STRUCTURED_REPLY first');
      }
    }
    // Parse: u32 name length, name, u32 query count, queries (u32 length, string).
    if (data.length < 8) return this.optionReply(opt, P.REP_ERR_INVALID, 'option data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > MAX_NAME || 4 + nameLen + 4 > data.length) {
      return this.optionReply(opt, P.REP_ERR_INVALID, 'export name overruns option');
    }
    const name = data.toString('utf8', 4, 4 + nameLen);
    let pos = 4 + nameLen;
    const nq = data.readUInt32BE(pos);
    pos += 4;
    const queries: string[] = [];
    for (let i = 0; i < nq; i++) {
      if (pos + 4 > data.length) return this.optionReply(opt, P.REP_ERR_INVALID, 'query overruns option');
      const ql = data.readUInt32BE(pos);
      pos += 4;
      if (ql > data.length - pos) return this.optionReply(opt, P.REP_ERR_INVALID, 'query overruns option');
      queries.push(data.toString('utf8', pos, pos + ql));
      pos += ql;
    }
    if (pos !== data.length) return this.optionReply(opt, P.REP_ERR_INVALID, 'trailing bytes after queries');

    const opened = await this.openExport(name);
    if (opened === 'denied') return this.optionReply(opt, P.REP_ERR_POLICY, `access to export ${JSON.stringify(name)} denied`);
    if (!opened) return this.optionReply(opt, P.REP_ERR_UNKNOWN, `export ${JSON.stringify(name)} not found`);
    let names: string[];
    try {
      names = await this.matchMetaContexts(opened.export, queries, set);
    } catch (err) {
      this.log('warn', { err: (err as Error)?.message }, 'meta context lookup failed');
      return this.optionReply(opt, P.REP_ERR_INVALID, (err as Error)?.message ?? 'meta context lookup failed');
    } finally {
      await opened.export.close?.();
    }
    if (set && names.length > MAX_META_CONTEXTS) return this.optionReply(opt, P.REP_ERR_TOO_BIG, `at most ${MAX_META_CONTEXTS} contexts`);
    // base:allocation keeps id 1; the others are numbered in order.
    let nextId = META_CONTEXT_ID + 1;
    const chosen = names.map((n) => ({ id: n === P.BASE_ALLOCATION ? META_CONTEXT_ID : nextId++, name: n }));
    for (const c of chosen) {
      const n = Buffer.from(c.name, 'utf8');
      const b = Buffer.allocUnsafe(4 + n.length);
      b.writeUInt32BE(set ? c.id : 0, 0);
      n.copy(b, 4);
      this.optionReply(opt, P.REP_META_CONTEXT, b);
    }
    if (set) {
      this.metaExport = name;
      this.metaSelected = chosen.length > 0;
      this.metaChosen = chosen;
    }
    this.optionReply(opt, P.REP_ACK);
  }

  /**
   * The context names a LIST (or SET) query set picks on an export, without
   * duplicates. LIST: no query lists everything; "ns:" (a leaf left empty) is
   * a prefix wildcard. SET: exact names only; "base:" and other wildcards
   * select nothing, unknown names are ignored (as the spec requires).
   */
  private async matchMetaContexts(e: NbdExport, queries: string[], set: boolean): Promise<string[]> {
    const extra = e.metaContexts;
    const out: string[] = [];
    const add = (n: string): void => {
      if (!out.includes(n)) out.push(n);
    };
    let listed: string[] | null = null;
    const listable = async (): Promise<string[]> => (listed ??= extra ? [...(await extra.list())] : []);
    if (queries.length === 0) {
      if (set) return out;
      add(P.BASE_ALLOCATION);
      for (const n of await listable()) add(n);
      return out;
    }
    for (const q of queries) {
      if (q === P.BASE_ALLOCATION) {
        add(q);
        continue;
      }
      if (q.endsWith(':')) {
        if (set) continue;
        if (P.BASE_ALLOCATION.startsWith(q)) add(P.BASE_ALLOCATION);
        for (const n of await listable()) if (n.startsWith(q)) add(n);
        continue;
      }
      if (extra && !q.startsWith('base:') && (await extra.open(q))) add(q);
    }
    return out;
  }

  private enterTransmission(opened: OpenedExport, flags: number): void {
    this.exp = opened.export;
    this.exportName = opened.name;
    this.size = opened.export.size;
    this.minBlock = opened.export.blockSize?.minimum ?? P.DEFAULT_MIN_BLOCK;
    this.maxPayload = opened.export.blockSize?.maximum ?? P.DEFAULT_MAX_PAYLOAD;
    this.transmitFlags = flags;
    // Block status needs a context selected for this very export.
    if (this.metaExport !== null && this.metaExport !== opened.name && this.metaExport !== '') {
      this.metaSelected = false;
      this.metaChosen = [];
    }
    for (const c of this.metaChosen) delete c.ctx;
    this.phase = Phase.Transmission;
    if (this.handshakeTimer) {
      clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
    }
    this.log('debug', { flags, size: this.size, structured: this.structured }, 'transmission');
  }

  // -------------------------------------------------------- transmission

  /** An oversized WRITE's payload has been skipped: refuse it. */
  private finishDiscard(hdr: Buffer): void {
    if (this.phase !== Phase.Transmission) return;
    this.hooks.stats.requests++;
    this.replyError(hdr, P.CMD_WRITE, P.EINVAL, `write payload ${hdr.readUInt32BE(24)} exceeds maximum ${this.maxPayload}`);
  }

  /**
   * Validate and start one request. `hdr` is a view; copy what outlives this
   * call. `pooled`: the payload is a pool buffer to give back when done.
   */
  private dispatch(hdrView: Buffer, payload: Buffer | null, pooled = false): void {
    this.hooks.stats.requests++;
    const flags = hdrView.readUInt16BE(4);
    const type = hdrView.readUInt16BE(6);
    const offHi = hdrView.readUInt32BE(16);
    const offLo = hdrView.readUInt32BE(20);
    const length = hdrView.readUInt32BE(24);
    // Keep the cookie (bytes 8..16) for the reply.
    const hdr = Buffer.allocUnsafe(16);
    hdrView.copy(hdr, 0, 8, 16);
    const e = this.exp!;

    if (type === P.CMD_DISC) {
      this.discMode = true;
      this.log('debug', {}, 'soft disconnect requested');
      this.rx.clear();
      this.maybeEndAfterDisc();
      return;
    }

    const fail = (errno: number, msg: string) => this.replyErrorCookie(hdr, type, errno, msg);

    // Flags must be known and valid for the command.
    let allowed = P.CMD_FLAG_FUA;
    if (type === P.CMD_READ) allowed |= P.CMD_FLAG_DF;
    else if (type === P.CMD_WRITE_ZEROES) allowed |= P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO;
    else if (type === P.CMD_BLOCK_STATUS) allowed |= P.CMD_FLAG_REQ_ONE;
    if (type > P.CMD_BLOCK_STATUS) return fail(P.EINVAL, `unknown command ${type}`);
    if (flags & ~allowed) return fail(P.EINVAL, `invalid flags 0x${flags.toString(16)} for command ${type}`);
    if (flags & P.CMD_FLAG_DF && !this.structured) return fail(P.EINVAL, 'DF flag without structured replies');
    if (flags & P.CMD_FLAG_FAST_ZERO && !(this.transmitFlags & P.FLAG_SEND_FAST_ZERO)) {
      return fail(P.EINVAL, 'FAST_ZERO not negotiated');
    }

    if (offHi >= 0x200000) return fail(type === P.CMD_WRITE || type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL, 'offset out of range');
    const offset = offHi * 0x100000000 + offLo;
    const fua = (flags & P.CMD_FLAG_FUA) !== 0;
    const isWrite = type === P.CMD_WRITE || type === P.CMD_TRIM || type === P.CMD_WRITE_ZEROES;

    if (isWrite && e.readOnly) return fail(P.EPERM, 'export is read-only');
    if (type !== P.CMD_FLUSH) {
      if (offset + length > this.size) {
        const errno = type === P.CMD_WRITE || type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL;
        return fail(errno, `request [${offset}, +${length}) beyond export size ${this.size}`);
      }
      if (this.minBlock > 1 && (offset % this.minBlock !== 0 || length % this.minBlock !== 0)) {
        return fail(P.EINVAL, `request not aligned to minimum block size ${this.minBlock}`);
      }
    }

    switch (type) {
      case P.CMD_READ:
        if (length > this.maxPayload) return fail(P.EINVAL, `read length ${length} exceeds maximum ${this.maxPayload}`);
        this.track(length, this.doRead(hdr, offset, length, (flags & P.CMD_FLAG_DF) !== 0));
        return;
      case P.CMD_WRITE: {
        if (length === 0) return this.replyOk(hdr);
        const done = this.runSimple(hdr, type, () => e.write(offset, payload!, { fua }));
        // A payload received directly into a pool buffer goes back to the
        // pool once the export is done with it (see NbdExport.write).
        this.track(length, pooled ? done.then(() => this.giveBack(payload!)) : done);
        this.hooks.stats.bytesWritten += length;
        return;
      }
      case P.CMD_FLUSH:
        if (!(this.transmitFlags & P.FLAG_SEND_FLUSH)) return fail(P.EINVAL, 'flush not supported');
        this.track(0, this.runSimple(hdr, type, () => e.flush()));
        return;
      case P.CMD_TRIM:
        if (!(this.transmitFlags & P.FLAG_SEND_TRIM)) return fail(P.EINVAL, 'trim not supported');
        if (length === 0) return this.replyOk(hdr);
        this.track(0, this.runSimple(hdr, type, () => e.trim(offset, length, { fua })));
        return;
      case P.CMD_WRITE_ZEROES: {
        if (length === 0) return this.replyOk(hdr);
        const noHole = (flags & P.CMD_FLAG_NO_HOLE) !== 0;
        const fastZero = (flags & P.CMD_FLAG_FAST_ZERO) !== 0;
        if (!e.capabilities.zero) {
          if (fastZero) return fail(P.ENOTSUP, 'fast zero not possible');
          this.track(0, this.runSimple(hdr, type, () => this.emulateZero(offset, length, fua)));
          return;
        }
        this.track(0, this.runSimple(hdr, type, () => e.zero(offset, length, { fua, noHole, fastZero })));
        return;
      }
      case P.CMD_CACHE:
        if (!e.capabilities.cache) return this.replyOk(hdr);
        this.track(0, this.runSimple(hdr, type, () => e.cache(offset, length)));
        return;
      case P.CMD_BLOCK_STATUS:
        if (!this.structured || !this.metaSelected) {
          return fail(P.EINVAL, 'block status needs a negotiated base:allocation context');
        }
        if (length === 0) return fail(P.EINVAL, 'block status of zero length');
        this.track(0, this.doBlockStatus(hdr, offset, length, (flags & P.CMD_FLAG_REQ_ONE) !== 0));
        return;
    }
  }

  private async emulateZero(offset: number, length: number, fua: boolean): Promise<void> {
    const e = this.exp!;
    const step = 1024 * 1024;
    const zeros = Buffer.alloc(Math.min(step, length));
    for (let done = 0; done < length; done += step) {
      const n = Math.min(step, length - done);
      await e.write(offset + done, n === zeros.length ? zeros : zeros.subarray(0, n), { fua });
    }
  }

  private track(bytes: number, p: Promise<void>): void {
    this.inflight++;
    this.inflightBytes += bytes;
    this.updateFlow();
    p.then(
      () => this.untrack(bytes),
      (err) => {
        // Reply paths catch export errors themselves; anything here is a bug in them.
        this.log('error', { err: (err as Error).message }, 'request handler failed');
        this.untrack(bytes);
        this.destroy();
      },
    );
  }

  private untrack(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    this.updateFlow();
    if (this.discMode || this.inputEnded) this.maybeEndAfterDisc();
    if (this.phase === Phase.Closing) this.maybeFinish();
  }

  /** Pause or resume reading from the client according to the limits. */
  private updateFlow(): void {
    const L = this.hooks.limits;
    const outBacklog = this.sock.writableLength;
    let over: boolean;
    if (this.phase === Phase.Options) {
      over = this.rx.queue.length > HANDSHAKE_BUFFER_MAX || outBacklog > HANDSHAKE_BUFFER_MAX;
    } else if (this.phase === Phase.Transmission) {
      over = this.inflight >= L.maxInflightPerConnection || this.inflightBytes + outBacklog >= L.maxBufferedBytesPerConnection;
    } else return;
    if (over && !this.readPaused) {
      this.readPaused = true;
      this.sock.pause();
    } else if (!over && this.readPaused) {
      this.readPaused = false;
      this.sock.resume();
      queueMicrotask(() => this.pumpSafe());
    }
    if (outBacklog >= L.maxBufferedBytesPerConnection && !this.stallTimer) {
      this.stallTimer = setTimeout(() => {
        this.log('warn', { backlog: this.sock.writableLength }, 'client is not reading replies; disconnecting');
        this.hooks.stats.stallDisconnects++;
        this.destroy();
      }, L.writeStallTimeoutMs);
      this.stallTimer.unref?.();
    }
  }

  private errnoOf(err: unknown): number {
    if (err instanceof NbdError) return err.nbdErrno;
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    return P.nbdErrnoFromCode(code);
  }

  private async runSimple(cookie: Buffer, type: number, op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } catch (err) {
      this.hooks.stats.errors++;
      this.log('warn', { err: (err as Error)?.message, type }, 'request failed');
      return this.replyErrorCookie(cookie, type, this.errnoOf(err), (err as Error)?.message ?? 'error');
    }
    this.replyOk(cookie);
  }

  private replyOk(cookie: Buffer): void {
    if (this.sock.destroyed) return;
    const b = Buffer.allocUnsafe(16);
    b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
    b.writeUInt32BE(0, 4);
    cookie.copy(b, 8, 0, 8);
    this.cork();
    this.send(b);
  }

  private replyError(hdrView: Buffer, type: number, errno: number, msg: string): void {
    const cookie = Buffer.allocUnsafe(8);
    hdrView.copy(cookie, 0, 8, 16);
    this.replyErrorCookie(cookie, type, errno, msg);
  }

  /** An error reply: structured with a message when negotiated, else simple. */
  private replyErrorCookie(cookie: Buffer, type: number, errno: number, msg: string): void {
    this.hooks.stats.errors++;
    if (this.sock.destroyed) return;
    this.cork();
    if (this.structured) {
      const m = Buffer.from(msg.slice(0, 1024), 'utf8');
      const b = Buffer.allocUnsafe(20 + 6 + m.length);
      b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
      b.writeUInt16BE(P.REPLY_FLAG_DONE, 4);
      b.writeUInt16BE(P.REPLY_TYPE_ERROR, 6);
      cookie.copy(b, 8, 0, 8);
      b.writeUInt32BE(6 + m.length, 16);
      b.writeUInt32BE(errno, 20);
      b.writeUInt16BE(m.length, 24);
      m.copy(b, 26);
      this.send(b);
      return;
    }
    void type;
    const b = Buffer.allocUnsafe(16);
    b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
    b.writeUInt32BE(errno, 4);
    cookie.copy(b, 8, 0, 8);
    this.send(b);
  }

  private structuredHeader(cookie: Buffer, flags: number, type: number, length: number): Buffer {
    const b = Buffer.allocUnsafe(20);
    b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    cookie.copy(b, 8, 0, 8);
    b.writeUInt32BE(length, 16);
    return b;
  }

  private borrow(length: number): Buffer | undefined {
    if (length < POOL_MIN) return undefined;
    const list = this.bufferPool.get(length);
    const b = list?.pop();
    if (b) {
      this.poolBytes -= length;
      return b;
    }
    return Buffer.allocUnsafe(length);
  }

  private giveBack(b: Buffer | undefined): void {
    if (!b || this.phase === Phase.Closed || this.poolBytes + b.length > POOL_MAX_BYTES) return;
    let list = this.bufferPool.get(b.length);
    if (!list) this.bufferPool.set(b.length, (list = []));
    list.push(b);
    this.poolBytes += b.length;
  }

  /** Send the last piece of a read reply; lend `into` back once it is out. */
  private sendLast(buf: Buffer, into: Buffer | undefined): void {
    if (this.sock.destroyed) return;
    if (into) this.sock.write(buf, () => this.giveBack(into));
    else this.sock.write(buf);
  }

  private async doRead(cookie: Buffer, offset: number, length: number, df: boolean): Promise<void> {
    const e = this.exp!;
    if (length === 0) {
      if (this.structured) {
        this.cork();
        this.send(this.structuredHeader(cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, 0));
      } else this.replyOk(cookie);
      return;
    }
    const into = this.borrow(length);
    if (this.structured && !df && e.readSparse && length >= SPARSE_READ_THRESHOLD) {
      let chunks;
      try {
        chunks = await e.readSparse(offset, length, into);
        let covered = offset;
        for (const c of chunks) {
          if (c.offset !== covered || c.length <= 0 || (c.data && c.data.length !== c.length)) {
            throw new Error('export returned inconsistent sparse chunks');
          }
          covered += c.length;
        }
        if (covered !== offset + length) throw new Error('export sparse read did not cover the request');
      } catch (err) {
        this.giveBack(into);
        this.log('warn', { err: (err as Error)?.message }, 'read failed');
        return this.replyErrorCookie(cookie, P.CMD_READ, this.errnoOf(err), (err as Error)?.message ?? 'read error');
      }
      if (this.sock.destroyed) return;
      this.cork();
      for (let i = 0; i < chunks.length; i++) {
        const last = i === chunks.length - 1;
        const c = chunks[i]!;
        const done = i === chunks.length - 1 ? P.REPLY_FLAG_DONE : 0;
        if (c.data) {
          const h = this.structuredHeader(cookie, done, P.REPLY_TYPE_OFFSET_DATA, 8 + c.length);
          const o = Buffer.allocUnsafe(8);
          o.writeBigUInt64BE(BigInt(c.offset), 0);
          this.send(h);
          this.send(o);
          if (last) this.sendLast(c.data, into);
          else this.send(c.data);
        } else {
          const h = Buffer.allocUnsafe(32);
          this.structuredHeader(cookie, done, P.REPLY_TYPE_OFFSET_HOLE, 12).copy(h, 0);
          h.writeBigUInt64BE(BigInt(c.offset), 20);
          h.writeUInt32BE(c.length, 28);
          if (last) this.sendLast(h, into);
          else this.send(h);
        }
      }
      this.hooks.stats.bytesRead += length;
      return;
    }
    let data: Buffer;
    try {
      data = await e.read(offset, length, into);
      if (data.length !== length) throw new Error(`export returned ${data.length} bytes for a ${length}-byte read`);
    } catch (err) {
      this.giveBack(into);
      this.log('warn', { err: (err as Error)?.message }, 'read failed');
      return this.replyErrorCookie(cookie, P.CMD_READ, this.errnoOf(err), (err as Error)?.message ?? 'read error');
    }
    if (this.sock.destroyed) return;
    this.hooks.stats.bytesRead += length;
    this.cork();
    if (this.structured) {
      const h = Buffer.allocUnsafe(28);
      h.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
      h.writeUInt16BE(P.REPLY_FLAG_DONE, 4);
      h.writeUInt16BE(P.REPLY_TYPE_OFFSET_DATA, 6);
      cookie.copy(h, 8, 0, 8);
      h.writeUInt32BE(8 + length, 16);
      h.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
      h.writeUInt32BE(offset >>> 0, 24);
      this.send(h);
    } else {
      const h = Buffer.allocUnsafe(16);
      h.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
      h.writeUInt32BE(0, 4);
      cookie.copy(h, 8, 0, 8);
      this.send(h);
    }
    this.sendLast(data, into);
  }

  private async doBlockStatus(cookie: Buffer, offset: number, length: number, reqOne: boolean): Promise<void> {
    const e = this.exp!;
    const chosen = this.metaChosen.length ? this.metaChosen : [{ id: META_CONTEXT_ID, name: P.BASE_ALLOCATION }];
    let all: Extent[][];
    try {
      // Every context first: an error then is one error reply, never half a set of chunks.
      all = await Promise.all(
        chosen.map(async (c) => {
          let extents: Extent[];
          if (c.name === P.BASE_ALLOCATION) {
            extents = e.capabilities.blockStatus ? await e.blockStatus(offset, length) : [{ length: Math.min(length, this.size - offset), flags: 0 }];
          } else {
            const src = e.metaContexts;
            const h = c as { ctx?: Promise<MetaContext | null> };
            h.ctx ??= Promise.resolve(src ? src.open(c.name) : null);
            const ctx = await h.ctx;
            if (!ctx) throw Object.assign(new Error(`meta context ${c.name} is not available on this export`), { code: 'EINVAL' });
            extents = await ctx.blockStatus(offset, length);
          }
          if (extents.length === 0) throw new Error(`export returned no extents for ${c.name}`);
          return extents;
        }),
      );
    } catch (err) {
      this.log('warn', { err: (err as Error)?.message }, 'block status failed');
      return this.replyErrorCookie(cookie, P.CMD_BLOCK_STATUS, this.errnoOf(err), (err as Error)?.message ?? 'error');
    }
    if (this.sock.destroyed) return;
    // One chunk per selected context; the last one carries the DONE flag.
    this.cork();
    chosen.forEach((c, i) => {
      const mask = c.name === P.BASE_ALLOCATION ? STATE_HOLE | STATE_ZERO : 0xffffffff;
      const out = this.clampExtents(all[i]!, offset, length, reqOne, mask);
      const b = Buffer.allocUnsafe(20 + 4 + 8 * out.length);
      this.structuredHeader(cookie, i === chosen.length - 1 ? P.REPLY_FLAG_DONE : 0, P.REPLY_TYPE_BLOCK_STATUS, 4 + 8 * out.length).copy(b, 0);
      b.writeUInt32BE(c.id, 20);
      let p = 24;
      for (const [len, flags] of out) {
        b.writeUInt32BE(len, p);
        b.writeUInt32BE(flags >>> 0, p + 4);
        p += 8;
      }
      this.send(b);
    });
  }

  /**
   * Extents within the export, each <= 4 GiB - 1, at most MAX_EXTENTS,
   * exactly one (no longer than the request) with REQ_ONE; equal neighbours merged.
   */
  private clampExtents(extents: Extent[], offset: number, length: number, reqOne: boolean, mask: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = offset;
    const limitEnd = reqOne ? offset + length : this.size;
    for (const x of extents) {
      if (pos >= limitEnd || out.length >= MAX_EXTENTS) break;
      let len = Math.min(x.length, limitEnd - pos);
      if (len <= 0) break;
      const flags = (x.flags & mask) >>> 0;
      while (len > 0 && out.length < MAX_EXTENTS) {
        const last = out[out.length - 1];
        const room = 0xfffff000 - (last && last[1] === flags ? last[0] : 0);
        if (last && last[1] === flags && room > 0) {
          const add = Math.min(room, len);
          last[0] += add;
          len -= add;
          pos += add;
          continue;
        }
        const piece = Math.min(len, 0xfffff000);
        out.push([piece, flags]);
        len -= piece;
        pos += piece;
      }
      if (reqOne) break;
    }
    if (reqOne && out.length > 1) out.length = 1;
    return out;
  }

  private maybeEndAfterDisc(): void {
    if (this.inflight > 0 || this.phase !== Phase.Transmission) return;
    if (!this.discMode && (this.rx.queue.length >= REQUEST_HEADER || this.rx.busy)) {
      // Half-closed with requests still queued behind a pause: serve them first.
      try {
        this.pump();
      } catch (e) {
        this.violation(e);
        return;
      }
      if (this.inflight > 0 || this.phase !== Phase.Transmission) return;
    }
    this.phase = Phase.Closing;
    this.sock.end();
    this.maybeFinish();
  }

  /** Release the export once the socket is gone and nothing is in flight. */
  private maybeFinish(): void {
    if (this.phase !== Phase.Closing) return;
    if (this.inflight > 0) return;
    if (!this.sock.destroyed && !this.sock.writableEnded) return;
    this.phase = Phase.Closed;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.handshakeTimer = this.stallTimer = null;
    this.rx.release();
    this.bufferPool.clear();
    this.poolBytes = 0;
    const exp = this.exp;
    this.exp = null;
    const done = () => {
      this.hooks.onClose(this);
      for (const w of this.closeWaiters.splice(0)) w();
    };
    if (exp?.close) {
      Promise.resolve()
        .then(() => exp.close!())
        .catch((e) => this.log('warn', { err: (e as Error).message }, 'export close failed'))
        .then(done);
    } else done();
  }
}
