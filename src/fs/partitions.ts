/**
 * listPartitions: what an image holds. GPT (by its protective MBR or its
 * signature, 512- or 4096-byte sectors), then MBR with logical partitions,
 * else the whole disk as one filesystem. Each partition is probed for its
 * filesystem signature.
 */
import { detectFilesystem, isVolumeBootRecord, type FsSignature } from './detect';
import { asFsError, FsError } from './errors';
import { hasGptSignature, readGpt } from './gpt';
import type { FsImage } from './image';
import { looksLikeMbr, readMbr } from './mbr';

export type PartitionScheme = 'gpt' | 'mbr' | 'none';

export interface Partition {
  /** Linux numbering: GPT slot, MBR 1..4 primary and 5.. logical; 0 for a whole disk. */
  index: number;
  scheme: PartitionScheme;
  /** Byte range in the image. */
  offset: number;
  size: number;
  /** MBR type as "0x83"; GPT type GUID; "" for a whole disk. */
  type: string;
  /** GPT only. */
  name?: string;
  uuid?: string;
  /** MBR only. */
  kind?: 'primary' | 'logical';
  bootable?: boolean;
  /** The filesystem signature found in it (absent if listPartitions was told not to probe). */
  content?: FsSignature;
  /** How errors name it: "partition 2", "whole disk". */
  label: string;
}

export interface PartitionTable {
  scheme: PartitionScheme;
  /** GPT disk GUID or MBR disk identifier (hex). */
  diskId?: string;
  sectorSize: number;
  partitions: Partition[];
  /** Problems worked around: a corrupt primary GPT, entries outside the disk, a looping EBR chain. */
  warnings: string[];
}

/** The whole image as one partition (a filesystem with no table). */
export function wholeDisk(image: FsImage): Partition {
  return { index: 0, scheme: 'none', offset: 0, size: image.size, type: '', label: 'whole disk' };
}

async function readTable(image: FsImage): Promise<PartitionTable> {
  if (image.size < 512) return { scheme: 'none', sectorSize: 512, partitions: [wholeDisk(image)], warnings: [] };
  const s0 = await image.read(0, 512);
  const mbrValid = looksLikeMbr(s0) && !isVolumeBootRecord(s0);
  const mbr = mbrValid ? await readMbr(image, s0) : null;
  for (const sectorSize of [512, 4096]) {
    if ((mbr?.protective || !mbrValid) && (await hasGptSignature(image, sectorSize))) {
      return fromGpt(image, sectorSize);
    }
  }
  // A protective MBR whose primary GPT signature is gone: the backup may still be good.
  if (mbr?.protective) return fromGpt(image, 512);
  if (!mbr) return { scheme: 'none', sectorSize: 512, partitions: [wholeDisk(image)], warnings: [] };
  return {
    scheme: 'mbr',
    diskId: mbr.diskId.toString(16).padStart(8, '0'),
    sectorSize: 512,
    partitions: mbr.entries.map((e) => ({
      index: e.index,
      scheme: 'mbr',
      offset: e.firstLba * 512,
      size: e.sectors * 512,
      type: '0x' + e.type.toString(16).padStart(2, '0'),
      kind: e.kind,
      bootable: e.bootable,
      label: `partition ${e.index}`,
    })),
    warnings: mbr.warnings,
  };
}

async function fromGpt(image: FsImage, sectorSize: number): Promise<PartitionTable> {
  const gpt = await readGpt(image, sectorSize);
  return {
    scheme: 'gpt',
    diskId: gpt.diskGuid,
    sectorSize,
    partitions: gpt.entries.map((e) => ({
      index: e.index,
      scheme: 'gpt',
      offset: e.firstLba * sectorSize,
      size: (e.lastLba - e.firstLba + 1) * sectorSize,
      type: e.typeGuid,
      name: e.name,
      uuid: e.uniqueGuid,
      label: `partition ${e.index}`,
    })),
    warnings: gpt.warnings,
  };
}

/**
 * The partitions of an image, each with its filesystem signature unless
 * `probe` is false. Throws FsError (where "GPT"/"MBR") only when the table is
 * unreadable as a whole, e.g. both GPT headers corrupt.
 */
export async function listPartitions(image: FsImage, opts: { probe?: boolean } = {}): Promise<PartitionTable> {
  let table: PartitionTable;
  try {
    table = await readTable(image);
  } catch (err) {
    throw err instanceof FsError ? err : asFsError(err, 'partition table');
  }
  if (opts.probe !== false) {
    for (const p of table.partitions) {
      try {
        p.content = await detectFilesystem(image, p.offset, p.size);
      } catch (err) {
        throw asFsError(err, p.label, 'filesystem signature');
      }
    }
  }
  return table;
}
