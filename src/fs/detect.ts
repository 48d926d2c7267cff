/**
 * What a partition (or a whole disk) holds, by signature, the way blkid
 * tells: ext2/3/4 are read by this module; the others are named so that a
 * caller can say "xfs: not supported yet" instead of "unknown".
 */
import type { FsImage } from './image';

export type FsType =
  | 'ext2'
  | 'ext3'
  | 'ext4'
  | 'jbd' // an external ext3/4 journal device
  | 'xfs'
  | 'ntfs'
  | 'vfat'
  | 'exfat'
  | 'btrfs'
  | 'f2fs'
  | 'lvm2'
  | 'luks'
  | 'swap'
  | 'iso9660'
  | 'unknown';

export interface FsSignature {
  type: FsType;
  /** True when openFilesystem can read it (features are checked only at open). */
  supported: boolean;
  uuid?: string;
  label?: string;
}

/** Bytes read to probe: the first 8 KiB (plus iso9660 at 32 KiB and btrfs at 64 KiB). */
const HEAD = 8192;
const BTRFS_SB = 0x10000;

function uuidOf(b: Buffer): string | undefined {
  if (b.every((x) => x === 0)) return undefined;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function cstr(b: Buffer): string | undefined {
  const end = b.indexOf(0);
  const s = b
    .subarray(0, end < 0 ? b.length : end)
    .toString('latin1')
    .trim();
  return s === '' ? undefined : s;
}

// blkid's rule for telling ext2, ext3 and ext4 apart by features.
const EXT3_INCOMPAT_OK = 0x0002 | 0x0004 | 0x0010; // filetype, recover, meta_bg
const EXT3_RO_COMPAT_OK = 0x0001 | 0x0002 | 0x0004; // sparse_super, large_file, btree_dir

export function extSignature(sb: Buffer): FsSignature | null {
  if (sb.length < 1024 || sb.readUInt16LE(56) !== 0xef53) return null;
  const compat = sb.readUInt32LE(92);
  const incompat = sb.readUInt32LE(96);
  const roCompat = sb.readUInt32LE(100);
  let type: FsType;
  if (incompat & 0x0008) type = 'jbd';
  else if (incompat & ~EXT3_INCOMPAT_OK || roCompat & ~EXT3_RO_COMPAT_OK) type = 'ext4';
  else if (compat & 0x0004) type = 'ext3';
  else type = 'ext2';
  const sig: FsSignature = { type, supported: type !== 'jbd' };
  const uuid = uuidOf(sb.subarray(104, 120));
  const label = cstr(sb.subarray(120, 136));
  if (uuid) sig.uuid = uuid;
  if (label) sig.label = label;
  return sig;
}

/** True if sector 0 is a FAT, exFAT or NTFS boot sector (they carry 55 AA like an MBR). */
export function isVolumeBootRecord(s0: Buffer): boolean {
  return fatLike(s0) !== null;
}

function fatLike(s0: Buffer): FsType | null {
  if (s0.length < 512) return null;
  const oem = s0.toString('latin1', 3, 11);
  if (oem === 'NTFS    ') return 'ntfs';
  if (oem === 'EXFAT   ') return 'exfat';
  const jump = s0[0] === 0xeb || s0[0] === 0xe9;
  const bps = s0.readUInt16LE(11);
  const validBps = bps >= 512 && bps <= 4096 && (bps & (bps - 1)) === 0;
  if (!jump || !validBps) return null;
  if (s0.toString('latin1', 0x52, 0x57) === 'FAT32' || s0.toString('latin1', 0x36, 0x39) === 'FAT') return 'vfat';
  return null;
}

/** Probe `length` bytes at `offset` of `image` (a partition or the whole disk). */
export async function detectFilesystem(image: FsImage, offset: number, length: number): Promise<FsSignature> {
  const headLen = Math.min(HEAD, length);
  if (headLen < 512) return { type: 'unknown', supported: false };
  const head = await image.read(offset, headLen);
  const ext = extSignature(head.subarray(1024, 2048));
  if (ext) return ext;
  const fat = fatLike(head);
  if (fat) return { type: fat, supported: false };
  const unsupported = (type: FsType): FsSignature => ({ type, supported: false });
  if (head.toString('latin1', 0, 4) === 'XFSB') return unsupported('xfs');
  if (head.subarray(0, 6).equals(Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]))) return unsupported('luks');
  for (let s = 0; s < 4 && (s + 1) * 512 <= headLen; s++) {
    if (
      head.toString('latin1', s * 512, s * 512 + 8) === 'LABELONE' &&
      head.toString('latin1', s * 512 + 24, s * 512 + 32) === 'LVM2 001'
    ) {
      return unsupported('lvm2');
    }
  }
  if (headLen >= 4096) {
    const swap = head.toString('latin1', 4086, 4096);
    if (swap === 'SWAPSPACE2' || swap === 'SWAP-SPACE') return unsupported('swap');
  }
  if (headLen >= 1028 && head.readUInt32LE(1024) === 0xf2f52010) return unsupported('f2fs');
  if (length >= 0x8006 + 5) {
    const iso = await image.read(offset + 0x8001, 5);
    if (iso.toString('latin1') === 'CD001') return unsupported('iso9660');
  }
  if (length >= BTRFS_SB + 0x48) {
    const magic = await image.read(offset + BTRFS_SB + 0x40, 8);
    if (magic.toString('latin1') === '_BHRfS_M') return unsupported('btrfs');
  }
  return unsupported('unknown');
}
