/**
 * The hash tree of one archived volume (seed 003 L326-L330). Leaves are
 * fixed, aligned pieces of the volume (`leafSize` bytes; the last one may
 * be shorter). A node at level l >= 1 lists the handles of up to `fanout`
 * children at level l-1; node (l, i) covers leaves [i*F^l, (i+1)*F^l).
 * The shape depends only on (size, leafSize, fanout), so two points of a
 * volume of the same size have nodes covering the same ranges: temporal
 * dedup reuses a subtree by its handle and the difference engine compares
 * two trees node by node. A node or leaf that is all zeroes is the ZERO
 * handle and is stored nowhere, so a sparse volume has a small tree.
 *
 * Node chunk: magic "RWTN" | version u8 = 1 | level u8 | count u16 |
 * count handles of 33 bytes. The node does not record its position, so
 * identical subtrees anywhere share one chunk.
 */
import { ArchiveFormatError } from './errors';
import { HANDLE_SIZE, ZERO_HANDLE, checkHandle, isZeroHandle, type Handle } from './handle';

const NODE_MAGIC = Buffer.from('RWTN', 'latin1');
const NODE_HEADER = 8;
export const MIN_LEAF = 16 * 1024;
export const MAX_LEAF = 4 * 1024 * 1024;
export const MIN_FANOUT = 2;
export const MAX_FANOUT = 65535;

export interface TreeShape {
  size: number;
  leafSize: number;
  fanout: number;
  leaves: number;
  /** Level of the root (at least 1). */
  height: number;
}

export function checkLeafSize(leafSize: number): void {
  if (!Number.isInteger(leafSize) || leafSize < MIN_LEAF || leafSize > MAX_LEAF || (leafSize & (leafSize - 1)) !== 0) {
    throw new RangeError(`leaf size ${leafSize} must be a power of two from 16 KiB to 4 MiB`);
  }
}

export function checkFanout(fanout: number): void {
  if (!Number.isInteger(fanout) || fanout < MIN_FANOUT || fanout > MAX_FANOUT)
    throw new RangeError(`fan-out ${fanout} must be from ${MIN_FANOUT} to ${MAX_FANOUT}`);
}

export function shapeOf(size: number, leafSize: number, fanout: number): TreeShape {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`volume size ${size} is not a valid byte count`);
  const leaves = Math.ceil(size / leafSize);
  let height = 1;
  while (fanout ** height < leaves) height++;
  return { size, leafSize, fanout, leaves, height };
}

/** Leaves covered by one node at `level`. */
export function span(s: TreeShape, level: number): number {
  return s.fanout ** level;
}

/** Number of nodes at `level` (leaves at level 0). */
export function nodesAt(s: TreeShape, level: number): number {
  return Math.ceil(s.leaves / span(s, level));
}

/** Children of node (level, index): 0 for a node past the end. */
export function childCount(s: TreeShape, level: number, index: number): number {
  return Math.max(0, Math.min(s.fanout, nodesAt(s, level - 1) - index * s.fanout));
}

export function leafLength(s: TreeShape, leaf: number): number {
  return Math.max(0, Math.min(s.leafSize, s.size - leaf * s.leafSize));
}

/** Leaf range [lo, hi) of node (level, index), clipped to the volume. */
export function leafRange(s: TreeShape, level: number, index: number): [number, number] {
  const w = span(s, level);
  return [Math.min(index * w, s.leaves), Math.min((index + 1) * w, s.leaves)];
}

/** A node's children as one buffer of 33-byte handles. */
export interface TreeNode {
  level: number;
  count: number;
  children: Buffer;
}

export function child(n: TreeNode, i: number): Handle {
  return n.children.subarray(i * HANDLE_SIZE, (i + 1) * HANDLE_SIZE);
}

/** Encodes a node; returns null when every child is ZERO (the node is ZERO then). */
export function encodeNode(level: number, children: Handle[]): Buffer | null {
  if (children.every(isZeroHandle)) return null;
  const b = Buffer.allocUnsafe(NODE_HEADER + children.length * HANDLE_SIZE);
  NODE_MAGIC.copy(b, 0);
  b[4] = 1;
  b[5] = level;
  b.writeUInt16LE(children.length, 6);
  children.forEach((c, i) => c.copy(b, NODE_HEADER + i * HANDLE_SIZE));
  return b;
}

/** Decodes a node chunk; throws ArchiveFormatError if it is not one. */
export function decodeNode(b: Buffer): TreeNode {
  if (b.length < NODE_HEADER || !b.subarray(0, 4).equals(NODE_MAGIC) || b[4] !== 1) throw new ArchiveFormatError('tree node: bad header');
  const level = b[5]!;
  const count = b.readUInt16LE(6);
  if (level < 1 || count < 1 || b.length !== NODE_HEADER + count * HANDLE_SIZE)
    throw new ArchiveFormatError('tree node: bad level, count or length');
  for (let i = 0; i < count; i++) checkHandle(b, NODE_HEADER + i * HANDLE_SIZE, 'tree node');
  return { level, count, children: b.subarray(NODE_HEADER) };
}

/** The ZERO node's view: `count` ZERO children. */
export function zeroNode(level: number, count: number): TreeNode {
  return { level, count, children: Buffer.alloc(count * HANDLE_SIZE) };
}

export { ZERO_HANDLE };
