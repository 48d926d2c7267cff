/** Shared pieces of the CLI: errors with exit codes, endpoint and token resolution. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlClient, parseControlUrl, type ControlEndpoint } from '../control/client';
import { dataDirLayout, defaultDataDir } from '../daemon/paths';

/** Exit codes of the rewind CLI. */
export const EXIT = {
  OK: 0,
  /** The operation failed (the daemon refused it, or serve could not start). */
  FAILURE: 1,
  /** Bad command line. */
  USAGE: 2,
  /** No daemon reachable at the control endpoint. */
  NO_DAEMON: 3,
} as const;

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.FAILURE,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export interface GlobalOptions {
  dataDir?: string;
  control?: string[];
}

export function resolveDataDir(g: GlobalOptions): string {
  return g.dataDir ? path.resolve(g.dataDir) : defaultDataDir();
}

/**
 * The control endpoint a client command talks to: the last --control, else
 * $REWIND_CONTROL, else unix:<data-dir>/control.sock.
 */
export function resolveEndpoint(g: GlobalOptions): ControlEndpoint {
  const explicit = g.control && g.control.length > 0 ? g.control[g.control.length - 1] : process.env.REWIND_CONTROL;
  try {
    if (explicit) return parseControlUrl(explicit);
  } catch (err) {
    throw new CliError((err as Error).message, EXIT.USAGE);
  }
  const sock = dataDirLayout(resolveDataDir(g)).controlSocket;
  return { kind: 'unix', path: sock, display: `unix:${sock}` };
}

/** The bearer token for TCP: $REWIND_CONTROL_TOKEN, else <data-dir>/control.token. */
export function resolveToken(g: GlobalOptions): string | undefined {
  if (process.env.REWIND_CONTROL_TOKEN) return process.env.REWIND_CONTROL_TOKEN.trim();
  const file = dataDirLayout(resolveDataDir(g)).tokenFile;
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Requests that may wait for the backup manager to catch up (seal, verify,
 * points at "latest" or a recent time, markers, restores) get this long
 * before the client gives up; others get the client's default (30 s).
 */
export const MANAGER_WAIT_MS = 3_600_000;

export function makeClient(g: GlobalOptions, opts: { waitsForManager?: boolean } = {}): ControlClient {
  const endpoint = resolveEndpoint(g);
  let token: string | undefined;
  if (endpoint.kind === 'tcp') {
    token = resolveToken(g);
    if (!token) {
      const file = dataDirLayout(resolveDataDir(g)).tokenFile;
      throw new CliError(
        `the TCP control API needs a token, and none was found: set REWIND_CONTROL_TOKEN or point --data-dir ` +
          `at the daemon's data directory (looked for ${file})`,
        EXIT.USAGE,
      );
    }
  }
  const timeout = opts.waitsForManager ? { timeoutMs: MANAGER_WAIT_MS } : {};
  return new ControlClient(endpoint, token === undefined ? timeout : { token, ...timeout });
}

/** Left-aligned text table. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}
