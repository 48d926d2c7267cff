/**
 * Snapshots and clones as NBD exports: an NbdExport over an ImageSource
 * (a PointImage, or a LayeredImage for a clone). One object serves every
 * connection to the view; it keeps no per-connection state, so multi-conn
 * holds. Its base:allocation is the image's own; what changed since an
 * earlier point is the qemu:dirty-bitmap meta contexts' business.
 */
import type { ExportCapabilities, Extent, MetaContextSource, NbdExport, WriteFlags, ZeroFlags } from '../nbd';
import { imageExtents, type ImageSource } from './point-image';
import type { LayeredImage } from './layers';

function readOnlyError(): Error {
  return Object.assign(new Error('this export is read-only'), { code: 'EPERM' });
}

export class ViewExport implements NbdExport {
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: ExportCapabilities;
  readonly blockSize = undefined;
  private inFlight = 0;
  private idle: Array<() => void> = [];
  private gate: Promise<void> | null = null;

  constructor(
    private image: ImageSource,
    private writable: LayeredImage | null,
    /** Its qemu:dirty-bitmap contexts (dirty-bitmap.ts). */
    readonly metaContexts?: MetaContextSource,
  ) {
    this.size = image.size;
    this.readOnly = writable === null || writable.readOnly;
    const rw = !this.readOnly;
    this.capabilities = { flush: rw, fua: rw, trim: rw, zero: rw, fastZero: false, cache: true, blockStatus: true, multiConn: true };
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.image.read(offset, length, into);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return imageExtents(this.image, offset, length);
  }

  async cache(): Promise<void> {}

  /** Runs a write against the current top layer, counted so quiesced() can wait for it. */
  private async mutate(fn: (t: LayeredImage) => Promise<void>): Promise<void> {
    if (this.readOnly) throw readOnlyError();
    while (this.gate) await this.gate;
    const t = this.writable;
    if (!t) throw readOnlyError();
    this.inFlight++;
    try {
      await fn(t);
    } finally {
      if (--this.inFlight === 0) for (const w of this.idle.splice(0)) w();
    }
  }

  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.mutate(async (t) => {
      await t.write(offset, data, data.length);
      if (flags.fua) await t.flush();
    });
  }

  trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    return this.mutate(async (t) => {
      await t.write(offset, null, length);
      if (flags.fua) await t.flush();
    });
  }

  zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    if (flags.fastZero) return Promise.reject(Object.assign(new Error('fast zero is not supported'), { code: 'ENOTSUP' }));
    return this.mutate(async (t) => {
      await t.write(offset, null, length);
      if (flags.fua) await t.flush();
    });
  }

  flush(): Promise<void> {
    return this.mutate((t) => t.flush()).catch((err) => {
      if (this.readOnly) return;
      throw err;
    });
  }

  /** Holds new writes, waits for those in flight, runs fn (which may swap the image). */
  async quiesced<T>(fn: () => Promise<T>): Promise<T> {
    while (this.gate) await this.gate;
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    try {
      if (this.inFlight > 0) await new Promise<void>((r) => this.idle.push(r));
      return await fn();
    } finally {
      this.gate = null;
      open();
    }
  }

  /** Replaces the image (a clone whose top layer was frozen gets a fresh one). */
  swap(image: ImageSource, writable: LayeredImage | null): void {
    this.image = image;
    this.writable = writable;
  }

  close(): void {}
}
