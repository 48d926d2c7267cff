/**
 * CRC-32 (the zlib / IEEE 802.3 polynomial), the checksum of every on-disk
 * format in Rewind. @node-rs/crc32 computes it with carry-less multiply
 * instructions, about four times faster than zlib on payloads (it matters:
 * every journaled byte is checksummed when appended, verified by the
 * manager, and again for its before-image). Where that package has no
 * prebuilt binary for the platform, zlib.crc32 gives the same values.
 */
import * as zlib from 'node:zlib';

type Crc32 = (data: Uint8Array, seed?: number) => number;

function load(): Crc32 {
  try {
    const fast = (require('@node-rs/crc32') as { crc32(input: Uint8Array, initialState?: number | null): number }).crc32;
    const probe = Buffer.from('rewind');
    if (fast(probe) === zlib.crc32(probe) && fast(probe, 12345) === zlib.crc32(probe, 12345)) {
      return fast;
    }
  } catch {
    // not available on this platform: zlib below
  }
  return (data, seed = 0) => zlib.crc32(data, seed);
}

/** CRC-32 of `data`, continuing from `seed` (the CRC of what came before). */
export const crc32: Crc32 = load();

// CRC-32 combination: crc(A || B) from crc(A), crc(B) and len(B), so that a
// payload is read once for both its own CRC and the container's body CRC.
// Polynomial arithmetic modulo the reflected CRC-32 polynomial.

const POLY = 0xedb88320;

function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) mod p for k = 0..31. */
const X2N = new Uint32Array(32);
X2N[0] = 0x40000000; // x^1
for (let k = 1; k < 32; k++) X2N[k] = multModP(X2N[k - 1], X2N[k - 1]);

/** x^(8 * len) mod p: the operator that shifts a CRC past `len` zero bytes. */
function shiftOperator(len: number): number {
  let p = 0x80000000; // x^0
  let k = 3;
  let n = len;
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k & 31], p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

const shiftCache = new Map<number, number>();

/** Byte-wise CRC-32 table, for the short header ranges (cheaper than a native call plus a view). */
const CRC_TABLE = new Int32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  CRC_TABLE[n] = c;
}

/** crc32(b.subarray(start, end), crc) for short ranges. */
export function crc32Small(b: Buffer, start: number, end: number, crc: number): number {
  let c = ~crc;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 of A||B given crc1 = crc32(A), crc2 = crc32(B), len2 = |B|. */
export function crc32Combine(crc1: number, crc2: number, len2: number): number {
  if (len2 === 0) return crc1 >>> 0;
  let op = shiftCache.get(len2);
  if (op === undefined) {
    op = shiftOperator(len2);
    if (shiftCache.size < 4096) shiftCache.set(len2, op);
  }
  return (multModP(op, crc1 >>> 0) ^ crc2) >>> 0;
}
