/**
 * The connection's receive path under arbitrary splits of the byte stream
 * (issue 12): chunk boundaries anywhere, reads landing in whichever buffer
 * Node was handed after the previous read (as `onread` does), pauses and
 * resumes at arbitrary points, payloads on both sides of the direct-receive
 * threshold, queues far deeper than the in-flight limit. Every request must
 * be parsed exactly once, in order, with exactly its own payload.
 */
import test from 'ava';
import fc from 'fast-check';
import { Duplex } from 'node:stream';
import { Connection, DEFAULT_LIMITS, silentLogger, type ConnectionStats, type ServerLimits } from '../src/nbd/connection';
import type { ExportProvider, NbdExport } from '../src/nbd/export';
import * as P from '../src/nbd/protocol';
import { Receiver } from '../src/nbd/receiver';

/** A deterministic pattern: byte i of request k. */
function payloadOf(k: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = (k * 131 + i * 7 + (i >>> 8)) & 0xff;
  return b;
}

/** Lets the event loop turn `n` times (macrotasks: socket reads and export completions interleave). */
async function ticks(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

// ------------------------------------------------------------ the Receiver alone

test('receiver: framed messages survive any split, pause and resume, in order, each with its own bytes (onread and data events)', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 0, max: 90_000 }), { minLength: 1, maxLength: 40 }),
      fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 64 }),
      fc.array(fc.boolean(), { minLength: 1, maxLength: 64 }),
      fc.integer({ min: 1, max: 60_000 }),
      fc.boolean(),
      async (lengths, splits, pauses, threshold, dataEvents) => {
        // Stream: per message a u32 length, then that many bytes.
        const parts: Buffer[] = [];
        lengths.forEach((len, k) => {
          const h = Buffer.allocUnsafe(4);
          h.writeUInt32BE(len, 0);
          parts.push(h, payloadOf(k, len));
        });
        const stream = Buffer.concat(parts);
        const got: Buffer[] = [];
        let paused = false;
        let pauseIdx = 0;
        let waiting = false;
        const parse = () => {
          while (!paused && !rx.busy && !waiting && rx.queue.length >= 4) {
            const len = rx.queue.peek(4).readUInt32BE(0);
            if (rx.queue.length >= 4 + len) {
              rx.queue.take(4);
              got.push(Buffer.from(rx.queue.take(len)));
            } else if (len >= threshold) {
              rx.queue.take(4);
              rx.receiveInto(Buffer.allocUnsafe(len), (b) => got.push(b));
              // Sometimes ask for a small next read (as after a large WRITE): any size must be safe.
              if (len % 3 === 0) rx.expectSmall(1 + (len % 40));
            } else return;
            // The consumer sometimes stops after a message (backpressure) and resumes later.
            if (pauses[pauseIdx++ % pauses.length]) paused = true;
          }
        };
        const rx: Receiver = new Receiver({ input: parse });
        let buf = rx.nextBuffer();
        let pos = 0;
        let s = 0;
        while (pos < stream.length) {
          if (paused) {
            await ticks(1);
            // Resume outside the read callback, as the connection does when a request completes.
            paused = false;
            waiting = false;
            parse();
            continue;
          }
          if (dataEvents) {
            // 'data' events (TLS, stdio): chunks the receiver may keep.
            const n = Math.min(splits[s++ % splits.length]!, stream.length - pos);
            rx.push(Buffer.from(stream.subarray(pos, pos + n)));
            pos += n;
            continue;
          }
          const n = Math.min(splits[s++ % splits.length]!, buf.length, stream.length - pos);
          stream.copy(buf, 0, pos, pos + n);
          pos += n;
          rx.received(n, buf);
          buf = rx.nextBuffer(); // Node asks for the next buffer right after the callback
        }
        while (got.length < lengths.length) {
          paused = false;
          parse();
          await ticks(1);
          if (!paused && !rx.busy && rx.queue.length === 0 && got.length < lengths.length) break;
        }
        if (got.length !== lengths.length) return false;
        return lengths.every((len, k) => got[k]!.equals(payloadOf(k, len)));
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

// ------------------------------------------------------------ a whole Connection

/** A socket that behaves like Node's with `onread`: reads land in the buffer chosen after the previous read. */
class SimSocket extends Duplex {
  simPaused = false;
  readonly out: Buffer[] = [];
  constructor() {
    super({ allowHalfOpen: true });
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.out.push(Buffer.from(chunk));
    cb();
  }
  override pause(): this {
    this.simPaused = true;
    return this;
  }
  override resume(): this {
    this.simPaused = false;
    return this;
  }
}

/** Records every write it is given, and finishes each after a chosen number of event-loop turns. */
class RecordingExport implements NbdExport {
  readonly size: number;
  readonly readOnly = false;
  readonly capabilities = {
    flush: true,
    fua: true,
    trim: true,
    zero: false,
    fastZero: false,
    cache: false,
    blockStatus: false,
    multiConn: true,
  };
  readonly blockSize = undefined;
  readonly writes: Array<{ offset: number; data: Buffer }> = [];
  private n = 0;
  constructor(
    size: number,
    private readonly delays: number[],
  ) {
    this.size = size;
  }
  async read(_o: number, l: number): Promise<Buffer> {
    return Buffer.alloc(l);
  }
  async write(offset: number, data: Buffer): Promise<void> {
    this.writes.push({ offset, data: Buffer.from(data) });
    await ticks(this.delays[this.n++ % this.delays.length]!);
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {}
  async zero(): Promise<void> {}
  async cache(): Promise<void> {}
  async blockStatus(): Promise<never> {
    throw new Error('none');
  }
}

function handshakeBytes(name: string): Buffer {
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0);
  const n = Buffer.from(name);
  const data = Buffer.alloc(4 + n.length + 2);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  const opt = Buffer.alloc(16);
  opt.writeBigUInt64BE(P.IHAVEOPT, 0);
  opt.writeUInt32BE(P.OPT_GO, 8);
  opt.writeUInt32BE(data.length, 12);
  return Buffer.concat([flags, opt, data]);
}

/** Cookies of the simple replies in `out`, after the handshake's replies. */
function replyCookies(out: Buffer): { cookies: bigint[]; errors: number } {
  // Skip the greeting (18) and option replies (20 + len each) up to the ACK of GO.
  let p = 18;
  while (p + 20 <= out.length) {
    const type = out.readUInt32BE(p + 12);
    const len = out.readUInt32BE(p + 16);
    p += 20 + len;
    if (type === P.REP_ACK) break;
  }
  const cookies: bigint[] = [];
  let errors = 0;
  for (; p + 16 <= out.length; p += 16) {
    if (out.readUInt32BE(p) !== P.SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic at ${p}`);
    if (out.readUInt32BE(p + 4) !== 0) errors++;
    cookies.push(out.readBigUInt64BE(p + 8));
  }
  return { cookies, errors };
}

test('connection: a deep queue of WRITEs split anywhere, with backpressure, reaches the export in order with its own payloads', async (t) => {
  const SIZE = 64 * 1024 * 1024;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.oneof(fc.integer({ min: 1, max: 8192 }), fc.integer({ min: 30_000, max: 140_000 })), { minLength: 1, maxLength: 120 }),
      fc.array(fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 300_000 })), { minLength: 1, maxLength: 50 }),
      fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 30 }),
      fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 30 }),
      fc.integer({ min: 1, max: 8 }),
      async (lengths, splits, delays, gaps, maxInflight) => {
        const exp = new RecordingExport(SIZE, delays);
        const provider: ExportProvider = { list: () => [{ name: 'x' }], open: async () => ({ name: 'x', export: exp }) };
        const limits: ServerLimits = {
          ...DEFAULT_LIMITS,
          maxInflightPerConnection: maxInflight,
          maxBufferedBytesPerConnection: 512 * 1024,
        };
        const stats: ConnectionStats = { requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0, handshakeTimeouts: 0, stallDisconnects: 0 };
        const sock = new SimSocket();
        let closed = false;
        const conn = new Connection(
          sock,
          { transport: 'tcp', id: 1, tls: false },
          { provider, limits, logger: silentLogger, tls: { mode: 'off' }, stats, onClose: () => (closed = true) },
        );
        const reqs: Buffer[] = [handshakeBytes('x')];
        const expected: Array<{ offset: number; data: Buffer }> = [];
        let off = 0;
        lengths.forEach((len, k) => {
          const data = payloadOf(k, len);
          const offset = off % (SIZE - 200_000);
          off += len;
          expected.push({ offset, data });
          reqs.push(P.encodeRequest(P.CMD_WRITE, 0, BigInt(k + 1), offset, len), data);
        });
        const stream = Buffer.concat(reqs);
        let buf = conn.readBuffer();
        let pos = 0;
        let s = 0;
        let g = 0;
        let idle = 0;
        while (pos < stream.length && !closed) {
          if (sock.simPaused) {
            await ticks(1);
            if (++idle > 10_000) return false;
            continue;
          }
          idle = 0;
          const n = Math.min(splits[s++ % splits.length]!, buf.length, stream.length - pos);
          stream.copy(buf, 0, pos, pos + n);
          pos += n;
          conn.onRead(n, buf);
          buf = conn.readBuffer();
          await ticks(gaps[g++ % gaps.length]!);
        }
        for (let i = 0; i < 2000 && exp.writes.length < expected.length && !closed; i++) await ticks(1);
        await ticks(50);
        conn.destroy();
        if (closed && exp.writes.length < expected.length) return false;
        if (exp.writes.length !== expected.length) return false;
        for (let k = 0; k < expected.length; k++) {
          if (exp.writes[k]!.offset !== expected[k]!.offset || !exp.writes[k]!.data.equals(expected[k]!.data)) return false;
        }
        const { cookies, errors } = replyCookies(Buffer.concat(sock.out));
        if (errors !== 0 || cookies.length !== expected.length) return false;
        return [...cookies].sort((a, b) => (a < b ? -1 : 1)).every((c, i) => c === BigInt(i + 1));
      },
    ),
    { numRuns: 150 },
  );
  t.pass();
});
