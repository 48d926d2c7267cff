/**
 * Control API routes of retention:
 *
 *   GET  /v1/volumes/NAME/retention                  -> RetentionInfo
 *   PUT  /v1/volumes/NAME/retention   {policy}       -> RetentionInfo (policy null: keep everything)
 *   POST /v1/volumes/NAME/retention/fade {dryRun?, policy?, bytesPerSecond?} -> FadeReport
 */
import type * as http from 'node:http';
import type { RetentionService } from '../daemon/retention';
import { HttpError, allow, readJsonObject, sendJson } from '../util/http';

export async function routeRetention(
  svc: RetentionService,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  method: string,
  p: string,
): Promise<boolean> {
  const m = /^\/v1\/volumes\/([^/]+)\/retention(\/fade)?$/.exec(p);
  if (!m) return false;
  let name: string;
  try {
    name = decodeURIComponent(m[1]!);
  } catch {
    throw new HttpError(400, 'malformed volume name in URL');
  }
  if (m[2]) {
    allow(method, ['POST']);
    const body = await readJsonObject(req);
    for (const k of Object.keys(body))
      if (k !== 'dryRun' && k !== 'policy' && k !== 'bytesPerSecond')
        throw new HttpError(400, `unknown field "${k}" (expected dryRun, policy, bytesPerSecond)`);
    if (body.bytesPerSecond !== undefined && !(typeof body.bytesPerSecond === 'number' && body.bytesPerSecond >= 0))
      throw new HttpError(400, 'bytesPerSecond must be a number >= 0');
    if (body.policy !== undefined && typeof body.policy !== 'string') throw new HttpError(400, 'policy must be a string');
    sendJson(
      res,
      200,
      await svc.fade(name, {
        dryRun: body.dryRun === true,
        policy: body.policy as string | undefined,
        bytesPerSecond: body.bytesPerSecond as number | undefined,
      }),
    );
    return true;
  }
  allow(method, ['GET', 'HEAD', 'PUT']);
  if (method === 'PUT') {
    const body = await readJsonObject(req);
    if (!('policy' in body)) throw new HttpError(400, 'field "policy" is required');
    sendJson(res, 200, await svc.setPolicy(name, body.policy));
    return true;
  }
  sendJson(res, 200, svc.info(name));
  return true;
}
