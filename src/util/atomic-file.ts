/**
 * Replacing a small file (JSON state, a lock, a token) so that a crash at
 * any instant leaves either the old content or the new, never a torn or
 * empty file, and so that the new content survives a machine crash once
 * the call returns: write `<file>.tmp`, fsync it, rename it over `file`,
 * fsync the directory (the rename is only durable once the directory is).
 * Every such writer in the project goes through here: one rule.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The file-system calls used, replaceable so a test can check their order. */
export interface AtomicIo {
  openSync(p: string, flags: string, mode?: number): number;
  writeSync(fd: number, data: Buffer, offset: number, length: number, position: number | null): number;
  fsyncSync(fd: number): void;
  closeSync(fd: number): void;
  renameSync(from: string, to: string): void;
}

const nodeIo: AtomicIo = {
  openSync: (p, flags, mode) => fs.openSync(p, flags, mode),
  writeSync: (fd, data, offset, length, position) => fs.writeSync(fd, data, offset, length, position),
  fsyncSync: (fd) => fs.fsyncSync(fd),
  closeSync: (fd) => fs.closeSync(fd),
  renameSync: (from, to) => fs.renameSync(from, to),
};

/** Durably replace `file` with `data` (see the module comment). */
export function writeFileAtomicSync(file: string, data: string | Buffer, opts: { mode?: number; io?: AtomicIo; tmp?: string } = {}): void {
  const io = opts.io ?? nodeIo;
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  // A writer that may race another process (the lock) names its own tmp file.
  const tmp = opts.tmp ?? `${file}.tmp`;
  const fd = io.openSync(tmp, 'w', opts.mode ?? 0o600);
  try {
    let done = 0;
    while (done < buf.length) done += io.writeSync(fd, buf, done, buf.length - done, done);
    io.fsyncSync(fd);
  } finally {
    io.closeSync(fd);
  }
  io.renameSync(tmp, file);
  const dfd = io.openSync(path.dirname(file), 'r');
  try {
    io.fsyncSync(dfd);
  } finally {
    io.closeSync(dfd);
  }
}

/** writeFileAtomicSync off the main thread's critical path (same rule, promise API). */
export async function writeFileAtomic(file: string, data: string | Buffer, opts: { mode?: number } = {}): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await fs.promises.open(tmp, 'w', opts.mode ?? 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
  const dh = await fs.promises.open(path.dirname(file), 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
