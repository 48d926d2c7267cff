/**
 * TLS for NBD (issue 8): STARTTLS in the protocol library, and a live
 * `rewind serve --tls require|on` driven by nbdinfo (nbds:// URIs with
 * tls-certificates=DIR), nbdcopy and qemu-img (tls-creds-x509 objects).
 * Certificates come from openssl at test time (test/helpers/tls-certs.ts).
 *
 * A missing tool fails the test; nothing is skipped.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { NbdServer } from '../src/nbd/server';
import type { ClientInfo, ExportProvider } from '../src/nbd/export';
import * as P from '../src/nbd/protocol';
import { MemoryExport } from '../src/storage/memory-export';
import { startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { createVolume, fails, MiB, need, ok, randomFile, sha256, sha256File } from './helpers/hardening';
import { RawPeer } from './helpers/nbd-fixtures';
import { makePki, type Pki } from './helpers/tls-certs';

let pki: Pki;
let pkiRoot: string;

test.before(() => {
  need('openssl');
  pkiRoot = tempDir('rw-pki-');
  pki = makePki(pkiRoot);
});
test.after.always(() => {
  if (pkiRoot) fs.rmSync(pkiRoot, { recursive: true, force: true });
});

function nbds(d: TestDaemon, name: string, certDir: string): string {
  return `nbds://127.0.0.1:${d.nbdPort}/${name}?tls-certificates=${certDir}`;
}

function qemuTls(certDir: string): string[] {
  return ['--object', `tls-creds-x509,id=tls0,dir=${certDir},endpoint=client`];
}

function qemuOpts(d: TestDaemon, name: string): string {
  return `driver=nbd,host=127.0.0.1,port=${d.nbdPort},export=${name},tls-creds=tls0`;
}

function gbody(name: string): Buffer {
  const n = Buffer.from(name);
  const d = Buffer.alloc(4 + n.length + 2);
  d.writeUInt32BE(n.length, 0);
  n.copy(d, 4);
  return d;
}

/** In-process server over one memory export, with the test PKI. */
async function libServer(t: any, mode: 'off' | 'on' | 'require', verifyClient = false) {
  const exp = new MemoryExport(4 * MiB);
  const seen: ClientInfo[] = [];
  const provider: ExportProvider = {
    list: () => [{ name: 'mem' }],
    async open(name, client) {
      seen.push({ ...client });
      return name === 'mem' || name === '' ? { name: 'mem', export: exp } : null;
    },
  };
  const server = new NbdServer({
    provider,
    tls:
      mode === 'off'
        ? { mode }
        : {
            mode,
            verifyClient,
            credentials: {
              cert: fs.readFileSync(pki.files.serverCert),
              key: fs.readFileSync(pki.files.serverKey),
              ca: fs.readFileSync(pki.files.caCert),
            },
          },
  });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  t.teardown(() => server.close());
  return { server, port, seen, exp };
}

/** STARTTLS on a raw peer, then a TLS client on the same socket. */
async function startTls(peer: RawPeer, certDir: string): Promise<RawPeer> {
  peer.sendOption(P.OPT_STARTTLS);
  const r = await peer.optionReply();
  if (r.type !== P.REP_ACK) throw new Error(`STARTTLS got ${r.type.toString(16)}`);
  peer.release();
  const opts: tls.ConnectionOptions = {
    socket: peer.sock,
    ca: fs.readFileSync(path.join(certDir, 'ca-cert.pem')),
    servername: 'localhost',
  };
  if (fs.existsSync(path.join(certDir, 'client-cert.pem'))) {
    opts.cert = fs.readFileSync(path.join(certDir, 'client-cert.pem'));
    opts.key = fs.readFileSync(path.join(certDir, 'client-key.pem'));
  }
  const s = tls.connect(opts);
  await new Promise<void>((res, rej) => {
    s.once('secureConnect', res);
    s.once('error', rej);
  });
  return RawPeer.over(s);
}

// ------------------------------------------------------------ library level

test('library, TLS off: STARTTLS is refused with NBD_REP_ERR_POLICY and plaintext goes on', async (t) => {
  const { port } = await libServer(t, 'off');
  const p = await RawPeer.connect(port);
  t.teardown(() => p.destroy());
  await p.handshake();
  p.sendOption(P.OPT_STARTTLS);
  t.is((await p.optionReply()).type, P.REP_ERR_POLICY);
  const { size } = await p.go('mem');
  t.is(size, 4 * MiB);
});

test('library, TLS require: every option but STARTTLS and ABORT gets TLS_REQD; EXPORT_NAME closes', async (t) => {
  const { port, seen } = await libServer(t, 'require');
  const p = await RawPeer.connect(port);
  t.teardown(() => p.destroy());
  await p.handshake();
  for (const [opt, data] of [
    [P.OPT_LIST, Buffer.alloc(0)],
    [P.OPT_INFO, gbody('mem')],
    [P.OPT_GO, gbody('mem')],
    [P.OPT_STRUCTURED_REPLY, Buffer.alloc(0)],
    [P.OPT_LIST_META_CONTEXT, Buffer.alloc(8)],
    [P.OPT_SET_META_CONTEXT, Buffer.alloc(8)],
    [99, Buffer.alloc(3)],
  ] as Array<[number, Buffer]>) {
    p.sendOption(opt, data);
    const r = await p.optionReply();
    t.is(r.opt, opt);
    t.is(r.type, P.REP_ERR_TLS_REQD, `option ${opt}`);
  }
  t.is(seen.length, 0, 'the provider was never asked in plaintext');
  p.sendOption(P.OPT_EXPORT_NAME, Buffer.from('mem'));
  t.true(await p.waitClosed(3000), 'EXPORT_NAME without TLS ends the session');
  t.is(seen.length, 0);

  const a = await RawPeer.connect(port);
  t.teardown(() => a.destroy());
  await a.handshake();
  a.sendOption(P.OPT_ABORT);
  t.is((await a.optionReply()).type, P.REP_ACK);
  t.true(await a.waitClosed(3000));
});

test('library, TLS require: after STARTTLS options work, a second STARTTLS is INVALID, data flows', async (t) => {
  const { port, seen, exp } = await libServer(t, 'require', true);
  const raw = await RawPeer.connect(port);
  t.teardown(() => raw.destroy());
  await raw.handshake();
  const p = await startTls(raw, pki.clientDir);
  p.sendOption(P.OPT_STARTTLS);
  t.is((await p.optionReply()).type, P.REP_ERR_INVALID);
  p.sendOption(P.OPT_LIST);
  const l1 = await p.optionReply();
  t.is(l1.type, P.REP_SERVER);
  t.is((await p.optionReply()).type, P.REP_ACK);
  await exp.write(4096, Buffer.alloc(4096, 0x7c), { fua: false });
  const { size } = await p.go('mem');
  t.is(size, 4 * MiB);
  p.request(P.CMD_READ, 0, 1n, 4096, 4096);
  const r = await p.simpleReply(4096);
  t.is(r.error, 0);
  t.true(r.data.equals(Buffer.alloc(4096, 0x7c)));
  t.true(seen.at(-1)!.tls);
  t.is(seen.at(-1)!.certSubject, 'CN=alice,O=Rewind Test');
  t.deepEqual(seen.at(-1)!.cert!.subject.CN, ['alice']);
});

test('library: bytes sent after STARTTLS before its reply end the connection', async (t) => {
  const { port } = await libServer(t, 'on');
  const p = await RawPeer.connect(port);
  t.teardown(() => p.destroy());
  await p.handshake();
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(P.IHAVEOPT, 0);
  h.writeUInt32BE(P.OPT_STARTTLS, 8);
  h.writeUInt32BE(0, 12);
  p.write(Buffer.concat([h, Buffer.from('smuggled plaintext')]));
  t.true(await p.waitClosed(3000));
});

test('library: a client certificate from another CA is refused at the handshake', async (t) => {
  const { port, seen } = await libServer(t, 'require', true);
  for (const dir of [pki.rogueClientDir, pki.caOnlyDir]) {
    const raw = await RawPeer.connect(port);
    t.teardown(() => raw.destroy());
    await raw.handshake();
    const err = await t.throwsAsync(async () => {
      const p = await startTls(raw, dir);
      // TLS 1.3: the server's verdict on the client certificate arrives after the client's handshake.
      p.sendOption(P.OPT_LIST);
      await p.optionReply();
    });
    t.truthy(err);
  }
  t.is(seen.length, 0);
});

// ----------------------------------------------------------- live daemon

test.serial('TLS required: plaintext refused; nbdinfo, nbdcopy and qemu-img work over nbds:// with the right certificates', async (t) => {
  need('nbdinfo', 'nbdcopy', 'qemu-img');
  const d = await startDaemon({ args: ['--tls', 'require', '--tls-dir', pki.serverDir, '--tls-verify-client'] });
  t.teardown(() => d.cleanup());
  await createVolume(d, 'tlsvol', '8M');
  const work = tempDir('rw-tls-');
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));

  // Plaintext: nothing listed, nothing opened, over TCP or the Unix socket.
  const plainList = await fails('nbdinfo', ['--list', d.nbdUri('')]);
  t.regex(plainList, /nbd_opt_list|TLS|not supported/i);
  t.notRegex(plainList, /tlsvol/);
  await fails('nbdinfo', [d.nbdUri('tlsvol')]);
  await fails('nbdinfo', [d.nbdUnixUri('tlsvol')]);
  await fails('qemu-img', ['info', '-f', 'raw', d.nbdUri('tlsvol')]);

  // nbdinfo over TLS lists and opens.
  const list = JSON.parse(await ok('nbdinfo', ['--json', '--list', nbds(d, '', pki.clientDir)]));
  t.deepEqual(list.exports.map((e: any) => e['export-name']).sort(), ['default', 'tlsvol']);
  t.true(list.TLS, 'nbdinfo reports TLS');
  const info = JSON.parse(await ok('nbdinfo', ['--json', nbds(d, 'tlsvol', pki.clientDir)]));
  t.is(info.exports[0]['export-size'], 8 * MiB);

  // qemu-img writes an image through TLS; nbdcopy reads it back through TLS.
  const src = path.join(work, 'src.img');
  const data = randomFile(src, 8 * MiB);
  await ok('qemu-img', ['convert', ...qemuTls(pki.clientDir), '-n', '-f', 'raw', src, '--target-image-opts', qemuOpts(d, 'tlsvol')]);
  const back = path.join(work, 'back.img');
  await ok('nbdcopy', [nbds(d, 'tlsvol', pki.clientDir), back]);
  t.is(sha256File(back), sha256(data));
  // qemu-img info and compare over TLS too.
  const qi = await ok('qemu-img', ['info', ...qemuTls(pki.clientDir), '--image-opts', qemuOpts(d, 'tlsvol')]);
  t.regex(qi, /virtual size: 8 MiB/);
  await ok('qemu-img', [
    'compare',
    ...qemuTls(pki.clientDir),
    '--image-opts',
    `driver=raw,file.driver=file,file.filename=${src}`,
    qemuOpts(d, 'tlsvol'),
  ]);

  // Over the Unix socket as well.
  const ux = await ok('nbdinfo', [`nbds+unix:///tlsvol?socket=${d.nbdSocket}&tls-certificates=${pki.clientDir}`]);
  t.regex(ux, /with TLS/);
});

test.serial(
  'TLS required: wrong certificates are refused (client cert from another CA, no client cert, wrong CA for the server)',
  async (t) => {
    need('nbdinfo', 'qemu-img');
    const d = await startDaemon({ args: ['--tls', 'require', '--tls-dir', pki.serverDir, '--tls-verify-client'] });
    t.teardown(() => d.cleanup());
    for (const dir of [pki.rogueClientDir, pki.caOnlyDir, pki.wrongCaDir]) {
      const out = await fails('nbdinfo', ['--list', nbds(d, '', dir)]);
      t.regex(out, /tls|gnutls|certificate|handshake/i, dir);
      t.notRegex(out, /export="default"/);
      await fails('qemu-img', ['info', ...qemuTls(dir), '--image-opts', qemuOpts(d, 'default')]);
    }
    // The daemon is still serving good clients afterwards.
    await ok('nbdinfo', ['--list', nbds(d, '', pki.clientDir)]);
  },
);

test.serial('TLS on: plaintext clients and TLS clients (no client certificate needed) are both served', async (t) => {
  need('nbdinfo', 'qemu-img');
  const d = await startDaemon({ args: ['--tls', 'on', '--tls-dir', pki.serverDir] });
  t.teardown(() => d.cleanup());
  const plain = await ok('nbdinfo', [d.nbdUri('default')]);
  t.regex(plain, /without TLS/);
  const secure = await ok('nbdinfo', [nbds(d, 'default', pki.caOnlyDir)]);
  t.regex(secure, /with TLS/);
  const qi = await ok('qemu-img', ['info', ...qemuTls(pki.caOnlyDir), '--image-opts', qemuOpts(d, 'default')]);
  t.regex(qi, /virtual size: 1 GiB/);
});

test.serial('serve refuses bad TLS settings with a clear message', async (t) => {
  const dir = tempDir('rw-tlsbad-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { runRewind } = await import('./helpers/daemon');
  const noCerts = await runRewind([
    '--data-dir',
    dir,
    'serve',
    '--listen',
    'none',
    '--socket',
    'none',
    '--tls',
    'require',
    '--tls-dir',
    path.join(dir, 'nothing'),
  ]);
  t.is(noCerts.code, 2);
  t.regex(noCerts.stderr, /cannot read the TLS certificate .*server-cert\.pem/);
  const verifyNoTls = await runRewind(['--data-dir', dir, 'serve', '--tls-verify-client']);
  t.is(verifyNoTls.code, 2);
  t.regex(verifyNoTls.stderr, /--tls-verify-client needs --tls on or --tls require/);
  fs.writeFileSync(path.join(dir, 'garbage.pem'), 'not a certificate\n');
  const garbage = await runRewind([
    '--data-dir',
    dir,
    'serve',
    '--tls',
    'on',
    '--tls-cert',
    path.join(dir, 'garbage.pem'),
    '--tls-key',
    pki.files.serverKey,
  ]);
  t.is(garbage.code, 2);
  t.regex(garbage.stderr, /not usable/);
  const mode = await runRewind(['--data-dir', dir, 'serve', '--tls', 'maybe']);
  t.is(mode.code, 2);
  t.regex(mode.stderr, /Allowed choices are off, on, require/);
});
