/**
 * Start a long-running TCP server as a child process and wait until it
 * accepts connections; stop it again. Used by the benchmark and by tests.
 *
 *   const srv = await startServer({
 *     name: 'nbdkit',
 *     command: 'nbdkit',
 *     args: (port) => ['--foreground', '-i', '127.0.0.1', '-p', String(port), 'file', img],
 *   });
 *   ... nbd://127.0.0.1:${srv.port}/ ...
 *   await srv.stop();
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { onCleanup, type CleanupHandle } from './cleanup';
import { freePort, waitForPort } from './net';
import { describeExit, stopProcess, TailBuffer, waitForExit, type ExitStatus } from './process';

export interface StartServerOptions {
  /** Label for messages (default: the command). */
  name?: string;
  command: string;
  /** Arguments; a function receives the port (chosen by freePort unless `port` is given). */
  args: string[] | ((port: number) => string[]);
  host?: string;
  /** Fixed port. When omitted a free port is picked, and a start that fails
   *  with "address in use" is retried on a new port. */
  port?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the port to accept connections (default 30 s). */
  readyTimeoutMs?: number;
  /** Extra readiness check run after the port accepts connections. */
  ready?: (srv: ServerHandle) => Promise<void>;
  /** Signal for stop() (default SIGTERM) and grace period before SIGKILL (default 10 s). */
  stopSignal?: NodeJS.Signals;
  stopTimeoutMs?: number;
  /** 'capture' (default) keeps the last 64 KiB of output for error messages;
   *  'inherit' passes it through to this process's stdout/stderr. */
  output?: 'capture' | 'inherit';
  /** Attempts when the port was chosen automatically (default 3). */
  attempts?: number;
}

export interface ServerHandle {
  name: string;
  host: string;
  port: number;
  pid: number;
  child: ChildProcess;
  /** Command line, for logs. */
  commandLine: string;
  /** Recent stdout+stderr (empty with output: 'inherit'). */
  output(): string;
  /** Resolves when the process exits, however that happens. */
  exited: Promise<ExitStatus>;
  /** True while the process runs. */
  running(): boolean;
  /** Stop the server (idempotent). Resolves with its exit status. */
  stop(): Promise<ExitStatus>;
}

const ADDR_IN_USE = /address already in use|EADDRINUSE|cannot bind|Failed to bind|bind: /i;

/** Spawn the server and wait until it accepts TCP connections on host:port. */
export async function startServer(opts: StartServerOptions): Promise<ServerHandle> {
  const attempts = opts.port === undefined ? Math.max(1, opts.attempts ?? 3) : 1;
  let lastError: Error | undefined;
  for (let i = 0; i < attempts; i++) {
    const port = opts.port ?? (await freePort(opts.host ?? '127.0.0.1'));
    try {
      return await startOnce(opts, port);
    } catch (e) {
      lastError = e as Error;
      if (!(e as { addressInUse?: boolean }).addressInUse) throw e;
    }
  }
  throw lastError ?? new Error('startServer: no attempt made');
}

async function startOnce(opts: StartServerOptions, port: number): Promise<ServerHandle> {
  const host = opts.host ?? '127.0.0.1';
  const name = opts.name ?? opts.command;
  const args = typeof opts.args === 'function' ? opts.args(port) : opts.args;
  const commandLine = [opts.command, ...args].join(' ');
  const inherit = opts.output === 'inherit';
  const spawnOpts: SpawnOptions = { stdio: inherit ? ['ignore', 'inherit', 'inherit'] : ['ignore', 'pipe', 'pipe'] };
  if (opts.cwd) spawnOpts.cwd = opts.cwd;
  if (opts.env) spawnOpts.env = opts.env;

  const child = spawn(opts.command, args, spawnOpts);
  const tail = new TailBuffer(64 * 1024);
  child.stdout?.on('data', (c: Buffer) => tail.push(c));
  child.stderr?.on('data', (c: Buffer) => tail.push(c));
  let spawnError: Error | null = null;
  child.on('error', (e) => {
    spawnError = e;
  });
  const exited = waitForExit(child);
  let exitStatus: ExitStatus | null = null;
  void exited.then((s) => {
    exitStatus = s;
  });

  let stopping: Promise<ExitStatus> | null = null;
  let cleanup: CleanupHandle | null = null;
  const stop = (): Promise<ExitStatus> => {
    if (!stopping) {
      stopping = stopProcess(child, {
        signal: opts.stopSignal ?? 'SIGTERM',
        timeoutMs: opts.stopTimeoutMs ?? 10_000,
      }).finally(() => cleanup?.unregister());
    }
    return stopping;
  };
  cleanup = onCleanup(
    `${name} (pid ${child.pid})`,
    async () => void (await stop()),
    () => void child.kill('SIGKILL'),
  );

  const handle: ServerHandle = {
    name,
    host,
    port,
    pid: child.pid ?? -1,
    child,
    commandLine,
    output: () => tail.toString(),
    exited,
    running: () => child.exitCode === null && child.signalCode === null && child.pid !== undefined,
    stop,
  };

  try {
    await waitForPort(port, {
      host,
      timeoutMs: opts.readyTimeoutMs ?? 30_000,
      abortIf: () => {
        if (spawnError) return `cannot start ${name} (${opts.command}): ${(spawnError as Error).message}`;
        if (exitStatus) return `${name} exited during startup (${describeExit(exitStatus)})`;
        return null;
      },
    });
    if (opts.ready) await opts.ready(handle);
  } catch (e) {
    await stop();
    // let pending stderr data arrive before quoting it
    await new Promise((r) => setImmediate(r));
    const out = tail.toString().trimEnd().split('\n').slice(-20).join('\n');
    const err = new Error(`${(e as Error).message}\n  command: ${commandLine}` + (out ? `\n  output:\n${out.replace(/^/gm, '    ')}` : ''));
    if (ADDR_IN_USE.test(out)) (err as Error & { addressInUse?: boolean }).addressInUse = true;
    throw err;
  }
  return handle;
}
