/**
 * Batched file I/O through io_uring (addon/io_ring.cc), for the hot paths
 * that used libuv's threadpool one request at a time: every request made in
 * one tick goes to the kernel in one system call (on a microtask), and every
 * completion that has arrived comes back in one callback, so the replies of
 * a batch leave in one socket write too.
 *
 * One ring per thread (ioRing()); REWIND_IO=threadpool turns it off (the
 * callers then use the threadpool as before), as does a kernel or build
 * without io_uring. A request's Buffer is held here until its completion.
 */
import * as os from 'node:os';
import { loadNative, nativeAvailable } from './index';

interface RawRing {
  read(id: number, fd: number, buf: Buffer, off: number, len: number, pos: number): boolean;
  write(id: number, fd: number, buf: Buffer, off: number, len: number, pos: number): boolean;
  writev(id: number, fd: number, bufs: Buffer[], pos: number): boolean;
  fdatasync(id: number, fd: number): boolean;
  submit(): number;
  close(): void;
}

type RingCtor = new (entries: number, onComplete: (done: Float64Array) => void) => RawRing;

const ERRNO_NAME = new Map<number, string>(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));

function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = ERRNO_NAME.get(errno) ?? `E${errno}`;
  return Object.assign(new Error(`${syscall}: ${code}`), { code, errno: -errno, syscall });
}

const enum Op {
  Read,
  Write,
  Writev,
  Sync,
}

/** One request in flight (kept in a slot; slots are reused). */
interface Slot {
  op: Op;
  fd: number;
  buf: Buffer | null;
  bufs: Buffer[] | null;
  off: number;
  len: number;
  pos: number;
  done: number;
  resolve: (n: number) => void;
  reject: (e: Error) => void;
}

const ENTRIES = 256;

export class IoRing {
  private readonly raw: RawRing;
  private readonly slots: Array<Slot | null> = [null];
  private readonly free: number[] = [];
  /** Requests that found the submission queue full: queued after the next submit. */
  private readonly backlog: number[] = [];
  private scheduled = false;
  private closed = false;

  constructor(Ctor: RingCtor) {
    this.raw = new Ctor(ENTRIES, (done) => this.onComplete(done));
  }

  read(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    return this.start(Op.Read, fd, buf, null, off, len, pos);
  }

  /** Resolves once every byte is written (a short write continues). */
  write(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    return this.start(Op.Write, fd, buf, null, off, len, pos);
  }

  writev(fd: number, bufs: Buffer[], pos: number): Promise<number> {
    let len = 0;
    for (const b of bufs) len += b.length;
    return this.start(Op.Writev, fd, null, bufs, 0, len, pos);
  }

  fdatasync(fd: number): Promise<void> {
    return this.start(Op.Sync, fd, null, null, 0, 0, 0).then(() => undefined);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.raw.close();
  }

  private start(op: Op, fd: number, buf: Buffer | null, bufs: Buffer[] | null, off: number, len: number, pos: number): Promise<number> {
    if (this.closed) return Promise.reject(Object.assign(new Error('I/O ring closed'), { code: 'ESHUTDOWN' }));
    return new Promise<number>((resolve, reject) => {
      const s: Slot = { op, fd, buf, bufs, off, len, pos, done: 0, resolve, reject };
      const id = this.free.pop() ?? this.slots.length;
      this.slots[id] = s;
      this.queue(id);
    });
  }

  private queue(id: number): void {
    const s = this.slots[id]!;
    let ok: boolean;
    switch (s.op) {
      case Op.Read:
        ok = this.raw.read(id, s.fd, s.buf!, s.off + s.done, s.len - s.done, s.pos + s.done);
        break;
      case Op.Write:
        ok = this.raw.write(id, s.fd, s.buf!, s.off + s.done, s.len - s.done, s.pos + s.done);
        break;
      case Op.Writev:
        ok = this.raw.writev(id, s.fd, s.done === 0 ? s.bufs! : remaining(s.bufs!, s.done), s.pos + s.done);
        break;
      default:
        ok = this.raw.fdatasync(id, s.fd);
    }
    if (!ok) {
      // The submission queue is full: hand it to the kernel now, retry after.
      this.raw.submit();
      this.backlog.push(id);
    }
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    if (this.closed) return;
    try {
      this.raw.submit();
    } catch (err) {
      // The queued requests stay queued; report and let the next submit retry.
      process.emitWarning(`io_uring submit failed: ${(err as Error).message}`);
    }
    if (this.backlog.length) for (const id of this.backlog.splice(0)) this.queue(id);
  };

  private onComplete(done: Float64Array): void {
    for (let i = 0; i < done.length; i += 2) {
      const id = done[i]!;
      const res = done[i + 1]!;
      const s = this.slots[id];
      if (!s) continue;
      if (res < 0) {
        this.release(id);
        s.reject(errnoError(-res, s.op === Op.Read ? 'read' : s.op === Op.Sync ? 'fdatasync' : 'write'));
        continue;
      }
      s.done += res;
      // A short read at the end of the file stops; a short write goes on.
      if (s.op !== Op.Sync && s.done < s.len && (res > 0 || s.op !== Op.Read)) {
        if (res === 0) {
          this.release(id);
          s.reject(errnoError(28, 'write'));
          continue;
        }
        this.queue(id);
        continue;
      }
      this.release(id);
      s.resolve(s.done);
    }
  }

  private release(id: number): void {
    this.slots[id] = null;
    this.free.push(id);
  }
}

function remaining(bufs: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

let ring: IoRing | null | undefined;

/** This thread's ring, or null where io_uring is not available or turned off (REWIND_IO=threadpool). */
export function ioRing(): IoRing | null {
  if (ring !== undefined) return ring;
  ring = null;
  if (process.env.REWIND_IO === 'threadpool' || !nativeAvailable()) return ring;
  const Ctor = (loadNative() as unknown as { IoRing?: RingCtor }).IoRing;
  if (!Ctor) return ring;
  try {
    ring = new IoRing(Ctor);
  } catch {
    ring = null; // io_uring refused (seccomp, old kernel): the threadpool it is
  }
  return ring;
}
