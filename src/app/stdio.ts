/**
 * `rewind serve --stdio EXPORT`: serve exactly one NBD connection on stdin
 * and stdout, as `nbdkit -s` does, then exit. For libnbd's
 * connect_command (stdin and stdout are one end of a socketpair: nbdsh -c,
 * Python's h.connect_command), inetd and systemd `StandardInput=socket`,
 * and the fuzzer. Logs go to stderr (and --log-file) only: stdout carries
 * the protocol.
 *
 * Under systemd-style socket activation (LISTEN_PID is this process and
 * LISTEN_FDS >= 1: `nbdinfo -- [ rewind serve --stdio NAME ]`, systemd
 * Accept=no or Accept=yes) the connection comes from fd 3 instead: one
 * connection is accepted on it if it is a listening socket, or it is
 * served as is if it is already connected.
 *
 * It opens the data directory like the daemon (taking its lock, so it
 * refuses while a daemon runs on the same directory), with protection, so
 * writes to a protected volume are journaled exactly as over TCP. Only the
 * one export is listed and can be opened; its ACL applies, with the
 * identity of the peer of a Unix socketpair when there is one.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { Catalog } from '../catalog/catalog';
import type { ClientInfo, ExportListing, ExportProvider, OpenedExport } from '../nbd';
import { NbdServer } from '../nbd';
import { DataDirLock } from '../daemon/lock';
import { checkDataDir } from '../daemon/data-format';
import { dataDirLayout } from '../daemon/paths';
import { Protection } from '../daemon/protection';
import { ensureDataDir, nbdServerOptions, unixPeerCredentials, type ServeConfig } from './serve';
import { DEFAULT_VOLUME, VolumeManager } from '../daemon/volumes';
import type { ImageBackend } from '../storage/image';

/** An ExportProvider that shows only `name` of `inner` (the default export "" is that one too). */
export function singleExportProvider(inner: ExportProvider, name: string): ExportProvider {
  const matches = (n: string) => n === name || n === '';
  const out: ExportProvider = {
    async list(client: ClientInfo): Promise<ExportListing[]> {
      return (await inner.list(client)).filter((e) => e.name === name);
    },
    open(n: string, client: ClientInfo): Promise<OpenedExport | null> {
      return matches(n) ? inner.open(name, client) : Promise.resolve(null);
    },
  };
  if (inner.authorize) out.authorize = (n, client) => (matches(n) ? inner.authorize!(name, client) : false);
  return out;
}

/**
 * stdin+stdout as one stream: the socket itself when fds 0 and 1 are the
 * same socket (a socketpair from connect_command, inetd), else the two as
 * a pair (pipes, or the two socketpairs Node's spawn gives a child).
 */
export function stdioStream(): { stream: Duplex; isSocket: boolean } {
  let isSocket = false;
  try {
    const a = fs.fstatSync(0);
    const b = fs.fstatSync(1);
    isSocket = a.isSocket() && b.isSocket() && a.ino === b.ino && a.dev === b.dev;
  } catch {
    isSocket = false;
  }
  if (isSocket) {
    const sock = new net.Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
    return { stream: sock, isSocket };
  }
  return { stream: new PipePair(process.stdin, process.stdout), isSocket };
}

/** A readable and a writable stream (stdin, stdout pipes) as one Duplex, with backpressure both ways. */
export class PipePair extends Duplex {
  constructor(
    private readonly input: NodeJS.ReadableStream & { destroy?(): void },
    private readonly output: NodeJS.WritableStream & { destroy?(): void },
  ) {
    super({ allowHalfOpen: true });
    input.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) input.pause();
    });
    input.on('end', () => this.push(null));
    input.on('error', (err: Error) => this.destroy(err));
    output.on('error', (err: Error) => this.destroy(err));
    input.pause();
  }

  override _read(): void {
    this.input.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.output.write(chunk, (err?: Error | null) => cb(err));
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.output.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.input.destroy?.();
    cb(err);
  }
}

/** fd 3 when this process was socket-activated (LISTEN_PID/LISTEN_FDS), else null. The variables are consumed. */
export function activatedFd(env: NodeJS.ProcessEnv = process.env): number | null {
  const pid = Number(env.LISTEN_PID);
  const n = Number(env.LISTEN_FDS);
  if (pid !== process.pid || !(n >= 1)) return null;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  return 3;
}

/** The one connection of a socket-activated fd: accepted from it if it listens, else the fd itself. */
async function activatedStream(fd: number): Promise<{ stream: net.Socket; isSocket: true }> {
  const accepted = await new Promise<net.Socket | null>((resolve) => {
    const srv = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    srv.once('error', () => resolve(null));
    srv.once('connection', (sock) => {
      srv.close();
      resolve(sock);
    });
    srv.listen({ fd });
  });
  if (accepted) return { stream: accepted, isSocket: true };
  return { stream: new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true }), isSocket: true };
}

/** Serves one connection on stdio; resolves with the exit code once it has ended and everything is closed. */
export async function runStdio(config: ServeConfig, exportName: string, logger: Logger, backend: ImageBackend): Promise<number> {
  const layout = dataDirLayout(config.dataDir);
  ensureDataDir(layout.dataDir);
  const lock = await DataDirLock.acquire(layout);
  const closers: Array<() => Promise<void> | void> = [() => lock.release()];
  const closeAll = async () => {
    for (const fn of closers.splice(0).reverse()) {
      try {
        await fn();
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'stdio: close failed');
      }
    }
  };
  try {
    // Refuses a directory from a newer Rewind; the daemon (not this one-connection mode) records the current format.
    checkDataDir(layout.dataDir);
    fs.mkdirSync(layout.volumesDir, { recursive: true, mode: 0o700 });
    const catalog = Catalog.open(layout.dataDir);
    closers.push(() => catalog.close());
    const protection = new Protection(layout.dataDir, catalog, logger.child({ component: 'protection' }));
    closers.push(() => protection.close());
    await protection.start();
    // One connection, served once recovery (if an unclean stop needs one) is done.
    await protection.recover();
    const volumes = new VolumeManager(catalog, layout, backend, logger.child({ component: 'volumes' }), protection);
    if (config.defaultVolumeSize !== null) await volumes.ensureDefaultVolume(config.defaultVolumeSize);
    const name = exportName === '' ? DEFAULT_VOLUME : exportName;
    if (!volumes.get(name)) throw new Error(`no volume named "${name}" in ${layout.dataDir}`);

    const nbd = new NbdServer({
      provider: singleExportProvider(volumes, name),
      logger: logger.child({ component: 'nbd' }),
      ...nbdServerOptions(config),
    });
    closers.push(() => nbd.close());
    const fd = activatedFd();
    const { stream, isSocket } = fd !== null ? await activatedStream(fd) : stdioStream();
    const streamFd = fd !== null ? ((stream as unknown as { _handle?: { fd?: number } })._handle?.fd ?? fd) : 0;
    // The identity ACLs see: a TCP socket (inetd) by its address, a Unix
    // socket (socketpair, socket activation) by its peer's credentials;
    // plain pipes come from whoever started us, who can read the data
    // directory anyway: transport "stdio", which ACLs trust.
    const identity: Partial<Pick<ClientInfo, 'peer' | 'remoteAddress'>> = {};
    let transport = 'stdio';
    if (isSocket) {
      const remote = (stream as net.Socket).remoteAddress;
      if (remote) {
        transport = 'tcp';
        identity.remoteAddress = remote;
      } else {
        transport = 'unix';
        try {
          const peer = unixPeerCredentials(streamFd);
          if (peer) identity.peer = peer;
        } catch (err) {
          logger.warn({ err: (err as Error).message }, 'cannot read the peer credentials of stdin');
        }
      }
    }
    logger.info({ export: name, transport, peer: identity.peer, remote: identity.remoteAddress }, 'serving one NBD connection on stdio');
    const stop = () => stream.destroy();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    const served = nbd.serveStream(stream, transport, identity);
    stream.resume(); // an accepted socket starts paused
    await served;
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    logger.info({ stats: nbd.stats() }, 'stdio connection ended');
    await closeAll();
    return 0;
  } catch (err) {
    await closeAll();
    throw err;
  }
}
