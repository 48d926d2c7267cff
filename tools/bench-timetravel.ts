/**
 * Time-travel benchmark (issue "Time travel"):
 *
 *   node dist/tools/bench-timetravel.js [--only create,read,restore] [--txns 1000] [--runtime 15]
 *
 *   create   snapshot and clone creation time (p50/p90 ms over --reps) on a
 *            1 GiB and a 64 GiB sparse protected volume: flat in the size;
 *   read     fio 4k random reads (iodepth 32) on a clone at a point --txns
 *            transactions back, against the same fio run on the live volume,
 *            both on a fully written 1 GiB volume: the ratio clone/live;
 *   restore  production restore of a 4 GiB fully written volume after 1%
 *            and after 10% of its blocks changed since the point: the time
 *            must scale with the changed data, not the volume.
 *
 * Everything runs against a `rewind serve` on a fresh data directory, with
 * public tools (fio) and the control API.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { runCommand, requireExecutables, type ServerHandle, startRewind, REWIND_BIN as BIN } from './lib';
import { ControlClient } from '../src/control/client';
import { NbdClient } from '../src/nbd/client';

const GiB = 1024 ** 3;

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

interface Ctx {
  server: ServerHandle;
  dataDir: string;
  api: ControlClient;
  rewind(args: string[]): Promise<string>;
}

async function withDaemon<T>(dir: string, fn: (c: Ctx) => Promise<T>): Promise<T> {
  const tmp = fs.mkdtempSync(path.join(dir, 'rewind-bench-tt-'));
  const dataDir = path.join(tmp, 'data');
  const server = await startRewind(dataDir);
  const api = new ControlClient({ kind: 'unix', path: path.join(dataDir, 'control.sock'), display: 'bench' }, { timeoutMs: 600_000 });
  const rewind = async (args: string[]): Promise<string> => {
    const r = await runCommand(process.execPath, [BIN, '--data-dir', dataDir, ...args], { timeoutMs: 1_800_000 });
    if (r.code !== 0) throw new Error(`rewind ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  try {
    return await fn({ server, dataDir, api, rewind });
  } finally {
    await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

async function fio(args: string[]): Promise<any> {
  const r = await runCommand('fio', [...args, '--output-format=json'], { timeoutMs: 1_800_000 });
  if (r.code !== 0) throw new Error(`fio ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
}

async function fill(uri: string, size: string): Promise<void> {
  await fio(['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`]);
}

async function benchCreate(c: Ctx, reps: number): Promise<void> {
  console.log('\n== snapshot and clone creation ==');
  for (const [name, size] of [
    ['c1g', '1G'],
    ['c64g', '64G'],
  ] as const) {
    await c.api.createVolume({ name, size, protected: true });
    const nbd = await NbdClient.connect({ port: c.server.port, exportName: name });
    const bytes = size === '1G' ? GiB : 64 * GiB;
    for (let i = 0; i < 64; i++) await nbd.write(Math.floor((i / 64) * (bytes / 65536)) * 65536, crypto.randomBytes(65536));
    await nbd.flush();
    nbd.destroy();
    await c.api.request('POST', `/v1/volumes/${name}/seal`);
    const snap: number[] = [];
    const clone: number[] = [];
    for (let i = 0; i < reps; i++) {
      const at = `@seq:${1 + (i % 64)}`;
      let t0 = performance.now();
      await c.api.request('POST', `/v1/volumes/${name}/snapshots`, { at, name: `${name}-s${i}` });
      snap.push(performance.now() - t0);
      t0 = performance.now();
      await c.api.request('POST', `/v1/volumes/${name}/clones`, { at, name: `${name}-c${i}` });
      clone.push(performance.now() - t0);
    }
    console.log(
      `${size.padStart(4)} volume: snapshot p50 ${pct(snap, 50).toFixed(1)} ms, p90 ${pct(snap, 90).toFixed(1)} ms; ` +
        `clone p50 ${pct(clone, 50).toFixed(1)} ms, p90 ${pct(clone, 90).toFixed(1)} ms (${reps} each)`,
    );
  }
}

async function randRead(uri: string, runtime: number): Promise<number> {
  const j = await fio([
    '--name=rr',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randread',
    '--bs=4k',
    '--iodepth=32',
    '--size=1G',
    '--time_based',
    `--runtime=${runtime}`,
  ]);
  return j.jobs[0].read.iops as number;
}

async function benchRead(c: Ctx, txns: number, runtime: number): Promise<void> {
  console.log(`\n== 4k random reads on a clone ${txns} transactions back ==`);
  await c.api.createVolume({ name: 'rd', size: '1G', protected: true });
  const uri = (n: string) => `nbd://127.0.0.1:${c.server.port}/${n}`;
  await fill(uri('rd'), '1G');
  await c.api.request('POST', '/v1/volumes/rd/seal');
  const point = (await c.api.request<{ seq: number }>('POST', '/v1/volumes/rd/resolve', { at: 'latest' })).seq;
  const nbd = await NbdClient.connect({ port: c.server.port, exportName: 'rd' });
  const t0 = Date.now();
  for (let i = 0; i < txns; i++) {
    for (let j = 0; j < 16; j++) await nbd.write(crypto.randomInt(0, GiB / 4096) * 4096, crypto.randomBytes(4096));
    await c.api.request('POST', '/v1/volumes/rd/seal');
  }
  nbd.destroy();
  console.log(`made ${txns} transactions of 16 random 4k writes in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await c.api.request('POST', '/v1/volumes/rd/clones', { at: `@seq:${point}`, name: 'rdc' });
  const live = await randRead(uri('rd'), runtime);
  const clone = await randRead(uri('rdc'), runtime);
  console.log(
    `live volume ${live.toFixed(0)} IOPS; clone ${clone.toFixed(0)} IOPS; clone/live ${(clone / live).toFixed(2)}x (target >= 0.5x)`,
  );
}

async function benchRestore(c: Ctx, volSize: string): Promise<void> {
  console.log(`\n== production restore of a ${volSize} volume ==`);
  const bytes = volSize.endsWith('G') ? Number(volSize.slice(0, -1)) * GiB : Number(volSize);
  await c.api.createVolume({ name: 'rs', size: volSize, protected: true });
  const uri = `nbd://127.0.0.1:${c.server.port}/rs`;
  await fill(uri, volSize);
  const results: Array<{ pct: number; ms: number; bytes: number }> = [];
  for (const p of [1, 10]) {
    await c.api.request('POST', '/v1/volumes/rs/seal');
    const point = (await c.api.request<{ seq: number }>('POST', '/v1/volumes/rs/resolve', { at: 'latest' })).seq;
    const io = Math.floor((bytes * p) / 100 / 4096) * 4096;
    await fio([
      '--name=chg',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=32',
      `--size=${volSize}`,
      `--io_size=${io}`,
      `--randseed=${p}`,
    ]);
    // Let the manager apply the changes first: the restore's own cost is what is measured.
    await c.api.request('POST', '/v1/volumes/rs/seal');
    const t0 = Date.now();
    const r = JSON.parse(await c.rewind(['restore', 'rs', '--to', `@seq:${point}`, '--json']));
    const ms = Date.now() - t0;
    results.push({ pct: p, ms, bytes: r.bytesWritten });
    console.log(
      `${String(p).padStart(2)}% changed (${(io / 2 ** 20).toFixed(0)} MiB): restore ${ms} ms wall (${r.durationMs} ms in the daemon: ` +
        `catch-up ${r.phases.catchUpMs}, rewrite ${r.phases.rewriteMs}, seal and apply ${r.phases.commitMs}), rewrote ${(r.bytesWritten / 2 ** 20).toFixed(0)} MiB`,
    );
  }
  console.log(
    `time(10%)/time(1%) = ${(results[1]!.ms / results[0]!.ms).toFixed(1)}x for ${(results[1]!.bytes / Math.max(1, results[0]!.bytes)).toFixed(1)}x the data`,
  );
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--only <list>', 'create,read,restore', 'create,read,restore')
    .option('--reps <n>', 'creations per size', '20')
    .option('--txns <n>', 'transactions between the clone point and now', '1000')
    .option('--runtime <s>', 'fio seconds per read run', '15')
    .option('--restore-size <size>', 'volume size for the restore benchmark', '4G')
    .option('--dir <dir>', 'parent of the temporary data directories', '/var/tmp')
    .parse()
    .opts<{ only: string; reps: string; txns: string; runtime: string; restoreSize: string; dir: string }>();
  requireExecutables(['fio']);
  const only = new Set(o.only.split(','));
  if (only.has('create')) await withDaemon(o.dir, (c) => benchCreate(c, Number(o.reps)));
  if (only.has('read')) await withDaemon(o.dir, (c) => benchRead(c, Number(o.txns), Number(o.runtime)));
  if (only.has('restore')) await withDaemon(o.dir, (c) => benchRestore(c, o.restoreSize));
}

main().catch((err: unknown) => {
  console.error((err as Error).stack ?? String(err));
  process.exit(1);
});
