/** Failures the backup manager waits out instead of blaming the container. */

/** ENOSPC or EDQUOT, as an errno code or in the message (LMDB reports it as text). */
export function isOutOfSpace(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT' || /\bENOSPC\b|\bEDQUOT\b|No space left on device|Disk quota exceeded/i.test(err.message);
}

/**
 * LMDB refused to commit a transaction of the manager's index (a crash
 * campaign met lmdb-js's free-space list failing a commit). Nothing of it
 * was written, and the redo of the container is the crash-recovery path,
 * so the manager tries again instead of blocking the group.
 */
export class IndexCommitError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'IndexCommitError';
  }
}
