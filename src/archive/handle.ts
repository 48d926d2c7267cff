/**
 * Content handles (seed 003 L314: "a hash tagged to indicate the hashing
 * scheme used or a non lossy algorithmic encoding"). A handle is 33 bytes:
 * one scheme byte, then 32 bytes of digest.
 *
 *   0x00 ZERO         all bytes zero: a leaf or a whole subtree of zeroes,
 *                     stored nowhere (the digest bytes are zero too)
 *   0x01 SHA-256      SHA-256 of the chunk's plaintext
 *   0x02 HMAC-SHA256  HMAC-SHA256 under the pool's id key (encrypted pools,
 *                     so that handles do not reveal whether a known file is
 *                     stored)
 *
 * A new scheme gets a new byte; handles of different schemes never collide.
 */
import { createHash, createHmac } from 'node:crypto';
import { digestLeaves } from '../native';
import { cpuJob } from './cpu-jobs';
import { ArchiveFormatError } from './errors';

export const HANDLE_SIZE = 33;
export const SCHEME_ZERO = 0;
export const SCHEME_SHA256 = 1;
export const SCHEME_HMAC_SHA256 = 2;

export type SchemeName = 'sha256' | 'hmac-sha256';

/** 33 bytes: scheme, digest. */
export type Handle = Buffer;

export const ZERO_HANDLE: Handle = Buffer.alloc(HANDLE_SIZE);

export function isZeroHandle(h: Buffer): boolean {
  return h[0] === SCHEME_ZERO;
}

export function handleHex(h: Buffer): string {
  return h.toString('hex');
}

/** The first 16 hex digits of the digest: enough to name a chunk in a message. */
export function shortHex(h: Buffer): string {
  return h.toString('hex', 1, 9);
}

/** Checks a handle read from a file: a known scheme, and ZERO only as all zeroes. */
export function checkHandle(buf: Buffer, at: number, what: string): void {
  const s = buf[at];
  if (s === SCHEME_SHA256 || s === SCHEME_HMAC_SHA256) return;
  if (s === SCHEME_ZERO) {
    for (let i = 1; i < HANDLE_SIZE; i++) if (buf[at + i] !== 0) throw new ArchiveFormatError(`${what}: malformed zero handle`);
    return;
  }
  throw new ArchiveFormatError(`${what}: unknown handle scheme ${s}`);
}

export function parseHandle(hex: string): Handle {
  if (!/^[0-9a-f]{66}$/.test(hex)) throw new ArchiveFormatError(`not a handle: "${hex.slice(0, 80)}"`);
  const h = Buffer.from(hex, 'hex');
  checkHandle(h, 0, 'handle');
  return h;
}

export function schemeByte(name: SchemeName): number {
  return name === 'sha256' ? SCHEME_SHA256 : SCHEME_HMAC_SHA256;
}

/** Hashes plaintext chunks into handles of one scheme. */
export interface Hasher {
  readonly scheme: SchemeName;
  hash(data: Buffer): Handle;
  /**
   * The handle of each leafSize slice of buf (ZERO_HANDLE for all-zero
   * slices), computed on the threadpool: hashing is most of an archive's
   * CPU, and this lets it run beside the main thread.
   */
  leaves(buf: Buffer, leafSize: number): Promise<Handle[]>;
  /** The native digest's key: null for SHA-256, the id key for HMAC. */
  readonly nativeKey: Buffer | null;
}

export function makeHasher(scheme: SchemeName, idKey?: Buffer): Hasher {
  if (scheme !== 'sha256' && !idKey) throw new Error('hmac-sha256 handles need the pool id key');
  const key = scheme === 'sha256' ? null : idKey!;
  const byte = scheme === 'sha256' ? SCHEME_SHA256 : SCHEME_HMAC_SHA256;
  return {
    scheme,
    nativeKey: key,
    hash(data) {
      const h = Buffer.allocUnsafe(HANDLE_SIZE);
      h[0] = byte;
      (key ? createHmac('sha256', key) : createHash('sha256')).update(data).digest().copy(h, 1);
      return h;
    },
    async leaves(buf, leafSize) {
      const all = await cpuJob(() => digestLeaves(buf, leafSize, key));
      const out: Handle[] = [];
      for (let at = 0; at < all.length; at += HANDLE_SIZE) out.push(all.subarray(at, at + HANDLE_SIZE));
      return out;
    },
  };
}
