/**
 * FileExport: an NbdExport backed by a regular (normally sparse) file or a
 * block device, in the manner of nbdkit's file plugin.
 *
 * - One file descriptor per opened image, shared (reference-counted) by all
 *   the FileExport objects, i.e. connections, that open the same path in the
 *   same mode. Every connection goes through the same page cache, so a
 *   flush (fdatasync) on any of them makes all connections' writes durable:
 *   multiConn is advertised.
 * - The descriptor is closed when the last FileExport is closed and no I/O
 *   is in flight on it, so a recycled fd number can never receive stray I/O.
 * - READ/WRITE go through libuv's threadpool (fs.read/fs.write, pread/pwrite)
 *   using pooled request objects: no per-request closures or promises beyond
 *   the one returned. TRIM/ZERO/FLUSH/BLOCK_STATUS use the native addon.
 * - Failures reject with an Error whose `code` is the errno name.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as native from '../native';
import { startRead, startWrite } from './image-io';
import {
  codedError,
  fstatFd,
  openFd,
  openShared,
  registry,
  SharedImage,
  type FileCreateOptions,
  type FileImageInfo,
  type FileOpenOptions,
  type RegistryEntry,
} from './shared-image';
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

export { codedError, type FileCreateOptions, type FileImageInfo, type FileOpenOptions } from './shared-image';

/** Most extents returned by one blockStatus call. */
export const MAX_BLOCK_STATUS_EXTENTS = 1024;
/** Size of the pieces in which zeroes are written when fallocate cannot zero. */
export const ZERO_WRITE_CHUNK = 1 << 20;
/** Holes shorter than this inside a sparse read are returned as data. */
const SPARSE_MIN_HOLE = 4096;

const ZERO_CHUNK = Buffer.alloc(ZERO_WRITE_CHUNK);

const RW_CAPS: ExportCapabilities = Object.freeze({
  flush: true,
  fua: true,
  trim: true,
  zero: true,
  fastZero: true,
  cache: true,
  blockStatus: true,
  multiConn: true,
});

const RO_CAPS: ExportCapabilities = Object.freeze({
  flush: false,
  fua: false,
  trim: false,
  zero: false,
  fastZero: false,
  cache: true,
  blockStatus: true,
  multiConn: true,
});

// ---------------------------------------------------------------------------

export class FileExport implements NbdExport {
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: ExportCapabilities;
  /** The path as given to open(). */
  readonly path: string;
  private readonly img: SharedImage;
  private closed = false;

  private constructor(img: SharedImage, givenPath: string) {
    this.img = img;
    this.size = img.size;
    this.readOnly = img.readOnly;
    this.capabilities = img.readOnly ? RO_CAPS : RW_CAPS;
    this.path = givenPath;
  }

  /**
   * Creates a sparse regular file of `size` bytes (ftruncate, nothing
   * written). Fails with EEXIST if `path` exists, unless `overwrite` is set;
   * never overwrites anything but a regular file.
   */
  static async create(filePath: string, size: number, options: FileCreateOptions = {}): Promise<void> {
    if (!Number.isSafeInteger(size) || size < 0) throw codedError('EINVAL', `invalid image size ${size}`);
    if (options.overwrite) {
      const st = await fs.promises.stat(filePath).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (st && !st.isFile()) throw codedError('EINVAL', `${filePath}: exists and is not a regular file`);
    }
    const fh = await fs.promises.open(filePath, options.overwrite ? 'w' : 'wx', options.mode ?? 0o644);
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /**
   * Opens a regular file or block device. Exports opened on the same path in
   * the same mode share one descriptor until the last is closed.
   */
  static async open(filePath: string, options: FileOpenOptions = {}): Promise<FileExport> {
    const readOnly = options.readOnly === true;
    const realPath = await fs.promises.realpath(filePath);
    const key = `${readOnly ? 'ro' : 'rw'}:${realPath}`;
    for (;;) {
      let entry = registry.get(key);
      if (!entry) {
        const e: RegistryEntry = { promise: openShared(realPath, readOnly, key) };
        e.promise.then(
          (img) => {
            e.image = img;
          },
          () => {
            if (registry.get(key) === e) registry.delete(key);
          },
        );
        registry.set(key, e);
        entry = e;
      }
      const img = await entry.promise;
      if (img.released) continue;
      img.refs++;
      return new FileExport(img, filePath);
    }
  }

  /** Size and allocation of an image file or block device, without opening it as an export. */
  static async stat(filePath: string): Promise<FileImageInfo> {
    const st = await fs.promises.stat(filePath);
    if (st.isFile()) {
      return { path: filePath, size: st.size, allocatedBytes: st.blocks * 512, isBlockDevice: false };
    }
    if (st.isBlockDevice()) {
      const fd = await openFd(filePath, fs.constants.O_RDONLY);
      try {
        const size = native.blockDeviceSize(fd);
        return { path: filePath, size, allocatedBytes: size, isBlockDevice: true };
      } finally {
        fs.close(fd, () => {});
      }
    }
    throw codedError('EINVAL', `${filePath}: not a regular file or block device`);
  }

  /** Size and current allocation of this export's image. */
  async stat(): Promise<FileImageInfo> {
    this.checkOpen();
    const img = this.img;
    if (img.isBlockDevice) return { path: this.path, size: img.size, allocatedBytes: img.size, isBlockDevice: true };
    img.inflight++;
    try {
      const st = await fstatFd(img.fd);
      return { path: this.path, size: img.size, allocatedBytes: st.blocks * 512, isBlockDevice: false };
    } finally {
      img.opDone();
    }
  }

  get isBlockDevice(): boolean {
    return this.img.isBlockDevice;
  }

  /** The shared descriptor (for diagnostics and tests; do not close it). */
  get fd(): number {
    return this.img.fd;
  }

  /** How many open FileExports share this image's descriptor. */
  get sharedReferences(): number {
    return this.img.refs;
  }

  get resolvedPath(): string {
    return path.resolve(this.img.path);
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (this.closed) return Promise.reject(closedError());
    return startRead(this.img, offset, into && into.length === length ? into : Buffer.allocUnsafe(length));
  }

  async readSparse(offset: number, length: number, into?: Buffer): Promise<ReadChunk[]> {
    this.checkOpen();
    const img = this.img;
    if (into && into.length !== length) into = undefined;
    if (img.isBlockDevice) return [{ offset, length, data: await this.read(offset, length, into) }];
    const end = offset + length;
    // Probe the extent map synchronously: lseek(SEEK_DATA/SEEK_HOLE) reads
    // the in-memory extent tree and costs about a microsecond, far less than
    // a threadpool round trip. Short holes fold into data.
    const spans: Array<{ offset: number; length: number; data: boolean }> = [];
    const push = (o: number, len: number, data: boolean) => {
      if (len <= 0) return;
      if (!data && len < SPARSE_MIN_HOLE) data = true;
      const last = spans[spans.length - 1];
      if (last && last.data === data) last.length += len;
      else spans.push({ offset: o, length: len, data });
    };
    let pos = offset;
    try {
      while (pos < end && spans.length < 256) {
        const d = native.seekData(img.fd, pos);
        if (d < 0 || d >= end) {
          push(pos, end - pos, false);
          pos = end;
          break;
        }
        push(pos, d - pos, false);
        const h = Math.min(native.seekHole(img.fd, d), end);
        push(d, h - d, true);
        pos = h;
      }
    } catch {
      // No extent information: everything is data.
    }
    push(pos, end - pos, true);
    if (spans.length === 1 && spans[0]!.data) return [{ offset, length, data: await this.read(offset, length, into) }];
    return Promise.all(
      spans.map(async (s): Promise<ReadChunk> =>
        s.data
          ? {
              offset: s.offset,
              length: s.length,
              data: await this.read(s.offset, s.length, into?.subarray(s.offset - offset, s.offset - offset + s.length)),
            }
          : { offset: s.offset, length: s.length },
      ),
    );
  }

  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    if (this.closed) return Promise.reject(closedError());
    if (this.readOnly) return Promise.reject(readOnlyError());
    return startWrite(this.img, offset, data, flags.fua);
  }

  async flush(): Promise<void> {
    this.checkOpen();
    const fd = this.img.fd;
    await this.tracked(() => native.fdatasync(fd));
  }

  async trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    this.checkWritable();
    const img = this.img;
    let start = offset;
    let end = offset + length;
    if (img.isBlockDevice) {
      // fallocate on a block device needs sector alignment; trimming less is allowed.
      start = roundUp(offset, img.sectorSize);
      end = roundDown(end, img.sectorSize);
    }
    if (end > start) await this.tryFallocate('punch', start, end - start);
    if (flags.fua) await this.flush();
  }

  async zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    this.checkWritable();
    if (this.img.isBlockDevice) await this.zeroDevice(offset, length, flags);
    else await this.zeroFile(offset, length, flags);
    if (flags.fua) await this.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkOpen();
    native.fadviseWillNeed(this.img.fd, offset, length);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkOpen();
    const img = this.img;
    if (img.isBlockDevice) return [{ length: Math.min(length, img.size - offset), flags: 0 }];
    const raw = await this.tracked(() => native.mapExtentsRaw(img.fd, offset, length, img.size, MAX_BLOCK_STATUS_EXTENTS));
    const n = raw.length >>> 1;
    if (n === 0) return [{ length, flags: STATE_HOLE | STATE_ZERO }];
    const out: Extent[] = new Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = { length: raw[2 * i]!, flags: raw[2 * i + 1] !== 0 ? 0 : STATE_HOLE | STATE_ZERO };
    }
    return out;
  }

  /** Releases this export's reference; the descriptor closes with the last one. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return this.img.release();
  }

  // -------------------------------------------------------------------------

  private checkOpen(): void {
    if (this.closed) throw closedError();
  }

  private checkWritable(): void {
    if (this.closed) throw closedError();
    if (this.readOnly) throw readOnlyError();
  }

  private async tracked<T>(fn: () => Promise<T>): Promise<T> {
    const img = this.img;
    img.inflight++;
    try {
      return await fn();
    } finally {
      img.opDone();
    }
  }

  /**
   * fallocate with the given mode; resolves false (and remembers) if the
   * file system or device does not support it, true on success.
   */
  private async tryFallocate(mode: 'punch' | 'zero-keep-size' | 'alloc-keep-size', offset: number, length: number): Promise<boolean> {
    const img = this.img;
    const flag = mode === 'punch' ? 'punchOk' : mode === 'zero-keep-size' ? 'zeroRangeOk' : 'allocOk';
    if (img[flag] === false) return false;
    try {
      await this.tracked(() => native.fallocate(img.fd, mode, offset, length));
      img[flag] = true;
      return true;
    } catch (err) {
      if (native.isNotSupported(err)) {
        img[flag] = false;
        return false;
      }
      throw err;
    }
  }

  private async zeroFile(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    if (!flags.noHole && (await this.tryFallocate('punch', offset, length))) return;
    if (await this.tryFallocate('zero-keep-size', offset, length)) return;
    const img = this.img;
    if (flags.noHole && img.punchOk !== false && img.allocOk !== false) {
      // e.g. tmpfs: no ZERO_RANGE, but punching then re-allocating is
      // equivalent. Until allocation is known to work, allocate first (data
      // unchanged), so that a file system that can punch but not allocate
      // falls through to writing zeroes without having left a hole.
      if (img.allocOk === true || (await this.tryFallocate('alloc-keep-size', offset, length))) {
        if (await this.tryFallocate('punch', offset, length)) {
          await this.tryFallocate('alloc-keep-size', offset, length);
          return;
        }
      }
    }
    if (flags.fastZero) throw fastZeroError();
    await this.writeZeroes(offset, length);
  }

  private async zeroDevice(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    const img = this.img;
    const end = offset + length;
    const a = roundUp(offset, img.sectorSize);
    const b = roundDown(end, img.sectorSize);
    if (b > a) {
      // The aligned middle first, so that a fast-zero refusal changes nothing.
      let done = false;
      // PUNCH on a block device is a write-zeroes that may unmap and never
      // falls back to writing: fast whenever it succeeds.
      if (!flags.noHole) done = await this.tryFallocate('punch', a, b - a);
      if (!done) {
        // ZERO_RANGE falls back to writing zero pages in the kernel unless the
        // device offloads write-zeroes.
        if (flags.fastZero && !img.writeZeroesOffload) throw fastZeroError();
        done = await this.tryFallocate('zero-keep-size', a, b - a);
      }
      if (!done) {
        if (flags.fastZero) throw fastZeroError();
        await this.writeZeroes(a, b - a);
      }
      if (offset < a) await this.writeZeroes(offset, a - offset);
      if (end > b) await this.writeZeroes(b, end - b);
    } else {
      // Less than a sector or two: just write.
      await this.writeZeroes(offset, length);
    }
  }

  private async writeZeroes(offset: number, length: number): Promise<void> {
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const n = Math.min(ZERO_WRITE_CHUNK, end - pos);
      await startWrite(this.img, pos, n === ZERO_WRITE_CHUNK ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, n), false);
      pos += n;
    }
  }
}

function roundUp(x: number, a: number): number {
  return a <= 1 ? x : Math.ceil(x / a) * a;
}

function roundDown(x: number, a: number): number {
  return a <= 1 ? x : Math.floor(x / a) * a;
}

function closedError(): NodeJS.ErrnoException {
  return codedError('ESHUTDOWN', 'export is closed');
}

function readOnlyError(): NodeJS.ErrnoException {
  return codedError('EPERM', 'export is read-only');
}

function fastZeroError(): NodeJS.ErrnoException {
  return codedError('ENOTSUP', 'fast zero not possible here');
}
