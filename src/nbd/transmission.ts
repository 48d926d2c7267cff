/**
 * The transmission phase of one connection: requests parsed from the input
 * (WRITE payloads received straight into pool buffers when large, oversized
 * ones discarded), validated, handed to the export, and answered as they
 * finish, with simple or structured replies (data and hole chunks, errors
 * with messages, block status with one chunk per selected meta context).
 */
import * as P from './protocol';
import type { InputQueue } from './inbuf';
import { NbdError, STATE_HOLE, STATE_ZERO, type Extent, type MetaContext, type NbdExport } from './export';
import { META_CONTEXT_ID } from './handshake';
import { ProtocolViolation, type ChosenContext, type Session, type Wire } from './wire';

const REQUEST_HEADER = 28;
const SPARSE_READ_THRESHOLD = 64 * 1024;
const MAX_EXTENTS = 1 << 16;
/** WRITE payloads at least this large are received straight into their own buffer. */
const DIRECT_MIN_PAYLOAD = 32 * 1024;

export class Transmission {
  readonly exp: NbdExport;
  private readonly size: number;
  private readonly minBlock: number;
  private readonly maxPayload: number;
  private readonly transmitFlags: number;
  private readonly structured: boolean;
  private readonly metaSelected: boolean;
  private readonly metaChosen: ChosenContext[];
  /** The request at the head of the input holds a budget reservation. */
  private admitted = false;
  /** Shutting down: every request but DISC is answered NBD_ESHUTDOWN (refuseAll). */
  private refusing = false;

  constructor(
    private readonly wire: Wire,
    s: Session,
  ) {
    const e = s.opened.export;
    this.exp = e;
    this.size = e.size;
    this.minBlock = e.blockSize?.minimum ?? P.DEFAULT_MIN_BLOCK;
    this.maxPayload = e.blockSize?.maximum ?? P.DEFAULT_MAX_PAYLOAD;
    this.transmitFlags = s.flags;
    this.structured = s.structured;
    this.metaSelected = s.metaSelected;
    this.metaChosen = s.metaChosen;
  }

  /** A request (or a request's start) waits in the input. */
  hasInput(input: InputQueue): boolean {
    return input.length >= REQUEST_HEADER;
  }

  /**
   * Parse one request: dispatch it, or start receiving (or discarding) its
   * payload. Returns true when parsing may go on with the next one.
   */
  step(input: InputQueue): boolean {
    const rx = this.wire.rx;
    if (input.length < REQUEST_HEADER) return false;
    const h = input.peek(REQUEST_HEADER);
    if (h.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new ProtocolViolation('bad request magic');
    const type = h.readUInt16BE(6);
    const len = h.readUInt32BE(24);
    // What the request will hold in memory: its payload, or its result.
    const need = (type === P.CMD_WRITE || type === P.CMD_READ) && len <= this.maxPayload ? len : 0;
    if (need > 0 && !this.admitted) {
      if (!this.wire.admit(need)) return false;
      this.admitted = true;
    }
    if (type === P.CMD_WRITE) {
      if (len > this.maxPayload) {
        if (len > this.wire.hooks.limits.maxDiscardPayload) {
          throw new ProtocolViolation(`write payload ${len} far over maximum ${this.maxPayload}`);
        }
        const hdr = Buffer.from(input.take(REQUEST_HEADER));
        rx.discard(len, () => this.finishDiscard(hdr));
        return false;
      }
      if (input.length < REQUEST_HEADER + len) {
        if (len >= DIRECT_MIN_PAYLOAD) {
          // Receive the rest of the payload straight into its buffer.
          const hdr = Buffer.from(input.take(REQUEST_HEADER));
          this.admitted = false;
          // From the pool: a fresh 1 MiB buffer makes the export's
          // fs.write call itself ~30x dearer than a reused one.
          const payload = this.wire.borrow(len) ?? Buffer.allocUnsafe(len);
          rx.receiveInto(payload, (p) => {
            this.wire.unreserve(need);
            this.onPayload(hdr, p);
          });
          // After it, read just the next header: a large write likely follows a large write.
          rx.expectSmall(REQUEST_HEADER);
        }
        return false;
      }
    }
    const hdr = input.take(REQUEST_HEADER);
    const payload = type === P.CMD_WRITE ? input.take(len) : null;
    this.admitted = false;
    if (need > 0) this.wire.unreserve(need);
    this.dispatch(hdr, payload);
    return true;
  }

  /**
   * The server is shutting down: from now on every request but
   * NBD_CMD_DISC is answered NBD_ESHUTDOWN without being run, as the spec
   * asks; requests already running finish normally.
   */
  refuseAll(): void {
    this.refusing = true;
  }

  /** A WRITE payload received with receiveInto() is complete. */
  private onPayload(hdr: Buffer, payload: Buffer): void {
    if (!this.wire.inTransmission) return;
    try {
      this.dispatch(hdr, payload, true);
    } catch (e) {
      this.wire.violation(e);
    }
  }

  /** An oversized WRITE's payload has been skipped: refuse it. */
  private finishDiscard(hdr: Buffer): void {
    if (!this.wire.inTransmission) return;
    this.wire.hooks.stats.requests++;
    this.replyError(hdr, P.CMD_WRITE, P.EINVAL, `write payload ${hdr.readUInt32BE(24)} exceeds maximum ${this.maxPayload}`);
  }

  /**
   * Validate and start one request. `hdr` is a view; copy what outlives this
   * call. `pooled`: the payload is a pool buffer to give back when done.
   */
  private dispatch(hdrView: Buffer, payload: Buffer | null, pooled = false): void {
    this.wire.hooks.stats.requests++;
    const flags = hdrView.readUInt16BE(4);
    const type = hdrView.readUInt16BE(6);
    const offHi = hdrView.readUInt32BE(16);
    const offLo = hdrView.readUInt32BE(20);
    const length = hdrView.readUInt32BE(24);
    // Keep the cookie (bytes 8..16) for the reply.
    const hdr = Buffer.allocUnsafe(16);
    hdrView.copy(hdr, 0, 8, 16);
    const e = this.exp!;

    if (type === P.CMD_DISC) {
      this.wire.log('debug', {}, 'soft disconnect requested');
      this.wire.softDisconnect();
      return;
    }
    if (this.refusing) {
      if (pooled) this.wire.giveBack(payload!);
      this.replyErrorCookie(hdr, type, P.ESHUTDOWN, 'the server is shutting down');
      return;
    }

    const fail = (errno: number, msg: string) => this.replyErrorCookie(hdr, type, errno, msg);

    // Flags must be known and valid for the command.
    let allowed = P.CMD_FLAG_FUA;
    if (type === P.CMD_READ) allowed |= P.CMD_FLAG_DF;
    else if (type === P.CMD_WRITE_ZEROES) allowed |= P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO;
    else if (type === P.CMD_BLOCK_STATUS) allowed |= P.CMD_FLAG_REQ_ONE;
    if (type > P.CMD_BLOCK_STATUS) return fail(P.EINVAL, `unknown command ${type}`);
    if (flags & ~allowed) return fail(P.EINVAL, `invalid flags 0x${flags.toString(16)} for command ${type}`);
    if (flags & P.CMD_FLAG_DF && !this.structured) return fail(P.EINVAL, 'DF flag without structured replies');
    if (flags & P.CMD_FLAG_FAST_ZERO && !(this.transmitFlags & P.FLAG_SEND_FAST_ZERO)) {
      return fail(P.EINVAL, 'FAST_ZERO not negotiated');
    }

    if (offHi >= 0x200000) return fail(type === P.CMD_WRITE || type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL, 'offset out of range');
    const offset = offHi * 0x100000000 + offLo;
    const fua = (flags & P.CMD_FLAG_FUA) !== 0;
    const isWrite = type === P.CMD_WRITE || type === P.CMD_TRIM || type === P.CMD_WRITE_ZEROES;

    if (isWrite && e.readOnly) return fail(P.EPERM, 'export is read-only');
    if (type !== P.CMD_FLUSH) {
      if (offset + length > this.size) {
        const errno = type === P.CMD_WRITE || type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL;
        return fail(errno, `request [${offset}, +${length}) beyond export size ${this.size}`);
      }
      if (this.minBlock > 1 && (offset % this.minBlock !== 0 || length % this.minBlock !== 0)) {
        return fail(P.EINVAL, `request not aligned to minimum block size ${this.minBlock}`);
      }
    }

    switch (type) {
      case P.CMD_READ:
        if (length > this.maxPayload) return fail(P.EINVAL, `read length ${length} exceeds maximum ${this.maxPayload}`);
        this.wire.track(length, this.doRead(hdr, offset, length, (flags & P.CMD_FLAG_DF) !== 0));
        return;
      case P.CMD_WRITE: {
        if (length === 0) return this.replyOk(hdr);
        const done = this.runSimple(hdr, type, () => e.write(offset, payload!, { fua }));
        // A payload received directly into a pool buffer goes back to the
        // pool once the export is done with it (see NbdExport.write).
        this.wire.track(length, pooled ? done.then(() => this.wire.giveBack(payload!)) : done);
        this.wire.hooks.stats.bytesWritten += length;
        return;
      }
      case P.CMD_FLUSH:
        if (!(this.transmitFlags & P.FLAG_SEND_FLUSH)) return fail(P.EINVAL, 'flush not supported');
        this.wire.track(
          0,
          this.runSimple(hdr, type, () => e.flush()),
        );
        return;
      case P.CMD_TRIM:
        if (!(this.transmitFlags & P.FLAG_SEND_TRIM)) return fail(P.EINVAL, 'trim not supported');
        if (length === 0) return this.replyOk(hdr);
        this.wire.track(
          0,
          this.runSimple(hdr, type, () => e.trim(offset, length, { fua })),
        );
        return;
      case P.CMD_WRITE_ZEROES: {
        if (length === 0) return this.replyOk(hdr);
        const noHole = (flags & P.CMD_FLAG_NO_HOLE) !== 0;
        const fastZero = (flags & P.CMD_FLAG_FAST_ZERO) !== 0;
        if (!e.capabilities.zero) {
          if (fastZero) return fail(P.ENOTSUP, 'fast zero not possible');
          this.wire.track(
            0,
            this.runSimple(hdr, type, () => this.emulateZero(offset, length, fua)),
          );
          return;
        }
        this.wire.track(
          0,
          this.runSimple(hdr, type, () => e.zero(offset, length, { fua, noHole, fastZero })),
        );
        return;
      }
      case P.CMD_CACHE:
        if (!e.capabilities.cache) return this.replyOk(hdr);
        this.wire.track(
          0,
          this.runSimple(hdr, type, () => e.cache(offset, length)),
        );
        return;
      case P.CMD_BLOCK_STATUS:
        if (!this.structured || !this.metaSelected) {
          return fail(P.EINVAL, 'block status needs a negotiated base:allocation context');
        }
        if (length === 0) return fail(P.EINVAL, 'block status of zero length');
        this.wire.track(0, this.doBlockStatus(hdr, offset, length, (flags & P.CMD_FLAG_REQ_ONE) !== 0));
        return;
    }
  }

  private async emulateZero(offset: number, length: number, fua: boolean): Promise<void> {
    const e = this.exp!;
    const step = 1024 * 1024;
    const zeros = Buffer.alloc(Math.min(step, length));
    for (let done = 0; done < length; done += step) {
      const n = Math.min(step, length - done);
      await e.write(offset + done, n === zeros.length ? zeros : zeros.subarray(0, n), { fua });
    }
  }

  private errnoOf(err: unknown): number {
    if (err instanceof NbdError) return err.nbdErrno;
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    return P.nbdErrnoFromCode(code);
  }

  private async runSimple(cookie: Buffer, type: number, op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } catch (err) {
      this.wire.hooks.stats.errors++;
      this.wire.log('warn', { err: (err as Error)?.message, type }, 'request failed');
      return this.replyErrorCookie(cookie, type, this.errnoOf(err), (err as Error)?.message ?? 'error');
    }
    this.replyOk(cookie);
  }

  private replyOk(cookie: Buffer): void {
    if (this.wire.destroyed) return;
    const b = Buffer.allocUnsafe(16);
    b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
    b.writeUInt32BE(0, 4);
    cookie.copy(b, 8, 0, 8);
    this.wire.cork();
    this.wire.send(b);
  }

  private replyError(hdrView: Buffer, type: number, errno: number, msg: string): void {
    const cookie = Buffer.allocUnsafe(8);
    hdrView.copy(cookie, 0, 8, 16);
    this.replyErrorCookie(cookie, type, errno, msg);
  }

  /** An error reply: structured with a message when negotiated, else simple. */
  private replyErrorCookie(cookie: Buffer, type: number, errno: number, msg: string): void {
    this.wire.hooks.stats.errors++;
    if (this.wire.destroyed) return;
    this.wire.cork();
    if (this.structured) {
      const m = Buffer.from(msg.slice(0, 1024), 'utf8');
      const b = Buffer.allocUnsafe(20 + 6 + m.length);
      b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
      b.writeUInt16BE(P.REPLY_FLAG_DONE, 4);
      b.writeUInt16BE(P.REPLY_TYPE_ERROR, 6);
      cookie.copy(b, 8, 0, 8);
      b.writeUInt32BE(6 + m.length, 16);
      b.writeUInt32BE(errno, 20);
      b.writeUInt16BE(m.length, 24);
      m.copy(b, 26);
      this.wire.send(b);
      return;
    }
    void type;
    const b = Buffer.allocUnsafe(16);
    b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
    b.writeUInt32BE(errno, 4);
    cookie.copy(b, 8, 0, 8);
    this.wire.send(b);
  }

  private structuredHeader(cookie: Buffer, flags: number, type: number, length: number): Buffer {
    const b = Buffer.allocUnsafe(20);
    b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    cookie.copy(b, 8, 0, 8);
    b.writeUInt32BE(length, 16);
    return b;
  }

  private async doRead(cookie: Buffer, offset: number, length: number, df: boolean): Promise<void> {
    const e = this.exp!;
    if (length === 0) {
      if (this.structured) {
        this.wire.cork();
        this.wire.send(this.structuredHeader(cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, 0));
      } else this.replyOk(cookie);
      return;
    }
    const into = this.wire.borrow(length);
    if (this.structured && !df && e.readSparse && length >= SPARSE_READ_THRESHOLD) {
      let chunks;
      try {
        chunks = await e.readSparse(offset, length, into);
        let covered = offset;
        for (const c of chunks) {
          if (c.offset !== covered || c.length <= 0 || (c.data && c.data.length !== c.length)) {
            throw new Error('export returned inconsistent sparse chunks');
          }
          covered += c.length;
        }
        if (covered !== offset + length) throw new Error('export sparse read did not cover the request');
      } catch (err) {
        this.wire.giveBack(into);
        this.wire.log('warn', { err: (err as Error)?.message }, 'read failed');
        return this.replyErrorCookie(cookie, P.CMD_READ, this.errnoOf(err), (err as Error)?.message ?? 'read error');
      }
      if (this.wire.destroyed) return;
      this.wire.cork();
      for (let i = 0; i < chunks.length; i++) {
        const last = i === chunks.length - 1;
        const c = chunks[i]!;
        const done = i === chunks.length - 1 ? P.REPLY_FLAG_DONE : 0;
        if (c.data) {
          const h = this.structuredHeader(cookie, done, P.REPLY_TYPE_OFFSET_DATA, 8 + c.length);
          const o = Buffer.allocUnsafe(8);
          o.writeBigUInt64BE(BigInt(c.offset), 0);
          this.wire.send(h);
          this.wire.send(o);
          if (last) this.wire.sendLast(c.data, into);
          else this.wire.send(c.data);
        } else {
          const h = Buffer.allocUnsafe(32);
          this.structuredHeader(cookie, done, P.REPLY_TYPE_OFFSET_HOLE, 12).copy(h, 0);
          h.writeBigUInt64BE(BigInt(c.offset), 20);
          h.writeUInt32BE(c.length, 28);
          if (last) this.wire.sendLast(h, into);
          else this.wire.send(h);
        }
      }
      this.wire.hooks.stats.bytesRead += length;
      return;
    }
    let data: Buffer;
    try {
      data = await e.read(offset, length, into);
      if (data.length !== length) throw new Error(`export returned ${data.length} bytes for a ${length}-byte read`);
    } catch (err) {
      this.wire.giveBack(into);
      this.wire.log('warn', { err: (err as Error)?.message }, 'read failed');
      return this.replyErrorCookie(cookie, P.CMD_READ, this.errnoOf(err), (err as Error)?.message ?? 'read error');
    }
    if (this.wire.destroyed) return;
    this.wire.hooks.stats.bytesRead += length;
    this.wire.cork();
    if (this.structured) {
      const h = Buffer.allocUnsafe(28);
      h.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
      h.writeUInt16BE(P.REPLY_FLAG_DONE, 4);
      h.writeUInt16BE(P.REPLY_TYPE_OFFSET_DATA, 6);
      cookie.copy(h, 8, 0, 8);
      h.writeUInt32BE(8 + length, 16);
      h.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
      h.writeUInt32BE(offset >>> 0, 24);
      this.wire.send(h);
    } else {
      const h = Buffer.allocUnsafe(16);
      h.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
      h.writeUInt32BE(0, 4);
      cookie.copy(h, 8, 0, 8);
      this.wire.send(h);
    }
    this.wire.sendLast(data, into);
  }

  private async doBlockStatus(cookie: Buffer, offset: number, length: number, reqOne: boolean): Promise<void> {
    const e = this.exp!;
    const chosen = this.metaChosen.length ? this.metaChosen : [{ id: META_CONTEXT_ID, name: P.BASE_ALLOCATION }];
    let all: Extent[][];
    try {
      // Every context first: an error then is one error reply, never half a set of chunks.
      all = await Promise.all(
        chosen.map(async (c) => {
          let extents: Extent[];
          if (c.name === P.BASE_ALLOCATION) {
            extents = e.capabilities.blockStatus
              ? await e.blockStatus(offset, length)
              : [{ length: Math.min(length, this.size - offset), flags: 0 }];
          } else {
            const src = e.metaContexts;
            const h = c as { ctx?: Promise<MetaContext | null> };
            h.ctx ??= Promise.resolve(src ? src.open(c.name) : null);
            const ctx = await h.ctx;
            if (!ctx) throw Object.assign(new Error(`meta context ${c.name} is not available on this export`), { code: 'EINVAL' });
            extents = await ctx.blockStatus(offset, length);
          }
          if (extents.length === 0) throw new Error(`export returned no extents for ${c.name}`);
          return extents;
        }),
      );
    } catch (err) {
      this.wire.log('warn', { err: (err as Error)?.message }, 'block status failed');
      return this.replyErrorCookie(cookie, P.CMD_BLOCK_STATUS, this.errnoOf(err), (err as Error)?.message ?? 'error');
    }
    if (this.wire.destroyed) return;
    // One chunk per selected context; the last one carries the DONE flag.
    this.wire.cork();
    chosen.forEach((c, i) => {
      const mask = c.name === P.BASE_ALLOCATION ? STATE_HOLE | STATE_ZERO : 0xffffffff;
      const out = this.clampExtents(all[i]!, offset, length, reqOne, mask);
      const b = Buffer.allocUnsafe(20 + 4 + 8 * out.length);
      this.structuredHeader(cookie, i === chosen.length - 1 ? P.REPLY_FLAG_DONE : 0, P.REPLY_TYPE_BLOCK_STATUS, 4 + 8 * out.length).copy(
        b,
        0,
      );
      b.writeUInt32BE(c.id, 20);
      let p = 24;
      for (const [len, flags] of out) {
        b.writeUInt32BE(len, p);
        b.writeUInt32BE(flags >>> 0, p + 4);
        p += 8;
      }
      this.wire.send(b);
    });
  }

  /**
   * Extents within the export, each <= 4 GiB - 1, at most MAX_EXTENTS,
   * exactly one (no longer than the request) with REQ_ONE; equal neighbours merged.
   */
  private clampExtents(extents: Extent[], offset: number, length: number, reqOne: boolean, mask: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = offset;
    const limitEnd = reqOne ? offset + length : this.size;
    for (const x of extents) {
      if (pos >= limitEnd || out.length >= MAX_EXTENTS) break;
      let len = Math.min(x.length, limitEnd - pos);
      if (len <= 0) break;
      const flags = (x.flags & mask) >>> 0;
      while (len > 0 && out.length < MAX_EXTENTS) {
        const last = out[out.length - 1];
        const room = 0xfffff000 - (last && last[1] === flags ? last[0] : 0);
        if (last && last[1] === flags && room > 0) {
          const add = Math.min(room, len);
          last[0] += add;
          len -= add;
          pos += add;
          continue;
        }
        const piece = Math.min(len, 0xfffff000);
        out.push([piece, flags]);
        len -= piece;
        pos += piece;
      }
      if (reqOne) break;
    }
    if (reqOne && out.length > 1) out.length = 1;
    return out;
  }
}
