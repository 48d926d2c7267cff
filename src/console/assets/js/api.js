// The console's requests: every one carries the bearer token in the
// Authorization header (never a cookie: credentials are omitted), so a
// page on another site cannot act with it. The token lives in this tab's
// sessionStorage only.

const KEY = 'rewind.token';

export const token = {
  /** @returns {string | null} */
  get() {
    return sessionStorage.getItem(KEY);
  },
  /** @param {string} t */
  set(t) {
    sessionStorage.setItem(KEY, t);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

/** Called when the daemon answers 401 (set by app.js: back to the token form). */
let onUnauthorized = () => {};
/** @param {() => void} fn */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** @param {string} name */
export const enc = (name) => encodeURIComponent(name);

/**
 * @param {string} method @param {unknown} body @param {string} accept
 * @param {AbortSignal} [signal]
 * @returns {RequestInit}
 */
function init(method, body, accept, signal) {
  /** @type {Record<string, string>} */
  const headers = { Accept: accept };
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: /** @type {RequestCache} */ ('no-store'),
    credentials: /** @type {RequestCredentials} */ ('omit'),
  };
}

/** @param {Response} res */
async function fail(res) {
  const text = await res.text().catch(() => '');
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const j = JSON.parse(text);
    if (j && typeof j.error === 'string') message = j.error;
  } catch {
    if (text) message = text.slice(0, 500);
  }
  if (res.status === 401) onUnauthorized();
  return new ApiError(res.status, message);
}

/**
 * A JSON request. Throws ApiError with the daemon's message.
 * @param {string} method @param {string} path @param {unknown} [body]
 * @param {{ signal?: AbortSignal }} [o]
 * @returns {Promise<any>}
 */
export async function api(method, path, body, o = {}) {
  const res = await fetch(path, init(method, body, 'application/json', o.signal));
  if (!res.ok) throw await fail(res);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/** GET of a file as a Blob (downloads need the token too). @param {string} path */
export async function blob(path) {
  const res = await fetch(path, init('GET', undefined, '*/*'));
  if (!res.ok) throw await fail(res);
  return { blob: await res.blob(), disposition: res.headers.get('Content-Disposition') };
}

/**
 * A long operation streaming NDJSON progress ({progress}, then {result} or {error}).
 * @param {string} path @param {unknown} body @param {(p: {phase: string, done: number, total: number}) => void} onProgress
 */
export async function streamed(path, body, onProgress) {
  const res = await fetch(path, init('POST', body, 'application/x-ndjson'));
  if (!res.ok) throw await fail(res);
  if (!res.body) throw new ApiError(500, 'no response body');
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line);
      if (msg.progress) onProgress(msg.progress);
      else if ('result' in msg) return msg.result;
      else if (msg.error) throw new ApiError(msg.status ?? 500, msg.error);
    }
    if (done) throw new ApiError(500, 'the stream ended without a result');
  }
}

/**
 * Live state as server-sent events, read with fetch (EventSource cannot send
 * the Authorization header). Reconnects with a backoff; returns a stop function.
 * @param {(state: any) => void} onState @param {(up: boolean) => void} onStatus
 */
export function liveEvents(onState, onStatus) {
  let stopped = false;
  let ctrl = new AbortController();
  let delay = 1000;
  const run = async () => {
    while (!stopped) {
      ctrl = new AbortController();
      try {
        const res = await fetch('/v1/console/events', init('GET', undefined, 'text/event-stream', ctrl.signal));
        if (res.status === 401) {
          onUnauthorized();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        onStatus(true);
        delay = 1000;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const frame = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const data = frame
              .split('\n')
              .filter((l) => l.startsWith('data: '))
              .map((l) => l.slice(6))
              .join('\n');
            if (data) onState(JSON.parse(data));
          }
        }
      } catch {
        // reconnect below
      }
      if (stopped) return;
      onStatus(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  void run();
  return () => {
    stopped = true;
    ctrl.abort();
  };
}
