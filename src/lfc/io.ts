/** Whole reads and writes on descriptors, for the container writer and readers. */
import * as fs from 'node:fs';

export function writeAllSync(fd: number, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.writeSync(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    done += n;
  }
}

export function readAllSync(fd: number, buf: Buffer, off: number, len: number, position: number): number {
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, off + done, len - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

export function readFully(fd: number, buf: Buffer, off: number, len: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      if (done >= len) return resolve(done);
      fs.read(fd, buf, off + done, len - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return resolve(done);
        done += n;
        step();
      });
    };
    step();
  });
}

export function openFd(p: string, flags: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(p, flags, 0o644, (err, fd) => (err ? reject(err) : resolve(fd))));
}

export function fdatasyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}
