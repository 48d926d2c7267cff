/**
 * The journal directory after a crash (GroupJournal.open): a torn active
 * AILFC is cut at its last valid record and sealed (or, if its footer was
 * already written, just renamed); sealed containers not committed yet are
 * to be submitted again; committed ones and half-created files are deleted.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ContainerWriter, containerFileName, listContainers, repairActive, scanContainer } from '../lfc';
import { fsyncDir } from '../util/fsync-dir';
import type { Logger } from '../util/logger';
import type { SealedContainerRef } from './link';

export interface RecoveredJournal {
  /** The highest container holding records (or the last committed one). */
  maxContainer: number;
  /** The highest seq journaled (or the last committed one). */
  maxSeq: number;
  /** Sealed containers to hand to the manager again, in any order. */
  toSubmit: SealedContainerRef[];
}

export async function recoverContainers(opts: {
  dir: string;
  groupId: number;
  committedContainer: number;
  committedSeq: number;
  logger: Logger;
}): Promise<RecoveredJournal> {
  let maxContainer = opts.committedContainer;
  let maxSeq = opts.committedSeq;
  const toSubmit: SealedContainerRef[] = [];
  // Numbering resumes right after the highest container holding records:
  // the manager applies containers strictly in order, so ids must have no
  // gaps. Empty actives (the spare, or one that never got a record) and
  // half-created files are deleted, and their ids reused.
  for (const c of await listContainers(opts.dir)) {
    if (c.kind === 'partial') {
      await fs.promises.rm(c.path, { force: true });
      continue;
    }
    if (c.kind === 'active') {
      const scan = await repairActive(c.path);
      if (scan.tornAt !== undefined) {
        opts.logger.warn({ container: c.n, tornAt: scan.tornAt, problem: scan.problem }, 'truncated torn AILFC tail');
      }
      if (scan.recordCount === 0) {
        await fs.promises.rm(c.path, { force: true });
        continue;
      }
      maxContainer = Math.max(maxContainer, c.n);
      maxSeq = Math.max(maxSeq, scan.lastSeq);
      if (scan.sealed && scan.footer) {
        // The crash came after the footer but before the rename: finish the seal.
        const sealedPath = path.join(opts.dir, containerFileName('ailfc', c.n));
        await fs.promises.rename(c.path, sealedPath);
        await fsyncDir(opts.dir);
        opts.logger.info({ container: c.n }, 'finished sealing an AILFC interrupted by a crash');
        toSubmit.push({ groupId: opts.groupId, containerId: c.n, path: sealedPath, footer: scan.footer });
        continue;
      }
      const w = await ContainerWriter.reopen(c.path, scan.validEnd, scan);
      const sealed = await w.seal();
      opts.logger.info({ container: c.n, records: scan.recordCount }, 'sealed AILFC left active by a crash');
      toSubmit.push({ groupId: opts.groupId, containerId: c.n, path: sealed.path, footer: sealed.footer });
    } else if (c.kind === 'ailfc') {
      maxContainer = Math.max(maxContainer, c.n);
      if (c.n <= opts.committedContainer) {
        await fs.promises.rm(c.path, { force: true }); // committed; the manager has its copy
        continue;
      }
      const scan = await scanContainer(c.path);
      if (!scan.sealed || !scan.footer) throw new Error(`${c.path}: sealed container without a valid footer`);
      maxSeq = Math.max(maxSeq, scan.lastSeq);
      toSubmit.push({ groupId: opts.groupId, containerId: c.n, path: c.path, footer: scan.footer });
    }
  }
  return { maxContainer, maxSeq, toSubmit };
}
