/**
 * Archive pool benchmark: the leaf-size sweep that picks the default, with
 * borg and restic on the same data in the same run.
 *
 *   node dist/tools/bench-archive.js [--size 2G] [--gens 10] [--leaves 16k,...,4m]
 *        [--level 3] [--dir /var/tmp] [--no-peers] [--keep] [--json]
 *
 * 1. An ext4 image (`mkfs.ext4 -d`) filled with real files from /usr/share
 *    and /usr/lib to about 60%.
 * 2. --gens generations, each rewriting ~3% of the files (with other real
 *    files' content), adding 1% and deleting 1%, through a loop mount (or
 *    debugfs where mounting is not allowed). The changed 4 KiB blocks are
 *    found by comparing the image with the previous one: what the journal's
 *    block runs would tell the archiver (not timed).
 * 3. Every generation is archived into one pool per leaf size (the first
 *    in full, then from the previous point with the changed extents), and
 *    given to `borg create --chunker-params fixed,4194304` and `restic
 *    backup`, which read the whole image.
 * 4. Then: stored bytes; forget the first half of the generations and time
 *    gc (borg delete + compact, restic forget --prune); time a full verify
 *    (borg check --verify-data, restic check --read-data).
 *
 * --daemon runs the same generations end to end through `rewind serve`:
 * each generation's changed blocks are written into a protected volume over
 * NBD (as a guest would), `POST /v1/archives` archives the point (temporal
 * dedup from the journal's block runs), and borg and restic read the image
 * `rewind export` writes of the same point. One row per tool.
 *
 * --ingest S instead measures the cost of archiving to production: the
 * image is written into a protected volume of `rewind serve` over NBD;
 * then protected fio 4 KiB random writes (iodepth 32) to another volume
 * for S seconds alone, and again while `POST /v1/archives` of the image's
 * volume runs back to back (each archive forgotten and gc'd before the
 * next, so each is a full one).
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArchivePool, type Extent, type VolumeSource } from '../src/archive';
import { parseSize } from '../src/util/size';
import { ControlClient } from '../src/control/client';
import { findExecutable, fioRandWriteMBs, requireExecutables, runCommand, startRewind, writeImageBlocks } from './lib';

const MiB = 1024 * 1024;
const mb = (bytes: number, s: number): number => bytes / 1e6 / s;
const now = (): number => performance.now() / 1000;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), a | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Regular files under /usr/share and /usr/lib (1 byte to 32 MiB), shuffled. */
function candidateFiles(r: () => number): Array<{ file: string; size: number }> {
  const out: Array<{ file: string; size: number }> = [];
  const walk = (dir: string): void => {
    let names: fs.Dirent[];
    try {
      names = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const d of names) {
      const p = path.join(dir, d.name);
      if (d.isDirectory()) walk(p);
      else if (d.isFile()) {
        const st = fs.statSync(p, { throwIfNoEntry: false });
        if (st && st.size > 0 && st.size <= 32 * MiB) out.push({ file: p, size: st.size });
      }
    }
  };
  walk('/usr/share');
  walk('/usr/lib');
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Applies one generation of file changes to the image (loop mount, else debugfs). */
class Mutator {
  private mounted: boolean | null = null;
  constructor(
    private readonly image: string,
    private readonly work: string,
    readonly files: string[],
    private readonly spare: Array<{ file: string; size: number }>,
    private readonly r: () => number,
  ) {}

  private pick(n: number): string[] {
    const out = new Set<string>();
    while (out.size < Math.min(n, this.files.length)) out.add(this.files[Math.floor(this.r() * this.files.length)]!);
    return [...out];
  }

  async generation(g: number): Promise<void> {
    const n = this.files.length;
    const rewrite = this.pick(Math.round(n * 0.03));
    const gone = new Set(this.pick(Math.round(n * 0.01)).filter((f) => !rewrite.includes(f)));
    const added = Array.from({ length: Math.round(n * 0.01) }, (_, i) => `new/g${g}/f${i}`);
    const content = (): string => this.spare[Math.floor(this.r() * this.spare.length)]!.file;
    const mnt = path.join(this.work, 'mnt');
    fs.mkdirSync(mnt, { recursive: true });
    if (this.mounted !== false) {
      const ok = await runCommand('mount', ['-o', 'loop', this.image, mnt], { check: false });
      this.mounted = ok.code === 0;
    }
    if (this.mounted) {
      try {
        for (const f of rewrite) fs.copyFileSync(content(), path.join(mnt, f));
        for (const f of gone) fs.rmSync(path.join(mnt, f), { force: true });
        for (const f of added) {
          fs.mkdirSync(path.dirname(path.join(mnt, f)), { recursive: true });
          fs.copyFileSync(content(), path.join(mnt, f));
        }
      } finally {
        await runCommand('umount', [mnt]);
      }
    } else {
      const cmds: string[] = [`mkdir /new`, `mkdir /new/g${g}`];
      for (const f of rewrite) cmds.push(`rm /${f}`, `write ${content()} /${f}`);
      for (const f of gone) cmds.push(`rm /${f}`);
      for (const f of added) cmds.push(`write ${content()} /${f}`);
      const script = path.join(this.work, 'debugfs.cmd');
      fs.writeFileSync(script, `${cmds.join('\n')}\n`);
      await runCommand('debugfs', ['-w', '-f', script, this.image]);
    }
    this.files.splice(0, this.files.length, ...this.files.filter((f) => !gone.has(f)), ...added);
  }
}

/** 4 KiB blocks that differ between two images, as extents. */
function changedExtents(a: string, b: string, size: number): Extent[] {
  const out: Extent[] = [];
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  const ba = Buffer.alloc(8 * MiB);
  const bb = Buffer.alloc(8 * MiB);
  for (let off = 0; off < size; off += ba.length) {
    const n = Math.min(ba.length, size - off);
    fs.readSync(fa, ba, 0, n, off);
    fs.readSync(fb, bb, 0, n, off);
    for (let k = 0; k < n; k += 4096) {
      if (ba.subarray(k, k + 4096).equals(bb.subarray(k, k + 4096))) continue;
      const last = out[out.length - 1];
      if (last && last.offset + last.length === off + k) last.length += 4096;
      else out.push({ offset: off + k, length: 4096 });
    }
  }
  fs.closeSync(fa);
  fs.closeSync(fb);
  return out;
}

function fileSource(file: string, size: number, changed?: Extent[]): VolumeSource {
  const fd = fs.openSync(file, 'r');
  return {
    volume: 'disk',
    size,
    ...(changed ? { changed } : {}),
    read: (offset, length) =>
      new Promise((resolve, reject) => {
        const b = Buffer.allocUnsafe(length);
        fs.read(fd, b, 0, length, offset, (err, n) => (err ? reject(err) : n === length ? resolve(b) : reject(new Error('short read'))));
      }),
  };
}

/** borg and restic, unattended, with their state under `work` (restic's repository: RESTIC_REPOSITORY, unless -r). */
function peerTools(work: string): { env: NodeJS.ProcessEnv; run: (cmd: string, args: string[]) => ReturnType<typeof runCommand> } {
  const env = {
    ...process.env,
    BORG_PASSPHRASE: '',
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_BASE_DIR: path.join(work, 'borg-home'),
    RESTIC_PASSWORD: 'bench',
    RESTIC_REPOSITORY: path.join(work, 'restic'),
    RESTIC_CACHE_DIR: path.join(work, 'restic-cache'),
  };
  return { env, run: (cmd, args) => runCommand(cmd, args, { env, cwd: work, timeoutMs: 3_600_000 }) };
}

/** Seconds `fn` takes. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = now();
  await fn();
  return now() - t0;
}

function du(dir: string): number {
  let n = 0;
  for (const f of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (f.isFile()) n += fs.statSync(path.join(f.parentPath ?? (f as unknown as { path: string }).path, f.name)).size;
  }
  return n;
}

interface Row {
  tool: string;
  fullS: number;
  incS: number[];
  stored: number;
  gcS: number;
  verifyS: number;
  verifyBytes: number;
  readPerInc: number;
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--size <bytes>', 'image size', '2G')
    .option('--gens <n>', 'generations after the first', '10')
    .option('--leaves <list>', 'leaf sizes', '16k,32k,64k,128k,256k,512k,1m,2m,4m')
    .option('--level <n>', 'zstd level of the pools', '3')
    .option('--compare-level <n>', 'also archive with this zstd level at --compare-leaf', '1')
    .option('--compare-leaf <size>', 'leaf size of the --compare-level pool', '64k')
    .option('--dir <dir>', 'parent of the work directory', '/var/tmp')
    .option('--no-peers', 'skip borg and restic')
    .option('--full-only <n>', 'only time first full archives: each tool n times, interleaved, best run counts', '0')
    .option('--ingest <s>', 'only: protected fio ingest alone and while archiving, each for this many seconds')
    .option('--daemon', 'the generations through rewind serve: NBD writes, POST /v1/archives, peers on rewind export')
    .option('--keep', 'keep the work directory')
    .option('--json', 'print the rows as JSON too')
    .parse()
    .opts<{
      size: string;
      gens: string;
      leaves: string;
      level: string;
      compareLevel: string;
      compareLeaf: string;
      fullOnly: string;
      ingest?: string;
      daemon?: boolean;
      dir: string;
      peers: boolean;
      keep?: boolean;
      json?: boolean;
    }>();
  const size = parseSize(o.size);
  const gens = Number(o.gens);
  const work = fs.mkdtempSync(path.join(o.dir, 'rewind-bench-archive-'));
  const image = path.join(work, 'image.raw');
  const prev = path.join(work, 'prev.raw');
  const r = rng(42);
  try {
    // 1. The image.
    const all = candidateFiles(r);
    const tree = path.join(work, 'tree');
    const chosen: string[] = [];
    let bytes = 0;
    let k = 0;
    for (; k < all.length && bytes < size * 0.6; k++) {
      const rel = `f${k}${path.extname(all[k]!.file)}`.replace(/[^A-Za-z0-9._-]/g, '_');
      const dest = path.join(tree, String(k % 64), rel);
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.copyFileSync(all[k]!.file, dest);
      chosen.push(path.relative(tree, dest));
      bytes += all[k]!.size;
    }
    fs.closeSync(fs.openSync(image, 'w'));
    fs.truncateSync(image, size);
    await runCommand('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, image]);
    fs.rmSync(tree, { recursive: true, force: true });
    console.log(`image: ${(size / MiB).toFixed(0)} MiB ext4, ${chosen.length} files, ${(bytes / MiB).toFixed(0)} MiB of /usr content`);
    if (Number(o.fullOnly) > 0) return await fullOnly(work, image, size, Number(o.fullOnly), o);
    if (o.ingest) return await ingestWhileArchiving(work, image, size, Number(o.ingest));
    const mut = new Mutator(image, work, chosen, all.slice(k), r);
    if (o.daemon) return await throughDaemon(work, image, prev, size, gens, mut, o.peers, o.json === true);

    // 2-3. Generations into every tool.
    const configs = o.leaves.split(',').map((s) => ({ leafSize: parseSize(s), level: Number(o.level) }));
    if (o.compareLevel !== o.level) configs.push({ leafSize: parseSize(o.compareLeaf), level: Number(o.compareLevel) });
    const pools = await Promise.all(configs.map((c) => ArchivePool.open(path.join(work, `pool-${c.leafSize}-${c.level}`), { create: c })));
    const rows: Row[] = configs.map((c) => ({
      tool: `rewind leaf ${c.leafSize / 1024} KiB zstd-${c.level}`,
      fullS: 0,
      incS: [],
      stored: 0,
      gcS: 0,
      verifyS: 0,
      verifyBytes: 0,
      readPerInc: 0,
    }));
    const borg: Row | null =
      o.peers && findExecutable('borg')
        ? { tool: 'borg fixed 4 MiB', fullS: 0, incS: [], stored: 0, gcS: 0, verifyS: 0, verifyBytes: 0, readPerInc: size }
        : null;
    const restic: Row | null =
      o.peers && findExecutable('restic')
        ? { tool: 'restic', fullS: 0, incS: [], stored: 0, gcS: 0, verifyS: 0, verifyBytes: 0, readPerInc: size }
        : null;
    const borgRepo = path.join(work, 'borg');
    const { env, run } = peerTools(work);
    if (borg) await run('borg', ['init', '-e', 'none', borgRepo]);
    if (restic) await run('restic', ['init']);
    const resticIds: string[] = [];
    let changedTotal = 0;
    for (let g = 0; g <= gens; g++) {
      let changed: Extent[] | undefined;
      if (g > 0) {
        await runCommand('cp', ['--sparse=always', image, prev]);
        await mut.generation(g);
        changed = changedExtents(prev, image, size);
        changedTotal += changed.reduce((a, e) => a + e.length, 0);
      }
      for (let i = 0; i < pools.length; i++) {
        const t0 = now();
        const p = await pools[i]!.archive({
          name: `g${g}`,
          seq: g,
          predecessor: g > 0 ? `g${g - 1}` : null,
          volumes: [fileSource(image, size, changed)],
        });
        const s = now() - t0;
        if (g === 0) rows[i]!.fullS = s;
        else {
          rows[i]!.incS.push(s);
          rows[i]!.readPerInc += p.volumes[0]!.stats.bytesRead / gens;
        }
      }
      for (const [row, cmd] of [
        [borg, (): Promise<unknown> => run('borg', ['create', '--chunker-params', 'fixed,4194304', `${borgRepo}::g${g}`, 'image.raw'])],
        [
          restic,
          async (): Promise<unknown> =>
            resticIds.push(
              JSON.parse((await run('restic', ['backup', '--json', 'image.raw'])).stdout.trim().split('\n').pop()!).snapshot_id as string,
            ),
        ],
      ] as const) {
        if (!row) continue;
        const t0 = now();
        await cmd();
        if (g === 0) row.fullS = now() - t0;
        else row.incS.push(now() - t0);
      }
      console.log(
        `generation ${g} archived${changed ? ` (${changed.length} changed extents, ${(changed.reduce((a, e) => a + e.length, 0) / MiB).toFixed(1)} MiB)` : ''}`,
      );
    }

    // 4. Stored bytes, gc after forgetting the first half, then verify: every
    // tool twice, in opposite orders, the faster run counts (the machine's
    // load varies).
    const half = Array.from({ length: Math.ceil((gens + 1) / 2) }, (_, g) => `g${g}`);
    for (let i = 0; i < pools.length; i++) {
      rows[i]!.stored = pools[i]!.stats().packBytes;
      await pools[i]!.forget(half);
      const t0 = now();
      await pools[i]!.gc();
      rows[i]!.gcS = now() - t0;
    }
    if (borg) {
      borg.stored = du(borgRepo);
      const t0 = now();
      for (const n of half) await run('borg', ['delete', `${borgRepo}::${n}`]);
      await run('borg', ['compact', borgRepo]);
      borg.gcS = now() - t0;
    }
    if (restic) {
      restic.stored = du(env.RESTIC_REPOSITORY!);
      const t0 = now();
      await run('restic', ['forget', '--prune', ...resticIds.slice(0, half.length)]);
      restic.gcS = now() - t0;
    }
    const verifiers: Array<[Row, () => Promise<number>]> = pools.map((p, i) => [
      rows[i]!,
      async () => {
        const v = await p.verify();
        if (v.bad.length) throw new Error(`verify found ${v.bad.length} bad chunks`);
        return v.bytesRead;
      },
    ]);
    if (borg) verifiers.push([borg, async () => (await run('borg', ['check', '--verify-data', borgRepo]), du(borgRepo))]);
    if (restic) verifiers.push([restic, async () => (await run('restic', ['check', '--read-data']), du(env.RESTIC_REPOSITORY!))]);
    for (const order of [verifiers, [...verifiers].reverse()]) {
      for (const [row, fn] of order) {
        const t0 = now();
        row.verifyBytes = await fn();
        const s = now() - t0;
        row.verifyS = row.verifyS === 0 ? s : Math.min(row.verifyS, s);
      }
    }
    for (const p of pools) await p.close();
    report([...rows, ...(borg ? [borg] : []), ...(restic ? [restic] : [])], size, changedTotal / gens, borg, restic);
    if (o.json) console.log(JSON.stringify({ size, gens, changedPerGen: changedTotal / gens, rows }, null, 1));
  } finally {
    if (!o.keep) fs.rmSync(work, { recursive: true, force: true });
    else console.log(`kept ${work}`);
  }
}

/** Full archives only, each tool `n` times in turn with fresh repositories; the best time counts. */
async function fullOnly(
  work: string,
  image: string,
  size: number,
  n: number,
  o: { leaves: string; level: string; compareLevel: string; peers: boolean },
): Promise<void> {
  const configs = o.leaves
    .split(',')
    .flatMap((l) => [...new Set([Number(o.level), Number(o.compareLevel)])].map((level) => ({ leafSize: parseSize(l), level })));
  const { run } = peerTools(work);
  // Each returns the seconds of the archive itself (repository set-up excluded).
  const tools: Array<[string, (dir: string) => Promise<number>]> = configs.map((c) => [
    `rewind leaf ${c.leafSize / 1024} KiB zstd-${c.level}`,
    async (dir) => {
      const pool = await ArchivePool.open(dir, { create: c });
      const s = await timed(() => pool.archive({ name: 'g0', volumes: [fileSource(image, size)] }));
      await pool.close();
      return s;
    },
  ]);
  if (o.peers && findExecutable('borg')) {
    tools.push([
      'borg fixed 4 MiB',
      async (dir) => {
        await run('borg', ['init', '-e', 'none', dir]);
        return timed(() => run('borg', ['create', '--chunker-params', 'fixed,4194304', `${dir}::g0`, 'image.raw']));
      },
    ]);
  }
  if (o.peers && findExecutable('restic')) {
    tools.push([
      'restic',
      async (dir) => {
        await run('restic', ['-r', dir, 'init']);
        return timed(() => run('restic', ['-r', dir, 'backup', 'image.raw']));
      },
    ]);
  }
  const best = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    for (const [name, fn] of i % 2 ? [...tools].reverse() : tools) {
      const dir = path.join(work, `full-${i}-${name.replace(/\W+/g, '_')}`);
      const s = await fn(dir);
      best.set(name, Math.min(best.get(name) ?? Infinity, s));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  console.log('| tool | best full archive s | MB/s |');
  console.log('|---|---|---|');
  for (const [name, s] of best) console.log(`| ${name} | ${s.toFixed(2)} | ${mb(size, s).toFixed(0)} |`);
}

/** A tool's figures in --daemon mode. */
type DaemonRow = Pick<Row, 'tool' | 'fullS' | 'incS' | 'stored' | 'gcS' | 'verifyS'>;

/** --daemon: every generation through rewind serve; the peers read `rewind export` of the same point. */
async function throughDaemon(
  work: string,
  image: string,
  prev: string,
  size: number,
  gens: number,
  mut: Mutator,
  peers: boolean,
  json: boolean,
): Promise<void> {
  const dataDir = path.join(work, 'data');
  fs.mkdirSync(dataDir);
  const server = await startRewind(dataDir);
  const api = new ControlClient({ kind: 'unix', path: path.join(dataDir, 'control.sock'), display: 'control' }, { timeoutMs: 3_600_000 });
  const exported = path.join(work, 'export.raw');
  const borgRepo = path.join(work, 'borg');
  const { env, run } = peerTools(work);
  const rw: DaemonRow = { tool: 'rewind (daemon, 64 KiB leaves)', fullS: 0, incS: [], stored: 0, gcS: 0, verifyS: 0 };
  const borg: DaemonRow | null =
    peers && findExecutable('borg') ? { tool: 'borg fixed 4 MiB', fullS: 0, incS: [], stored: 0, gcS: 0, verifyS: 0 } : null;
  const restic: DaemonRow | null =
    peers && findExecutable('restic') ? { tool: 'restic', fullS: 0, incS: [], stored: 0, gcS: 0, verifyS: 0 } : null;
  const note = (row: DaemonRow, g: number, s: number): void => {
    if (g === 0) row.fullS = s;
    else row.incS.push(s);
  };
  let readPerInc = 0;
  let changedTotal = 0;
  try {
    if (borg) await run('borg', ['init', '-e', 'none', borgRepo]);
    if (restic) await run('restic', ['init']);
    const resticIds: string[] = [];
    await api.request('POST', '/v1/volumes', { name: 'img', size, protected: true });
    for (let g = 0; g <= gens; g++) {
      if (g > 0) {
        await runCommand('cp', ['--sparse=always', image, prev]);
        await mut.generation(g);
      }
      const blocks = await writeImageBlocks(server.port, 'img', image, g > 0 ? prev : null);
      if (g > 0) changedTotal += blocks * 4096;
      // The point written, exported first for the peers (untimed: it also waits for the manager to apply
      // the writes, which is ingest's work, not the archive's), then archived by the daemon (incremental
      // from the journal's block runs) at the same point.
      fs.rmSync(exported, { force: true });
      await api.request('POST', '/v1/volumes/img/export', { at: 'latest', out: exported });
      let r: { point: { volumes: Array<{ stats: { bytesRead: number } }> } } | null = null;
      note(rw, g, await timed(async () => (r = await api.request('POST', '/v1/archives', { target: 'img', at: 'latest', name: `g${g}` }))));
      if (g > 0) readPerInc += r!.point.volumes[0]!.stats.bytesRead / gens;
      if (borg)
        note(borg, g, await timed(() => run('borg', ['create', '--chunker-params', 'fixed,4194304', `${borgRepo}::g${g}`, 'export.raw'])));
      if (restic)
        note(
          restic,
          g,
          await timed(async () =>
            resticIds.push(
              JSON.parse((await run('restic', ['backup', '--json', 'export.raw'])).stdout.trim().split('\n').pop()!).snapshot_id as string,
            ),
          ),
        );
      console.log(`generation ${g}: ${blocks} blocks written, archived and exported`);
    }
    const half = Array.from({ length: Math.ceil((gens + 1) / 2) }, (_, g) => `g${g}`);
    rw.stored = (await api.request<{ stats: { packBytes: number } }>('GET', '/v1/archives')).stats.packBytes;
    rw.gcS = await timed(async () => {
      for (const n of half) await api.request('DELETE', `/v1/archives/${n}`);
      await api.request('POST', '/v1/archives/gc', {});
    });
    if (borg) {
      borg.stored = du(borgRepo);
      borg.gcS = await timed(async () => {
        for (const n of half) await run('borg', ['delete', `${borgRepo}::${n}`]);
        await run('borg', ['compact', borgRepo]);
      });
    }
    if (restic) {
      restic.stored = du(env.RESTIC_REPOSITORY!);
      restic.gcS = await timed(() => run('restic', ['forget', '--prune', ...resticIds.slice(0, half.length)]));
    }
    // Verify, every tool twice in opposite orders; the faster run counts.
    const verifiers: Array<[DaemonRow, () => Promise<unknown>]> = [
      [
        rw,
        async () => {
          const v = await api.request<{ bad: unknown[] }>('POST', '/v1/archives/verify', {});
          if (v.bad.length) throw new Error(`verify found ${v.bad.length} bad chunks`);
        },
      ],
    ];
    if (borg) verifiers.push([borg, () => run('borg', ['check', '--verify-data', borgRepo])]);
    if (restic) verifiers.push([restic, () => run('restic', ['check', '--read-data'])]);
    for (const order of [verifiers, [...verifiers].reverse()])
      for (const [row, fn] of order) {
        const s = await timed(fn);
        row.verifyS = row.verifyS === 0 ? s : Math.min(row.verifyS, s);
      }
  } finally {
    await server.stop();
  }
  const avg = (a: number[]): number => a.reduce((x, y) => x + y, 0) / Math.max(1, a.length);
  const rows = [rw, ...(borg ? [borg] : []), ...(restic ? [restic] : [])];
  const vs = (x: number, p: DaemonRow | null, f: (r: DaemonRow) => number): string => (p ? `${(x / f(p)).toFixed(2)}x` : '-');
  console.log(
    `\nthrough rewind serve: ${(size / MiB).toFixed(0)} MiB volume, ${gens} generations, ${(changedTotal / gens / MiB).toFixed(1)} MiB written per generation; ` +
      `rewind read ${(readPerInc / MiB).toFixed(1)} MiB per incremental archive`,
  );
  console.log('| tool | full MB/s | incremental s (avg) | stored MiB | gc s | verify s |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.tool} | ${mb(size, r.fullS).toFixed(0)} | ${avg(r.incS).toFixed(2)} | ${(r.stored / MiB).toFixed(0)} | ${r.gcS.toFixed(2)} | ${r.verifyS.toFixed(2)} |`,
    );
  console.log(
    `rewind vs borg: full speed ${vs(1 / rw.fullS, borg, (r) => 1 / r.fullS)} (target >= 1.0x), incremental time ${vs(avg(rw.incS), borg, (r) => avg(r.incS))} (<= 0.1x), ` +
      `stored ${vs(rw.stored, borg, (r) => r.stored)} (<= 0.8x), verify speed ${vs(1 / rw.verifyS, borg, (r) => 1 / r.verifyS)} (>= 1.0x); ` +
      `vs restic: stored ${vs(rw.stored, restic, (r) => r.stored)} (<= 1.0x), gc time ${vs(rw.gcS, restic, (r) => r.gcS)} (<= 0.5x)`,
  );
  if (json) console.log(JSON.stringify({ size, gens, changedPerGen: changedTotal / gens, readPerInc, rows }, null, 1));
}

/** --ingest: protected fio alone, then while full archives of the image's volume run back to back. */
async function ingestWhileArchiving(work: string, image: string, size: number, runtime: number): Promise<void> {
  requireExecutables(['fio']);
  const dataDir = path.join(work, 'data');
  fs.mkdirSync(dataDir);
  const server = await startRewind(dataDir);
  const api = new ControlClient({ kind: 'unix', path: path.join(dataDir, 'control.sock'), display: 'control' }, { timeoutMs: 3_600_000 });
  try {
    await api.request('POST', '/v1/volumes', { name: 'img', size, protected: true });
    const blocks = await writeImageBlocks(server.port, 'img', image, null);
    await api.request('POST', '/v1/volumes/img/seal');
    console.log(`image written into protected volume img: ${((blocks * 4096) / MiB).toFixed(0)} MiB`);
    await api.request('POST', '/v1/volumes', { name: 'io', size: 1024 ** 3, protected: true });
    const uri = `nbd://127.0.0.1:${server.port}/io`;
    // A first archive, untimed: the pool is created and img's history indexed.
    await api.request('POST', '/v1/archives', { target: 'img', at: 'latest', name: 'warm' });
    await api.request('DELETE', '/v1/archives/warm');
    await api.request('POST', '/v1/archives/gc', {});
    await api.request('POST', '/v1/volumes/io/seal');
    const idle = await fioRandWriteMBs(uri, runtime);
    let running = true;
    let archives = 0;
    let archiveS = 0;
    const background = (async () => {
      while (running) {
        const t0 = now();
        await api.request('POST', '/v1/archives', { target: 'img', at: 'latest', name: `a${archives}` });
        archiveS += now() - t0;
        await api.request('DELETE', `/v1/archives/a${archives}`);
        await api.request('POST', '/v1/archives/gc', {});
        archives++;
      }
    })();
    const busy = await fioRandWriteMBs(uri, runtime);
    running = false;
    await background;
    console.log(
      `protected fio 4k randwrite: ${idle.toFixed(1)} MB/s alone, ${busy.toFixed(1)} MB/s while ${archives} full archives of ` +
        `${(size / MiB).toFixed(0)} MiB ran (${(archiveS / Math.max(1, archives)).toFixed(1)} s each); ratio ${(busy / idle).toFixed(2)}x (target >= 0.85x)`,
    );
  } finally {
    await server.stop();
  }
}

function report(rows: Row[], size: number, changedPerGen: number, borg: Row | null, restic: Row | null): void {
  const avg = (a: number[]): number => a.reduce((x, y) => x + y, 0) / Math.max(1, a.length);
  console.log(`\nchanged per generation: ${(changedPerGen / MiB).toFixed(1)} MiB of ${(size / MiB).toFixed(0)} MiB`);
  console.log(
    '| tool | full MB/s | incremental s (avg) | read per incr. MiB | stored MiB | vs borg | vs restic | gc s | verify s | verify MB/s |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const ratio = (p: Row | null): string => (p ? (r.stored / p.stored).toFixed(2) : '-');
    console.log(
      `| ${r.tool} | ${mb(size, r.fullS).toFixed(0)} | ${avg(r.incS).toFixed(2)} | ${(r.readPerInc / MiB).toFixed(1)} | ${(r.stored / MiB).toFixed(0)} | ${ratio(borg)} | ${ratio(restic)} | ${r.gcS.toFixed(2)} | ${r.verifyS.toFixed(2)} | ${mb(r.verifyBytes, r.verifyS).toFixed(0)} |`,
    );
  }
}

main().catch((err: unknown) => {
  console.error((err as Error).stack ?? String(err));
  process.exit(1);
});
