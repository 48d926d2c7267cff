/**
 * Long NBD protocol fuzz run, for humans (CI runs a minute of the same
 * harness in test/fuzz-nbd.test.ts):
 *
 *   node dist/tools/fuzz-nbd.js [--minutes 60] [--seed N] [--coverage] [--targets plain,tls-require,tls-on,stream]
 *
 * Needs openssl for the TLS targets' certificates. Prints progress every
 * few thousand executions, then the execution count, memory, and with
 * --coverage the line coverage of the protocol library's modules. On a
 * failure fast-check prints the shrunk input and the seed and path to
 * replay it (--seed); add such inputs to REGRESSIONS in test/fuzz-nbd.test.ts.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makePki } from '../test/helpers/tls-certs';
import { Coverage } from './lib/coverage';
import { fuzzNbd, handmadeSessions, recordClientSessions, startTarget, type Target, type TargetKind } from './lib/fuzz-nbd';

async function main(): Promise<number> {
  const o = new Command('fuzz-nbd')
    .option('--minutes <m>', 'how long to run', '60')
    .option('--seed <n>', 'fast-check seed (to replay a failure)')
    .option('--coverage', 'report line coverage of src/nbd')
    .option('--targets <list>', 'comma-separated targets', 'plain,tls-require,tls-on,stream')
    .parse(process.argv)
    .opts<{ minutes: string; seed?: string; coverage?: boolean; targets: string }>();
  const cov = o.coverage ? new Coverage() : null;
  await cov?.start();
  const pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rw-fuzz-pki-'));
  const targets: Target[] = [];
  try {
    const kinds = o.targets.split(',').map((s) => s.trim()) as TargetKind[];
    let credentials;
    if (kinds.some((k) => k.startsWith('tls'))) {
      const pki = makePki(pkiDir);
      credentials = {
        cert: fs.readFileSync(pki.files.serverCert),
        key: fs.readFileSync(pki.files.serverKey),
        ca: fs.readFileSync(pki.files.caCert),
      };
    }
    for (const k of kinds) targets.push(await startTarget(k, credentials));
    const corpus = [...handmadeSessions(), ...(await recordClientSessions())];
    const t0 = Date.now();
    let lastReport = 0;
    const stats = await fuzzNbd({
      targets,
      corpus,
      timeLimitMs: Number(o.minutes) * 60_000,
      ...(o.seed !== undefined ? { seed: Number(o.seed) } : {}),
      onProgress: (s) => {
        if (Date.now() - lastReport < 10_000) return;
        lastReport = Date.now();
        const secs = (Date.now() - t0) / 1000;
        console.log(
          `${secs.toFixed(0)} s: ${s.executions} executions (${(s.executions / secs).toFixed(0)}/s), peak RSS ${s.rssPeakMiB.toFixed(0)} MiB`,
        );
      },
    });
    console.log(JSON.stringify({ ...stats, seconds: Math.round((Date.now() - t0) / 1000) }, null, 2));
    if (cov) {
      for (const f of await cov.take([
        '/src/nbd/connection.js',
        '/src/nbd/server.js',
        '/src/nbd/tls.js',
        '/src/nbd/inbuf.js',
        '/src/nbd/receiver.js',
      ])) {
        console.log(`coverage ${path.relative(process.cwd(), f.file)}: ${f.covered}/${f.lines} lines (${f.percent.toFixed(1)}%)`);
      }
    }
    return 0;
  } finally {
    await cov?.stop();
    for (const t of targets) await t.close();
    fs.rmSync(pkiDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);
