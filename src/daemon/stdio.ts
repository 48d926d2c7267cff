/**
 * `rewind serve --stdio EXPORT`: serve exactly one NBD connection on stdin
 * and stdout, as `nbdkit -s` does, then exit. For libnbd's
 * `nbdinfo -- [ rewind serve --stdio NAME ]` (connect_command: stdin and
 * stdout are one end of a socketpair), inetd-style socket activation, and
 * the fuzzer. Logs go to stderr (and --log-file) only: stdout carries the
 * protocol.
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
import type { ClientInfo, ExportListing, ExportProvider, OpenedExport } from '../nbd/export';
import { NbdServer } from '../nbd/server';
import { DataDirLock } from './lock';
import { dataDirLayout } from './paths';
import { Protection } from './protection';
import { ensureDataDir, nbdServerOptions, unixPeerCredentials, type ServeConfig } from './serve';
import { DEFAULT_VOLUME, VolumeManager, type ImageBackend } from './volumes';

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

/** stdin+stdout as one stream: the socket itself when fd 0 is a socket (socketpair, inetd), else a pair of pipes. */
export function stdioStream(): { stream: Duplex; isSocket: boolean } {
  let isSocket = false;
  try {
    isSocket = fs.fstatSync(0).isSocket();
  } catch {
    isSocket = false;
  }
  if (isSocket) {
    const sock = new net.Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
    return { stream: sock, isSocket };
  }
  const stream = Duplex.from({ readable: process.stdin, writable: process.stdout });
  return { stream, isSocket };
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
    fs.mkdirSync(layout.volumesDir, { recursive: true, mode: 0o700 });
    const catalog = Catalog.open(layout.dataDir);
    closers.push(() => catalog.close());
    const protection = new Protection(layout.dataDir, catalog, logger.child({ component: 'protection' }));
    closers.push(() => protection.close());
    await protection.start();
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
    const { stream, isSocket } = stdioStream();
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
          const peer = unixPeerCredentials(0);
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
    await nbd.serveStream(stream, transport, identity);
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
