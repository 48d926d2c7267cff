/**
 * `rewind serve` options of the two-role mode (src/link/):
 *
 *   rewind serve --role manager   [--listen HOST:PORT] --link-secret-file F [--link-tls off|on|require --link-tls-dir D [--link-tls-verify-client]]
 *   rewind serve --role intercept --manager HOST:PORT  --link-secret-file F [--link-tls on --link-tls-dir D] [--link-pool 1G] [--link-window 4]
 *
 * In the manager role --listen is the link's address (default 0.0.0.0:10810)
 * and no NBD TCP listener is opened unless --nbd-listen is given (snapshots
 * and clones are served on the Unix socket and there).
 * Certificates: the manager's --link-tls-dir holds server-cert.pem,
 * server-key.pem, ca-cert.pem; the intercept's holds ca-cert.pem and, for
 * certificate authentication, client-cert.pem and client-key.pem.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Option, type Command } from 'commander';
import type { ServeConfig } from '../app/serve';
import { checkTlsSettings, type TlsFiles, type TlsSettings } from '../tls';
import { readLinkTlsClient, type LinkTlsFiles } from '../link/client';
import { parseHostPort } from '../util/address';
import { parseSize } from '../util/size';
import { DEFAULT_LINK_PORT } from '../link/protocol';
import { CliError, EXIT } from './common';

export interface LinkServeOptions {
  role?: string;
  manager?: string;
  nbdListen?: string;
  linkSecretFile?: string;
  linkTls?: string;
  linkTlsDir?: string;
  linkTlsVerifyClient?: boolean;
  linkTlsServername?: string;
  linkPool?: string;
  linkWindow?: string;
}

export function addLinkServeOptions(serve: Command): Command {
  return serve
    .addOption(
      new Option('--role <role>', 'single (default: intercept and manager in one process), intercept, or manager').choices([
        'single',
        'intercept',
        'manager',
      ]),
    )
    .option('--manager <host:port>', `intercept role: the backup manager's link address (port default ${DEFAULT_LINK_PORT})`)
    .option('--nbd-listen <host:port>', 'manager role: NBD TCP address for snapshots and clones (default: none, Unix socket only)')
    .option(
      '--link-secret-file <file>',
      'shared secret both roles authenticate each other with (default <data-dir>/link.secret if it exists)',
    )
    .addOption(
      new Option(
        '--link-tls <mode>',
        'link TLS: manager: off, on (TLS or plaintext), require; intercept: off, or on/require to connect with TLS',
      ).choices(['off', 'on', 'require']),
    )
    .option(
      '--link-tls-dir <dir>',
      'link certificates (manager: server-cert.pem, server-key.pem, ca-cert.pem; intercept: ca-cert.pem [, client-cert.pem, client-key.pem])',
    )
    .option('--link-tls-verify-client', 'manager role: require an intercept certificate signed by ca-cert.pem')
    .option('--link-tls-servername <name>', "intercept role: the name the manager's certificate must carry (default: the --manager host)")
    .option(
      '--link-pool <size>',
      'intercept role: space for sealed containers waiting for the manager; beyond it, degraded mode (default 1G)',
    )
    .option('--link-window <n>', 'intercept role: containers sent and not yet committed (default 4)');
}

function readSecret(o: LinkServeOptions, dataDir: string): Buffer | null {
  const file = o.linkSecretFile ? path.resolve(o.linkSecretFile) : path.join(dataDir, 'link.secret');
  if (!fs.existsSync(file)) {
    if (o.linkSecretFile) throw new CliError(`--link-secret-file: ${file} does not exist`, EXIT.USAGE);
    return null;
  }
  const s = fs.readFileSync(file);
  const trimmed = Buffer.from(s.toString('utf8').trim(), 'utf8');
  if (trimmed.length < 16) throw new CliError(`${file}: the link secret must be at least 16 bytes`, EXIT.USAGE);
  return trimmed;
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new CliError(`${what} ${file}: ${(err as Error).message}`, EXIT.USAGE);
  }
}

/** Adds the role settings to a ServeConfig built from the ordinary flags. */
export function applyLinkOptions(o: LinkServeOptions & { listen?: string }, config: ServeConfig, listenGiven: boolean): void {
  const role = (o.role ?? 'single') as 'single' | 'intercept' | 'manager';
  config.role = role;
  const tlsMode = (o.linkTls ?? 'off') as 'off' | 'on' | 'require';
  const tlsDir = o.linkTlsDir ? path.resolve(o.linkTlsDir) : path.join(config.dataDir, 'link-tls');
  if (role === 'single') {
    if (o.manager) throw new CliError('--manager needs --role intercept', EXIT.USAGE);
    return;
  }
  const secret = readSecret(o, config.dataDir);
  if (role === 'intercept') {
    if (!o.manager) throw new CliError('--role intercept needs --manager HOST:PORT', EXIT.USAGE);
    let hp;
    try {
      hp = parseHostPort(o.manager.includes(':') ? o.manager : `${o.manager}:${DEFAULT_LINK_PORT}`);
    } catch (err) {
      throw new CliError(`--manager: ${(err as Error).message}`, EXIT.USAGE);
    }
    let tls: NonNullable<ServeConfig['remote']>['tls'] = null;
    let tlsFiles: LinkTlsFiles | null = null;
    if (tlsMode !== 'off') {
      const cert = path.join(tlsDir, 'client-cert.pem');
      const has = fs.existsSync(cert);
      tlsFiles = {
        ca: path.join(tlsDir, 'ca-cert.pem'),
        cert: has ? cert : null,
        key: has ? path.join(tlsDir, 'client-key.pem') : null,
        ...(o.linkTlsServername ? { servername: o.linkTlsServername } : {}),
      };
      try {
        tls = readLinkTlsClient(tlsFiles);
      } catch (err) {
        throw new CliError((err as Error).message, EXIT.USAGE);
      }
    }
    if (!secret && !tls?.cert)
      throw new CliError(
        '--role intercept needs a shared secret (--link-secret-file) or a TLS client certificate (--link-tls on with client-cert.pem)',
        EXIT.USAGE,
      );
    let poolBytes = 1024 ** 3;
    if (o.linkPool) {
      try {
        poolBytes = parseSize(o.linkPool);
      } catch (err) {
        throw new CliError(`--link-pool: ${(err as Error).message}`, EXIT.USAGE);
      }
    }
    const window = o.linkWindow ? Number(o.linkWindow) : 4;
    if (!Number.isInteger(window) || window < 1 || window > 64) throw new CliError('--link-window: an integer from 1 to 64', EXIT.USAGE);
    config.remote = { host: hp.host, port: hp.port, secret, tls, tlsFiles, poolBytes, window };
    return;
  }
  // manager
  let listen;
  try {
    listen = parseHostPort(listenGiven && o.listen && o.listen !== 'none' ? o.listen : `0.0.0.0:${DEFAULT_LINK_PORT}`);
  } catch (err) {
    throw new CliError(`--listen: ${(err as Error).message}`, EXIT.USAGE);
  }
  let nbdListen = null;
  if (o.nbdListen) {
    try {
      nbdListen = parseHostPort(o.nbdListen);
    } catch (err) {
      throw new CliError(`--nbd-listen: ${(err as Error).message}`, EXIT.USAGE);
    }
  }
  config.listen = nbdListen;
  config.defaultVolumeSize = null;
  const tls: TlsSettings = { mode: tlsMode };
  let tlsFiles: TlsFiles | null = null;
  if (tlsMode !== 'off') {
    const ca = path.join(tlsDir, 'ca-cert.pem');
    tlsFiles = {
      cert: path.join(tlsDir, 'server-cert.pem'),
      key: path.join(tlsDir, 'server-key.pem'),
      ca: fs.existsSync(ca) ? ca : null,
    };
    tls.credentials = {
      cert: readPem(path.join(tlsDir, 'server-cert.pem'), 'link server certificate'),
      key: readPem(path.join(tlsDir, 'server-key.pem'), 'link server key'),
      ca: fs.existsSync(path.join(tlsDir, 'ca-cert.pem')) ? readPem(path.join(tlsDir, 'ca-cert.pem'), 'link CA certificate') : undefined,
    };
    tls.verifyClient = !!o.linkTlsVerifyClient;
    try {
      checkTlsSettings(tls);
    } catch (err) {
      throw new CliError(`--link-tls: ${(err as Error).message}`, EXIT.USAGE);
    }
  }
  if (!secret && !(tlsMode === 'require' && tls.verifyClient)) {
    throw new CliError(
      '--role manager needs a shared secret (--link-secret-file) or --link-tls require --link-tls-verify-client',
      EXIT.USAGE,
    );
  }
  config.managerLink = { listen, secret, tls, tlsFiles };
}
