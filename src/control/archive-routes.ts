/**
 * Control API routes of the archive pool (issue 14). Archive, gc and
 * verify stream progress as NDJSON like restore and export (see
 * timetravel-routes.ts).
 *
 *   GET    /v1/archives                          -> {points, stats}
 *   POST   /v1/archives         {target, at, name?}   -> ArchiveResult
 *   GET    /v1/archives/NAME                     -> manifest (+ usedBy)
 *   DELETE /v1/archives/NAME                     -> forget one point
 *   POST   /v1/archives/forget  {names? | policy?, dryRun?}
 *   POST   /v1/archives/gc                       -> GcReport
 *   POST   /v1/archives/verify  {points?}        -> VerifyReport
 *
 * Archived points are used through the time-travel routes with
 * at/to/from = "archive:NAME" (snapshots, clones, export, restore, diff).
 */
import type * as http from 'node:http';
import { tracked, type JobRegistry } from '../daemon/jobs';
import type { Archiver } from '../timetravel/archiver';
import { HttpError, allow, readJsonObject, sendJson } from '../util/http';
import { streamed } from './timetravel-routes';

function only(body: Record<string, unknown>, fields: string[]): void {
  for (const k of Object.keys(body)) {
    if (!fields.includes(k)) throw new HttpError(400, `unknown field "${k}" (expected ${fields.join(', ')})`);
  }
}

export async function routeArchives(
  a: Archiver,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  method: string,
  p: string,
  jobs?: JobRegistry,
): Promise<boolean> {
  if (p === '/v1/archives') {
    allow(method, ['GET', 'HEAD', 'POST']);
    if (method === 'POST') {
      const body = await readJsonObject(req);
      only(body, ['target', 'at', 'name']);
      if (typeof body.target !== 'string' || !body.target)
        throw new HttpError(400, 'field "target" (a protected volume or a consistency group) is required');
      const target = body.target;
      // Archives are jobs (GET /v1/jobs, the console) like restores and exports.
      const run = tracked(
        jobs,
        'archive',
        target,
        `at ${String(body.at)}`,
        (progress) => a.archive(target, body, progress),
        (r) =>
          `${r.point.name}: read ${r.point.volumes.reduce((x, v) => x + v.stats.bytesRead, 0)} bytes, stored ${r.point.volumes.reduce((x, v) => x + v.stats.bytesStored, 0)}`,
      );
      await streamed(req, res, run);
      return true;
    }
    sendJson(res, 200, { points: a.list(), stats: a.stats() });
    return true;
  }
  const m = /^\/v1\/archives\/([^/]+)$/.exec(p);
  if (!m) return false;
  let name: string;
  try {
    name = decodeURIComponent(m[1]!);
  } catch {
    throw new HttpError(400, 'malformed name in URL');
  }
  if (method === 'POST' && (name === 'forget' || name === 'gc' || name === 'verify')) {
    const body = await readJsonObject(req);
    if (name === 'forget') {
      only(body, ['names', 'policy', 'dryRun']);
      if (body.dryRun !== undefined && typeof body.dryRun !== 'boolean') throw new HttpError(400, 'dryRun must be true or false');
      sendJson(res, 200, await a.forget(body));
    } else if (name === 'gc') {
      only(body, []);
      await streamed(req, res, (progress) => a.gc(progress));
    } else {
      only(body, ['points']);
      await streamed(req, res, (progress) => a.verify(body, progress));
    }
    return true;
  }
  allow(method, ['GET', 'HEAD', 'DELETE']);
  if (method === 'DELETE') sendJson(res, 200, await a.forget({ names: [name] }));
  else sendJson(res, 200, a.show(name));
  return true;
}
