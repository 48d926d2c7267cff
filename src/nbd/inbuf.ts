/**
 * A queue of received chunks that can be consumed in exact-size pieces.
 * Consuming a piece that lies inside one chunk is zero-copy (a view);
 * only pieces that straddle chunks are copied.
 */
export class InputQueue {
  private chunks: Buffer[] = [];
  /** Offset into chunks[0] of the first unconsumed byte. */
  private headOff = 0;
  /** Unconsumed bytes in total. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Byte at position i (0-based from the head). Caller ensures i < length. */
  private byteAt(i: number): number {
    let k = 0;
    let off = this.headOff + i;
    while (off >= this.chunks[k]!.length) {
      off -= this.chunks[k]!.length;
      k++;
    }
    return this.chunks[k]![off]!;
  }

  /**
   * A view of the first n bytes without consuming them, or a copy when they
   * straddle chunks. Caller ensures n <= length.
   */
  peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.headOff >= n) return first.subarray(this.headOff, this.headOff + n);
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.byteAt(i);
    return out;
  }

  /** Remove and return the first n bytes. Caller ensures n <= length. */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    const avail = first.length - this.headOff;
    if (avail >= n) {
      const view = first.subarray(this.headOff, this.headOff + n);
      this.advanceHead(n, avail);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const have = c.length - this.headOff;
      const want = Math.min(have, n - filled);
      c.copy(out, filled, this.headOff, this.headOff + want);
      filled += want;
      this.advanceHead(want, have);
    }
    return out;
  }

  /** Drop up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.length > 0) {
      const c = this.chunks[0]!;
      const have = c.length - this.headOff;
      const want = Math.min(have, n - dropped);
      this.advanceHead(want, have);
      dropped += want;
    }
    return dropped;
  }

  clear(): void {
    this.chunks = [];
    this.headOff = 0;
    this.length = 0;
  }

  private advanceHead(n: number, availInFirst: number): void {
    this.length -= n;
    if (n === availInFirst) {
      this.chunks.shift();
      this.headOff = 0;
    } else {
      this.headOff += n;
    }
  }
}
