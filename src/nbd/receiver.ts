/**
 * The receive side of a connection: one ordered byte stream, whatever
 * buffers it arrives in.
 *
 * Bytes come either as 'data' chunks (TLS, stdio, any Duplex) or through
 * Node's `onread` option, where the receiver chooses the buffer the next
 * read lands in: its staging buffer, or the unfilled tail of a payload
 * buffer (a large WRITE received in place, no copy). Node asks for that
 * buffer right after each read callback, so the buffer a read lands in can
 * be one chosen before the parser changed its mind (a pause, a resume, an
 * option finishing). Correctness therefore never depends on which buffer
 * was handed out: every arrival is routed by one rule, in arrival order:
 *
 *   1. to the payload being received (`receiveInto`), up to its length;
 *   2. to bytes being discarded (`discard`), up to their count;
 *   3. to the input queue, which the parser reads.
 *
 * Bytes that landed in place at the payload's fill position are just
 * counted; bytes anywhere else are copied to where rule 1-3 sends them.
 * While a payload or a discard is open the queue is empty, so the order of
 * the stream is preserved by construction. Completion callbacks run after
 * the whole arrival is routed, and before the parser is told about new
 * queued input.
 */
import { InputQueue } from './inbuf';

/** Size of the buffer plain-socket reads land in. */
export const STAGING_SIZE = 256 * 1024;

export interface ReceiverSink {
  /** New bytes were queued (or a payload or discard just finished): parse what you can. */
  input(): void;
}

interface Target {
  buf: Buffer;
  filled: number;
  done: (buf: Buffer) => void;
}

interface Discard {
  left: number;
  done: () => void;
}

export class Receiver {
  readonly queue = new InputQueue();
  private staging: Buffer | null = null;
  /** A buffer of exactly the size expectSmall() asked for. */
  private small: Buffer | null = null;
  private hint = 0;
  private target: Target | null = null;
  private discarding: Discard | null = null;
  private readonly completions: Array<() => void> = [];
  private routing = false;
  /** Completions scheduled by later() that have not run yet. */
  private deferred = 0;
  /** Bumped by clear(), so completions scheduled before it are dropped. */
  private generation = 0;

  constructor(private readonly sink: ReceiverSink) {}

  /** A payload or discard is open: the parser must wait for it. */
  get busy(): boolean {
    return this.target !== null || this.discarding !== null || this.deferred > 0;
  }

  /** Bytes still expected by the open payload (0 if none). */
  get payloadRemaining(): number {
    return this.target ? this.target.buf.length - this.target.filled : 0;
  }

  /**
   * Receive the next `buf.length` bytes of the stream into `buf`, then call
   * `done(buf)`. Bytes already queued are moved in first. Only while nothing
   * else is open.
   */
  receiveInto(buf: Buffer, done: (buf: Buffer) => void): void {
    if (this.busy) throw new Error('receiver: a payload or discard is already open');
    const have = Math.min(this.queue.length, buf.length);
    if (have > 0) this.queue.take(have).copy(buf, 0);
    if (have === buf.length) {
      this.later(() => done(buf));
      return;
    }
    this.target = { buf, filled: have, done };
  }

  /** Drop the next `n` bytes of the stream, then call `done()`. */
  discard(n: number, done: () => void): void {
    if (this.busy) throw new Error('receiver: a payload or discard is already open');
    const dropped = this.queue.skip(n);
    if (dropped === n) {
      this.later(done);
      return;
    }
    this.discarding = { left: n - dropped, done };
  }

  /**
   * The next read should hold at most `n` bytes (a request header after a
   * large payload): reading just the header lets the payload that follows
   * land in place, instead of a staging read taking its first 256 KiB and
   * copying them over.
   */
  expectSmall(n: number): void {
    this.hint = n;
  }

  /** The buffer the next socket read should land in (onread mode). */
  nextBuffer(): Buffer {
    const t = this.target;
    if (t) return t.buf.subarray(t.filled);
    if (this.hint > 0 && this.queue.length === 0 && !this.discarding) {
      const n = this.hint;
      this.hint = 0;
      if (!this.small || this.small.length !== n) this.small = Buffer.allocUnsafe(n);
      return this.small;
    }
    return (this.staging ??= Buffer.allocUnsafe(STAGING_SIZE));
  }

  /** `n` bytes arrived at the start of `buf` (onread mode). */
  received(n: number, buf: Buffer): void {
    if (n <= 0) return;
    const t = this.target;
    if (t && buf.buffer === t.buf.buffer && buf.byteOffset === t.buf.byteOffset + t.filled && n <= t.buf.length - t.filled) {
      // Landed in place, at exactly the fill position.
      t.filled += n;
      if (t.filled === t.buf.length) {
        this.target = null;
        this.complete(() => t.done(t.buf));
      }
      this.flush();
      return;
    }
    const reusable = buf === this.staging || buf === this.small;
    this.route(buf.subarray(0, n), reusable);
  }

  /** A chunk the receiver may keep (a 'data' event). */
  push(chunk: Buffer): void {
    if (chunk.length > 0) this.route(chunk, false);
  }

  /** Forget everything (the connection is closing, or a soft disconnect). */
  clear(): void {
    this.queue.clear();
    this.target = null;
    this.discarding = null;
    this.completions.length = 0;
    this.deferred = 0;
    this.generation++;
  }

  /** Drop the staging buffer (the connection is closed). */
  release(): void {
    this.clear();
    this.staging = null;
  }

  /**
   * Route `bytes` by the three rules. `reusable`: they sit in a buffer the
   * next read overwrites (staging, or the small header buffer), so whatever
   * is kept is copied. The staging buffer is never handed over: a fresh
   * 256 KiB per request cost more in page faults and GC than the copy.
   */
  private route(bytes: Buffer, reusable: boolean): void {
    let pos = 0;
    const t = this.target;
    if (t) {
      const n = Math.min(bytes.length, t.buf.length - t.filled);
      bytes.copy(t.buf, t.filled, 0, n);
      t.filled += n;
      pos = n;
      if (t.filled === t.buf.length) {
        this.target = null;
        this.complete(() => t.done(t.buf));
      }
    } else if (this.discarding) {
      const d = this.discarding;
      const n = Math.min(bytes.length, d.left);
      d.left -= n;
      pos = n;
      if (d.left === 0) {
        this.discarding = null;
        this.complete(d.done);
      }
    }
    if (pos < bytes.length) {
      const rest = bytes.subarray(pos);
      this.queue.push(reusable ? Buffer.from(rest) : rest);
    }
    this.flush();
  }

  private complete(fn: () => void): void {
    this.completions.push(fn);
  }

  /**
   * Completed without new bytes (all of it was queued already): run it on a
   * microtask, so the caller (the parser) returns first, then let the
   * parser at the queue again. No socket read can come in between.
   */
  private later(fn: () => void): void {
    this.deferred++;
    const gen = this.generation;
    queueMicrotask(() => {
      if (gen !== this.generation) return;
      this.deferred--;
      this.completions.push(fn);
      this.flush();
    });
  }

  /** Run completions in order, then let the parser at the queue. Not re-entrant. */
  private flush(): void {
    if (this.routing) return;
    this.routing = true;
    try {
      while (this.completions.length) this.completions.shift()!();
    } finally {
      this.routing = false;
    }
    this.sink.input();
  }
}
