/**
 * The control API: a small JSON-over-HTTP server (node:http) on the Unix
 * socket <data-dir>/control.sock and, optionally, on a TCP address.
 *
 * Access control:
 * - The Unix socket is created with mode 0600 (the process umask is
 *   tightened around bind, then the mode is set explicitly), so only the
 *   daemon's user (and root) can connect. No token is needed on it.
 * - Every request on a TCP listener must carry
 *   `Authorization: Bearer <token>` with the token from
 *   <data-dir>/control.token (see daemon/token.ts); others get 401.
 *
 * Robustness: request bodies are limited to 64 KiB (413), bodies must be a
 * JSON object (400), unknown routes are 404 and wrong methods 405. Handler
 * failures become a JSON 500 and are logged; nothing a client sends can take
 * the daemon down.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as client from 'prom-client';
import { UserError } from '../util/errors';
import { HttpError, allow, httpStatusOf, readJsonObject, sendJson } from '../util/http';
import { tokenMatches } from '../daemon/token';
import { DEFAULT_VOLUME, type VolumeManager } from '../daemon/volumes';

import type { VolumeRecord } from '../catalog/catalog';
import type { Protection } from '../daemon/protection';
import type { TimeTravel } from '../timetravel/service';
import { routeTimeTravel } from './timetravel-routes';
import type { RetentionService } from '../daemon/retention';
import { routeRetention } from './retention-routes';
import type { Archiver } from '../timetravel/archiver';
import { routeArchives } from './archive-routes';
import { registerArchiveMetrics } from './archive-metrics';
import type { FileCatalog } from '../file-catalog/service';
import { routeFiles } from './file-routes';
import type { ScrubService } from '../daemon/scrub';
import { routeScrub, scrubMetrics } from './scrub-routes';
import { API_PREFIX, type CreateVolumeBody, type DeleteResult, type Health, type VolumeView } from './api';
import { type Logger } from '../util/logger';
import type { CertStatus } from '../daemon/cert-reload';
import { tracked, type JobRegistry } from '../daemon/jobs';
import type { ConsoleAssets } from '../console/assets';
import { EventHub } from '../console/events';
import type { TimelineService } from '../console/timeline';
import { buildLiveState, daemonConsoleSource, type ConsoleSource } from './console-overview';
import { routeConsole, type ConsoleRouteDeps } from './console-routes';
import { hostPort, nbdUris, type NbdEndpoints } from './endpoints';

export { hostPort, nbdUris, type NbdEndpoints } from './endpoints';

/** What the control server needs from the NBD server. */
export interface NbdServerView {
  stats(): {
    connections: number;
    requests: number;
    bytesRead: number;
    bytesWritten: number;
    errors: number;
    connectionsRefused?: number;
    handshakeTimeouts?: number;
    stallDisconnects?: number;
    budget?: { limit: number; used: number; peak: number; waiting: number } | null;
  };
  disconnectExport(name: string): number;
  drainExport(name: string): Promise<void>;
  connectionCount(exportName?: string): number;
}

export interface ControlServerOptions {
  version: string;
  dataDir: string;
  volumes: VolumeManager;
  protection: Protection;
  timeTravel?: TimeTravel;
  retention?: RetentionService;
  archiver?: Archiver;
  /** The catalog of files inside points (file-routes.ts). */
  fileCatalog?: FileCatalog;
  /** Does a volume by this name exist here (file routes; default: the volume catalog)? */
  volumeExists?: (name: string) => boolean;
  scrub?: ScrubService;
  nbd: NbdServerView;
  endpoints: NbdEndpoints;
  token: string;
  logger: Logger;
  /** Certificates in use and their reloads (cert-reload.ts); reload() runs one now. */
  certificates?: { status(): CertStatus[]; reloadAll(reason: string): CertStatus[] };
  /** Routes tried before the ordinary volume routes (the manager role's replicated volumes). */
  extraRoutes?: (req: http.IncomingMessage, res: http.ServerResponse, method: string, p: string, url: URL) => Promise<boolean>;
  /** Long operations report here (GET /v1/jobs): restores, exports, diffs, verifies, fades. */
  jobs?: JobRegistry;
  /**
   * The web console: its static files on the TCP listeners (at /, without
   * the token), its routes (console-routes.ts) everywhere. `source` defaults
   * to this daemon's volumes and protection (the manager role brings its own).
   */
  console?: { assets: ConsoleAssets | null; timeline: TimelineService; source?: ConsoleSource; role?: ConsoleSource['role'] };
}

const CREATE_FIELDS = new Set(['name', 'size', 'readOnly', 'path', 'description', 'protected', 'group', 'allow']);

export class ControlServer {
  private readonly servers: { server: http.Server; unixPath?: string }[] = [];
  private readonly startedAt = Date.now();
  readonly registry = new client.Registry();

  private readonly consoleDeps: ConsoleRouteDeps | null = null;

  constructor(private readonly opts: ControlServerOptions) {
    this.setupMetrics();
    if (opts.console && opts.jobs) {
      const source = opts.console.source ?? this.consoleSource(opts.console.role ?? 'single');
      const jobs = opts.jobs;
      this.consoleDeps = {
        timeline: opts.console.timeline,
        jobs,
        source,
        events: new EventHub(() => buildLiveState(source, jobs), {
          onError: (err) => opts.logger.warn({ err: err.message }, 'console: live state failed'),
        }),
      };
    }
  }

  /** What the console shows of this daemon's own volumes. */
  private consoleSource(role: ConsoleSource['role']): ConsoleSource {
    const o = this.opts;
    return daemonConsoleSource({
      role,
      version: o.version,
      endpoints: o.endpoints,
      volumes: () => Promise.all(o.volumes.listRecords().map((r) => this.view(r))),
      protection: o.protection,
      views: () => o.timeTravel?.views.list() ?? [],
    });
  }

  /** Listens on a Unix socket created with mode 0600. */
  async listenUnix(socketPath: string): Promise<void> {
    await removeStaleSocket(socketPath);
    const server = this.makeServer(false);
    const oldUmask = process.umask(0o177);
    try {
      await listen(server, { path: socketPath });
    } finally {
      process.umask(oldUmask);
    }
    fs.chmodSync(socketPath, 0o600);
    this.servers.push({ server, unixPath: socketPath });
    this.opts.logger.info({ path: socketPath }, 'control API listening on Unix socket');
  }

  /** Listens on TCP; every request must carry the bearer token. */
  async listenTcp(host: string, port: number): Promise<{ address: string; port: number }> {
    const server = this.makeServer(true);
    await listen(server, { host, port });
    this.servers.push({ server });
    const a = server.address() as AddressInfo;
    this.opts.logger.info({ address: a.address, port: a.port }, 'control API listening on TCP (bearer token required)');
    return { address: a.address, port: a.port };
  }

  async close(): Promise<void> {
    this.consoleDeps?.events.close();
    await Promise.all(
      this.servers.map(
        ({ server, unixPath }) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
            if (unixPath) fs.rmSync(unixPath, { force: true });
          }),
      ),
    );
    this.servers.length = 0;
  }

  private makeServer(requireToken: boolean): http.Server {
    const server = http.createServer({ connectionsCheckingInterval: 2_000 }, (req, res) => {
      this.handle(req, res, requireToken).catch((err: unknown) => {
        this.opts.logger.error({ err: (err as Error).message }, 'control request failed');
        if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    });
    // Checked every 2 s (the default is 30 s), so an idle connection closes near its deadline.
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    server.keepAliveTimeout = 5_000;
    server.maxHeadersCount = 100;
    server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      this.opts.logger.debug({ code: err.code, err: err.message }, 'control connection error');
      // As Node's default: a connection idle past headersTimeout (a browser's
      // preconnected socket) gets 408, which browsers retry on a fresh
      // connection; a 400 there reads as the answer to the next request. And
      // nothing is written into a response already under way.
      const busy = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
      if (!socket.writable || busy) return socket.destroy();
      socket.end(`HTTP/1.1 ${clientErrorStatus(err.code)}\r\nConnection: close\r\n\r\n`);
    });
    return server;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, requireToken: boolean): Promise<void> {
    try {
      // The console's static files hold no data: served without the token, on TCP listeners only.
      const assets = this.opts.console?.assets;
      if (requireToken && assets && (req.method === 'GET' || req.method === 'HEAD')) {
        const pathname = new URL(req.url ?? '/', 'http://control').pathname;
        if (assets.serve(req, res, pathname)) return;
      }
      if (requireToken) {
        const auth = req.headers.authorization;
        const m = auth ? /^Bearer\s+(\S+)\s*$/i.exec(auth) : null;
        if (!tokenMatches(m?.[1], this.opts.token)) {
          res.setHeader('WWW-Authenticate', 'Bearer realm="rewind"');
          throw new HttpError(
            401,
            'missing or invalid bearer token: the TCP control API needs "Authorization: Bearer <token>" ' +
              'with the token from <data-dir>/control.token',
          );
        }
      }
      await this.route(req, res);
    } catch (err) {
      let status: number;
      let message: string;
      if (err instanceof HttpError) {
        status = err.status;
        message = err.message;
      } else if (err instanceof UserError) {
        status = httpStatusOf(err);
        message = err.message;
      } else {
        status = 500;
        message = `internal error: ${(err as Error).message}`;
        this.opts.logger.error({ err: (err as Error).stack, method: req.method, url: req.url }, 'control request failed');
      }
      if (status >= 400 && status < 500) {
        this.opts.logger.debug({ status, method: req.method, url: req.url, error: message }, 'control request rejected');
      }
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // If the body was not read (e.g. 401, 413), do not keep the connection.
      if (!req.complete) res.setHeader('Connection', 'close');
      sendJson(res, status, { error: message });
      if (!req.complete) req.resume();
    }
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://control');
    const method = req.method ?? 'GET';
    const p = url.pathname.replace(/\/+$/, '') || '/';

    if (p === `${API_PREFIX}/health`) {
      allow(method, ['GET', 'HEAD']);
      return sendJson(res, 200, this.health());
    }
    if (p === `${API_PREFIX}/certificates/reload`) {
      allow(method, ['POST']);
      const certs = this.opts.certificates;
      if (!certs || certs.status().length === 0) throw new HttpError(409, 'no TLS certificates are in use');
      const st = certs.reloadAll('control API');
      const failed = st.filter((s) => s.lastError);
      return sendJson(res, failed.length ? 422 : 200, { certificates: st });
    }
    if (p === `${API_PREFIX}/metrics`) {
      allow(method, ['GET', 'HEAD']);
      const text = await this.registry.metrics();
      res.writeHead(200, { 'Content-Type': this.registry.contentType, 'Cache-Control': 'no-store' });
      res.end(text);
      return;
    }
    if (this.opts.scrub && (await routeScrub(this.opts.scrub, req, res, method, p))) return;
    if (this.opts.extraRoutes && (await this.opts.extraRoutes(req, res, method, p, url))) return;
    if (p === `${API_PREFIX}/volumes`) {
      allow(method, ['GET', 'HEAD', 'POST']);
      if (method === 'POST') {
        const body = await readJsonObject(req);
        const created = await this.createVolume(body);
        res.setHeader('Location', `${API_PREFIX}/volumes/${encodeURIComponent(created.name)}`);
        return sendJson(res, 201, created);
      }
      const views = await Promise.all(this.opts.volumes.listRecords().map((r) => this.view(r)));
      return sendJson(res, 200, { volumes: views });
    }
    if (this.opts.retention && (await routeRetention(this.opts.retention, req, res, method, p))) return;
    if (this.opts.fileCatalog) {
      const exists = this.opts.volumeExists ?? ((n: string) => this.opts.volumes.get(n) !== undefined);
      if (await routeFiles(this.opts.fileCatalog, exists, req, res, method, p, url)) return;
    }
    if (this.consoleDeps && (await routeConsole(this.consoleDeps, req, res, method, p, url))) return;
    if (this.opts.archiver && (await routeArchives(this.opts.archiver, req, res, method, p, this.opts.jobs))) return;
    if (this.opts.timeTravel && (await routeTimeTravel(this.opts.timeTravel, this.opts.volumes, req, res, method, p, url, this.opts.jobs)))
      return;
    const action = /^\/v1\/volumes\/([^/]+)\/(status|seal|log|verify)$/.exec(p);
    if (action) {
      let name: string;
      try {
        name = decodeURIComponent(action[1]!);
      } catch {
        throw new HttpError(400, 'malformed volume name in URL');
      }
      const record = this.opts.volumes.get(name);
      if (!record) throw new HttpError(404, `no volume named "${name}"`);
      if (!record.protection) throw new HttpError(409, `volume "${name}" is not protected (create it with --protected)`);
      const prot = this.opts.protection;
      switch (action[2]) {
        case 'status':
          allow(method, ['GET', 'HEAD']);
          return sendJson(res, 200, prot.status(name));
        case 'seal':
          allow(method, ['POST']);
          return sendJson(res, 200, await prot.seal(name));
        case 'log': {
          allow(method, ['GET', 'HEAD']);
          const limit = url.searchParams.get('limit');
          return sendJson(res, 200, { transactions: prot.log(name, limit ? { limit: Number(limit) } : {}) });
        }
        case 'verify': {
          allow(method, ['POST']);
          const full = url.searchParams.get('full') === '1';
          const run = tracked(
            this.opts.jobs,
            'verify',
            name,
            full ? 'full' : '',
            () => prot.verify(name, { full }),
            (r) => (r.ok ? 'replica equals production; history checks out' : 'MISMATCH: see the report'),
          );
          return sendJson(res, 200, await run(() => undefined));
        }
      }
    }
    if (p.startsWith(`${API_PREFIX}/volumes/`)) {
      const rest = p.slice(`${API_PREFIX}/volumes/`.length);
      // A name never holds a raw "/": anything longer is an endpoint this daemon does not have.
      if (rest.includes('/')) throw new HttpError(404, `no such endpoint: ${method} ${url.pathname}`);
      let name: string;
      try {
        name = decodeURIComponent(rest);
      } catch {
        throw new HttpError(400, 'malformed volume name in URL');
      }
      allow(method, ['GET', 'HEAD', 'DELETE']);
      if (method === 'DELETE') {
        const keepData = flag(url.searchParams.get('keepData'), 'keepData');
        const result = await this.opts.volumes.remove(name, {
          keepData,
          disconnect: (n) => this.opts.nbd.disconnectExport(n),
          drained: (n) => this.opts.nbd.drainExport(n),
        });
        const out: DeleteResult = {
          deleted: name,
          disconnected: result.disconnected,
          dataDeleted: result.dataDeleted,
          path: result.record.path,
        };
        return sendJson(res, 200, out);
      }
      const record = this.opts.volumes.get(name);
      if (!record) throw new HttpError(404, `no volume named "${name}"`);
      return sendJson(res, 200, await this.view(record));
    }
    throw new HttpError(404, `no such endpoint: ${method} ${url.pathname}`);
  }

  private health(): Health {
    const { tcp, unix } = this.opts.endpoints;
    return {
      ok: true,
      version: this.opts.version,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      dataDir: this.opts.dataDir,
      nbd: { tcp: tcp ? hostPort(tcp.host, tcp.port) : null, unix: unix ?? null },
      volumes: this.opts.volumes.listRecords().length,
      connections: this.opts.nbd.connectionCount(),
      recovering: this.opts.volumes.recoveringVolumes(),
      certificates: this.opts.certificates?.status() ?? [],
    };
  }

  private async createVolume(body: Record<string, unknown>): Promise<VolumeView> {
    for (const key of Object.keys(body)) {
      if (!CREATE_FIELDS.has(key)) {
        throw new HttpError(400, `unknown field "${key}" (expected name, size, readOnly, path, description, protected, group, allow)`);
      }
    }
    const b = body as Partial<CreateVolumeBody>;
    const record = await this.opts.volumes.create({
      name: b.name,
      size: b.size,
      readOnly: b.readOnly,
      path: b.path,
      description: b.description,
      protected: b.protected,
      group: b.group,
      allow: b.allow,
    });
    return this.view(record);
  }

  private async view(record: VolumeRecord): Promise<VolumeView> {
    const info = await this.opts.volumes.info(record);
    return {
      name: record.name,
      size: record.size,
      allocatedBytes: info.allocatedBytes,
      readOnly: record.readOnly,
      kind: record.kind,
      path: record.path,
      external: record.external,
      created: record.created,
      description: record.description,
      connections: this.opts.nbd.connectionCount(record.name),
      isDefaultExport: record.name === DEFAULT_VOLUME,
      uris: nbdUris(this.opts.endpoints, record.name),
      protection: record.protection ? { group: record.protection.group, volumeId: record.protection.volumeId } : null,
      offline: this.opts.volumes.offlineReason(record.name),
      allow: record.allow ?? [],
    };
  }

  private setupMetrics(): void {
    const reg = this.registry;
    const nbd = this.opts.nbd;
    const volumes = this.opts.volumes;
    reg.setDefaultLabels({});
    client.collectDefaultMetrics({ register: reg, prefix: 'rewind_process_' });
    new client.Gauge({
      name: 'rewind_nbd_connections',
      help: 'NBD connections currently open',
      registers: [reg],
      collect() {
        this.set(nbd.stats().connections);
      },
    });
    const budgetGauges: [string, string, 'limit' | 'used' | 'peak' | 'waiting'][] = [
      ['rewind_nbd_memory_budget_bytes', 'Memory budget shared by all NBD connections', 'limit'],
      ['rewind_nbd_memory_used_bytes', 'Bytes of the NBD memory budget held now', 'used'],
      ['rewind_nbd_memory_peak_bytes', 'Most bytes of the NBD memory budget held at once', 'peak'],
      ['rewind_nbd_memory_waiting_connections', 'NBD connections waiting for the memory budget', 'waiting'],
    ];
    for (const [name, help, key] of budgetGauges) {
      new client.Gauge({
        name,
        help,
        registers: [reg],
        collect() {
          const b = nbd.stats().budget;
          if (b) this.set(b[key]);
        },
      });
    }
    const counters: [string, string, Exclude<keyof ReturnType<NbdServerView['stats']>, 'budget'>][] = [
      ['rewind_nbd_requests_total', 'NBD requests handled', 'requests'],
      ['rewind_nbd_read_bytes_total', 'Bytes read by NBD clients', 'bytesRead'],
      ['rewind_nbd_written_bytes_total', 'Bytes written by NBD clients', 'bytesWritten'],
      ['rewind_nbd_errors_total', 'NBD requests that failed', 'errors'],
      ['rewind_nbd_connections_refused_total', 'NBD connections refused (connection limit or shutdown)', 'connectionsRefused'],
      ['rewind_nbd_handshake_timeouts_total', 'NBD connections closed for a handshake over the time limit', 'handshakeTimeouts'],
      ['rewind_nbd_stall_disconnects_total', 'NBD connections closed for leaving replies unread', 'stallDisconnects'],
    ];
    for (const [name, help, key] of counters) {
      let last = 0;
      new client.Counter({
        name,
        help,
        registers: [reg],
        collect() {
          const now = nbd.stats()[key] ?? 0;
          if (now > last) this.inc(now - last);
          last = now;
        },
      });
    }
    new client.Gauge({
      name: 'rewind_volumes',
      help: 'Volumes in the catalog',
      registers: [reg],
      collect() {
        this.set(volumes.listRecords().length);
      },
    });
    new client.Gauge({
      name: 'rewind_volume_size_bytes',
      help: 'Size of each volume in bytes',
      labelNames: ['volume'],
      registers: [reg],
      collect() {
        this.reset();
        for (const v of volumes.listRecords()) this.set({ volume: v.name }, v.size);
      },
    });
    const archiver = this.opts.archiver;
    if (archiver) registerArchiveMetrics(reg, () => archiver.stats());
    const fc = this.opts.fileCatalog;
    if (fc) {
      for (const [name, help, key] of [
        ['rewind_file_restores_total', 'Single files restored (content requests)', 'restores'],
        ['rewind_file_restore_bytes_total', 'Bytes of files restored', 'restoredBytes'],
        ['rewind_file_restore_image_bytes_total', 'Bytes of images read to restore files', 'restoreImageBytes'],
      ] as const) {
        new client.Gauge({
          name,
          help,
          registers: [reg],
          collect() {
            this.set(fc.counters[key]);
          },
        });
      }
    }
    if (this.opts.scrub) scrubMetrics(reg, this.opts.scrub);
    const start = Date.now();
    new client.Gauge({
      name: 'rewind_uptime_seconds',
      help: 'Seconds since the daemon started',
      registers: [reg],
      collect() {
        this.set((Date.now() - start) / 1000);
      },
    });
  }
}

function flag(value: string | null, name: string): boolean {
  if (value === null) return false;
  const v = value.toLowerCase();
  if (v === '' || v === '1' || v === 'true' || v === 'yes') return true;
  if (v === '0' || v === 'false' || v === 'no') return false;
  throw new HttpError(400, `${name} must be 1 or 0 (or true/false)`);
}

function listen(server: http.Server, where: { path: string } | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(where, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Removes a socket file left by a dead daemon (the caller holds the data-dir lock). */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${socketPath} exists and is not a socket`);
  fs.rmSync(socketPath, { force: true });
}

/** The status line for a connection-level error, as Node's default handler answers it. */
function clientErrorStatus(code: string | undefined): string {
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return '408 Request Timeout';
  if (code === 'HPE_HEADER_OVERFLOW') return '431 Request Header Fields Too Large';
  if (code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') return '413 Payload Too Large';
  return '400 Bad Request';
}
