/**
 * Control API routes of the file catalog (src/file-catalog):
 *
 *   GET  /v1/volumes/NAME/files?at=P&path=/dir&name=GLOB&newer=T&recursive=1&partition=N&limit=N&cursor=C
 *        -> { point, filesystems, entries: [FileInfo], next }   (next: cursor of the next page, or null)
 *   GET  /v1/volumes/NAME/files/versions?path=/x[&partition=N]
 *        -> { path, partition, versions: [{ seq, time, txn, markers, size, mtime, ino, deleted? }] }
 *   GET  /v1/volumes/NAME/files/content?at=P&path=/x[&partition=N]
 *        -> the file's bytes (application/octet-stream, Content-Length; X-Rewind-Point,
 *           X-Rewind-Mode, X-Rewind-Mtime, X-Rewind-Atime, X-Rewind-Uid, X-Rewind-Gid)
 *   GET  /v1/volumes/NAME/changed-files?from=A&to=B[&partition=N]
 *        -> { from, to, changes: [{ path, type, change: added|removed|modified|metadata, before, after }] }
 *   POST /v1/volumes/NAME/catalog {at?, priority?, full?, nearest?} -> 202 { job, info } (200 { point } if cataloged)
 *        priority: run unthrottled (someone waits); full: walk everything even where an incremental build could run
 *   GET  /v1/volumes/NAME/catalog                       -> { volume, points, jobs }
 *   GET  /v1/catalog/jobs/ID                            -> job (state, progress, error, stats)
 *   GET  /v1/volumes/NAME/catalog/blob?at=P             -> the point's catalog blob (file-catalog/blob.ts)
 *   POST /v1/volumes/NAME/catalog/import                (body: a blob) -> the imported point
 *
 * Paths are given as `path` (the printable form: "\xHH" for bytes that are
 * not UTF-8 or are control characters, "\\" for a backslash) or `pathB64`
 * (the raw bytes, base64). Entries carry both forms.
 */
import type * as http from 'node:http';
import type { FileCatalog } from '../file-catalog/service';
import { HttpError, allow, readJsonObject, sendJson, decodePathName } from '../util/http';

const MAX_BLOB = 1 << 30;

function intParam(q: URLSearchParams, k: string): number | undefined {
  const v = q.get(k);
  if (v === null || v === '') return undefined;
  if (!/^\d+$/.test(v)) throw new HttpError(400, `${k} must be a non-negative integer`);
  return Number(v);
}

function pathParams(q: URLSearchParams): { path?: string; pathB64?: string } {
  const out: { path?: string; pathB64?: string } = {};
  if (q.get('path') !== null) out.path = q.get('path')!;
  if (q.get('pathB64') !== null) out.pathB64 = q.get('pathB64')!;
  return out;
}

function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > max) {
        req.destroy();
        reject(new HttpError(413, `body larger than ${max} bytes`));
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Escapes a header value's non-ASCII bytes (RFC 5987 for the file name). */
function attachment(nameRaw: Buffer): string {
  return `attachment; filename*=UTF-8''${[...nameRaw].map((b) => (/[A-Za-z0-9._-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, '0').toUpperCase()}`)).join('')}`;
}

async function sendContent(fc: FileCatalog, volume: string, q: URLSearchParams, res: http.ServerResponse): Promise<void> {
  const { file, info, release } = await fc.openContent(volume, {
    at: q.get('at') ?? undefined,
    ...pathParams(q),
    partition: intParam(q, 'partition'),
  });
  let sent = 0;
  let counted = false;
  // Counted before the answer ends, so a client that reads the metrics next sees this restore in them.
  const count = (): void => {
    if (counted) return;
    counted = true;
    fc.counters.restoredBytes += sent;
    fc.counters.restoreImageBytes += file.counter.bytes;
  };
  try {
    const s = file.stat;
    const raw = q.get('pathB64') ? Buffer.from(q.get('pathB64')!, 'base64') : Buffer.from(q.get('path') ?? 'file');
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': s.size,
      'Content-Disposition': attachment(raw.subarray(raw.lastIndexOf(0x2f) + 1)),
      'Cache-Control': 'no-store',
      'X-Rewind-Point': `@seq:${info.seq}`,
      'X-Rewind-Partition': String(file.partition),
      'X-Rewind-Type': s.type,
      'X-Rewind-Mode': (s.mode & 0o7777).toString(8),
      'X-Rewind-Uid': String(s.uid),
      'X-Rewind-Gid': String(s.gid),
      'X-Rewind-Mtime': `${s.mtime.sec}.${String(s.mtime.nsec).padStart(9, '0')}`,
      'X-Rewind-Atime': `${s.atime.sec}.${String(s.atime.nsec).padStart(9, '0')}`,
    });
    if (res.req?.method === 'HEAD') {
      res.end();
      return;
    }
    // Chunks come in a ring of reused buffers, each valid until the one after the next is asked for:
    // one write may stay in flight while the next chunk is fetched, never two.
    let inflight: Promise<void> | null = null;
    for await (const chunk of file.chunks()) {
      if (res.destroyed) break;
      const w = new Promise<void>((resolve, reject) => res.write(chunk, (err) => (err ? reject(err) : resolve())));
      w.catch(() => undefined); // awaited below; a failure before then is not unhandled
      if (inflight) await inflight;
      inflight = w;
      sent += chunk.length;
    }
    if (inflight) await inflight;
    count();
    res.end();
  } catch (err) {
    count();
    res.destroy(err as Error);
  } finally {
    release();
  }
}

export async function routeFiles(
  fc: FileCatalog,
  volumeExists: (name: string) => boolean,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  method: string,
  p: string,
  url: URL,
): Promise<boolean> {
  const job = /^\/v1\/catalog\/jobs\/(\d+)$/.exec(p);
  if (job) {
    allow(method, ['GET', 'HEAD']);
    const j = fc.jobs.job(Number(job[1]));
    if (!j) throw new HttpError(404, `no catalog job ${job[1]}`);
    sendJson(res, 200, j);
    return true;
  }
  const m = /^\/v1\/volumes\/([^/]+)\/(files|files\/versions|files\/content|changed-files|catalog|catalog\/blob|catalog\/import)$/.exec(p);
  if (!m) return false;
  const volume = decodePathName(m[1]!);
  // What the catalog alone answers also works for a volume that is gone, from its imported catalog (an archive's).
  const catalogOnly =
    ['files', 'files/versions', 'catalog/blob', 'catalog/import'].includes(m[2]!) || (m[2] === 'catalog' && method !== 'POST');
  if (!volumeExists(volume) && !(catalogOnly && (m[2] === 'catalog/import' || fc.knows(volume))))
    throw new HttpError(404, `no volume named "${volume}"`);
  const q = url.searchParams;
  switch (m[2]) {
    case 'files': {
      allow(method, ['GET', 'HEAD']);
      const r = await fc.list(volume, {
        at: q.get('at') ?? undefined,
        ...pathParams(q),
        name: q.get('name') ?? undefined,
        newer: q.get('newer') ?? undefined,
        recursive: q.get('recursive') === '1' || q.get('recursive') === 'true',
        partition: intParam(q, 'partition'),
        limit: intParam(q, 'limit'),
        cursor: q.get('cursor') ?? undefined,
      });
      sendJson(res, 200, r);
      return true;
    }
    case 'files/versions':
      allow(method, ['GET', 'HEAD']);
      sendJson(res, 200, fc.versions(volume, { ...pathParams(q), partition: intParam(q, 'partition') }));
      return true;
    case 'files/content':
      allow(method, ['GET', 'HEAD']);
      await sendContent(fc, volume, q, res);
      return true;
    case 'changed-files':
      allow(method, ['GET', 'HEAD']);
      if (!q.get('from') || !q.get('to')) throw new HttpError(400, 'from and to are required');
      sendJson(res, 200, await fc.changedFiles(volume, q.get('from'), q.get('to'), intParam(q, 'partition')));
      return true;
    case 'catalog': {
      allow(method, ['GET', 'HEAD', 'POST']);
      if (method !== 'POST') {
        sendJson(res, 200, fc.overview(volume));
        return true;
      }
      const body = await readJsonObject(req);
      for (const k of Object.keys(body))
        if (!['at', 'priority', 'nearest', 'full'].includes(k))
          throw new HttpError(400, `unknown field "${k}" (expected at, priority, nearest, full)`);
      for (const k of ['priority', 'full'] as const)
        if (body[k] !== undefined && typeof body[k] !== 'boolean') throw new HttpError(400, `${k} must be true or false`);
      const r = await fc.request(volume, body.at, { priority: body.priority === true, nearest: body.nearest, full: body.full === true });
      sendJson(res, r.job ? 202 : 200, r);
      return true;
    }
    case 'catalog/blob': {
      allow(method, ['GET']);
      const { blob, point } = await fc.exportBlob(volume, q.get('at') ?? undefined);
      res.writeHead(200, {
        'Content-Type': 'application/octet-stream',
        'Content-Length': blob.length,
        'Content-Disposition': `attachment; filename="${volume}-seq-${point.seq}.rwfcat"`,
        'X-Rewind-Point': `@seq:${point.seq}`,
      });
      res.end(blob);
      return true;
    }
    case 'catalog/import': {
      allow(method, ['POST']);
      sendJson(res, 201, await fc.importBlob(await readBody(req, MAX_BLOB), volume));
      return true;
    }
  }
  return false;
}
