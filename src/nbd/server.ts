/**
 * NbdServer: accepts connections on TCP and Unix sockets (or takes an
 * already-connected stream, e.g. stdio) and runs one `Connection` for each.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type { ClientInfo, ExportProvider, PeerCredentials } from './export';
import {
  Connection,
  DEFAULT_LIMITS,
  silentLogger,
  type ConnectionStats,
  type NbdLogger,
  type ServerLimits,
  type TlsSettings,
} from './connection';
import { checkTlsSettings } from '../tls';
import { MemoryBudget } from './budget';

export type { NbdLogger, ServerLimits, TlsSettings, TlsMode } from './connection';
export { DEFAULT_LIMITS } from './connection';

export interface NbdServerOptions {
  provider: ExportProvider;
  logger?: NbdLogger;
  limits?: Partial<ServerLimits>;
  tls?: TlsSettings;
  /**
   * Learns the credentials of the peer of a Unix socket from its file
   * descriptor (getsockopt SO_PEERCRED; Node has no API for it, so the
   * caller supplies one). Absent, or returning null: ClientInfo.peer stays unset.
   */
  peerCredentials?: (fd: number) => PeerCredentials | null;
}

export interface ServerStats extends ConnectionStats {
  connections: number;
  connectionsTotal: number;
  connectionsRefused: number;
  /** The memory budget (limits.memoryBudget): limit, bytes held now and at peak, connections waiting. */
  budget: { limit: number; used: number; peak: number; waiting: number; refusals: number } | null;
}

export class NbdServer extends EventEmitter {
  readonly limits: ServerLimits;
  private readonly provider: ExportProvider;
  private readonly logger: NbdLogger;
  private tlsSettings: TlsSettings;
  private readonly peerCredentials: ((fd: number) => PeerCredentials | null) | undefined;
  private readonly sockets: net.Server[] = [];
  private readonly unixPaths: string[] = [];
  private readonly conns = new Set<Connection>();
  private readonly budget: MemoryBudget | undefined;
  private nextId = 1;
  private closing = false;
  private readonly counters: ConnectionStats = {
    requests: 0,
    bytesRead: 0,
    bytesWritten: 0,
    errors: 0,
    handshakeTimeouts: 0,
    stallDisconnects: 0,
  };
  private connectionsTotal = 0;
  private connectionsRefused = 0;

  constructor(opts: NbdServerOptions) {
    super();
    this.provider = opts.provider;
    this.logger = opts.logger ?? silentLogger;
    this.limits = { ...DEFAULT_LIMITS, ...(opts.limits ?? {}) };
    this.budget = this.limits.memoryBudget > 0 ? new MemoryBudget(this.limits.memoryBudget) : undefined;
    this.tlsSettings = opts.tls ?? { mode: 'off' };
    checkTlsSettings(this.tlsSettings);
    this.peerCredentials = opts.peerCredentials;
  }

  get tlsMode(): TlsSettings['mode'] {
    return this.tlsSettings.mode;
  }

  async listenTcp(host: string, port: number): Promise<{ address: string; port: number }> {
    const srv = this.makeListener('tcp');
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ host, port }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    const a = srv.address() as net.AddressInfo;
    this.logger.info({ address: a.address, port: a.port }, 'NBD listening on TCP');
    return { address: a.address, port: a.port };
  }

  async listenUnix(path: string): Promise<void> {
    // A stale socket from a dead process would make listen fail with EADDRINUSE.
    await removeStaleSocket(path);
    const srv = this.makeListener('unix');
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ path }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    this.unixPaths.push(path);
    this.logger.info({ path }, 'NBD listening on Unix socket');
  }

  /**
   * Serve one already-connected stream (stdio mode, socket activation,
   * tests). Resolves when the connection ends.
   */
  serveStream(stream: Duplex, transport = 'stdio', identity: Partial<Pick<ClientInfo, 'peer' | 'remoteAddress'>> = {}): Promise<void> {
    const c = this.accept(stream, { transport, id: this.nextId++, tls: false, ...identity });
    return c ? c.closed() : Promise.resolve();
  }

  /**
   * Stop listening and end every connection: gracefully (requests in
   * flight are served and answered, those only received get NBD_ESHUTDOWN,
   * as the spec asks of a server shutdown), and after `graceMs` by force.
   */
  async close(graceMs = 5000): Promise<void> {
    this.closing = true;
    // A net.Server finishes closing only when its connections are gone, so
    // end the connections (handshaking ones too) before waiting on it.
    const listenersClosed = this.sockets.map((l) => new Promise<void>((r) => l.close(() => r())));
    this.sockets.length = 0;
    const conns = [...this.conns];
    const graceful = Promise.all(conns.map((c) => c.shutdown()));
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      graceful.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs))),
    ]);
    clearTimeout(timer);
    if (late) {
      this.logger.warn({ connections: this.conns.size, graceMs }, 'connections still busy at shutdown: closing them');
      for (const c of this.conns) c.destroy();
    }
    await Promise.all([...conns.map((c) => c.closed()), ...listenersClosed]);
    for (const p of this.unixPaths) fs.rmSync(p, { force: true });
    this.unixPaths.length = 0;
  }

  /** Hard-disconnect every client of an export; returns how many. */
  disconnectExport(name: string): number {
    let n = 0;
    for (const c of this.conns) {
      if (c.exportName === name) {
        c.destroy();
        n++;
      }
    }
    if (n) this.logger.info({ export: name, connections: n }, 'disconnected clients of export');
    return n;
  }

  /** Resolves when no connection serves `name` any more. */
  async drainExport(name: string): Promise<void> {
    await Promise.all([...this.conns].filter((c) => c.exportName === name).map((c) => c.closed()));
  }

  connectionCount(exportName?: string): number {
    if (exportName === undefined) return this.conns.size;
    let n = 0;
    for (const c of this.conns) if (c.exportName === exportName) n++;
    return n;
  }

  stats(): ServerStats {
    return {
      ...this.counters,
      connections: this.conns.size,
      connectionsTotal: this.connectionsTotal,
      connectionsRefused: this.connectionsRefused,
      budget: this.budget ? this.budget.stats() : null,
    };
  }

  /** New TLS settings (rotated certificates) for connections accepted from now on; those up keep theirs. */
  setTls(settings: TlsSettings): void {
    checkTlsSettings(settings);
    this.tlsSettings = settings;
  }

  private makeListener(transport: 'tcp' | 'unix'): net.Server {
    const srv = net.createServer({ noDelay: true, pauseOnConnect: true, allowHalfOpen: true }, (raw) => {
      const info: ClientInfo = { transport, id: this.nextId++, tls: false };
      if (transport === 'tcp') {
        info.remoteAddress = raw.remoteAddress;
        info.remotePort = raw.remotePort;
      } else if (this.peerCredentials) {
        const fd = (raw as unknown as { _handle?: { fd?: number } })._handle?.fd;
        if (typeof fd === 'number' && fd >= 0) {
          try {
            const peer = this.peerCredentials(fd);
            if (peer) info.peer = peer;
          } catch (err) {
            this.logger.warn({ err: (err as Error).message }, 'cannot read Unix socket peer credentials');
          }
        }
      }
      if (this.tlsSettings.mode !== 'off') {
        // STARTTLS wraps the socket later; keep ordinary 'data' delivery.
        this.accept(raw, info);
        raw.resume();
        return;
      }
      // Re-wrap the accepted handle with Node's `onread` option so reads land
      // in buffers the connection chooses: a staging buffer, or the final
      // buffer of a large WRITE payload (no copy, few syscalls).
      let conn: Connection | null = null;
      const handle = (raw as unknown as { _handle: unknown })._handle;
      (raw as unknown as { _handle: unknown })._handle = null;
      raw.destroy(); // the husk: lets net.Server count the connection as gone
      const sock = new net.Socket({
        handle,
        allowHalfOpen: true,
        onread: {
          buffer: () => (conn ? conn.readBuffer() : Buffer.allocUnsafe(64 * 1024)),
          callback: (n: number, buf: Uint8Array) => (conn ? conn.onRead(n, buf as Buffer) : true),
        },
      } as net.SocketConstructorOpts);
      if (transport === 'tcp') sock.setNoDelay(true);
      conn = this.accept(sock, info);
      if (conn) sock.resume();
    });
    srv.on('error', (err) => this.logger.error({ err: err.message }, 'listener error'));
    this.sockets.push(srv);
    return srv;
  }

  private accept(sock: Duplex, info: ClientInfo): Connection | null {
    if (this.closing || this.conns.size >= this.limits.maxConnections) {
      this.connectionsRefused++;
      this.logger.warn({ conn: info.id, remote: info.remoteAddress }, 'connection refused: limit or shutdown');
      sock.destroy();
      return null;
    }
    this.connectionsTotal++;
    this.logger.debug({ conn: info.id, transport: info.transport, remote: info.remoteAddress }, 'connection');
    const c = new Connection(sock, info, {
      provider: this.provider,
      limits: this.limits,
      logger: this.logger,
      tls: this.tlsSettings,
      stats: this.counters,
      budget: this.budget,
      onClose: (conn) => {
        this.conns.delete(conn);
        this.emit('connection-closed', conn.info);
      },
    });
    this.conns.add(c);
    return c;
  }
}

async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`another server is listening on ${path}`);
  fs.rmSync(path, { force: true });
}
