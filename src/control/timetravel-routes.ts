/**
 * Control API routes of time travel (snapshots, clones, step, restore,
 * export). Long operations (restore, export) stream progress as NDJSON when
 * the client sends "Accept: application/x-ndjson": lines
 * {"progress":{phase,done,total}} ... then {"result":...} or {"error":"..."}.
 * Errors found before any progress are ordinary HTTP errors.
 *
 *   POST   /v1/volumes/NAME/resolve     {at, nearest?}      -> point (never seals; see resolver.ts)
 *   POST   /v1/volumes/NAME/snapshots   {at, name?, nearest?} -> view
 *   POST   /v1/volumes/NAME/clones      {at?, name?, readOnly?, nearest?}  (NAME: volume or clone)
 *   GET    /v1/views[?volume=NAME]                          -> {views}
 *   GET    /v1/views/NAME                                   -> view
 *   DELETE /v1/views/NAME
 *   POST   /v1/views/NAME/step          {forward|back|to, nearest?}
 *   POST   /v1/volumes/NAME/restore     {to, ranges?, force?, nearest?}
 *   GET    /v1/volumes/NAME/restores
 *   POST   /v1/volumes/NAME/export      {at, out, nearest?}
 *   GET    /v1/markers/TARGET[?name=GLOB&kind=K&since=T&until=T]   (TARGET: volume or group)
 *   POST   /v1/markers/TARGET           {name, pre?, post?, timeout?, keep?, at?, nearest?} (at: a past point, volumes only)
 *   DELETE /v1/markers/TARGET/NAME
 *   POST   /v1/volumes/NAME/surface     {marker}      POST /v1/submerge {name}
 *   GET    /v1/volumes/NAME/schedule    POST {add?: rule | rules, clear?}
 *   POST   /v1/volumes/NAME/diff        {from, to, name?, out?, nearest?}
 *   POST   /v1/volumes/NAME/bisect-candidates {good, bad, granularity?, nearest?}
 * nearest ("before" | "after"): where a point has no image (merged by
 * retention, inside a super transaction), use the nearest valid point on
 * that side instead of refusing; the answer says which point it used.
 */
import type * as http from 'node:http';
import { UserError } from '../util/errors';
import { httpStatusOf, decodePathName } from '../util/http';
import type { VolumeManager } from '../daemon/volumes';
import type { Progress, TimeTravel } from '../timetravel/service';
import { HttpError, allow, readJsonObject, sendJson } from '../util/http';
import { tracked, type JobRegistry } from '../daemon/jobs';

function only(body: Record<string, unknown>, fields: string[]): void {
  for (const k of Object.keys(body)) {
    if (!fields.includes(k)) throw new HttpError(400, `unknown field "${k}" (expected ${fields.join(', ')})`);
  }
}

/** Runs a long operation, streaming progress as NDJSON if the client asked for it. */
export async function streamed<T>(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  run: (progress: (p: Progress) => void) => Promise<T>,
): Promise<void> {
  const ndjson = /application\/x-ndjson/.test(req.headers.accept ?? '');
  let started = false;
  let last = 0;
  const progress = (p: Progress): void => {
    if (!ndjson || res.destroyed) return;
    if (!started) {
      res.writeHead(200, { 'Content-Type': 'application/x-ndjson', 'Cache-Control': 'no-store' });
      started = true;
    }
    const now = Date.now();
    if (now - last < 100 && p.done < p.total) return;
    last = now;
    res.write(JSON.stringify({ progress: p }) + '\n');
  };
  try {
    const result = await run(progress);
    if (!started && !ndjson) return sendJson(res, 200, result);
    if (!started) res.writeHead(200, { 'Content-Type': 'application/x-ndjson', 'Cache-Control': 'no-store' });
    res.end(JSON.stringify({ result }) + '\n');
  } catch (err) {
    if (!started) throw err;
    const status = err instanceof UserError ? httpStatusOf(err) : 500;
    res.end(JSON.stringify({ error: (err as Error).message, status }) + '\n');
  }
}

export async function routeTimeTravel(
  tt: TimeTravel,
  volumes: VolumeManager,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  method: string,
  p: string,
  url: URL,
  /** Restores, exports and diffs report here (the console's jobs page). */
  jobs?: JobRegistry,
): Promise<boolean> {
  if (p === '/v1/views') {
    allow(method, ['GET', 'HEAD']);
    sendJson(res, 200, { views: tt.views.list(url.searchParams.get('volume') ?? undefined) });
    return true;
  }
  const mk = /^\/v1\/markers\/([^/]+)(?:\/([^/]+))?$/.exec(p);
  if (mk) {
    const target = decodePathName(mk[1]!);
    if (mk[2]) {
      allow(method, ['DELETE']);
      sendJson(res, 200, await tt.markers.unmark(target, decodePathName(mk[2])));
      return true;
    }
    allow(method, ['GET', 'HEAD', 'POST']);
    if (method === 'POST') {
      const body = await readJsonObject(req);
      only(body, ['name', 'pre', 'post', 'timeout', 'keep', 'at', 'nearest']);
      sendJson(res, 201, await tt.markers.mark(target, body.name, body));
      return true;
    }
    const q = url.searchParams;
    const time = (k: string): number | undefined => {
      const v = q.get(k);
      if (v === null) return undefined;
      const t = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
      if (!Number.isFinite(t)) throw new UserError('invalid', `${k}: cannot parse time "${v}"`);
      return t;
    };
    const f: { name?: string; kind?: string; since?: number; until?: number } = {};
    if (q.get('name')) f.name = q.get('name')!;
    if (q.get('kind')) f.kind = q.get('kind')!;
    const since = time('since');
    const until = time('until');
    if (since !== undefined) f.since = since;
    if (until !== undefined) f.until = until;
    sendJson(res, 200, { markers: tt.markers.markers(target, f) });
    return true;
  }
  if (p === '/v1/submerge') {
    allow(method, ['POST']);
    const body = await readJsonObject(req);
    only(body, ['name']);
    sendJson(res, 200, await tt.markers.submerge(String(body.name ?? '')));
    return true;
  }
  let m = /^\/v1\/views\/([^/]+)(\/step)?$/.exec(p);
  if (m) {
    const name = decodePathName(m[1]!);
    if (m[2]) {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['forward', 'back', 'to', 'nearest']);
      sendJson(res, 200, await tt.views.step(name, body));
      return true;
    }
    allow(method, ['GET', 'HEAD', 'DELETE']);
    if (method === 'DELETE') sendJson(res, 200, await tt.views.remove(name));
    else sendJson(res, 200, tt.views.get(name));
    return true;
  }
  m = /^\/v1\/volumes\/([^/]+)\/(resolve|snapshots|clones|restore|restores|export|surface|schedule|diff|bisect-candidates)$/.exec(p);
  if (!m) return false;
  const name = decodePathName(m[1]!);
  const action = m[2]!;
  if (!volumes.get(name) && !(action === 'clones' && tt.views.has(name))) throw new HttpError(404, `no volume named "${name}"`);
  switch (action) {
    case 'resolve': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['at', 'nearest']);
      sendJson(res, 200, await tt.points.resolveInfo(name, body.at, { nearest: body.nearest }));
      return true;
    }
    case 'snapshots': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['at', 'name', 'allow', 'nearest']);
      sendJson(res, 201, await tt.views.snapshot(name, body.at, body.name, { allow: body.allow, nearest: body.nearest }));
      return true;
    }
    case 'clones': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['at', 'name', 'readOnly', 'allow', 'nearest']);
      if (body.readOnly !== undefined && typeof body.readOnly !== 'boolean')
        throw new UserError('invalid', 'readOnly must be true or false');
      sendJson(
        res,
        201,
        await tt.views.clone(name, body.at, body.name, { readOnly: body.readOnly === true, allow: body.allow, nearest: body.nearest }),
      );
      return true;
    }
    case 'restores':
      allow(method, ['GET', 'HEAD']);
      sendJson(res, 200, { restores: tt.restores.restores(name) });
      return true;
    case 'restore': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['to', 'ranges', 'force', 'nearest']);
      if (body.force !== undefined && typeof body.force !== 'boolean') throw new UserError('invalid', 'force must be true or false');
      const run = tracked(
        jobs,
        'restore',
        name,
        `to ${String(body.to)}`,
        (progress) => tt.restores.restore(name, body, progress),
        (r) => `${r.blocksWritten} blocks rewritten${r.undo ? `; undo with --to ${r.undo}` : ''}`,
      );
      await streamed(req, res, run);
      return true;
    }
    case 'surface': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['marker']);
      sendJson(res, 201, await tt.markers.surface(name, String(body.marker ?? '')));
      return true;
    }
    case 'schedule': {
      allow(method, ['GET', 'HEAD', 'POST']);
      if (method === 'POST') {
        const body = await readJsonObject(req);
        only(body, ['add', 'clear']);
        sendJson(res, 200, await tt.markers.setSchedule(name, body));
      } else sendJson(res, 200, tt.markers.schedule(name));
      return true;
    }
    case 'diff': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['from', 'to', 'name', 'out', 'nearest']);
      const run = tracked(
        jobs,
        'diff',
        name,
        `${String(body.from)} .. ${String(body.to)}`,
        (progress) => tt.queries.diff(name, body, progress),
        (r) => `${r.extents.length} extents, ${r.changedBytes} bytes changed`,
      );
      await streamed(req, res, run);
      return true;
    }
    case 'bisect-candidates': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['good', 'bad', 'granularity', 'nearest']);
      sendJson(res, 200, await tt.queries.bisectCandidates(name, body));
      return true;
    }
    case 'export': {
      allow(method, ['POST']);
      const body = await readJsonObject(req);
      only(body, ['at', 'out', 'nearest']);
      const run = tracked(jobs, 'export', name, `${String(body.at)} to ${String(body.out)}`, (progress) =>
        tt.queries.exportImage(name, body.at, body.out, progress, { nearest: body.nearest }),
      );
      await streamed(req, res, run);
      return true;
    }
  }
  return false;
}
