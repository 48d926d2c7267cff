/**
 * The console's static files, served by the control API's TCP listener
 * without the token (they hold no data; every data request needs it):
 *
 *   /                   index.html (the single page)
 *   /assets/...         src/console/assets/ (plain ES modules and CSS, no build step)
 *   /assets/vendor/uplot-VERSION/uPlot.iife.min.js, uPlot.min.css
 *                       the chart library, read from node_modules/uplot/dist
 *                       (an ordinary dependency: pinned by package-lock,
 *                       upgraded and audited by npm, nothing copied into the tree)
 *
 * Only files found at start are served (a fixed map: no path from the URL
 * ever reaches the filesystem). Every answer carries a strict
 * Content-Security-Policy (scripts and styles from this origin only, no
 * inline code, no framing) and an ETag; the page and its modules are
 * revalidated on each load (an upgrade takes effect at once), the
 * versioned vendor files are cached for good. Gzip when the client takes it.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import type * as http from 'node:http';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

interface Asset {
  body: Buffer;
  gzip: Buffer | null;
  type: string;
  etag: string;
  cache: string;
}

/** src/console/assets, found from this file's place in src/ or dist/src/. */
export function assetsDir(): string {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    const cand = path.join(dir, 'src', 'console', 'assets');
    if (fs.existsSync(path.join(cand, 'index.html'))) return cand;
    const here = path.join(dir, 'assets');
    if (fs.existsSync(path.join(here, 'index.html'))) return here;
    dir = path.dirname(dir);
  }
  throw new Error(`cannot find the console's assets (src/console/assets/index.html) above ${__dirname}`);
}

export class ConsoleAssets {
  private constructor(private readonly files: Map<string, Asset>) {}

  static load(dir = assetsDir()): ConsoleAssets {
    const files = new Map<string, Asset>();
    const uplotDir = path.dirname(require.resolve('uplot/package.json'));
    const uplotVersion = (JSON.parse(fs.readFileSync(path.join(uplotDir, 'package.json'), 'utf8')) as { version: string }).version;
    const vendor = `/assets/vendor/uplot-${uplotVersion}`;
    const add = (url: string, body: Buffer, cache: string): void => {
      const type = TYPES[url === '/' ? '.html' : path.extname(url)];
      if (!type) return;
      const gzip = body.length > 1024 && !type.startsWith('image/png') ? zlib.gzipSync(body, { level: 9 }) : null;
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
      files.set(url, { body, gzip, type, etag, cache });
    };
    for (const rel of listFiles(dir)) {
      if (rel === 'index.html') continue;
      add(`/assets/${rel}`, fs.readFileSync(path.join(dir, rel)), 'no-cache');
    }
    const html = fs.readFileSync(path.join(dir, 'index.html'), 'utf8').replaceAll('{{UPLOT}}', vendor);
    add('/', Buffer.from(html), 'no-cache');
    for (const f of ['uPlot.iife.min.js', 'uPlot.min.css']) {
      add(`${vendor}/${f}`, fs.readFileSync(path.join(uplotDir, 'dist', f)), 'public, max-age=31536000, immutable');
    }
    const icon = files.get('/assets/icon.svg');
    if (icon) files.set('/favicon.ico', icon);
    return new ConsoleAssets(files);
  }

  /** The URL paths served (tests). */
  paths(): string[] {
    return [...this.files.keys()];
  }

  has(pathname: string): boolean {
    return this.files.has(pathname === '/index.html' ? '/' : pathname);
  }

  /** Answers GET/HEAD of a console file; false if `pathname` is not one (the caller goes on routing). */
  serve(req: http.IncomingMessage, res: http.ServerResponse, pathname: string): boolean {
    const a = this.files.get(pathname === '/index.html' ? '/' : pathname);
    if (!a) return false;
    const method = req.method ?? 'GET';
    const headers: http.OutgoingHttpHeaders = {
      'Content-Type': a.type,
      'Cache-Control': a.cache,
      ETag: a.etag,
      'Content-Security-Policy': CONSOLE_CSP,
      'X-Content-Type-Options': 'nosniff',
      'X-Frame-Options': 'DENY',
      'Referrer-Policy': 'no-referrer',
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Resource-Policy': 'same-origin',
      Vary: 'Accept-Encoding',
    };
    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405, { ...headers, Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('method not allowed\n');
      return true;
    }
    if (req.headers['if-none-match'] === a.etag) {
      res.writeHead(304, headers);
      res.end();
      return true;
    }
    const gz = a.gzip && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
    const body = gz ? a.gzip! : a.body;
    if (gz) headers['Content-Encoding'] = 'gzip';
    headers['Content-Length'] = body.length;
    res.writeHead(200, headers);
    res.end(method === 'HEAD' ? undefined : body);
    return true;
  }
}

function listFiles(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listFiles(dir, rel));
    else if (e.isFile()) out.push(rel);
  }
  return out;
}
