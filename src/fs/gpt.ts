/**
 * GUID partition tables. The primary header (LBA 1) and its entry array
 * are checked by their CRCs; if either is bad the backup at the last LBA is
 * used, and a warning says so. Both bad is an error.
 */
import { crc32 } from '../util/crc32';
import { corrupt, FsError } from './errors';
import type { FsImage } from './image';
import { LIMITS } from './limits';

export interface GptEntry {
  index: number; // 1-based slot in the entry array
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  lastLba: number; // inclusive
  attributes: bigint;
  name: string;
}

export interface Gpt {
  sectorSize: number;
  diskGuid: string;
  usedBackup: boolean;
  entries: GptEntry[];
  warnings: string[];
}

export function guidOf(b: Buffer): string {
  const le = (s: number, n: number): string =>
    Buffer.from(b.subarray(s, s + n))
      .reverse()
      .toString('hex');
  const h = b.toString('hex');
  return `${le(0, 4)}-${le(4, 2)}-${le(6, 2)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

const SIGNATURE = 'EFI PART';

/** True if the sector at `lba` carries the GPT signature (whatever its CRC). */
export async function hasGptSignature(image: FsImage, sectorSize: number): Promise<boolean> {
  if (image.size < 2 * sectorSize) return false;
  const h = await image.read(sectorSize, 8);
  return h.toString('latin1') === SIGNATURE;
}

interface Header {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  count: number;
  entrySize: number;
  entriesCrc: number;
}

/** Parse and check one header; throws CORRUPT with the reason. */
function parseHeader(s: Buffer, lba: number, sectors: number, which: string): Header {
  const what = `GPT ${which} header`;
  if (s.toString('latin1', 0, 8) !== SIGNATURE) throw corrupt(what, 'no "EFI PART" signature');
  const size = s.readUInt32LE(12);
  if (size < 92 || size > s.length) throw corrupt(what, `header size ${size} outside 92..${s.length}`);
  const copy = Buffer.from(s.subarray(0, size));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) >>> 0 !== s.readUInt32LE(16)) throw corrupt(what, 'header CRC mismatch');
  const num = (off: number): number => Number(s.readBigUInt64LE(off));
  const h: Header = {
    myLba: num(24),
    alternateLba: num(32),
    firstUsable: num(40),
    lastUsable: num(48),
    diskGuid: guidOf(s.subarray(56, 72)),
    entriesLba: num(72),
    count: s.readUInt32LE(80),
    entrySize: s.readUInt32LE(84),
    entriesCrc: s.readUInt32LE(88),
  };
  if (h.myLba !== lba) throw corrupt(what, `says it is at LBA ${h.myLba}, found at ${lba}`);
  if (h.entrySize < 128 || h.entrySize % 8 !== 0) throw corrupt(what, `entry size ${h.entrySize}`);
  if (h.count * h.entrySize > LIMITS.maxGptEntryBytes) {
    throw corrupt(what, `${h.count} entries of ${h.entrySize} bytes exceed ${LIMITS.maxGptEntryBytes} bytes`);
  }
  const entrySectors = Math.ceil((h.count * h.entrySize) / s.length);
  if (h.entriesLba < 1 || h.entriesLba + entrySectors > sectors)
    throw corrupt(what, `entry array at LBA ${h.entriesLba} is outside the disk`);
  if (h.firstUsable > h.lastUsable || h.lastUsable >= sectors)
    throw corrupt(what, `usable LBAs ${h.firstUsable}..${h.lastUsable} outside the disk`);
  return h;
}

async function readSide(image: FsImage, sectorSize: number, lba: number, which: string): Promise<{ h: Header; entries: Buffer }> {
  const sectors = Math.floor(image.size / sectorSize);
  const h = parseHeader(await image.read(lba * sectorSize, sectorSize), lba, sectors, which);
  const entries = h.count === 0 ? Buffer.alloc(0) : await image.read(h.entriesLba * sectorSize, h.count * h.entrySize);
  if (crc32(entries) >>> 0 !== h.entriesCrc) throw corrupt(`GPT ${which} partition entries`, 'entry array CRC mismatch');
  return { h, entries };
}

export async function readGpt(image: FsImage, sectorSize: number): Promise<Gpt> {
  const sectors = Math.floor(image.size / sectorSize);
  const warnings: string[] = [];
  let side: { h: Header; entries: Buffer };
  let usedBackup = false;
  try {
    side = await readSide(image, sectorSize, 1, 'primary');
  } catch (primaryErr) {
    if (!(primaryErr instanceof FsError)) throw primaryErr;
    try {
      side = await readSide(image, sectorSize, sectors - 1, 'backup');
    } catch (backupErr) {
      if (!(backupErr instanceof FsError)) throw backupErr;
      throw new FsError('CORRUPT', 'GPT', 'primary and backup headers', `${primaryErr.message}; ${backupErr.message}`);
    }
    usedBackup = true;
    warnings.push(`${primaryErr.message}: using the backup GPT`);
  }
  const { h, entries } = side;
  const out: GptEntry[] = [];
  for (let i = 0; i < h.count; i++) {
    const e = entries.subarray(i * h.entrySize, (i + 1) * h.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const firstLba = Number(e.readBigUInt64LE(32));
    const lastLba = Number(e.readBigUInt64LE(40));
    if (firstLba > lastLba || lastLba >= sectors) {
      warnings.push(`GPT entry ${i + 1}: LBAs ${firstLba}..${lastLba} outside the disk; skipped`);
      continue;
    }
    const raw = e.subarray(56, 128);
    let end = 0;
    while (end + 1 < raw.length && (raw[end] !== 0 || raw[end + 1] !== 0)) end += 2;
    out.push({
      index: i + 1,
      typeGuid: guidOf(e.subarray(0, 16)),
      uniqueGuid: guidOf(e.subarray(16, 32)),
      firstLba,
      lastLba,
      attributes: e.readBigUInt64LE(48),
      name: raw.subarray(0, end).toString('utf16le'),
    });
  }
  return { sectorSize, diskGuid: h.diskGuid, usedBackup, entries: out, warnings };
}
