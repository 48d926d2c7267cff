/**
 * Direct mode of a container writer (REWIND_JOURNAL_IO=direct): records
 * written with O_DIRECT through an aligned staging buffer, in whole 4 KiB
 * blocks, on the threadpool. The journal is write-once data: going around
 * the page cache spares the kernel allocating (and later evicting) a fresh
 * page for every byte journaled.
 *
 * The file's last partial block is kept in memory and rewritten, with the
 * next records, by the next write; the zero padding past the last record is
 * cut off by the writer at seal and close (after a crash it reads as a torn
 * tail, which recovery cuts). Where O_DIRECT is refused at open (tmpfs) the
 * writer never gets a sink; a write refused with EINVAL makes it drop the
 * sink and go buffered.
 */
import * as fs from 'node:fs';
import { alignedBuffer } from '../native';

/** The unit of alignment of offsets, lengths and memory. */
export const DIRECT_BLOCK = 4096;
/** Staging buffer size (a multiple of DIRECT_BLOCK). */
const DIRECT_STAGING = 8 * 1024 * 1024;
/** Staging buffers kept for reuse in this thread (one per writer writing at once). */
const stagingPool: Buffer[] = [];
const STAGING_POOL_MAX = 4;

export class DirectSink {
  private constructor(
    /** A second descriptor of the file, opened O_WRONLY | O_DIRECT. */
    private readonly fd: number,
    /** File bytes [end - tailLen, end): the last partial block. */
    private readonly tail: Buffer,
    private tailLen: number,
    private readonly counters: { writeCalls: number },
  ) {}

  /**
   * Open `file` with O_DIRECT. `lastBlock` holds the file's bytes from the
   * last 4 KiB boundary up to its end. Null where O_DIRECT is refused.
   */
  static async open(file: string, lastBlock: Buffer, counters: { writeCalls: number }): Promise<DirectSink | null> {
    const O_DIRECT = fs.constants.O_DIRECT;
    if (!O_DIRECT) return null;
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fs.open(file, fs.constants.O_WRONLY | O_DIRECT, (err, d) => (err ? reject(err) : resolve(d))),
      );
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EINVAL') return null; // no O_DIRECT here (tmpfs)
      throw err;
    }
    const tail = Buffer.alloc(DIRECT_BLOCK);
    const tailLen = lastBlock.length % DIRECT_BLOCK;
    lastBlock.copy(tail, 0, lastBlock.length - tailLen);
    return new DirectSink(fd, tail, tailLen, counters);
  }

  /**
   * Write `bufs` (which start at `start`, the file's end) as whole blocks:
   * the kept partial block, then the bytes, through the staging buffer; the
   * last block is padded with zeros and kept for the next write. Rejects
   * with the file system's error (EINVAL: it refuses these writes).
   */
  async write(start: number, bufs: Buffer[]): Promise<void> {
    const st = stagingPool.pop() ?? alignedBuffer(DIRECT_STAGING, DIRECT_BLOCK);
    try {
      const cap = st.length;
      let pos = start - this.tailLen;
      let fill = this.tailLen;
      this.tail.copy(st, 0, 0, fill);
      for (const buf of bufs) {
        let off = 0;
        while (off < buf.length) {
          const n = Math.min(cap - fill, buf.length - off);
          buf.copy(st, fill, off, off + n);
          fill += n;
          off += n;
          if (fill === cap) {
            await this.pwrite(st, cap, pos);
            pos += cap;
            fill = 0;
          }
        }
      }
      const keep = fill % DIRECT_BLOCK;
      if (fill > 0) {
        const padded = keep ? fill - keep + DIRECT_BLOCK : fill;
        if (keep) st.fill(0, fill, padded);
        await this.pwrite(st, padded, pos);
      }
      st.copy(this.tail, 0, fill - keep, fill);
      this.tailLen = keep;
    } finally {
      if (stagingPool.length < STAGING_POOL_MAX) stagingPool.push(st);
    }
  }

  /** Bytes [start, start + bytes) went through the page cache: keep the last partial block current. */
  noteBuffered(start: number, bytes: number, bufs: Buffer[]): void {
    const keep = (start + bytes) % DIRECT_BLOCK;
    if (bytes < keep) {
      // Still inside the same block: the batch extends the kept bytes.
      let at = this.tailLen;
      for (const buf of bufs) at += buf.copy(this.tail, at);
    } else {
      // The last `keep` bytes of the batch.
      let need = keep;
      for (let i = bufs.length - 1; i >= 0 && need > 0; i--) {
        const buf = bufs[i]!;
        const n = Math.min(need, buf.length);
        buf.copy(this.tail, need - n, buf.length - n);
        need -= n;
      }
    }
    this.tailLen = keep;
  }

  close(): Promise<void> {
    return new Promise<void>((resolve) => fs.close(this.fd, () => resolve()));
  }

  closeQuietly(): void {
    fs.close(this.fd, () => undefined);
  }

  /** pwrite all of st[0, len) at pos on the threadpool; short writes continue from a block boundary. */
  private async pwrite(st: Buffer, len: number, pos: number): Promise<void> {
    let done = 0;
    while (done < len) {
      this.counters.writeCalls++;
      const n = await new Promise<number>((resolve, reject) =>
        fs.write(this.fd, st, done, len - done, pos + done, (err, written) => (err ? reject(err) : resolve(written))),
      );
      if (n <= 0 || (done + n < len && n % DIRECT_BLOCK !== 0)) {
        throw Object.assign(new Error(`direct write of ${len - done} bytes at ${pos + done} wrote ${n}`), { code: 'EIO' });
      }
      done += n;
    }
  }
}
