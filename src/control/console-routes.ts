/**
 * Control API routes of the web console (shapes in src/console/api.ts):
 *
 *   GET /v1/volumes/NAME/timeline?from=T&to=T&buckets=N   write rate, transactions, markers, lag; bucketed
 *   GET /v1/console/overview                              volumes, groups, views, jobs (console-overview.ts)
 *   GET /v1/console/events                                server-sent events: LiveState every 2 s
 *   GET /v1/jobs, GET /v1/jobs/ID                         running and recent long operations
 *
 * T is ms since the epoch or an ISO time. These need the token like every
 * other route; only the static files (src/console/assets.ts) do not.
 */
import type * as http from 'node:http';
import type { EventHub } from '../console/events';
import type { TimelineService } from '../console/timeline';
import type { JobRegistry } from '../daemon/jobs';
import { HttpError, allow, sendJson, decodePathName } from '../util/http';
import { buildOverview, type ConsoleSource } from './console-overview';

export interface ConsoleRouteDeps {
  timeline: TimelineService;
  jobs: JobRegistry;
  events: EventHub;
  source: ConsoleSource;
}

function timeParam(q: URLSearchParams, key: string): number | undefined {
  const v = q.get(key);
  if (v === null || v === '') return undefined;
  const t = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(t)) throw new HttpError(400, `${key}: cannot parse time "${v}" (ms since the epoch or an ISO time)`);
  return t;
}

export async function routeConsole(
  deps: ConsoleRouteDeps,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  method: string,
  p: string,
  url: URL,
): Promise<boolean> {
  const tl = /^\/v1\/volumes\/([^/]+)\/timeline$/.exec(p);
  if (tl) {
    allow(method, ['GET', 'HEAD']);
    const q = url.searchParams;
    const b = q.get('buckets');
    const buckets = b === null ? undefined : Number(b);
    if (buckets !== undefined && !(Number.isInteger(buckets) && buckets > 0))
      throw new HttpError(400, 'buckets must be a positive integer');
    const from = timeParam(q, 'from');
    const to = timeParam(q, 'to');
    sendJson(res, 200, await deps.timeline.timeline(decodePathName(tl[1]!), { from, to, buckets }));
    return true;
  }
  if (p === '/v1/console/overview') {
    allow(method, ['GET', 'HEAD']);
    sendJson(res, 200, await buildOverview(deps.source, deps.jobs));
    return true;
  }
  if (p === '/v1/console/events') {
    allow(method, ['GET']);
    if (!deps.events.subscribe(res)) throw new HttpError(503, 'too many open event streams; close another console tab');
    req.resume();
    return true;
  }
  if (p === '/v1/jobs') {
    allow(method, ['GET', 'HEAD']);
    sendJson(res, 200, { jobs: deps.jobs.list() });
    return true;
  }
  const jm = /^\/v1\/jobs\/(\d+)$/.exec(p);
  if (jm) {
    allow(method, ['GET', 'HEAD']);
    const job = deps.jobs.get(Number(jm[1]));
    if (!job) throw new HttpError(404, `no job ${jm[1]} (finished jobs are kept for a while, the last 100)`);
    sendJson(res, 200, job);
    return true;
  }
  return false;
}
