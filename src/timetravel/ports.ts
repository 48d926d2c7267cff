/**
 * The ports of time travel: what it needs of the rest of Rewind, declared
 * here and implemented below (the manager's HistoryReader, the intercept's
 * GroupJournal or the link to it, the intercept's ProtectedVolume). Time
 * travel imports no concrete class of theirs; the daemon (single process)
 * and the manager role (two hosts) each build a VolumeContext of adapters.
 */
import type { TxnRecord } from '../manager/types';
import type { DiffHistory } from './diff';
import type { ImageHistory } from './point-image';
import type { JournalTail } from './resolver';

/** A pin a view or marker holds in its group's history (see manager/pins.ts). */
export interface PinPort {
  pin(holder: string, k: number, overlay?: boolean): void;
  unpin(holder: string): void;
  /** The pin a point at seq p needs, or null if p is not committed yet. */
  ofSeq(p: number): { k: number; overlay: boolean } | null;
  /** Pins computed when retention asks (markers). */
  addSource(fn: () => Array<{ holder: string; k: number; overlay: boolean }>): void;
}

/** The group's committed history: images before any transaction, records, changed runs, pins. */
export interface HistoryPort extends ImageHistory, DiffHistory {
  /** The applied pointer. */
  status(): { lastContainer: number; lastSeq: number; lastTime: number };
  records(n: number): Promise<TxnRecord[]>;
  /** Blocks of a volume every committed transaction from k on touched (what a restore to before T_k rewrites). */
  changedSince(volumeId: number, k: number): Array<{ start: number; count: number }>;
  readonly pins: PinPort;
}

/** The intercept's journal: its position and uncommitted writes (JournalTail), catch-up, sealing. */
export interface JournalPort extends JournalTail {
  /** Not journaling (degraded): a restore must wait. */
  readonly isDegraded: boolean;
  /** Seal the active container now (a restore's writes start a transaction of their own). */
  seal(reason: string): Promise<unknown>;
  /** The last seq appended to the journal (asked of the intercept where it is remote). */
  lastAppendedSeq(): Promise<number>;
}

/**
 * Where a production restore rewrites: the intercept, so every restore
 * write is journaled. In the process (ProtectedVolume), or across the link
 * when the manager runs the restore (link/remote-restore.ts).
 */
export interface RestoreTarget {
  /**
   * Production out of service for the restore, its clients gone, until
   * release(); kept so across a crash of the intercept (the single process
   * needs nothing: the host took the export offline).
   */
  hold(): Promise<void>;
  release(): Promise<void>;
  flush(): Promise<void>;
  /**
   * Per block of [offset, offset + want.length) (offset block-aligned; the
   * last block may be short): true where production does not hold `want`,
   * so only those are rewritten and a rerun rewrites whatever still differs.
   */
  differing(offset: number, want: Buffer, blockSize: number): Promise<boolean[]>;
  restoreWrite(offset: number, data: Buffer): Promise<void>;
  restoreZero(offset: number, length: number): Promise<void>;
}

/** One protected volume as time travel sees it. */
export interface VolumeContext {
  history: HistoryPort;
  journal: JournalPort;
  /** Null where production cannot be rewritten from here. */
  restore: RestoreTarget | null;
  group: string;
  volumeId: number;
  size: number;
}
