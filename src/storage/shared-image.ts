/**
 * The shared, reference-counted descriptor of one opened image (file or
 * block device), keyed by real path and mode: every FileExport of the same
 * image goes through one descriptor and one page cache, which is why a
 * flush on any connection covers them all (multi-conn).
 */
import * as fs from 'node:fs';
import * as native from '../native';

const ERRNO: Record<string, number> = {
  EPERM: 1,
  EIO: 5,
  EBADF: 9,
  EEXIST: 17,
  EINVAL: 22,
  ENOSPC: 28,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
};

/** An Error with an errno-name `code` (and the errno number when known). */
export function codedError(code: string, message: string): NodeJS.ErrnoException {
  const err = new Error(message) as NodeJS.ErrnoException;
  err.code = code;
  const n = ERRNO[code];
  if (n !== undefined) err.errno = n;
  return err;
}

export interface FileOpenOptions {
  readOnly?: boolean;
}

export interface FileCreateOptions {
  /** Replace an existing regular file (truncating it to empty first). Default false. */
  overwrite?: boolean;
  /** Permission bits for a new file. Default 0o644 (before umask). */
  mode?: number;
}

export interface FileImageInfo {
  path: string;
  /** Apparent size in bytes (device size for a block device). */
  size: number;
  /** Bytes actually allocated (st_blocks * 512); the full size for a block device. */
  allocatedBytes: number;
  isBlockDevice: boolean;
}

// ---------------------------------------------------------------------------
// The shared, reference-counted descriptor of one opened image.

export class SharedImage {
  refs = 0;
  inflight = 0;
  /** Set when refs dropped to zero; the fd closes once inflight is zero. */
  released = false;
  private closeWaiters: Array<() => void> = [];
  private fdClosed = false;

  /** Learned support of fallocate modes (undefined: not tried yet). */
  punchOk: boolean | undefined;
  zeroRangeOk: boolean | undefined;
  allocOk: boolean | undefined;
  /** RWF_NOWAIT usable for reads / writes (false once the kernel says EOPNOTSUPP; block devices: never tried). */
  noWaitReads: boolean;
  noWaitWrites: boolean;

  constructor(
    readonly key: string,
    readonly path: string,
    readonly fd: number,
    readonly readOnly: boolean,
    readonly isBlockDevice: boolean,
    readonly size: number,
    /** 1 for a regular file; the logical sector size of a block device. */
    readonly sectorSize: number,
    /** Block device with hardware/driver write-zeroes (so ZERO_RANGE is fast). */
    readonly writeZeroesOffload: boolean,
  ) {
    this.noWaitReads = !isBlockDevice;
    this.noWaitWrites = !isBlockDevice;
  }

  opDone(): void {
    if (--this.inflight === 0 && this.released) this.closeFd();
  }

  release(): Promise<void> {
    if (--this.refs > 0) return Promise.resolve();
    this.released = true;
    if (registry.get(this.key)?.image === this) registry.delete(this.key);
    if (this.fdClosed) return Promise.resolve();
    const p = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    if (this.inflight === 0) this.closeFd();
    return p;
  }

  private closeFd(): void {
    if (this.fdClosed) return;
    this.fdClosed = true;
    fs.close(this.fd, () => {
      const waiters = this.closeWaiters;
      this.closeWaiters = [];
      for (const w of waiters) w();
    });
  }
}

export interface RegistryEntry {
  promise: Promise<SharedImage>;
  image?: SharedImage;
}

export const registry = new Map<string, RegistryEntry>();

export function openFd(p: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) => fs.open(p, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
}

export function fstatFd(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => fs.fstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
}

/** write_zeroes_max_bytes > 0 in sysfs: the device zeroes without data transfer. */
export function deviceHasWriteZeroes(major: number, minor: number): boolean {
  const devno = `${major}:${minor}`;
  const fromDir = (dir: string): boolean | undefined => {
    // A partition has its queue in the parent disk's directory.
    for (const p of [`${dir}/queue/write_zeroes_max_bytes`, `${dir}/../queue/write_zeroes_max_bytes`]) {
      try {
        return Number(fs.readFileSync(p, 'utf8').trim()) > 0;
      } catch {
        // try the next
      }
    }
    return undefined;
  };
  const direct = fromDir(`/sys/dev/block/${devno}`);
  if (direct !== undefined) return direct;
  // /sys/dev/block is not populated everywhere (containers): search by "dev".
  let names: string[] = [];
  try {
    names = fs.readdirSync('/sys/class/block');
  } catch {
    return false;
  }
  for (const name of names) {
    const dir = `/sys/class/block/${name}`;
    try {
      if (fs.readFileSync(`${dir}/dev`, 'utf8').trim() !== devno) continue;
    } catch {
      continue;
    }
    return fromDir(dir) ?? false;
  }
  return false;
}

export async function openShared(realPath: string, readOnly: boolean, key: string): Promise<SharedImage> {
  native.loadNative(); // fail early and clearly if the addon is not built
  const fd = await openFd(realPath, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  try {
    const st = await fstatFd(fd);
    if (st.isFile()) {
      return new SharedImage(key, realPath, fd, readOnly, false, st.size, 1, false);
    }
    if (st.isBlockDevice()) {
      const info = native.blockDeviceInfo(fd);
      return new SharedImage(
        key,
        realPath,
        fd,
        readOnly,
        true,
        info.size,
        info.logicalSectorSize,
        deviceHasWriteZeroes(info.major, info.minor),
      );
    }
    throw codedError('EINVAL', `${realPath}: not a regular file or block device`);
  } catch (err) {
    fs.close(fd, () => {});
    throw err;
  }
}
