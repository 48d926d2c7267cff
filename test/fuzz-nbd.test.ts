/**
 * CI-length protocol fuzz run (issue 8): about a minute of mutated and
 * random byte streams through real sockets into plain, TLS-required,
 * TLS-optional and stream-mode NbdServers (tools/lib/fuzz-nbd.ts has the
 * harness and its invariants). The long run for humans is
 * `node dist/tools/fuzz-nbd.js --minutes 60` (README, "Security and limits").
 *
 * Inputs that once broke something, or that reach corners on purpose, are
 * replayed first on every target as regressions.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as P from '../src/nbd/protocol';
import { checkGoodClient, execute, fuzzNbd, handmadeSessions, recordClientSessions, startTarget, type Target } from '../tools/lib/fuzz-nbd';
import { tempDir } from './helpers/daemon';
import { need } from './helpers/hardening';
import { makePki } from './helpers/tls-certs';

const FUZZ_MS = Number(process.env.REWIND_FUZZ_MS ?? 60_000);

function hdr(opt: number, len: number): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(P.IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(len >>> 0, 12);
  return h;
}
const FLAGS = Buffer.from([0, 0, 0, 3]);

/** Fixed inputs: protocol corners and anything the fuzzer once found. */
const REGRESSIONS: Array<[string, Buffer]> = [
  ['STARTTLS with plaintext smuggled behind it', Buffer.concat([FLAGS, hdr(P.OPT_STARTTLS, 0), Buffer.from('GET / HTTP/1.0\r\n\r\n')])],
  ['option length 0xffffffff', Buffer.concat([FLAGS, hdr(P.OPT_GO, 0xffffffff), Buffer.alloc(64)])],
  ['EXPORT_NAME of 60 KiB', Buffer.concat([FLAGS, hdr(P.OPT_EXPORT_NAME, 60 * 1024), Buffer.alloc(60 * 1024, 0x61)])],
  ['GO whose name length overruns', Buffer.concat([FLAGS, hdr(P.OPT_GO, 6), Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0])])],
  ['GO with 65535 info requests claimed', Buffer.concat([FLAGS, hdr(P.OPT_GO, 8), Buffer.from([0, 0, 0, 0, 0xff, 0xff, 0, 1])])],
  [
    'meta context with 2^32-1 queries claimed',
    Buffer.concat([FLAGS, hdr(P.OPT_LIST_META_CONTEXT, 8), Buffer.from([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])]),
  ],
  ['denied export', Buffer.concat([FLAGS, hdr(P.OPT_GO, 12), Buffer.from([0, 0, 0, 6]), Buffer.from('secret'), Buffer.from([0, 0])])],
  [
    'WRITE of 64 MiB + 1 after GO',
    Buffer.concat([FLAGS, hdr(P.OPT_GO, 6), Buffer.from([0, 0, 0, 0, 0, 0]), P.encodeRequest(P.CMD_WRITE, 0, 1n, 0, 64 * 1024 * 1024 + 1)]),
  ],
  [
    'WRITE of 33 MiB, payload cut short',
    Buffer.concat([
      FLAGS,
      hdr(P.OPT_GO, 6),
      Buffer.from([0, 0, 0, 0, 0, 0]),
      P.encodeRequest(P.CMD_WRITE, 0, 1n, 0, 33 * 1024 * 1024),
      Buffer.alloc(1000),
    ]),
  ],
  [
    'requests at offset 2^63 and length 2^32-1',
    Buffer.concat([
      FLAGS,
      hdr(P.OPT_GO, 6),
      Buffer.from([0, 0, 0, 0, 0, 0]),
      P.encodeRequest(P.CMD_READ, 0, 1n, 2n ** 63n, 0xffffffff),
      P.encodeRequest(P.CMD_BLOCK_STATUS, 0, 2n, 0, 0xffffffff),
      P.encodeRequest(P.CMD_WRITE_ZEROES, 0, 3n, 0, 0xffffffff),
      P.encodeRequest(P.CMD_TRIM, 0, 4n, 2n ** 62n, 1),
      P.encodeRequest(99, 0xffff, 5n, 0, 0),
    ]),
  ],
];

let targets: Target[] = [];
let pkiDir = '';

test.before(async () => {
  need('openssl');
  pkiDir = tempDir('rw-fuzzpki-');
  const pki = makePki(pkiDir);
  const credentials = {
    cert: fs.readFileSync(pki.files.serverCert),
    key: fs.readFileSync(pki.files.serverKey),
    ca: fs.readFileSync(pki.files.caCert),
  };
  targets = [
    await startTarget('plain'),
    await startTarget('tls-require', credentials),
    await startTarget('tls-on', credentials),
    await startTarget('stream'),
  ];
});

test.after.always(async () => {
  for (const t of targets) await t.close();
  if (pkiDir) fs.rmSync(pkiDir, { recursive: true, force: true });
});

test.serial('regressions and corpus sessions replay cleanly on every target', async (t) => {
  const corpus = [...handmadeSessions(), ...(await recordClientSessions())];
  t.true(corpus.length >= 9, `corpus of ${corpus.length} sessions`);
  for (const target of targets) {
    for (const [name, bytes] of [...REGRESSIONS, ...corpus.map((c, i) => [`corpus ${i}`, c] as [string, Buffer])]) {
      for (const chunks of [[], [1], [7, 3, 4096]]) {
        await execute(target, bytes, chunks);
        const end = Date.now() + 5000;
        while ((target.server.connectionCount() > 0 || target.openExports() > 0) && Date.now() < end)
          await new Promise((r) => setTimeout(r, 5));
        t.is(target.server.connectionCount(), 0, `${target.kind}: ${name}`);
        t.is(target.openExports(), 0, `${target.kind}: ${name}: export closed`);
      }
    }
    await checkGoodClient(target);
  }
});

test.serial(
  `fuzz run (${Math.round(FUZZ_MS / 1000)} s): no crash, no hang, no leak, bounded memory, good clients still served`,
  async (t) => {
    const corpus = [...handmadeSessions(), ...(await recordClientSessions())];
    const stats = await fuzzNbd({ targets, corpus, timeLimitMs: FUZZ_MS, maxHeapGrowthMiB: 64 });
    t.log(
      `executions ${stats.executions} (${JSON.stringify(stats.byTarget)}), input ${Math.round(stats.inputBytes / 1048576)} MiB, ` +
        `heap ${stats.heapBeforeMiB.toFixed(1)} -> ${stats.heapAfterMiB.toFixed(1)} MiB, peak RSS ${stats.rssPeakMiB.toFixed(0)} MiB`,
    );
    t.true(stats.executions > 1000, `only ${stats.executions} executions`);
    for (const k of ['plain', 'tls-require', 'tls-on', 'stream']) t.true((stats.byTarget[k] ?? 0) > 100, k);
    t.true(stats.rssPeakMiB < 1024);
  },
);
