/** All-zero checks by memcmp against a shared zero buffer. */
const ZERO = Buffer.alloc(64 * 1024);

/** True if every byte of b is zero. */
export function isZero(b: Buffer): boolean {
  for (let at = 0; at < b.length; at += ZERO.length) {
    const n = Math.min(ZERO.length, b.length - at);
    if (!b.subarray(at, at + n).equals(n === ZERO.length ? ZERO : ZERO.subarray(0, n))) return false;
  }
  return true;
}
