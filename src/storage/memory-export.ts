/**
 * MemoryExport: a sparse in-memory NbdExport for tests.
 *
 * Data lives in fixed-size pages (64 KiB by default) kept in a Map; a page
 * that was never written, or was wholly trimmed/zeroed, is absent and reads
 * as zeroes. blockStatus reports absent pages as HOLE|ZERO and present pages
 * as data. Partially trimmed/zeroed pages stay present with the range zeroed;
 * ZERO with noHole keeps every present page.
 *
 * One MemoryExport may be handed to many connections: close() only counts.
 *
 * Fault injection: `failNext(op, code, count)` makes the next `count` calls
 * of `op` reject with an Error of that code, before touching any data;
 * `hooks.before` runs (and may delay or throw) before every operation.
 */
import {
  STATE_HOLE,
  STATE_ZERO,
  type ExportCapabilities,
  type Extent,
  type NbdExport,
  type ReadChunk,
  type WriteFlags,
  type ZeroFlags,
} from '../nbd';

export type MemoryOp = 'read' | 'write' | 'flush' | 'trim' | 'zero' | 'cache' | 'blockStatus';

export interface MemoryExportHooks {
  /** Called before each operation; a rejection/throw fails the operation. */
  before?(op: MemoryOp, offset: number, length: number): void | Promise<void>;
}

export interface MemoryExportOptions {
  readOnly?: boolean;
  /** Power of two, default 65536. */
  pageSize?: number;
  /** Override capabilities (e.g. to test a server against a limited export). */
  capabilities?: Partial<ExportCapabilities>;
  /** Fail fastZero requests with ENOTSUP (as a file system without fallocate would). */
  slowZero?: boolean;
  hooks?: MemoryExportHooks;
  /** Most extents per blockStatus reply. Default 1024. */
  maxExtents?: number;
}

export interface MemoryExportStats {
  reads: number;
  writes: number;
  flushes: number;
  trims: number;
  zeroes: number;
  caches: number;
  blockStatuses: number;
  /** Writes/trims/zeroes with FUA set. */
  fuaOps: number;
  closes: number;
}

const ERRNO: Record<string, number> = {
  EPERM: 1,
  EIO: 5,
  EINVAL: 22,
  ENOSPC: 28,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
};

function codedError(code: string, message: string): NodeJS.ErrnoException {
  const err = new Error(message) as NodeJS.ErrnoException;
  err.code = code;
  const n = ERRNO[code];
  if (n !== undefined) err.errno = n;
  return err;
}

export class MemoryExport implements NbdExport {
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: ExportCapabilities;
  readonly pageSize: number;
  readonly hooks: MemoryExportHooks;
  readonly stats: MemoryExportStats = {
    reads: 0,
    writes: 0,
    flushes: 0,
    trims: 0,
    zeroes: 0,
    caches: 0,
    blockStatuses: 0,
    fuaOps: 0,
    closes: 0,
  };
  private readonly pages = new Map<number, Buffer>();
  private readonly failures = new Map<MemoryOp, Array<{ code: string; count: number }>>();
  private readonly slowZero: boolean;
  private readonly maxExtents: number;

  constructor(size: number, options: MemoryExportOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid size ${size}`);
    const pageSize = options.pageSize ?? 65536;
    if (!Number.isInteger(pageSize) || pageSize < 1 || (pageSize & (pageSize - 1)) !== 0) {
      throw new RangeError(`pageSize must be a power of two, got ${pageSize}`);
    }
    this.size = size;
    this.pageSize = pageSize;
    this.readOnly = options.readOnly === true;
    this.slowZero = options.slowZero === true;
    this.hooks = options.hooks ?? {};
    this.maxExtents = options.maxExtents ?? 1024;
    const w = !this.readOnly;
    this.capabilities = {
      flush: w,
      fua: w,
      trim: w,
      zero: w,
      fastZero: w,
      cache: true,
      blockStatus: true,
      multiConn: true,
      ...options.capabilities,
    };
  }

  /** Make the next `count` calls of `op` reject with an Error of `code`. */
  failNext(op: MemoryOp, code = 'EIO', count = 1): void {
    let list = this.failures.get(op);
    if (!list) this.failures.set(op, (list = []));
    list.push({ code, count });
  }

  /** Forget pending injected failures. */
  clearFailures(): void {
    this.failures.clear();
  }

  /** Bytes held in pages. */
  get allocatedBytes(): number {
    return this.pages.size * this.pageSize;
  }

  /** Number of pages present. */
  get pageCount(): number {
    return this.pages.size;
  }

  /** A copy of the whole content (for small exports in tests). */
  snapshot(): Buffer {
    const out = Buffer.alloc(this.size);
    for (const [idx, page] of this.pages) {
      const start = idx * this.pageSize;
      page.copy(out, start, 0, Math.min(this.pageSize, this.size - start));
    }
    return out;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    await this.enter('read', offset, length);
    this.stats.reads++;
    return this.readNow(offset, length);
  }

  async readSparse(offset: number, length: number): Promise<ReadChunk[]> {
    await this.enter('read', offset, length);
    this.stats.reads++;
    const chunks: ReadChunk[] = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const present = this.pages.has(this.pageOf(pos));
      let stop = pos;
      while (stop < end && this.pages.has(this.pageOf(stop)) === present) stop = this.nextPage(stop);
      stop = Math.min(stop, end);
      chunks.push(present ? { offset: pos, length: stop - pos, data: this.readNow(pos, stop - pos) } : { offset: pos, length: stop - pos });
      pos = stop;
    }
    return chunks;
  }

  async write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    await this.enter('write', offset, data.length, true);
    this.stats.writes++;
    if (flags.fua) this.stats.fuaOps++;
    let pos = offset;
    let src = 0;
    while (src < data.length) {
      const idx = this.pageOf(pos);
      const inPage = pos - idx * this.pageSize;
      const n = Math.min(this.pageSize - inPage, data.length - src);
      let page = this.pages.get(idx);
      if (!page) {
        page = Buffer.alloc(this.pageSize);
        this.pages.set(idx, page);
      }
      data.copy(page, inPage, src, src + n);
      pos += n;
      src += n;
    }
  }

  async flush(): Promise<void> {
    await this.enter('flush', 0, 0);
    this.stats.flushes++;
  }

  async trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    await this.enter('trim', offset, length, true);
    this.stats.trims++;
    if (flags.fua) this.stats.fuaOps++;
    this.discard(offset, length, true);
  }

  async zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    await this.enter('zero', offset, length, true);
    if (flags.fastZero && this.slowZero) throw codedError('ENOTSUP', 'fast zero not supported');
    this.stats.zeroes++;
    if (flags.fua) this.stats.fuaOps++;
    this.discard(offset, length, !flags.noHole);
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.enter('cache', offset, length);
    this.stats.caches++;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    await this.enter('blockStatus', offset, length);
    this.stats.blockStatuses++;
    const out: Extent[] = [];
    const end = Math.min(offset + length, this.size);
    let pos = offset;
    while (pos < end && out.length < this.maxExtents) {
      const present = this.pages.has(this.pageOf(pos));
      let stop = pos;
      while (stop < end && this.pages.has(this.pageOf(stop)) === present) stop = this.nextPage(stop);
      stop = Math.min(stop, end);
      out.push({ length: stop - pos, flags: present ? 0 : STATE_HOLE | STATE_ZERO });
      pos = stop;
    }
    if (out.length === 0) out.push({ length: Math.max(1, Math.min(length, this.size - offset)), flags: STATE_HOLE | STATE_ZERO });
    return out;
  }

  close(): void {
    this.stats.closes++;
  }

  // -------------------------------------------------------------------------

  private pageOf(pos: number): number {
    return Math.floor(pos / this.pageSize);
  }

  private nextPage(pos: number): number {
    return (this.pageOf(pos) + 1) * this.pageSize;
  }

  private readNow(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    let pos = offset;
    let dst = 0;
    while (dst < length) {
      const idx = this.pageOf(pos);
      const inPage = pos - idx * this.pageSize;
      const n = Math.min(this.pageSize - inPage, length - dst);
      const page = this.pages.get(idx);
      if (page) page.copy(out, dst, inPage, inPage + n);
      pos += n;
      dst += n;
    }
    return out;
  }

  /** Zero [offset, offset+length); drop wholly covered pages if `dropPages`. */
  private discard(offset: number, length: number, dropPages: boolean): void {
    const end = offset + length;
    const ps = this.pageSize;
    const range = end - offset;
    // Few pages present relative to the range: walk the map instead of the range.
    if (this.pages.size < range / ps) {
      for (const [idx, page] of this.pages) {
        const ps0 = idx * ps;
        const a = Math.max(offset, ps0);
        const b = Math.min(end, ps0 + ps);
        if (a >= b) continue;
        this.zeroPage(idx, page, a - ps0, b - ps0, dropPages);
      }
      return;
    }
    for (let pos = offset; pos < end;) {
      const idx = this.pageOf(pos);
      const ps0 = idx * ps;
      const b = Math.min(end, ps0 + ps);
      const page = this.pages.get(idx);
      if (page) this.zeroPage(idx, page, pos - ps0, b - ps0, dropPages);
      pos = b;
    }
  }

  private zeroPage(idx: number, page: Buffer, from: number, to: number, dropPages: boolean): void {
    if (dropPages && from === 0 && to === this.pageSize) this.pages.delete(idx);
    else page.fill(0, from, to);
  }

  private async enter(op: MemoryOp, offset: number, length: number, writes = false): Promise<void> {
    if (this.hooks.before) await this.hooks.before(op, offset, length);
    const list = this.failures.get(op);
    if (list && list.length > 0) {
      const f = list[0]!;
      if (--f.count <= 0) list.shift();
      throw codedError(f.code, `injected ${op} failure (${f.code})`);
    }
    if (writes && this.readOnly) throw codedError('EPERM', 'export is read-only');
  }
}
