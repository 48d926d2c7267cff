/**
 * Inline data (the inline_data feature): small files and directories live
 * in the inode itself, in the 60-byte i_block area followed by the value of
 * the "system.data" extended attribute in the inode's extra space.
 */
import { corrupt } from '../errors';
import { I_BLOCK, I_BLOCK_LEN, type Inode } from './inode';
import type { Superblock } from './superblock';

const XATTR_MAGIC = 0xea020000;
const INDEX_SYSTEM = 7;

/** The value of system.data from the in-inode xattr area ("" if absent). */
function systemData(sb: Superblock, inode: Inode): Buffer {
  const raw = inode.raw;
  const start = inode.coreEnd;
  const end = sb.inodeSize;
  const what = `inode ${inode.stat.ino} inline data`;
  if (start + 4 > end || raw.readUInt32LE(start) !== XATTR_MAGIC) return Buffer.alloc(0);
  const base = start + 4; // value offsets count from the first entry
  let off = base;
  while (off + 16 <= end && raw.readUInt32LE(off) !== 0) {
    const nameLen = raw[off]!;
    const index = raw[off + 1]!;
    const valueOffs = raw.readUInt16LE(off + 2);
    const valueInum = raw.readUInt32LE(off + 4);
    const valueSize = raw.readUInt32LE(off + 8);
    if (off + 16 + nameLen > end) throw corrupt(what, 'xattr entry runs past the inode');
    const name = raw.toString('latin1', off + 16, off + 16 + nameLen);
    if (index === INDEX_SYSTEM && name === 'data') {
      if (valueInum !== 0) throw corrupt(what, 'system.data stored in an EA inode');
      if (base + valueOffs + valueSize > end) throw corrupt(what, `value of ${valueSize} bytes at ${valueOffs} runs past the inode`);
      return raw.subarray(base + valueOffs, base + valueOffs + valueSize);
    }
    off += (16 + nameLen + 3) & ~3;
  }
  return Buffer.alloc(0);
}

/** The regions holding an inline file's bytes or an inline directory's entries. */
export function inlineRegions(sb: Superblock, inode: Inode): [Buffer, Buffer] {
  return [inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_LEN), systemData(sb, inode)];
}

/** The contents of an inline file, exactly i_size bytes. */
export function inlineContents(sb: Superblock, inode: Inode): Buffer {
  const [a, b] = inlineRegions(sb, inode);
  const size = inode.stat.size;
  if (size > a.length + b.length)
    throw corrupt(`inode ${inode.stat.ino} inline data`, `size ${size} exceeds the ${a.length + b.length} bytes stored inline`);
  return Buffer.concat([a, b]).subarray(0, size);
}
