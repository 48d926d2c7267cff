/**
 * Makes the data-directory fixture of test/format-versions.test.ts: an
 * older release's `rewind serve` (another checkout, built) writes a data
 * directory with a protected volume, its history, a marker, a snapshot, a
 * clone with writes of its own, a retention policy, a plain volume and
 * journaled writes not yet applied; the expected SHA-256 of every export
 * (read through that older daemon) go in expected.json beside it; the lot
 * is packed as a sparse tar.gz.
 *
 *   git worktree add /tmp/old 161dee2 && (cd /tmp/old && npm install)
 *   node dist/tools/make-format-fixture.js --rewind /tmp/old/bin/rewind --out test/fixtures/format-v1-161dee2.tar.gz
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { startRewind } from './lib/rewind';

const MiB = 1 << 20;

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (!v) throw new Error(`usage: make-format-fixture --rewind OLD/bin/rewind --out FILE.tar.gz (missing ${name})`);
  return v;
}

/**
 * Deterministic bytes that differ per seed and per 4 KiB block but
 * compress well (the fixture is committed): "S<seed>@<block>" repeated.
 */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 16) b.write(`S${seed}@${(i >> 12).toString(16)}`.padEnd(16, '.'), i, Math.min(16, n - i), 'latin1');
  return b;
}

async function main(): Promise<void> {
  const bin = path.resolve(arg('--rewind'));
  const out = path.resolve(arg('--out'));
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'rw-fixture-'));
  const dataDir = path.join(work, 'data');
  fs.mkdirSync(dataDir, { mode: 0o700 });
  const cli = (...args: string[]): string =>
    execFileSync(process.execPath, [bin, '--data-dir', dataDir, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const srv = await startRewind(dataDir, { bin });
  const sha = async (name: string, size: number): Promise<string> => {
    const c = await NbdClient.connect({ port: srv.port, exportName: name });
    const h = createHash('sha256');
    for (let off = 0; off < size; off += MiB) h.update(await c.read(off, Math.min(MiB, size - off)));
    c.destroy();
    return h.digest('hex');
  };
  try {
    cli('volume', 'create', 'pv', '--size', '4M', '--protected');
    cli('volume', 'create', 'plain', '--size', '1M');
    const pv = await NbdClient.connect({ port: srv.port, exportName: 'pv' });
    await pv.write(0, bytes(MiB, 1));
    await pv.write(2 * MiB + 4096, bytes(64 * 1024, 2));
    await pv.flush();
    cli('seal', 'pv');
    cli('mark', 'pv', 'm1');
    await pv.write(512 * 1024, bytes(MiB, 3));
    await pv.zero(3 * MiB, 256 * 1024);
    await pv.flush();
    cli('seal', 'pv');
    cli('snapshot', 'pv', '--at', 'm1', '--name', 's1');
    cli('clone', 'pv', '--at', 'm1', '--name', 'c1');
    const c1 = await NbdClient.connect({ port: srv.port, exportName: 'c1' });
    await c1.write(8192, bytes(8192, 4));
    await c1.flush();
    c1.destroy();
    cli('retention', 'pv', '--policy', 'all:365d');
    const plain = await NbdClient.connect({ port: srv.port, exportName: 'plain' });
    await plain.write(4096, bytes(4096, 5));
    await plain.flush();
    plain.destroy();
    // Journaled but not applied: the next start hands this container to the manager.
    await pv.write(MiB + 12288, bytes(4096, 6));
    await pv.flush();
    pv.destroy();
    const expected = {
      written: new Date().toISOString(),
      by: execFileSync('git', ['-C', path.dirname(path.dirname(bin)), 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim(),
      exports: {
        pv: { size: 4 * MiB, sha256: await sha('pv', 4 * MiB) },
        plain: { size: MiB, sha256: await sha('plain', MiB) },
        s1: { size: 4 * MiB, sha256: await sha('s1', 4 * MiB) },
        c1: { size: 4 * MiB, sha256: await sha('c1', 4 * MiB) },
      },
      marker: 'm1',
    };
    await srv.stop();
    for (const f of ['rewind.log', 'control.token']) fs.rmSync(path.join(dataDir, f), { force: true });
    fs.writeFileSync(path.join(work, 'expected.json'), JSON.stringify(expected, null, 2) + '\n');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    execFileSync('tar', ['--sparse', '-czf', out, '-C', work, 'data', 'expected.json']);
    process.stdout.write(`${out}: ${fs.statSync(out).size} bytes\n${JSON.stringify(expected, null, 2)}\n`);
  } finally {
    await srv.stop().catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
