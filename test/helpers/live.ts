/**
 * Small helpers for acceptance tests against a live daemon (TestDaemon):
 * CLI and API calls that must succeed, whole-export reads, nbdfuse.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../../src/nbd/client';
import { run, sleep, type TestDaemon } from './daemon';

const CHUNK = 4 * 1024 * 1024;

/** `rewind ARGS` that must exit 0; its stdout. */
export async function cliOk(d: TestDaemon, args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await d.cli(args, { timeoutMs });
  if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A control API call that must succeed; its JSON body. */
export async function apiOk<T = any>(d: TestDaemon, method: string, p: string, body?: unknown): Promise<T> {
  const r = await d.api(method, p, body);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}

export async function readWhole(c: NbdClient, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  for (let off = 0; off < size; off += CHUNK) (await c.read(off, Math.min(CHUNK, size - off))).copy(out, off);
  return out;
}

/** The whole content of an export, over a fresh connection. */
export async function readExport(d: TestDaemon, name: string, size: number): Promise<Buffer> {
  const c = await NbdClient.connect({ port: d.nbdPort, exportName: name });
  try {
    return await readWhole(c, size);
  } finally {
    c.destroy();
  }
}

export function sha(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** Starts nbdfuse on an export (stopped at teardown) and returns the file that presents it. */
export async function fuseExport(
  t: { teardown(fn: () => unknown): void },
  uri: string,
  dir: string,
): Promise<{ dev: string; proc: ChildProcess }> {
  fs.mkdirSync(dir, { recursive: true });
  const proc = spawn('nbdfuse', [dir, uri], { stdio: 'ignore' });
  t.teardown(async () => {
    await run('fusermount3', ['-u', dir]);
    proc.kill('SIGKILL');
  });
  const dev = path.join(dir, 'nbd');
  for (let i = 0; i < 100 && !fs.existsSync(dev); i++) await sleep(100);
  if (!fs.existsSync(dev)) throw new Error(`nbdfuse did not present ${uri}`);
  return { dev, proc };
}
