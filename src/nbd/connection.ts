/**
 * One NBD client connection: the socket, flow control and the life cycle.
 * The protocol itself is cut by phase, as nbdkit cuts its server:
 *
 *   handshake.ts     client flags and options, up to a negotiated Session
 *   transmission.ts  requests and replies
 *   receiver.ts      the ordered byte stream, whatever buffers it lands in
 *
 * They reach the socket only through the Wire this class implements.
 *
 * Memory per connection is bounded in every phase:
 * - during the handshake, reading pauses while options wait unparsed or
 *   the client leaves our replies unread (HANDSHAKE_BUFFER_MAX), and a
 *   handshake may send only so many options;
 * - in transmission, reading stops while the requests in flight (count or
 *   bytes) are at their limit, or while replies the client has not read
 *   exceed the output limit; a client that leaves replies unread past a
 *   stall timeout is disconnected;
 * - an option or request payload over the limits is refused, and the
 *   connection closed where the spec allows no other answer;
 * - across connections, a request that needs memory is read only when the
 *   server's budget (budget.ts) admits it; the connection's footprint
 *   (requests in flight, reservations, unread replies, pooled buffers) is
 *   reported to the budget whenever its flow changes.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as P from './protocol';
import type { ClientInfo } from './export';
import { Handshake, HANDSHAKE_BUFFER_MAX } from './handshake';
import type { NbdLogger } from './limits';
import { Receiver } from './receiver';
import { upgradeToTls, type TlsUpgrade } from '../tls';
import { Transmission } from './transmission';
import { ProtocolViolation, type Hooks, type Session, type Wire } from './wire';
import type { BudgetHolder } from './budget';

export { DEFAULT_LIMITS, silentLogger, type ConnectionStats, type NbdLogger, type ServerLimits } from './limits';
export type { TlsMode, TlsSettings } from '../tls';

interface ConnectionHooks extends Hooks {
  onClose(conn: Connection): void;
}

const enum Phase {
  Handshake,
  Transmission,
  Closing,
  Closed,
}

/** Stopping: how long a connection with nothing in flight waits for more requests to refuse. */
const STOP_LINGER_MS = 300;
const STOP_LINGER_MAX_MS = 1500;

/** Reads at least this large use recycled buffers (direct WRITE payloads always do). */
const POOL_MIN = 64 * 1024;
/**
 * Bytes of idle buffers a connection keeps. A read buffer comes back only
 * when the socket has sent it, so at queue depth 16 of 1 MiB reads about
 * 45 buffers circulate; a smaller pool missed 15% of the time, and each
 * miss's fresh 1 MiB of external memory drove V8 into a major GC every
 * 100 ms (15% of the CPU of a sequential read). The memory budget still
 * bounds idle buffers server-wide (see giveBack).
 */
const POOL_MAX_BYTES = 64 * 1024 * 1024;

export class Connection implements Wire, BudgetHolder {
  readonly info: ClientInfo;
  /** Name of the export in transmission, once chosen. */
  exportName: string | null = null;
  readonly hooks: ConnectionHooks;
  readonly rx = new Receiver({ input: () => this.pumpSafe() });

  private sock: Duplex;
  private phase = Phase.Handshake;
  private readonly handshake: Handshake;
  private tx: Transmission | null = null;

  private handshakeTimer: NodeJS.Timeout | null = null;
  private readonly startedAt = Date.now();
  /** The plaintext socket while STARTTLS is upgrading it. */
  private tlsUpgrading: Duplex | null = null;
  private stallTimer: NodeJS.Timeout | null = null;
  private inflight = 0;
  private inflightBytes = 0;
  /** Bytes the budget admitted for requests not yet dispatched. */
  private reserved = 0;
  private reportScheduled = false;
  /** The budget refused the request at the head of the input. */
  private budgetBlocked = false;
  /** Over a per-connection limit: no more requests are parsed. */
  private held = false;
  private readPaused = false;
  private discMode = false;
  /** The server is shutting down: requests are refused as they arrive; close once none is in flight. */
  private stopping = false;
  private lingerTimer: NodeJS.Timeout | null = null;
  /** Bytes received from the client (the linger re-arms while more arrive). */
  private received = 0;
  private stopSince = 0;
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
  constructor(sock: Duplex, info: ClientInfo, hooks: ConnectionHooks) {
    this.sock = sock;
    this.info = info;
    this.hooks = hooks;
    this.handshake = new Handshake(this);
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

  // ---------------------------------------------------------------- the wire

  get destroyed(): boolean {
    return this.sock.destroyed;
  }

  get writableLength(): number {
    return this.sock.writableLength;
  }

  get canStartTls(): boolean {
    return this.sock instanceof net.Socket;
  }

  get inHandshake(): boolean {
    return this.phase === Phase.Handshake;
  }

  get inTransmission(): boolean {
    return this.phase === Phase.Transmission;
  }

  send(buf: Buffer): void {
    if (this.sock.destroyed) return;
    this.sock.write(buf);
  }

  /** Batch reply writes issued in one tick into one writev. */
  cork(): void {
    if (this.corkScheduled || this.sock.destroyed) return;
    this.corkScheduled = true;
    this.sock.cork();
    process.nextTick(() => {
      this.corkScheduled = false;
      this.sock.uncork();
    });
  }

  sendLast(buf: Buffer, into: Buffer | undefined): void {
    if (this.sock.destroyed) return;
    if (into)
      this.sock.write(buf, () => {
        this.giveBack(into);
        this.updateFlow();
      });
    else this.sock.write(buf);
  }

  log(level: keyof NbdLogger, obj: object, msg: string): void {
    this.hooks.logger[level]({ conn: this.info.id, export: this.exportName ?? undefined, ...obj }, msg);
  }

  violation(e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    this.log('warn', { err: msg }, 'protocol violation; closing connection');
    this.destroy();
  }

  resume(): void {
    if (this.phase === Phase.Handshake || this.phase === Phase.Transmission) this.pumpSafe();
  }

  borrow(length: number): Buffer | undefined {
    if (length < POOL_MIN) return undefined;
    const list = this.bufferPool.get(length);
    const b = list?.pop();
    if (b) {
      this.poolBytes -= length;
      return b;
    }
    return Buffer.allocUnsafe(length);
  }

  giveBack(b: Buffer | undefined): void {
    if (!b || this.phase === Phase.Closed || this.poolBytes + b.length > POOL_MAX_BYTES) return;
    // Idle buffers are kept only while the server has memory to spare.
    const budget = this.hooks.budget;
    if (budget && budget.used + b.length > budget.limit / 2) return;
    let list = this.bufferPool.get(b.length);
    if (!list) this.bufferPool.set(b.length, (list = []));
    list.push(b);
    this.poolBytes += b.length;
  }

  admit(bytes: number): boolean {
    const budget = this.hooks.budget;
    if (!budget) return true;
    if (!budget.admit(this, bytes, this.footprint())) {
      this.budgetBlocked = true;
      return false;
    }
    this.budgetBlocked = false;
    this.reserved += bytes;
    this.reportFootprint();
    return true;
  }

  unreserve(bytes: number): void {
    this.reserved = Math.max(0, this.reserved - bytes);
  }

  /** The budget has room again: parse (and so ask again). */
  budgetRetry(): void {
    this.pumpSafe();
  }

  track(bytes: number, p: Promise<void>): void {
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

  abort(): void {
    this.phase = Phase.Closing;
    this.sock.end();
  }

  async startTls(): Promise<TlsUpgrade | null> {
    const t = this.hooks.tls;
    if (!(this.sock instanceof net.Socket)) throw new ProtocolViolation('TLS is not available on this transport');
    const raw = this.sock;
    this.detach(raw);
    raw.on('error', this.onError);
    this.tlsUpgrading = raw;
    const left = this.hooks.limits.handshakeTimeoutMs - (Date.now() - this.startedAt);
    let up: TlsUpgrade;
    try {
      up = await upgradeToTls(raw, t, left);
    } catch (err) {
      throw new ProtocolViolation((err as Error).message);
    } finally {
      this.tlsUpgrading = null;
    }
    if (this.phase !== Phase.Handshake) {
      up.socket.destroy();
      return null;
    }
    this.sock = up.socket;
    this.attach(up.socket);
    this.info.tls = true;
    if (up.cert) this.info.cert = up.cert;
    if (up.certSubject !== undefined) this.info.certSubject = up.certSubject;
    return up;
  }

  enterTransmission(session: Session): void {
    this.tx = new Transmission(this, session);
    this.exportName = session.opened.name;
    this.phase = Phase.Transmission;
    if (this.handshakeTimer) {
      clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
    }
    this.log('debug', { flags: session.flags, size: this.tx.exp.size, structured: session.structured }, 'transmission');
  }

  /**
   * Server shutdown: a connection still negotiating is closed. In
   * transmission, the requests in flight finish and are answered; every
   * request received from now on (those queued behind the in-flight limit
   * and those still on the wire) is answered NBD_ESHUTDOWN without being
   * run, as the spec asks; the connection closes once nothing is in flight
   * (or at the client's NBD_CMD_DISC). Resolves when it is closed.
   */
  shutdown(): Promise<void> {
    if (this.phase === Phase.Handshake) this.destroy();
    else if (this.phase === Phase.Transmission && !this.discMode) {
      this.stopping = true;
      this.stopSince = Date.now();
      this.tx!.refuseAll();
      this.updateFlow();
      this.pumpSafe();
      if (this.inflight === 0) this.lingerThenClose();
    }
    // Once the last replies are out, drop the socket (a client that keeps its side open must not hold the shutdown).
    return this.closed().then(
      () =>
        new Promise<void>((resolve) => {
          const sock = this.sock;
          const done = () => {
            sock.destroy();
            resolve();
          };
          if (sock.destroyed || sock.writableFinished) return done();
          sock.once('finish', done);
          sock.once('close', done);
        }),
    );
  }

  /**
   * Stopping with nothing in flight: requests the client sent before it
   * saw our ESHUTDOWN may still be on the wire; they are read and refused
   * for a moment (until the client's NBD_CMD_DISC, or STOP_LINGER_MS
   * without a new request), then the connection closes.
   */
  private lingerThenClose(): void {
    if (this.discMode || this.phase !== Phase.Transmission) return;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    const seen = this.received;
    this.lingerTimer = setTimeout(() => {
      this.lingerTimer = null;
      // Re-armed while requests keep coming, but not past STOP_LINGER_MAX_MS: a client that ignores ESHUTDOWN is closed.
      if (this.received !== seen && Date.now() - this.stopSince < STOP_LINGER_MAX_MS) return this.lingerThenClose();
      if (this.inflight === 0 && !this.discMode) this.softDisconnect();
    }, STOP_LINGER_MS);
    this.lingerTimer.unref?.();
  }

  softDisconnect(): void {
    this.discMode = true;
    this.rx.clear();
    this.maybeEndAfterDisc();
  }

  // ---------------------------------------------------------------- socket I/O

  /** Next buffer for the socket to read into (onread mode). */
  readBuffer(): Buffer {
    return this.rx.nextBuffer();
  }

  /** `n` bytes arrived in `buf`, a buffer readBuffer() returned (onread mode). */
  onRead(n: number, buf: Buffer): boolean {
    if (this.phase === Phase.Closing || this.phase === Phase.Closed) return true;
    this.received += n;
    this.rx.received(n, buf);
    return true;
  }

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

  private readonly onDrain = (): void => {
    if (this.stallTimer) {
      clearTimeout(this.stallTimer);
      this.stallTimer = null;
    }
    this.updateFlow();
  };

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase === Phase.Closing || this.phase === Phase.Closed) return;
    this.received += chunk.length;
    this.rx.push(chunk);
  };

  // ---------------------------------------------------------------- parsing and flow

  private pumpSafe(): void {
    if (this.phase === Phase.Closing || this.phase === Phase.Closed) return;
    try {
      this.pump();
    } catch (e) {
      this.violation(e);
    }
    this.updateFlow();
  }

  /** Parse what the input holds, phase by phase, while parsing may go on. */
  private pump(): void {
    const input = this.rx.queue;
    for (;;) {
      if (this.phase === Phase.Handshake) {
        if (!this.handshake.step(input)) return;
      } else if (this.phase === Phase.Transmission) {
        if (this.discMode || this.rx.busy || this.held) return;
        if (!this.tx!.step(input)) return;
      } else return;
    }
  }

  private untrack(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    this.updateFlow();
    if (this.stopping && this.inflight === 0 && !this.discMode && !this.inputEnded) this.lingerThenClose();
    else if (this.discMode || this.inputEnded) this.maybeEndAfterDisc();
    if (this.phase === Phase.Closing) this.maybeFinish();
  }

  /**
   * What this connection holds of the server's memory budget. Its receive
   * queue is not counted: reading pauses, so it holds at most one staging
   * read (part of the per-connection overhead), and counting it would deny
   * a request the reserve its own header needs.
   */
  private footprint(): number {
    return this.inflightBytes + this.reserved + this.sock.writableLength + this.poolBytes;
  }

  /**
   * Reported on a microtask: a batch of reads completing together writes
   * its replies before their requests leave the count in flight, and a
   * report in between would count those bytes twice.
   */
  private reportFootprint(): void {
    if (!this.hooks.budget || this.reportScheduled) return;
    this.reportScheduled = true;
    queueMicrotask(() => {
      this.reportScheduled = false;
      if (this.phase !== Phase.Closed) this.hooks.budget!.report(this, this.footprint());
    });
  }

  /** Pause or resume reading from the client according to the limits. */
  private updateFlow(): void {
    const L = this.hooks.limits;
    const outBacklog = this.sock.writableLength;
    let over: boolean;
    if (this.phase === Phase.Handshake) {
      over = this.rx.queue.length > HANDSHAKE_BUFFER_MAX || outBacklog > HANDSHAKE_BUFFER_MAX;
    } else if (this.phase === Phase.Transmission) {
      // Stopping, requests are refused as they arrive, so the in-flight limit must not keep them unread.
      this.held =
        (!this.stopping && this.inflight >= L.maxInflightPerConnection) ||
        this.inflightBytes + outBacklog >= L.maxBufferedBytesPerConnection;
      over = this.held || this.budgetBlocked;
      this.reportFootprint();
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

  // ---------------------------------------------------------------- the end

  private maybeEndAfterDisc(): void {
    if (this.inflight > 0 || this.phase !== Phase.Transmission) return;
    if (!this.discMode && (this.tx!.hasInput(this.rx.queue) || this.rx.busy)) {
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
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.handshakeTimer = this.stallTimer = null;
    this.rx.release();
    this.bufferPool.clear();
    this.poolBytes = 0;
    this.hooks.budget?.forget(this);
    const exp = this.tx?.exp ?? null;
    this.tx = null;
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
