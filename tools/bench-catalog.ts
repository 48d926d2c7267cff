/**
 * File catalog benchmark (issue 15):
 *
 *   node dist/tools/bench-catalog.js [--files 100000] [--big-mib 100] [--points 1000] [--runtime 20] [--work DIR] [--only a,b]
 *
 * Needs root (the 1% change is made by the kernel through a loop mount),
 * fls and icat (sleuthkit), fio. Starts `rewind serve`, writes an ext4
 * image of --files small files (directories of 100) and one --big-mib file
 * into a protected volume over NBD, and measures:
 *
 *   full     a full catalog build of that point (priority: unthrottled),
 *            against `fls -r -m /` on `rewind export` of the point
 *   incr     the incremental build after 1% of the files were changed in
 *            place (appends by the kernel), against the full build
 *   restore  the big file through GET files/content, MB/s, against
 *            `icat` on the exported image (both to /dev/null)
 *   versions GET files/versions of a file that changed at each of --points
 *            cataloged points (a small second volume), p50 and p99
 *   ingest   protected fio random writes (4 KiB, iodepth 32) for --runtime
 *            s alone, then while background (throttled) full builds of the
 *            big volume run back to back
 *
 * Elapsed times are medians of --reps runs where a phase can repeat.
 * Figures, not a test: nothing is asserted.
 */
import { Command } from 'commander';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlClient } from '../src/control/client';
import { NbdClient } from '../src/nbd/client';
import { fioRandWriteMBs, requireExecutables, startRewind, withLoopMount, writeImageBlocks } from './lib';

const PATH = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`;
const MiB = 2 ** 20;
const BS = 4096;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;

function makeImage(work: string, files: number, bigMiB: number): string {
  const image = path.join(work, `ext4-${files}-${bigMiB}.img`);
  if (fs.existsSync(image)) return image;
  const src = path.join(work, 'src');
  fs.rmSync(src, { recursive: true, force: true });
  const blob = Buffer.alloc(3072);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 2654435761) >>> 24;
  for (let i = 0; i < files; i++) {
    const dir = path.join(src, `d${Math.floor(i / 10000)}`, `d${Math.floor(i / 100)}`);
    if (i % 100 === 0) fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, `file-${i}.dat`), blob.subarray(0, 1 + ((i * 37) % 3071)));
  }
  const big = fs.openSync(path.join(src, 'big.bin'), 'w');
  const chunk = Buffer.alloc(MiB);
  for (let i = 0; i < bigMiB; i++) {
    chunk.fill(i & 0xff);
    chunk.writeUInt32LE(i, 0);
    fs.writeSync(big, chunk);
  }
  fs.closeSync(big);
  const sizeMiB = Math.ceil((files * 8 * 1024) / MiB + bigMiB * 1.2 + 256);
  fs.writeFileSync(`${image}.tmp`, '');
  fs.truncateSync(`${image}.tmp`, sizeMiB * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', '-N', String(files + 20000), '-d', src, `${image}.tmp`], {
    env: { ...process.env, PATH },
    stdio: 'inherit',
  });
  fs.renameSync(`${image}.tmp`, image);
  fs.rmSync(src, { recursive: true, force: true });
  return image;
}

/** Writes the blocks of `next` that differ from `prev` (non-zero ones when prev is null). */
const TICK_MS = 10; // USER_HZ is 100 on Linux

/** User + system CPU of a process so far, from /proc. */
function daemonCpuMs(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  const after = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(after[11]) + Number(after[12])) * TICK_MS;
}

/** User + system CPU of this process's waited-for children so far. */
function childrenCpuMs(): number {
  const f = fs.readFileSync('/proc/self/stat', 'latin1');
  const after = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(after[13]) + Number(after[14])) * TICK_MS;
}

function timed(cmd: string, args: string[]): number {
  const out = fs.openSync('/dev/null', 'w');
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', out, 'inherit'], env: { ...process.env, PATH } });
  fs.closeSync(out);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}`);
  return performance.now() - t0;
}

interface Job {
  id: number;
  state: string;
  error: string | null;
  stats: {
    durationMs: number;
    bytesRead: number;
    blocksRead: number;
    changedMetadataBlocks: number;
    changedPaths: number;
    mode: string;
    phases?: Record<string, number>;
  } | null;
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--files <n>', 'small files in the image', '100000')
    .option('--big-mib <n>', 'size of the big file', '100')
    .option('--points <n>', 'cataloged points for the versions query', '1000')
    .option('--runtime <s>', 'seconds of fio per ingest phase', '20')
    .option('--reps <n>', 'repetitions of the repeatable phases', '3')
    .option('--work <dir>', 'where the image and data directory go', '/var/tmp/rewind-bench-catalog')
    .option('--only <phases>', 'full,incr,restore,versions,ingest')
    .option('--json', 'print the figures as JSON too')
    .parse()
    .opts<{ files: string; bigMib: string; points: string; runtime: string; reps: string; work: string; only?: string; json?: boolean }>();
  requireExecutables(['fls', 'icat', 'fio', 'mkfs.ext4', 'debugfs']);
  if (process.getuid?.() !== 0) throw new Error('bench-catalog needs root (loop mounts for the 1% change)');
  const only = new Set((o.only ?? 'full,incr,restore,versions,ingest').split(','));
  const reps = Number(o.reps);
  fs.mkdirSync(o.work, { recursive: true });
  const image = makeImage(o.work, Number(o.files), Number(o.bigMib));
  const size = fs.statSync(image).size;
  const dataDir = fs.mkdtempSync(path.join(o.work, 'data-'));
  const server = await startRewind(dataDir, { env: { ...process.env, REWIND_CATALOG_MARKERS: '0' } });
  const api = new ControlClient({ kind: 'unix', path: path.join(dataDir, 'control.sock'), display: 'control' }, { timeoutMs: 3_600_000 });
  const figures: Record<string, unknown> = {};
  const say = (k: string, v: unknown, text: string): void => {
    figures[k] = v;
    console.log(text);
  };
  const waitJob = async (id: number): Promise<Job> => {
    for (;;) {
      const j = await api.request<Job>('GET', `/v1/catalog/jobs/${id}`);
      if (j.state === 'done') return j;
      if (j.state === 'failed') throw new Error(`job ${id}: ${j.error}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const catalog = async (volume: string, body: Record<string, unknown>): Promise<{ job: Job; wallMs: number; seq: number }> => {
    const t0 = performance.now();
    const r = await api.request<{ job: Job | null; info: { seq: number } }>('POST', `/v1/volumes/${volume}/catalog`, body);
    if (!r.job) throw new Error(`@seq:${r.info.seq} was cataloged already`);
    const job = await waitJob(r.job.id);
    return { job, wallMs: performance.now() - t0, seq: r.info.seq };
  };
  try {
    await api.request('POST', '/v1/volumes', { name: 'b', size, protected: true });
    const t0 = performance.now();
    const blocks = await writeImageBlocks(server.port, 'b', image, null);
    console.log(
      `wrote ${blocks} blocks (${((blocks * BS) / MiB).toFixed(0)} MiB) of ${path.basename(image)} in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    const exported = path.join(o.work, 'export.raw');
    fs.rmSync(exported, { force: true });
    await api.request('POST', '/v1/volumes/b/export', { at: 'latest', out: exported });

    // full: the catalog build against fls -r -m / on the exported image (page cache warm for both: best of reps).
    let cpu0 = daemonCpuMs(server.pid);
    const first = await catalog('b', { at: 'latest', priority: true });
    const fullMs: number[] = [first.job.stats!.durationMs];
    const fullCpu: number[] = [daemonCpuMs(server.pid) - cpu0];
    for (let i = 1; i < reps; i++) {
      // Another point (a write that changes no file), built in full again.
      const c = await NbdClient.connect({ port: server.port, exportName: 'b' });
      await c.write(0, Buffer.alloc(512));
      await c.flush();
      c.destroy();
      cpu0 = daemonCpuMs(server.pid);
      fullMs.push((await catalog('b', { at: 'latest', priority: true, full: true })).job.stats!.durationMs);
      fullCpu.push(daemonCpuMs(server.pid) - cpu0);
    }
    const flsMs: number[] = [];
    timed('fls', ['-r', '-m', '/', exported]);
    const flsCpu: number[] = [];
    for (let i = 0; i < reps; i++) {
      const k0 = childrenCpuMs();
      flsMs.push(timed('fls', ['-r', '-m', '/', exported]));
      flsCpu.push(childrenCpuMs() - k0);
    }
    if (only.has('full'))
      say(
        'full',
        {
          catalogMs: median(fullMs),
          flsMs: median(flsMs),
          ratio: median(fullMs) / median(flsMs),
          cpuMs: median(fullCpu),
          flsCpuMs: median(flsCpu),
          bytesRead: first.job.stats!.bytesRead,
        },
        `full catalog of ${o.files} files (phases ${JSON.stringify(first.job.stats!.phases)}): ${median(fullMs).toFixed(0)} ms (runs ${fullMs.map((x) => x.toFixed(0)).join(', ')}); fls -r -m /: ${median(flsMs).toFixed(0)} ms; ratio ${(median(fullMs) / median(flsMs)).toFixed(2)}x (target <= 1.0x); ` +
          `CPU ${median(fullCpu).toFixed(0)} ms (daemon, the first build's point bookkeeping included), fls ${median(flsCpu).toFixed(0)} ms`,
      );

    // incr: 1% of the files appended to by the kernel, then the incremental build.
    if (only.has('incr')) {
      const prev = path.join(o.work, 'before.img');
      fs.copyFileSync(image, prev);
      const changed = path.join(o.work, 'changed.img');
      fs.copyFileSync(image, changed);
      const mnt = path.join(o.work, 'mnt');
      fs.mkdirSync(mnt, { recursive: true });
      const n = Math.round(Number(o.files) / 100);
      withLoopMount(changed, mnt, 'noatime', (m) => {
        for (let k = 0; k < n; k++) {
          const i = Math.floor((k * Number(o.files)) / n);
          fs.appendFileSync(path.join(m, `d${Math.floor(i / 10000)}`, `d${Math.floor(i / 100)}`, `file-${i}.dat`), `change ${k}\n`);
        }
      });
      const wrote = await writeImageBlocks(server.port, 'b', changed, prev);
      const inc = await catalog('b', { at: 'latest', priority: true });
      const s = inc.job.stats!;
      say(
        'incremental',
        {
          ms: s.durationMs,
          fullMs: median(fullMs),
          ratio: s.durationMs / median(fullMs),
          blocksRead: s.blocksRead,
          changedMetadataBlocks: s.changedMetadataBlocks,
          changedPaths: s.changedPaths,
        },
        `incremental after ${n} files changed (${wrote} blocks written): ${s.durationMs} ms, ${(s.durationMs / median(fullMs)).toFixed(3)}x the full build (target <= 0.1x); ` +
          `${s.blocksRead} blocks read for ${s.changedMetadataBlocks} changed metadata blocks, ${s.changedPaths} paths changed; phases ${JSON.stringify(s.phases)}`,
      );
      fs.rmSync(prev);
      fs.rmSync(changed);
    }

    // restore: the big file through the API against icat, both to /dev/null.
    if (only.has('restore')) {
      const ino = Number(
        /^(\d+)/.exec(execFileSync('ifind', ['-n', '/big.bin', exported], { env: { ...process.env, PATH } }).toString())![1],
      );
      const bigBytes = Number(o.bigMib) * MiB;
      const restore = async (): Promise<void> => {
        const res = await api.download('GET', `/v1/volumes/b/files/content?at=latest&path=/big.bin`);
        let n = 0;
        for await (const chunk of res) n += (chunk as Buffer).length;
        if (n !== bigBytes) throw new Error(`restore got ${n} bytes`);
      };
      const ours: number[] = [];
      const theirs: number[] = [];
      const oursCpu: number[] = [];
      const theirsCpu: number[] = [];
      // One untimed run of each first: both read from the page cache, as icat does from the export just written.
      timed('icat', [exported, String(ino)]);
      await restore();
      for (let i = 0; i < reps; i++) {
        const d0 = daemonCpuMs(server.pid);
        const c0 = process.cpuUsage();
        const t = performance.now();
        await restore();
        ours.push(performance.now() - t);
        const c = process.cpuUsage(c0);
        oursCpu.push(daemonCpuMs(server.pid) - d0 + (c.user + c.system) / 1000);
        const k0 = childrenCpuMs();
        theirs.push(timed('icat', [exported, String(ino)]));
        theirsCpu.push(childrenCpuMs() - k0);
      }
      const mbs = (ms: number): number => bigBytes / MiB / (ms / 1000);
      say(
        'restore',
        {
          mbs: mbs(median(ours)),
          icatMbs: mbs(median(theirs)),
          ratio: mbs(median(ours)) / mbs(median(theirs)),
          cpuMs: median(oursCpu),
          icatCpuMs: median(theirsCpu),
        },
        `restore-file of ${o.bigMib} MiB: ${mbs(median(ours)).toFixed(0)} MB/s; icat: ${mbs(median(theirs)).toFixed(0)} MB/s; ratio ${(mbs(median(ours)) / mbs(median(theirs))).toFixed(2)}x (target >= 0.8x); ` +
          `CPU (daemon + client) ${median(oursCpu).toFixed(0)} ms, icat ${median(theirsCpu).toFixed(0)} ms`,
      );
    }
    fs.rmSync(exported, { force: true });

    // versions: a small volume whose /hot changes at every one of --points cataloged points.
    if (only.has('versions')) {
      const small = path.join(o.work, 'small.img');
      fs.rmSync(small, { force: true });
      fs.writeFileSync(small, '');
      fs.truncateSync(small, 32 * MiB);
      execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', small], { env: { ...process.env, PATH } });
      const local = path.join(o.work, 'hot.txt');
      fs.writeFileSync(local, Buffer.alloc(BS, 'version 0\n'));
      spawnSync('debugfs', ['-w', '-f', '-', small], { input: `write ${local} /hot\n`, env: { ...process.env, PATH } });
      const block = Number(
        execFileSync('debugfs', ['-R', 'bmap /hot 0', small], { env: { ...process.env, PATH } })
          .toString()
          .trim(),
      );
      if (!(block > 0)) throw new Error('no block for /hot');
      await api.request('POST', '/v1/volumes', { name: 'v', size: 32 * MiB, protected: true });
      await writeImageBlocks(server.port, 'v', small, null);
      // Then /hot is rewritten in place at each point: a new version each time.
      const c = await NbdClient.connect({ port: server.port, exportName: 'v' });
      const tb = performance.now();
      for (let k = 0; k < Number(o.points); k++) {
        if (k > 0) {
          // As a kernel would: the data block and the inode's mtime (written by debugfs, copied over NBD).
          const before = fs.readFileSync(small);
          const fd = fs.openSync(small, 'r+');
          fs.writeSync(fd, Buffer.alloc(BS, `version ${k}\n`), 0, BS, block * BS);
          fs.closeSync(fd);
          spawnSync('debugfs', ['-w', '-R', `sif /hot mtime ${1_700_000_000 + k}`, small], { env: { ...process.env, PATH } });
          const after = fs.readFileSync(small);
          for (let off = 0; off < after.length; off += BS) {
            if (!after.subarray(off, off + BS).equals(before.subarray(off, off + BS))) await c.write(off, after.subarray(off, off + BS));
          }
          await c.flush();
        }
        await api.request('POST', '/v1/markers/v', { name: `p${k}` });
        const r = await api.request<{ job: Job | null }>('POST', '/v1/volumes/v/catalog', { at: `p${k}`, priority: true });
        if (r.job) await waitJob(r.job.id);
      }
      c.destroy();
      const buildS = (performance.now() - tb) / 1000;
      const lat: number[] = [];
      let count = 0;
      for (let i = 0; i < 300; i++) {
        const t = performance.now();
        const v = await api.request<{ versions: unknown[] }>('GET', '/v1/volumes/v/files/versions?path=/hot');
        lat.push(performance.now() - t);
        count = v.versions.length;
      }
      say(
        'versions',
        { points: Number(o.points), versions: count, p50: pct(lat, 50), p99: pct(lat, 99) },
        `--versions over ${count} versions (${o.points} points, made in ${buildS.toFixed(0)} s): p50 ${pct(lat, 50).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms (target p99 < 50 ms)`,
      );
    }

    // ingest: protected fio alone, then with background full builds of the big volume back to back.
    if (only.has('ingest')) {
      await api.request('POST', '/v1/volumes', { name: 'io', size: 1024 ** 3, protected: true });
      const uri = `nbd://127.0.0.1:${server.port}/io`;
      const fio = (): Promise<number> => fioRandWriteMBs(uri, o.runtime);
      await api.request('POST', '/v1/volumes/io/seal');
      const idle = await fio();
      let running = true;
      let builds = 0;
      const background = (async () => {
        while (running) {
          const c = await NbdClient.connect({ port: server.port, exportName: 'b' });
          await c.write(0, Buffer.alloc(512));
          await c.flush();
          c.destroy();
          await catalog('b', { at: 'latest', full: true });
          builds++;
        }
      })();
      const busy = await fio();
      running = false;
      await background;
      say(
        'ingest',
        { idleMBs: idle, busyMBs: busy, ratio: busy / idle, builds },
        `protected fio 4k randwrite: ${idle.toFixed(1)} MB/s alone, ${busy.toFixed(1)} MB/s with ${builds} background full catalogs running; ratio ${(busy / idle).toFixed(2)}x (target >= 0.9x)`,
      );
    }
    if (o.json) console.log(JSON.stringify(figures, null, 2));
  } finally {
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
