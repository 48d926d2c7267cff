/**
 * The console's files page in a real browser, against a stand-in for the
 * file catalog's API (being built apart: GET /v1/volumes/NAME/catalog,
 * /files?at=P&path=/dir, /files/versions?path=/x, /files/content?at=P&path=/x,
 * entries with path, name, ino, type, size, mode, uid, gid, mtime). The
 * stand-in serves the real console files (ConsoleAssets) and requires the
 * token like the daemon. Checked: the page appears only when the catalog
 * answers; browsing, versions and a download work; file names holding
 * markup and quotes render as text.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { ConsoleAssets } from '../src/console/assets';
import { collectPageErrors, openBrowser } from './helpers/browser';

const TOKEN = 'files-test-token';
const EVIL_FILE = `<img src=x onerror="window.__pwned=1">"a'b.txt`;
const HOSTNAME = 'web-01\n';

function entry(dir: string, name: string, type: 'file' | 'dir', size: number, mode: number, mtime: number, ino: number) {
  return { path: `${dir === '/' ? '' : dir}/${name}`, name, ino, type, size, mode, uid: 0, gid: 0, mtime };
}

const T = Date.parse('2026-11-20T08:00:00Z') / 1000;
const TREE: Record<string, ReturnType<typeof entry>[]> = {
  '/': [
    entry('/', 'etc', 'dir', 4096, 0o40755, T - 86400, 2),
    entry('/', 'home', 'dir', 4096, 0o40755, T - 3600, 3),
    entry('/', EVIL_FILE, 'file', 1234, 0o100644, T - 60, 12),
    entry('/', 'README', 'file', 77, 0o100644, T - 7200, 13),
  ],
  '/etc': [
    entry('/etc', 'hostname', 'file', HOSTNAME.length, 0o100644, T - 600, 21),
    entry('/etc', 'fstab', 'file', 311, 0o100644, T - 86400 * 9, 22),
  ],
  '/home': [entry('/home', 'alice', 'dir', 4096, 0o40700, T - 100, 31)],
};

function standIn(withCatalog: boolean): http.Server {
  const assets = ConsoleAssets.load();
  return http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method === 'GET' && assets.serve(req, res, url.pathname)) return;
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return json(401, { error: 'missing or invalid bearer token' });
    const p = url.pathname;
    const q = url.searchParams;
    if (p === '/v1/health') return json(200, { ok: true, nbd: { tcp: '127.0.0.1:10809', unix: null } });
    if (p === '/v1/console/events') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write(`event: state\ndata: ${JSON.stringify({ time: Date.now(), volumes: [], jobs: { version: 0, running: 0 } })}\n\n`);
      return;
    }
    if (p === '/v1/volumes/vm1/catalog' && withCatalog)
      return json(200, { volume: 'vm1', points: 42, files: 3456, indexedUpTo: '@seq:9000' });
    if (p === '/v1/volumes/vm1/files' && withCatalog) {
      const entries = TREE[q.get('path') ?? '/'];
      if (!entries) return json(404, { error: `no directory ${q.get('path')}` });
      return json(200, { point: { seq: 9000, time: '2026-11-20T08:00:00.000Z' }, path: q.get('path'), entries });
    }
    if (p === '/v1/volumes/vm1/files/versions' && withCatalog) {
      return json(200, {
        path: q.get('path'),
        versions: [
          { seq: 120, time: '2026-11-01T10:00:00.000Z', size: 7, mtime: T - 86400 * 19, ino: 21 },
          { seq: 8800, time: '2026-11-20T07:50:00.000Z', size: HOSTNAME.length, mtime: T - 600, ino: 21 },
        ],
      });
    }
    if (p === '/v1/volumes/vm1/files/content' && withCatalog) {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Disposition': 'attachment; filename="hostname"' });
      res.end(q.get('path') === '/etc/hostname' ? HOSTNAME : 'other');
      return;
    }
    json(404, { error: `no such endpoint: ${req.method} ${p}` });
  });
}

async function listen(s: http.Server): Promise<string> {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(s.address() as { port: number }).port}`;
}

test.serial('files: browse a point, a file across time, a download; names render as text', async (t) => {
  const server = standIn(true);
  const base = await listen(server);
  t.teardown(() => server.close());
  const b = await openBrowser();
  t.teardown(() => b.close());
  t.log(`screenshots: ${b.artifacts}`);
  const page = await b.page();
  const errors = collectPageErrors(page);
  await page.goto(`${base}/#token=${TOKEN}`);
  await page.goto(`${base}/#/volume/vm1/files`);
  await page.waitForSelector('#files-table');
  t.true(await page.locator('#nav-files').isVisible(), 'the nav offers Files when the catalog answers');
  const names = await page.$$eval('#files-table .file-name', (els) => els.map((e) => e.textContent));
  t.deepEqual(names, ['etc/', 'home/', EVIL_FILE, 'README']);
  t.regex((await page.textContent('#files-table'))!, /-rw-r--r--/);
  t.regex((await page.textContent('#files-table'))!, /drwxr-xr-x/);
  await page.click('#files-table a.file-name >> text=etc/');
  await page.waitForSelector('#files-table tr[data-path="/etc/hostname"]');
  t.regex((await page.textContent('#files-crumbs'))!, /etc/);
  await page.click('#files-table tr[data-path="/etc/hostname"] button >> text=Versions');
  await page.waitForSelector('#versions-table');
  t.is((await page.$$('#versions-table tbody tr')).length, 2);
  await b.shot(page, 'files');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('#files-table tr[data-path="/etc/hostname"] button >> text=Download'),
  ]);
  t.is(download.suggestedFilename(), 'hostname');
  t.is(fs.readFileSync((await download.path())!, 'utf8'), HOSTNAME);
  const dom = await page.evaluate(() => ({
    pwned: (globalThis as any).__pwned ?? null,
    imgs: (globalThis as any).document.querySelectorAll('img').length,
  }));
  t.deepEqual(dom, { pwned: null, imgs: 0 });
  t.deepEqual(errors, []);
});

test.serial('files: without the catalog API the page is not offered', async (t) => {
  const server = standIn(false);
  const base = await listen(server);
  t.teardown(() => server.close());
  const b = await openBrowser();
  t.teardown(() => b.close());
  const page = await b.page();
  await page.goto(`${base}/#token=${TOKEN}`);
  await page.goto(`${base}/#/volume/vm1/diff`);
  await page.waitForSelector('#diff-from');
  // The probe has answered 404 "no such endpoint": the link stays hidden.
  await page.waitForTimeout(500);
  t.true(await page.locator('#nav-files').isHidden());
});
