/**
 * Client for the control API, used by the CLI (and tests).
 *
 * Endpoints are written `unix:/path/to/control.sock` (also `unix:///path`
 * or a bare absolute path) or `http://HOST:PORT`. Over TCP the bearer token
 * is sent with every request.
 */
import * as http from 'node:http';
import type { CreateVolumeBody, DeleteResult, Health, VolumeView } from './api';

export type ControlEndpoint =
  { kind: 'unix'; path: string; display: string } | { kind: 'tcp'; host: string; port: number; display: string };

export class ControlUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ControlUrlError';
  }
}

export function parseControlUrl(text: string): ControlEndpoint {
  const s = text.trim();
  if (s.startsWith('unix:')) {
    let p = s.slice('unix:'.length);
    if (p.startsWith('//')) p = p.slice(2); // unix:///path
    if (!p.startsWith('/')) throw new ControlUrlError(`invalid control URL "${text}": expected unix:/absolute/path`);
    return { kind: 'unix', path: p, display: `unix:${p}` };
  }
  if (s.startsWith('/')) return { kind: 'unix', path: s, display: `unix:${s}` };
  if (/^https?:\/\//.test(s)) {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw new ControlUrlError(`invalid control URL "${text}"`);
    }
    if (u.protocol === 'https:') throw new ControlUrlError('https is not supported by the control API; use http://127.0.0.1:PORT');
    if (!u.port) throw new ControlUrlError(`invalid control URL "${text}": a port is required`);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    return { kind: 'tcp', host, port: Number(u.port), display: `http://${u.host}` };
  }
  throw new ControlUrlError(`invalid control URL "${text}": expected unix:/path/control.sock or http://127.0.0.1:PORT`);
}

/** The daemon could not be reached at all. */
export class DaemonUnreachableError extends Error {
  constructor(
    readonly endpoint: ControlEndpoint,
    readonly code: string | undefined,
    detail: string,
  ) {
    super(detail);
    this.name = 'DaemonUnreachableError';
  }
}

/** The daemon answered with an error status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface ControlClientOptions {
  token?: string;
  timeoutMs?: number;
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

export class ControlClient {
  constructor(
    readonly endpoint: ControlEndpoint,
    private readonly opts: ControlClientOptions = {},
  ) {}

  /**
   * One request's options: `type` is both what is accepted and the body's
   * default Content-Type; the token goes with TCP requests that carry no
   * Authorization of their own.
   */
  private requestOptions(
    method: string,
    path: string,
    type: string,
    body: string | Buffer | undefined,
    headers: Record<string, string>,
  ): http.RequestOptions {
    const ep = this.endpoint;
    const allHeaders: Record<string, string | number> = { Accept: type, ...headers };
    if (body !== undefined) {
      allHeaders['Content-Type'] ??= type;
      allHeaders['Content-Length'] = Buffer.byteLength(body);
    }
    if (ep.kind === 'tcp' && this.opts.token && allHeaders.Authorization === undefined) {
      allHeaders.Authorization = `Bearer ${this.opts.token}`;
    }
    return {
      method,
      path,
      headers: allHeaders,
      agent: false,
      ...(ep.kind === 'unix' ? { socketPath: ep.path, host: 'localhost' } : { host: ep.host, port: ep.port }),
    };
  }

  /** Sends a request and returns the raw response (no status checking). */
  raw(method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<RawResponse> {
    const options = this.requestOptions(method, path, 'application/json', body, headers);
    const timeoutMs = this.opts.timeoutMs ?? 30_000;
    return new Promise<RawResponse>((resolve, reject) => {
      const req = http.request(options, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      });
      req.setTimeout(timeoutMs, () => {
        req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.connectError(err)));
      req.end(body);
    });
  }

  /** Sends a JSON request and returns the parsed JSON body; throws ApiError on 4xx/5xx. */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body === undefined ? undefined : JSON.stringify(body));
    let parsed: unknown;
    try {
      parsed = res.text ? JSON.parse(res.text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (res.status >= 400) {
      const msg =
        parsed && typeof parsed === 'object' && typeof (parsed as { error?: unknown }).error === 'string'
          ? (parsed as { error: string }).error
          : `HTTP ${res.status}${res.text ? `: ${res.text.slice(0, 200)}` : ''}`;
      throw new ApiError(res.status, msg);
    }
    if (parsed === undefined) throw new ApiError(res.status, `unexpected response from daemon: ${res.text.slice(0, 200)}`);
    return parsed as T;
  }

  /**
   * Sends a JSON request asking for NDJSON progress; calls onLine for each
   * line and resolves with the last line's "result" (throws ApiError for an
   * HTTP error or an {"error"} line). No overall timeout: the daemon keeps
   * the stream alive with progress lines.
   */
  async streamJson<T>(method: string, path: string, body: unknown, onLine: (line: Record<string, unknown>) => void): Promise<T> {
    const text = JSON.stringify(body);
    const options = this.requestOptions(method, path, 'application/json', text, { Accept: 'application/x-ndjson' });
    return new Promise<T>((resolve, reject) => {
      const req = http.request(options, (res) => {
        let buf = '';
        let result: T | undefined;
        let error: ApiError | null = null;
        res.setEncoding('utf8');
        const handle = (line: string): void => {
          if (!line.trim()) return;
          let obj: Record<string, unknown>;
          try {
            obj = JSON.parse(line) as Record<string, unknown>;
          } catch {
            error = new ApiError(res.statusCode ?? 0, `unexpected response from daemon: ${line.slice(0, 200)}`);
            return;
          }
          if ((res.statusCode ?? 0) >= 400) {
            error = new ApiError(res.statusCode ?? 0, typeof obj.error === 'string' ? obj.error : `HTTP ${res.statusCode}`);
            return;
          }
          if (typeof obj.error === 'string') error = new ApiError(typeof obj.status === 'number' ? obj.status : 500, obj.error);
          else if ('result' in obj) result = obj.result as T;
          else if (!('progress' in obj)) result = obj as T; // a plain JSON answer
          onLine(obj);
        };
        res.on('data', (c: string) => {
          buf += c;
          let i: number;
          while ((i = buf.indexOf('\n')) >= 0) {
            handle(buf.slice(0, i));
            buf = buf.slice(i + 1);
          }
        });
        res.on('end', () => {
          handle(buf);
          if (error) reject(error);
          else if (result === undefined) reject(new ApiError(res.statusCode ?? 0, 'the daemon ended the stream without a result'));
          else resolve(result);
        });
        res.on('error', reject);
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.connectError(err)));
      req.end(text);
    });
  }

  /**
   * A request whose answer is read as a stream (file downloads): resolves
   * with the response once its headers arrive; an error status is read and
   * thrown as ApiError. The caller consumes (or destroys) the response.
   */
  download(method: string, path: string, body?: Buffer, headers: Record<string, string> = {}): Promise<http.IncomingMessage> {
    const options = this.requestOptions(method, path, 'application/octet-stream', body, headers);
    return new Promise((resolve, reject) => {
      const req = http.request(options, (res) => {
        if ((res.statusCode ?? 0) < 400) return resolve(res);
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let msg = `HTTP ${res.statusCode}`;
          try {
            msg = (JSON.parse(text) as { error?: string }).error ?? msg;
          } catch {}
          reject(new ApiError(res.statusCode ?? 0, msg));
        });
        res.on('error', reject);
      });
      req.setTimeout(this.opts.timeoutMs ?? 30_000, () => {
        req.destroy(Object.assign(new Error(`no answer within ${this.opts.timeoutMs ?? 30_000} ms`), { code: 'ETIMEDOUT' }));
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.connectError(err)));
      req.end(body);
    });
  }

  health(): Promise<Health> {
    return this.request<Health>('GET', '/v1/health');
  }

  async listVolumes(): Promise<VolumeView[]> {
    return (await this.request<{ volumes: VolumeView[] }>('GET', '/v1/volumes')).volumes;
  }

  getVolume(name: string): Promise<VolumeView> {
    return this.request<VolumeView>('GET', `/v1/volumes/${encodeURIComponent(name)}`);
  }

  createVolume(body: CreateVolumeBody): Promise<VolumeView> {
    return this.request<VolumeView>('POST', '/v1/volumes', body);
  }

  removeVolume(name: string, opts: { keepData?: boolean } = {}): Promise<DeleteResult> {
    const q = opts.keepData ? '?keepData=1' : '';
    return this.request<DeleteResult>('DELETE', `/v1/volumes/${encodeURIComponent(name)}${q}`);
  }

  async metrics(): Promise<string> {
    const res = await this.raw('GET', '/v1/metrics', undefined, { Accept: 'text/plain' });
    if (res.status !== 200) throw new ApiError(res.status, `metrics: HTTP ${res.status}`);
    return res.text;
  }

  private connectError(err: NodeJS.ErrnoException): Error {
    const ep = this.endpoint;
    const where = ep.display;
    switch (err.code) {
      case 'ENOENT':
      case 'ECONNREFUSED':
      case 'ENOTSOCK':
        return new DaemonUnreachableError(ep, err.code, `no rewind daemon at ${where}; start one with \`rewind serve\``);
      case 'EACCES':
      case 'EPERM':
        return new DaemonUnreachableError(
          ep,
          err.code,
          `permission denied connecting to ${where}: the control socket is owner-only (mode 0600); run as the daemon's user`,
        );
      case 'ETIMEDOUT':
        return new DaemonUnreachableError(ep, err.code, `rewind daemon at ${where} did not answer: ${err.message}`);
      default:
        return new DaemonUnreachableError(ep, err.code, `cannot reach rewind daemon at ${where}: ${err.message}`);
    }
  }
}
