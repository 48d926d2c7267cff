/**
 * HTTP helpers shared by the control API and the manager role's routes:
 * errors with a status, method checks, JSON replies and bounded JSON
 * request bodies.
 */
import type * as http from 'node:http';
import type { UserError } from './errors';

/** Largest request body accepted (bytes). */
export const MAX_BODY_BYTES = 64 * 1024;

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The HTTP status of a user error. */
export function httpStatusOf(err: UserError): number {
  switch (err.kind) {
    case 'invalid':
      return 400;
    case 'not-found':
      return 404;
    case 'conflict':
      return 409;
  }
}

export function allow(method: string, methods: string[]): void {
  if (!methods.includes(method)) {
    throw new HttpError(405, `method ${method} not allowed here (allowed: ${methods.join(', ')})`);
  }
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
  });
  res.end(res.req?.method === 'HEAD' ? undefined : text);
}

export async function readJsonObject(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > MAX_BODY_BYTES) {
    throw new HttpError(413, `request body too large (limit ${MAX_BODY_BYTES} bytes)`);
  }
  // Collected by hand rather than with for-await: leaving a for-await early
  // destroys the socket, and the client would get no 413 response.
  const raw = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let failed = false;
    const fail = (err: HttpError) => {
      if (failed) return;
      failed = true;
      chunks.length = 0;
      reject(err);
    };
    req.on('data', (chunk: Buffer) => {
      if (failed) return; // discard the rest; the connection is closed after the reply
      total += chunk.length;
      if (total > MAX_BODY_BYTES) {
        fail(new HttpError(413, `request body too large (limit ${MAX_BODY_BYTES} bytes)`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(chunks));
    });
    req.on('error', (err) => fail(new HttpError(400, `reading request body: ${err.message}`)));
    req.on('close', () => {
      if (!req.complete) fail(new HttpError(400, 'request body incomplete'));
    });
  });
  const text = raw.toString('utf8');
  if (text.trim() === '') throw new HttpError(400, 'request body is empty: expected a JSON object');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new HttpError(400, 'request body must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/** A name taken from a URL path segment; malformed percent-encoding is the client's error (400). */
export function decodePathName(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new HttpError(400, 'malformed name in URL');
  }
}
