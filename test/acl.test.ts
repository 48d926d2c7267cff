/**
 * Per-export access control (issue 8): the ACL module, the protocol
 * library's authorize hook, and a live daemon whose volumes carry allow
 * lists by address, Unix-socket peer uid and TLS client-certificate
 * subject, driven by nbdinfo, qemu-io and nbdcopy.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AclError, aclAllows, effectiveAcl, parseAcl } from '../src/access/acl';
import type { ClientInfo, ExportProvider } from '../src/nbd/export';
import * as P from '../src/nbd/protocol';
import { NbdServer } from '../src/nbd/server';
import { MemoryExport } from '../src/storage/memory-export';
import { startDaemon, tempDir, type TestDaemon } from './helpers/daemon';
import { createVolume, fails, MiB, need, ok, randomFile, sha256, sha256File } from './helpers/hardening';
import { RawPeer } from './helpers/nbd-fixtures';
import { makePki } from './helpers/tls-certs';

const tcp = (addr: string): ClientInfo => ({ transport: 'tcp', id: 1, tls: false, remoteAddress: addr });
const unix = (uid: number, gid = uid): ClientInfo => ({ transport: 'unix', id: 1, tls: false, peer: { pid: 1, uid, gid } });
const withCert = (cn: string, o = 'Acme'): ClientInfo => ({
  transport: 'tcp',
  id: 1,
  tls: true,
  remoteAddress: '192.0.2.1',
  cert: { subject: { CN: [cn], O: [o] }, issuer: { CN: ['CA'] }, fingerprint256: 'AA' },
  certSubject: `CN=${cn},O=${o}`,
});

test('parseAcl canonicalises entries and rejects bad ones with the accepted forms', (t) => {
  t.deepEqual(
    parseAcl([
      'addr:127.0.0.1',
      ' ip:10.0.0.0/8 ',
      'addr:10.0.0.0/8',
      'UID:1000',
      'cert:CN=alice, O=Acme',
      'cert:*',
      '*',
      'addr:[FD00::]/8',
    ]),
    ['addr:127.0.0.1', 'addr:10.0.0.0/8', 'uid:1000', 'cert:CN=alice,O=Acme', 'cert:*', 'any', 'addr:fd00::/8'],
  );
  t.is(parseAcl(undefined), undefined);
  t.is(parseAcl([]), undefined);
  for (const bad of ['addr:300.1.1.1', 'addr:10.0.0.0/33', 'uid:alice', 'cert:alice', 'cert:CN=', 'host:example.com', '']) {
    const e = t.throws(() => parseAcl([bad]), { instanceOf: AclError }, bad);
    t.regex(e!.message, /expected|not an IP|prefix|must be a number/);
  }
  t.throws(() => parseAcl('addr:127.0.0.1'), { message: /list of ACL entries/ });
});

test('aclAllows matches addresses (CIDR, IPv4-mapped IPv6), peer uid/gid and certificate subjects', (t) => {
  t.true(aclAllows(undefined, tcp('203.0.113.9')), 'no ACL: everyone');
  const acl = parseAcl(['addr:10.1.0.0/16', 'addr:::1', 'uid:1000', 'gid:50', 'cert:CN=alice,O=Acme'])!;
  t.true(aclAllows(acl, tcp('10.1.200.3')));
  t.true(aclAllows(acl, tcp('::ffff:10.1.0.1')));
  t.false(aclAllows(acl, tcp('10.2.0.1')));
  t.true(aclAllows(acl, tcp('::1')));
  t.false(aclAllows(acl, tcp('::2')));
  t.true(aclAllows(acl, unix(1000, 7)));
  t.true(aclAllows(acl, unix(7, 50)));
  t.false(aclAllows(acl, unix(0)));
  t.false(aclAllows(acl, { transport: 'unix', id: 1, tls: false }), 'unix without credentials');
  t.true(aclAllows(acl, withCert('alice')));
  t.false(aclAllows(acl, withCert('alice', 'Evil')));
  t.false(aclAllows(acl, withCert('bob')));
  t.false(aclAllows(acl, { ...withCert('alice'), tls: false }), 'a certificate only counts over TLS');
  t.true(aclAllows(parseAcl(['cert:*']), withCert('anyone')));
  t.false(aclAllows(parseAcl(['cert:*']), tcp('127.0.0.1')));
  t.true(aclAllows(acl, { transport: 'stdio', id: 1, tls: false }), 'stdio pipes: the operator');
  t.true(aclAllows(['any'], tcp('198.51.100.7')));
  t.false(aclAllows(['bogus:entry'], tcp('127.0.0.1')), 'an unparsable stored entry admits nobody');
  t.deepEqual(effectiveAcl(undefined, ['uid:1']), ['uid:1']);
  t.deepEqual(effectiveAcl(['uid:2'], ['uid:1']), ['uid:2']);
  t.is(effectiveAcl([], undefined), undefined);
});

test('library: the authorize hook filters LIST and refuses INFO, GO, meta contexts (POLICY) and EXPORT_NAME (close)', async (t) => {
  const opened: string[] = [];
  const provider: ExportProvider = {
    list: () => [{ name: 'public' }, { name: 'secret' }],
    async open(name) {
      opened.push(name);
      return { name, export: new MemoryExport(MiB) };
    },
    authorize: (name) => name !== 'secret',
  };
  const server = new NbdServer({ provider });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  t.teardown(() => server.close());
  const p = await RawPeer.connect(port);
  t.teardown(() => p.destroy());
  await p.handshake();
  p.sendOption(P.OPT_LIST);
  const names: string[] = [];
  for (;;) {
    const r = await p.optionReply();
    if (r.type === P.REP_ACK) break;
    names.push(r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
  }
  t.deepEqual(names, ['public']);
  const body = (name: string) => {
    const n = Buffer.from(name);
    const d = Buffer.alloc(4 + n.length + 2);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    return d;
  };
  for (const opt of [P.OPT_INFO, P.OPT_GO]) {
    p.sendOption(opt, body('secret'));
    const r = await p.optionReply();
    t.is(r.type, P.REP_ERR_POLICY);
    t.regex(r.data.toString(), /denied/);
  }
  const meta = Buffer.alloc(4 + 6 + 4);
  meta.writeUInt32BE(6, 0);
  meta.write('secret', 4);
  p.sendOption(P.OPT_LIST_META_CONTEXT, meta);
  t.is((await p.optionReply()).type, P.REP_ERR_POLICY);
  t.deepEqual(opened, [], 'a denied export is never opened');
  const { size } = await p.go('public');
  t.is(size, MiB);
  const q = await RawPeer.connect(port);
  t.teardown(() => q.destroy());
  await q.handshake();
  q.sendOption(P.OPT_EXPORT_NAME, Buffer.from('secret'));
  t.true(await q.waitClosed(3000));
  t.deepEqual(opened, ['public']);
});

async function listNames(uri: string): Promise<string[]> {
  const j = JSON.parse(await ok('nbdinfo', ['--json', '--list', uri]));
  return j.exports.map((e: any) => e['export-name']).sort();
}

test.serial(
  'daemon: volumes allowed by address and by Unix peer uid; denied clients cannot list or open, protected ones included',
  async (t) => {
    need('nbdinfo', 'qemu-io', 'nbdcopy');
    const d: TestDaemon = await startDaemon({ args: ['--no-default-volume'] });
    t.teardown(() => d.cleanup());
    const uid = process.getuid!();
    await createVolume(d, 'open', '4M');
    await createVolume(d, 'lan', '4M', '--protected', '--allow', 'addr:10.0.0.0/8');
    await createVolume(d, 'local', '4M', '--protected', '--allow', 'addr:127.0.0.1', '--allow', 'addr:::1');
    await createVolume(d, 'mine', '4M', '--allow', `uid:${uid}`);
    await createVolume(d, 'other', '4M', '--protected', '--allow', `uid:${uid + 4242}`);

    // What each transport may see.
    t.deepEqual(await listNames(d.nbdUri('')), ['local', 'open']);
    t.deepEqual(await listNames(d.nbdUnixUri('')), ['mine', 'open']);

    // Denied: cannot open, by any client, and nothing reaches the journal.
    for (const uri of [d.nbdUri('lan'), d.nbdUri('mine'), d.nbdUri('other'), d.nbdUnixUri('other'), d.nbdUnixUri('lan')]) {
      await fails('nbdinfo', [uri]);
      await fails('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', uri]);
    }
    for (const v of ['lan', 'other']) {
      const st = await d.api('GET', `/v1/volumes/${v}/status`);
      t.is(st.body.lastSeq, 0, `${v}: no write reached the journal`);
    }

    // Allowed: real data through, read back exactly.
    const work = tempDir('rw-acl-');
    t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
    for (const [name, uri] of [
      ['local', d.nbdUri('local')],
      ['mine', d.nbdUnixUri('mine')],
    ] as const) {
      const src = path.join(work, `${name}.src`);
      const data = randomFile(src, 4 * MiB);
      await ok('nbdcopy', [src, uri]);
      const back = path.join(work, `${name}.back`);
      await ok('nbdcopy', [uri, back]);
      t.is(sha256File(back), sha256(data), name);
    }

    // The ACL is part of the volume's configuration: API and CLI show it, it survives a restart.
    const v = await d.api('GET', '/v1/volumes/lan');
    t.deepEqual(v.body.allow, ['addr:10.0.0.0/8']);
    t.deepEqual((await d.api('GET', '/v1/volumes/open')).body.allow, []);
    const list = await d.cli(['volume', 'list']);
    t.regex(list.stdout, /ALLOW/);
    t.regex(list.stdout, /^lan .* addr:10\.0\.0\.0\/8$/m);
    t.regex(list.stdout, /^open .* any$/m);
    await d.restart();
    t.deepEqual(await listNames(d.nbdUri('')), ['local', 'open']);
    t.deepEqual((await d.api('GET', '/v1/volumes/local')).body.allow, ['addr:127.0.0.1', 'addr:::1']);

    // Bad entries are refused with a clear message.
    const bad = await d.cli(['volume', 'create', 'bad', '--size', '1M', '--allow', 'host:example.com']);
    t.is(bad.code, 1);
    t.regex(bad.stderr, /expected any, addr:CIDR, uid:N/);
    const badApi = await d.api('POST', '/v1/volumes', { name: 'bad', size: '1M', allow: 'addr:1.2.3.4' });
    t.is(badApi.status, 400);
    t.false((await d.api('GET', '/v1/volumes/bad')).status === 200);
  },
);

test.serial('daemon with TLS client certificates: a volume allowed to CN=alice is listed and opened by alice only', async (t) => {
  need('nbdinfo', 'qemu-io', 'openssl');
  const root = tempDir('rw-aclpki-');
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const pki = makePki(root);
  const d = await startDaemon({ args: ['--tls', 'require', '--tls-dir', pki.serverDir, '--tls-verify-client'] });
  t.teardown(() => d.cleanup());
  await createVolume(d, 'alice-only', '4M', '--protected', '--allow', 'cert:CN=alice');
  const uri = (name: string, dir: string) => `nbds://127.0.0.1:${d.nbdPort}/${name}?tls-certificates=${dir}`;
  t.deepEqual(await listNames(uri('', pki.clientDir)), ['alice-only', 'default']);
  t.deepEqual(await listNames(uri('', pki.otherClientDir)), ['default']);
  await fails('nbdinfo', [uri('alice-only', pki.otherClientDir)]);
  await ok('qemu-io', [
    '--object',
    `tls-creds-x509,id=tls0,dir=${pki.clientDir},endpoint=client`,
    '--image-opts',
    '-c',
    'write -P 0x5e 0 1M',
    `driver=nbd,host=127.0.0.1,port=${d.nbdPort},export=alice-only,tls-creds=tls0`,
  ]);
  await fails('qemu-io', [
    '--object',
    `tls-creds-x509,id=tls0,dir=${pki.otherClientDir},endpoint=client`,
    '--image-opts',
    '-c',
    'write -P 0x66 0 1M',
    `driver=nbd,host=127.0.0.1,port=${d.nbdPort},export=alice-only,tls-creds=tls0`,
  ]);
  const readBack = await ok('qemu-io', [
    '--object',
    `tls-creds-x509,id=tls0,dir=${pki.clientDir},endpoint=client`,
    '--image-opts',
    '-c',
    'read -P 0x5e 0 1M',
    `driver=nbd,host=127.0.0.1,port=${d.nbdPort},export=alice-only,tls-creds=tls0`,
  ]);
  t.regex(readBack, /read 1048576\/1048576 bytes/);
  t.notRegex(readBack, /Pattern verification failed/);
  const st = await d.api('GET', '/v1/volumes/alice-only/status');
  t.true(st.body.lastSeq >= 1, "alice's write was journaled");
});

test('addon: SO_PEERCRED gives the peer process of a Unix socket; a non-socket fd is an error', async (t) => {
  const { peerCredentials } = await import('../src/native');
  const net = await import('node:net');
  const dir = tempDir('rw-peer-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sockPath = path.join(dir, 's');
  const got = new Promise<{ pid: number; uid: number; gid: number }>((resolve, reject) => {
    const srv = net.createServer((s) => {
      try {
        resolve(peerCredentials((s as any)._handle.fd));
      } catch (e) {
        reject(e);
      }
      s.destroy();
      srv.close();
    });
    srv.listen(sockPath, () => net.connect(sockPath).on('error', () => undefined));
  });
  const c = await got;
  t.deepEqual(c, { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  const fd = fs.openSync(path.join(dir, 'f'), 'w');
  t.teardown(() => fs.closeSync(fd));
  t.throws(() => peerCredentials(fd), { code: 'ENOTSOCK' } as any);
});

test.serial('daemon: snapshots and clones answer to their source volume’s list unless given their own', async (t) => {
  need('nbdinfo', 'qemu-io');
  const d: TestDaemon = await startDaemon({ args: ['--no-default-volume'] });
  t.teardown(() => d.cleanup());
  const uid = process.getuid!();
  // Only Unix-socket clients of this uid may use the volume.
  await createVolume(d, 'src', '4M', '--protected', '--allow', `uid:${uid}`);
  await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 64k', d.nbdUnixUri('src')]);
  const cli = async (args: string[]) => {
    const r = await d.cli(args);
    if (r.code !== 0) throw new Error(`rewind ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await cli(['snapshot', 'src', '--at', 'latest', '--name', 'inherit']);
  await cli(['clone', 'src', '--at', 'latest', '--name', 'own', '--allow', 'addr:127.0.0.1']);
  await cli(['clone', 'own', '--name', 'child']);
  // Inherited: TCP clients are refused like on the source; the owner over the Unix socket reads it.
  await fails('nbdinfo', [d.nbdUri('inherit')]);
  await ok('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x42 0 64k', d.nbdUnixUri('inherit')]);
  // Its own list: TCP from 127.0.0.1 allowed, the Unix socket (no address) refused; a clone of it inherits that.
  await ok('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x42 0 64k', d.nbdUri('own')]);
  await fails('nbdinfo', [d.nbdUnixUri('own')]);
  await ok('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x42 0 64k', d.nbdUri('child')]);
  t.deepEqual(await listNames(d.nbdUri('')), ['child', 'own']);
  t.deepEqual((await d.api('GET', '/v1/views/own')).body.allow, ['addr:127.0.0.1']);
  t.is((await d.api('GET', '/v1/views/inherit')).body.allow, null);
});
