/**
 * `rewind serve`: the daemon.
 *
 * Start-up: create the data directory (0700) if missing, take the
 * data-directory lock (see lock.ts), check its format (data-format.ts:
 * a newer one is refused), write the pid file, make sure the
 * control token exists, open the LMDB catalog, create the `default` volume
 * on first start, then listen for NBD (TCP and Unix socket) and for the
 * control API (Unix socket, plus optional TCP with a bearer token).
 *
 * SIGHUP reloads the TLS certificates (certificates.ts; also when their files
 * change).
 *
 * Shutdown on SIGTERM or SIGINT: stop the control API, close the NBD
 * server (stops accepting, ends every connection), close the shared images,
 * close LMDB, remove the pid and lock files. A second signal, or shutdown
 * taking more than 15 s, exits at once.
 *
 * UV_THREADPOOL_SIZE is raised to 16 by src/util/threadpool.ts, imported
 * first by the CLI entry point, before anything can start libuv's pool.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { Catalog } from '../catalog/catalog';
import { ControlServer, hostPort, type NbdEndpoints } from '../control/server';
import { NbdServer, type NbdServerOptions } from '../nbd';
import type { PeerCredentials } from '../nbd';
import { nativeAvailable, peerCredentials, setBackgroundNice } from '../native';
import type { NbdSettings } from '../daemon/nbd-settings';
import type { HostPort } from '../util/address';
import { isLoopback } from '../util/address';
import { formatSize } from '../util/size';
import { threadpoolSize } from '../util/threadpool';
import { rewindVersion } from '../util/version';
import { DataDirLock } from '../daemon/lock';
import { dataDirLayout, type DataDirLayout } from '../daemon/paths';
import { checkDataDir, DATA_DIR_FORMAT, markDataDir } from '../daemon/data-format';
import { ensureControlToken } from '../daemon/token';
import { VolumeManager } from '../daemon/volumes';
import type { ImageBackend } from '../storage/image';
import { Protection } from '../daemon/protection';
import { TimeTravel, type TimeTravelHost } from '../timetravel/service';
import { faultController, FAULTS_ENV } from '../daemon/fault-injection';
import type { RemoteManagerOptions } from '../daemon/protection';
import type { TlsFiles, TlsSettings } from '../tls';
import { LinkServer } from '../link/server';
import { managerConsoleSource, managerRoutes, managerTimeTravelHost } from './manager-role';
import { RemoteRestoreResumer } from './remote-restores';
import { watchCertificates } from './certificates';
import type { CertReloader } from '../daemon/cert-reload';
import { RetentionService } from '../daemon/retention';
import { Archiver } from '../timetravel/archiver';
import { FileCatalog } from '../file-catalog/service';
import { DEFAULT_SCRUB, ScrubService, type ScrubSettings } from '../daemon/scrub';
import { JobRegistry } from '../daemon/jobs';
import { consoleParts, type ConsoleParts } from './console-wiring';

export interface ServeConfig {
  dataDir: string;
  /** NBD over TCP; null disables it. */
  listen: HostPort | null;
  /** NBD over a Unix socket; null disables it. */
  socket: string | null;
  /** Control API Unix socket path. */
  controlSocket: string;
  /** Additional control API TCP listeners (bearer token required). */
  controlTcp: HostPort[];
  /** Size of the default volume created on first start, or null for none. */
  defaultVolumeSize: number | null;
  /** TLS and limits of the NBD server (see nbd-settings.ts); defaults: no TLS, DEFAULT_LIMITS. */
  nbd?: NbdSettings;
  /**
   * Two-role mode (src/link/). "intercept": volumes are served and
   * journaled here, the backup manager is remote (`remote`). "manager":
   * no volumes of its own; receives containers on `managerLink.listen`.
   */
  role?: 'single' | 'intercept' | 'manager';
  remote?: RemoteManagerOptions;
  managerLink?: { listen: HostPort; secret: Buffer | null; tls: TlsSettings; tlsFiles?: TlsFiles | null };
  /** The archive pool: state directory (default <data-dir>/archive), key file, leaf size of a new pool. */
  archive?: { dir?: string; keyFile?: string; leafSize?: number };
  /** The scrub's schedule and rate (daemon/scrub.ts); default DEFAULT_SCRUB. */
  scrub?: ScrubSettings;
}

/** The NBD server options a ServeConfig asks for: TLS, limits, Unix-socket peer credentials. */
export function nbdServerOptions(config: ServeConfig): Pick<NbdServerOptions, 'tls' | 'limits' | 'peerCredentials'> {
  const out: Pick<NbdServerOptions, 'tls' | 'limits' | 'peerCredentials'> = { peerCredentials: unixPeerCredentials };
  if (config.nbd) {
    out.tls = config.nbd.tls;
    out.limits = config.nbd.limits;
  }
  return out;
}

/** SO_PEERCRED through the native addon; null where it is not available. */
export function unixPeerCredentials(fd: number): PeerCredentials | null {
  return nativeAvailable() ? peerCredentials(fd) : null;
}

const MAX_UNIX_PATH = 107;

/**
 * Creates the data directory (mode 0700; missing parents get the usual
 * mode) if it does not exist. Returns true if it was created.
 */
export function ensureDataDir(dir: string): boolean {
  let created = false;
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
    created = true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      fs.mkdirSync(path.dirname(dir), { recursive: true });
      fs.mkdirSync(dir, { mode: 0o700 });
      created = true;
    } else if (code !== 'EEXIST') {
      throw err;
    }
  }
  if (!fs.statSync(dir).isDirectory()) throw new Error(`data directory ${dir} exists and is not a directory`);
  return created;
}

export class Daemon {
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly layout: DataDirLayout,
    private readonly logger: Logger,
    private readonly lock: DataDirLock,
    private readonly catalog: Catalog,
    private readonly protection: Protection,
    private readonly timeTravel: TimeTravel,
    private readonly nbd: NbdServer,
    private readonly control: ControlServer,
    private readonly retention: RetentionService,
    private readonly fileCatalog: FileCatalog,
    private readonly consoleParts: ConsoleParts,
    private readonly linkServer: LinkServer | null,
    private readonly certs: CertReloader,
    private readonly archiver: Archiver,
    private readonly scrub: ScrubService | null = null,
  ) {}

  /** SIGHUP: read every certificate file again (those that are not usable are refused, the old ones stay). */
  reloadCertificates(reason: string): void {
    this.certs.reloadAll(reason);
  }

  static async start(config: ServeConfig, logger: Logger, backend: ImageBackend): Promise<Daemon> {
    const layout = dataDirLayout(config.dataDir);
    for (const p of [config.socket, config.controlSocket]) {
      if (p && Buffer.byteLength(p) > MAX_UNIX_PATH) {
        throw new Error(`Unix socket path too long (${Buffer.byteLength(p)} bytes, limit ${MAX_UNIX_PATH}): ${p}`);
      }
    }
    if (ensureDataDir(layout.dataDir)) logger.info({ dataDir: layout.dataDir }, 'created data directory');
    const faults = faultController();
    if (faults) logger.warn({ controlFile: faults.file }, `fault injection is enabled (${FAULTS_ENV}): for tests only`);

    const lock = await DataDirLock.acquire(layout);
    const cleanups: (() => Promise<void> | void)[] = [() => lock.release()];
    const cleanup = async () => {
      for (const fn of cleanups.reverse()) {
        try {
          await fn();
        } catch (err) {
          logger.warn({ err: (err as Error).message }, 'cleanup after failed start');
        }
      }
    };
    try {
      // Before anything opens a store: a directory written by a newer Rewind is refused, never misread.
      const format = checkDataDir(layout.dataDir);
      const token = ensureControlToken(layout.tokenFile);
      fs.mkdirSync(layout.volumesDir, { recursive: true, mode: 0o700 });
      const catalog = Catalog.open(layout.dataDir);
      cleanups.push(() => catalog.close());
      const protection = new Protection(
        layout.dataDir,
        catalog,
        logger.child({ component: 'protection' }),
        config.role === 'intercept' ? (config.remote ?? null) : null,
      );
      cleanups.push(() => protection.close());
      await protection.start();
      let linkServer: LinkServer | null = null;
      if (config.role === 'manager') {
        const ml = config.managerLink!;
        linkServer = new LinkServer({
          dataDir: layout.dataDir,
          secret: ml.secret,
          tls: ml.tls,
          logger: logger.child({ component: 'link' }),
        });
        const ls = linkServer;
        cleanups.push(() => ls.close());
        await ls.start();
        await ls.listen(ml.listen.host, ml.listen.port);
      }
      const volumes = new VolumeManager(catalog, layout, backend, logger.child({ component: 'volumes' }), protection);

      let nbdRef: NbdServer | null = null;
      const hostBase = {
        volumeExists: (n: string) => catalog.get(n) !== undefined,
        disconnect: async (n: string) => {
          if (!nbdRef) return 0;
          const count = nbdRef.disconnectExport(n);
          await nbdRef.drainExport(n);
          return count;
        },
        setOffline: (v: string, reason: string | null) => volumes.setOffline(v, reason),
        logger: logger.child({ component: 'timetravel' }),
      };
      // Intercept role: a restore the remote manager runs takes volumes offline here (held ones at once).
      protection.setExportControl({ setOffline: hostBase.setOffline, disconnect: hostBase.disconnect });
      const ttHost: TimeTravelHost = linkServer
        ? managerTimeTravelHost(linkServer, hostBase)
        : {
            context: (v) => protection.context(v),
            target: (n) => protection.target(n),
            volumeName: (g, id) => protection.volumeName(g, id),
            ...hostBase,
          };
      const timeTravel = await TimeTravel.open(layout.dataDir, ttHost);
      cleanups.push(() => timeTravel.close());
      volumes.attachTimeTravel(timeTravel);
      // The volumes of a consistency group: the intercepts' (manager role) or this daemon's.
      const volumesOfGroup = (g: string): string[] =>
        linkServer
          ? linkServer
              .volumes()
              .filter((v) => v.group === g)
              .map((v) => v.name)
          : protection.groupVolumes(g);
      // The archive's hashing and compression yield to production I/O: nice 10 (about a tenth of a busy core), REWIND_ARCHIVE_NICE to change.
      const nice = setBackgroundNice(Math.min(19, Math.max(0, Number(process.env.REWIND_ARCHIVE_NICE ?? 10) || 0)));
      logger.debug({ nice }, 'archive jobs run at this nice level');
      const archiver = await Archiver.open(timeTravel, {
        dir: config.archive?.dir ?? path.join(layout.dataDir, 'archive'),
        ...(config.archive?.keyFile ? { keyFile: config.archive.keyFile } : {}),
        ...(config.archive?.leafSize ? { leafSize: config.archive.leafSize } : {}),
        host: ttHost,
        groupVolumes: volumesOfGroup,
      });
      // Closed after time travel (registered first, so it runs last): views read the pool until then.
      cleanups.splice(cleanups.length - 1, 0, () => archiver.close());
      // The catalog of files inside points: markers are cataloged as they are placed (seed 004).
      const fileCatalog = await FileCatalog.open({
        dataDir: layout.dataDir,
        tt: timeTravel,
        logger: logger.child({ component: 'file-catalog' }),
        volumesOfGroup,
      });
      cleanups.push(() => fileCatalog.close());
      timeTravel.markers.onPlaced((m) => fileCatalog.onMarkerPlaced(m));
      volumes.onProtectedRemoved((n) => fileCatalog.volumeRemoved(n));
      if (linkServer) {
        // Manager role: interrupted restores go on whenever their intercept is connected (not once at start-up).
        const resumer = new RemoteRestoreResumer(linkServer, timeTravel, logger.child({ component: 'timetravel' }));
        cleanups.push(() => resumer.close());
      }
      // Every store has opened (and recorded its own version): the directory is current. Before any listener.
      await markDataDir(layout.dataDir, format);
      if (format.found === 1)
        logger.info({ dataDir: layout.dataDir, from: 1, to: DATA_DIR_FORMAT }, 'data directory upgraded to the current format');
      // Retention starts after time travel has re-pinned its views (fading respects pins).
      const jobs = new JobRegistry();
      fileCatalog.jobs.reporter = jobs;
      const retention = new RetentionService(protection, catalog, logger.child({ component: 'retention' }), process.env, jobs);
      cleanups.push(() => retention.stop());
      const ls = linkServer;
      const scrub = new ScrubService(
        ls ? () => ls.managers() : () => protection.managers(),
        config.scrub ?? DEFAULT_SCRUB,
        logger.child({ component: 'scrub' }),
        (name) => (ls ? ls.find(name).g.name : protection.target(name).group),
      );
      cleanups.push(() => scrub.stop());
      const consoleBits = consoleParts({
        dataDir: layout.dataDir,
        catalog,
        protection,
        timeTravel,
        linkServer,
        served: config.controlTcp.length > 0,
        logger: logger.child({ component: 'console' }),
      });
      cleanups.push(() => consoleBits.close());
      const RESTORING = 'an interrupted production restore is being finished';
      const restoring = new Set([...timeTravel.restores.pendingRestoreVolumes(), ...protection.heldVolumes()]);
      for (const v of protection.recoveringVolumes())
        volumes.setOffline(v, 'recovering from an unclean stop (the manager catches up, dirty regions are compared with the replica)', {
          recovering: true,
        });
      for (const v of restoring) volumes.setOffline(v, RESTORING);

      if (config.defaultVolumeSize !== null && config.role !== 'manager') {
        const made = await volumes.ensureDefaultVolume(config.defaultVolumeSize);
        if (made) logger.info({ volume: made.name }, `created the default volume (${formatSize(made.size)})`);
      }

      const nbd = new NbdServer({ provider: volumes, logger: logger.child({ component: 'nbd' }), ...nbdServerOptions(config) });
      nbdRef = nbd;
      cleanups.push(() => nbd.close());
      const endpoints: NbdEndpoints = {};
      if (config.listen) {
        const a = await nbd.listenTcp(config.listen.host, config.listen.port);
        endpoints.tcp = { host: config.listen.host, port: a.port };
      }
      if (config.socket) {
        await nbd.listenUnix(config.socket);
        endpoints.unix = config.socket;
      }

      const certs = watchCertificates(
        {
          nbd,
          nbdSettings: config.nbd,
          link:
            linkServer && config.managerLink
              ? { server: linkServer, tls: config.managerLink.tls, files: config.managerLink.tlsFiles }
              : null,
          protection,
        },
        logger.child({ component: 'tls' }),
      );
      cleanups.push(() => certs.close());
      const control = new ControlServer({
        version: rewindVersion(),
        dataDir: layout.dataDir,
        volumes,
        protection,
        timeTravel,
        retention,
        archiver,
        fileCatalog,
        ...(linkServer ? { volumeExists: (n: string) => linkServer!.volumes().some((v) => v.name === n) } : {}),
        scrub,
        nbd,
        endpoints,
        token,
        logger: logger.child({ component: 'control' }),
        certificates: certs,
        jobs,
        console: {
          assets: consoleBits.assets,
          timeline: consoleBits.timeline,
          role: config.role ?? 'single',
          ...(linkServer ? { source: managerConsoleSource(linkServer, timeTravel, endpoints) } : {}),
        },
        ...(linkServer ? { extraRoutes: managerRoutes(linkServer, timeTravel) } : {}),
      });
      cleanups.push(() => control.close());
      await control.listenUnix(config.controlSocket);
      for (const t of config.controlTcp) {
        if (!isLoopback(t.host)) {
          logger.warn({ host: t.host }, 'control API on a non-loopback address: protected only by the bearer token, without TLS');
        }
        await control.listenTcp(t.host, t.port);
      }

      logger.info(
        {
          version: rewindVersion(),
          dataDir: layout.dataDir,
          nbdTcp: endpoints.tcp ? hostPort(endpoints.tcp.host, endpoints.tcp.port) : null,
          nbdUnix: endpoints.unix ?? null,
          control: config.controlSocket,
          volumes: catalog.count(),
          threadpool: threadpoolSize(),
          tls: config.nbd?.tls.mode ?? 'off',
          limits: nbd.limits,
        },
        'rewind daemon ready',
      );
      // Crash recovery, then restores a crash interrupted, in the background; their volumes stay offline until then.
      void (async () => {
        await protection.recover((v, ok) => {
          if (!ok) volumes.setOffline(v, 'crash recovery failed (see the log); restart the daemon to retry');
          // A volume a restore holds stays offline (a hold may also have begun during recovery).
          else if (!restoring.has(v) && !protection.heldVolumes().includes(v)) volumes.setOffline(v, null);
        });
        if (!linkServer) await timeTravel.restores.resumeRestores();
      })().catch((err) => logger.error({ err: (err as Error).message }, 'background recovery failed'));
      retention.start();
      scrub.start();
      return new Daemon(
        layout,
        logger,
        lock,
        catalog,
        protection,
        timeTravel,
        nbd,
        control,
        retention,
        fileCatalog,
        consoleBits,
        linkServer,
        certs,
        archiver,
        scrub,
      );
    } catch (err) {
      await cleanup();
      throw err;
    }
  }

  /** Graceful shutdown; idempotent. */
  stop(reason: string): Promise<void> {
    if (!this.stopping) this.stopping = this.doStop(reason);
    return this.stopping;
  }

  private async doStop(reason: string): Promise<void> {
    this.logger.info({ reason }, 'shutting down');
    const step = async (what: string, fn: () => Promise<void> | void) => {
      try {
        await fn();
      } catch (err) {
        this.logger.error({ err: (err as Error).message }, `shutdown: ${what} failed`);
      }
    };
    this.certs.close();
    await step('closing control API', () => this.control.close());
    if (this.linkServer) await step('closing the manager link', () => this.linkServer!.stopLink());
    await step('closing NBD server', () => this.nbd.close());
    await step('stopping retention', () => this.retention.stop());
    await step('stopping the scrub', () => this.scrub?.stop());
    await step('saving the console state', () => this.consoleParts.close());
    await step('closing the file catalog', () => this.fileCatalog.close());
    await step('closing snapshots and clones', () => this.timeTravel.close());
    await step('closing the archive pool', () => this.archiver.close());
    await step('closing protection (journals, managers)', () => this.protection.close());
    if (this.linkServer) await step('closing the manager link', () => this.linkServer!.close());
    await step('closing catalog', () => this.catalog.close());
    await step('releasing data directory', () => this.lock.release());
    this.logger.info('stopped');
  }
}

/**
 * Runs the daemon until a signal stops it. Resolves with the process exit
 * code; throws if start-up fails.
 */
export async function runDaemon(config: ServeConfig, logger: Logger, backend: ImageBackend): Promise<number> {
  const daemon = await Daemon.start(config, logger, backend);
  return new Promise<number>((resolve) => {
    let signalled = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (signalled) {
        logger.warn({ signal }, 'second signal during shutdown: exiting now');
        resolve(1);
        return;
      }
      signalled = true;
      const timer = setTimeout(() => {
        logger.error('shutdown took more than 15 s: exiting anyway');
        resolve(1);
      }, 15_000);
      timer.unref();
      daemon.stop(signal).then(
        () => {
          clearTimeout(timer);
          resolve(0);
        },
        (err: unknown) => {
          logger.error({ err: (err as Error).message }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    process.on('SIGHUP', () => {
      logger.info('SIGHUP: reloading certificates');
      daemon.reloadCertificates('SIGHUP');
    });
  });
}
