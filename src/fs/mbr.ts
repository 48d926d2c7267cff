/**
 * MBR (DOS) partition tables, with extended partitions: the chain of EBRs
 * inside an extended partition yields logical partitions numbered from 5,
 * as Linux numbers them. The chain is followed with a visited set and a cap,
 * so a looping or endless chain ends with a warning.
 */
import type { FsImage } from './image';
import { LIMITS } from './limits';

export interface MbrEntry {
  index: number; // 1..4 primary, 5.. logical
  kind: 'primary' | 'logical';
  type: number;
  bootable: boolean;
  firstLba: number;
  sectors: number;
}

export interface Mbr {
  diskId: number;
  entries: MbrEntry[];
  /** True if one entry is a GPT protective partition (0xEE). */
  protective: boolean;
  warnings: string[];
}

const SECTOR = 512;
const isExtended = (t: number): boolean => t === 0x05 || t === 0x0f || t === 0x85;

interface RawEntry {
  status: number;
  type: number;
  rel: number;
  sectors: number;
}

function rawEntries(s: Buffer): RawEntry[] {
  const out: RawEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + 16 * i;
    out.push({ status: s[o]!, type: s[o + 4]!, rel: s.readUInt32LE(o + 8), sectors: s.readUInt32LE(o + 12) });
  }
  return out;
}

/**
 * Whether sector 0 is a plausible MBR: the 55 AA signature and status bytes
 * of 0x00 or 0x80 in every slot. (Boot sectors of FAT and NTFS volumes carry
 * 55 AA too; the caller rules those out first.)
 */
export function looksLikeMbr(s0: Buffer): boolean {
  if (s0.length < 512 || s0[510] !== 0x55 || s0[511] !== 0xaa) return false;
  return rawEntries(s0).every((e) => e.status === 0 || e.status === 0x80);
}

export async function readMbr(image: FsImage, s0: Buffer): Promise<Mbr> {
  const sectors = Math.floor(image.size / SECTOR);
  const warnings: string[] = [];
  const entries: MbrEntry[] = [];
  const raw = rawEntries(s0);
  const protective = raw.some((e) => e.type === 0xee);
  const inDisk = (first: number, count: number, what: string): boolean => {
    if (first + count <= sectors) return true;
    warnings.push(`${what}: sectors ${first}..${first + count - 1} run past the disk (${sectors} sectors); skipped`);
    return false;
  };
  raw.forEach((e, i) => {
    if (e.type === 0 || e.sectors === 0 || isExtended(e.type)) return;
    if (!inDisk(e.rel, e.sectors, `MBR partition ${i + 1}`)) return;
    entries.push({ index: i + 1, kind: 'primary', type: e.type, bootable: e.status === 0x80, firstLba: e.rel, sectors: e.sectors });
  });
  let next = 5;
  for (const ext of raw.filter((e) => isExtended(e.type) && e.sectors > 0)) {
    if (!inDisk(ext.rel, ext.sectors, 'MBR extended partition')) continue;
    next = await readLogicals(image, ext.rel, ext.sectors, next, entries, warnings);
  }
  return { diskId: s0.readUInt32LE(440), entries, protective, warnings };
}

/** Follows one EBR chain; returns the next free logical number. */
async function readLogicals(
  image: FsImage,
  extStart: number,
  extSectors: number,
  next: number,
  out: MbrEntry[],
  warnings: string[],
): Promise<number> {
  const seen = new Set<number>();
  let ebr = extStart;
  for (;;) {
    if (seen.has(ebr)) {
      warnings.push(`EBR chain loops back to sector ${ebr}; stopped`);
      return next;
    }
    if (seen.size >= LIMITS.maxLogicalPartitions) {
      warnings.push(`EBR chain longer than ${LIMITS.maxLogicalPartitions}; stopped`);
      return next;
    }
    seen.add(ebr);
    const s = await image.read(ebr * SECTOR, SECTOR);
    if (s[510] !== 0x55 || s[511] !== 0xaa) {
      warnings.push(`EBR at sector ${ebr} has no 55 AA signature; chain stopped`);
      return next;
    }
    const [data, link] = rawEntries(s) as [RawEntry, RawEntry];
    if (data.type !== 0 && data.sectors > 0) {
      const first = ebr + data.rel;
      if (first < extStart || first + data.sectors > extStart + extSectors) {
        warnings.push(`logical partition at sector ${first} (${data.sectors} sectors) lies outside its extended partition; skipped`);
      } else {
        out.push({
          index: next++,
          kind: 'logical',
          type: data.type,
          bootable: data.status === 0x80,
          firstLba: first,
          sectors: data.sectors,
        });
      }
    }
    if (!isExtended(link.type) || link.sectors === 0) return next;
    const nextEbr = extStart + link.rel;
    if (nextEbr >= extStart + extSectors) {
      warnings.push(`EBR at sector ${ebr} links to sector ${nextEbr}, outside its extended partition; chain stopped`);
      return next;
    }
    ebr = nextEbr;
  }
}
