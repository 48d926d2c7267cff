/**
 * One catalog entry: what a path was at a cataloged point. Stored as a
 * msgpack array (compact; 100k entries per full point are tens of bytes
 * each), decoded to Entry. Two fields are the catalog's own:
 *
 *   digest  64-bit FNV-1a of the file's identity: its size and block map
 *           (logical, physical, length, unwritten per run), or the bytes
 *           kept in the inode (inline data, fast symlinks), or the device
 *           number. A file rewritten in place keeps its digest; that is
 *           what `stamp` is for.
 *   stamp   the seq of the cataloged point at which this content was first
 *           seen: a new file, another inode at the path, another block
 *           map, or a write the block history shows on one of its blocks
 *           since the previous cataloged point. `--versions` lists the
 *           points where the stamp changes.
 */
import type { FileType, Stat } from '../fs';

export type Time = [sec: number, nsec: number];

export interface Entry {
  ino: number;
  type: FileType;
  /** st_mode: type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  atime: Time;
  mtime: Time;
  ctime: Time;
  crtime: Time | null;
  generation: number;
  digest: string;
  stamp: number;
  /** Symlink target, as bytes. */
  link: Buffer | null;
  rdev: [number, number] | null;
  /** Directories: data runs as flat triples (logical, physical, length), for incremental builds. */
  runs: number[] | null;
  /** Set when the key holds a hashed parent (very long paths): the full path. */
  path: Buffer | null;
}

const TYPES: FileType[] = ['file', 'dir', 'symlink', 'chr', 'blk', 'fifo', 'socket', 'unknown'];

/** The stored form; 0 is a tombstone (the path is gone at that point). */
export type StoredEntry = unknown[] | 0;

export function encodeEntry(e: Entry): unknown[] {
  const out: unknown[] = [
    e.ino,
    TYPES.indexOf(e.type),
    e.mode,
    e.uid,
    e.gid,
    e.size,
    e.nlink,
    e.atime[0],
    e.atime[1],
    e.mtime[0],
    e.mtime[1],
    e.ctime[0],
    e.ctime[1],
    e.crtime ? e.crtime[0] : null,
    e.crtime ? e.crtime[1] : null,
    e.generation,
    e.digest,
    e.stamp,
    e.link,
    e.rdev,
    e.runs,
    e.path,
  ];
  // Trailing nulls cost bytes on every row: drop them.
  while (out.length > 18 && out[out.length - 1] === null) out.pop();
  return out;
}

const buf = (v: unknown): Buffer | null => (v == null ? null : Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array));

export function decodeEntry(v: unknown[]): Entry {
  const n = (i: number): number => v[i] as number;
  return {
    ino: n(0),
    type: TYPES[n(1)] ?? 'unknown',
    mode: n(2),
    uid: n(3),
    gid: n(4),
    size: n(5),
    nlink: n(6),
    atime: [n(7), n(8)],
    mtime: [n(9), n(10)],
    ctime: [n(11), n(12)],
    crtime: v[13] == null ? null : [n(13), n(14)],
    generation: n(15),
    digest: v[16] as string,
    stamp: n(17),
    link: buf(v[18]),
    rdev: (v[19] as [number, number] | null | undefined) ?? null,
    runs: (v[20] as number[] | null | undefined) ?? null,
    path: buf(v[21]),
  };
}

/** The entry of a stat, before its digest and stamp are known. */
export function fromStat(s: Stat): Entry {
  return {
    ino: s.ino,
    type: s.type,
    mode: s.mode,
    uid: s.uid,
    gid: s.gid,
    size: s.size,
    nlink: s.nlink,
    atime: [s.atime.sec, s.atime.nsec],
    mtime: [s.mtime.sec, s.mtime.nsec],
    ctime: [s.ctime.sec, s.ctime.nsec],
    crtime: s.crtime ? [s.crtime.sec, s.crtime.nsec] : null,
    generation: s.generation,
    digest: '',
    stamp: 0,
    link: null,
    rdev: s.rdev ? [s.rdev.major, s.rdev.minor] : null,
    runs: null,
    path: null,
  };
}

/** Same inode, same generation, same content identity: a candidate for an unchanged stamp. */
export function sameIdentity(a: Entry, b: Entry): boolean {
  return a.ino === b.ino && a.generation === b.generation && a.type === b.type && a.digest === b.digest && a.size === b.size;
}

const t = (a: Time, b: Time): boolean => a[0] === b[0] && a[1] === b[1];

/** Do two entries describe the path identically (every stored field)? */
export function sameEntry(a: Entry, b: Entry): boolean {
  return (
    sameIdentity(a, b) &&
    a.stamp === b.stamp &&
    a.mode === b.mode &&
    a.uid === b.uid &&
    a.gid === b.gid &&
    a.nlink === b.nlink &&
    t(a.atime, b.atime) &&
    t(a.mtime, b.mtime) &&
    t(a.ctime, b.ctime) &&
    (a.crtime === null ? b.crtime === null : b.crtime !== null && t(a.crtime, b.crtime)) &&
    bytesEqual(a.link, b.link) &&
    JSON.stringify(a.rdev) === JSON.stringify(b.rdev) &&
    JSON.stringify(a.runs) === JSON.stringify(b.runs)
  );
}

function bytesEqual(a: Buffer | null, b: Buffer | null): boolean {
  return a === null ? b === null : b !== null && a.equals(b);
}

/** Did the inode change at all (the cheap test before reading its block map)? */
export function sameStat(a: Entry, s: Stat): boolean {
  return (
    a.ino === s.ino &&
    a.generation === s.generation &&
    a.mode === s.mode &&
    a.size === s.size &&
    a.uid === s.uid &&
    a.gid === s.gid &&
    a.nlink === s.nlink &&
    a.mtime[0] === s.mtime.sec &&
    a.mtime[1] === s.mtime.nsec &&
    a.ctime[0] === s.ctime.sec &&
    a.ctime[1] === s.ctime.nsec &&
    a.atime[0] === s.atime.sec &&
    a.atime[1] === s.atime.nsec
  );
}

/** 64-bit FNV-1a over numbers and bytes, as 16 hex digits: a content identity, not a security hash. */
export class Digest {
  private hi = 0xcbf29ce4;
  private lo = 0x84222325;

  private byte(b: number): void {
    // (hi:lo) ^= b; (hi:lo) *= 0x100000001b3, in 32-bit halves.
    let lo = this.lo ^ b;
    let hi = this.hi;
    const loMul = lo * 0x1b3;
    hi = (Math.imul(hi, 0x1b3) + Math.imul(lo, 0x100) + Math.floor(loMul / 2 ** 32)) >>> 0;
    lo = loMul >>> 0;
    this.hi = hi;
    this.lo = lo;
  }

  num(n: number): this {
    const hi = Math.floor(n / 2 ** 32);
    const lo = n >>> 0;
    for (const w of [hi, lo]) for (let s = 24; s >= 0; s -= 8) this.byte((w >>> s) & 0xff);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.num(b.length);
    for (let i = 0; i < b.length; i++) this.byte(b[i]!);
    return this;
  }

  hex(): string {
    return this.hi.toString(16).padStart(8, '0') + this.lo.toString(16).padStart(8, '0');
  }
}

/** ls-style permission text of a mode ("drwxr-xr-x"). */
export function modeText(type: FileType, mode: number): string {
  const lead: Record<FileType, string> = { file: '-', dir: 'd', symlink: 'l', chr: 'c', blk: 'b', fifo: 'p', socket: 's', unknown: '?' };
  let s = lead[type];
  const rwx = 'rwxrwxrwx';
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : '-';
  const set = (i: number, on: boolean, x: string, noX: string): void => {
    if (on) s = s.slice(0, i) + (s[i] === 'x' ? x : noX) + s.slice(i + 1);
  };
  set(3, (mode & 0o4000) !== 0, 's', 'S');
  set(6, (mode & 0o2000) !== 0, 's', 'S');
  set(9, (mode & 0o1000) !== 0, 't', 'T');
  return s;
}
