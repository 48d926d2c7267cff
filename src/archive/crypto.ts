/**
 * Optional encryption: AES-256-GCM per chunk, per pack index and per
 * manifest, under keys derived from one key file.
 *
 * The key file holds 32 random bytes as 64 hex digits. HKDF-SHA256 (salt:
 * the pool id) derives three keys from it: `enc` for AES-256-GCM, `id` for
 * the HMAC-SHA256 handles, and `check`, whose HMAC of a fixed string is
 * stored in the pool config so that a wrong key file is refused at open
 * with a clear error instead of failing chunk by chunk.
 *
 * Sealed form: nonce (12 random bytes) | ciphertext | tag (16). Random
 * nonces are safe for about 2^32 seals under one key (2^32 chunks of 64 KiB
 * is 256 TiB); a pool needing more should be re-keyed.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import { ArchiveError } from './errors';

export const NONCE_SIZE = 12;
export const TAG_SIZE = 16;
export const SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE;

export interface PoolKeys {
  enc: Buffer;
  id: Buffer;
  /** Hex: what the pool config stores to recognise this key. */
  check: string;
}

/** Writes a new key file (mode 0600); refuses to overwrite one. */
export function generateKeyFile(file: string): void {
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.writeSync(fd, `${randomBytes(32).toString('hex')}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function readKeyFile(file: string): Buffer {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ArchiveError('EKEYREJECTED', `cannot read the archive key file ${file}: ${(err as Error).message}`, { cause: err });
  }
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new ArchiveError('EKEYREJECTED', `archive key file ${file} must hold 64 hex digits (32 bytes), e.g. made by generateKeyFile`);
  }
  return Buffer.from(hex, 'hex');
}

export function deriveKeys(master: Buffer, poolId: string): PoolKeys {
  const salt = Buffer.from(poolId, 'hex');
  const k = (info: string): Buffer => Buffer.from(hkdfSync('sha256', master, salt, `rewind-archive ${info}`, 32));
  const check = createHmac('sha256', k('check')).update('rewind-archive key check').digest('hex').slice(0, 32);
  return { enc: k('enc'), id: k('id'), check };
}

/** True if `keys` is the key recorded (as its check value) in the pool config. */
export function keyMatches(keys: PoolKeys, check: string): boolean {
  const a = Buffer.from(keys.check, 'hex');
  const b = Buffer.from(check, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

export function seal(key: Buffer, plain: Buffer, aad: Buffer): Buffer {
  const nonce = randomBytes(NONCE_SIZE);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const body = c.update(plain);
  const fin = c.final();
  return Buffer.concat([nonce, body, fin, c.getAuthTag()]);
}

/** Opens a sealed buffer; null if it is too short or fails authentication. */
export function unseal(key: Buffer, sealed: Buffer, aad: Buffer): Buffer | null {
  if (sealed.length < SEAL_OVERHEAD) return null;
  try {
    const d = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE_SIZE));
    d.setAAD(aad);
    d.setAuthTag(sealed.subarray(sealed.length - TAG_SIZE));
    const body = d.update(sealed.subarray(NONCE_SIZE, sealed.length - TAG_SIZE));
    return Buffer.concat([body, d.final()]);
  } catch {
    return null;
  }
}
