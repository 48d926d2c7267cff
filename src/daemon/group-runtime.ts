/** One consistency group as the daemon runs it (protection.ts), shared with crash recovery (recovery.ts). */
import type { GroupRecord } from '../catalog/catalog';
import type { GroupJournal } from '../journal/group-journal';
import type { ProtectedVolume } from '../journal/protected-volume';
import type { RemoteLink } from '../link/client';
import type { RestoreHolds } from '../link/remote-restore';
import type { ResyncController } from '../link/resync';
import type { BackupManager } from '../manager/backup-manager';

export interface GroupRuntime {
  record: GroupRecord;
  /** The local backup manager; null in the intercept role (it is remote). */
  manager: BackupManager | null;
  journal: GroupJournal;
  volumes: Map<string, ProtectedVolume>;
  link?: RemoteLink;
  /** Intercept role: volumes a restore run by the manager holds offline. */
  holds?: RestoreHolds;
  resync?: ResyncController;
  /**
   * Crash recovery: the manager has applied every container that survived
   * (true), or could not be reached in time (false). Asked once per start.
   */
  caughtUp?: Promise<boolean>;
  /** The last stop was clean, journaled through this seq (clean-stop.ts): no crash recovery. */
  cleanStopSeq: number | null;
  /** Volumes an unclean stop left with dirty regions: recover() re-captures what differs. */
  pendingRecovery: ProtectedVolume[];
  resyncStarted?: boolean;
}
