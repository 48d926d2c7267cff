/**
 * `rewind serve --stdio EXPORT` (issue 8): one NBD connection on stdin and
 * stdout (pipes, or a socketpair as libnbd's connect_command gives), or on
 * a systemd-activated socket (`nbdinfo -- [ rewind serve --stdio NAME ]`).
 * Writes to a protected volume served this way are journaled like any.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as P from '../src/nbd/protocol';
import { REWIND_BIN, runRewind, startDaemon, tempDir } from './helpers/daemon';
import { fails, MiB, need, ok, python, randomFile, sha256, sha256File } from './helpers/hardening';

const rewind = (dir: string, ...args: string[]) => [
  process.execPath,
  REWIND_BIN,
  '--data-dir',
  dir,
  'serve',
  '--log-level',
  'warn',
  ...args,
];

async function prepare(t: any): Promise<string> {
  const dir = tempDir('rw-stdio-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // Volumes are made by a daemon, then it stops: --stdio takes the directory's lock.
  const d = await startDaemon({ dataDir: dir });
  for (const args of [
    ['pv', '--size', '8M', '--protected'],
    ['theirs', '--size', '1M', '--allow', `uid:${process.getuid!() + 4242}`],
  ]) {
    const r = await d.cli(['volume', 'create', ...args]);
    if (r.code !== 0) throw new Error(r.stderr);
  }
  await d.stop();
  return dir;
}

test.serial('socket activation: nbdinfo and nbdcopy run rewind serve --stdio; protected writes are journaled and verify', async (t) => {
  need('nbdinfo', 'nbdcopy');
  const dir = await prepare(t);
  const info = await ok('nbdinfo', ['--json', '--', '[', ...rewind(dir, '--stdio', 'pv'), ']']);
  const j = JSON.parse(info);
  t.is(j.exports.length, 1);
  t.is(j.exports[0]['export-name'], 'pv');
  t.is(j.exports[0]['export-size'], 8 * MiB);
  const list = JSON.parse(await ok('nbdinfo', ['--json', '--list', '--', '[', ...rewind(dir, '--stdio', 'pv'), ']']));
  t.deepEqual(
    list.exports.map((e: any) => e['export-name']),
    ['pv'],
    'only the one export is listed',
  );

  const src = path.join(dir, 'src.img');
  const data = randomFile(src, 8 * MiB);
  await ok('nbdcopy', ['--', src, '[', ...rewind(dir, '--stdio', 'pv'), ']']);
  const back = path.join(dir, 'back.img');
  await ok('nbdcopy', ['--', '[', ...rewind(dir, '--stdio', 'pv'), ']', back]);
  t.is(sha256File(back), sha256(data));

  // The daemon on the same directory sees the journaled writes and verifies.
  const d = await startDaemon({ dataDir: dir });
  t.teardown(() => d.cleanup());
  const st = await d.api('GET', '/v1/volumes/pv/status');
  t.true(st.body.lastSeq > 0, 'writes over stdio were journaled');
  const v = await d.api('POST', '/v1/volumes/pv/verify');
  t.is(v.status, 200);
  t.true(v.body.ok, JSON.stringify(v.body));
  t.is(v.body.productionSha256, sha256(data));
  // While the daemon holds the directory, --stdio refuses clearly.
  const busy = await runRewind(['--data-dir', dir, 'serve', '--stdio', 'pv']);
  t.is(busy.code, 1);
  t.regex(busy.stderr, /in use|running|lock/i);
});

test.serial('connect_command (a socketpair on stdin/stdout): python libnbd writes and reads back; ACLs see the peer uid', async (t) => {
  const dir = await prepare(t);
  const script = `
import nbd, sys, json
cmd = json.loads(sys.argv[1])
h = nbd.NBD()
h.connect_command(cmd)
data = bytes(range(256)) * 256
h.pwrite(data, 1048576)
h.flush()
ok = h.pread(len(data), 1048576) == data
print("size", h.get_size(), "ok", ok)
h.shutdown()
`;
  const r = await python(script, [JSON.stringify(rewind(dir, '--stdio', 'pv'))]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /size 8388608 ok True/);
  // A volume allowed to another uid only: denied over the socketpair.
  const denied = await python(script.replace('h.connect_command(cmd)', 'h.connect_command(cmd)\nprint("connected")'), [
    JSON.stringify(rewind(dir, '--stdio', 'theirs')),
  ]);
  t.not(denied.code, 0);
  t.notRegex(denied.stdout, /connected/);
  // The same under socket activation.
  need('nbdinfo');
  await fails('nbdinfo', ['--', '[', ...rewind(dir, '--stdio', 'theirs'), ']']);
});

/** Spawns --stdio on plain pipes; returns the child and collected output. */
function spawnPipes(dir: string, exportName: string) {
  const [cmd, ...args] = rewind(dir, '--stdio', exportName, '--log-level', 'info');
  const child = spawn(cmd!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let err = '';
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  return { child, stdout: () => Buffer.concat(out), stderr: () => err, exited };
}

test.serial('plain pipes: stdout carries only the protocol, logs go to stderr, garbage ends the session cleanly', async (t) => {
  const dir = await prepare(t);
  const s = spawnPipes(dir, 'pv');
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0);
  const opt = Buffer.alloc(16);
  opt.writeBigUInt64BE(P.IHAVEOPT, 0);
  opt.writeUInt32BE(P.OPT_LIST, 8);
  s.child.stdin!.write(Buffer.concat([flags, opt]));
  // Wait for the list reply, then send garbage.
  const deadline = Date.now() + 15_000;
  while (s.stdout().length < 18 + 2 * 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  s.child.stdin!.end(Buffer.from('this is not an NBD option header at all'));
  const code = await s.exited;
  t.is(code, 0, s.stderr());
  const out = s.stdout();
  t.is(out.readBigUInt64BE(0), P.NBDMAGIC);
  t.is(out.readBigUInt64BE(8), P.IHAVEOPT);
  t.false(out.includes(Buffer.from('"level"')), 'no log line on stdout');
  t.true(out.includes(Buffer.from('pv')), 'the export was listed');
  t.regex(s.stderr(), /protocol violation/);
  t.regex(s.stderr(), /stdio connection ended/);
  // Pipes are the operator's own process: the uid ACL does not stop it.
  const s2 = spawnPipes(dir, 'theirs');
  const go = Buffer.alloc(16 + 4 + 6 + 2);
  go.writeBigUInt64BE(P.IHAVEOPT, 0);
  go.writeUInt32BE(P.OPT_GO, 8);
  go.writeUInt32BE(12, 12);
  go.writeUInt32BE(6, 16);
  go.write('theirs', 20);
  s2.child.stdin!.write(Buffer.concat([flags, go]));
  while (s2.stdout().length < 18 + 20 + 12 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const rep = s2.stdout().subarray(18);
  t.is(rep.readUInt32BE(12), P.REP_INFO, 'GO answered with export info, not an error');
  s2.child.stdin!.end();
  await s2.exited;
});

test.serial('--stdio with an unknown export fails with a clear message', async (t) => {
  const dir = await prepare(t);
  const r = await runRewind(['--data-dir', dir, 'serve', '--stdio', 'nope']);
  t.is(r.code, 1);
  t.regex(r.stderr, /no volume named "nope"/);
  t.is(r.stdout, '');
});
