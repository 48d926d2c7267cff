/**
 * `rewind serve` as a real process: first start, the control API (good and
 * bad input), persistence across restarts, the data-directory lock, the TCP
 * control token, and real NBD clients (nbdinfo, qemu-io).
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { MAX_BODY_BYTES } from '../src/control/api';
import {
  canConnect,
  cleanEnv,
  freePort,
  haveCommand,
  REWIND_BIN,
  run,
  runRewind,
  sleep,
  startDaemon,
  tempDir,
  type TestDaemon,
} from './helpers/daemon';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** Starts a daemon, runs `fn`, always cleans up (logs attached on failure). */
async function withDaemon<T>(
  t: { log(...v: unknown[]): void },
  opts: Parameters<typeof startDaemon>[0],
  fn: (d: TestDaemon) => Promise<T>,
): Promise<T> {
  const d = await startDaemon(opts);
  try {
    return await fn(d);
  } catch (err) {
    t.log(`daemon output:\n${d.logs}`);
    throw err;
  } finally {
    await d.cleanup();
  }
}

test('first start creates the data dir, a sparse 1 GiB default volume, pid file, owner-only control socket and token', async (t) => {
  const parent = tempDir();
  const dataDir = path.join(parent, 'fresh'); // does not exist yet
  try {
    await withDaemon(t, { dataDir }, async (d) => {
      t.true(fs.statSync(dataDir).isDirectory());
      const { status, body } = await d.api('GET', '/v1/volumes');
      t.is(status, 200);
      t.is(body.volumes.length, 1);
      const v = body.volumes[0];
      t.is(v.name, 'default');
      t.is(v.size, GiB);
      t.is(v.kind, 'file');
      t.false(v.readOnly);
      t.true(v.isDefaultExport);
      t.is(v.path, path.join(dataDir, 'volumes', 'default', 'image.raw'));
      t.is(v.uris.tcp, `nbd://127.0.0.1:${d.nbdPort}/default`);
      t.is(v.uris.unix, `nbd+unix:///default?socket=${d.nbdSocket}`);
      // Sparse: 1 GiB apparent, (almost) nothing allocated.
      const st = fs.statSync(v.path);
      t.is(st.size, GiB);
      t.true(st.blocks * 512 < MiB, `allocated ${st.blocks * 512} bytes`);
      t.true(v.allocatedBytes < MiB);

      t.is(fs.readFileSync(path.join(dataDir, 'rewind.pid'), 'utf8').trim(), String(d.pid));
      t.is(fs.statSync(d.controlSocket).mode & 0o777, 0o600);
      const tokenFile = path.join(dataDir, 'control.token');
      t.is(fs.statSync(tokenFile).mode & 0o777, 0o600);
      t.regex(d.token(), /^[0-9a-f]{64}$/);

      const health = await d.api('GET', '/v1/health');
      t.is(health.status, 200);
      t.true(health.body.ok);
      t.is(health.body.pid, d.pid);
      t.is(health.body.version, JSON.parse(fs.readFileSync(path.join(__dirname, '../../package.json'), 'utf8')).version);
      t.is(typeof health.body.uptimeSeconds, 'number');
      t.is(health.body.volumes, 1);

      // Clean shutdown removes the pid file, the lock and the sockets.
      const exit = await d.stop();
      t.deepEqual(exit, { code: 0, signal: null });
      for (const f of ['rewind.pid', 'rewind.lock', 'control.sock', 'nbd.sock']) {
        t.false(fs.existsSync(path.join(dataDir, f)), `${f} left behind`);
      }
      t.true(fs.existsSync(v.path));
    });
  } finally {
    fs.rmSync(parent, { recursive: true, force: true });
  }
});

test('volumes: create, list, get, delete over the API', async (t) => {
  await withDaemon(t, {}, async (d) => {
    const created = await d.api('POST', '/v1/volumes', { name: 'vm-1.disk_0', size: '256M', description: 'test disk' });
    t.is(created.status, 201, JSON.stringify(created.body));
    t.is(created.raw.headers.location, '/v1/volumes/vm-1.disk_0');
    t.like(created.body, {
      name: 'vm-1.disk_0',
      size: 256 * MiB,
      readOnly: false,
      kind: 'file',
      external: false,
      description: 'test disk',
      connections: 0,
      isDefaultExport: false,
    });
    t.is(created.body.uris.tcp, d.nbdUri('vm-1.disk_0'));
    const image = path.join(d.dataDir, 'volumes', 'vm-1.disk_0', 'image.raw');
    t.is(created.body.path, image);
    t.is(fs.statSync(image).size, 256 * MiB);

    const ro = await d.api('POST', '/v1/volumes', { name: 'ro', size: 1048576, readOnly: true });
    t.is(ro.status, 201);
    t.true(ro.body.readOnly);

    const list = await d.api('GET', '/v1/volumes');
    t.deepEqual(
      list.body.volumes.map((v: { name: string; size: number }) => [v.name, v.size]),
      [
        ['default', GiB],
        ['ro', MiB],
        ['vm-1.disk_0', 256 * MiB],
      ],
    );
    const one = await d.api('GET', '/v1/volumes/vm-1.disk_0');
    t.is(one.status, 200);
    t.is(one.body.size, 256 * MiB);

    const del = await d.api('DELETE', '/v1/volumes/vm-1.disk_0');
    t.is(del.status, 200);
    t.deepEqual(del.body, { deleted: 'vm-1.disk_0', disconnected: 0, dataDeleted: true, path: image });
    t.false(fs.existsSync(path.dirname(image)));
    t.is((await d.api('GET', '/v1/volumes/vm-1.disk_0')).status, 404);
    const again = await d.api('DELETE', '/v1/volumes/vm-1.disk_0');
    t.is(again.status, 404);
    t.regex(again.body.error, /no volume named "vm-1.disk_0"/);

    // keepData leaves the image; re-creating the name then refuses to clobber it.
    const keep = await d.api('DELETE', '/v1/volumes/ro?keepData=1');
    t.is(keep.status, 200);
    t.false(keep.body.dataDeleted);
    const roImage = path.join(d.dataDir, 'volumes', 'ro', 'image.raw');
    t.true(fs.existsSync(roImage));
    const clash = await d.api('POST', '/v1/volumes', { name: 'ro', size: '1M' });
    t.is(clash.status, 409);
    t.regex(clash.body.error, /already exists at .*image\.raw/);
    // ...but it can be adopted with path.
    const adopt = await d.api('POST', '/v1/volumes', { name: 'ro', path: roImage });
    t.is(adopt.status, 201, JSON.stringify(adopt.body));
    t.is(adopt.body.size, MiB);
    t.true(adopt.body.external);
  });
});

test('volumes on an existing file: size taken from the file, never deleted', async (t) => {
  const dir = tempDir();
  try {
    await withDaemon(t, {}, async (d) => {
      const img = path.join(dir, 'disk.img');
      fs.writeFileSync(img, '');
      fs.truncateSync(img, 8 * MiB);
      const res = await d.api('POST', '/v1/volumes', { name: 'ext', path: img });
      t.is(res.status, 201, JSON.stringify(res.body));
      t.like(res.body, { name: 'ext', size: 8 * MiB, kind: 'file', external: true, path: img });

      const wrongSize = await d.api('POST', '/v1/volumes', { name: 'ext2', path: img, size: '1G' });
      t.is(wrongSize.status, 409); // the path is already used by "ext"
      const img2 = path.join(dir, 'other.img');
      fs.writeFileSync(img2, Buffer.alloc(4096));
      const mismatch = await d.api('POST', '/v1/volumes', { name: 'ext2', path: img2, size: '1G' });
      t.is(mismatch.status, 400);
      t.regex(mismatch.body.error, /does not match the size/);
      const odd = path.join(dir, 'odd.img');
      fs.writeFileSync(odd, Buffer.alloc(1000));
      const oddRes = await d.api('POST', '/v1/volumes', { name: 'odd', path: odd });
      t.is(oddRes.status, 400);
      t.regex(oddRes.body.error, /multiple of 512/);
      const dirRes = await d.api('POST', '/v1/volumes', { name: 'dir', path: dir });
      t.is(dirRes.status, 400);
      t.regex(dirRes.body.error, /not a regular file or a block device/);

      const del = await d.api('DELETE', '/v1/volumes/ext');
      t.is(del.status, 200);
      t.false(del.body.dataDeleted);
      t.is(fs.statSync(img).size, 8 * MiB);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bad input gets a 4xx with a clear message and the daemon stays up', async (t) => {
  await withDaemon(t, {}, async (d) => {
    const cases: [string, string, unknown, number, RegExp][] = [
      ['POST', '/v1/volumes', { name: 'bad name', size: '1G' }, 400, /invalid volume name "bad name"/],
      ['POST', '/v1/volumes', { name: '.hidden', size: '1G' }, 400, /must not start with '\.'/],
      ['POST', '/v1/volumes', { name: 'x'.repeat(65), size: '1G' }, 400, /at most 64 characters/],
      ['POST', '/v1/volumes', { name: 'a/b', size: '1G' }, 400, /invalid volume name/],
      ['POST', '/v1/volumes', { size: '1G' }, 400, /volume name is required/],
      ['POST', '/v1/volumes', { name: 42, size: '1G' }, 400, /volume name must be a string/],
      ['POST', '/v1/volumes', { name: 'default', size: '1G' }, 409, /volume "default" already exists/],
      ['POST', '/v1/volumes', { name: 'v', size: 'lots' }, 400, /invalid size "lots"/],
      ['POST', '/v1/volumes', { name: 'v', size: '10X' }, 400, /unknown unit "X"/],
      ['POST', '/v1/volumes', { name: 'v', size: '0' }, 400, /greater than zero/],
      ['POST', '/v1/volumes', { name: 'v', size: 0 }, 400, /greater than zero/],
      ['POST', '/v1/volumes', { name: 'v', size: '1000' }, 400, /not a multiple of 512/],
      ['POST', '/v1/volumes', { name: 'v', size: -512 }, 400, /non-negative integer/],
      ['POST', '/v1/volumes', { name: 'v', size: '99999999999T' }, 400, /too large/],
      ['POST', '/v1/volumes', { name: 'v', size: true }, 400, /size must be/],
      ['POST', '/v1/volumes', { name: 'v' }, 400, /size is required/],
      ['POST', '/v1/volumes', { name: 'v', size: '1G', readOnly: 'yes' }, 400, /readOnly must be true or false/],
      ['POST', '/v1/volumes', { name: 'v', path: '/no/such/file.img' }, 400, /path does not exist: \/no\/such\/file\.img/],
      ['POST', '/v1/volumes', { name: 'v', path: 'relative.img' }, 400, /path must be absolute/],
      ['POST', '/v1/volumes', { name: 'v', size: '1G', colour: 'red' }, 400, /unknown field "colour"/],
      ['POST', '/v1/volumes', '{"name": "v", "size": ', 400, /not valid JSON/],
      ['POST', '/v1/volumes', '[1,2,3]', 400, /must be a JSON object/],
      ['POST', '/v1/volumes', '"str"', 400, /must be a JSON object/],
      ['POST', '/v1/volumes', '', 400, /body is empty/],
      ['POST', '/v1/volumes', 'x'.repeat(MAX_BODY_BYTES + 1), 413, /too large/],
      ['GET', '/v1/volumes/nope', undefined, 404, /no volume named "nope"/],
      ['DELETE', '/v1/volumes/nope', undefined, 404, /no volume named "nope"/],
      ['DELETE', '/v1/volumes/.hidden', undefined, 400, /must not start with '\.'/],
      ['DELETE', '/v1/volumes/default?keepData=maybe', undefined, 400, /keepData must be/],
      ['DELETE', '/v1/volumes/%E0%A4%A', undefined, 400, /malformed volume name/],
      ['PUT', '/v1/volumes', '{}', 405, /method PUT not allowed/],
      ['POST', '/v1/health', '{}', 405, /not allowed/],
      ['GET', '/v2/anything', undefined, 404, /no such endpoint/],
    ];
    for (const [method, url, body, status, message] of cases) {
      const res = await d.api(method, url, body);
      t.is(res.status, status, `${method} ${url} ${String(JSON.stringify(body)).slice(0, 60)}: ${JSON.stringify(res.body)}`);
      t.regex(String(res.body?.error), message, `${method} ${url}`);
      t.regex(String(res.raw.headers['content-type']), /application\/json/);
    }
    // A body far beyond the limit, sent without Content-Length (chunked):
    // the daemon answers 413 and closes the connection.
    const net = require('node:net') as typeof import('node:net');
    const reply = await new Promise<string>((resolve) => {
      let got = '';
      const s = net.connect({ path: d.controlSocket }, () => {
        // 80 KiB of chunks in one write (fits the socket buffer), then wait.
        const chunk = `4000\r\n${'a'.repeat(0x4000)}\r\n`;
        s.write(
          'POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n' + chunk.repeat(5),
        );
      });
      s.on('data', (b: Buffer) => (got += b.toString('latin1')));
      s.on('close', () => resolve(got));
      s.on('error', () => undefined);
    });
    t.regex(reply, /^HTTP\/1\.1 413 /);
    t.regex(reply, /request body too large/);
    // Raw exchanges: what the daemon answers before closing.
    const exchange = (send: string | null) =>
      new Promise<{ got: string; ms: number }>((resolve) => {
        const t0 = Date.now();
        let got = '';
        const s = net.connect({ path: d.controlSocket }, () => {
          if (send !== null) s.write(send);
        });
        s.on('data', (b: Buffer) => (got += b.toString('latin1')));
        s.on('close', () => resolve({ got, ms: Date.now() - t0 }));
        s.on('error', () => undefined);
      });
    // Garbage that is not HTTP at all.
    t.regex((await exchange('\x00\x01garbage\r\n\r\n')).got, /^HTTP\/1\.1 400 Bad Request\r\n/);
    // Headers past the size limit.
    t.regex((await exchange(`GET /v1/health HTTP/1.1\r\nX-Big: ${'b'.repeat(64 * 1024)}\r\n\r\n`)).got, /^HTTP\/1\.1 431 /);
    // A connection that never sends a request (a browser's preconnected
    // socket) is closed with 408, which clients retry, not 400, which a
    // client would take as the answer to a request it sends at that moment.
    const idle = await exchange(null);
    t.regex(idle.got, /^HTTP\/1\.1 408 Request Timeout\r\n/);
    t.true(idle.ms >= 9_000 && idle.ms < 20_000, `idle connection closed after ${idle.ms} ms`);

    t.true(d.isRunning);
    const health = await d.api('GET', '/v1/health');
    t.is(health.status, 200);
    const list = await d.api('GET', '/v1/volumes');
    t.deepEqual(
      list.body.volumes.map((v: { name: string }) => v.name),
      ['default'],
    );
  });
});

test('volumes and their data survive a restart; a deleted default is not re-created', async (t) => {
  await withDaemon(t, {}, async (d) => {
    t.is((await d.api('POST', '/v1/volumes', { name: 'keep', size: '64M', readOnly: false })).status, 201);
    t.is((await d.api('POST', '/v1/volumes', { name: 'keep-ro', size: '2M', readOnly: true })).status, 201);
    t.is((await d.api('DELETE', '/v1/volumes/default')).status, 200);
    if (haveCommand('qemu-io')) {
      const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 1M', d.nbdUri('keep')]);
      t.is(w.code, 0, w.stderr + w.stdout);
    }
    const firstPid = d.pid;
    const exit = await d.stop();
    t.is(exit.code, 0);
    await d.restart();
    t.not(d.pid, firstPid);
    const list = await d.api('GET', '/v1/volumes');
    t.deepEqual(
      list.body.volumes.map((v: { name: string; size: number; readOnly: boolean }) => [v.name, v.size, v.readOnly]),
      [
        ['keep', 64 * MiB, false],
        ['keep-ro', 2 * MiB, true],
      ],
    );
    if (haveCommand('qemu-io')) {
      const r = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x5a 1M 1M', d.nbdUri('keep')]);
      t.is(r.code, 0, r.stderr + r.stdout);
      t.notRegex(r.stdout, /Pattern verification failed/);
    }
  });
});

test('a second daemon on the same data dir is refused; the first keeps serving', async (t) => {
  await withDaemon(t, {}, async (d) => {
    const port = await freePort();
    const second = await runRewind(
      [
        'serve',
        '--data-dir',
        d.dataDir,
        '--listen',
        `127.0.0.1:${port}`,
        '--socket',
        path.join(d.dataDir, 'nbd2.sock'),
        '--log-level',
        'warn',
      ],
      { timeoutMs: 20_000 },
    );
    t.is(second.code, 1, second.stderr);
    t.regex(second.stderr, new RegExp(`data directory ${d.dataDir} is in use by another rewind daemon \\(pid ${d.pid}\\)`));
    t.false(fs.existsSync(path.join(d.dataDir, 'nbd2.sock')));
    t.is(fs.readFileSync(path.join(d.dataDir, 'rewind.pid'), 'utf8').trim(), String(d.pid));
    t.true(d.isRunning);
    t.is((await d.api('GET', '/v1/health')).status, 200);
    t.true(fs.existsSync(d.controlSocket));
    t.true(fs.existsSync(d.nbdSocket));
  });
});

test('two daemons started at the same moment on one data dir: exactly one runs', async (t) => {
  const dir = tempDir();
  const procs: ChildProcess[] = [];
  try {
    const ports = [await freePort(), await freePort()];
    const outputs = ['', ''];
    const exits: Promise<number | null>[] = [];
    for (let i = 0; i < 2; i++) {
      const p = spawn(
        process.execPath,
        [
          REWIND_BIN,
          'serve',
          '--data-dir',
          dir,
          '--listen',
          `127.0.0.1:${ports[i]}`,
          '--socket',
          path.join(dir, `nbd${i}.sock`),
          '--log-level',
          'warn',
        ],
        { env: cleanEnv(), stdio: ['ignore', 'ignore', 'pipe'] },
      );
      p.stderr!.setEncoding('utf8').on('data', (x: string) => (outputs[i] += x));
      exits.push(new Promise((r) => p.on('exit', (code) => r(code))));
      procs.push(p);
    }
    const loser = await Promise.race(exits.map((e, i) => e.then((code) => ({ i, code }))));
    t.is(loser.code, 1, outputs[loser.i]);
    t.regex(outputs[loser.i]!, /is in use by another rewind daemon/);
    const winner = 1 - loser.i;
    for (let k = 0; k < 100 && !(await canConnect({ path: path.join(dir, 'control.sock') })); k++) await sleep(50);
    t.true(await canConnect({ host: '127.0.0.1', port: ports[winner]! }), outputs[winner]);
    t.is(fs.readFileSync(path.join(dir, 'rewind.pid'), 'utf8').trim(), String(procs[winner]!.pid));
    procs[winner]!.kill('SIGTERM');
    t.is(await exits[winner], 0);
  } finally {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('after SIGKILL the stale lock, pid file and sockets do not stop a restart', async (t) => {
  await withDaemon(t, {}, async (d) => {
    const oldPid = d.pid;
    const exit = await d.kill('SIGKILL');
    t.is(exit.signal, 'SIGKILL');
    t.true(fs.existsSync(path.join(d.dataDir, 'rewind.lock')));
    t.true(fs.existsSync(d.controlSocket));
    await d.restart();
    t.not(d.pid, oldPid);
    t.is(fs.readFileSync(path.join(d.dataDir, 'rewind.pid'), 'utf8').trim(), String(d.pid));
    t.is((await d.api('GET', '/v1/volumes')).body.volumes.length, 1);
  });
});

test('SIGINT also shuts down cleanly, with clients connected', async (t) => {
  await withDaemon(t, {}, async (d) => {
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'default' });
    await c.write(0, Buffer.alloc(4096, 7));
    const exit = await d.kill('SIGINT');
    t.deepEqual(exit, { code: 0, signal: null });
    c.destroy();
    t.false(fs.existsSync(path.join(d.dataDir, 'rewind.pid')));
  });
});

test('the TCP control API requires the bearer token', async (t) => {
  await withDaemon(t, { controlTcp: true }, async (d) => {
    const noToken = await d.tcpClient(null).raw('GET', '/v1/volumes');
    t.is(noToken.status, 401);
    t.regex(JSON.parse(noToken.text).error, /bearer token/);
    t.regex(String(noToken.headers['www-authenticate']), /^Bearer/);
    const wrong = await d.tcpClient('0'.repeat(64)).raw('GET', '/v1/health');
    t.is(wrong.status, 401);
    const notBearer = await d.tcpClient(null).raw('GET', '/v1/health', undefined, { Authorization: `Basic ${d.token()}` });
    t.is(notBearer.status, 401);
    // Even a POST with a body is refused before anything happens.
    const post = await d.tcpClient('nope').raw('POST', '/v1/volumes', JSON.stringify({ name: 'sneaky', size: '1M' }));
    t.is(post.status, 401);
    t.is((await d.api('GET', '/v1/volumes/sneaky')).status, 404);

    const client = d.tcpClient();
    const h = await client.health();
    t.is(h.pid, d.pid!);
    const v = await client.createVolume({ name: 'via-tcp', size: '1M' });
    t.is(v.size, MiB);
    // The Unix socket needs no token.
    t.is((await d.api('GET', '/v1/volumes/via-tcp')).status, 200);
    // The token survives restarts.
    const token = d.token();
    await d.restart();
    t.is(d.token(), token);
    t.is((await d.tcpClient().health()).pid, d.pid!);
  });
});

test('metrics in Prometheus text format', async (t) => {
  await withDaemon(t, {}, async (d) => {
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'default' });
    await c.write(0, Buffer.alloc(8192, 1));
    await c.read(0, 4096);
    const text = await d.client().metrics();
    t.regex(text, /^rewind_volumes 1$/m);
    t.regex(text, /^rewind_nbd_connections 1$/m);
    t.regex(text, /^rewind_nbd_written_bytes_total 8192$/m);
    t.regex(text, /^rewind_nbd_read_bytes_total 4096$/m);
    t.regex(text, /^rewind_volume_size_bytes\{volume="default"\} 1073741824$/m);
    t.regex(text, /^# TYPE rewind_nbd_requests_total counter$/m);
    await c.disconnect();
  });
});

test('deleting a volume disconnects its clients and refuses their further I/O', async (t) => {
  await withDaemon(t, {}, async (d) => {
    t.is((await d.api('POST', '/v1/volumes', { name: 'doomed', size: '1M' })).status, 201);
    const c = await NbdClient.connect({ port: d.nbdPort, exportName: 'doomed' });
    await c.write(0, Buffer.alloc(512, 9));
    // The default export "" is the volume "default", counted under its name.
    const c2 = await NbdClient.connect({ port: d.nbdPort, exportName: '' });
    t.is(c2.info.size, GiB);
    const before = await d.api('GET', '/v1/volumes');
    const conns = Object.fromEntries(before.body.volumes.map((v: { name: string; connections: number }) => [v.name, v.connections]));
    t.deepEqual(conns, { default: 1, doomed: 1 });

    const del = await d.api('DELETE', '/v1/volumes/doomed');
    t.is(del.status, 200);
    t.is(del.body.disconnected, 1);
    await t.throwsAsync(c.read(0, 512));
    c.destroy();
    const delDefault = await d.api('DELETE', '/v1/volumes/default');
    t.is(delDefault.body.disconnected, 1);
    await t.throwsAsync(c2.read(0, 512));
    c2.destroy();
    await sleep(50);
    t.is((await d.api('GET', '/v1/health')).body.connections, 0);
  });
});

test('nbdinfo lists the volumes with their sizes (TCP and Unix socket)', async (t) => {
  if (!haveCommand('nbdinfo')) {
    t.log('nbdinfo not installed: skipped');
    t.pass();
    return;
  }
  await withDaemon(t, {}, async (d) => {
    t.is((await d.api('POST', '/v1/volumes', { name: 'small', size: '64M' })).status, 201);
    t.is((await d.api('POST', '/v1/volumes', { name: 'ro-disk', size: '1M', readOnly: true })).status, 201);
    const list = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${d.nbdPort}`]);
    t.is(list.code, 0, list.stderr);
    const sizes: Record<string, number> = {};
    for (const block of list.stdout.split(/^export=/m).slice(1)) {
      const name = /^"([^"]*)"/.exec(block)?.[1];
      const size = /export-size:\s*(\d+)/.exec(block)?.[1];
      if (name !== undefined && size !== undefined) sizes[name] = Number(size);
    }
    t.deepEqual(sizes, { default: GiB, 'ro-disk': MiB, small: 64 * MiB });
    t.regex(list.stdout, /description: rewind volume small/);

    const ro = await run('nbdinfo', ['--json', d.nbdUri('ro-disk')]);
    t.is(ro.code, 0, ro.stderr);
    const info = JSON.parse(ro.stdout);
    t.true(info.exports[0]['is_read_only']);

    // The default export "" is the volume "default", also over the Unix socket.
    const def = await run('nbdinfo', ['--size', `nbd+unix://?socket=${d.nbdSocket}`]);
    t.is(def.code, 0, def.stderr);
    t.is(def.stdout.trim(), String(GiB));
  });
});
