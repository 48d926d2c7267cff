/**
 * Binary keys of the file catalog's temporal tables (see store.ts). Every
 * row is keyed by what it describes followed by the seq of the cataloged
 * point that wrote it (8 bytes, big-endian), so all versions of one thing
 * are adjacent and in point order, and a point's view of a thing is its last
 * row at or before the point. Paths are bytes; a name never holds NUL or
 * "/", which is what makes NUL a safe separator:
 *
 *   entry    vid u32 | part u16 | parent path | 00 | name | 00 | seq u64
 *   inodes   vid u32 | part u16 | bucket u32 | seq u64   (inodes 16b+1 .. 16b+16)
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

/**
 * vid|part|parent|00|name|00[|seq] in one allocation (a full build makes
 * one per path: its hottest allocation). `seq` < 0: the subject alone.
 */
function pathKey(vid: number, part: number, path: Buffer, seq: number): Buffer {
  const i = path.lastIndexOf(0x2f);
  const parentLen = Math.max(0, i);
  if (parentLen > LONG_PARENT) {
    const { parent, name } = splitPath(path);
    const subj = Buffer.concat([head(vid, part), parentKey(parent), NUL, name, NUL]);
    return seq < 0 ? subj : withSeq(subj, seq);
  }
  const pre = 6;
  const nameLen = path.length - (path.length === 0 ? 0 : i + 1);
  const len = pre + parentLen + 1 + nameLen + 1 + (seq < 0 ? 0 : SEQ_BYTES);
  const k = Buffer.allocUnsafe(len);
  k.writeUInt32BE(vid, 0);
  k.writeUInt16BE(part, 4);
  path.copy(k, pre, 0, parentLen);
  let o = pre + parentLen;
  k[o++] = 0;
  if (nameLen) path.copy(k, o, i + 1);
  o += nameLen;
  k[o++] = 0;
  if (seq >= 0) {
    k.writeUInt32BE(Math.floor(seq / 2 ** 32), o);
    k.writeUInt32BE(seq >>> 0, o + 4);
  }
  return k;
}

/** vid|part|parent|00|name|00: the subject of a path's entry rows. */
export function entrySubject(vid: number, part: number, path: Buffer): Buffer {
  return pathKey(vid, part, path, -1);
}

/** An entry row's key. */
export function entryKey(vid: number, part: number, path: Buffer, seq: number): Buffer {
  return pathKey(vid, part, path, seq);
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

/** Inodes per row of the inode -> paths index: one inode-table block of 256-byte inodes. */
export const INODE_BUCKET = 16;

export function bucketOf(ino: number): number {
  return Math.floor((ino - 1) / INODE_BUCKET);
}

/** vid|part|bucket: the subject of the row listing the paths of inodes 16b+1 .. 16b+16. */
export function inodesSubject(vid: number, part: number, bucket: number): Buffer {
  const h = head(vid, part, 4);
  h.writeUInt32BE(bucket, 6);
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
