/** What a cataloged point says: a path's entry, a directory's children, an inode's paths, a block's directory. */
import { decodeEntry, type Entry, type StoredEntry } from './entry';
import {
  childrenPrefix,
  dirblockOf,
  dirblockSubject,
  entryKeyParts,
  entrySubject,
  inodePrefix,
  joinPath,
  SEQ_LEN,
  splitPath,
} from './keys';
import type { CatalogStore } from './store';

export interface Scope {
  store: CatalogStore;
  vid: number;
  part: number;
  at: number;
}

export function entryAt(s: Scope, path: Buffer): Entry | undefined {
  const row = s.store.visible<StoredEntry>('entries', entrySubject(s.vid, s.part, path), s.at, s.vid);
  return row && row.value !== 0 ? decodeEntry(row.value) : undefined;
}

/** A directory's children: name (latin1 of the bytes) -> entry. */
export function childrenAt(s: Scope, dir: Buffer): Map<string, { name: Buffer; entry: Entry }> {
  const out = new Map<string, { name: Buffer; entry: Entry }>();
  for (const row of s.store.scanVisible<StoredEntry>('entries', childrenPrefix(s.vid, s.part, dir), s.at, s.vid)) {
    if (row.value === 0) continue;
    const e = decodeEntry(row.value);
    // Hashed parents: a different long directory could share nothing but the hash's prefix; check the path.
    if (e.path && !splitPath(e.path).parent.equals(dir)) continue;
    const { name } = entryKeyParts(row.key);
    if (name.length === 0) continue; // the root's own entry
    out.set(name.toString('latin1'), { name: Buffer.from(name), entry: e });
  }
  return out;
}

/** The paths an inode has at the point (hard links: several). */
export function pathsOfInode(s: Scope, ino: number): Buffer[] {
  const out: Buffer[] = [];
  const prefix = inodePrefix(s.vid, s.part, ino);
  for (const row of s.store.scanVisible<number | Uint8Array>('inopaths', prefix, s.at, s.vid)) {
    if (row.value === 0) continue;
    if (typeof row.value === 'object') {
      out.push(Buffer.from(row.value));
      continue;
    }
    const body = row.key.subarray(prefix.length, row.key.length - SEQ_LEN - 1);
    const i = body.indexOf(0);
    const name = body.subarray(i + 1);
    out.push(name.length ? joinPath(body.subarray(0, i), name) : Buffer.alloc(0)); // "" is the root
  }
  return out;
}

/** Directory inodes owning blocks in [first, first+count) at the point. */
export function dirsOfBlocks(s: Scope, first: number, count: number, into: Map<number, Set<number>>): void {
  const start = dirblockSubject(s.vid, s.part, first);
  const end = dirblockSubject(s.vid, s.part, first + count);
  for (const row of s.store.scanVisibleRange<number>('dirblocks', start, end, s.at, s.vid)) {
    if (!row.value) continue;
    let set = into.get(row.value);
    if (!set) into.set(row.value, (set = new Set()));
    set.add(dirblockOf(row.key));
  }
}
