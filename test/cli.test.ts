/**
 * The rewind CLI end to end: real `node bin/rewind ...` processes against a
 * real daemon (and against no daemon at all).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatSize, parseSize, parseVolumeSize } from '../src/util/size';
import { run, runRewind, startDaemon, tempDir, type TestDaemon } from './helpers/daemon';

const MiB = 1024 ** 2;

let shared: TestDaemon;

test.before(async () => {
  shared = await startDaemon({ controlTcp: true });
});

test.after.always(async () => {
  await shared?.cleanup();
});

test('status and volume commands without a daemon fail clearly with exit code 3', async (t) => {
  const dir = tempDir();
  try {
    const sock = path.join(dir, 'control.sock');
    for (const args of [['status'], ['volume', 'list'], ['volume', 'create', 'x', '--size', '1G'], ['volume', 'rm', 'x']]) {
      const r = await runRewind(['--data-dir', dir, ...args]);
      t.is(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
      t.is(r.stdout, '');
      t.is(r.stderr.trim(), `rewind: no rewind daemon at unix:${sock}; start one with \`rewind serve\``);
    }
    // The default data dir comes from $REWIND_DATA_DIR.
    const env = await runRewind(['status'], { env: { REWIND_DATA_DIR: dir } });
    t.is(env.code, 3);
    t.regex(env.stderr, new RegExp(`no rewind daemon at unix:${sock}`));
    // --control pointing nowhere.
    const tcp = await runRewind(['--control', 'http://127.0.0.1:1', 'status'], { env: { REWIND_CONTROL_TOKEN: 'x' } });
    t.is(tcp.code, 3);
    t.regex(tcp.stderr, /no rewind daemon at http:\/\/127\.0\.0\.1:1/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('status shows the running daemon', async (t) => {
  const r = await shared.cli(['status']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`^rewind \\d+\\.\\d+\\.\\d+\\S* daemon running \\(pid ${shared.pid}, up \\d+s\\)`));
  t.regex(r.stdout, new RegExp(`nbd tcp: +nbd://127\\.0\\.0\\.1:${shared.nbdPort}/`));
  t.regex(r.stdout, new RegExp(`control: +unix:${shared.controlSocket}`));
  const j = await shared.cli(['status', '--json']);
  t.is(j.code, 0);
  const h = JSON.parse(j.stdout);
  t.is(h.pid, shared.pid);
  t.true(h.ok);
});

test('volume create, list, rm end to end', async (t) => {
  const create = await shared.cli(['volume', 'create', 'cli-vol', '--size', '64M']);
  t.is(create.code, 0, create.stderr);
  t.regex(create.stdout, /^created volume cli-vol \(64 MiB\)$/m);
  t.regex(create.stdout, new RegExp(`nbd://127\\.0\\.0\\.1:${shared.nbdPort}/cli-vol`));
  t.regex(create.stdout, /nbd\+unix:\/\/\/cli-vol\?socket=/);

  const list = await shared.cli(['volume', 'list']);
  t.is(list.code, 0, list.stderr);
  const lines = list.stdout.trimEnd().split('\n');
  t.regex(lines[0]!, /^NAME +SIZE +ALLOCATED +MODE +KIND +GROUP +CONNS +URI$/);
  const row = lines.find((l) => l.startsWith('cli-vol '));
  t.truthy(row, list.stdout);
  t.regex(row!, new RegExp(`^cli-vol +64 MiB +0 B +rw +file +- +0 +nbd://127\\.0\\.0\\.1:${shared.nbdPort}/cli-vol$`));
  t.truthy(
    lines.find((l) => /^default +1 GiB /.test(l)),
    list.stdout,
  );

  const json = await shared.cli(['volume', 'list', '--json']);
  t.is(json.code, 0);
  const vols = JSON.parse(json.stdout) as { name: string; size: number; path: string }[];
  const v = vols.find((x) => x.name === 'cli-vol');
  t.is(v?.size, 64 * MiB);
  t.true(fs.existsSync(v!.path));

  const dup = await shared.cli(['volume', 'create', 'cli-vol', '--size', '64M']);
  t.is(dup.code, 1);
  t.is(dup.stderr.trim(), 'rewind: volume "cli-vol" already exists');

  const rm = await shared.cli(['volume', 'rm', 'cli-vol']);
  t.is(rm.code, 0, rm.stderr);
  t.is(rm.stdout.trim(), 'removed volume cli-vol');
  t.false(fs.existsSync(v!.path));
  const after = await shared.cli(['volume', 'ls']);
  t.notRegex(after.stdout, /cli-vol/);

  const rmAgain = await shared.cli(['volume', 'rm', 'cli-vol']);
  t.is(rmAgain.code, 1);
  t.is(rmAgain.stderr.trim(), 'rewind: no volume named "cli-vol"');
});

test('volume create options: --read-only, --path (relative to the cwd), --keep-data, --json', async (t) => {
  const dir = tempDir();
  try {
    fs.writeFileSync(path.join(dir, 'disk.img'), '');
    fs.truncateSync(path.join(dir, 'disk.img'), 4 * MiB);
    const ext = await shared.cli(['volume', 'create', 'cli-ext', '--path', 'disk.img', '--read-only'], { cwd: dir });
    t.is(ext.code, 0, ext.stderr);
    t.regex(ext.stdout, new RegExp(`created volume cli-ext \\(4 MiB, read-only, file ${path.join(dir, 'disk.img')}\\)`));
    const list = await shared.cli(['volume', 'list']);
    t.regex(list.stdout, /^cli-ext +4 MiB +0 B +ro +file /m);
    const rmExt = await shared.cli(['volume', 'rm', 'cli-ext']);
    t.is(rmExt.code, 0);
    t.regex(rmExt.stdout, new RegExp(`data kept at ${path.join(dir, 'disk.img')}`));
    t.true(fs.existsSync(path.join(dir, 'disk.img')));

    const j = await shared.cli(['volume', 'create', 'cli-keep', '--size', '1M', '--json']);
    t.is(j.code, 0, j.stderr);
    const created = JSON.parse(j.stdout);
    t.is(created.size, MiB);
    const keep = await shared.cli(['volume', 'rm', 'cli-keep', '--keep-data']);
    t.is(keep.code, 0);
    t.regex(keep.stdout, /data kept at .*cli-keep\/image\.raw/);
    t.true(fs.existsSync(created.path));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the daemon rejects bad volume requests and the CLI reports them with exit code 1', async (t) => {
  const cases: [string[], RegExp][] = [
    [['volume', 'create', 'bad/name', '--size', '1G'], /invalid volume name "bad\/name"/],
    [['volume', 'create', 'x1', '--size', '12abc'], /invalid size "12abc"/],
    [['volume', 'create', 'x1', '--size', '1000'], /not a multiple of 512/],
    [['volume', 'create', 'x1'], /size is required/],
    [['volume', 'create', 'x1', '--path', '/does/not/exist'], /path does not exist: \/does\/not\/exist/],
  ];
  for (const [args, message] of cases) {
    const r = await shared.cli(args);
    t.is(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message);
    t.regex(r.stderr, /^rewind: /);
  }
});

test('usage errors exit 2; --help and --version exit 0', async (t) => {
  for (const args of [['volume', 'create'], ['bogus'], ['volume', 'list', '--frobnicate'], ['serve', '--listen', 'nonsense']]) {
    const r = await runRewind(['--data-dir', shared.dataDir, ...args]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.true(r.stderr.length > 0);
  }
  const v = await runRewind(['--version']);
  t.is(v.code, 0);
  t.regex(v.stdout.trim(), /^\d+\.\d+\.\d+/);
  const h = await runRewind(['serve', '--help']);
  t.is(h.code, 0);
  t.regex(h.stdout, /--listen <host:port>/);
  t.regex(h.stdout, /--data-dir <dir>/);
  const vh = await runRewind(['volume', '--help']);
  t.is(vh.code, 0);
  t.regex(vh.stdout, /create/);
});

test('--control selects the endpoint: unix:PATH, or http://HOST:PORT with the token', async (t) => {
  const unix = await runRewind(['--control', `unix:${shared.controlSocket}`, 'volume', 'list']);
  t.is(unix.code, 0, unix.stderr);
  t.regex(unix.stdout, /^default /m);

  const url = `http://127.0.0.1:${shared.controlPort}`;
  // Token read from <data-dir>/control.token.
  const tcp = await runRewind(['--data-dir', shared.dataDir, '--control', url, 'status']);
  t.is(tcp.code, 0, tcp.stderr);
  t.regex(tcp.stdout, new RegExp(`control: +${url}`));
  // Token from the environment.
  const envTok = await runRewind(['--control', url, 'volume', 'list', '--json'], { env: { REWIND_CONTROL_TOKEN: shared.token() } });
  t.is(envTok.code, 0, envTok.stderr);
  // Wrong token: refused by the daemon.
  const wrong = await runRewind(['--control', url, 'status'], { env: { REWIND_CONTROL_TOKEN: 'f'.repeat(64) } });
  t.is(wrong.code, 1);
  t.regex(wrong.stderr, /invalid bearer token/);
  // No token anywhere: the CLI says where it looked.
  const empty = tempDir();
  try {
    const none = await runRewind(['--data-dir', empty, '--control', url, 'status']);
    t.is(none.code, 2);
    t.regex(none.stderr, /needs a token/);
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
  const bad = await runRewind(['--control', 'ftp://x', 'status']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /invalid control URL/);
});

test('the CLI entry point sets UV_THREADPOOL_SIZE=16 before libuv starts its pool (unless the user set it)', async (t) => {
  // Each open() of a FIFO with no writer blocks one pool thread. With a pool
  // of N threads, N blocked opens stall every other async fs call.
  const script = `
    require(${JSON.stringify(path.join(__dirname, '../src/cli/main.js'))});
    const fs = require('fs'), cp = require('child_process'), path = require('path');
    const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'rwfifo-'));
    const n = Number(process.argv[1]);
    const fifos = [];
    for (let i = 0; i < n; i++) {
      const f = path.join(dir, 'f' + i);
      cp.execFileSync('mkfifo', [f]);
      fifos.push(f);
      fs.open(f, 'r', (err, fd) => { if (!err) fs.closeSync(fd); });
    }
    let done = false;
    const finish = (stalled) => {
      if (done) return;
      done = true;
      // Unblock the pool threads (a non-blocking writer open succeeds now).
      for (const f of fifos) { try { fs.closeSync(fs.openSync(f, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)); } catch {} }
      console.log(JSON.stringify({ size: process.env.UV_THREADPOOL_SIZE, stalled }));
      setTimeout(() => { fs.rmSync(dir, { recursive: true, force: true }); process.exit(0); }, 100);
    };
    const timer = setTimeout(() => finish(true), 1500);
    setTimeout(() => fs.stat(dir, () => { clearTimeout(timer); finish(false); }), 200);
  `;
  const probe = async (n: number, env: NodeJS.ProcessEnv) => {
    const r = await run(process.execPath, ['-e', script, String(n)], { env, timeoutMs: 20_000 });
    t.is(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { size: string; stalled: boolean };
  };
  const env = { ...process.env };
  delete env.UV_THREADPOOL_SIZE;
  t.deepEqual(await probe(15, env), { size: '16', stalled: false });
  t.deepEqual(await probe(16, env), { size: '16', stalled: true });
  t.deepEqual(await probe(4, { ...env, UV_THREADPOOL_SIZE: '4' }), { size: '4', stalled: true });
  t.deepEqual(await probe(3, { ...env, UV_THREADPOOL_SIZE: '4' }), { size: '4', stalled: false });
});

test('sizes: binary units, multiples of 512, clear errors', (t) => {
  const cases: [string | number, number][] = [
    ['4096', 4096],
    ['64k', 64 * 1024],
    ['64K', 64 * 1024],
    ['512M', 512 * MiB],
    ['512MB', 512 * MiB],
    ['1G', 1024 * MiB],
    ['1GiB', 1024 * MiB],
    ['1 GiB', 1024 * MiB],
    ['1.5G', 1536 * MiB],
    ['2T', 2 * 1024 ** 4],
    [' 1g ', 1024 * MiB],
    [1048576, MiB],
  ];
  for (const [input, bytes] of cases) t.is(parseVolumeSize(input), bytes, String(input));
  t.is(parseSize('0'), 0);
  t.throws(() => parseVolumeSize('0'), { message: /greater than zero/ });
  t.throws(() => parseVolumeSize('1000'), { message: /not a multiple of 512/ });
  t.throws(() => parseVolumeSize('1.1k'), { message: /whole number of bytes|multiple of 512/ });
  t.throws(() => parseVolumeSize('1X'), { message: /unknown unit "X"/ });
  t.throws(() => parseVolumeSize(''), { message: /invalid size/ });
  t.throws(() => parseVolumeSize('-1G'), { message: /invalid size/ });
  t.throws(() => parseVolumeSize('1e9'), { message: /invalid size "1e9"/ });
  t.throws(() => parseVolumeSize('9999999E'), { message: /too large/ });
  t.throws(() => parseVolumeSize(1.5), { message: /integer/ });
  t.is(formatSize(1024 * MiB), '1 GiB');
  t.is(formatSize(1536), '1.5 KiB');
  t.is(formatSize(100), '100 B');
});
