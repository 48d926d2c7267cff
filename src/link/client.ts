/**
 * The intercept side of the link: a ManagerLink whose submit() sends the
 * sealed AILFC over TCP (optionally TLS) to a remote backup manager and
 * resolves when the manager has committed it.
 *
 * - Containers are sent in containerId order, up to `window` of them sent
 *   and not yet committed (several in flight; the manager still applies in
 *   order). Each goes as PUT (size, footer, super tag), DATA chunks from the
 *   offset the manager asks for (a resumed partial transfer), END.
 * - The commit is recorded in <stateFile> (tmp + fsync + rename) before
 *   submit resolves, i.e. before the journal clears state-map bits and
 *   deletes its copy: after a restart the journal numbers on from there.
 * - While the link is down, submit() just waits: the containers stay in
 *   the journal directory (the pool; GroupJournal limits its size). On
 *   reconnect everything not acknowledged is sent again; the manager
 *   answers a committed one from its catalog (no duplicate apply).
 * - A connection from which nothing arrives for DEAD_AFTER_MS (pings flow
 *   every second both ways) is dropped: a cut cable sends no RST.
 *
 * About 650 lines: the connection state machine, the send pump and the
 * requests answered for the manager share the socket's life cycle.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import type { CommitInfo, ManagerLink, SealedContainerRef } from '../journal/link';
import {
  DATA_CHUNK,
  DEAD_AFTER_MS,
  FrameReader,
  HANDSHAKE_TIMEOUT_MS,
  LINK_MAGIC,
  LINK_VERSION,
  LinkProtocolError,
  MsgType,
  type ReplicaHashesMsg,
  type ReplicaHashesReq,
  PING_INTERVAL_MS,
  clientMac,
  encodeDataHeader,
  encodeJson,
  isNonce,
  macEquals,
  nonce,
  parseJson,
  serverMac,
  type Frame,
  type GroupMsg,
  type GroupOkMsg,
  type HelloMsg,
  type InterceptStatusMsg,
  type NackMsg,
  type PositionReqMsg,
  type PutReadyMsg,
} from './protocol';
import { type Logger } from '../util/logger';
import { writeFileAtomicSync } from '../util/atomic-file';
import { JSON_FORMATS, jsonFormat } from '../util/format-version';
import type { JournalPosition, JournalRecordInfo } from '../journal/group-journal';
import { answerRestore, type RestoreHooks } from './remote-restore';

export interface LinkTlsClient {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** Name the manager's certificate must carry (default: the host). */
  servername?: string;
}

/** Where the intercept's link TLS files are (DIR/ca-cert.pem, and client-cert.pem + client-key.pem if it has them). */
export interface LinkTlsFiles {
  ca: string;
  cert: string | null;
  key: string | null;
  servername?: string;
}

/** Reads and checks the link client's TLS files; throws naming the file that is missing or unusable. */
export function readLinkTlsClient(files: LinkTlsFiles): LinkTlsClient {
  const read = (what: string, f: string) => {
    try {
      return fs.readFileSync(f);
    } catch (err) {
      throw new Error(`${what} ${f}: ${(err as Error).message}`, { cause: err });
    }
  };
  const out: LinkTlsClient = { ca: read('link CA certificate', files.ca) };
  if (files.cert) {
    out.cert = read('link client certificate', files.cert);
    out.key = read('link client key', files.key ?? '');
  }
  if (files.servername) out.servername = files.servername;
  try {
    tls.createSecureContext({ ca: out.ca, cert: out.cert, key: out.key });
  } catch (err) {
    throw new Error(
      `link TLS files (${[files.ca, files.cert, files.key].filter(Boolean).join(', ')}) are not usable: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return out;
}

export interface RemoteLinkOptions {
  host: string;
  port: number;
  secret: Buffer | null;
  tls: LinkTlsClient | null;
  group: GroupMsg;
  /** Where acknowledged commits are recorded. */
  stateFile: string;
  /** Containers sent and not yet committed (default 4). */
  window?: number;
  logger: Logger;
}

export interface LinkState {
  committedContainer: number;
  committedSeq: number;
  committedTime: number;
}

export interface RemoteLinkStatus {
  state: 'connecting' | 'up' | 'down' | 'closed';
  manager: string;
  since: string;
  tls: boolean;
  bytesSent: number;
  containersSent: number;
  containersCommitted: number;
  /** Sealed containers not yet acknowledged. */
  queued: number;
  lastCommit: string | null;
  lastError: string | null;
  reconnects: number;
}

interface Item {
  ref: SealedContainerRef;
  resolve(c: CommitInfo): void;
  reject(e: Error): void;
  sent: boolean;
}

export interface LinkHooks {
  status?: () => Omit<InterceptStatusMsg, 'bytesSent' | 'queued'>;
  verify?: (
    volumeId: number,
    ready: (appliedSeq: number) => void,
  ) => Promise<{ sha256: string; chunk: number; hashes: Buffer; appliedSeq: number }>;
  catchUp?: () => Promise<void>;
  position?: (find?: PositionReqMsg['find']) => Promise<{ position: JournalPosition; found: JournalRecordInfo | null }>;
  /** A production restore the manager runs (remote-restore.ts). */
  restore?: RestoreHooks;
}

/**
 * The last commit the manager acknowledged, or null if none was recorded.
 * A file written by a newer Rewind is refused (FormatError): reading it
 * wrong could make numbering reuse a committed container id.
 */
export function readLinkState(file: string): LinkState | null {
  let raw: string;
  try {
    raw = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  let s: LinkState & { format?: unknown };
  try {
    s = JSON.parse(raw) as LinkState & { format?: unknown };
  } catch {
    return null;
  }
  jsonFormat(s, 'the link state', file, JSON_FORMATS.linkState);
  if (Number.isSafeInteger(s.committedContainer) && Number.isSafeInteger(s.committedSeq))
    return { committedContainer: s.committedContainer, committedSeq: s.committedSeq, committedTime: s.committedTime };
  return null;
}

/** Durable before the journal deletes its copy of a committed container (file and directory fsynced). */
function writeLinkState(file: string, s: LinkState): void {
  writeFileAtomicSync(file, JSON.stringify({ format: JSON_FORMATS.linkState, ...s }));
}

export class RemoteLink implements ManagerLink {
  private readonly queue = new Map<number, Item>();
  private sock: net.Socket | null = null;
  private state: RemoteLinkStatus['state'] = 'connecting';
  private since = Date.now();
  private bytesSent = 0;
  private containersSent = 0;
  private containersCommitted = 0;
  private lastCommit: number | null = null;
  private lastError: string | null = null;
  private reconnects = 0;
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private backoff = 200;
  private linkState: LinkState;
  private hooks: LinkHooks = {};
  private sending = false;
  private readonly window: number;
  private upListeners: Array<() => void> = [];
  /** Sends the current connection is making (DATA streams one at a time). */
  private session = 0;
  /** REPLICA_HASHES requests waiting for their answer, by id. */
  private readonly hashWaiters = new Map<string, { resolve(b: Buffer): void; reject(e: Error): void }>();
  private nextRequest = 1;

  constructor(private readonly opts: RemoteLinkOptions) {
    this.window = Math.max(1, opts.window ?? 4);
    this.linkState = readLinkState(opts.stateFile) ?? { committedContainer: 0, committedSeq: 0, committedTime: 0 };
  }

  get committed(): LinkState {
    return { ...this.linkState };
  }

  setHooks(h: LinkHooks): void {
    this.hooks = h;
  }

  onUp(cb: () => void): void {
    this.upListeners.push(cb);
  }

  get isUp(): boolean {
    return this.state === 'up';
  }

  /** Resolves true once the link is up, false if it is not within `ms`. */
  waitUp(ms: number): Promise<boolean> {
    if (this.isUp) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      timer.unref?.();
      this.onUp(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /**
   * Digests of the manager's replica blocks in [offset, offset+length)
   * (blockDigests of protocol.ts), for crash recovery. Rejects if the link
   * goes down or the manager cannot answer.
   */
  replicaHashes(volumeId: number, offset: number, length: number, blockSize: number, timeoutMs = 120_000): Promise<Buffer> {
    const sock = this.sock;
    if (!sock || this.state !== 'up') return Promise.reject(new Error('the manager link is not up'));
    const id = `h${this.nextRequest++}`;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.hashWaiters.delete(id);
        reject(new Error(`the manager did not answer a replica hash request within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.hashWaiters.set(id, {
        resolve: (b) => {
          clearTimeout(timer);
          resolve(b);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      const req: ReplicaHashesReq = { id, volumeId, offset, length, blockSize };
      this.write(sock, encodeJson(MsgType.REPLICA_HASHES_REQ, req));
    });
  }

  /** Rotated certificates, used from the next connection on. */
  setTls(t: LinkTlsClient): void {
    if (!this.opts.tls) throw new Error('this link does not use TLS');
    this.opts.tls = t;
  }

  /** The group changed (a volume added): reconnect to announce it. */
  setGroup(g: GroupMsg): void {
    this.opts.group = g;
    this.sock?.destroy();
  }

  start(): void {
    this.connect();
  }

  submit(ref: SealedContainerRef): Promise<CommitInfo> {
    if (this.closed) return Promise.reject(new Error('link closed'));
    return new Promise<CommitInfo>((resolve, reject) => {
      const old = this.queue.get(ref.containerId);
      if (old) old.reject(new Error('superseded by a new submit'));
      this.queue.set(ref.containerId, { ref, resolve, reject, sent: false });
      void this.pump();
    });
  }

  status(): RemoteLinkStatus {
    return {
      state: this.state,
      manager: `${this.opts.host}:${this.opts.port}`,
      since: new Date(this.since).toISOString(),
      tls: !!this.opts.tls,
      bytesSent: this.bytesSent,
      containersSent: this.containersSent,
      containersCommitted: this.containersCommitted,
      queued: this.queue.size,
      lastCommit: this.lastCommit ? new Date(this.lastCommit).toISOString() : null,
      lastError: this.lastError,
      reconnects: this.reconnects,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.setState('closed');
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.sock?.destroy();
    for (const it of this.queue.values()) it.reject(new Error('link closed'));
    this.queue.clear();
  }

  private setState(s: RemoteLinkStatus['state']): void {
    if (this.state === s) return;
    this.state = s;
    this.since = Date.now();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, this.backoff);
    this.retryTimer.unref?.();
    this.backoff = Math.min(this.backoff * 2, 2000);
  }

  private connect(): void {
    if (this.closed) return;
    const { host, port } = this.opts;
    this.session++;
    let sock: net.Socket;
    if (this.opts.tls) {
      const t = this.opts.tls;
      sock = tls.connect({
        host,
        port,
        ca: t.ca,
        cert: t.cert,
        key: t.key,
        servername: t.servername ?? (net.isIP(host) ? undefined : host),
        rejectUnauthorized: true,
        checkServerIdentity: (h, cert) => tls.checkServerIdentity(t.servername ?? h, cert),
      });
    } else {
      sock = net.connect({ host, port });
    }
    this.sock = sock;
    sock.setNoDelay(true);
    const reader = new FrameReader();
    let phase: 'hello' | 'auth' | 'group' | 'up' = 'hello';
    const clientNonce = nonce();
    let serverNonce = '';
    let lastHeard = Date.now();
    const started = Date.now();
    let ended = false;
    const fail = (why: string, level: 'warn' | 'error' = 'warn') => {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      sock.destroy();
      if (this.sock === sock) this.sock = null;
      const wasUp = this.state === 'up';
      if (!this.closed) this.setState('down');
      for (const w of this.hashWaiters.values()) w.reject(new Error(`manager link down: ${why}`));
      this.hashWaiters.clear();
      this.lastError = why;
      for (const it of this.queue.values()) it.sent = false;
      this.sending = false;
      if (wasUp || this.reconnects % 20 === 0)
        this.opts.logger[level](
          { group: this.opts.group.group, manager: `${host}:${port}`, reason: why },
          wasUp ? 'manager link down' : 'cannot connect to the manager',
        );
      this.reconnects++;
      this.scheduleReconnect();
    };
    const timer = setInterval(() => {
      if (phase !== 'up' && Date.now() - started > HANDSHAKE_TIMEOUT_MS) return fail('handshake timed out');
      if (phase === 'up') {
        if (Date.now() - lastHeard > DEAD_AFTER_MS) return fail(`no frame from the manager for ${DEAD_AFTER_MS} ms`);
        this.write(sock, encodeJson(MsgType.PING, { t: Date.now() }));
        this.sendStatus(sock);
      }
    }, PING_INTERVAL_MS);
    timer.unref?.();
    sock.on('error', (e) => fail(e.message));
    sock.on('close', () => fail('connection closed'));
    sock.on(this.opts.tls ? 'secureConnect' : 'connect', () => {
      /* the manager speaks first (HELLO) */
    });
    sock.on('data', (d: Buffer) => {
      lastHeard = Date.now();
      let frames: Frame[];
      try {
        frames = reader.push(d);
      } catch (err) {
        return fail(`garbage from the manager: ${(err as Error).message}`, 'error');
      }
      for (const f of frames) {
        if (ended) return;
        try {
          if (f.type === MsgType.ERROR) {
            const m = parseJson<{ message?: string }>(f);
            return fail(`manager refused: ${m.message ?? 'error'}`, 'error');
          }
          switch (phase) {
            case 'hello': {
              if (f.type !== MsgType.HELLO) throw new LinkProtocolError(`expected HELLO, got ${f.type}`);
              const h = parseJson<HelloMsg>(f);
              if (h.magic !== LINK_MAGIC || h.version !== LINK_VERSION || !isNonce(h.nonce))
                throw new LinkProtocolError('not a rewind manager (bad HELLO)');
              serverNonce = h.nonce;
              const secret = this.opts.secret;
              this.write(
                sock,
                encodeJson(MsgType.AUTH, {
                  magic: LINK_MAGIC,
                  version: LINK_VERSION,
                  nonce: clientNonce,
                  mac: secret ? clientMac(secret, serverNonce, clientNonce) : null,
                }),
              );
              phase = 'auth';
              break;
            }
            case 'auth': {
              if (f.type !== MsgType.AUTH_OK) throw new LinkProtocolError(`expected AUTH_OK, got ${f.type}`);
              const m = parseJson<{ mac?: unknown }>(f);
              const secret = this.opts.secret;
              if (secret && !macEquals(m.mac, serverMac(secret, clientNonce, serverNonce)))
                throw new LinkProtocolError('the manager does not hold the shared secret');
              this.write(sock, encodeJson(MsgType.GROUP, this.opts.group));
              phase = 'group';
              break;
            }
            case 'group': {
              if (f.type !== MsgType.GROUP_OK) throw new LinkProtocolError(`expected GROUP_OK, got ${f.type}`);
              const m = parseJson<GroupOkMsg>(f);
              if (m.committedContainer < this.linkState.committedContainer) {
                this.opts.logger.error(
                  { group: this.opts.group.group, manager: m.committedContainer, acknowledged: this.linkState.committedContainer },
                  'the manager has committed less than it acknowledged before (its data was lost or replaced): containers it lacks cannot be re-sent',
                );
              } else if (m.committedContainer > this.linkState.committedContainer) {
                // Committed while we were away (the ack was lost): numbering must not reuse those ids.
                this.recordCommit({ containerId: m.committedContainer, lastSeq: m.committedSeq, lastTime: m.committedTime });
              }
              phase = 'up';
              this.backoff = 200;
              this.setState('up');
              this.lastError = null;
              this.opts.logger.info(
                { group: this.opts.group.group, manager: `${host}:${port}`, tls: !!this.opts.tls, queued: this.queue.size },
                'manager link up',
              );
              this.sendStatus(sock);
              for (const cb of this.upListeners) cb();
              void this.pump();
              break;
            }
            case 'up':
              this.handleUp(sock, f);
              break;
          }
        } catch (err) {
          return fail(err instanceof LinkProtocolError ? err.message : `link error: ${(err as Error).message}`, 'error');
        }
      }
    });
  }

  private write(sock: net.Socket, b: Buffer): boolean {
    if (sock.destroyed) return false;
    return sock.write(b);
  }

  private sendStatus(sock: net.Socket): void {
    const base = this.hooks.status?.();
    if (!base) return;
    const m: InterceptStatusMsg = { ...base, bytesSent: this.bytesSent, queued: this.queue.size };
    this.write(sock, encodeJson(MsgType.STATUS, m));
  }

  private recordCommit(c: { containerId: number; lastSeq: number; lastTime: number }): void {
    if (c.containerId <= this.linkState.committedContainer) return;
    this.linkState = {
      committedContainer: c.containerId,
      committedSeq: Math.max(this.linkState.committedSeq, c.lastSeq),
      committedTime: Math.max(this.linkState.committedTime, c.lastTime),
    };
    writeLinkState(this.opts.stateFile, this.linkState);
  }

  private readyWaiters = new Map<number, (m: PutReadyMsg) => void>();

  private handleUp(sock: net.Socket, f: Frame): void {
    switch (f.type) {
      case MsgType.PING:
        this.write(sock, encodeJson(MsgType.PONG, {}));
        return;
      case MsgType.PONG:
        return;
      case MsgType.PUT_READY: {
        const m = parseJson<PutReadyMsg>(f);
        const w = this.readyWaiters.get(m.containerId);
        if (w) {
          this.readyWaiters.delete(m.containerId);
          w(m);
        }
        return;
      }
      case MsgType.COMMIT: {
        const c = parseJson<CommitInfo>(f);
        const it = this.queue.get(c.containerId);
        this.recordCommit(c);
        this.lastCommit = Date.now();
        if (it) {
          this.queue.delete(c.containerId);
          this.containersCommitted++;
          it.resolve(c);
        }
        void this.pump();
        return;
      }
      case MsgType.NACK: {
        const m = parseJson<NackMsg>(f);
        const it = this.queue.get(m.containerId);
        this.lastError = `container ${m.containerId}: ${m.message}`;
        this.opts.logger.warn(
          { group: this.opts.group.group, container: m.containerId, err: m.message, resend: m.resend },
          'manager did not take a container',
        );
        if (!it) return;
        if (m.resend) {
          it.sent = false;
          setTimeout(() => void this.pump(), 500).unref?.();
        } else {
          this.queue.delete(m.containerId);
          it.reject(new Error(m.message));
        }
        return;
      }
      case MsgType.REPLICA_HASHES: {
        const m = parseJson<ReplicaHashesMsg>(f);
        const w = this.hashWaiters.get(String(m.id));
        if (!w) return;
        this.hashWaiters.delete(String(m.id));
        if (typeof m.hashes === 'string') w.resolve(Buffer.from(m.hashes, 'base64'));
        else w.reject(new Error(`manager: ${m.error ?? 'no hashes'}`));
        return;
      }
      case MsgType.VERIFY_REQ: {
        const m = parseJson<{ id: string; volumeId: number }>(f);
        void this.onVerify(sock, m);
        return;
      }
      case MsgType.CATCHUP_REQ: {
        const m = parseJson<{ id: string }>(f);
        const run = this.hooks.catchUp ? this.hooks.catchUp() : Promise.resolve();
        run.then(
          () => this.write(sock, encodeJson(MsgType.CATCHUP_DONE, { id: m.id })),
          (err: Error) => this.write(sock, encodeJson(MsgType.CATCHUP_DONE, { id: m.id, error: err.message })),
        );
        return;
      }
      case MsgType.POSITION_REQ: {
        // Answered from the journal as it stands when the request arrives: every write
        // acknowledged before the manager asked has a seq at or below the answer.
        const m = parseJson<PositionReqMsg>(f);
        const run = this.hooks.position ? this.hooks.position(m.find) : Promise.reject(new Error('position is not available'));
        run.then(
          (r) => this.write(sock, encodeJson(MsgType.POSITION, { id: m.id, position: r.position, found: r.found })),
          (err: Error) => this.write(sock, encodeJson(MsgType.POSITION, { id: m.id, error: err.message })),
        );
        return;
      }
      case MsgType.RESTORE_REQ:
      case MsgType.RESTORE_DATA:
        answerRestore(f, this.hooks.restore, (a) => this.write(sock, encodeJson(MsgType.RESTORE_ANSWER, a)));
        return;
      default:
        throw new LinkProtocolError(`unexpected frame type ${f.type} from the manager`);
    }
  }

  private async onVerify(sock: net.Socket, m: { id: string; volumeId: number }): Promise<void> {
    if (!this.hooks.verify) {
      this.write(sock, encodeJson(MsgType.VERIFY_RESULT, { id: m.id, error: 'verify is not available' }));
      return;
    }
    try {
      const r = await this.hooks.verify(m.volumeId, (appliedSeq) =>
        this.write(sock, encodeJson(MsgType.VERIFY_READY, { id: m.id, appliedSeq })),
      );
      this.write(
        sock,
        encodeJson(MsgType.VERIFY_RESULT, {
          id: m.id,
          sha256: r.sha256,
          chunk: r.chunk,
          hashes: r.hashes.toString('base64'),
          appliedSeq: r.appliedSeq,
        }),
      );
    } catch (err) {
      this.write(sock, encodeJson(MsgType.VERIFY_RESULT, { id: m.id, error: (err as Error).message }));
    }
  }

  /** Sends queued containers in order while the window allows. One container streams at a time. */
  private async pump(): Promise<void> {
    if (this.sending || this.state !== 'up' || !this.sock) return;
    this.sending = true;
    const sock = this.sock;
    try {
      for (;;) {
        if (this.state !== 'up' || this.sock !== sock) return;
        const items = [...this.queue.values()].sort((a, b) => a.ref.containerId - b.ref.containerId);
        const inFlight = items.filter((i) => i.sent).length;
        const next = items.find((i) => !i.sent);
        if (!next || inFlight >= this.window) return;
        next.sent = true;
        const ok = await this.sendOne(sock, next);
        if (!ok) {
          next.sent = false;
          return;
        }
      }
    } finally {
      this.sending = false;
    }
  }

  private async sendOne(sock: net.Socket, it: Item): Promise<boolean> {
    const ref = it.ref;
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(ref.path, 'r');
    } catch (err) {
      this.lastError = `container ${ref.containerId}: ${(err as Error).message}`;
      this.queue.delete(ref.containerId);
      it.reject(err as Error);
      return true;
    }
    try {
      const size = (await fh.stat()).size;
      let onClose: () => void = () => undefined;
      const ready = new Promise<PutReadyMsg | null>((resolve) => {
        this.readyWaiters.set(ref.containerId, resolve);
        onClose = () => resolve(null);
        sock.once('close', onClose);
      });
      this.write(
        sock,
        encodeJson(MsgType.PUT, {
          containerId: ref.containerId,
          size,
          footer: ref.footer,
          ...(ref.superTransaction ? { superTransaction: ref.superTransaction } : {}),
        }),
      );
      const r = await ready;
      sock.off('close', onClose);
      if (!r || sock.destroyed) return false;
      this.containersSent++;
      if (r.offset < 0) return true; // the manager has it (committed or spooled): the COMMIT follows
      let off = r.offset;
      const buf = Buffer.allocUnsafe(DATA_CHUNK);
      while (off < size) {
        const n = Math.min(DATA_CHUNK, size - off);
        const { bytesRead } = await fh.read(buf, 0, n, off);
        if (bytesRead !== n) throw new Error(`short read of ${ref.path} at ${off}`);
        if (sock.destroyed) return false;
        this.write(sock, encodeDataHeader(ref.containerId, off, n));
        const more = this.write(sock, Buffer.from(buf.subarray(0, n)));
        off += n;
        this.bytesSent += n;
        if (!more) {
          // The link is slower than the journal: wait (the pool absorbs it, never the host's writes).
          await new Promise<void>((resolve) => {
            const done = () => {
              sock.off('drain', done);
              sock.off('close', done);
              resolve();
            };
            sock.on('drain', done);
            sock.on('close', done);
          });
        }
      }
      if (sock.destroyed) return false;
      this.write(sock, encodeJson(MsgType.END, { containerId: ref.containerId }));
      return true;
    } finally {
      await fh.close().catch(() => undefined);
    }
  }
}

export function defaultLinkStateFile(groupDir: string): string {
  return path.join(groupDir, 'link-state.json');
}
