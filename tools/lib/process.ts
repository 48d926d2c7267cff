/** Child-process helpers: locate executables, run commands, stop children. */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { onCleanup } from './cleanup';

/** Absolute path of `name` on PATH (or `name` itself if it contains a slash and is executable), else null. */
export function findExecutable(name: string): string | null {
  const isExec = (p: string) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (name.includes('/')) return isExec(name) ? path.resolve(name) : null;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    if (isExec(p)) return p;
  }
  return null;
}

/** Throw one error naming every missing executable, with an install hint. */
export function requireExecutables(names: string[], hint?: string): void {
  const missing = names.filter((n) => !findExecutable(n));
  if (missing.length > 0) {
    throw new Error(
      `required program${missing.length > 1 ? 's' : ''} not found on PATH: ${missing.join(', ')}` + (hint ? `\n${hint}` : ''),
    );
  }
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export function describeExit(s: ExitStatus): string {
  return s.signal ? `killed by ${s.signal}` : `exit code ${s.code}`;
}

/** Resolves when the child has exited (immediately if it already has). */
export function waitForExit(child: ChildProcess): Promise<ExitStatus> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    // spawn failure (ENOENT) emits 'error' and possibly never 'exit'
    child.once('error', () => {
      if (child.exitCode === null && child.signalCode === null && child.pid === undefined) {
        resolve({ code: null, signal: null });
      }
    });
  });
}

/**
 * Stop a child: send `signal` (default SIGTERM), wait up to `timeoutMs`
 * (default 10 s), then SIGKILL. Resolves with the exit status.
 */
export async function stopProcess(child: ChildProcess, opts: { signal?: NodeJS.Signals; timeoutMs?: number } = {}): Promise<ExitStatus> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
    return waitForExit(child);
  }
  const exited = waitForExit(child);
  child.kill(opts.signal ?? 'SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((r) => {
    timer = setTimeout(() => r('timeout'), opts.timeoutMs ?? 10_000);
  });
  const first = await Promise.race([exited, timedOut]);
  clearTimeout(timer);
  if (first !== 'timeout') return first;
  child.kill('SIGKILL');
  return exited;
}

/** Keeps the last `limit` characters of a stream. */
export class TailBuffer {
  private text = '';
  constructor(private readonly limit = 64 * 1024) {}
  push(chunk: Buffer | string): void {
    this.text += chunk.toString();
    if (this.text.length > this.limit * 2) this.text = this.text.slice(-this.limit);
  }
  toString(): string {
    return this.text.length > this.limit ? this.text.slice(-this.limit) : this.text;
  }
  /** Last `n` lines, for error messages. */
  lastLines(n = 20): string {
    return this.toString().trimEnd().split('\n').slice(-n).join('\n');
  }
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the command (SIGTERM, then SIGKILL after 5 s) after this long. */
  timeoutMs?: number;
  /** Reject when the command exits non-zero (default true). */
  check?: boolean;
  /** Max characters of stdout/stderr kept (default 16 MiB / 64 KiB). */
  maxStdout?: number;
  maxStderr?: number;
}

export interface RunResult extends ExitStatus {
  stdout: string;
  stderr: string;
}

/**
 * Run a command to completion, capturing output. The child is registered for
 * cleanup while it runs, so a Ctrl-C in a tool stops it too.
 */
export function runCommand(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const spawnOpts: SpawnOptions = { stdio: ['ignore', 'pipe', 'pipe'] };
    if (opts.cwd) spawnOpts.cwd = opts.cwd;
    if (opts.env) spawnOpts.env = opts.env;
    const child = spawn(cmd, args, spawnOpts);
    const out = new TailBuffer(opts.maxStdout ?? 16 * 1024 * 1024);
    const err = new TailBuffer(opts.maxStderr ?? 64 * 1024);
    child.stdout?.on('data', (c: Buffer) => out.push(c));
    child.stderr?.on('data', (c: Buffer) => err.push(c));
    const cleanup = onCleanup(
      `${path.basename(cmd)} (pid ${child.pid})`,
      async () => void (await stopProcess(child, { timeoutMs: 5000 })),
      () => void child.kill('SIGKILL'),
    );
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        void stopProcess(child, { timeoutMs: 5000 });
      }, opts.timeoutMs);
    }
    let spawnError: Error | null = null;
    child.once('error', (e) => {
      spawnError = e;
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      cleanup.unregister();
      const res: RunResult = { code, signal, stdout: out.toString(), stderr: err.toString() };
      const what = [cmd, ...args].join(' ');
      if (spawnError) {
        reject(new Error(`cannot run ${cmd}: ${(spawnError as Error).message}`));
      } else if (timedOut) {
        reject(new Error(`timed out after ${opts.timeoutMs} ms: ${what}\n${err.lastLines()}`));
      } else if ((opts.check ?? true) && code !== 0) {
        reject(new Error(`command failed (${describeExit(res)}): ${what}\n${err.lastLines()}`));
      } else {
        resolve(res);
      }
    });
  });
}
