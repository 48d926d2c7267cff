/**
 * The web console's security: every data request and every action needs
 * the bearer token (none, a wrong one, one in a cookie or the query: 401,
 * and nothing changes), only the static files are served without it, and
 * only on the TCP listener, with a strict CSP; a page on another origin
 * cannot act through a logged-in console; and volume, marker and
 * description text holding <script>, markup and quotes renders as text.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { Catalog } from '../src/catalog/catalog';
import { openStores } from '../src/timetravel/store';
import { run, startDaemon, type TestDaemon } from './helpers/daemon';
import { apiOk, cliOk as cli } from './helpers/live';
import { collectPageErrors, openBrowser, waitDrawn } from './helpers/browser';

const EVIL_VOLUME = `<script>window.__pwned=1</script>"vol'`;
const EVIL_MARKER = `<img src=x onerror="window.__pwned=2">'"mk`;
const EVIL_DESCRIPTION = `<b onmouseover="window.__pwned=3">bold</b> & "quoted" 'text'`;

async function tcp(d: TestDaemon, method: string, p: string, headers: Record<string, string>, body?: unknown) {
  const res = await fetch(`http://127.0.0.1:${d.controlPort}${p}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'Content-Type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

async function state(d: TestDaemon) {
  const vols = (await apiOk(d, 'GET', '/v1/volumes')).volumes.map((v: any) => v.name).sort();
  const views = (await apiOk(d, 'GET', '/v1/views')).views.map((v: any) => v.name).sort();
  const markers = (await apiOk(d, 'GET', '/v1/markers/sec')).markers.map((m: any) => m.name).sort();
  const jobs = (await apiOk(d, 'GET', '/v1/jobs')).jobs.length;
  const retention = (await apiOk(d, 'GET', '/v1/volumes/sec/retention')).policy;
  return { vols, views, markers, jobs, retention };
}

test.serial('without the token, or with a wrong one, every data request and action gets 401 and changes nothing', async (t) => {
  const d = await startDaemon({ controlTcp: true });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'sec', '--size', '8M', '--protected']);
  const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 1M', d.nbdUri('sec')]);
  t.is(w.code, 0, w.stderr);
  await cli(d, ['seal', 'sec']);
  await cli(d, ['mark', 'sec', 'kept']);
  const before = await state(d);
  const token = d.token();
  const bad: Array<[string, Record<string, string>]> = [
    ['no token', {}],
    ['wrong token', { Authorization: `Bearer ${token.slice(0, -1)}${token.endsWith('0') ? '1' : '0'}` }],
    ['empty bearer', { Authorization: 'Bearer ' }],
    ['basic auth', { Authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` }],
    ['token as a cookie', { Cookie: `token=${token}; rewind.token=${token}` }],
  ];
  const requests: Array<[string, string, unknown?]> = [
    ['GET', '/v1/health'],
    ['GET', '/v1/console/overview'],
    ['GET', '/v1/console/events'],
    ['GET', '/v1/volumes/sec/timeline'],
    ['GET', '/v1/jobs'],
    ['GET', '/v1/volumes'],
    ['GET', '/v1/markers/sec'],
    ['POST', '/v1/volumes', { name: 'evil', size: '1M' }],
    ['DELETE', '/v1/volumes/sec'],
    ['POST', '/v1/volumes/sec/clones', { at: 'latest', name: 'evil-clone' }],
    ['POST', '/v1/volumes/sec/snapshots', { at: 'latest', name: 'evil-snap' }],
    ['POST', '/v1/markers/sec', { name: 'evil-mark' }],
    ['DELETE', '/v1/markers/sec/kept'],
    ['POST', '/v1/volumes/sec/restore', { to: '@seq:1', force: true }],
    ['PUT', '/v1/volumes/sec/retention', { policy: 'all:1s' }],
    ['POST', '/v1/volumes/sec/verify'],
    ['POST', '/v1/volumes/sec/diff', { from: '@seq:1', to: 'latest', name: 'evil-diff' }],
  ];
  for (const [why, headers] of bad) {
    for (const [method, p, body] of requests) {
      const r = await tcp(d, method, p, headers, body);
      t.is(r.status, 401, `${why}: ${method} ${p}`);
      t.regex(r.text, /bearer token/, `${why}: ${method} ${p}`);
    }
    // The token in the query string is not a token either.
    t.is((await tcp(d, 'GET', `/v1/volumes?token=${token}`, headers)).status, 401);
  }
  t.deepEqual(await state(d), before, 'nothing changed');
  // With the token they work (so the 401s above were about the token).
  t.is((await tcp(d, 'GET', '/v1/volumes/sec/timeline', { Authorization: `Bearer ${token}` })).status, 200);
  // CORS preflights are refused too: a browser on another origin never gets to send the request.
  const pre = await tcp(d, 'OPTIONS', '/v1/volumes', { Origin: 'http://evil.example', 'Access-Control-Request-Method': 'POST' });
  t.is(pre.status, 401);
  t.is(pre.headers.get('access-control-allow-origin'), null);

  // The static files need no token, carry the CSP, and exist only on TCP.
  const page = await tcp(d, 'GET', '/', {});
  t.is(page.status, 200);
  t.regex(page.headers.get('content-security-policy')!, /script-src 'self'/);
  t.regex(page.headers.get('content-security-policy')!, /frame-ancestors 'none'/);
  t.is(page.headers.get('x-content-type-options'), 'nosniff');
  t.is((await tcp(d, 'GET', '/assets/js/app.js', {})).status, 200);
  t.is((await tcp(d, 'POST', '/', {}, {})).status, 401, 'only GET and HEAD of the files go without the token');
  const unix = await d.api('GET', '/');
  t.is(unix.status, 404, 'the Unix socket serves no console');
});

test.serial('a page on another origin cannot act through a logged-in console', async (t) => {
  const d = await startDaemon({ controlTcp: true });
  t.teardown(() => d.cleanup());
  const evil = http.createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<!doctype html><title>evil</title>');
  });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
  t.teardown(() => evil.close());
  const evilOrigin = `http://localhost:${(evil.address() as { port: number }).port}`;
  const b = await openBrowser();
  t.teardown(() => b.close());
  const page = await b.page();
  await page.goto(`http://127.0.0.1:${d.controlPort}/#token=${d.token()}`);
  await page.waitForSelector('#volumes');
  const other = await b.page();
  await other.goto(`${evilOrigin}/`);
  const target = `http://127.0.0.1:${d.controlPort}`;
  const results = await other.evaluate(async (base) => {
    const out: string[] = [];
    const tryIt = async (what: string, init: any) => {
      try {
        const r = await fetch(`${base}/v1/volumes`, init);
        out.push(`${what}: ${r.status}`);
      } catch (e) {
        out.push(`${what}: blocked (${(e as Error).name})`);
      }
    };
    await tryIt('simple', { method: 'POST', mode: 'no-cors', credentials: 'include', body: '{"name":"evil","size":"1M"}' });
    await tryIt('json', {
      method: 'POST',
      credentials: 'include',
      headers: { 'Content-Type': 'application/json' },
      body: '{"name":"evil2","size":"1M"}',
    });
    return out;
  }, target);
  t.log(results.join('; '));
  t.is(results.length, 2);
  const vols = (await apiOk(d, 'GET', '/v1/volumes')).volumes.map((v: any) => v.name);
  t.false(vols.includes('evil'));
  t.false(vols.includes('evil2'));
});

test.serial('volume, marker and description text with <script>, markup and quotes renders as text', async (t) => {
  const d = await startDaemon({ controlTcp: true });
  t.teardown(() => d.cleanup());
  // A hostile description through the API (names are validated there)...
  await apiOk(d, 'POST', '/v1/volumes', { name: 'sec', size: '8M', protected: true, description: EVIL_DESCRIPTION });
  const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 1M', d.nbdUri('sec')]);
  t.is(w.code, 0, w.stderr);
  await cli(d, ['seal', 'sec']);
  const seq = (await apiOk(d, 'POST', '/v1/volumes/sec/resolve', { at: 'latest' })).seq;
  await d.stop();
  // ...and names the API would refuse, written straight into the catalogs: the page must not trust validation.
  const image = path.join(d.dataDir, 'evil.raw');
  fs.writeFileSync(image, Buffer.alloc(1 << 20));
  const cat = Catalog.open(d.dataDir);
  await cat.add({
    name: EVIL_VOLUME,
    size: 1 << 20,
    path: image,
    kind: 'file',
    readOnly: false,
    external: true,
    created: new Date().toISOString(),
    description: EVIL_DESCRIPTION,
  });
  await cat.close();
  const stores = openStores(path.join(d.dataDir, 'timetravel'));
  await stores.markers.addMarker({
    name: EVIL_MARKER,
    group: 'sec',
    volume: 'sec',
    seq,
    time: Date.now() - 1000,
    kind: 'application-consistent',
    reason: EVIL_DESCRIPTION,
    retainUntil: null,
    auto: false,
    hooks: { pre: null, post: null },
  });
  await stores.close();
  await d.restart();

  const b = await openBrowser();
  t.teardown(() => b.close());
  const page = await b.page();
  const errors = collectPageErrors(page);
  await page.goto(`http://127.0.0.1:${d.controlPort}/#token=${d.token()}`);
  await page.waitForSelector('#volumes');
  const names = await page.$$eval('#volumes .volname', (els) => els.map((e) => e.textContent));
  t.true(names.includes(EVIL_VOLUME), names.join(' | '));
  const descs = await page.$$eval('#volumes .desc', (els) => els.map((e) => e.textContent));
  t.true(descs.includes(EVIL_DESCRIPTION));
  await b.shot(page, 'hostile-names-volumes');

  await page.goto(`http://127.0.0.1:${d.controlPort}/#/volume/sec`);
  await waitDrawn(page);
  await page.waitForSelector('#markers-in-view .marker-name');
  t.deepEqual(await page.$$eval('#markers-in-view .marker-name', (els) => els.map((e) => e.textContent)), [EVIL_MARKER]);
  // Typed, such a name is no point (the parser takes marker names as the API makes them): the error shows it as text.
  await page.fill('#point-input', EVIL_MARKER);
  await page.click('#point-form button[type=submit]');
  await page.waitForSelector('#point-error');
  t.true((await page.textContent('#point-error'))!.includes(EVIL_MARKER));
  // Clicked, the marker's row picks its point.
  await page.click('#markers-in-view tbody tr');
  await page.waitForSelector('#point-description');
  t.is(await page.textContent('#point-seq'), `@seq:${seq}`);
  await b.shot(page, 'hostile-names-timeline');

  // Nothing ran and no element came from the data.
  const dom = await page.evaluate(() => {
    const w = globalThis as any;
    return {
      pwned: w.__pwned ?? null,
      scripts: w.document.querySelectorAll('body script').length,
      imgs: w.document.querySelectorAll('img').length,
      bolds: w.document.querySelectorAll('b').length,
    };
  });
  t.deepEqual(dom, { pwned: null, scripts: 0, imgs: 0, bolds: 0 });
  t.deepEqual(errors, []);
});
