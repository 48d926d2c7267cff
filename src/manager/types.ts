/**
 * Types shared by the backup manager's main thread, its piscina workers and
 * its LMDB catalog. See backup-manager.ts for the overall design.
 */

export type { SealedContainerRef, CommitInfo } from '../journal/link';

export interface ManagedVolume {
  /** Volume id inside the group (the u16 of the record header). */
  volumeId: number;
  name: string;
  /** Size in bytes. */
  size: number;
}

/** A stored container as the catalog remembers it. */
export interface ContainerFileInfo {
  /** File name inside <dir>/history/. */
  file: string;
  size: number;
  /** The footer's CRC-32 of every record byte. */
  bodyCrc: number;
  recordCount: number;
}

/** The catalog entry of a committed transaction T_n = (AILFC_n, BILFC_n). */
export interface TransactionRecord {
  n: number;
  groupId: number;
  /** 0 (with lastSeq 0) when AILFC_n holds no records. */
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  /** Records in AILFC_n (error records included). */
  records: number;
  /** Error records in AILFC_n (failed production writes; not applied). */
  errors: number;
  ailfc: ContainerFileInfo;
  bilfc: ContainerFileInfo;
  /** Blocks touched, over all volumes. */
  blocks: number;
  bytesApplied: number;
  /** Volume ids touched, ascending. */
  volumes: number[];
  blockSize: number;
  /** ms since the epoch. */
  committedAt: number;
  /**
   * Set when retention merged T_mergedFrom..T_n into this one: only its
   * boundaries (before firstSeq, at lastSeq) are points any more; its AILFC
   * keeps the newest write per block, its BILFC the oldest before-image.
   */
  mergedFrom?: number;
  /**
   * Set when T_n belongs to a super transaction (a resync after degraded
   * mode): its containers, from `id` on, hold the dirty regions re-read from
   * production in no chronological order, and stand for every write from
   * `fromSeq` on. Points from fromSeq up to (not including) the super
   * transaction's last seq are not restorable; its ends are.
   */
  superTransaction?: { id: number; fromSeq: number; last: boolean; fromTime?: number };
}

/**
 * A run of touched blocks of one volume: blocks start .. start+count-1.
 * Their BeforeBlock records sit back to back in BILFC_n from `position`
 * (the record header of block `start`); block start+i is at
 * position + i * (RECORD_HEADER_SIZE + blockSize). Only the last block of a
 * volume can be shorter than blockSize, and it is always last in its run.
 */
export interface BlockRun {
  volumeId: number;
  start: number;
  count: number;
  position: number;
}

/** A container that failed its checksums (or framing): it is never applied. */
export class CorruptContainerError extends Error {
  readonly code = 'ERR_REWIND_CORRUPT_CONTAINER';
  constructor(
    readonly kind: 'ailfc' | 'bilfc',
    readonly containerId: number,
    readonly path: string,
    readonly offset: number,
    readonly problem: string,
  ) {
    super(`${kind.toUpperCase()}_${containerId} (${path}) is corrupt at offset ${offset}: ${problem}`);
    this.name = 'CorruptContainerError';
  }
}

/** A record header of a stored AILFC, as time travel overlays need it (HistoryReader.records). */
export interface TxnRecord {
  seq: number;
  time: number;
  kind: number;
  flags: number;
  volumeId: number;
  offset: number;
  length: number;
  /** File offset of the record header. */
  position: number;
}
