/**
 * The shapes time travel answers with (PointInfo, ViewInfo, results) and
 * what it needs of its host (the daemon or the manager role).
 */
import type { ResolvedPoint } from './point';
import type { VolumeContext } from './ports';

/** A restore's intent, as stored until it finishes (store.ts). */
export type { RestoreIntentRecord as RestoreIntent } from './store';

export interface TimeTravelHost {
  /** The protected volume's context; throws UserError when it is not protected. */
  context(volume: string): VolumeContext;
  /** A protected volume or a consistency group by name. */
  target(name: string): { group: string; volume: string | null; ctx: VolumeContext };
  volumeName(group: string, volumeId: number): string;
  /** Is the name taken by a volume? (Views and volumes share one namespace of exports.) */
  volumeExists(name: string): boolean;
  /** Drop the clients of an export; resolves when their requests are done. */
  disconnect(name: string): Promise<number>;
  /** Take a volume's export offline (no new clients) or back online. */
  setOffline(volume: string, reason: string | null): void;
  /** Why a production restore of the volume cannot start now (the manager role: its intercept is away), or null. */
  restoreRefusal?(volume: string): string | null;
  logger: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
}

export interface PointInfo {
  seq: number;
  time: string;
  txn: number;
  write: ResolvedPoint['write'] & { volume: string };
  description: string;
  /** Journaled but not yet committed by the manager (`rewind point` only; txn is the container it will become). */
  pending?: boolean;
  /** The asked point was no point; the nearest valid one on this side was used (--nearest). */
  substituted?: { asked: string; reason: string; nearest: 'before' | 'after'; note: string };
}

export interface ViewInfo {
  name: string;
  kind: 'snapshot' | 'clone' | 'diff';
  volume: string;
  group: string;
  size: number;
  readOnly: boolean;
  parent: string | null;
  point: PointInfo;
  created: string;
  /** Blocks written to the clone (its own layer). */
  writtenBlocks: number;
  steps: number;
  /** Its own access list, if it has one (else the source volume's applies). */
  allow: string[] | null;
}

export interface Progress {
  phase: string;
  done: number;
  total: number;
}

export interface RestoreResult {
  volume: string;
  point: PointInfo;
  blocksChanged: number;
  blocksWritten: number;
  bytesWritten: number;
  /** Seq range of the restore's own writes (null if nothing differed). */
  firstSeq: number | null;
  lastSeq: number | null;
  transactions: number[];
  /** The point to restore to in order to undo this restore. */
  undo: string | null;
  durationMs: number;
  /** Where the time went: catching up with earlier writes, rewriting, sealing and applying the restore. */
  phases: { catchUpMs: number; rewriteMs: number; commitMs: number };
  resumed: boolean;
}
