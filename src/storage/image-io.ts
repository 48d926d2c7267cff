/**
 * Reads and writes of an image on libuv's threadpool through pooled request
 * objects (no per-request closures or promises beyond the one returned),
 * with page-cache hits served synchronously (preadv2/pwritev2 RWF_NOWAIT).
 */
import * as fs from 'node:fs';
import * as native from '../native';
import { codedError, type SharedImage } from './shared-image';
import { ioRing } from '../native/io-ring';

// ---------------------------------------------------------------------------
// Pooled read/write requests: one arrow function per pooled object, reused.

export type Resolve<T> = (value: T) => void;
export type Reject = (reason: unknown) => void;

export let capturedResolve: Resolve<never> | undefined;
export let capturedReject: Reject | undefined;
export function capture(resolve: Resolve<never>, reject: Reject): void {
  capturedResolve = resolve;
  capturedReject = reject;
}
export function noop(): void {}
const EMPTY = Buffer.alloc(0);
const POOL_MAX = 1024;

class ReadOp {
  img: SharedImage | undefined;
  buf: Buffer = EMPTY;
  pos = 0;
  done = 0;
  resolve: Resolve<Buffer> = noop;
  reject: Reject = noop;

  readonly onRead = (err: NodeJS.ErrnoException | null, n: number): void => {
    if (err) return this.finish(err);
    const len = this.buf.length;
    if (n === 0) {
      // End of file (a regular file shorter than the export): zeroes.
      this.buf.fill(0, this.done);
      this.done = len;
    } else {
      this.done += n;
    }
    if (this.done < len) {
      this.issue();
      return;
    }
    this.finish(null);
  };

  issue(): void {
    try {
      fs.read(this.img!.fd, this.buf, this.done, this.buf.length - this.done, this.pos + this.done, this.onRead);
    } catch (err) {
      this.finish(err as Error);
    }
  }

  private finish(err: Error | null): void {
    const { resolve, reject, buf, img } = this;
    this.resolve = noop;
    this.reject = noop;
    this.buf = EMPTY;
    this.img = undefined;
    if (readPool.length < POOL_MAX) readPool.push(this);
    img!.opDone();
    if (err) reject(err);
    else resolve(buf);
  }
}

class WriteOp {
  img: SharedImage | undefined;
  buf: Buffer = EMPTY;
  pos = 0;
  done = 0;
  fua = false;
  resolve: Resolve<void> = noop;
  reject: Reject = noop;

  readonly onWrite = (err: NodeJS.ErrnoException | null, n: number): void => {
    if (err) return this.finish(err);
    if (n <= 0) return this.finish(codedError('ENOSPC', 'write made no progress'));
    this.done += n;
    if (this.done < this.buf.length) {
      this.issue();
      return;
    }
    if (this.fua) {
      fs.fdatasync(this.img!.fd, this.onSync);
      return;
    }
    this.finish(null);
  };

  readonly onSync = (err: NodeJS.ErrnoException | null): void => this.finish(err);

  issue(): void {
    try {
      fs.write(this.img!.fd, this.buf, this.done, this.buf.length - this.done, this.pos + this.done, this.onWrite);
    } catch (err) {
      this.finish(err as Error);
    }
  }

  private finish(err: Error | null): void {
    const { resolve, reject, img } = this;
    this.resolve = noop;
    this.reject = noop;
    this.buf = EMPTY;
    this.img = undefined;
    if (writePool.length < POOL_MAX) writePool.push(this);
    img!.opDone();
    if (err) reject(err);
    else resolve();
  }
}

const readPool: ReadOp[] = [];
const writePool: WriteOp[] = [];

/**
 * Requests up to this size first try the page cache synchronously with
 * RWF_NOWAIT; whatever would block goes to the threadpool. Page-cache hits
 * skip the thread handoff, which dominates the cost of small I/O.
 */
const NOWAIT_MAX = 256 * 1024;

/** Synchronous, non-blocking attempt; returns bytes done (0 if it would block). */
function tryNoWait(img: SharedImage, write: boolean, pos: number, buf: Buffer): number {
  if (buf.length > NOWAIT_MAX || (write ? img.noWaitWrites : img.noWaitReads) === false) return 0;
  try {
    const n = write ? native.pwriteNoWait(img.fd, buf, 0, buf.length, pos) : native.preadNoWait(img.fd, buf, 0, buf.length, pos);
    if (n === -2) {
      // Not supported here (ext4 refuses buffered RWF_NOWAIT writes): stop trying.
      if (write) img.noWaitWrites = false;
      else img.noWaitReads = false;
    }
    return n > 0 ? n : 0;
  } catch {
    // Let the threadpool path report the error with its usual handling.
    return 0;
  }
}

export function startRead(img: SharedImage, pos: number, buf: Buffer): Promise<Buffer> {
  const done = tryNoWait(img, false, pos, buf);
  if (done === buf.length) return Promise.resolve(buf);
  const ring = ioRing();
  if (ring) {
    img.inflight++;
    return ring.read(img.fd, buf, done, buf.length - done, pos + done).then(
      (n) => {
        img.opDone();
        // End of file (a regular file shorter than the export): zeroes.
        if (done + n < buf.length) buf.fill(0, done + n);
        return buf;
      },
      (err: Error) => {
        img.opDone();
        throw err;
      },
    );
  }
  const op = readPool.pop() ?? new ReadOp();
  const p = new Promise<Buffer>(capture);
  op.resolve = capturedResolve as Resolve<Buffer>;
  op.reject = capturedReject!;
  op.img = img;
  op.buf = buf;
  op.pos = pos;
  op.done = done;
  img.inflight++;
  op.issue();
  return p;
}

export function startWrite(img: SharedImage, pos: number, buf: Buffer, fua: boolean): Promise<void> {
  const done = tryNoWait(img, true, pos, buf);
  if (done === buf.length && !fua) return Promise.resolve();
  const ring = ioRing();
  if (ring) {
    img.inflight++;
    const w = done < buf.length ? ring.write(img.fd, buf, done, buf.length - done, pos + done) : Promise.resolve(0);
    return (fua ? w.then(() => ring.fdatasync(img.fd)) : w).then(
      () => img.opDone(),
      (err: Error) => {
        img.opDone();
        throw err;
      },
    );
  }
  const op = writePool.pop() ?? new WriteOp();
  const p = new Promise<void>(capture);
  op.resolve = capturedResolve as Resolve<void>;
  op.reject = capturedReject!;
  op.img = img;
  op.buf = buf;
  op.pos = pos;
  op.done = done;
  op.fua = fua;
  img.inflight++;
  if (done === buf.length) fs.fdatasync(img.fd, op.onSync);
  else op.issue();
  return p;
}
