/**
 * The messages between the intercept and the backup manager. The manager
 * is written as if it were remote: it receives sealed containers and
 * answers with commits. Today the link is a local call
 * (src/daemon/protection.ts); a TCP transport carries the same messages.
 */
import type { Footer } from '../lfc';

/** A sealed AILFC handed to the manager. */
export interface SealedContainerRef {
  groupId: number;
  containerId: number;
  path: string;
  footer: Footer;
  /**
   * Set on the containers of a super transaction (the resync after degraded
   * mode, 001 [1168]-[1169]): `id` is its first container, `fromSeq` the
   * first seq it stands for (`fromTime`: when that write came, the start of
   * the degraded stretch), `last` marks its last container.
   */
  superTransaction?: { id: number; fromSeq: number; last: boolean; fromTime?: number };
}

/** What the manager answers when T_n is committed (also for a resend of a committed n). */
export interface CommitInfo {
  groupId: number;
  containerId: number;
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  /** Blocks touched (= BeforeBlock records in BILFC_n). */
  blocks: number;
  /** Bytes written to the replicated images. */
  bytesApplied: number;
}

/** How the intercept reaches the backup manager. */
export interface ManagerLink {
  submit(ref: SealedContainerRef): Promise<CommitInfo>;
}
