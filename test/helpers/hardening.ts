/** Small helpers shared by the hardening tests (TLS, ACL, stdio, limits, faults). */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { haveCommand, run, type TestDaemon } from './daemon';

export const MiB = 1024 * 1024;
/** Debian's python3 with the libnbd bindings (the pyenv one on PATH has none). */
export const PYTHON = '/usr/bin/python3';

/** Throws (never skips) when a tool is missing. */
export function need(...cmds: string[]): void {
  const missing = cmds.filter((c) => (path.isAbsolute(c) ? !fs.existsSync(c) : !haveCommand(c)));
  if (missing.length) throw new Error(`required tools missing: ${missing.join(', ')} (run tools/install-system-deps.sh)`);
}

/** Runs a command that must succeed; returns its stdout. */
export async function ok(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

/** Runs a command that must fail; returns its combined output. */
export async function fails(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code === 0) throw new Error(`${cmd} ${args.join(' ')} succeeded but should have failed\nstdout: ${r.stdout}`);
  return r.stdout + r.stderr;
}

export function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

export function sha256File(p: string): string {
  return sha256(fs.readFileSync(p));
}

/** A file of `size` random bytes; returns its bytes. */
export function randomFile(p: string, size: number): Buffer {
  const b = crypto.randomBytes(size);
  fs.writeFileSync(p, b);
  return b;
}

export async function createVolume(d: TestDaemon, name: string, size: string, ...extra: string[]): Promise<void> {
  const r = await d.cli(['volume', 'create', name, '--size', size, ...extra]);
  if (r.code !== 0) throw new Error(`volume create ${name} failed: ${r.stderr}`);
}

/** Runs a python3-libnbd script; argv after the script name are `args`. */
export async function python(
  script: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  need(PYTHON);
  return run(PYTHON, ['-c', script, ...args], { timeoutMs });
}

/** Resident set size of a process, bytes (from /proc). */
export function rssOf(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}
