/** What a cataloged point says: a path's entry, a directory's children, an inode's paths, a block's directory. */
import { decodeEntry, isGone, type Entry } from './entry';
import { childrenPrefix, dirblockOf, dirblockSubject, entryKeyParts, entrySubject, inodesSubject, bucketOf, splitPath } from './keys';
import type { CatalogStore } from './store';

export interface Scope {
  store: CatalogStore;
  vid: number;
  part: number;
  at: number;
}

export function entryAt(s: Scope, path: Buffer): Entry | undefined {
  const row = s.store.visible<Buffer>('entries', entrySubject(s.vid, s.part, path), s.at, s.vid);
  return row && !isGone(row.value) ? decodeEntry(row.value) : undefined;
}

/** A directory's children: name (latin1 of the bytes) -> entry. */
export function childrenAt(s: Scope, dir: Buffer): Map<string, { name: Buffer; entry: Entry }> {
  const out = new Map<string, { name: Buffer; entry: Entry }>();
  for (const row of s.store.scanVisible<Buffer>('entries', childrenPrefix(s.vid, s.part, dir), s.at, s.vid)) {
    if (isGone(row.value)) continue;
    const e = decodeEntry(row.value);
    // Hashed parents: a different long directory could share nothing but the hash's prefix; check the path.
    if (e.path && !splitPath(e.path).parent.equals(dir)) continue;
    const { name } = entryKeyParts(row.key);
    if (name.length === 0) continue; // the root's own entry
    out.set(name.toString('latin1'), { name: Buffer.from(name), entry: e });
  }
  return out;
}

/** The [ino, path, print, ...] list of an inode bucket at the point (see writer.ts). */
export function bucketAt(s: Scope, bucket: number): Array<number | Uint8Array> {
  const row = s.store.visible<Array<number | Uint8Array> | 0>('inodes', inodesSubject(s.vid, s.part, bucket), s.at, s.vid);
  return row && row.value !== 0 ? row.value : [];
}

/** The paths an inode has at the point (hard links: several), each with the inode's stat print then. */
export function pathsOfInode(
  s: Scope,
  ino: number,
  cache?: Map<number, Array<number | Uint8Array>>,
): Array<{ path: Buffer; print: number }> {
  const b = bucketOf(ino);
  let list = cache?.get(b);
  if (!list) {
    list = bucketAt(s, b);
    cache?.set(b, list);
  }
  const out: Array<{ path: Buffer; print: number }> = [];
  for (let i = 0; i + 2 < list.length; i += 3)
    if (list[i] === ino) out.push({ path: Buffer.from(list[i + 1] as Uint8Array), print: list[i + 2] as number });
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
