/**
 * The VM test rig's runner: boots the guest that vm-images/build.sh builds
 * under qemu, with any Rewind export (a volume, a snapshot, a clone) as its
 * virtio disk(s), runs one scenario of vm-images/scenarios in it, and returns
 * what the guest reported on its serial console.
 *
 *   node dist/tools/vm-run.js --disk 'nbd+unix:///vol?socket=DATA_DIR/nbd.sock' \
 *        --scenario write-tree --arg seed=7 [--accel tcg] [--timeout 180] [--json]
 *
 * The guest's protocol on the serial console (ttyS0), one line each:
 *   REWIND-BOOT kernel=... uptime=SECONDS disks=vda scenario=NAME
 *   REWIND-RESULT key=value [key=value ...]
 *   REWIND-SYNCED n=N                (writer: files 1..N were synced)
 *   REWIND-SCENARIO-EXIT N           (last; then the guest powers off)
 *
 * The same functions are the library behind test/helpers/vm.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { onCleanup, findExecutable, type ExitStatus } from './lib';

export const REPO_ROOT = findRepoRoot();
export const BUILD_SCRIPT = path.join(REPO_ROOT, 'vm-images', 'build.sh');

function findRepoRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'vm-images')) && fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error(`cannot find the repository root (vm-images/) above ${__dirname}`);
}

// ------------------------------------------------------------------ image

export interface GuestManifest {
  format: number;
  key: string;
  arch: string;
  kernel: { file: string; sha256: string; release: string; package: string };
  initrd: { file: string; sha256: string; bytes: number };
  cmdline: string;
  modules: string[];
  builtinModules: string[];
  programs: string[];
  libraries: string[];
  scenarios: string[];
  sourceDateEpoch: number;
  packages: Array<{ name: string; version: string; deb: string; sha256: string }>;
}

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  manifest: GuestManifest;
}

/** Reads an image directory written by vm-images/build.sh. */
export function loadGuestImage(dir: string): GuestImage {
  const manifestPath = path.join(dir, 'manifest.json');
  if (!fs.existsSync(manifestPath)) throw new Error(`${dir} is not a guest image (no manifest.json); run vm-images/build.sh`);
  const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as GuestManifest;
  const kernel = path.join(dir, manifest.kernel.file);
  const initrd = path.join(dir, manifest.initrd.file);
  for (const f of [kernel, initrd]) if (!fs.existsSync(f)) throw new Error(`guest image ${dir} lacks ${path.basename(f)}`);
  return { dir, kernel, initrd, manifest };
}

export interface BuildOptions {
  /** Rebuild even if a cached image matches the inputs. */
  force?: boolean;
  /** Cache directory (default $REWIND_VM_CACHE, else ~/.cache/rewind-vm). */
  cacheDir?: string;
  /** Build progress lines (the script's stderr). */
  onLog?: (line: string) => void;
  timeoutMs?: number;
}

/**
 * Builds the guest image (or finds it in the cache) with vm-images/build.sh.
 * With $REWIND_VM_IMAGE set, that directory is used as is.
 */
export function buildGuestImage(opts: BuildOptions = {}): Promise<GuestImage> {
  const preset = process.env.REWIND_VM_IMAGE;
  if (preset && !opts.force) return Promise.resolve(loadGuestImage(preset));
  const missing = ['bash', 'apt-get', 'apt-cache', 'dpkg-deb', 'cpio', 'gzip', 'flock'].filter((t) => !findExecutable(t));
  if (missing.length > 0) {
    return Promise.reject(
      new Error(`cannot build the VM guest: missing ${missing.join(', ')} (Debian: sudo bash tools/install-system-deps.sh)`),
    );
  }
  return new Promise((resolve, reject) => {
    const args = [BUILD_SCRIPT];
    if (opts.force) args.push('--force');
    if (opts.cacheDir) args.push('--cache', opts.cacheDir);
    const child = spawn('bash', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    let pending = '';
    child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
      pending += s;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const l of lines) opts.onLog?.(l);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) {
        reject(
          new Error(`vm-images/build.sh failed (${signal ?? `exit ${code}`}):\n${stderr.trimEnd().split('\n').slice(-30).join('\n')}`),
        );
        return;
      }
      const dir = stdout.trim().split('\n').pop() ?? '';
      try {
        resolve(loadGuestImage(dir));
      } catch (err) {
        reject(err);
      }
    });
  });
}

// ------------------------------------------------------------------ running

/** A data disk: a Unix-socket NBD export, any URI qemu accepts (nbd://, nbd+unix://), or a local file. */
export type GuestDisk =
  | { socket: string; exportName: string; readOnly?: boolean }
  | { uri: string; readOnly?: boolean }
  | { file: string; format?: string; readOnly?: boolean };

export interface KillOn {
  /** A serial line that triggers the kill. */
  match: RegExp | ((line: string) => boolean);
  /** Wait this long after the match (default 0). */
  delayMs?: number;
  /** Default SIGKILL. */
  signal?: NodeJS.Signals;
}

export interface GuestOptions {
  image: GuestImage;
  /** In order: the guest sees them as /dev/vda, /dev/vdb, ... */
  disks: GuestDisk[];
  /** A scenario of vm-images/scenarios (without .sh); "custom" with `script`. */
  scenario: string;
  /** Scenario arguments (rewind.args on the kernel command line): no spaces or commas in them. */
  args?: Record<string, string | number | boolean>;
  /** A host shell script to run instead of a library scenario (appended to the initramfs). */
  script?: string;
  /** Kill qemu after this long (default 180 s); the result then has timedOut. */
  timeoutMs?: number;
  /** qemu accelerator (default $REWIND_VM_ACCEL or "tcg"; "kvm" where it works). */
  accel?: string;
  /** Guest memory (default 384 MiB). */
  memoryMb?: number;
  cpus?: number;
  /** Also write the serial console to this file. */
  serialLog?: string;
  /** Copy the serial console to this stream (e.g. process.stdout). */
  echo?: NodeJS.WritableStream;
  /** Every serial line, as it arrives (\r stripped). */
  onLine?: (line: string, run: GuestRun) => void;
  /** Kill qemu (-9 by default) when a serial line matches: the crash test. */
  killOn?: KillOn;
  /** Extra kernel command-line words. */
  cmdline?: string;
  /** qemu binary (default $REWIND_QEMU or qemu-system-x86_64). */
  qemu?: string;
  extraQemuArgs?: string[];
}

export interface GuestResult {
  /** The scenario's exit status (REWIND-SCENARIO-EXIT); null if the guest never reported one. */
  exitCode: number | null;
  /** Every key=value of the REWIND-RESULT lines (a later value wins). */
  results: Record<string, string>;
  /** The last REWIND-SYNCED n=N seen, or null. */
  synced: number | null;
  /** The whole serial console output. */
  serial: string;
  /** qemu was killed by killOn or kill(). */
  killed: boolean;
  timedOut: boolean;
  /** How qemu ended. */
  qemu: ExitStatus;
  qemuStderr: string;
  /** Guest uptime when init started (REWIND-BOOT), seconds. */
  bootSeconds: number | null;
  /** Wall time from spawning qemu to its exit. */
  durationMs: number;
}

const ARG_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const ARG_VALUE = /^[A-Za-z0-9._:/+@%=-]*$/;

/** Escapes a value for qemu's comma-separated option syntax. */
function qemuEscape(v: string): string {
  return v.replace(/,/g, ',,');
}

/** The -drive option for one disk. */
export function driveOption(disk: GuestDisk): string {
  const ro = disk.readOnly ? ',readonly=on' : '';
  if ('socket' in disk) {
    return (
      `if=virtio,driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${qemuEscape(disk.socket)},` +
      `file.export=${qemuEscape(disk.exportName)}${ro}`
    );
  }
  if ('uri' in disk) return `if=virtio,format=raw,file=${qemuEscape(disk.uri)}${ro}`;
  return `if=virtio,format=${disk.format ?? 'raw'},file=${qemuEscape(disk.file)}${ro}`;
}

/** The kernel command line for a run. */
export function kernelCmdline(opts: Pick<GuestOptions, 'image' | 'scenario' | 'args' | 'disks' | 'cmdline'>): string {
  if (!/^[A-Za-z0-9._-]+$/.test(opts.scenario)) throw new Error(`bad scenario name: ${JSON.stringify(opts.scenario)}`);
  const words = [opts.image.manifest.cmdline, `rewind.scenario=${opts.scenario}`, `rewind.disks=${opts.disks.length}`];
  const args = Object.entries(opts.args ?? {}).map(([k, v]) => {
    const s = String(v);
    if (!ARG_KEY.test(k) || !ARG_VALUE.test(s)) throw new Error(`scenario argument ${k}=${s}: use letters, digits and ._:/+@%=- only`);
    return `${k}=${s}`;
  });
  if (args.length > 0) words.push(`rewind.args=${args.join(',')}`);
  if (opts.cmdline) words.push(opts.cmdline);
  const line = words.join(' ');
  if (line.length > 2000) throw new Error(`kernel command line too long (${line.length} bytes)`);
  return line;
}

/** The qemu command line (without the binary). */
export function qemuArgs(opts: GuestOptions, initrd: string): string[] {
  const accel = opts.accel ?? process.env.REWIND_VM_ACCEL ?? 'tcg';
  const args = [
    '-accel',
    accel,
    '-m',
    String(opts.memoryMb ?? 384),
    '-smp',
    String(opts.cpus ?? 1),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-chardev',
    'stdio,id=s0,signal=off',
    '-serial',
    'chardev:s0',
    '-kernel',
    opts.image.kernel,
    '-initrd',
    initrd,
    '-append',
    kernelCmdline(opts),
  ];
  if (accel === 'kvm') args.push('-cpu', 'host');
  for (const d of opts.disks) args.push('-drive', driveOption(d));
  args.push(...(opts.extraQemuArgs ?? []));
  return args;
}

/** A newc cpio archive (what the kernel unpacks as an initramfs) of a few files. */
export function cpioArchive(entries: Array<{ name: string; mode: number; data?: Buffer }>): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const add = (name: string, mode: number, data: Buffer) => {
    const nameBuf = Buffer.from(name + '\0');
    const fields = [ino++, mode, 0, 0, mode & 0o040000 ? 2 : 1, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0];
    const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'ascii');
    parts.push(header, nameBuf, pad4(header.length + nameBuf.length), data, pad4(data.length));
  };
  for (const e of entries) add(e.name, e.mode, e.data ?? Buffer.alloc(0));
  add('TRAILER!!!', 0, Buffer.alloc(0));
  const out = Buffer.concat(parts);
  return Buffer.concat([out, Buffer.alloc((512 - (out.length % 512)) % 512)]);
}

/** A running guest. */
export class GuestRun {
  readonly child: ChildProcess;
  readonly done: Promise<GuestResult>;
  /** Results reported so far. */
  readonly results: Record<string, string> = {};
  synced: number | null = null;
  exitCode: number | null = null;
  bootSeconds: number | null = null;
  private serial = '';
  private stderr = '';
  private killed = false;
  private timedOut = false;

  constructor(opts: GuestOptions) {
    const qemu = opts.qemu ?? process.env.REWIND_QEMU ?? 'qemu-system-x86_64';
    if (!findExecutable(qemu)) {
      throw new Error(`${qemu} not found: the VM test rig needs qemu (Debian: apt-get install qemu-system-x86)`);
    }
    if (opts.disks.length === 0) throw new Error('a guest needs at least one disk');
    let tmp: string | null = null;
    let initrd = opts.image.initrd;
    if (opts.script) {
      // The script goes in a second (uncompressed) cpio appended to the image's
      // initramfs: the kernel unpacks both, /rewind/scenario.sh over the base.
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-vm-'));
      initrd = path.join(tmp, 'initrd.img');
      fs.copyFileSync(opts.image.initrd, initrd);
      fs.appendFileSync(
        initrd,
        cpioArchive([
          { name: 'rewind', mode: 0o040755 },
          { name: 'rewind/scenario.sh', mode: 0o100755, data: fs.readFileSync(opts.script) },
        ]),
      );
    }
    const args = qemuArgs(opts, initrd);
    const logFd = opts.serialLog ? fs.openSync(opts.serialLog, 'w') : null;
    const started = Date.now();
    this.child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const child = this.child;
    const cleanup = onCleanup(
      `qemu (pid ${child.pid})`,
      () => void child.kill('SIGKILL'),
      () => void child.kill('SIGKILL'),
    );
    const timer = setTimeout(() => {
      this.timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 180_000);

    let pending = '';
    let killScheduled = false;
    const onLine = (raw: string) => {
      const line = raw.replace(/\r/g, '');
      this.parseLine(line);
      if (opts.killOn && !killScheduled) {
        const m = opts.killOn.match;
        if (typeof m === 'function' ? m(line) : m.test(line)) {
          killScheduled = true;
          const doKill = () => this.kill(opts.killOn!.signal ?? 'SIGKILL');
          if (opts.killOn.delayMs) setTimeout(doKill, opts.killOn.delayMs);
          else doKill();
        }
      }
      opts.onLine?.(line, this);
    };
    child.stdout!.on('data', (chunk: Buffer) => {
      const s = chunk.toString('utf8');
      this.serial += s;
      if (logFd !== null) fs.writeSync(logFd, chunk);
      opts.echo?.write(chunk);
      pending += s;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const l of lines) onLine(l);
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));

    this.done = new Promise<GuestResult>((resolve, reject) => {
      let spawnError: Error | null = null;
      child.once('error', (err) => (spawnError = err));
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        cleanup.unregister();
        if (pending) onLine(pending);
        if (logFd !== null) fs.closeSync(logFd);
        if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
        if (spawnError) {
          reject(new Error(`cannot run ${qemu}: ${(spawnError as Error).message}`));
          return;
        }
        resolve({
          exitCode: this.exitCode,
          results: { ...this.results },
          synced: this.synced,
          serial: this.serial,
          killed: this.killed,
          timedOut: this.timedOut,
          qemu: { code, signal },
          qemuStderr: this.stderr,
          bootSeconds: this.bootSeconds,
          durationMs: Date.now() - started,
        });
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Kills qemu (default SIGKILL: the guest gets no chance to flush anything). */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.killed = true;
    this.child.kill(signal);
  }

  private parseLine(line: string): void {
    let m: RegExpMatchArray | null;
    if ((m = line.match(/REWIND-RESULT (.*)$/))) {
      for (const kv of m[1]!.matchAll(/([A-Za-z0-9_.-]+)=(\S*)/g)) this.results[kv[1]!] = kv[2]!;
    } else if ((m = line.match(/REWIND-SYNCED n=(\d+)/))) {
      this.synced = Number(m[1]);
    } else if ((m = line.match(/REWIND-SCENARIO-EXIT (\d+)/))) {
      this.exitCode = Number(m[1]);
    } else if ((m = line.match(/REWIND-BOOT .*uptime=([\d.]+)/))) {
      this.bootSeconds = Number(m[1]);
    }
  }
}

/** Boots a guest and returns it while it runs (see GuestRun.done, GuestRun.kill). */
export function startGuest(opts: GuestOptions): GuestRun {
  return new GuestRun(opts);
}

/** Boots a guest, runs the scenario and resolves when qemu has exited. */
export function runGuest(opts: GuestOptions): Promise<GuestResult> {
  return startGuest(opts).done;
}

/** Parses a --disk argument: an NBD URI, unix:SOCKET:EXPORT, or a file path. */
export function parseDiskSpec(spec: string, readOnly = false): GuestDisk {
  const ro = readOnly ? { readOnly: true } : {};
  if (/^nbd(\+unix|\+tcp|s)?:\/\//.test(spec)) return { uri: spec, ...ro };
  const m = spec.match(/^unix:(.+):([^:]*)$/);
  if (m) return { socket: m[1]!, exportName: m[2]!, ...ro };
  if (fs.existsSync(spec)) return { file: spec, ...ro };
  throw new Error(
    `--disk ${spec}: expected nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH, unix:SOCKET:EXPORT or an existing file`,
  );
}

// ------------------------------------------------------------------ CLI

async function main(): Promise<number> {
  const disks: GuestDisk[] = [];
  const scenarioArgs: Record<string, string> = {};
  const program = new Command('vm-run')
    .description('boot the Rewind VM test rig guest on NBD exports and run one scenario')
    .option(
      '--disk <spec>',
      'data disk (repeatable, in order): nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH, unix:SOCKET:EXPORT or a file',
      (s: string) => {
        disks.push(parseDiskSpec(s));
        return s;
      },
    )
    .option('--ro-disk <spec>', 'a read-only data disk (repeatable)', (s: string) => {
      disks.push(parseDiskSpec(s, true));
      return s;
    })
    .option('--scenario <name>', 'scenario of vm-images/scenarios (boot, write-tree, verify-tree, damage, writer, verify-synced)', 'boot')
    .option('--arg <key=value>', 'scenario argument (repeatable)', (s: string) => {
      const i = s.indexOf('=');
      if (i <= 0) throw new Error(`--arg ${s}: expected key=value`);
      scenarioArgs[s.slice(0, i)] = s.slice(i + 1);
      return s;
    })
    .option('--script <file>', 'run this guest shell script instead of a library scenario')
    .option('--image <dir>', 'guest image directory (default: build or reuse with vm-images/build.sh)')
    .option('--build-only', 'build (or find) the guest image, print its directory and exit')
    .option('--accel <name>', 'qemu accelerator: tcg, or kvm where it works', process.env.REWIND_VM_ACCEL ?? 'tcg')
    .option('--memory <MiB>', 'guest memory', '384')
    .option('--timeout <s>', 'kill the guest after this many seconds', '180')
    .option('--kill-on <regex>', 'kill -9 qemu when a serial line matches (crash tests)')
    .option('--serial-log <file>', 'also write the serial console here')
    .option('--cmdline <words>', 'extra kernel command-line words')
    .option('--json', 'print the result as JSON (serial console not echoed)')
    .option('-q, --quiet', 'do not echo the serial console')
    .addHelpText('after', "\nExit status: the scenario's, 124 if the guest timed out, 125 if it stopped without reporting one.\n")
    .parse();
  const o = program.opts<{
    scenario: string;
    script?: string;
    image?: string;
    buildOnly?: boolean;
    accel: string;
    memory: string;
    timeout: string;
    killOn?: string;
    serialLog?: string;
    cmdline?: string;
    json?: boolean;
    quiet?: boolean;
  }>();
  const image = o.image ? loadGuestImage(o.image) : await buildGuestImage({ onLog: (l) => process.stderr.write(`${l}\n`) });
  if (o.buildOnly) {
    process.stdout.write(`${image.dir}\n`);
    return 0;
  }
  if (disks.length === 0) program.error('at least one --disk is needed');
  const opts: GuestOptions = {
    image,
    disks,
    scenario: o.script ? 'custom' : o.scenario,
    args: scenarioArgs,
    accel: o.accel,
    memoryMb: Number(o.memory),
    timeoutMs: Number(o.timeout) * 1000,
  };
  if (o.script) opts.script = o.script;
  if (o.serialLog) opts.serialLog = o.serialLog;
  if (o.cmdline) opts.cmdline = o.cmdline;
  if (o.killOn) opts.killOn = { match: new RegExp(o.killOn) };
  if (!o.json && !o.quiet) opts.echo = process.stdout;
  const res = await runGuest(opts);
  const status = res.exitCode ?? (res.timedOut ? 124 : 125);
  if (o.json) {
    const { serial, ...rest } = res;
    process.stdout.write(JSON.stringify({ ...rest, serialBytes: serial.length, image: image.dir }, null, 2) + '\n');
  } else {
    const how = res.timedOut
      ? 'timed out'
      : res.killed
        ? 'killed'
        : res.exitCode === null
          ? 'stopped without an exit status'
          : `exit ${res.exitCode}`;
    process.stderr.write(
      `vm-run: ${opts.scenario} ${how} in ${(res.durationMs / 1000).toFixed(1)} s` +
        (res.synced !== null ? `, last synced n=${res.synced}` : '') +
        `\n` +
        Object.entries(res.results)
          .map(([k, v]) => `  ${k}=${v}\n`)
          .join(''),
    );
    if (res.exitCode === null && res.qemuStderr) process.stderr.write(res.qemuStderr);
  }
  return status;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`vm-run: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(2);
    },
  );
}
