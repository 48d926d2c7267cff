/**
 * The pool config, the backend object "config": written once when the pool
 * is created (exclusive put), read at every open. It fixes what every
 * point and pack of the pool share: the pool id (in every pack header and
 * manifest), the handle scheme, the defaults for leaf size and fan-out,
 * compression, pack size, and whether and under which key (its check
 * value) the pool is encrypted.
 */
import { randomBytes } from 'node:crypto';
import type { ArchiveBackend } from './backend';
import { deriveKeys, keyMatches, readKeyFile, type PoolKeys } from './crypto';
import { ArchiveError, ArchiveFormatError, errnoOf } from './errors';
import type { SchemeName } from './handle';
import { checkFanout, checkLeafSize } from './tree';

export const CONFIG_KEY = 'config';
export const CONFIG_FORMAT = 'rewind-archive-pool/1';

export interface PoolConfig {
  format: typeof CONFIG_FORMAT;
  poolId: string;
  created: number;
  scheme: SchemeName;
  /** Default leaf size of new points without a predecessor. */
  leafSize: number;
  fanout: number;
  compression: { codec: 'zstd'; level: number };
  /** Packs are sealed once they reach this many bytes. */
  packTarget: number;
  encryption: null | { cipher: 'aes-256-gcm'; kdf: 'hkdf-sha256'; keyCheck: string };
}

export interface CreateOptions {
  leafSize?: number;
  fanout?: number;
  /** zstd level, 0 for none (default 3). */
  level?: number;
  packTarget?: number;
  /** Encrypt with the key in OpenOptions.keyFile. */
  encrypt?: boolean;
}

export const DEFAULTS = { leafSize: 64 * 1024, fanout: 256, level: 3, packTarget: 32 * 1024 * 1024 };

export function newConfig(opts: CreateOptions, keyFile: string | undefined): { config: PoolConfig; keys: PoolKeys | null } {
  const leafSize = opts.leafSize ?? DEFAULTS.leafSize;
  const fanout = opts.fanout ?? DEFAULTS.fanout;
  const level = opts.level ?? DEFAULTS.level;
  const packTarget = opts.packTarget ?? DEFAULTS.packTarget;
  try {
    checkLeafSize(leafSize);
    checkFanout(fanout);
  } catch (err) {
    throw new ArchiveError('EINVAL', (err as Error).message);
  }
  if (!Number.isInteger(level) || level < 0 || level > 19) throw new ArchiveError('EINVAL', `zstd level ${level} must be 0..19`);
  if (!Number.isInteger(packTarget) || packTarget < 64 * 1024 || packTarget > 1024 * 1024 * 1024)
    throw new ArchiveError('EINVAL', `pack target ${packTarget} must be 64 KiB..1 GiB`);
  const poolId = randomBytes(16).toString('hex');
  let keys: PoolKeys | null = null;
  if (opts.encrypt) {
    if (!keyFile) throw new ArchiveError('EKEYREJECTED', 'an encrypted pool needs a key file');
    keys = deriveKeys(readKeyFile(keyFile), poolId);
  }
  const config: PoolConfig = {
    format: CONFIG_FORMAT,
    poolId,
    created: Date.now(),
    scheme: keys ? 'hmac-sha256' : 'sha256',
    leafSize,
    fanout,
    compression: { codec: 'zstd', level },
    packTarget,
    encryption: keys ? { cipher: 'aes-256-gcm', kdf: 'hkdf-sha256', keyCheck: keys.check } : null,
  };
  return { config, keys };
}

export async function readConfig(backend: ArchiveBackend): Promise<PoolConfig | null> {
  let buf: Buffer;
  try {
    buf = await backend.get(CONFIG_KEY);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return null;
    throw err;
  }
  let c: PoolConfig;
  try {
    c = JSON.parse(buf.toString('utf8')) as PoolConfig;
  } catch {
    throw new ArchiveFormatError(`${backend.description}: the pool config is not JSON`);
  }
  if (c?.format !== CONFIG_FORMAT || typeof c.poolId !== 'string' || !/^[0-9a-f]{32}$/.test(c.poolId))
    throw new ArchiveFormatError(`${backend.description}: not a rewind archive pool config`);
  checkLeafSize(c.leafSize);
  checkFanout(c.fanout);
  return c;
}

/** The keys for an opened pool: null for a plaintext pool; refuses a wrong or missing key. */
export function keysFor(config: PoolConfig, keyFile: string | undefined): PoolKeys | null {
  if (!config.encryption) return null;
  if (!keyFile) throw new ArchiveError('EKEYREJECTED', 'this archive pool is encrypted: give its key file');
  const keys = deriveKeys(readKeyFile(keyFile), config.poolId);
  if (!keyMatches(keys, config.encryption.keyCheck)) {
    throw new ArchiveError('EKEYREJECTED', `wrong key: key file ${keyFile} is not the key of archive pool ${config.poolId}`);
  }
  return keys;
}
