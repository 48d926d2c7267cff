/**
 * The bearer token for the TCP control API.
 *
 * The Unix control socket is protected by file permissions (0600, owner
 * only), so requests on it need no token. TCP has no such protection, so
 * every request on a TCP control listener must carry
 * `Authorization: Bearer <token>`, where the token is the content of
 * <data-dir>/control.token: 32 random bytes, hex, generated on first start
 * and created with mode 0600. The CLI reads it from there (or from
 * $REWIND_CONTROL_TOKEN). Delete the file and restart to rotate it.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { writeFileAtomicSync } from '../util/atomic-file';

export function ensureControlToken(file: string): string {
  try {
    const existing = fs.readFileSync(file, 'utf8').trim();
    if (/^[0-9a-f]{32,}$/i.test(existing)) {
      const st = fs.statSync(file);
      if ((st.mode & 0o077) !== 0) fs.chmodSync(file, 0o600);
      return existing;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = crypto.randomBytes(32).toString('hex');
  const tmp = `${file}.${process.pid}.tmp`;
  fs.rmSync(tmp, { force: true }); // a stale tmp would keep its old mode
  writeFileAtomicSync(file, token + '\n', { mode: 0o600, tmp });
  return token;
}

/** Constant-time comparison of a presented token with the real one. */
export function tokenMatches(presented: string | undefined, token: string): boolean {
  if (presented === undefined) return false;
  const a = Buffer.from(presented);
  const b = Buffer.from(token);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}
