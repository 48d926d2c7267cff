/**
 * Test certificates made with the openssl command line (it must be
 * installed: a missing openssl fails the test).
 *
 *   const pki = makePki(dir)
 *   pki.serverDir   server-cert.pem, server-key.pem, ca-cert.pem   (rewind serve --tls-dir, nbdkit --tls-certificates)
 *   pki.clientDir   ca-cert.pem, client-cert.pem (CN=alice), client-key.pem   (libnbd tls-certificates=, qemu tls-creds-x509 dir=)
 *   pki.otherClientDir   same CA, CN=bob
 *   pki.rogueClientDir   ca-cert.pem of the real CA, but a client certificate signed by another CA (CN=alice)
 *   pki.caOnlyDir   only ca-cert.pem (a client without a certificate)
 *   pki.wrongCaDir  ca-cert.pem of another CA (the client cannot verify the server)
 *
 * RSA 2048 keys, with the key usages GnuTLS and qemu check: CA:TRUE and
 * keyCertSign for the CA; serverAuth / clientAuth for the leaves. The
 * server certificate is for localhost and 127.0.0.1.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface Pki {
  root: string;
  serverDir: string;
  clientDir: string;
  otherClientDir: string;
  rogueClientDir: string;
  caOnlyDir: string;
  wrongCaDir: string;
  files: {
    caCert: string;
    serverCert: string;
    serverKey: string;
  };
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr?.toString() ?? e.message}`, { cause: err });
  }
}

function makeCa(dir: string, name: string, cn: string): void {
  fs.writeFileSync(
    path.join(dir, `${name}.ext`),
    'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n',
  );
  openssl(['genrsa', '-out', `${name}-key.pem`, '2048'], dir);
  openssl(
    [
      'req',
      '-new',
      '-x509',
      '-key',
      `${name}-key.pem`,
      '-out',
      `${name}-cert.pem`,
      '-days',
      '30',
      '-subj',
      `/CN=${cn}/O=Rewind Test`,
      '-extensions',
      'v3_ca',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
}

function makeLeaf(dir: string, ca: string, name: string, subj: string, ext: string): void {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  openssl(['genrsa', '-out', `${name}-key.pem`, '2048'], dir);
  openssl(['req', '-new', '-key', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', subj], dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${ca}-cert.pem`,
      '-CAkey',
      `${ca}-key.pem`,
      '-CAcreateserial',
      '-out',
      `${name}-cert.pem`,
      '-days',
      '30',
      '-extfile',
      `${name}.ext`,
    ],
    dir,
  );
}

const SERVER_EXT =
  'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n';
const CLIENT_EXT = 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n';

export function makePki(root: string): Pki {
  const work = path.join(root, 'work');
  fs.mkdirSync(work, { recursive: true });
  makeCa(work, 'ca', 'Rewind Test CA');
  makeCa(work, 'rogue-ca', 'Rogue CA');
  makeLeaf(work, 'ca', 'server', '/CN=localhost/O=Rewind Test', SERVER_EXT);
  makeLeaf(work, 'ca', 'alice', '/CN=alice/O=Rewind Test', CLIENT_EXT);
  makeLeaf(work, 'ca', 'bob', '/CN=bob/O=Rewind Test', CLIENT_EXT);
  makeLeaf(work, 'rogue-ca', 'mallory', '/CN=alice/O=Rewind Test', CLIENT_EXT);
  const dir = (name: string, files: Record<string, string>) => {
    const d = path.join(root, name);
    fs.mkdirSync(d, { recursive: true });
    for (const [to, from] of Object.entries(files)) fs.copyFileSync(path.join(work, from), path.join(d, to));
    return d;
  };
  const serverDir = dir('server', {
    'server-cert.pem': 'server-cert.pem',
    'server-key.pem': 'server-key.pem',
    'ca-cert.pem': 'ca-cert.pem',
  });
  const clientDir = dir('alice', { 'ca-cert.pem': 'ca-cert.pem', 'client-cert.pem': 'alice-cert.pem', 'client-key.pem': 'alice-key.pem' });
  const otherClientDir = dir('bob', { 'ca-cert.pem': 'ca-cert.pem', 'client-cert.pem': 'bob-cert.pem', 'client-key.pem': 'bob-key.pem' });
  const rogueClientDir = dir('mallory', {
    'ca-cert.pem': 'ca-cert.pem',
    'client-cert.pem': 'mallory-cert.pem',
    'client-key.pem': 'mallory-key.pem',
  });
  const caOnlyDir = dir('ca-only', { 'ca-cert.pem': 'ca-cert.pem' });
  const wrongCaDir = dir('wrong-ca', {
    'ca-cert.pem': 'rogue-ca-cert.pem',
    'client-cert.pem': 'alice-cert.pem',
    'client-key.pem': 'alice-key.pem',
  });
  for (const d of [serverDir, clientDir, otherClientDir, rogueClientDir, wrongCaDir]) {
    for (const f of fs.readdirSync(d)) if (f.endsWith('-key.pem')) fs.chmodSync(path.join(d, f), 0o600);
  }
  return {
    root,
    serverDir,
    clientDir,
    otherClientDir,
    rogueClientDir,
    caOnlyDir,
    wrongCaDir,
    files: {
      caCert: path.join(serverDir, 'ca-cert.pem'),
      serverCert: path.join(serverDir, 'server-cert.pem'),
      serverKey: path.join(serverDir, 'server-key.pem'),
    },
  };
}

/** Another server certificate from the same CA (a rotation): its cert and key files, in the PKI's work directory. */
export function newServerCert(pki: Pki, name: string): { cert: string; key: string } {
  const work = path.join(pki.root, 'work');
  makeLeaf(work, 'ca', name, `/CN=localhost/O=Rewind Test/OU=${name}`, SERVER_EXT);
  return { cert: path.join(work, `${name}-cert.pem`), key: path.join(work, `${name}-key.pem`) };
}
