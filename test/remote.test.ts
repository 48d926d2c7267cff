/**
 * Acceptance tests of the two-role mode (issue 6): an intercept and a
 * remote backup manager, each `rewind serve` in its own network namespace,
 * joined by a veth pair. Load reaches the intercept through its NBD Unix
 * socket; the link crosses the veth. Needs root, ip, fio, qemu-io,
 * python3-libnbd and openssl: a missing tool fails the test.
 *
 * REWIND_REMOTE_FIO_SECONDS shortens the 60 s fio run (development only).
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { haveCommand, run, sleep } from './helpers/daemon';
import { checkLedger, requireLedgerTools, startLedgerWriter } from './helpers/ledger';
import { LINK_PORT, RoleDaemon, caughtUp, makeNetns, startPair, waitFor, writeSecret, type VolStatus } from './helpers/remote';
import { makePki, newServerCert } from './helpers/tls-certs';

const FIO_SECONDS = Number(process.env.REWIND_REMOTE_FIO_SECONDS ?? 60);

function need(cmd: string): void {
  if (!haveCommand(cmd)) throw new Error(`${cmd} missing (run tools/install-system-deps.sh)`);
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

test.serial(
  'two namespaces: fio verify load through the intercept, catch-up, rewind verify on the manager: replica = production',
  async (t) => {
    need('fio');
    const p = await startPair(t, 'f');
    await p.i.cliOk(['volume', 'create', 'pv', '--size', '256M', '--protected']);
    const r = await run(
      'fio',
      [
        '--name=rw',
        '--ioengine=nbd',
        `--uri=${p.i.nbdUnixUri('pv')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=32',
        '--size=256M',
        '--time_based',
        `--runtime=${FIO_SECONDS}`,
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--do_verify=1',
        '--output-format=json',
      ],
      { timeoutMs: 300_000 },
    );
    t.is(r.code, 0, r.stderr);
    const job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
    t.is(job.error, 0);
    const si = await caughtUp(p, 'pv');
    t.true(si.lastSeq > 1000, `fio wrote (${si.lastSeq} writes)`);
    const out = await p.m.cliOk(['verify', 'pv']);
    t.regex(out, /^equal/m, out);
    t.regex(out, /bad: 0/);
    const report = await p.m.json<{ productionSha256: string; replicaSha256: string; ok: boolean }>(['verify', 'pv']);
    t.true(report.ok);
    t.is(report.productionSha256, report.replicaSha256);
    // Both sides report the link: bytes sent = bytes received, nothing queued, no lag.
    const sm = await p.m.json<VolStatus>(['status', 'pv']);
    const si2 = await p.i.json<VolStatus>(['status', 'pv']);
    t.is(sm.link.state, 'up');
    t.is(si2.link.state, 'up');
    t.is(sm.lag.writes, 0);
    t.true((si2.link.bytesSent ?? 0) > 0);
    t.is(sm.link.bytesReceived, si2.link.bytesSent, 'every byte sent was received once');
    // The intercept refuses history commands with a pointer to the manager.
    const pt = await p.i.cli(['point', 'pv', 'latest']);
    t.not(pt.code, 0);
    t.regex(pt.stderr, /served by the backup manager/);
  },
);

test.serial(
  'link outage: pool fills, degraded mode (no host error or pause), link back, super transaction, normal again; points before exact, inside refused',
  async (t) => {
    const p = await startPair(t, 'o', { i: ['--link-pool', '12M'] });
    const SIZE = 32 * 1024 * 1024;
    await p.i.cliOk(['volume', 'create', 'pv', '--size', '32M', '--protected']);
    const model = Buffer.alloc(SIZE);
    const snapshots = new Map<number, string>(); // seq -> sha256 of the model after that write
    const c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'pv' });
    t.teardown(() => c.disconnect().catch(() => undefined));
    let seq = 0;
    let maxLatency = 0;
    const write = async (off: number, len: number, tag: number) => {
      const data = Buffer.alloc(len);
      for (let k = 0; k < len; k += 4096) {
        data.writeUInt32LE((tag * 2654435761) >>> 0, k);
        data.writeUInt32LE(off + k, k + 4);
        data.fill(tag & 0xff, k + 8, Math.min(k + 4096, len));
      }
      const t0 = Date.now();
      await c.write(off, data);
      maxLatency = Math.max(maxLatency, Date.now() - t0);
      data.copy(model, off);
      seq++;
    };
    // Before the outage: 60 small writes, each a point.
    for (let k = 0; k < 60; k++) {
      await write(((k * 7919) % 500) * 65536, 8192, k + 1);
      if (k % 10 === 9) snapshots.set(seq, sha(model));
    }
    await c.flush();
    const before = await caughtUp(p, 'pv');
    t.is(before.lastSeq, seq, 'a single writer: seq k is the k-th write');
    const lastBefore = seq;
    snapshots.set(lastBefore, sha(model));

    // Cut the cable mid-load and keep writing: the 12 MiB pool fills, the intercept degrades.
    await p.net.linkDown();
    await waitFor(
      'the intercept to see the link down',
      async () => (await p.i.json<VolStatus>(['status', 'pv'])).link.state !== 'up',
      30_000,
    );
    maxLatency = 0;
    let degradedSeen: VolStatus | null = null;
    for (let k = 0; k < 48; k++) {
      await write((k % 32) * 1024 * 1024, 1024 * 1024, 1000 + k);
      if (k % 8 === 7 && !degradedSeen) {
        const s = await p.i.json<VolStatus>(['status', 'pv']);
        if (s.state === 'degraded') degradedSeen = s;
      }
    }
    await c.flush();
    const deg = degradedSeen ?? (await p.i.json<VolStatus>(['status', 'pv']));
    t.is(deg.state, 'degraded', 'the pool filled: degraded');
    t.truthy(deg.degraded?.since);
    t.regex(deg.degraded!.reason, /pool/);
    t.true(deg.dirtyRegions > 0);
    t.true(maxLatency < 2000, `writes went on without a pause while the link was down (max ${maxLatency} ms)`);
    // The pool holds sealed containers up to its limit; the full active one is sealed on top when the group degrades.
    t.true(
      (deg.link.poolBytes ?? 0) <= 2 * (deg.link.poolLimit ?? 0) + 2 * 1024 * 1024,
      `pool ${deg.link.poolBytes} of ${deg.link.poolLimit}`,
    );

    // Cable back: drain, super transaction, normal on its own.
    await p.net.linkUp();
    // Host writes during the resync are journaled normally.
    for (let k = 0; k < 10; k++) await write(((k * 104729) % 500) * 65536 + 4096, 4096, 5000 + k);
    const after = await caughtUp(p, 'pv', 180_000);
    t.is(after.state, 'normal');
    const final = sha(model);
    const v = await p.m.json<{ ok: boolean; equal: boolean }>(['verify', 'pv']);
    t.true(v.ok && v.equal, 'replica = production after the resync');

    // History: a super transaction, tagged in the manager's transaction records.
    const log = await p.m.json<
      Array<{ n: number; firstSeq: number; lastSeq: number; superTransaction?: { id: number; fromSeq: number; last: boolean } }>
    >(['log', 'pv']);
    const sup = log.filter((x) => x.superTransaction);
    t.true(sup.length >= 1, 'a super transaction was committed');
    t.true(
      sup.some((x) => x.superTransaction!.last),
      'its last container is tagged',
    );
    const fromSeq = sup[0]!.superTransaction!.fromSeq;
    t.true(fromSeq > lastBefore && fromSeq <= lastBefore + 48);

    // Every point before the outage clones byte-exact against the model.
    const exportDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rwexp-'));
    t.teardown(() => fs.rmSync(exportDir, { recursive: true, force: true }));
    for (const [s, want] of snapshots) {
      await p.m.cliOk(['clone', 'pv', '--at', `@seq:${s}`, '--name', `c${s}`]);
      const out = path.join(exportDir, `c${s}.raw`);
      const r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', p.m.nbdUnixUri(`c${s}`), out]);
      t.is(r.code, 0, r.stderr);
      t.is(sha(fs.readFileSync(out)), want, `clone at @seq:${s} equals the model`);
      fs.rmSync(out);
    }
    // A point inside the super transaction is refused, naming the nearest valid points.
    const inside = fromSeq + 3;
    const bad = await p.m.cli(['point', 'pv', `@seq:${inside}`]);
    t.not(bad.code, 0);
    t.regex(
      bad.stderr,
      new RegExp(`@seq:${inside} lies inside super transaction \\d+ .*nearest valid points are @seq:${fromSeq - 1} \\(.*\\) and @seq:\\d+`),
    );
    const snap = await p.m.cli(['snapshot', 'pv', '--at', `@seq:${inside}`]);
    t.not(snap.code, 0);
    t.regex(snap.stderr, /inside super transaction/);
    // Its end and "latest" are exact.
    await p.m.cliOk(['export', 'pv', '--at', 'latest', '--out', path.join(exportDir, 'latest.raw')]);
    t.is(sha(fs.readFileSync(path.join(exportDir, 'latest.raw'))), final);
  },
);

test.serial('an intercept killed mid-resync restarts the resync from its persistent state map; the replica converges', async (t) => {
  const p = await startPair(t, 'r', { i: ['--link-pool', '8M'] });
  const SIZE = 192 * 1024 * 1024;
  await p.i.cliOk(['volume', 'create', 'rv', '--size', '192M', '--protected']);
  const model = Buffer.alloc(SIZE);
  let c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'rv' });
  const write = async (off: number, len: number, tag: number) => {
    const data = Buffer.alloc(len, tag & 0xff);
    data.writeUInt32LE(tag, 0);
    await c.write(off, data);
    data.copy(model, off);
  };
  await write(0, 65536, 1);
  await c.flush();
  await caughtUp(p, 'rv');
  // Link down; 160 MiB of writes: the 8 MiB pool fills and the rest lives only in the state map.
  await p.net.linkDown();
  await waitFor(
    'the intercept to see the link down',
    async () => (await p.i.json<VolStatus>(['status', 'rv'])).link.state !== 'up',
    30_000,
  );
  for (let k = 0; k < 160; k++) await write(k * 1024 * 1024 + 65536, 1024 * 1024, 100 + k);
  await c.flush();
  t.is((await p.i.json<VolStatus>(['status', 'rv'])).state, 'degraded');
  await c.disconnect();
  // Link up; kill -9 the intercept while the super transaction is being read and sent.
  await p.net.linkUp();
  const mid = await waitFor(
    'the resync to be under way',
    async () => {
      const s = await p.i.json<VolStatus & { resync: { running?: boolean; regionsLeft?: number } | null }>(['status', 'rv']);
      return s.state === 'resync' && s.resync?.running && (s.resync.regionsLeft ?? 0) > 0 ? s : null;
    },
    120_000,
    50,
  );
  t.true(mid.dirtyRegions > 0, 'killed with regions still dirty');
  await p.i.kill('SIGKILL');
  await p.i.restart();
  // The restarted intercept picks the resync up again from the state map and finishes it.
  await caughtUp(p, 'rv', 240_000);
  c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: 'rv' });
  t.teardown(() => c.disconnect().catch(() => undefined));
  const back = Buffer.alloc(SIZE);
  for (let off = 0; off < SIZE; off += 4 * 1024 * 1024) (await c.read(off, 4 * 1024 * 1024)).copy(back, off);
  t.is(sha(back), sha(model), 'production holds every acknowledged write');
  const v = await p.m.json<{ ok: boolean; equal: boolean }>(['verify', 'rv']);
  t.true(v.ok && v.equal, 'the replica converged on production');
});

test.serial(
  'crash campaign: kill -9 the manager 10 times and the intercept 10 times under load; no flushed write lost; the replica converges',
  async (t) => {
    await requireLedgerTools();
    const p = await startPair(t, 'c', { i: ['--link-pool', '64M'] });
    await p.i.cliOk(['volume', 'create', 'pv', '--size', '64M', '--protected']);
    const BLOCKS = 4096; // 16 MiB
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let round = 1; round <= 20; round++) {
      const victim = round % 2 === 1 ? p.m : p.i;
      const w = startLedgerWriter(p.i.nbdUnixUri('pv'), round, { blocks: BLOCKS, flushEvery: 16 });
      await sleep(300 + Math.floor(rnd() * 1500));
      await victim.kill('SIGKILL');
      if (victim === p.i) {
        w.process.kill('SIGKILL');
        const flushed = w.lastFlushed;
        await p.i.startProcess();
        if (flushed >= 0) {
          const c = await checkLedger(p.i.nbdUnixUri('pv'), round, flushed);
          t.is(c.code, 0, `round ${round}: ${c.stdout}${c.stderr}`);
        }
      } else {
        await sleep(Math.floor(rnd() * 1000));
        await p.m.startProcess();
        await new Promise<void>((resolve) => (w.process.exitCode !== null ? resolve() : w.process.on('close', () => resolve())));
        const c = await checkLedger(p.i.nbdUnixUri('pv'), round, BLOCKS - 1);
        t.is(c.code, 0, `round ${round} (manager killed): ${c.stdout}${c.stderr}`);
      }
    }
    await caughtUp(p, 'pv', 240_000);
    const v = await p.m.json<{ ok: boolean; equal: boolean; containers: Array<{ ok: boolean }> }>(['verify', 'pv']);
    t.true(v.equal, 'the replica converged on production');
    t.true(v.ok, 'every stored container checks out');
    // Each intercept restart compared its dirty regions with the replica (REPLICA_HASHES) and journaled only what differed.
    const recoveries = p.i.logs
      .split('\n')
      .filter((l) => l.includes('resynced regions left dirty'))
      .map((l) => JSON.parse(l.slice(l.indexOf('{'))));
    t.true(recoveries.length > 0, 'the intercept recovered dirty regions');
    for (const r of recoveries) {
      t.true(r.withReplica, JSON.stringify(r));
      t.true(r.journaledBytes <= 1024 * 1024, `journaled ${r.journaledBytes} of ${r.dirtyBytes} dirty bytes`);
    }
    // No duplicate apply: transaction numbers are consecutive and seq ranges never overlap.
    const log = await p.m.json<Array<{ n: number; firstSeq: number; lastSeq: number; records: number }>>(['log', 'pv']);
    for (let k = 1; k < log.length; k++) {
      t.is(log[k]!.n, log[k - 1]!.n + 1);
      if (log[k]!.records > 0 && log[k - 1]!.records > 0) t.true(log[k]!.firstSeq > log[k - 1]!.lastSeq);
    }
  },
);

test.serial(
  'authentication and TLS: wrong secret, plaintext peer and wrong-certificate peer are refused; the right certificate works',
  async (t) => {
    need('openssl');
    const net = await makeNetns('t');
    t.teardown(() => net.cleanup());
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'rwpki-'));
    t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
    const pki = makePki(root);
    const secret = writeSecret(root);
    const wrong = writeSecret(root, 'a different secret of enough length');
    // Copies the daemons use, so the certificates can be rotated under them.
    const managerTls = path.join(root, 'manager-tls');
    const interceptTls = path.join(root, 'intercept-tls');
    fs.cpSync(pki.serverDir, managerTls, { recursive: true });
    fs.cpSync(pki.clientDir, interceptTls, { recursive: true });
    const m = await RoleDaemon.start({
      ns: net.managerNs,
      args: [
        '--role',
        'manager',
        '--listen',
        `${net.managerAddr}:${LINK_PORT}`,
        '--link-secret-file',
        secret,
        '--link-tls',
        'require',
        '--link-tls-dir',
        managerTls,
        '--link-tls-verify-client',
      ],
    });
    t.teardown(() => m.cleanup());
    const base = ['--role', 'intercept', '--manager', `${net.managerAddr}:${LINK_PORT}`, '--listen', 'none', '--no-default-volume'];
    const refusedBy = async (args: string[], why: RegExp) => {
      const i = await RoleDaemon.start({ ns: net.interceptNs, args: [...base, ...args] });
      try {
        await i.cliOk(['volume', 'create', 'pv', '--size', '8M', '--protected']);
        await sleep(3000);
        const s = await i.json<VolStatus>(['status', 'pv']);
        t.not(s.link.state, 'up');
        await waitFor('the refusal in the manager log', async () => why.test(m.logs), 10_000);
        t.regex(m.logs, why);
      } finally {
        await i.cleanup();
      }
    };
    // Plaintext peer (right secret): the TLS handshake fails.
    await refusedBy(['--link-secret-file', secret], /link peer refused.*TLS|TLS.*link peer refused/);
    // A certificate from another CA.
    await refusedBy(
      ['--link-secret-file', secret, '--link-tls', 'on', '--link-tls-dir', pki.rogueClientDir, '--link-tls-servername', 'localhost'],
      /link peer refused/,
    );
    // The right certificate but the wrong secret.
    await refusedBy(
      ['--link-secret-file', wrong, '--link-tls', 'on', '--link-tls-dir', pki.clientDir, '--link-tls-servername', 'localhost'],
      /wrong shared secret/,
    );
    // The right certificate and secret: the link comes up and replicates.
    const i = await RoleDaemon.start({
      ns: net.interceptNs,
      args: [
        ...base,
        '--link-secret-file',
        secret,
        '--link-tls',
        'on',
        '--link-tls-dir',
        interceptTls,
        '--link-tls-servername',
        'localhost',
      ],
    });
    t.teardown(() => i.cleanup());
    await i.cliOk(['volume', 'create', 'pv', '--size', '8M', '--protected']);
    const q = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', i.nbdUnixUri('pv')]);
    t.is(q.code, 0, q.stderr);
    await waitFor('link up and applied', async () => {
      const s = await i.json<VolStatus>(['status', 'pv']);
      return s.link.state === 'up' && s.appliedSeq === s.lastSeq && s.lastSeq > 0;
    });
    const v = await m.json<{ ok: boolean }>(['verify', 'pv']);
    t.true(v.ok);
    // Garbage on the link port is refused and logged; the manager stays up.
    const g = await run('ip', [
      'netns',
      'exec',
      net.interceptNs,
      'bash',
      '-c',
      `exec 3<>/dev/tcp/${net.managerAddr}/${LINK_PORT}; head -c 4096 /dev/urandom >&3; sleep 0.5`,
    ]);
    void g;
    await waitFor('garbage refused', async () => (m.logs.match(/link peer refused/g) ?? []).length >= 4, 10_000);
    const h = await m.json<{ pid: number }>(['status']);
    t.is(h.pid, m.pid!);

    // Rotation without a restart: a new server certificate on the manager, the
    // intercept's client certificate replaced by another (bob's), both by rename.
    type Certs = { certificates: Array<{ what: string; certificate: { subject: string } | null; lastError: string | null }> };
    const subjectOf = async (d: RoleDaemon, what: string) =>
      (await d.json<Certs>(['status'])).certificates.find((c) => c.what === what)?.certificate?.subject ?? '';
    const rotated = newServerCert(pki, 'manager2');
    const swap = (to: string, from: string) => {
      fs.copyFileSync(from, `${to}.new`);
      fs.renameSync(`${to}.new`, to);
    };
    swap(path.join(managerTls, 'server-key.pem'), rotated.key);
    swap(path.join(managerTls, 'server-cert.pem'), rotated.cert);
    swap(path.join(interceptTls, 'client-key.pem'), path.join(pki.otherClientDir, 'client-key.pem'));
    swap(path.join(interceptTls, 'client-cert.pem'), path.join(pki.otherClientDir, 'client-cert.pem'));
    await waitFor('the manager to take its new certificate', async () => /OU=manager2/.test(await subjectOf(m, 'manager link TLS')));
    await waitFor('the intercept to take its new certificate', async () => /CN=bob/.test(await subjectOf(i, 'link client TLS')));
    // A new volume in the group makes the link reconnect, with the new certificates on both ends.
    const upsBefore = (m.logs.match(/intercept link up/g) ?? []).length;
    await i.cliOk(['volume', 'create', 'pv2', '--size', '8M', '--protected']);
    const q2 = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 0 1M', i.nbdUnixUri('pv2')]);
    t.is(q2.code, 0, q2.stderr);
    await waitFor('the link to come back and apply', async () => {
      const s = await i.json<VolStatus>(['status', 'pv2']);
      return s.link.state === 'up' && s.appliedSeq === s.lastSeq && s.lastSeq > 0;
    });
    t.true((m.logs.match(/intercept link up/g) ?? []).length > upsBefore, 'the link reconnected after the rotation');
    t.true((await m.json<{ ok: boolean }>(['verify', 'pv2'])).ok);
  },
);
