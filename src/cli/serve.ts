/** `rewind serve`: command-line parsing into a ServeConfig, then the daemon. */
import * as path from 'node:path';
import { imageBackend } from '../daemon/backend';
import {
  NBD_SETTINGS_KEYS,
  readConfigFile,
  resolveNbdSettings,
  SettingsError,
  type NbdSettings,
  type NbdSettingsInput,
} from '../daemon/nbd-settings';
import { runStdio } from '../app/stdio';
import { DataDirInUseError } from '../daemon/lock';
import { createLogger, isLogLevel, LOG_LEVELS, type LogLevel } from '../daemon/logger';
import { dataDirLayout } from '../daemon/paths';
import { ensureDataDir, runDaemon, type ServeConfig } from '../app/serve';
import { AddressError, parseHostPort, type HostPort } from '../util/address';
import { parseVolumeSize, SizeError } from '../util/size';
import { CliError, EXIT, resolveDataDir, type GlobalOptions } from './common';
import { applyLinkOptions, type LinkServeOptions } from './link-options';
import { applyScrubOptions, type ScrubServeOptions } from './scrub-commands';

/** TLS and limit flags: the NBD settings, as commander hands them over (strings). */
type NbdSettingFlags = { [K in keyof NbdSettingsInput]: Extract<NbdSettingsInput[K], string | boolean | undefined> };

export interface ServeOptions extends GlobalOptions, LinkServeOptions, ScrubServeOptions, NbdSettingFlags {
  listen: string;
  socket?: string;
  defaultSize: string;
  defaultVolume: boolean;
  logLevel: string;
  logFile?: string | boolean;
  // configuration file, stdio (serve-options.ts)
  config?: string;
  stdio?: string;
}

export const DEFAULT_LISTEN = '127.0.0.1:10809';

/** Splits --control values into the Unix socket path and TCP listeners. */
export function classifyControlSpecs(specs: string[]): { socket?: string; tcp: HostPort[] } {
  let socket: string | undefined;
  const tcp: HostPort[] = [];
  for (const spec of specs) {
    const s = spec.trim();
    if (s.startsWith('unix:')) {
      socket = path.resolve(s.slice('unix:'.length).replace(/^\/\//, ''));
    } else if (s.startsWith('http://')) {
      const u = new URL(s);
      if (!u.port) throw new CliError(`--control ${spec}: a port is required`, EXIT.USAGE);
      tcp.push({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port) });
    } else if (s.includes('/') || (!s.includes(':') && !/^\d+$/.test(s))) {
      socket = path.resolve(s);
    } else {
      try {
        tcp.push(parseHostPort(s));
      } catch (err) {
        throw new CliError(`--control ${spec}: ${(err as Error).message}`, EXIT.USAGE);
      }
    }
  }
  return socket === undefined ? { tcp } : { socket, tcp };
}

export function buildServeConfig(o: ServeOptions): { config: ServeConfig; logLevel: LogLevel; logFile?: string } {
  const dataDir = resolveDataDir(o);
  const layout = dataDirLayout(dataDir);
  let listen: HostPort | null = null;
  if (o.listen !== 'none') {
    try {
      listen = parseHostPort(o.listen);
    } catch (err) {
      if (err instanceof AddressError) throw new CliError(`--listen: ${err.message}`, EXIT.USAGE);
      throw err;
    }
  }
  const socket = o.socket === 'none' ? null : o.socket ? path.resolve(o.socket) : layout.nbdSocket;
  const control = classifyControlSpecs(o.control ?? []);
  let defaultVolumeSize: number | null = null;
  if (o.defaultVolume) {
    try {
      defaultVolumeSize = parseVolumeSize(o.defaultSize);
    } catch (err) {
      if (err instanceof SizeError) throw new CliError(`--default-size: ${err.message}`, EXIT.USAGE);
      throw err;
    }
  }
  if (!isLogLevel(o.logLevel)) {
    throw new CliError(`--log-level: unknown level "${o.logLevel}" (use one of ${LOG_LEVELS.join(', ')})`, EXIT.USAGE);
  }
  let logFile: string | undefined;
  if (o.logFile === true) logFile = layout.logFile;
  else if (typeof o.logFile === 'string') logFile = path.resolve(o.logFile);
  const config: ServeConfig = {
    dataDir,
    listen,
    socket,
    controlSocket: control.socket ?? layout.controlSocket,
    controlTcp: control.tcp,
    defaultVolumeSize,
    nbd: buildNbdSettings(o, dataDir),
  };
  applyLinkOptions(o, config, o.listen !== DEFAULT_LISTEN);
  applyScrubOptions(o, config);
  return logFile === undefined ? { config, logLevel: o.logLevel } : { config, logLevel: o.logLevel, logFile };
}

/** TLS and limits from the flags over the configuration file. */
export function buildNbdSettings(o: ServeOptions, dataDir: string): NbdSettings {
  const flags: NbdSettingsInput = {};
  for (const k of NBD_SETTINGS_KEYS) {
    const v = (o as unknown as Record<string, unknown>)[k];
    if (v !== undefined)
      (flags as Record<string, unknown>)[k] = typeof v === 'string' && k.startsWith('tls') && k !== 'tls' ? path.resolve(v) : v;
  }
  try {
    const file = o.config ? readConfigFile(path.resolve(o.config)) : {};
    return resolveNbdSettings(flags, file, dataDir);
  } catch (err) {
    if (err instanceof SettingsError) throw new CliError(err.message, EXIT.USAGE);
    throw err;
  }
}

/** Runs the daemon; resolves with the exit code once it has stopped. */
export async function serveCommand(o: ServeOptions): Promise<number> {
  const { config, logLevel, logFile } = buildServeConfig(o);
  // Before the logger, which may create <data-dir>/rewind.log.
  let created: boolean;
  try {
    created = ensureDataDir(config.dataDir);
  } catch (err) {
    throw new CliError(`cannot create data directory ${config.dataDir}: ${(err as Error).message}`, EXIT.FAILURE);
  }
  const { logger, flush } = createLogger(logLevel, logFile);
  if (created) logger.info({ dataDir: config.dataDir }, 'created data directory');
  process.on('uncaughtException', (err) => {
    logger.fatal({ err: err.stack ?? String(err) }, 'uncaught exception: exiting');
    flush();
    process.exit(EXIT.FAILURE);
  });
  process.on('unhandledRejection', (reason) => {
    logger.fatal({ err: reason instanceof Error ? reason.stack : String(reason) }, 'unhandled rejection: exiting');
    flush();
    process.exit(EXIT.FAILURE);
  });
  try {
    const code =
      o.stdio !== undefined ? await runStdio(config, o.stdio, logger, imageBackend()) : await runDaemon(config, logger, imageBackend());
    flush();
    return code;
  } catch (err) {
    logger.error({ err: (err as Error).message }, 'cannot start');
    flush();
    if (err instanceof DataDirInUseError) throw new CliError(err.message, EXIT.FAILURE);
    throw new CliError(`cannot start: ${(err as Error).message}`, EXIT.FAILURE);
  }
}
