/**
 * One daemon per data directory.
 *
 * Two mechanisms, for two jobs:
 *
 * 1. Mutual exclusion (Linux): the daemon listens on an abstract Unix socket
 *    named after the data directory's real path. Binding is atomic and the
 *    kernel releases the name when the process dies, however it dies, so
 *    there are no stale locks and no race between two daemons starting at
 *    once. (Abstract sockets are per network namespace; the lock file below
 *    still catches a live daemon in another namespace on the same host.)
 *
 * 2. The lock file <data-dir>/rewind.lock, created with O_EXCL, records who
 *    holds the directory ({pid, hostname, started}). A daemon finding one
 *    checks the pid: if that process is alive and looks like a rewind daemon
 *    it refuses to start; otherwise the file is stale (the holder was
 *    killed) and is replaced. On platforms without abstract sockets this
 *    file is the only lock, and replacing a stale one is not atomic.
 *
 * The pid file <data-dir>/rewind.pid holds just the pid, for scripts.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import type { DataDirLayout } from './paths';
import { writeFileAtomicSync } from '../util/atomic-file';

export class DataDirInUseError extends Error {
  constructor(
    readonly dataDir: string,
    readonly pid: number | undefined,
  ) {
    super(
      `data directory ${dataDir} is in use by another rewind daemon` +
        (pid !== undefined ? ` (pid ${pid})` : '') +
        '; stop it first or use a different --data-dir',
    );
    this.name = 'DataDirInUseError';
  }
}

interface LockRecord {
  pid: number;
  hostname: string;
  started: string;
}

export class DataDirLock {
  private released = false;

  private constructor(
    private readonly layout: DataDirLayout,
    private readonly mutex: net.Server | null,
  ) {}

  /** Takes the lock or throws DataDirInUseError. Also writes the pid file. */
  static async acquire(layout: DataDirLayout): Promise<DataDirLock> {
    const mutex = await takeAbstractMutex(layout);
    try {
      takeLockFile(layout, mutex !== null);
      writeFileAtomic(layout.pidFile, `${process.pid}\n`, 0o644);
    } catch (err) {
      mutex?.close();
      throw err;
    }
    return new DataDirLock(layout, mutex);
  }

  /** Removes the pid and lock files (if still ours) and drops the mutex. */
  release(): void {
    if (this.released) return;
    this.released = true;
    for (const file of [this.layout.pidFile, this.layout.lockFile]) {
      try {
        const content = fs.readFileSync(file, 'utf8');
        if (recordPid(content) === process.pid) fs.unlinkSync(file);
      } catch {
        // already gone
      }
    }
    this.mutex?.close();
  }
}

/** Reads the pid from a lock or pid file's content. */
function recordPid(content: string): number | undefined {
  const trimmed = content.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  try {
    const rec = JSON.parse(trimmed) as Partial<LockRecord>;
    return typeof rec.pid === 'number' ? rec.pid : undefined;
  } catch {
    return undefined;
  }
}

/** The pid recorded in the data directory's lock file, if any. */
export function lockHolderPid(layout: DataDirLayout): number | undefined {
  try {
    return recordPid(fs.readFileSync(layout.lockFile, 'utf8'));
  } catch {
    return undefined;
  }
}

function abstractName(layout: DataDirLayout): string {
  let real = layout.dataDir;
  try {
    real = fs.realpathSync(layout.dataDir);
  } catch {
    // not created yet: use the resolved path
  }
  const digest = crypto.createHash('sha256').update(real).digest('hex').slice(0, 40);
  return `\0rewind-datadir-${digest}`;
}

async function takeAbstractMutex(layout: DataDirLayout): Promise<net.Server | null> {
  if (process.platform !== 'linux') return null;
  const server = net.createServer((sock) => sock.destroy());
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') reject(new DataDirInUseError(layout.dataDir, lockHolderPid(layout)));
      else resolve(null); // no abstract sockets here: rely on the lock file alone
    });
    server.listen(abstractName(layout), () => {
      server.unref();
      resolve(server);
    });
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Best effort: does the live process `pid` look like a rewind daemon? */
function looksLikeRewind(pid: number): boolean {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return /rewind|main\.js/.test(cmdline);
  } catch {
    // no /proc (or not readable): assume it is, to be safe
    return true;
  }
}

function takeLockFile(layout: DataDirLayout, haveMutex: boolean): void {
  const record: LockRecord = { pid: process.pid, hostname: os.hostname(), started: new Date().toISOString() };
  const content = JSON.stringify(record) + '\n';
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      fs.writeFileSync(layout.lockFile, content, { flag: 'wx', mode: 0o644 });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder: number | undefined;
    let holderHost: string | undefined;
    try {
      const text = fs.readFileSync(layout.lockFile, 'utf8');
      holder = recordPid(text);
      try {
        holderHost = (JSON.parse(text) as Partial<LockRecord>).hostname;
      } catch {
        holderHost = undefined;
      }
    } catch {
      continue; // vanished between our create and read: try again
    }
    const sameHost = holderHost === undefined || holderHost === os.hostname();
    if (holder !== undefined && holder !== process.pid && sameHost && isAlive(holder) && looksLikeRewind(holder)) {
      throw new DataDirInUseError(layout.dataDir, holder);
    }
    if (!sameHost) {
      throw new DataDirInUseError(layout.dataDir, holder);
    }
    // Stale. With the abstract mutex held nobody else can be here, so
    // overwriting is safe; without it, unlink and race for O_EXCL again.
    if (haveMutex) {
      writeFileAtomic(layout.lockFile, content, 0o644);
      return;
    }
    try {
      fs.unlinkSync(layout.lockFile);
    } catch {
      // someone else removed it
    }
  }
  throw new DataDirInUseError(layout.dataDir, lockHolderPid(layout));
}

/** The pid and lock files: atomic and durable (util/atomic-file), with a tmp name of this process's own. */
function writeFileAtomic(file: string, content: string, mode: number): void {
  writeFileAtomicSync(file, content, { mode, tmp: `${file}.${process.pid}.tmp` });
}
