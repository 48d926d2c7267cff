/**
 * History-management benchmark (issue "Markers ... diff, bisect"):
 *
 *   node dist/tools/bench-history.js [--markers 2000] [--size 4G]
 *
 *   markers  latency of `POST /v1/markers` (p50/p90/p99 ms) while a fio
 *            random-write load runs on the volume, and the bytes the data
 *            directory grew per marker;
 *   diff     time of a diff (index only) against the size of the changed
 *            set: 1%, 5% and 25% of a volume's 4 KiB blocks rewritten
 *            between the two points, each as JSON, and as a diff file
 *            (which reads the changed data).
 */
import { Command } from 'commander';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlClient } from '../src/control/client';
import { runCommand, requireExecutables, startRewind } from './lib';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

function du(p: string): number {
  if (!fs.existsSync(p)) return 0;
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.blocks * 512;
  return fs.readdirSync(p).reduce((a, n) => a + du(path.join(p, n)), 0);
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--markers <n>', 'markers to place', '2000')
    .option('--size <size>', 'volume size for the diff benchmark', '4G')
    .option('--dir <dir>', 'parent of the temporary data directory', '/var/tmp')
    .parse()
    .opts<{ markers: string; size: string; dir: string }>();
  requireExecutables(['fio']);
  const tmp = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-history-'));
  const dataDir = path.join(tmp, 'data');
  const server = await startRewind(dataDir);
  const api = new ControlClient({ kind: 'unix', path: path.join(dataDir, 'control.sock'), display: 'bench' }, { timeoutMs: 600_000 });
  const uri = (n: string) => `nbd://127.0.0.1:${server.port}/${n}`;
  try {
    // ---- markers under load
    console.log('\n== marker creation ==');
    await api.createVolume({ name: 'mk', size: '1G', protected: true });
    const load = spawn(
      'fio',
      [
        '--name=load',
        '--ioengine=nbd',
        `--uri=${uri('mk')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=1G',
        '--time_based',
        '--runtime=600',
      ],
      { stdio: 'ignore' },
    );
    try {
      await new Promise((r) => setTimeout(r, 2000));
      const before = du(path.join(dataDir, 'timetravel'));
      const lat: number[] = [];
      for (let i = 0; i < Number(o.markers); i++) {
        const t0 = performance.now();
        await api.request('POST', '/v1/markers/mk', { name: `m${i}` });
        lat.push(performance.now() - t0);
      }
      const grown = du(path.join(dataDir, 'timetravel')) - before;
      console.log(
        `${lat.length} markers under 4k random-write load: p50 ${pct(lat, 50).toFixed(2)} ms, p90 ${pct(lat, 90).toFixed(2)} ms, p99 ${pct(lat, 99).toFixed(2)} ms; ` +
          `${(grown / lat.length).toFixed(0)} bytes of storage per marker`,
      );
    } finally {
      load.kill('SIGKILL');
    }

    // ---- diff time against the changed set
    console.log(`\n== diff time against the changed set (${o.size} volume) ==`);
    await api.createVolume({ name: 'df', size: o.size, protected: true });
    const r = await runCommand(
      'fio',
      ['--name=fill', '--ioengine=nbd', `--uri=${uri('df')}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${o.size}`],
      { timeoutMs: 1_800_000 },
    );
    if (r.code !== 0) throw new Error(`fio fill: ${r.stderr}`);
    const bytes = Number((await api.getVolume('df')).size);
    for (const p of [1, 5, 25]) {
      await api.request('POST', '/v1/volumes/df/seal');
      const a = (await api.request<{ seq: number }>('POST', '/v1/volumes/df/resolve', { at: 'latest' })).seq;
      const io = Math.floor((bytes * p) / 100 / 4096) * 4096;
      const w = await runCommand(
        'fio',
        [
          '--name=chg',
          '--ioengine=nbd',
          `--uri=${uri('df')}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=32',
          `--size=${o.size}`,
          `--io_size=${io}`,
          `--randseed=${p}`,
        ],
        { timeoutMs: 1_800_000 },
      );
      if (w.code !== 0) throw new Error(`fio: ${w.stderr}`);
      await api.request('POST', '/v1/volumes/df/seal');
      const b = (await api.request<{ seq: number }>('POST', '/v1/volumes/df/resolve', { at: 'latest' })).seq;
      let t0 = performance.now();
      const d = await api.request<{ extents: unknown[]; changedBytes: number }>('POST', '/v1/volumes/df/diff', {
        from: `@seq:${a}`,
        to: `@seq:${b}`,
      });
      const jsonMs = performance.now() - t0;
      const file = path.join(tmp, `d${p}.rwdiff`);
      t0 = performance.now();
      await api.request('POST', '/v1/volumes/df/diff', { from: `@seq:${a}`, to: `@seq:${b}`, out: file });
      const fileMs = performance.now() - t0;
      console.log(
        `${String(p).padStart(2)}% of blocks rewritten (${(io / 2 ** 20).toFixed(0)} MiB, ${b - a} writes): ${d.extents.length} extents, ${(d.changedBytes / 2 ** 20).toFixed(0)} MiB; ` +
          `diff from the index ${jsonMs.toFixed(0)} ms; diff file ${fileMs.toFixed(0)} ms (${(fs.statSync(file).size / 2 ** 20).toFixed(0)} MiB)`,
      );
      fs.rmSync(file);
    }
  } finally {
    await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error((err as Error).stack ?? String(err));
  process.exit(1);
});
