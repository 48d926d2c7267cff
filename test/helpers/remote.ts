/**
 * Test helper for the two-role mode: two network namespaces joined by a
 * veth pair, and `rewind serve` daemons run inside them.
 *
 *   const net = await makeNetns('a');          // intercept side 10.231.N.1, manager side 10.231.N.2
 *   const m = await RoleDaemon.start({ ns: net.managerNs, args: ['--role', 'manager', '--listen', `${net.managerAddr}:10810`, ...] });
 *   const i = await RoleDaemon.start({ ns: net.interceptNs, args: ['--role', 'intercept', '--manager', `${net.managerAddr}:10810`, ...] });
 *   await net.linkDown(); await net.linkUp();  // the cable
 *   await i.cli(['status', 'pv', '--json'])
 *
 * The control API and the NBD Unix socket are paths in the file system,
 * which network namespaces do not separate: the test (in the root
 * namespace) drives both daemons through them, and NBD clients reach the
 * intercept through its Unix socket. The link itself crosses the veth.
 * Needs root and `ip`; a missing tool fails loudly.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControlClient } from '../../src/control/client';
import { REPO_ROOT, REWIND_BIN, cleanEnv, run, runRewind, sleep, type RunResult } from './daemon';

export const LINK_PORT = 10810;

let nsCounter = 0;

export interface Netns {
  interceptNs: string;
  managerNs: string;
  interceptAddr: string;
  managerAddr: string;
  linkDown(): Promise<void>;
  linkUp(): Promise<void>;
  cleanup(): Promise<void>;
}

async function ip(args: string[]): Promise<RunResult> {
  const r = await run('ip', args);
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')} failed: ${r.stderr}`);
  return r;
}

/** Two namespaces joined by a veth pair (names unique per process and call). */
export async function makeNetns(tag: string): Promise<Netns> {
  if (process.getuid?.() !== 0) throw new Error('network namespaces need root');
  const n = (process.pid % 200) + 10 + nsCounter++;
  const id = `${tag}${process.pid % 10000}${nsCounter}`;
  const iNs = `rwi-${id}`;
  const mNs = `rwm-${id}`;
  const vi = `vi${id}`.slice(0, 15);
  const vm = `vm${id}`.slice(0, 15);
  const subnet = `10.231.${n % 250}`;
  await ip(['netns', 'add', iNs]);
  await ip(['netns', 'add', mNs]);
  await ip(['link', 'add', vi, 'type', 'veth', 'peer', 'name', vm]);
  await ip(['link', 'set', vi, 'netns', iNs]);
  await ip(['link', 'set', vm, 'netns', mNs]);
  await ip(['-n', iNs, 'addr', 'add', `${subnet}.1/24`, 'dev', vi]);
  await ip(['-n', mNs, 'addr', 'add', `${subnet}.2/24`, 'dev', vm]);
  for (const [ns, dev] of [
    [iNs, vi],
    [mNs, vm],
  ] as const) {
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    await ip(['-n', ns, 'link', 'set', dev, 'up']);
  }
  return {
    interceptNs: iNs,
    managerNs: mNs,
    interceptAddr: `${subnet}.1`,
    managerAddr: `${subnet}.2`,
    linkDown: async () => {
      await ip(['-n', iNs, 'link', 'set', vi, 'down']);
    },
    linkUp: async () => {
      await ip(['-n', iNs, 'link', 'set', vi, 'up']);
    },
    cleanup: async () => {
      await run('ip', ['netns', 'del', iNs]);
      await run('ip', ['netns', 'del', mNs]);
    },
  };
}

export interface RoleDaemonOptions {
  /** Run inside this network namespace (null: the root namespace). */
  ns: string | null;
  args: string[];
  dataDir?: string;
  logLevel?: string;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

/** A `rewind serve` child (any role) in a network namespace. */
export class RoleDaemon {
  readonly dataDir: string;
  private child: ChildProcess | null = null;
  private exited: Promise<void> | null = null;
  logs = '';
  /** How the last process ended (null while one runs or before any ended). */
  lastExit: { code: number | null; signal: NodeJS.Signals | null } | null = null;

  private constructor(private readonly opts: RoleDaemonOptions) {
    this.dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rwr-'));
  }

  static async start(opts: RoleDaemonOptions): Promise<RoleDaemon> {
    const d = new RoleDaemon(opts);
    await d.startProcess();
    return d;
  }

  get controlSocket(): string {
    return path.join(this.dataDir, 'control.sock');
  }

  get nbdSocket(): string {
    return path.join(this.dataDir, 'nbd.sock');
  }

  nbdUnixUri(name: string): string {
    return `nbd+unix:///${name}?socket=${this.nbdSocket}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async startProcess(): Promise<void> {
    const serve = [REWIND_BIN, 'serve', '--data-dir', this.dataDir, '--log-level', this.opts.logLevel ?? 'info', ...this.opts.args];
    const cmd = this.opts.ns ? 'ip' : process.execPath;
    const args = this.opts.ns ? ['netns', 'exec', this.opts.ns, process.execPath, ...serve] : serve;
    const child = spawn(cmd, args, { cwd: REPO_ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.lastExit = null;
    running.add(child);
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (this.logs += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.logs += s));
    this.exited = new Promise<void>((resolve) =>
      child.on('close', (code, signal) => {
        this.lastExit = { code, signal };
        running.delete(child);
        resolve();
      }),
    );
    const deadline = Date.now() + 120_000;
    const client = new ControlClient({ kind: 'unix', path: this.controlSocket, display: this.controlSocket } as never, { timeoutMs: 2000 });
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`rewind serve exited at start:\n${this.logs}`);
      try {
        const h = await client.request<{ pid: number; recovering?: string[] }>('GET', '/v1/health');
        if (h.pid === child.pid && (h.recovering?.length ?? 0) === 0) return;
      } catch {
        /* not yet */
      }
      if (Date.now() > deadline) throw new Error(`rewind serve did not become ready:\n${this.logs}`);
      await sleep(100);
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.child) return;
    this.child.kill(signal);
    await this.exited;
    this.child = null;
  }

  async restart(): Promise<void> {
    await this.kill();
    await this.startProcess();
  }

  /** `rewind --data-dir DIR ARGS` (control through the Unix socket). */
  async cli(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    return runRewind(['--data-dir', this.dataDir, ...args], { timeoutMs });
  }

  async cliOk(args: string[], timeoutMs = 120_000): Promise<string> {
    const r = await this.cli(args, timeoutMs);
    if (r.code !== 0) throw new Error(`rewind ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  async json<T = Record<string, unknown>>(args: string[]): Promise<T> {
    return JSON.parse(await this.cliOk([...args, '--json'])) as T;
  }

  async cleanup(): Promise<void> {
    await this.kill('SIGKILL');
    if (process.env.REWIND_TEST_KEEP) {
      fs.writeFileSync(path.join(this.dataDir, 'test-daemon.log'), this.logs);
      console.error(`kept ${this.dataDir}`);
      return;
    }
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Polls `fn` until it returns a truthy value or the time runs out. */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | null | undefined | false>,
  timeoutMs = 60_000,
  everyMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(everyMs);
  }
}

export function writeSecret(dir: string, text = 'correct horse battery staple 0123456789'): string {
  fs.mkdirSync(dir, { recursive: true });
  const f = path.join(dir, `secret-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(f, text, { mode: 0o600 });
  return f;
}

export interface Pair {
  net: Netns;
  m: RoleDaemon;
  i: RoleDaemon;
  secret: string;
}

/** A manager and an intercept in two namespaces joined by a veth pair (torn down with the test). */
export async function startPair(
  t: { teardown(fn: () => Promise<void> | void): void },
  tag: string,
  extra: { i?: string[]; m?: string[] } = {},
): Promise<Pair> {
  const net = await makeNetns(tag);
  t.teardown(() => net.cleanup());
  const secret = writeSecret(os.tmpdir());
  t.teardown(() => fs.rmSync(secret, { force: true }));
  const m = await RoleDaemon.start({
    ns: net.managerNs,
    args: ['--role', 'manager', '--listen', `${net.managerAddr}:${LINK_PORT}`, '--link-secret-file', secret, ...(extra.m ?? [])],
  });
  t.teardown(() => m.cleanup());
  const i = await RoleDaemon.start({
    ns: net.interceptNs,
    args: [
      '--role',
      'intercept',
      '--manager',
      `${net.managerAddr}:${LINK_PORT}`,
      '--link-secret-file',
      secret,
      '--listen',
      'none',
      '--no-default-volume',
      ...(extra.i ?? []),
    ],
  });
  t.teardown(() => i.cleanup());
  return { net, m, i, secret };
}

/** `rewind status VOL --json` as the tests read it (either role). */
export interface VolStatus {
  state: string;
  lastSeq: number;
  appliedSeq: number;
  dirtyRegions: number;
  degraded: { since: string; reason: string } | null;
  lag: { writes: number; seconds: number };
  link: { state: string; bytesSent?: number; bytesReceived?: number; queued: number; poolBytes: number | null; poolLimit: number | null };
  resync: unknown;
}

/** Waits until the intercept is normal and the manager has applied its last write. */
export async function caughtUp(p: Pair, vol: string, timeoutMs = 120_000): Promise<VolStatus> {
  await p.i.cliOk(['seal', vol]).catch(() => undefined);
  return waitFor(
    'the manager to catch up',
    async () => {
      const si = await p.i.json<VolStatus>(['status', vol]);
      const sm = await p.m.json<VolStatus>(['status', vol]);
      return si.state === 'normal' && si.link.state === 'up' && sm.appliedSeq === si.lastSeq && si.dirtyRegions === 0 ? si : null;
    },
    timeoutMs,
    500,
  );
}
