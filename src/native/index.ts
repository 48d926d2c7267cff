/**
 * Typed access to the rewind_native addon (addon/*.cc, built by node-gyp into
 * build/Release/rewind_native.node): the block-storage system calls Node
 * lacks. Linux only.
 *
 * The addon is loaded lazily, on the first call (or `loadNative()`), so that
 * code importing this module but never touching storage still works when the
 * addon has not been built. A missing addon raises an Error with code
 * 'ERR_REWIND_NATIVE_MISSING' that says how to build it.
 *
 * Errors from system calls carry `code` (the errno name, e.g. "EIO",
 * "EOPNOTSUPP"), `errno` (the positive errno number) and `syscall`.
 * Promise-returning functions reject, never throw, argument errors included.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** fallocate(2) modes. */
export type FallocateMode =
  /** FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: deallocate, reads return zeroes. */
  | 'punch'
  /** FALLOC_FL_ZERO_RANGE: zero, keeping (or creating) the allocation; may extend the file. */
  | 'zero'
  /** FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE. */
  | 'zero-keep-size'
  /** mode 0: allocate; may extend the file. */
  | 'alloc'
  /** FALLOC_FL_KEEP_SIZE: allocate without changing the size. */
  | 'alloc-keep-size';

export interface BlockDeviceInfo {
  size: number;
  /** BLKSSZGET: the smallest unit the device can address (usually 512). */
  logicalSectorSize: number;
  /** BLKPBSZGET. */
  physicalSectorSize: number;
  major: number;
  minor: number;
}

/** An Error raised by a failed system call. */
/** Credentials of the process at the other end of a Unix socket (SO_PEERCRED). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

interface RawAddon {
  fallocate(fd: number, mode: string, offset: number, length: number): Promise<void>;
  fallocateSync(fd: number, mode: string, offset: number, length: number): void;
  fdatasync(fd: number): Promise<void>;
  alignedBuffer(size: number, alignment: number): Buffer;
  fdatasyncSync(fd: number): void;
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  mapExtents(fd: number, offset: number, length: number, limit: number, max: number): Promise<Float64Array>;
  blockDeviceSize(fd: number): number;
  blockDeviceInfo(fd: number): BlockDeviceInfo;
  fadviseWillNeed(fd: number, offset: number, length: number): void;
  fadviseRandom(fd: number): void;
  preadNoWait(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  pwriteNoWait(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  peerCredentials(fd: number): PeerCredentials;
  zstdCompressSync(src: Buffer, level: number): Buffer;
  zstdDecompressSync(src: Buffer, size: number): Buffer;
  zstdCompress(src: Buffer, level: number): Promise<Buffer>;
  zstdDecompress(src: Buffer, size: number): Promise<Buffer>;
  zstdCompressBatch(srcs: Buffer[], level: number): Promise<Buffer[]>;
  zstdDigestBatch(srcs: Buffer[], sizes: number[], key: Buffer | null): Promise<Array<Buffer | string>>;
  digestLeaves(buf: Buffer, leafSize: number, key: Buffer | null): Promise<Buffer>;
  setBackgroundNice(n: number): number;
  zstdVersion: string;
  linux: boolean;
}

const ADDON_FILE = 'rewind_native.node';

let addon: RawAddon | undefined;
let loadError: Error | undefined;

/** Where the addon was looked for, nearest first. */
export function nativeCandidates(start: string = __dirname): string[] {
  const out: string[] = [];
  const env = process.env.REWIND_NATIVE_PATH;
  if (env) out.push(path.resolve(env));
  let dir = path.resolve(start);
  for (;;) {
    out.push(path.join(dir, 'build', 'Release', ADDON_FILE));
    out.push(path.join(dir, 'build', 'Debug', ADDON_FILE));
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return out;
}

/** Loads (once) and returns the raw addon; throws a clear Error if it is not built. */
export function loadNative(): RawAddon {
  if (addon) return addon;
  if (loadError) throw loadError;
  const tried = nativeCandidates();
  const found = tried.find((p) => fs.existsSync(p));
  if (!found) {
    loadError = Object.assign(
      new Error(
        `rewind native addon (${ADDON_FILE}) not found; build it with \`npm install\` ` +
          `or \`npx node-gyp rebuild\` in the project root (looked in: ${tried.join(', ')})`,
      ),
      { code: 'ERR_REWIND_NATIVE_MISSING' },
    );
    throw loadError;
  }
  try {
    addon = require(found) as RawAddon;
  } catch (err) {
    loadError = Object.assign(
      new Error(
        `rewind native addon at ${found} failed to load (${(err as Error).message}); ` +
          'rebuild it with `npx node-gyp rebuild` (or `npm install`)',
      ),
      { code: 'ERR_REWIND_NATIVE_MISSING', cause: err },
    );
    throw loadError;
  }
  return addon;
}

/** True if the addon can be loaded. */
export function nativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch {
    return false;
  }
}

function rejectWith<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return fn();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** fallocate(2) on the libuv threadpool. */
export function fallocate(fd: number, mode: FallocateMode, offset: number, length: number): Promise<void> {
  return rejectWith(() => loadNative().fallocate(fd, mode, offset, length));
}

/** fallocate(2) on the calling thread. */
export function fallocateSync(fd: number, mode: FallocateMode, offset: number, length: number): void {
  loadNative().fallocateSync(fd, mode, offset, length);
}

/**
 * A zero-filled Buffer of `size` bytes whose memory starts at a multiple of
 * `alignment` (posix_memalign): the buffers O_DIRECT reads and writes need.
 */
export function alignedBuffer(size: number, alignment: number): Buffer {
  return loadNative().alignedBuffer(size, alignment);
}

/** fdatasync(2) on the libuv threadpool. */
export function fdatasync(fd: number): Promise<void> {
  return rejectWith(() => loadNative().fdatasync(fd));
}

export function fdatasyncSync(fd: number): void {
  loadNative().fdatasyncSync(fd);
}

/** lseek(fd, offset, SEEK_DATA): the next data offset >= offset, or -1 if none (ENXIO). */
export function seekData(fd: number, offset: number): number {
  return loadNative().seekData(fd, offset);
}

/**
 * lseek(fd, offset, SEEK_HOLE): the next hole offset >= offset (the end of
 * the file counts as a hole), or -1 if offset is at or past the end (ENXIO).
 */
export function seekHole(fd: number, offset: number): number {
  return loadNative().seekHole(fd, offset);
}

export interface MappedExtent {
  length: number;
  data: boolean;
}

/**
 * Walks SEEK_DATA/SEEK_HOLE on the threadpool. Returns consecutive extents
 * starting at `offset` that cover [offset, min(offset+length, limit)) unless
 * `maxExtents` runs out first; every extent ends at or before `limit`, the
 * last may run past offset+length. Empty if offset >= limit. Where the file
 * system has no notion of holes, everything is data.
 */
export async function mapExtents(fd: number, offset: number, length: number, limit: number, maxExtents = 1024): Promise<MappedExtent[]> {
  const raw = await rejectWith(() => loadNative().mapExtents(fd, offset, length, limit, maxExtents));
  const out: MappedExtent[] = new Array(raw.length >>> 1);
  for (let i = 0, j = 0; i < raw.length; i += 2, j++) out[j] = { length: raw[i]!, data: raw[i + 1] !== 0 };
  return out;
}

/** Raw form of mapExtents: a Float64Array of pairs [length, isData(0|1), ...]. */
export function mapExtentsRaw(fd: number, offset: number, length: number, limit: number, maxExtents = 1024): Promise<Float64Array> {
  return rejectWith(() => loadNative().mapExtents(fd, offset, length, limit, maxExtents));
}

/** ioctl(BLKGETSIZE64). Throws ENOTTY if fd is not a block device. */
export function blockDeviceSize(fd: number): number {
  return loadNative().blockDeviceSize(fd);
}

/** Size, sector sizes and device numbers of a block device. Throws ENOTTY for non-devices. */
export function blockDeviceInfo(fd: number): BlockDeviceInfo {
  return loadNative().blockDeviceInfo(fd);
}

/** posix_fadvise(POSIX_FADV_WILLNEED): start readahead of the range. */
export function fadviseWillNeed(fd: number, offset: number, length: number): void {
  loadNative().fadviseWillNeed(fd, offset, length);
}

/** posix_fadvise(POSIX_FADV_RANDOM) on the whole file: no readahead for this descriptor. */
export function fadviseRandom(fd: number): void {
  loadNative().fadviseRandom(fd);
}

/**
 * pread that never waits for the disk (preadv2 + RWF_NOWAIT): returns the
 * bytes read from the page cache (possibly short), -1 if it would block, or
 * -2 if the file system does not support RWF_NOWAIT reads.
 */
export function preadNoWait(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number {
  return loadNative().preadNoWait(fd, buf, bufOffset, length, position);
}

/**
 * pwrite that never waits (pwritev2 + RWF_NOWAIT): returns the bytes
 * written (possibly short), -1 if it would block, or -2 if the file system
 * does not support RWF_NOWAIT writes (ext4 buffered writes, for one).
 */
export function pwriteNoWait(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number {
  return loadNative().pwriteNoWait(fd, buf, bufOffset, length, position);
}

/** getsockopt(SO_PEERCRED) on a connected Unix socket's fd. Throws if fd is not one. */
export function peerCredentials(fd: number): PeerCredentials {
  return loadNative().peerCredentials(fd);
}

/**
 * zstd (the system libzstd linked into the addon; src/archive compresses
 * chunks with it). One frame per call. Errors carry code 'ERR_ZSTD', or
 * 'ERR_ZSTD_UNAVAILABLE' when the addon was built without libzstd-dev.
 * Decompression takes the exact raw size and fails on any other, so a
 * hostile frame cannot make it allocate more.
 */
export function zstdCompressSync(src: Buffer, level: number): Buffer {
  return loadNative().zstdCompressSync(src, level);
}

export function zstdDecompressSync(src: Buffer, size: number): Buffer {
  return loadNative().zstdDecompressSync(src, size);
}

/** zstdCompressSync on the libuv threadpool (the input must not change until it settles). */
export function zstdCompress(src: Buffer, level: number): Promise<Buffer> {
  return rejectWith(() => loadNative().zstdCompress(src, level));
}

export function zstdDecompress(src: Buffer, size: number): Promise<Buffer> {
  return rejectWith(() => loadNative().zstdDecompress(src, size));
}

/**
 * zstdCompressSync of each buffer, in ONE threadpool job: a round trip to
 * the threadpool can cost as much as compressing a 64 KiB chunk.
 */
export function zstdCompressBatch(srcs: Buffer[], level: number): Promise<Buffer[]> {
  return rejectWith(() => loadNative().zstdCompressBatch(srcs, level));
}

/**
 * The archive's chunk handles (33 bytes: scheme, then SHA-256, or
 * HMAC-SHA256 under `key`) of each chunk, decompressed first where its size
 * is given (-1: stored plain), in ONE threadpool job; a chunk that does not
 * decompress gives the reason instead. For verify, which needs only that.
 */
export function zstdDigestBatch(srcs: Buffer[], sizes: number[], key: Buffer | null): Promise<Array<Buffer | string>> {
  return rejectWith(() => loadNative().zstdDigestBatch(srcs, sizes, key));
}

/**
 * The handle of each leafSize slice of buf (the last may be shorter), 33
 * bytes each, concatenated; an all-zero slice gets the zero handle. On the
 * threadpool (buf must not change until it settles).
 */
export function digestLeaves(buf: Buffer, leafSize: number, key: Buffer | null): Promise<Buffer> {
  return rejectWith(() => loadNative().digestLeaves(buf, leafSize, key));
}

/**
 * The nice level (0..19) the archive's threadpool jobs (hashing,
 * compression, verify) run at, each returning the thread to its own level
 * after. Returns the level in effect: 0 where a thread could not return
 * (no CAP_SYS_NICE and RLIMIT_NICE too low), so nothing is lowered then.
 */
export function setBackgroundNice(n: number): number {
  return loadNative().setBackgroundNice(n);
}

/** The linked libzstd's version, or '' when the addon has no zstd. */
export function zstdVersion(): string {
  return loadNative().zstdVersion;
}

/** True if err is an "operation not supported" failure (EOPNOTSUPP/ENOTSUP/ENOSYS). */
export function isNotSupported(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS';
}
