#!/usr/bin/env node
/**
 * bench-fio: one run of fio's NBD engine against Rewind and the public peers
 * nbdkit (file plugin) and qemu-nbd, each serving its own sparse file of the
 * same size on the same filesystem; and, for sequential writes, the journal
 * limit of the machine (fio appending to a fresh file there).
 *
 *   node dist/tools/bench-fio.js [--only rewind,rewind-protected,nbdkit,qemu-nbd,journal-limit] [--profiles seq-write,...]
 *                                [--runtime 10] [--size 4G] [--repeat 1] [--json out.json]
 *
 * Profiles run one after another; inside a profile every server runs before the
 * next repetition, so slow drift of the host (page cache, thermal) hits all
 * servers alike. Each cell reports the median of its repetitions. Before the
 * first read profile every server's file is written once end to end (untimed),
 * so reads return data rather than holes. After every write run on a
 * protected volume the tool waits (rewind seal) until the backup manager has
 * applied the run's backlog, and prints how long that took: ingest is
 * measured with the manager working behind it, but the next run does not
 * inherit the previous run's backlog.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  describeExit,
  findExecutable,
  installSignalHandlers,
  onCleanup,
  requireExecutables,
  runCleanups,
  runCommand,
  startServer,
  type ServerHandle,
} from './lib';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const HOST = '127.0.0.1';
const INSTALL_HINT = 'Install them with: sudo bash tools/install-system-deps.sh';
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

// ---------------------------------------------------------------------------
// Profiles

interface Profile {
  name: string;
  rw: 'write' | 'read' | 'randwrite' | 'randread';
  bs: string;
  iodepth: number;
}

const PROFILES: Profile[] = [
  { name: 'seq-write', rw: 'write', bs: '1M', iodepth: 16 },
  { name: 'seq-read', rw: 'read', bs: '1M', iodepth: 16 },
  { name: 'rand-write', rw: 'randwrite', bs: '4k', iodepth: 32 },
  { name: 'rand-read', rw: 'randread', bs: '4k', iodepth: 32 },
];

const isRead = (p: Profile) => p.rw === 'read' || p.rw === 'randread';

// ---------------------------------------------------------------------------
// Servers. Adding a variant (e.g. a protected Rewind volume) is one more entry
// in serverCatalog().

interface BenchContext {
  /** Directory private to this server; its backing file goes here. */
  dir: string;
  /** Size of the export in bytes. */
  size: number;
  host: string;
}

interface RunningServer {
  uri: string;
  /** The peer process; none for the journal limit (fio writes a file itself). */
  handle: ServerHandle | null;
  /** fio's target arguments for a run; default: the NBD engine at `uri`. */
  target?(): string[];
  stop(): Promise<void>;
  /**
   * Protected volumes: wait until the backup manager has applied every
   * write so far (rewind seal), so the next run does not share the CPU with
   * the previous run's backlog. Returns the seconds it took.
   */
  settle?(): Promise<number>;
}

interface ServerDescriptor {
  name: string;
  /** Subjects (Rewind variants) are compared against every peer. */
  role: 'subject' | 'peer';
  /** Executables that must be on PATH. */
  programs: string[];
  /** Profiles this entry measures (default: all). */
  profiles?: string[];
  /** Further checks before anything starts; throw with a clear message. */
  preflight?(): void;
  version(): Promise<string>;
  start(ctx: BenchContext): Promise<RunningServer>;
}

/** A sparse file of exactly `size` bytes. */
function createSparseFile(file: string, size: number): void {
  const fd = fs.openSync(file, 'w', 0o644);
  try {
    fs.ftruncateSync(fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

function running(handle: ServerHandle, exportName: string): RunningServer {
  return {
    uri: `nbd://${handle.host}:${handle.port}/${exportName}`,
    handle,
    stop: async () => void (await handle.stop()),
  };
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  const r = await runCommand(cmd, args, { timeoutMs: 15_000 });
  return (r.stdout || r.stderr).trim().split('\n')[0] ?? '';
}

interface RewindOptions {
  name: string;
  volume: string;
  extraArgs: string[];
  bin: string;
  /** Create the volume after start with these `rewind volume create` flags (e.g. --protected). */
  createArgs?: string[];
}

function rewindServer(o: RewindOptions): ServerDescriptor {
  return {
    name: o.name,
    role: 'subject',
    programs: [],
    preflight() {
      if (!fs.existsSync(o.bin)) throw new Error(`${o.name}: launcher ${o.bin} does not exist`);
      const main = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
      if (path.resolve(o.bin) === path.join(REPO_ROOT, 'bin', 'rewind') && !fs.existsSync(main)) {
        throw new Error(`${o.name}: ${path.relative(REPO_ROOT, main)} is missing; build first (npm run build)`);
      }
    },
    async version() {
      let v = 'rewind';
      try {
        v += ' ' + JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')).version;
      } catch {
        // no package.json: leave the version out
      }
      try {
        const r = await runCommand('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty'], { timeoutMs: 5000 });
        v += ` (git ${r.stdout.trim()})`;
      } catch {
        // not a git checkout
      }
      return `${v}, node ${process.version}`;
    },
    async start(ctx) {
      const dataDir = path.join(ctx.dir, 'data');
      fs.mkdirSync(dataDir, { recursive: true });
      const handle = await startServer({
        name: o.name,
        command: process.execPath,
        args: (port) => [
          o.bin,
          'serve',
          '--data-dir',
          dataDir,
          '--listen',
          `${ctx.host}:${port}`,
          '--socket',
          path.join(dataDir, 'nbd.sock'),
          '--default-size',
          String(ctx.size),
          '--log-level',
          'warn',
          ...o.extraArgs,
        ],
        host: ctx.host,
        cwd: REPO_ROOT,
        readyTimeoutMs: 60_000,
        stopTimeoutMs: 30_000,
      });
      if (o.createArgs) {
        await runCommand(
          process.execPath,
          [o.bin, '--data-dir', dataDir, 'volume', 'create', o.volume, '--size', String(ctx.size), ...o.createArgs],
          { timeoutMs: 60_000 },
        );
      }
      const r = running(handle, o.volume);
      if (o.createArgs?.includes('--protected')) {
        r.settle = async () => {
          const t0 = Date.now();
          await runCommand(process.execPath, [o.bin, '--data-dir', dataDir, 'seal', o.volume], { timeoutMs: 60 * 60_000 });
          return (Date.now() - t0) / 1000;
        };
      }
      return r;
    },
  };
}

let nbdkitExitWithParent: boolean | null = null;

const nbdkitServer: ServerDescriptor = {
  name: 'nbdkit',
  role: 'peer',
  programs: ['nbdkit'],
  async version() {
    const cfg = await runCommand('nbdkit', ['--dump-config'], { timeoutMs: 15_000 });
    nbdkitExitWithParent = /^exit_with_parent=yes$/m.test(cfg.stdout);
    await runCommand('nbdkit', ['file', '--dump-plugin'], { timeoutMs: 15_000 }).catch((e: Error) => {
      throw new Error(`nbdkit's file plugin is not usable: ${e.message}`);
    });
    return firstLine('nbdkit', ['--version']);
  },
  async start(ctx) {
    const file = path.join(ctx.dir, 'disk.img');
    createSparseFile(file, ctx.size);
    const handle = await startServer({
      name: 'nbdkit',
      command: 'nbdkit',
      args: (port) => [
        '--foreground',
        ...(nbdkitExitWithParent ? ['--exit-with-parent'] : []),
        '-i',
        ctx.host,
        '-p',
        String(port),
        'file',
        file,
      ],
      host: ctx.host,
    });
    return running(handle, 'default');
  },
};

const qemuNbdServer: ServerDescriptor = {
  name: 'qemu-nbd',
  role: 'peer',
  programs: ['qemu-nbd'],
  version: () => firstLine('qemu-nbd', ['--version']),
  async start(ctx) {
    const file = path.join(ctx.dir, 'disk.img');
    createSparseFile(file, ctx.size);
    const handle = await startServer({
      name: 'qemu-nbd',
      command: 'qemu-nbd',
      args: (port) => ['-f', 'raw', '-p', String(port), '-b', ctx.host, '-x', 'default', '--persistent', '--shared=8', file],
      host: ctx.host,
    });
    return running(handle, 'default');
  },
};

/**
 * The journal limit of the machine: fio appending 1 MiB blocks to a fresh
 * file on the same filesystem, the least any journal must do (every byte is
 * a newly allocated page-cache page). A peer row for sequential writes only.
 */
const journalLimit: ServerDescriptor = {
  name: 'journal-limit',
  role: 'peer',
  programs: [],
  profiles: ['seq-write'],
  version: async () => 'fio ioengine=psync appending to a fresh file',
  start(ctx) {
    let n = 0;
    let last: string | null = null;
    const fresh = () => {
      if (last) fs.rmSync(last, { force: true });
      last = path.join(ctx.dir, `append-${n++}.dat`);
      return last;
    };
    return Promise.resolve({
      uri: `file:${ctx.dir}/append-N.dat`,
      handle: null,
      target: () => ['--ioengine=psync', `--filename=${fresh()}`, '--fallocate=none', '--size=64G'],
      stop: async () => {
        if (last) fs.rmSync(last, { force: true });
      },
    });
  },
};

function serverCatalog(opts: CliOptions): ServerDescriptor[] {
  return [
    rewindServer({ name: 'rewind', volume: opts.rewindVolume, extraArgs: opts.rewindArgs, bin: opts.rewindBin }),
    // The same daemon with a protected (journaled) volume: the intercept,
    // AILFC appends, state map and the backup manager applying behind it.
    rewindServer({
      name: 'rewind-protected',
      volume: 'protected',
      extraArgs: [...opts.rewindArgs, '--no-default-volume'],
      bin: opts.rewindBin,
      createArgs: ['--protected'],
    }),
    nbdkitServer,
    qemuNbdServer,
    journalLimit,
  ];
}

// ---------------------------------------------------------------------------
// fio

interface Metrics {
  mbps: number;
  iops: number;
  clatP50Ms: number;
  clatP99Ms: number;
  ioBytes: number;
}

function fioArgs(
  srv: RunningServer,
  name: string,
  rw: string,
  bs: string,
  iodepth: number,
  size: number,
  outFile: string,
  jobs = 1,
): string[] {
  // Several jobs (one NBD connection each) split the export into equal
  // slices. The journal limit stays one stream: it is the machine's.
  const n = srv.target ? 1 : jobs;
  const slice = Math.floor(size / n / MiB) * MiB;
  return [
    `--name=${name}`,
    ...(srv.target ? [] : ['--ioengine=nbd', `--uri=${srv.uri}`]),
    `--rw=${rw}`,
    `--bs=${bs}`,
    `--iodepth=${iodepth}`,
    `--numjobs=${n}`,
    ...(n > 1 ? [`--size=${slice}`, `--offset_increment=${slice}`] : [`--size=${size}`]),
    '--output-format=json',
    `--output=${outFile}`,
    // Last, so that a target may override the size (the journal limit never wraps around).
    ...(srv.target ? srv.target() : []),
  ];
}

function parseFioJson(text: string, rw: Profile['rw'], what: string): Metrics {
  const start = text.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON for ${what}`);
  let doc: { jobs?: Array<Record<string, unknown>> };
  try {
    doc = JSON.parse(text.slice(start));
  } catch (e) {
    throw new Error(`cannot parse fio JSON for ${what}: ${(e as Error).message}`, { cause: e });
  }
  const jobs = doc.jobs ?? [];
  if (jobs.length === 0) throw new Error(`fio JSON for ${what} has no jobs`);
  const dir = rw === 'read' || rw === 'randread' ? 'read' : 'write';
  const m: Metrics = { mbps: 0, iops: 0, clatP50Ms: 0, clatP99Ms: 0, ioBytes: 0 };
  for (const job of jobs) {
    if (job.error) throw new Error(`fio job ${String(job.jobname)} reported error ${String(job.error)} for ${what}`);
    const d = job[dir] as {
      bw_bytes: number;
      iops: number;
      io_bytes: number;
      clat_ns?: { percentile?: Record<string, number> };
    };
    m.mbps += d.bw_bytes / 1e6;
    m.iops += d.iops;
    m.ioBytes += d.io_bytes;
    const pct = d.clat_ns?.percentile ?? {};
    m.clatP50Ms = Math.max(m.clatP50Ms, (pct['50.000000'] ?? 0) / 1e6);
    m.clatP99Ms = Math.max(m.clatP99Ms, (pct['99.000000'] ?? 0) / 1e6);
  }
  if (m.ioBytes === 0) throw new Error(`fio moved no data for ${what}`);
  return m;
}

async function runFio(args: string[], outFile: string, timeoutMs: number, server: RunningServer, what: string): Promise<string> {
  try {
    await runCommand('fio', args, { timeoutMs });
  } catch (e) {
    const srv = server.handle;
    if (!srv) throw new Error(`fio failed for ${what}: ${(e as Error).message.trimEnd()}`, { cause: e });
    const state = srv.running() ? 'still running' : `exited (${describeExit(await srv.exited)})`;
    const out = srv.output().trimEnd().split('\n').slice(-15).join('\n');
    throw new Error(
      `fio failed for ${what}: ${(e as Error).message.trimEnd()}\n  server ${srv.name} is ${state}` +
        (out ? `; its recent output:\n${out.replace(/^/gm, '    ')}` : ''),
      { cause: e },
    );
  }
  return fs.readFileSync(outFile, 'utf8');
}

// ---------------------------------------------------------------------------
// Options

interface CliOptions {
  only: string[] | null;
  profiles: Profile[];
  runtime: number;
  ramp: number;
  size: number;
  repeat: number;
  jobs: number;
  dir: string;
  json: string | null;
  baseline: string | null;
  rewindVolume: string;
  rewindArgs: string[];
  rewindBin: string;
}

function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw new InvalidArgumentError(`not a size: "${text}" (examples: 4G, 512M, 1073741824)`);
  const mult: Record<string, number> = { '': 1, k: 1024, m: MiB, g: GiB, t: 1024 * GiB };
  const bytes = Math.round(Number(m[1]) * mult[m[2]!.toLowerCase()]!);
  if (bytes < 64 * MiB || bytes % MiB !== 0) {
    throw new InvalidArgumentError(`size must be a multiple of 1 MiB and at least 64 MiB (got ${bytes} bytes)`);
  }
  return bytes;
}

function positiveInt(what: string) {
  return (text: string): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${what} must be a positive integer`);
    return n;
  };
}

function nonNegativeInt(what: string) {
  return (text: string): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer`);
    return n;
  };
}

function csv(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Split a string into arguments: whitespace separates, '…' and "…" quote, \ escapes. */
function splitArgs(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let have = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === quote) quote = null;
      else if (c === '\\' && quote === '"' && i + 1 < text.length) cur += text[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      have = true;
    } else if (c === '\\' && i + 1 < text.length) {
      cur += text[++i];
      have = true;
    } else if (/\s/.test(c)) {
      if (have) out.push(cur);
      cur = '';
      have = false;
    } else {
      cur += c;
      have = true;
    }
  }
  if (quote) throw new InvalidArgumentError('unterminated quote in --rewind-args');
  if (have) out.push(cur);
  return out;
}

function parseOptions(argv: string[]): CliOptions {
  const program = new Command('bench-fio')
    .description(
      "Benchmark fio's NBD engine against Rewind, nbdkit (file plugin) and qemu-nbd on equal sparse files.\n" +
        `Profiles: ${PROFILES.map((p) => `${p.name} (${p.rw} bs=${p.bs} iodepth=${p.iodepth})`).join(', ')}.`,
    )
    .option('--only <servers>', 'comma-separated servers to run (default: all: rewind,rewind-protected,nbdkit,qemu-nbd,journal-limit)')
    .option('--profiles <list>', 'comma-separated profiles (default: all, in the order above)')
    .option('--runtime <seconds>', 'measured seconds per run', positiveInt('--runtime'), 10)
    .option('--ramp <seconds>', 'unmeasured warm-up seconds per run (fio ramp_time)', nonNegativeInt('--ramp'), 2)
    .addOption(
      new Option('--size <size>', "size of every server's file / export (K, M, G, T = powers of 1024)")
        .argParser(parseSize)
        .default(4 * GiB, '4G'),
    )
    .option('--repeat <n>', 'runs per cell; the median is reported', positiveInt('--repeat'), 1)
    .option(
      '--jobs <n>',
      'fio jobs per measured run, one NBD connection each (numjobs; MB/s and IOPS are their sum)',
      positiveInt('--jobs'),
      1,
    )
    .option('--dir <dir>', 'parent of the temporary directory holding the files', '/var/tmp')
    .option('--json <file>', 'also write all results as JSON to this file')
    .option('--baseline <server>', 'server whose ratio to the others is shown (default: rewind servers, else the first)')
    .option('--rewind-volume <name>', 'NBD export name of the Rewind volume', 'default')
    .option('--rewind-args <args>', 'extra arguments for "rewind serve" (split like a shell would)', '')
    .addOption(new Option('--rewind-bin <path>', 'Rewind launcher run with node').default(path.join(REPO_ROOT, 'bin', 'rewind')))
    .showHelpAfterError()
    .parse(argv);
  const o = program.opts<{
    only?: string;
    profiles?: string;
    runtime: number;
    ramp: number;
    size: number;
    repeat: number;
    jobs: number;
    dir: string;
    json?: string;
    baseline?: string;
    rewindVolume: string;
    rewindArgs: string;
    rewindBin: string;
  }>();
  let profiles = PROFILES;
  if (o.profiles) {
    const names = csv(o.profiles);
    const unknown = names.filter((n) => !PROFILES.some((p) => p.name === n));
    if (unknown.length) program.error(`unknown profile(s): ${unknown.join(', ')}; known: ${PROFILES.map((p) => p.name).join(', ')}`);
    profiles = names.map((n) => PROFILES.find((p) => p.name === n)!);
  }
  let rewindArgs: string[] = [];
  try {
    rewindArgs = splitArgs(o.rewindArgs);
  } catch (e) {
    program.error((e as Error).message);
  }
  return {
    only: o.only ? csv(o.only) : null,
    profiles,
    runtime: o.runtime,
    ramp: o.ramp,
    size: o.size,
    repeat: o.repeat,
    jobs: o.jobs,
    dir: path.resolve(o.dir),
    json: o.json ? path.resolve(o.json) : null,
    baseline: o.baseline ?? null,
    rewindVolume: o.rewindVolume,
    rewindArgs,
    rewindBin: path.resolve(o.rewindBin),
  };
}

// ---------------------------------------------------------------------------
// Reporting

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function medianMetrics(runs: Metrics[]): Metrics {
  return {
    mbps: median(runs.map((r) => r.mbps)),
    iops: median(runs.map((r) => r.iops)),
    clatP50Ms: median(runs.map((r) => r.clatP50Ms)),
    clatP99Ms: median(runs.map((r) => r.clatP99Ms)),
    ioBytes: median(runs.map((r) => r.ioBytes)),
  };
}

function fmtNum(n: number): string {
  if (n >= 100) return Math.round(n).toString();
  if (n >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

function fmtRatio(r: number): string {
  return r >= 10 ? `${r.toFixed(1)}x` : `${r.toFixed(2)}x`;
}

function fmtBytes(n: number): string {
  if (n % GiB === 0) return `${n / GiB} GiB`;
  if (n >= GiB) return `${(n / GiB).toFixed(1)} GiB`;
  if (n % MiB === 0) return `${n / MiB} MiB`;
  return `${n} B`;
}

function table(rows: string[][], rightAligned: Set<number>): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : rightAligned.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** True while a progress line on stderr waits for its result. */
let midLine = false;
const log = (msg: string) => {
  midLine = false;
  process.stderr.write(msg + '\n');
};

// ---------------------------------------------------------------------------
// Main

interface Cell {
  profile: string;
  server: string;
  runs: Metrics[];
  median?: Metrics;
  /** Protected volumes: seconds the manager needed after each write run to apply its backlog. */
  settleSeconds?: number[];
}

let interrupted = false;

async function main(): Promise<number> {
  const opts = parseOptions(process.argv);
  installSignalHandlers((sig) => {
    interrupted = true;
    log(`\n${sig}: stopping servers and removing temporary files...`);
  });

  const catalog = serverCatalog(opts);
  let servers = catalog;
  if (opts.only) {
    const unknown = opts.only.filter((n) => !catalog.some((s) => s.name === n));
    if (unknown.length)
      throw new Error(`unknown server(s) in --only: ${unknown.join(', ')}; known: ${catalog.map((s) => s.name).join(', ')}`);
    servers = opts.only.map((n) => catalog.find((s) => s.name === n)!);
  }
  if (servers.length === 0) throw new Error('no servers selected');
  if (opts.baseline && !servers.some((s) => s.name === opts.baseline)) {
    throw new Error(`--baseline ${opts.baseline} is not among the selected servers (${servers.map((s) => s.name).join(', ')})`);
  }

  // Fail loudly on anything missing before starting anything.
  requireExecutables(['fio', ...new Set(servers.flatMap((s) => s.programs))], INSTALL_HINT);
  const engines = await runCommand('fio', ['--enghelp'], { timeoutMs: 15_000, check: false });
  if (!/^\s*nbd\s*$/m.test(engines.stdout)) {
    throw new Error(`this fio (${findExecutable('fio')}) has no nbd ioengine; Debian's fio package has it. ${INSTALL_HINT}`);
  }
  for (const s of servers) s.preflight?.();

  const versions: Record<string, string> = { fio: await firstLine('fio', ['--version']) };
  for (const s of servers) versions[s.name] = await s.version();

  fs.mkdirSync(opts.dir, { recursive: true });
  const free = fs.statfsSync(opts.dir);
  const needed = servers.length * opts.size + GiB;
  const avail = free.bavail * free.bsize;
  if (avail < needed) {
    throw new Error(
      `not enough free space in ${opts.dir}: ${fmtBytes(avail)} available, ` +
        `need about ${fmtBytes(needed)} (${servers.length} × ${fmtBytes(opts.size)} + 1 GiB); use --size or --dir`,
    );
  }
  const tmp = fs.mkdtempSync(path.join(opts.dir, 'rewind-bench-'));
  onCleanup(
    `remove ${tmp}`,
    () => fs.rmSync(tmp, { recursive: true, force: true }),
    () => fs.rmSync(tmp, { recursive: true, force: true }),
  );

  // Header
  const cpu = os.cpus();
  const header: string[][] = [
    ...Object.entries(versions).map(([k, v]) => [k, v]),
    [
      'host',
      `${os.type()} ${os.release()}, ${cpu.length} CPU (${cpu[0]?.model.trim() ?? '?'}), ${fmtBytes(Math.round(os.totalmem() / GiB) * GiB)} RAM`,
    ],
    ['files', `${fmtBytes(opts.size)} sparse file per server under ${tmp}`],
    [
      'runs',
      `fio ioengine=nbd, ${opts.jobs} job(s) and connection(s), ${opts.runtime} s measured after ${opts.ramp} s ramp, median of ${opts.repeat}`,
    ],
  ];
  console.log(`bench-fio ${new Date().toISOString()}`);
  console.log(
    table(
      header.map(([k, v]) => [`  ${k}`, v!]),
      new Set(),
    ),
  );
  console.log('');

  // Start servers
  const live = new Map<string, RunningServer>();
  for (const s of servers) {
    const dir = path.join(tmp, s.name);
    fs.mkdirSync(dir, { recursive: true });
    log(`starting ${s.name}...`);
    const r = await s.start({ dir, size: opts.size, host: HOST });
    live.set(s.name, r);
    log(r.handle ? `  ${r.handle.commandLine}\n  -> ${r.uri} (pid ${r.handle.pid})` : `  -> ${r.uri}`);
  }

  const outFile = path.join(tmp, 'fio.json');
  const filled = new Set<string>();
  const cells: Cell[] = [];
  const total =
    opts.profiles.reduce((n, p) => n + servers.filter((s) => !s.profiles || s.profiles.includes(p.name)).length, 0) * opts.repeat;
  let done = 0;
  const timedMs = (opts.runtime + opts.ramp) * 1000 + 120_000;

  for (const profile of opts.profiles) {
    if (isRead(profile)) {
      for (const s of servers) {
        if (filled.has(s.name) || (s.profiles && !s.profiles.includes(profile.name))) continue;
        const srv = live.get(s.name)!;
        log(`filling ${s.name}: sequential write of ${fmtBytes(opts.size)} (untimed)...`);
        const t0 = Date.now();
        const args = fioArgs(srv, 'fill', 'write', '1M', 16, opts.size, outFile);
        const m = parseFioJson(await runFio(args, outFile, 60 * 60_000, srv, `fill on ${s.name}`), 'write', `fill on ${s.name}`);
        if (m.ioBytes < opts.size) throw new Error(`fill on ${s.name} wrote ${m.ioBytes} of ${opts.size} bytes`);
        log(`  done in ${((Date.now() - t0) / 1000).toFixed(1)} s (${fmtNum(m.mbps)} MB/s)`);
        if (srv.settle) log(`  ${s.name}: the backup manager caught up ${(await srv.settle()).toFixed(1)} s later`);
        filled.add(s.name);
      }
    }
    const inProfile = servers.filter((s) => !s.profiles || s.profiles.includes(profile.name));
    const row = new Map<string, Cell>();
    for (const s of inProfile) {
      const c: Cell = { profile: profile.name, server: s.name, runs: [] };
      row.set(s.name, c);
      cells.push(c);
    }
    for (let rep = 1; rep <= opts.repeat; rep++) {
      for (const s of inProfile) {
        const srv = live.get(s.name)!;
        const what = `${profile.name} on ${s.name}` + (opts.repeat > 1 ? ` (run ${rep}/${opts.repeat})` : '');
        process.stderr.write(`[${++done}/${total}] ${what}... `);
        midLine = true;
        const args = [
          ...fioArgs(srv, profile.name, profile.rw, profile.bs, profile.iodepth, opts.size, outFile, opts.jobs),
          '--time_based',
          `--runtime=${opts.runtime}`,
          `--ramp_time=${opts.ramp}`,
        ];
        const m = parseFioJson(await runFio(args, outFile, timedMs, srv, what), profile.rw, what);
        row.get(s.name)!.runs.push(m);
        log(`${fmtNum(m.mbps)} MB/s, ${fmtNum(m.iops)} IOPS`);
        if (srv.settle && !isRead(profile)) {
          const secs = await srv.settle();
          row.get(s.name)!.settleSeconds = [...(row.get(s.name)!.settleSeconds ?? []), secs];
          log(`  ${s.name}: the backup manager caught up ${secs.toFixed(1)} s after the run`);
        }
      }
    }
    for (const c of row.values()) c.median = medianMetrics(c.runs);
  }

  // Ratios: each subject (Rewind variant) against every other server; if no
  // subject runs, the first server (or --baseline) plays that part.
  let subjects = opts.baseline ? servers.filter((s) => s.name === opts.baseline) : servers.filter((s) => s.role === 'subject');
  if (subjects.length === 0) subjects = [servers[0]!];
  const subjectNames = new Set(subjects.map((s) => s.name));
  const ratios: Array<{ profile: string; subject: string; peer: string; mbpsRatio: number }> = [];

  const rows: string[][] = [['profile', 'server', 'MB/s', 'IOPS', 'p50 ms', 'p99 ms', 'ratio (MB/s)']];
  for (const profile of opts.profiles) {
    servers.forEach((s, i) => {
      const m = cells.find((c) => c.profile === profile.name && c.server === s.name)?.median;
      if (!m) return;
      let ratioText = '';
      if (subjectNames.has(s.name)) {
        const parts: string[] = [];
        for (const peer of servers) {
          if (peer.name === s.name || subjectNames.has(peer.name)) continue;
          const pm = cells.find((c) => c.profile === profile.name && c.server === peer.name)?.median;
          if (!pm) continue;
          const r = m.mbps / pm.mbps;
          ratios.push({ profile: profile.name, subject: s.name, peer: peer.name, mbpsRatio: r });
          parts.push(`${s.name}/${peer.name} ${fmtRatio(r)}`);
        }
        ratioText = parts.join('  ');
      }
      rows.push([i === 0 ? profile.name : '', s.name, fmtNum(m.mbps), fmtNum(m.iops), fmtNum(m.clatP50Ms), fmtNum(m.clatP99Ms), ratioText]);
    });
  }
  console.log(table(rows, new Set([2, 3, 4, 5])));
  for (const c of cells) {
    if (c.settleSeconds?.length) {
      console.log(
        `${c.server} ${c.profile}: the backup manager applied the run's backlog ${fmtNum(median(c.settleSeconds))} s after fio stopped (median)`,
      );
    }
  }

  if (opts.json) {
    const doc = {
      tool: 'rewind tools/bench-fio',
      date: new Date().toISOString(),
      versions,
      host: { os: `${os.type()} ${os.release()}`, cpus: cpu.length, cpuModel: cpu[0]?.model.trim(), memBytes: os.totalmem() },
      config: {
        sizeBytes: opts.size,
        runtimeSeconds: opts.runtime,
        rampSeconds: opts.ramp,
        repeat: opts.repeat,
        jobs: opts.jobs,
        profiles: opts.profiles,
        servers: servers.map((s) => ({
          name: s.name,
          role: s.role,
          command: live.get(s.name)!.handle?.commandLine ?? null,
          uri: live.get(s.name)!.uri,
        })),
      },
      results: cells,
      ratios,
    };
    fs.mkdirSync(path.dirname(opts.json), { recursive: true });
    fs.writeFileSync(opts.json, JSON.stringify(doc, null, 2) + '\n');
    log(`results written to ${opts.json}`);
  }
  return 0;
}

main()
  .catch((e: unknown) => {
    if (!interrupted) {
      process.stderr.write(`${midLine ? '\n' : ''}bench-fio: error: ${e instanceof Error ? e.message : String(e)}\n`);
    }
    return interrupted ? 130 : 1;
  })
  .then(async (code) => {
    await runCleanups();
    process.exit(code);
  });
