/**
 * Acceptance of the web console in a real browser (Debian's chromium via
 * playwright-core) against a live daemon: a protected volume under a fio
 * load, markers placed through the CLI, the timeline showing both; a click
 * on the timeline, then "Clone", gives a clone whose NBD URI reads (nbdinfo,
 * qemu-img compare) exactly as `rewind export` of that point. Also the
 * other pages (volumes, diff, jobs) and a restore with its confirmation.
 * Screenshots of each page are saved as artifacts (see helpers/browser.ts).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { haveCommand, run, sleep, startDaemon, tempDir } from './helpers/daemon';
import { cliOk as cli } from './helpers/live';
import { collectPageErrors, openBrowser, waitDrawn } from './helpers/browser';

function need(cmd: string): void {
  if (!haveCommand(cmd)) throw new Error(`${cmd} is not installed: run sudo bash tools/install-system-deps.sh`);
}

test.serial('under fio: timeline shows transactions and CLI markers; a click and "clone" give a URI equal to rewind export', async (t) => {
  for (const c of ['fio', 'nbdinfo', 'qemu-img']) need(c);
  const d = await startDaemon({ controlTcp: true });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'live', '--size', '64M', '--protected']);
  const fio = spawn(
    'fio',
    [
      '--name=load',
      '--thread',
      '--ioengine=nbd',
      `--uri=${d.nbdUri('live')}`,
      '--rw=randwrite',
      '--bs=64k',
      '--iodepth=4',
      '--size=64M',
      '--rate=4m',
      '--time_based',
      '--runtime=600',
    ],
    { stdio: 'ignore' },
  );
  t.teardown(() => fio.kill('SIGKILL'));
  await sleep(3000);
  await cli(d, ['mark', 'live', 'before-deploy']);
  await sleep(2500);
  await cli(d, ['mark', 'live', 'db-quiesced', '--quiesce-pre', 'true']);
  await sleep(3000);

  const b = await openBrowser();
  t.teardown(() => b.close());
  t.log(`screenshots: ${b.artifacts}`);
  const page = await b.page();
  const errors = collectPageErrors(page);

  // The token is entered once, in the page's own form.
  await page.goto(`http://127.0.0.1:${d.controlPort}/`);
  await page.fill('#token', d.token());
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#volumes tr[data-volume="live"]');
  t.regex((await page.textContent('#volumes tr[data-volume="live"]'))!, /normal/);
  await b.shot(page, 'volumes');

  await page.click('#volumes tr[data-volume="live"] a.volname');
  await waitDrawn(page);
  // Transactions and both markers, with their kinds.
  await page.waitForSelector('#markers-in-view tr[data-marker="db-quiesced"]');
  const markers = await page.$$eval('#markers-in-view tbody tr', (rows) => rows.map((r) => (r as any).innerText as string));
  t.true(
    markers.some((m) => /before-deploy/.test(m) && /crash-consistent/.test(m)),
    markers.join('\n'),
  );
  t.true(
    markers.some((m) => /db-quiesced/.test(m) && /application-consistent/.test(m)),
    markers.join('\n'),
  );
  const status = (await page.textContent('#timeline-status'))!;
  const inView = Number(/^([\d,]+) transactions in view/.exec(status)?.[1]?.replace(/,/g, '') ?? 0);
  t.true(inView >= 3, status);
  t.true((await page.$$('#txns-in-view tbody tr')).length >= 3);
  await b.shot(page, 'timeline');
  // The daemon has the file catalog: the probe the page makes is answered, and Files is offered.
  const probe = await d.api('GET', '/v1/volumes/live/catalog');
  t.is(probe.status, 200);
  await page.locator('#nav-files').waitFor({ state: 'visible' });

  // Zoom in (the wheel), then click the middle of the plot: a point between the markers.
  const over = (await page.locator('#timeline-chart .u-over').boundingBox())!;
  const drawn = Number(await page.getAttribute('#timeline-chart', 'data-drawn'));
  await page.mouse.move(over.x + over.width * 0.5, over.y + over.height * 0.5);
  await page.mouse.wheel(0, -200);
  await waitDrawn(page, drawn + 1);
  await page.mouse.click(over.x + over.width * 0.5, over.y + over.height * 0.6);
  await page.waitForSelector('#point-description');
  const seqText = (await page.textContent('#point-seq'))!;
  t.regex(seqText, /^@seq:\d+$/);
  t.regex((await page.textContent('#point-description'))!, /^seq \d+ at .*: write of \d+ bytes at offset \d+ on live/);
  await b.shot(page, 'picker');

  await page.click('#do-clone');
  // The clone waits for the manager to apply the point's transaction (lag grows on a loaded machine).
  await page.waitForSelector('[data-testid=view-uri]', { timeout: 180_000 });
  const uri = (await page.textContent('[data-testid=view-uri]'))!.trim();
  const clone = (await page.textContent('#view-created'))!;
  t.is(uri, d.nbdUri(encodeURIComponent(clone)));
  t.is((await page.textContent('[data-testid=cmd-nbdinfo]'))!.trim(), `nbdinfo ${uri}`);
  t.regex(
    (await page.textContent('[data-testid=cmd-qemu]'))!,
    new RegExp(`^qemu-system-x86_64 .*file=${uri.replace(/[.]/g, '\\.')},format=raw`),
  );
  await b.shot(page, 'clone');
  // A marker at the picked point, from the picker: the CLI lists it there.
  await page.fill('#view-name', 'picked-in-console');
  await page.click('#do-mark');
  await page.waitForSelector('#point-output >> text=picked-in-console');
  const listed = JSON.parse(await cli(d, ['markers', 'live', '--name', 'picked-in-console', '--json']));
  t.like(listed[0], { name: 'picked-in-console', seq: Number(seqText.slice(5)), kind: 'crash-consistent' });

  const info = await run('nbdinfo', ['--json', uri]);
  t.is(info.code, 0, info.stderr);
  t.is(JSON.parse(info.stdout).exports[0]['export-size'], 64 * 1024 * 1024);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'point.raw');
  await cli(d, ['export', 'live', '--at', seqText, '--out', out], 300_000);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, uri], { timeoutMs: 300_000 });
  t.is(cmp.code, 0, `${cmp.stdout}${cmp.stderr}`);
  t.regex(cmp.stdout, /Images are identical/);
  // And it is not just any image: production has moved on since (fio kept writing).
  const later = path.join(dir, 'latest.raw');
  await cli(d, ['export', 'live', '--at', 'latest', '--out', later], 300_000);
  const cmp2 = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', later, uri], { timeoutMs: 300_000 });
  t.is(cmp2.code, 1, 'the clone holds the picked point, not the latest');

  // Diff from the picked point to latest, and the jobs page that lists it.
  await page.goto(`http://127.0.0.1:${d.controlPort}/#/volume/live/diff`);
  // "latest" waits for the manager to apply what fio wrote: on a loaded
  // machine that can take longer than a page's usual 30 s. An error shows
  // in the page instead of the figure, and fails with its text.
  await page.waitForSelector('#diff-bytes, p.error', { timeout: 180_000 });
  if (await page.$('p.error')) t.log(d.logs.slice(-4000));
  t.falsy(await page.$('p.error'), `the diff page shows an error: ${await page.textContent('#main').catch(() => '?')}`);
  t.regex((await page.textContent('#diff-bytes'))!, /in [\d,]+ extents/);
  await b.shot(page, 'diff');
  await page.goto(`http://127.0.0.1:${d.controlPort}/#/jobs`);
  await page.waitForSelector('#jobs tr[data-job]');
  t.regex((await page.textContent('#jobs'))!, /diff/);
  await b.shot(page, 'jobs');
  t.deepEqual(errors, []);
});

test.serial('restore from the picker: the confirmation says what goes offline, progress, then the undo point', async (t) => {
  need('qemu-io');
  const d = await startDaemon({ controlTcp: true });
  t.teardown(() => d.cleanup());
  await cli(d, ['volume', 'create', 'rv', '--size', '16M', '--protected']);
  const write = async (pattern: number) => {
    const r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} 0 4M`, d.nbdUri('rv')]);
    if (r.code !== 0) throw new Error(r.stderr);
    await cli(d, ['seal', 'rv']);
  };
  await write(1);
  await cli(d, ['mark', 'rv', 'good']);
  await write(2);
  const b = await openBrowser();
  t.teardown(() => b.close());
  const page = await b.page();
  const errors = collectPageErrors(page);
  // The token can also come in the address's fragment (never sent to the server); the page drops it from the address.
  await page.goto(`http://127.0.0.1:${d.controlPort}/#token=${d.token()}`);
  await page.waitForSelector('#volumes');
  t.false(page.url().includes(d.token()));
  await page.goto(`http://127.0.0.1:${d.controlPort}/#/volume/rv`);
  await waitDrawn(page);
  await page.fill('#point-input', 'good');
  await page.click('#point-form button[type=submit]');
  await page.waitForSelector('#point-description');
  await page.click('#do-restore');
  await page.waitForSelector('.modal');
  const text = (await page.textContent('.modal'))!;
  t.regex(text, /rv goes offline/);
  t.regex(text, /disconnected/);
  t.regex(text, /undone/);
  await b.shot(page, 'restore-confirm');
  await page.click('.modal button.danger');
  await page.waitForSelector('#restore-done', { timeout: 120_000 });
  t.regex((await page.textContent('#point-output'))!, /undo/);
  await b.shot(page, 'restore-done');
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 1 0 4M', d.nbdUri('rv')]);
  t.is(r.code, 0, r.stderr);
  t.notRegex(r.stdout, /Pattern verification failed/);
  const jobs = (await d.api('GET', '/v1/jobs')).body.jobs;
  t.like(
    jobs.find((j: any) => j.kind === 'restore'),
    { target: 'rv', state: 'done' },
  );
  t.deepEqual(errors, []);
});
