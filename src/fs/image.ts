/**
 * The image the reader reads: a structural subset of NbdExport, so a
 * snapshot, clone, archived point or live volume can be passed as is.
 * CountingImage lets tests and the catalog assert how much was read.
 */
import * as fsp from 'node:fs/promises';

export interface FsImage {
  /** Size in bytes. */
  readonly size: number;
  /**
   * Exactly `length` bytes at `offset`; callers keep 0 <= offset,
   * offset + length <= size, length > 0. When `into` (exactly `length`
   * bytes) is given, the image may fill and return it instead of a new
   * buffer, as NbdExport.read does: streaming reads reuse a few buffers
   * rather than touching fresh memory for every chunk.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
}

/** Counts bytes and calls through an image. */
export class CountingImage implements FsImage {
  bytes = 0;
  calls = 0;
  constructor(private readonly inner: FsImage) {}

  get size(): number {
    return this.inner.size;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.calls++;
    this.bytes += length;
    return this.inner.read(offset, length, into);
  }

  reset(): void {
    this.bytes = 0;
    this.calls = 0;
  }
}

/** A read-only image over a plain file (tests, tools); close() when done. */
export async function openImageFile(file: string): Promise<FsImage & { close(): Promise<void> }> {
  const fh = await fsp.open(file, 'r');
  const { size } = await fh.stat();
  return {
    size,
    async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
      const buf = into ?? Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw Object.assign(new Error(`short read at ${offset + done}`), { code: 'EIO' });
        done += bytesRead;
      }
      return buf;
    },
    close: () => fh.close(),
  };
}

/** An image held in memory (tests: mutated copies of real images). */
export function memoryImage(data: Buffer): FsImage {
  return {
    size: data.length,
    read: (offset, length) => Promise.resolve(data.subarray(offset, offset + length)),
  };
}
