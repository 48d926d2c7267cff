/**
 * Test helper: runs a real `rewind serve` child process on a temporary data
 * directory with free ports, waits until it is really serving, and stops it.
 *
 *   const d = await startDaemon();            // or startDaemon({ controlTcp: true, args: [...] })
 *   d.nbdUri('default')                        // nbd://127.0.0.1:PORT/default
 *   d.nbdUnixUri('default')                    // nbd+unix:///default?socket=DIR/nbd.sock
 *   await d.api('GET', '/v1/volumes')          // { status, body } over the control socket
 *   await d.cli(['volume', 'list'])            // { code, stdout, stderr } of `rewind --data-dir DIR ...`
 *   await d.kill('SIGKILL')                    // signal it and wait for the exit
 *   await d.restart()                          // stop (SIGTERM) and start again, same dir and ports
 *   await d.cleanup()                          // stop it and delete the data directory
 *
 * "Ready" means: the process is alive, the NBD TCP port and the control
 * socket (and the control TCP port, if any) accept connections, and
 * GET /v1/health on the control socket answers with this child's pid and
 * no volume still in crash recovery.
 * Ports come from the kernel (bind to port 0); if the daemon still loses a
 * race for one (EADDRINUSE) the helper retries with fresh ports.
 *
 * Every daemon still running when the test process exits is SIGKILLed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControlClient, type RawResponse } from '../../src/control/client';

/** Repository root (this file runs from dist/test/helpers/). */
export const REPO_ROOT = findRepoRoot();
export const REWIND_BIN = path.join(REPO_ROOT, 'bin', 'rewind');

function findRepoRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'bin', 'rewind')) && fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error(`cannot find the repository root (bin/rewind) above ${__dirname}`);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Environment for child processes, without REWIND_* settings of the caller. */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('REWIND_')) delete env[k];
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Runs `node bin/rewind ARGS` to completion. */
export function runRewind(
  args: string[],
  opts: { env?: Record<string, string | undefined>; cwd?: string; timeoutMs?: number; input?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [REWIND_BIN, ...args], {
      cwd: opts.cwd ?? REPO_ROOT,
      env: cleanEnv(opts.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`rewind ${args.join(' ')} timed out after ${opts.timeoutMs ?? 30_000} ms\n${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin!.end(opts.input ?? '');
  });
}

import { freePort } from '../../tools/lib/net';
export { freePort };

/** Resolves true if something accepts a connection at `where`. */
export function canConnect(where: { path: string } | { host: string; port: number }, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(where as net.NetConnectOpts);
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface DaemonOptions {
  /** Use this data directory (kept by cleanup()); default: a new temp dir (deleted by cleanup()). */
  dataDir?: string;
  /** Also serve the control API on TCP 127.0.0.1:<free port> (token required). */
  controlTcp?: boolean;
  /** Extra arguments for `rewind serve`. */
  args?: string[];
  /** Extra environment variables (undefined deletes one). */
  env?: Record<string, string | undefined>;
  /** Default "warn". */
  logLevel?: string;
  /** How long to wait for readiness (crash recovery included); default 120 s. */
  startTimeoutMs?: number;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of running) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export class TestDaemon {
  readonly dataDir: string;
  readonly host = '127.0.0.1';
  nbdPort = 0;
  controlPort: number | undefined;
  readonly nbdSocket: string;
  readonly controlSocket: string;
  private child: ChildProcess | null = null;
  private exitPromise: Promise<ExitStatus> | null = null;
  private lastExit: ExitStatus | null = null;
  private output = '';
  private readonly ownsDataDir: boolean;

  private constructor(
    dataDir: string,
    ownsDataDir: boolean,
    private readonly opts: DaemonOptions,
  ) {
    this.dataDir = dataDir;
    this.ownsDataDir = ownsDataDir;
    this.nbdSocket = path.join(dataDir, 'nbd.sock');
    this.controlSocket = path.join(dataDir, 'control.sock');
  }

  /** Starts a daemon and waits until it serves. */
  static async start(opts: DaemonOptions = {}): Promise<TestDaemon> {
    const owns = opts.dataDir === undefined;
    const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rwd-'));
    const d = new TestDaemon(dataDir, owns, opts);
    try {
      await d.startWithFreshPorts();
    } catch (err) {
      await d.cleanup();
      throw err;
    }
    return d;
  }

  /** pid of the running daemon, if any. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  get isRunning(): boolean {
    return this.child !== null && this.lastExit === null;
  }

  /** stdout+stderr of the current (or last) daemon process. */
  get logs(): string {
    return this.output;
  }

  /** The exit status of the current process, once it has exited. */
  get exited(): Promise<ExitStatus> {
    return this.exitPromise ?? Promise.resolve(this.lastExit ?? { code: null, signal: null });
  }

  /** nbd://127.0.0.1:PORT/NAME ("" for the default export). */
  nbdUri(exportName = ''): string {
    return `nbd://${this.host}:${this.nbdPort}/${exportName}`;
  }

  nbdUnixUri(exportName = ''): string {
    return `nbd+unix:///${exportName}?socket=${this.nbdSocket}`;
  }

  /** The daemon's TCP control bearer token. */
  token(): string {
    return fs.readFileSync(path.join(this.dataDir, 'control.token'), 'utf8').trim();
  }

  /** A control API client on the Unix socket. */
  client(): ControlClient {
    return new ControlClient({ kind: 'unix', path: this.controlSocket, display: `unix:${this.controlSocket}` });
  }

  /**
   * A control API client on TCP (needs controlTcp). The token defaults to the
   * real one; pass null for a client that sends none.
   */
  tcpClient(token: string | null = this.token(), timeoutMs?: number): ControlClient {
    if (this.controlPort === undefined) throw new Error('daemon was started without controlTcp');
    return new ControlClient(
      { kind: 'tcp', host: this.host, port: this.controlPort, display: `http://${this.host}:${this.controlPort}` },
      { ...(token === null ? {} : { token }), ...(timeoutMs ? { timeoutMs } : {}) },
    );
  }

  /** One request on the control socket; body is JSON-encoded unless a string. */
  async api(method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: any; raw: RawResponse }> {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const raw = await this.client().raw(method, urlPath, payload);
    let parsed: unknown;
    try {
      parsed = raw.text ? JSON.parse(raw.text) : undefined;
    } catch {
      parsed = raw.text;
    }
    return { status: raw.status, body: parsed, raw };
  }

  /** Runs `rewind --data-dir DIR ARGS`. */
  cli(args: string[], opts: { env?: Record<string, string | undefined>; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
    return runRewind(['--data-dir', this.dataDir, ...args], opts);
  }

  /** Sends `signal` and waits for the process to exit. */
  async kill(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<ExitStatus> {
    const child = this.child;
    if (!child || this.lastExit) return this.lastExit ?? { code: null, signal: null };
    child.kill(signal);
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
    const result = await Promise.race([this.exitPromise!, timer]);
    if (result === 'timeout') {
      child.kill('SIGKILL');
      const status = await this.exitPromise!;
      throw new Error(`daemon did not exit within ${timeoutMs} ms of ${signal} (SIGKILLed: ${JSON.stringify(status)})\n${this.output}`);
    }
    return result;
  }

  /** Graceful stop (SIGTERM); resolves with the exit status. */
  stop(): Promise<ExitStatus> {
    return this.kill('SIGTERM');
  }

  /** Stops the daemon (if running) and starts it again on the same data dir and ports. */
  async restart(): Promise<void> {
    if (this.isRunning) await this.stop();
    await this.launchAndWait();
  }

  /** Stops the daemon (SIGKILL if SIGTERM does not work) and deletes a temp data dir. */
  async cleanup(): Promise<void> {
    if (this.isRunning) {
      try {
        await this.kill('SIGTERM', 10_000);
      } catch {
        // it was SIGKILLed
      }
    }
    if (this.ownsDataDir) fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  private async startWithFreshPorts(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      this.nbdPort = await freePort();
      this.controlPort = this.opts.controlTcp ? await freePort() : undefined;
      try {
        await this.launchAndWait();
        return;
      } catch (err) {
        if (attempt < 4 && /EADDRINUSE/.test(this.output) && !this.isRunning) continue;
        throw err;
      }
    }
  }

  private serveArgs(): string[] {
    const args = [
      REWIND_BIN,
      'serve',
      '--data-dir',
      this.dataDir,
      '--listen',
      `${this.host}:${this.nbdPort}`,
      '--socket',
      this.nbdSocket,
      '--log-level',
      this.opts.logLevel ?? 'warn',
    ];
    if (this.controlPort !== undefined) args.push('--control', `${this.host}:${this.controlPort}`);
    args.push(...(this.opts.args ?? []));
    return args;
  }

  private async launchAndWait(): Promise<void> {
    installExitHook();
    this.output = '';
    this.lastExit = null;
    const child = spawn(process.execPath, this.serveArgs(), {
      cwd: REPO_ROOT,
      env: cleanEnv(this.opts.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    running.add(child);
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (this.output += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.output += s));
    this.exitPromise = new Promise<ExitStatus>((resolve) => {
      child.on('exit', (code, signal) => {
        running.delete(child);
        // Let the pipes drain so `logs` is complete.
        setImmediate(() => {
          this.lastExit = { code, signal };
          resolve(this.lastExit);
        });
      });
      child.on('error', (err) => {
        running.delete(child);
        this.output += `spawn error: ${err.message}\n`;
        this.lastExit = { code: null, signal: null };
        resolve(this.lastExit);
      });
    });
    await this.waitReady(this.opts.startTimeoutMs ?? 120_000);
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const exitedEarly = () => this.lastExit !== null;
    for (;;) {
      if (exitedEarly()) {
        throw new Error(`rewind serve exited before it was ready (${JSON.stringify(this.lastExit)}):\n${this.output}`);
      }
      if (Date.now() > deadline) {
        this.child?.kill('SIGKILL');
        await this.exitPromise;
        throw new Error(`rewind serve was not ready within ${timeoutMs} ms:\n${this.output}`);
      }
      if (await this.isReady()) return;
      await sleep(50);
    }
  }

  private async isReady(): Promise<boolean> {
    if (!(await canConnect({ host: this.host, port: this.nbdPort }))) return false;
    if (!(await canConnect({ path: this.controlSocket }))) return false;
    if (this.controlPort !== undefined && !(await canConnect({ host: this.host, port: this.controlPort }))) return false;
    try {
      const res = await this.client().raw('GET', '/v1/health');
      if (res.status !== 200) return false;
      const h = JSON.parse(res.text) as { pid?: number; recovering?: string[] };
      // After an unclean stop, volumes recover in the background: ready once none is left.
      return h.pid === this.child?.pid && (h.recovering?.length ?? 0) === 0;
    } catch {
      return false;
    }
  }
}

/** Shorthand for TestDaemon.start. */
export function startDaemon(opts: DaemonOptions = {}): Promise<TestDaemon> {
  return TestDaemon.start(opts);
}

/** A new empty temp directory (the caller removes it). */
export function tempDir(prefix = 'rwt-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Runs any program to completion (for nbdinfo, qemu-io, ...). */
export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** True if `cmd` is on PATH (e.g. nbdinfo, qemu-io). */
export function haveCommand(cmd: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => dir !== '' && fs.existsSync(path.join(dir, cmd)));
}
