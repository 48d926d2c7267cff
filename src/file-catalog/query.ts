/**
 * Reading a cataloged point: list a directory or search a subtree (name
 * glob, newer than a time), every version of one path (one range read of
 * its rows), and the shape the API answers with (names escaped for display,
 * raw bytes in base64).
 */
import { escapeName } from '../fs';
import { UserError } from '../util/errors';
import { decodeEntry, isGone, modeText, type Entry, type Time } from './entry';
import { childrenPrefix, entryKeyParts, entrySubject, joinPath, subtreePrefixes } from './keys';
import { entryAt } from './reads';
import type { CatalogStore } from './store';
import type { PointRecord } from './types';

export interface FileInfo {
  partition: number;
  /** Printable, reversible form (escapeName): invalid UTF-8 and control bytes as \xHH. */
  path: string;
  name: string;
  /** The bytes, base64. */
  pathRaw: string;
  nameRaw: string;
  ino: number;
  type: string;
  size: number;
  mode: number;
  modeText: string;
  uid: number;
  gid: number;
  nlink: number;
  atime: string;
  mtime: string;
  ctime: string;
  crtime: string | null;
  /** Exact times: [seconds, nanoseconds]. */
  times: { atime: Time; mtime: Time; ctime: Time; crtime: Time | null };
  /** Identity of the content (size and block map, or inline bytes). */
  digest: string;
  /** Seq of the cataloged point where this content first appeared. */
  contentSeq: number;
  linkTarget?: string;
  linkTargetRaw?: string;
  rdev?: [number, number];
}

const iso = (t: Time): string => {
  const d = new Date(t[0] * 1000 + Math.floor(t[1] / 1e6));
  return Number.isFinite(d.getTime()) ? d.toISOString() : String(t[0]);
};

export function fileInfo(partition: number, path: Buffer, e: Entry): FileInfo {
  const name = path.subarray(path.lastIndexOf(0x2f) + 1);
  const out: FileInfo = {
    partition,
    path: path.length ? escapeName(path) : '/',
    name: escapeName(name),
    pathRaw: (path.length ? path : Buffer.from('/')).toString('base64'),
    nameRaw: name.toString('base64'),
    ino: e.ino,
    type: e.type,
    size: e.size,
    mode: e.mode,
    modeText: modeText(e.type, e.mode),
    uid: e.uid,
    gid: e.gid,
    nlink: e.nlink,
    atime: iso(e.atime),
    mtime: iso(e.mtime),
    ctime: iso(e.ctime),
    crtime: e.crtime ? iso(e.crtime) : null,
    times: { atime: e.atime, mtime: e.mtime, ctime: e.ctime, crtime: e.crtime },
    digest: e.digest,
    contentSeq: e.stamp,
  };
  if (e.link) {
    out.linkTarget = escapeName(e.link);
    out.linkTargetRaw = e.link.toString('base64');
  }
  if (e.rdev) out.rdev = e.rdev;
  return out;
}

/** A shell glob (* ? [...]) as a RegExp over escaped names. */
export function globRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const j = glob.indexOf(']', i + 2);
      if (j < 0) re += '\\[';
      else {
        const body = glob.slice(i + 1, j).replace(/\\/g, '\\\\');
        re += `[${body.startsWith('!') ? '^' + body.slice(1) : body}]`;
        i = j;
      }
    } else re += c.replace(/[.+^${}()|\\/]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

/** "/a/b/" -> "/a/b" as bytes; "/" and "" -> "" (the root). */
export function normalizePath(p: Buffer): Buffer {
  let end = p.length;
  while (end > 0 && p[end - 1] === 0x2f) end--;
  const q = p.subarray(0, end);
  if (q.length && q[0] !== 0x2f) throw new UserError('invalid', 'paths are absolute inside the filesystem (start with "/")');
  return q;
}

export interface ListQuery {
  path: Buffer;
  name?: RegExp;
  /** mtime strictly after this (ms since the epoch). */
  newer?: number;
  recursive: boolean;
  limit: number;
  /** Resume after this entry key (from a previous page). */
  after?: Buffer;
}

/**
 * Entries of one filesystem at a point: the path itself if it is not a
 * directory, else its children (or, recursive, its subtree), filtered.
 * Returns the last key read when it stopped at the limit.
 */
export function listPartition(
  store: CatalogStore,
  vid: number,
  at: number,
  partition: number,
  q: ListQuery,
  out: FileInfo[],
): { last: Buffer | null; found: boolean } {
  const self = q.path.length ? entryAt({ store, vid, part: partition, at }, q.path) : undefined;
  if (q.path.length && !self) return { last: null, found: false };
  if (self && self.type !== 'dir') {
    if (!q.after && matches(q, q.path, self)) out.push(fileInfo(partition, q.path, self));
    return { last: null, found: true };
  }
  const prefixes = q.recursive ? subtreePrefixes(vid, partition, q.path) : [childrenPrefix(vid, partition, q.path)];
  const under = Buffer.concat([q.path, Buffer.from('/')]);
  for (const prefix of prefixes) {
    if (q.after && Buffer.compare(q.after, prefix) >= 0 && !q.after.subarray(0, prefix.length).equals(prefix)) continue;
    const after = q.after && q.after.subarray(0, prefix.length).equals(prefix) ? q.after : undefined;
    for (const row of store.scanVisible<Buffer>('entries', prefix, at, vid, after ? { after } : {})) {
      if (isGone(row.value)) continue;
      const e = decodeEntry(row.value);
      const { parent, name } = entryKeyParts(row.key);
      if (name.length === 0) continue; // the root's own row
      const path = e.path ?? joinPath(parent, name);
      if (q.path.length && !path.subarray(0, under.length).equals(under)) continue;
      if (!matches(q, path, e)) continue;
      out.push(fileInfo(partition, path, e));
      if (out.length >= q.limit) return { last: row.key.subarray(0, row.key.length - 8), found: true };
    }
  }
  return { last: null, found: true };
}

function matches(q: ListQuery, path: Buffer, e: Entry): boolean {
  if (q.newer !== undefined && e.mtime[0] * 1000 + e.mtime[1] / 1e6 <= q.newer) return false;
  if (q.name && !q.name.test(escapeName(path.subarray(path.lastIndexOf(0x2f) + 1)))) return false;
  return true;
}

export interface Version {
  seq: number;
  time: string;
  txn: number;
  /** The (first) marker at this point, and all of them. */
  marker?: string;
  markers: string[];
  /** The point where the path vanished (no size or times). */
  deleted?: true;
  size?: number;
  mtime?: string;
  ino?: number;
  type?: string;
  digest?: string;
}

/** The points where a path's content changed: one range read of its rows. */
export function versionsOf(store: CatalogStore, vid: number, partition: number, path: Buffer, points: Map<number, PointRecord>): Version[] {
  const out: Version[] = [];
  let prev: Entry | null = null;
  for (const row of store.rows<Buffer>('entries', entrySubject(vid, partition, path))) {
    const p = points.get(row.seq);
    if (!p || p.state !== 'complete') continue;
    const base = {
      seq: p.seq,
      time: new Date(p.time).toISOString(),
      txn: p.txn,
      ...(p.markers.length ? { marker: p.markers[0] } : {}),
      markers: p.markers,
    };
    if (isGone(row.value)) {
      if (prev) out.push({ ...base, deleted: true });
      prev = null;
      continue;
    }
    const e = decodeEntry(row.value);
    if (!prev || prev.stamp !== e.stamp) {
      out.push({ ...base, size: e.size, mtime: iso(e.mtime), ino: e.ino, type: e.type, digest: e.digest });
    }
    prev = e;
  }
  return out;
}
