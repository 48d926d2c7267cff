/**
 * Directory entries. Linear and hashed (htree) directories are read the
 * same way, block by block: htree index blocks present themselves as one
 * empty entry spanning the block (and the root's index hides inside the
 * record of ".."), which is how the format keeps old readers working.
 * Entries are checked as the kernel checks them; names are copied bytes.
 */
import { corrupt } from '../errors';
import type { FileType } from './inode';

export interface DirEntry {
  name: Buffer;
  ino: number;
  /** From the entry's file-type byte (needs the filetype feature; else 'unknown'). */
  dtype: FileType;
}

const DTYPES: FileType[] = ['unknown', 'file', 'dir', 'chr', 'blk', 'fifo', 'socket', 'symlink'];

export interface DirFormat {
  filetype: boolean; // name_len is one byte, followed by the type
  blockSize: number;
  inodesCount: number;
}

function recLen(raw: number, blockSize: number): number {
  // 64 KiB blocks store a full-block record as 65535 or 0 (ext4_rec_len_from_disk).
  if (blockSize >= 65536 && (raw === 65535 || raw === 0)) return blockSize;
  return (raw & 65532) | ((raw & 3) << 16);
}

/**
 * Appends the entries of buf[start, end) (one directory block or one inline
 * region) to `out`, without "." and "..". Throws CORRUPT on a malformed
 * record, naming the directory and the place.
 */
export function parseDirEntries(buf: Buffer, start: number, end: number, fmt: DirFormat, where: string, out: DirEntry[]): void {
  let off = start;
  // Byte arithmetic rather than readUInt*: this loop runs once per entry of every directory walked.
  while (off + 8 <= end) {
    const ino = (buf[off]! | (buf[off + 1]! << 8) | (buf[off + 2]! << 16) | (buf[off + 3]! << 24)) >>> 0;
    const rec = recLen(buf[off + 4]! | (buf[off + 5]! << 8), fmt.blockSize);
    const nameLen = fmt.filetype ? buf[off + 6]! : buf[off + 6]! | (buf[off + 7]! << 8);
    const at = `${where} offset ${off - start}`;
    if (rec < 12 || rec % 4 !== 0) throw corrupt(at, `record length ${rec}`);
    if (off + rec > end) throw corrupt(at, `record length ${rec} runs past the block`);
    if (8 + nameLen > rec) throw corrupt(at, `name length ${nameLen} exceeds record length ${rec}`);
    if (ino !== 0) {
      if (ino > fmt.inodesCount) throw corrupt(at, `inode ${ino} exceeds the inode count ${fmt.inodesCount}`);
      if (nameLen === 0) throw corrupt(at, 'empty name');
      const name = buf.subarray(off + 8, off + 8 + nameLen);
      const dot = (nameLen === 1 && name[0] === 0x2e) || (nameLen === 2 && name[0] === 0x2e && name[1] === 0x2e);
      if (!dot) {
        for (let i = off + 8; i < off + 8 + nameLen; i++)
          if (buf[i] === 0x2f || buf[i] === 0) throw corrupt(at, 'name contains "/" or NUL');
        const t = fmt.filetype ? buf[off + 7]! : 0;
        out.push({ name: Buffer.from(name), ino, dtype: DTYPES[t] ?? 'unknown' });
      }
    }
    off += rec;
  }
  if (off !== end && end - off >= 8) throw corrupt(`${where}`, 'records do not end at the block end');
}
