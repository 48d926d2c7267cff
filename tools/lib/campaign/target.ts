/**
 * What the crash campaign runs against: one `rewind serve` (single-process)
 * or an intercept and a manager in two network namespaces joined by a veth
 * pair (two-role, as test/remote.test.ts runs them). Every process is a
 * real child, and a kill is a real SIGKILL.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlClient } from '../../../src/control/client';
import { NbdClient } from '../../../src/nbd/client';
import { TestDaemon } from '../../../test/helpers/daemon';
import { LINK_PORT, RoleDaemon, makeNetns, writeSecret, type Netns } from '../../../test/helpers/remote';

export type Mode = 'single' | 'two-role';
export type Victim = 'daemon' | 'intercept' | 'manager';

export interface ApiResult {
  status: number;
  body: any;
}

/** One control API call on a Unix socket. */
export async function apiCall(socket: string, method: string, p: string, body?: unknown, timeoutMs = 120_000): Promise<ApiResult> {
  const c = new ControlClient({ kind: 'unix', path: socket, display: socket } as never, { timeoutMs });
  const raw = await c.raw(method, p, body === undefined ? undefined : JSON.stringify(body));
  let parsed: unknown = raw.text;
  try {
    parsed = raw.text ? JSON.parse(raw.text) : undefined;
  } catch {
    // not JSON: keep the text
  }
  return { status: raw.status, body: parsed };
}

export interface Target {
  readonly mode: Mode;
  readonly victims: Victim[];
  readonly dataDirs: string[];
  /** Control socket of the side that owns production (seal, status, restore). */
  readonly interceptSocket: string;
  /** Control socket of the side that holds history (points, views, markers, log, verify, retention). */
  readonly managerSocket: string;
  /** An NBD connection to production. */
  connect(): Promise<NbdClient>;
  /** An NBD connection to a view (snapshot or clone) served by the history side. */
  connectView(name: string): Promise<NbdClient>;
  ledgerUri(): string;
  kill(v: Victim): Promise<void>;
  /** Starts a killed process and waits until it serves (throws if it dies first). */
  start(v: Victim): Promise<void>;
  isRunning(v: Victim): boolean;
  linkCut?(down: boolean): Promise<void>;
  /** The processes' recent output, for a violation report. */
  logs(): string;
  /** Each process: running, or how it ended (a death nobody caused is a finding in itself). */
  processes(): Promise<Record<string, string>>;
  close(): Promise<void>;
}

class SingleTarget implements Target {
  readonly mode = 'single' as const;
  readonly victims: Victim[] = ['daemon'];
  constructor(private readonly d: TestDaemon) {}
  get dataDirs(): string[] {
    return [this.d.dataDir];
  }
  get interceptSocket(): string {
    return this.d.controlSocket;
  }
  get managerSocket(): string {
    return this.d.controlSocket;
  }
  connect(): Promise<NbdClient> {
    return NbdClient.connect({ path: this.d.nbdSocket, exportName: VOLUME });
  }
  connectView(name: string): Promise<NbdClient> {
    return NbdClient.connect({ path: this.d.nbdSocket, exportName: name });
  }
  ledgerUri(): string {
    return this.d.nbdUnixUri(VOLUME);
  }
  async kill(): Promise<void> {
    await this.d.kill('SIGKILL');
  }
  async start(): Promise<void> {
    await this.d.restart();
  }
  isRunning(): boolean {
    return this.d.isRunning;
  }
  logs(): string {
    return this.d.logs.slice(-20_000);
  }
  async processes(): Promise<Record<string, string>> {
    return { daemon: this.d.isRunning ? `running (pid ${this.d.pid})` : `exited ${JSON.stringify(await this.d.exited)}` };
  }
  async close(): Promise<void> {
    if (this.d.isRunning) await this.d.kill('SIGKILL');
  }
}

class PairTarget implements Target {
  readonly mode = 'two-role' as const;
  readonly victims: Victim[] = ['intercept', 'manager'];
  private readonly up = new Set<Victim>(['intercept', 'manager']);
  constructor(
    private readonly net: Netns,
    private readonly i: RoleDaemon,
    private readonly m: RoleDaemon,
  ) {}
  get dataDirs(): string[] {
    return [this.i.dataDir, this.m.dataDir];
  }
  get interceptSocket(): string {
    return this.i.controlSocket;
  }
  get managerSocket(): string {
    return this.m.controlSocket;
  }
  connect(): Promise<NbdClient> {
    return NbdClient.connect({ path: this.i.nbdSocket, exportName: VOLUME });
  }
  connectView(name: string): Promise<NbdClient> {
    return NbdClient.connect({ path: this.m.nbdSocket, exportName: name });
  }
  ledgerUri(): string {
    return this.i.nbdUnixUri(VOLUME);
  }
  private role(v: Victim): RoleDaemon {
    return v === 'manager' ? this.m : this.i;
  }
  async kill(v: Victim): Promise<void> {
    this.up.delete(v);
    await this.role(v).kill('SIGKILL');
  }
  async start(v: Victim): Promise<void> {
    const d = this.role(v);
    d.logs = '';
    try {
      await d.startProcess();
    } catch (err) {
      await d.kill('SIGKILL');
      throw err;
    }
    this.up.add(v);
  }
  isRunning(v: Victim): boolean {
    return this.up.has(v);
  }
  async linkCut(down: boolean): Promise<void> {
    await (down ? this.net.linkDown() : this.net.linkUp());
  }
  async processes(): Promise<Record<string, string>> {
    const one = (d: RoleDaemon) => (d.lastExit ? `exited ${JSON.stringify(d.lastExit)}` : `running (pid ${d.pid})`);
    return { intercept: one(this.i), manager: one(this.m) };
  }
  logs(): string {
    return `--- intercept\n${this.i.logs.slice(-10_000)}\n--- manager\n${this.m.logs.slice(-10_000)}`;
  }
  async close(): Promise<void> {
    await this.i.kill('SIGKILL');
    await this.m.kill('SIGKILL');
    await this.net.cleanup();
  }
}

export const VOLUME = 'cv';

/** Starts the processes of `mode` with data directories under `dir` and creates the protected volume. */
export async function startTarget(mode: Mode, dir: string, sizeMiB: number): Promise<Target> {
  fs.mkdirSync(dir, { recursive: true });
  let target: Target;
  if (mode === 'single') {
    const dataDir = path.join(dir, 'data');
    fs.mkdirSync(dataDir, { recursive: true });
    target = new SingleTarget(await TestDaemon.start({ dataDir, logLevel: 'warn' }));
  } else {
    const net = await makeNetns('k');
    const secret = writeSecret(dir);
    const mk = (name: string) => {
      const d = path.join(dir, name);
      fs.mkdirSync(d, { recursive: true });
      return d;
    };
    const m = await RoleDaemon.start({
      ns: net.managerNs,
      dataDir: mk('manager'),
      logLevel: 'warn',
      args: ['--role', 'manager', '--listen', `${net.managerAddr}:${LINK_PORT}`, '--link-secret-file', secret],
    });
    const i = await RoleDaemon.start({
      ns: net.interceptNs,
      dataDir: mk('intercept'),
      logLevel: 'warn',
      args: [
        ...['--role', 'intercept', '--manager', `${net.managerAddr}:${LINK_PORT}`, '--link-secret-file', secret],
        ...['--listen', 'none', '--no-default-volume', '--link-pool', '64M'],
      ],
    });
    target = new PairTarget(net, i, m);
  }
  const r = await apiCall(target.interceptSocket, 'POST', '/v1/volumes', { name: VOLUME, size: sizeMiB * 1024 * 1024, protected: true });
  if (r.status >= 300) throw new Error(`creating the volume: ${r.status} ${JSON.stringify(r.body)}`);
  return target;
}
