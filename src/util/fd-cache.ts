/**
 * A small cache of read-only file descriptors, for readers that hit the same
 * few files again and again (time-travel reads of history containers and
 * replicated images). acquire() is synchronous so a caller can decide what
 * to read and start reading in one tick. Idle descriptors beyond `max` are
 * closed, least recently used first; forget() closes a file's descriptor as
 * soon as its last user releases it (before the file is deleted).
 */
import * as fs from 'node:fs';
import { nativeAvailable, preadNoWait } from '../native';

interface Entry {
  fd: number;
  refs: number;
  doomed: boolean;
}

export class FdCache {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly max = 128) {}

  acquire(file: string): number {
    let e = this.entries.get(file);
    if (e && !e.doomed) {
      this.entries.delete(file); // move to the end: most recently used
      this.entries.set(file, e);
    } else {
      e = { fd: fs.openSync(file, 'r'), refs: 0, doomed: false };
      this.entries.set(file, e);
      this.evict();
    }
    e.refs++;
    return e.fd;
  }

  release(file: string, fd: number): void {
    const e = this.entries.get(file);
    if (!e || e.fd !== fd) {
      // Replaced after forget(): this descriptor is no longer in the map.
      const gone = this.orphans.get(fd);
      if (gone !== undefined && --gone.refs === 0) {
        this.orphans.delete(fd);
        fs.close(fd, () => undefined);
      }
      return;
    }
    e.refs--;
    if (e.doomed && e.refs === 0) {
      this.entries.delete(file);
      fs.close(e.fd, () => undefined);
    }
  }

  private readonly orphans = new Map<number, Entry>();

  /** Close the file's descriptor once idle; the next acquire() reopens it. */
  forget(file: string): void {
    const e = this.entries.get(file);
    if (!e) return;
    this.entries.delete(file);
    if (e.refs === 0) fs.close(e.fd, () => undefined);
    else this.orphans.set(e.fd, e);
  }

  private evict(): void {
    if (this.entries.size <= this.max) return;
    for (const [file, e] of this.entries) {
      if (this.entries.size <= this.max) break;
      if (e.refs === 0) {
        this.entries.delete(file);
        fs.close(e.fd, () => undefined);
      }
    }
  }

  closeAll(): void {
    for (const e of this.entries.values()) if (e.refs === 0) fs.closeSync(e.fd);
    this.entries.clear();
  }
}

let noWait = nativeAvailable();

/**
 * Reads exactly `length` bytes at `position` into buf[offset..]: from the
 * page cache on this thread when it can (RWF_NOWAIT), else on the threadpool.
 * Bytes past the end of the file read as zero.
 */
export function preadFully(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  if (noWait && length > 0) {
    const got = preadNoWait(fd, buf, offset, length, position);
    if (got === -2) noWait = false;
    else if (got > 0) {
      offset += got;
      position += got;
      length -= got;
    }
  }
  if (length <= 0) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const step = (): void => {
      fs.read(fd, buf, offset, length, position, (err, n) => {
        if (err) return reject(err);
        if (n === 0) {
          buf.fill(0, offset, offset + length);
          return resolve();
        }
        offset += n;
        position += n;
        length -= n;
        if (length <= 0) resolve();
        else step();
      });
    };
    step();
  });
}
