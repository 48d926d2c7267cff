/**
 * The NBD server's security and resource settings for `rewind serve`:
 * TLS mode and certificate files, and the per-server and per-connection
 * limits. They come from command-line flags and, under them, from an
 * optional JSON configuration file:
 *
 *   { "nbd": { "tls": "require", "tlsDir": "/etc/rewind/tls", "tlsVerifyClient": true,
 *              "maxConnections": 128, "maxInflight": 64, "maxBuffer": "64M", "memoryBudget": "1G",
 *              "handshakeTimeout": 10, "writeStallTimeout": 60 } }
 *
 * Certificate files: --tls-cert, --tls-key, --tls-ca, or a directory
 * (--tls-dir, default DATA_DIR/tls) holding server-cert.pem,
 * server-key.pem and ca-cert.pem, the names nbdkit and qemu use.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_LIMITS, type ServerLimits } from '../nbd';
import { checkTlsSettings, TLS_MODES, type TlsMode, type TlsSettings } from '../tls';
import { parseSize } from '../util/size';

/** What a user may set, by flag or in the "nbd" object of the configuration file. */
export interface NbdSettingsInput {
  tls?: string;
  tlsDir?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsVerifyClient?: boolean;
  maxConnections?: string | number;
  maxInflight?: string | number;
  maxBuffer?: string | number;
  memoryBudget?: string | number;
  /** Seconds. */
  handshakeTimeout?: string | number;
  /** Seconds. */
  writeStallTimeout?: string | number;
}

export const NBD_SETTINGS_KEYS: readonly (keyof NbdSettingsInput)[] = [
  'tls',
  'tlsDir',
  'tlsCert',
  'tlsKey',
  'tlsCa',
  'tlsVerifyClient',
  'maxConnections',
  'maxInflight',
  'maxBuffer',
  'memoryBudget',
  'handshakeTimeout',
  'writeStallTimeout',
];

export interface NbdSettings {
  tls: TlsSettings;
  /** The certificate files in use (for logs and status), when TLS is on. */
  tlsFiles: { cert: string; key: string; ca: string | null } | null;
  limits: ServerLimits;
}

export class SettingsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SettingsError';
  }
}

/** Reads the "nbd" object of a JSON configuration file. */
export function readConfigFile(file: string): NbdSettingsInput {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new SettingsError(`cannot read configuration file ${file}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SettingsError(`configuration file ${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new SettingsError(`configuration file ${file}: expected a JSON object`);
  }
  const nbd = (parsed as Record<string, unknown>).nbd;
  if (nbd === undefined) return {};
  if (!nbd || typeof nbd !== 'object' || Array.isArray(nbd)) throw new SettingsError(`configuration file ${file}: "nbd" must be an object`);
  const out: NbdSettingsInput = {};
  for (const [k, v] of Object.entries(nbd as Record<string, unknown>)) {
    if (!(NBD_SETTINGS_KEYS as readonly string[]).includes(k)) {
      throw new SettingsError(`configuration file ${file}: unknown setting nbd.${k} (known: ${NBD_SETTINGS_KEYS.join(', ')})`);
    }
    if (k === 'tlsVerifyClient') {
      if (typeof v !== 'boolean') throw new SettingsError(`configuration file ${file}: nbd.${k} must be true or false`);
      out.tlsVerifyClient = v;
    } else {
      if (typeof v !== 'string' && typeof v !== 'number')
        throw new SettingsError(`configuration file ${file}: nbd.${k} must be a string or number`);
      // Relative paths in the file are relative to the file.
      const value = typeof v === 'string' && k.startsWith('tls') && k !== 'tls' ? path.resolve(path.dirname(file), v) : v;
      (out as Record<string, unknown>)[k] = value;
    }
  }
  return out;
}

function positiveInt(name: string, v: string | number, max = Number.MAX_SAFE_INTEGER): number {
  const n = typeof v === 'number' ? v : /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > max)
    throw new SettingsError(`${name}: expected a whole number from 1 to ${max}, got ${JSON.stringify(v)}`);
  return n;
}

function seconds(name: string, v: string | number): number {
  const n = typeof v === 'number' ? v : Number(String(v).trim().replace(/s$/, ''));
  if (!Number.isFinite(n) || n <= 0 || n > 86400)
    throw new SettingsError(`${name}: expected seconds (0 < s <= 86400), got ${JSON.stringify(v)}`);
  return Math.round(n * 1000);
}

function bytes(name: string, v: string | number): number {
  let n: number;
  try {
    n = parseSize(v);
  } catch (err) {
    throw new SettingsError(`${name}: ${(err as Error).message}`);
  }
  if (n < 1024 * 1024) throw new SettingsError(`${name}: at least 1M (a single request can be that large)`);
  return n;
}

function readPem(what: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new SettingsError(`cannot read the TLS ${what} ${file}: ${(err as Error).message}`);
  }
}

/**
 * Merges flags over the configuration file and checks everything: limits
 * in range, TLS files readable and usable. `dataDir` gives the default
 * certificate directory.
 */
export function resolveNbdSettings(flags: NbdSettingsInput, file: NbdSettingsInput, dataDir: string): NbdSettings {
  const pick = <K extends keyof NbdSettingsInput>(k: K): NbdSettingsInput[K] => (flags[k] !== undefined ? flags[k] : file[k]);

  const limits: ServerLimits = { ...DEFAULT_LIMITS };
  const mc = pick('maxConnections');
  if (mc !== undefined) limits.maxConnections = positiveInt('max connections', mc, 65536);
  const mi = pick('maxInflight');
  if (mi !== undefined) limits.maxInflightPerConnection = positiveInt('max requests in flight', mi, 65536);
  const mb = pick('maxBuffer');
  if (mb !== undefined) limits.maxBufferedBytesPerConnection = bytes('max buffer', mb);
  const budget = pick('memoryBudget');
  if (budget !== undefined) limits.memoryBudget = bytes('memory budget', budget);
  const ht = pick('handshakeTimeout');
  if (ht !== undefined) limits.handshakeTimeoutMs = seconds('handshake timeout', ht);
  const ws = pick('writeStallTimeout');
  if (ws !== undefined) limits.writeStallTimeoutMs = seconds('write stall timeout', ws);

  const modeRaw = pick('tls') ?? 'off';
  if (!(TLS_MODES as readonly string[]).includes(modeRaw)) {
    throw new SettingsError(`TLS mode: expected one of ${TLS_MODES.join(', ')}, got ${JSON.stringify(modeRaw)}`);
  }
  const mode = modeRaw as TlsMode;
  const verifyClient = pick('tlsVerifyClient') === true;
  if (mode === 'off') {
    if (verifyClient) throw new SettingsError('--tls-verify-client needs --tls on or --tls require');
    return { tls: { mode }, tlsFiles: null, limits };
  }
  const dir = pick('tlsDir') ?? path.join(dataDir, 'tls');
  const cert = pick('tlsCert') ?? path.join(dir, 'server-cert.pem');
  const key = pick('tlsKey') ?? path.join(dir, 'server-key.pem');
  let ca: string | null = pick('tlsCa') ?? path.join(dir, 'ca-cert.pem');
  if (!fs.existsSync(ca)) {
    if (verifyClient || pick('tlsCa') !== undefined) readPem('CA certificate', ca); // throws the clear error
    ca = null;
  }
  const credentials: NonNullable<TlsSettings['credentials']> = {
    cert: readPem('certificate', cert),
    key: readPem('key', key),
  };
  if (ca) credentials.ca = readPem('CA certificate', ca);
  const tls: TlsSettings = { mode, credentials, verifyClient };
  try {
    checkTlsSettings(tls);
  } catch (err) {
    throw new SettingsError(`TLS certificates (${cert}, ${key}${ca ? `, ${ca}` : ''}) are not usable: ${(err as Error).message}`);
  }
  return { tls, tlsFiles: { cert, key, ca }, limits };
}
