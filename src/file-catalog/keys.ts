/**
 * Binary keys of the file catalog's temporal tables (see store.ts). Every
 * row is keyed by what it describes followed by the seq of the cataloged
 * point that wrote it (8 bytes, big-endian), so all versions of one thing
 * are adjacent and in point order, and a point's view of a thing is its last
 * row at or before the point. Paths are bytes; a name never holds NUL or
 * "/", which is what makes NUL a safe separator:
 *
 *   entry    vid u32 | part u16 | parent path | 00 | name | 00 | seq u64
 *   inopath  vid u32 | part u16 | ino u32 | parent path | 00 | name | 00 | seq u64
 *   dirblock vid u32 | part u16 | block u64 | seq u64
 *
 * The parent of "/a" is "" and of "/a/b" is "/a", so a directory's children
 * are one prefix (parent 00), its subtree two (parent 00 and parent "/"),
 * and a path's versions one. LMDB keys are at most 1978 bytes: a parent
 * longer than LONG_PARENT bytes is keyed as FF + its SHA-256 instead (FF
 * never starts a real path, so those rows sort after the rest of the
 * partition), and the row's value carries the full path.
 */
import * as crypto from 'node:crypto';

export const LONG_PARENT = 1536;
const SEQ_BYTES = 8;
const NUL = Buffer.from([0]);

function head(vid: number, part: number, extra = 0): Buffer {
  const b = Buffer.allocUnsafe(6 + extra);
  b.writeUInt32BE(vid, 0);
  b.writeUInt16BE(part, 4);
  return b;
}

function seqBytes(seq: number): Buffer {
  const b = Buffer.allocUnsafe(SEQ_BYTES);
  b.writeUInt32BE(Math.floor(seq / 2 ** 32), 0);
  b.writeUInt32BE(seq >>> 0, 4);
  return b;
}

export function readSeq(key: Buffer): number {
  const o = key.length - SEQ_BYTES;
  return key.readUInt32BE(o) * 2 ** 32 + key.readUInt32BE(o + 4);
}

/** The key without its seq: what a row describes. */
export function subject(key: Buffer): Buffer {
  return key.subarray(0, key.length - SEQ_BYTES);
}

/**
 * Split "/a/b" into parent "/a" and name "b" (the root's children have
 * parent ""). The root itself is the empty path: parent "" and name "".
 */
export function splitPath(path: Buffer): { parent: Buffer; name: Buffer } {
  if (path.length === 0) return { parent: path, name: path };
  const i = path.lastIndexOf(0x2f);
  return { parent: path.subarray(0, Math.max(0, i)), name: path.subarray(i + 1) };
}

export function joinPath(parent: Buffer, name: Buffer): Buffer {
  if (name.length === 0) return parent; // the root's own row
  return Buffer.concat([parent, Buffer.from('/'), name]);
}

/** The parent as keyed: itself, or FF + SHA-256 when it is too long for a key. */
export function parentKey(parent: Buffer): Buffer {
  if (parent.length <= LONG_PARENT) return parent;
  return Buffer.concat([Buffer.from([0xff]), crypto.createHash('sha256').update(parent).digest()]);
}

export function isLongParent(parent: Buffer): boolean {
  return parent.length > LONG_PARENT;
}

/** vid|part|parent|00|name|00: the subject of a path's entry rows. */
export function entrySubject(vid: number, part: number, path: Buffer): Buffer {
  const { parent, name } = splitPath(path);
  return Buffer.concat([head(vid, part), parentKey(parent), NUL, name, NUL]);
}

export function withSeq(subjectKey: Buffer, seq: number): Buffer {
  return Buffer.concat([subjectKey, seqBytes(seq)]);
}

/** The prefix of every entry row of a directory's children. */
export function childrenPrefix(vid: number, part: number, dir: Buffer): Buffer {
  return Buffer.concat([head(vid, part), parentKey(dir), NUL]);
}

/** Prefixes covering a directory's whole subtree (children, and rows whose parent lies below it). */
export function subtreePrefixes(vid: number, part: number, dir: Buffer): Buffer[] {
  if (dir.length === 0) return [head(vid, part)];
  const out = [childrenPrefix(vid, part, dir)];
  if (dir.length < LONG_PARENT) out.push(Buffer.concat([head(vid, part), dir, Buffer.from('/')]));
  // Deep subtrees also live in the hashed region; their values carry the full path to filter by.
  out.push(Buffer.concat([head(vid, part), Buffer.from([0xff])]));
  return out;
}

/** Decodes an entry key's parent (as keyed) and name. */
export function entryKeyParts(key: Buffer): { parent: Buffer; name: Buffer; seq: number } {
  const body = key.subarray(6, key.length - SEQ_BYTES - 1); // without vid|part and the name's terminating NUL
  // A hashed parent is FF + 32 bytes of SHA-256, which may hold NULs.
  const i = body[0] === 0xff ? 33 : body.indexOf(0);
  return { parent: body.subarray(0, i), name: body.subarray(i + 1), seq: readSeq(key) };
}

export function inopathSubject(vid: number, part: number, ino: number, path: Buffer): Buffer {
  const { parent, name } = splitPath(path);
  const h = head(vid, part, 4);
  h.writeUInt32BE(ino, 6);
  return Buffer.concat([h, parentKey(parent), NUL, name, NUL]);
}

export function inodePrefix(vid: number, part: number, ino: number): Buffer {
  const h = head(vid, part, 4);
  h.writeUInt32BE(ino, 6);
  return h;
}

export function dirblockSubject(vid: number, part: number, block: number): Buffer {
  const h = head(vid, part, 8);
  h.writeUInt32BE(Math.floor(block / 2 ** 32), 6);
  h.writeUInt32BE(block >>> 0, 10);
  return h;
}

export function dirblockOf(key: Buffer): number {
  return key.readUInt32BE(6) * 2 ** 32 + key.readUInt32BE(10);
}

export function volumePrefix(vid: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(vid, 0);
  return b;
}

export function partitionPrefix(vid: number, part: number): Buffer {
  return head(vid, part);
}

/** The smallest key greater than every key starting with `prefix`. */
export function prefixEnd(prefix: Buffer): Buffer {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      b[i]!++;
      return b.subarray(0, i + 1);
    }
  }
  return Buffer.concat([prefix, Buffer.alloc(SEQ_BYTES + 1, 0xff)]);
}

export const SEQ_LEN = SEQ_BYTES;
