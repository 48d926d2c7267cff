/** Records of the file catalog: cataloged points with their context, builds, and what the API answers. */

/** One filesystem (partition) of a cataloged point: seed 004's "context" tier. */
export interface FsContext {
  /** Linux numbering: 0 = the whole disk, else the partition number. */
  partition: number;
  /** "partition 2", "whole disk". */
  label: string;
  scheme: 'gpt' | 'mbr' | 'none';
  offset: number;
  size: number;
  /** MBR type ("0x83") or GPT type GUID. */
  partitionType: string;
  partitionUuid?: string;
  /** ext2, ext3, ext4, or the signature of what is not read (xfs, swap...). */
  fsType: string;
  uuid?: string;
  fsLabel?: string;
  /** Where the image's own /etc/fstab mounts it, when it says. */
  mountPoint: string | null;
  blockSize?: number;
  blocksCount?: number;
  inodesCount?: number;
  /** Paths cataloged. */
  entries: number;
  /** Why it was not cataloged (an unsupported or unreadable filesystem). */
  error?: string;
  /** Damage skipped (first 20) and notes such as a journal not replayed. */
  warnings: string[];
}

export interface BuildStats {
  mode: 'full' | 'incremental' | 'imported';
  /** The complete point an incremental build started from. */
  base: number | null;
  /** Bytes and read calls on the image at the point (and at the base, for directory blocks). */
  bytesRead: number;
  reads: number;
  /** Filesystem blocks read (bytes read / block size, summed over filesystems). */
  blocksRead: number;
  /** Incremental: blocks the history says changed, and those among them that are metadata. */
  changedBlocks: number;
  changedMetadataBlocks: number;
  /** Rows written (entries, inode paths, directory blocks). */
  rowsWritten: number;
  /** Paths whose entry changed at this point. */
  changedPaths: number;
  durationMs: number;
  /** Time spent waiting on the throttle. */
  throttledMs: number;
  /** Where the time went (ms): history (the changed blocks), open (partitions, superblocks, fstab), read, commit. */
  phases?: Record<string, number>;
}

export interface PointRecord {
  volume: string;
  vid: number;
  group: string;
  volumeId: number;
  seq: number;
  /** ms since the epoch: the time of the point's write. */
  time: number;
  txn: number;
  /** Markers at this seq when it was cataloged (or placed later, through the marker hook). */
  markers: string[];
  state: 'building' | 'complete';
  source: 'built' | 'imported';
  filesystems: FsContext[];
  /** Problems found reading the point (bounded); the point is still complete. */
  errors: string[];
  partitionScheme: string;
  stats: BuildStats;
  built: string;
}

export type JobState = 'queued' | 'running' | 'done' | 'failed';

export interface JobRecord {
  id: number;
  volume: string;
  seq: number;
  /** How the point was asked for ("@seq:N", a marker name...). */
  asked: string;
  marker: string | null;
  state: JobState;
  /** Runs at full speed (someone is waiting) rather than throttled. */
  priority: boolean;
  /** A full build even where an incremental one could run. */
  full?: boolean;
  progress: { phase: string; done: number; total: number };
  error: string | null;
  created: string;
  started: string | null;
  finished: string | null;
  /** Times it was started (a restart after a crash adds one). */
  attempts: number;
  stats: BuildStats | null;
}
