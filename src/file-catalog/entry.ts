/**
 * One catalog entry: what a path was at a cataloged point, stored in a
 * fixed binary layout (encodeEntry) and decoded to Entry. Two fields are
 * the catalog's own:
 *
 *   digest  a 64-bit hash of the file's identity: its size and block map
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
const TYPE_INDEX = new Map(TYPES.map((t, i) => [t, i]));

/**
 * The stored form, little-endian (a full build writes one per path, so it
 * is a fixed layout rather than a generic encoding):
 *    0 u8  1 (an entry; a one-byte 0 is a tombstone: the path is gone)
 *    1 u8  type (file dir symlink chr blk fifo socket unknown)
 *    2 u8  sections present: 1 link, 2 rdev, 4 runs, 8 path, 16 crtime
 *    3 u8  reserved
 *    4 u32 ino      8 u32 mode   12 u32 uid   16 u32 gid   20 u32 nlink   24 u32 generation
 *   28 f64 size    36 f64 stamp  44 u8[8] digest
 *   52 f64 atime, mtime, ctime, crtime seconds (84..) then u32 nanoseconds x 4 (84 .. 100)
 *  100 sections in order: link (u32 length + bytes), rdev (u32 major, u32 minor),
 *      runs (u32 count + f64 triples), path (u32 length + bytes)
 */
export const TOMBSTONE = Buffer.from([0]);
const FIXED = 100;

export function isGone(v: unknown): boolean {
  return v === undefined || v === null || (v as Uint8Array).length === 1;
}

export function encodeEntry(e: Entry): Buffer {
  let len = FIXED;
  let flags = 0;
  if (e.link) {
    flags |= 1;
    len += 4 + e.link.length;
  }
  if (e.rdev) {
    flags |= 2;
    len += 8;
  }
  if (e.runs) {
    flags |= 4;
    len += 4 + 8 * e.runs.length;
  }
  if (e.path) {
    flags |= 8;
    len += 4 + e.path.length;
  }
  if (e.crtime) flags |= 16;
  const b = Buffer.allocUnsafe(len);
  b[0] = 1;
  b[1] = TYPE_INDEX.get(e.type) ?? 7;
  b[2] = flags;
  b[3] = 0;
  b.writeUInt32LE(e.ino, 4);
  b.writeUInt32LE(e.mode, 8);
  b.writeUInt32LE(e.uid, 12);
  b.writeUInt32LE(e.gid, 16);
  b.writeUInt32LE(e.nlink, 20);
  b.writeUInt32LE(e.generation, 24);
  b.writeDoubleLE(e.size, 28);
  b.writeDoubleLE(e.stamp, 36);
  b.write(e.digest.padStart(16, '0'), 44, 8, 'hex');
  const ts = [e.atime, e.mtime, e.ctime, e.crtime ?? [0, 0]] as const;
  for (let i = 0; i < 4; i++) {
    b.writeDoubleLE(ts[i]![0], 52 + 8 * i);
    b.writeUInt32LE(ts[i]![1], 84 + 4 * i);
  }
  let o = FIXED;
  if (e.link) {
    b.writeUInt32LE(e.link.length, o);
    o = 4 + o + e.link.copy(b, o + 4);
  }
  if (e.rdev) {
    b.writeUInt32LE(e.rdev[0], o);
    b.writeUInt32LE(e.rdev[1], o + 4);
    o += 8;
  }
  if (e.runs) {
    b.writeUInt32LE(e.runs.length, o);
    o += 4;
    for (const r of e.runs) {
      b.writeDoubleLE(r, o);
      o += 8;
    }
  }
  if (e.path) {
    b.writeUInt32LE(e.path.length, o);
    e.path.copy(b, o + 4);
  }
  return b;
}

export function decodeEntry(v: Uint8Array): Entry {
  const b = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.length);
  const flags = b[2]!;
  const t = (i: number): Time => [b.readDoubleLE(52 + 8 * i), b.readUInt32LE(84 + 4 * i)];
  const e: Entry = {
    ino: b.readUInt32LE(4),
    type: TYPES[b[1]!] ?? 'unknown',
    mode: b.readUInt32LE(8),
    uid: b.readUInt32LE(12),
    gid: b.readUInt32LE(16),
    size: b.readDoubleLE(28),
    nlink: b.readUInt32LE(20),
    atime: t(0),
    mtime: t(1),
    ctime: t(2),
    crtime: flags & 16 ? t(3) : null,
    generation: b.readUInt32LE(24),
    digest: b.toString('hex', 44, 52),
    stamp: b.readDoubleLE(36),
    link: null,
    rdev: null,
    runs: null,
    path: null,
  };
  let o = FIXED;
  if (flags & 1) {
    const n = b.readUInt32LE(o);
    e.link = Buffer.from(b.subarray(o + 4, o + 4 + n));
    o += 4 + n;
  }
  if (flags & 2) {
    e.rdev = [b.readUInt32LE(o), b.readUInt32LE(o + 4)];
    o += 8;
  }
  if (flags & 4) {
    const n = b.readUInt32LE(o);
    o += 4;
    e.runs = [];
    for (let i = 0; i < n; i++, o += 8) e.runs.push(b.readDoubleLE(o));
  }
  if (flags & 8) {
    const n = b.readUInt32LE(o);
    e.path = Buffer.from(b.subarray(o + 4, o + 4 + n));
  }
  return e;
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

/**
 * A 32-bit fingerprint of the stat fields sameStat compares, kept per inode
 * in the inode -> paths index: an incremental build skips, without a
 * lookup, every inode of a changed inode-table block whose print matches.
 */
export function statPrint(s: Stat | Entry): number {
  const t = (x: Time | { sec: number; nsec: number }): [number, number] => (Array.isArray(x) ? x : [x.sec, x.nsec]);
  let h = 0x811c9dc5;
  const mix = (n: number): void => {
    h = Math.imul(h ^ (n >>> 0), 0x01000193);
    h = Math.imul(h ^ (Math.floor(n / 2 ** 32) | 0), 0x01000193);
  };
  mix(s.ino);
  mix(s.generation);
  mix(s.mode);
  mix(s.size);
  mix(s.uid);
  mix(s.gid);
  mix(s.nlink);
  for (const x of [s.mtime, s.ctime, s.atime]) {
    const [sec, nsec] = t(x);
    mix(sec);
    mix(nsec);
  }
  return h >>> 0;
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

/**
 * A 64-bit content identity over numbers and bytes (two 32-bit multiplicative
 * lanes, fed 32-bit words): fast, not a security hash.
 */
export class Digest {
  private a = 0x811c9dc5;
  private b = 0x9e3779b9;

  private word(w: number): void {
    this.a = Math.imul(this.a ^ w, 0x01000193);
    this.b = Math.imul((this.b ^ w) + ((this.a << 7) | (this.a >>> 25)), 0x5bd1e995);
  }

  num(n: number): this {
    this.word(n >>> 0);
    this.word(Math.floor(n / 2 ** 32) | 0);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.num(b.length);
    let i = 0;
    for (; i + 4 <= b.length; i += 4) this.word(b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
    let last = 0;
    for (let k = 0; i < b.length; i++, k += 8) last |= b[i]! << k;
    this.word(last);
    return this;
  }

  hex(): string {
    // Final avalanche so that nearby inputs differ in every digit.
    let a = this.a ^ (this.b >>> 15);
    a = Math.imul(a, 0x85ebca6b) ^ (a >>> 13);
    let b = this.b ^ (a >>> 16);
    b = Math.imul(b, 0xc2b2ae35) ^ (b >>> 16);
    return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
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
