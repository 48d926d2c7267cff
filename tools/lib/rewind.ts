/** Starting the repository's own `rewind serve` for a benchmark. */
import * as path from 'node:path';
import { startServer, type ServerHandle } from './server';

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
export const REWIND_BIN = path.join(REPO_ROOT, 'bin', 'rewind');

/**
 * `rewind serve` on `dataDir`: NBD on a free 127.0.0.1 port, no Unix
 * socket, no default volume, warnings only. `bin`: another checkout's
 * bin/rewind (to compare versions in one run); `args`: more serve options.
 */
export function startRewind(dataDir: string, opts: { env?: NodeJS.ProcessEnv; bin?: string; args?: string[] } = {}): Promise<ServerHandle> {
  return startServer({
    name: 'rewind',
    command: process.execPath,
    args: (port) => [
      opts.bin ?? REWIND_BIN,
      'serve',
      '--data-dir',
      dataDir,
      '--listen',
      `127.0.0.1:${port}`,
      '--socket',
      'none',
      '--no-default-volume',
      '--log-level',
      'warn',
      ...(opts.args ?? []),
    ],
    host: '127.0.0.1',
    cwd: REPO_ROOT,
    ...(opts.env ? { env: opts.env } : {}),
    readyTimeoutMs: 60_000,
    stopTimeoutMs: 60_000,
  });
}
