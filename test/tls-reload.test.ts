/**
 * Certificates rotated without a restart (src/daemon/cert-reload.ts): a
 * live daemon with `--tls require` picks up new files when they change
 * (replaced by rename, as rotation tools do) and on SIGHUP; a session
 * already up keeps working; a rotation whose certificate and key are not a
 * pair is refused, the old certificate stays in use and the error shows in
 * /v1/health; real clients (nbdinfo) connect throughout.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import * as P from '../src/nbd/protocol';
import { sleep, startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { need, ok } from './helpers/hardening';
import { RawPeer } from './helpers/nbd-fixtures';
import { makePki, newServerCert } from './helpers/tls-certs';

interface CertStatus {
  what: string;
  certificate: { fingerprint256: string; subject: string; validTo: string } | null;
  reloads: number;
  failures: number;
  lastError: string | null;
}

async function certStatus(d: TestDaemon): Promise<CertStatus> {
  const r = await d.client().raw('GET', '/v1/health');
  const h = JSON.parse(r.text) as { certificates: CertStatus[] };
  const nbd = h.certificates.find((c) => c.what === 'NBD TLS');
  if (!nbd) throw new Error(`no NBD TLS certificate in /v1/health: ${r.text}`);
  return nbd;
}

/** STARTTLS and a TLS handshake; returns the peer (for requests) and the certificate the server showed. */
async function tlsPeer(port: number, caFile: string): Promise<{ peer: RawPeer; fingerprint: string; sock: tls.TLSSocket }> {
  const raw = await RawPeer.connect(port);
  await raw.handshake();
  raw.sendOption(P.OPT_STARTTLS);
  const r = await raw.optionReply();
  if (r.type !== P.REP_ACK) throw new Error(`STARTTLS got ${r.type}`);
  raw.release();
  const s = tls.connect({ socket: raw.sock, ca: fs.readFileSync(caFile), servername: 'localhost' });
  await new Promise<void>((res, rej) => {
    s.once('secureConnect', res);
    s.once('error', rej);
  });
  return { peer: RawPeer.over(s), fingerprint: s.getPeerCertificate().fingerprint256, sock: s };
}

/** Replaces a file the way rotation tools do: write a temporary file, rename it over. */
function replace(to: string, from: string): void {
  const tmp = `${to}.new`;
  fs.copyFileSync(from, tmp);
  fs.renameSync(tmp, to);
}

async function waitFor<T>(what: string, fn: () => Promise<T>, pred: (v: T) => boolean, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (pred(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
    await sleep(200);
  }
}

test.serial(
  'a rotated NBD certificate is served to new connections without a restart; a bad one is refused and the old stays',
  async (t) => {
    need('openssl', 'nbdinfo');
    const root = tempDir('rw-tls-reload-');
    t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
    const pki = makePki(root);
    const dir = path.join(root, 'live-tls');
    fs.cpSync(pki.serverDir, dir, { recursive: true });
    const d = await startDaemon({ args: ['--tls', 'require', '--tls-dir', dir] });
    t.teardown(() => d.cleanup());
    const ca = pki.files.caCert;
    const uri = `nbds://127.0.0.1:${d.nbdPort}/default?tls-certificates=${pki.clientDir}`;

    const first = await tlsPeer(d.nbdPort, ca);
    const st0 = await certStatus(d);
    t.is(st0.certificate?.fingerprint256, first.fingerprint, '/v1/health shows the certificate in use');
    // A session that stays up across the rotations.
    await first.peer.go('default');

    // 1. Rotation by file change.
    const second = newServerCert(pki, 'server2');
    replace(path.join(dir, 'server-key.pem'), second.key);
    replace(path.join(dir, 'server-cert.pem'), second.cert);
    const st1 = await waitFor(
      'the new certificate',
      () => certStatus(d),
      (s) => s.certificate?.fingerprint256 !== first.fingerprint && s.lastError === null,
    );
    const after = await tlsPeer(d.nbdPort, ca);
    t.is(after.fingerprint, st1.certificate!.fingerprint256, 'a new connection gets the new certificate');
    t.not(after.fingerprint, first.fingerprint);
    t.regex(st1.certificate!.subject, /OU=server2/);
    await ok('nbdinfo', [uri]);
    after.sock.destroy();

    // 2. A certificate and a key that are not a pair: refused, the rotated one stays.
    const third = newServerCert(pki, 'server3');
    replace(path.join(dir, 'server-cert.pem'), third.cert);
    const bad = await waitFor(
      'the refusal',
      () => certStatus(d),
      (s) => s.failures > 0,
    );
    t.regex(bad.lastError ?? '', /not usable/);
    t.is(bad.certificate?.fingerprint256, st1.certificate!.fingerprint256);
    const still = await tlsPeer(d.nbdPort, ca);
    t.is(still.fingerprint, st1.certificate!.fingerprint256, 'the last good certificate is still served');
    still.sock.destroy();
    await ok('nbdinfo', [uri]);

    // 3. The key follows: the pair is complete and taken; SIGHUP also reloads (and does not stop the daemon).
    replace(path.join(dir, 'server-key.pem'), third.key);
    const good = await waitFor(
      'the fixed pair',
      () => certStatus(d),
      (s) => s.lastError === null && /OU=server3/.test(s.certificate?.subject ?? ''),
    );
    const reloads = good.reloads;
    process.kill(d.pid!, 'SIGHUP');
    await waitFor(
      'the SIGHUP reload',
      () => certStatus(d),
      (s) => s.reloads > reloads,
    );
    t.true(fs.existsSync(`/proc/${d.pid}`), 'SIGHUP did not stop the daemon');
    const last = await tlsPeer(d.nbdPort, ca);
    t.is(last.fingerprint, good.certificate!.fingerprint256);
    last.sock.destroy();

    // The session opened before all this still reads and writes.
    const data = Buffer.alloc(4096, 0x5a);
    first.peer.request(P.CMD_WRITE, 0, 1n, 8192, data.length, data);
    t.is((await first.peer.simpleReply()).error, 0);
    first.peer.request(P.CMD_READ, 0, 2n, 8192, data.length);
    const r = await first.peer.simpleReply(data.length);
    t.true(r.data.equals(data));
    first.sock.destroy();

    // The control API reloads on request too.
    const api = await d.client().raw('POST', '/v1/certificates/reload');
    t.is(api.status, 200);
  },
);
