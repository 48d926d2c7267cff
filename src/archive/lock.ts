/**
 * One process per pool state directory. The pool's concurrency control
 * (writers, readers and gc in one process, gc.ts) relies on it.
 *
 * On Linux an abstract Unix socket named after the directory's real path
 * is the lock: binding is atomic and the kernel drops it when the process
 * dies, however it dies (kill -9 included), so there are no stale locks.
 * Elsewhere a "lock" file made with O_EXCL holds the pid and is replaced
 * when that process is gone.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ArchiveError } from './errors';

export class PoolLock {
  private constructor(
    private readonly server: net.Server | null,
    private readonly file: string | null,
  ) {}

  static async acquire(dir: string): Promise<PoolLock> {
    const real = fs.realpathSync(dir);
    if (process.platform === 'linux') {
      const name = `\0rewind-archive-${createHash('sha256').update(real).digest('hex').slice(0, 32)}`;
      const server = net.createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => {
          reject(err.code === 'EADDRINUSE' ? new ArchiveError('EBUSY', `archive pool ${real} is open in another process`) : err);
        });
        server.listen(name, () => resolve());
      });
      server.unref();
      return new PoolLock(server, null);
    }
    const file = path.join(real, 'lock');
    for (let tries = 0; tries < 2; tries++) {
      try {
        fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
        return new PoolLock(null, file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = Number(fs.readFileSync(file, 'utf8').trim());
        if (Number.isInteger(pid) && pid > 0 && alive(pid))
          throw new ArchiveError('EBUSY', `archive pool ${real} is open in process ${pid}`);
        fs.rmSync(file, { force: true });
      }
    }
    throw new ArchiveError('EBUSY', `archive pool ${real}: cannot take the lock`);
  }

  async release(): Promise<void> {
    if (this.server) await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    if (this.file) fs.rmSync(this.file, { force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
