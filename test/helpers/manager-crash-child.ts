/**
 * Child process of the manager crash campaign (test/manager.test.ts).
 *   node manager-crash-child.js SPEC run [UPTO]  open (recovery), submit the containers (up to UPTO), wait for all commits
 *   node manager-crash-child.js SPEC status   open (recovery), print status as JSON
 *   node manager-crash-child.js SPEC catalog  open, print the transactions and verifyHistory() as JSON
 * SPEC is a JSON file: { dir, groupId, volumes, refs }. REWIND_MANAGER_CRASH_AT
 * makes the manager SIGKILL itself at a step; REWIND_MANAGER_COPY=1 makes it
 * copy history files instead of hard-linking them.
 */
import * as fs from 'node:fs';
import { BackupManager } from '../../src/manager/backup-manager';
import type { ManagedVolume, SealedContainerRef } from '../../src/manager/types';

interface Spec {
  dir: string;
  groupId: number;
  volumes: ManagedVolume[];
  refs: SealedContainerRef[];
}

async function main(): Promise<void> {
  const spec = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as Spec;
  const mode = process.argv[3];
  const m = await BackupManager.open(spec.dir, {
    groupId: spec.groupId,
    volumes: spec.volumes,
    batchBytes: 256 * 1024,
    linkHistory: process.env.REWIND_MANAGER_COPY !== '1',
  });
  try {
    if (mode === 'run') {
      // Like the intercept after a restart: resend everything not known committed, in order.
      const upTo = process.argv[4] ? Number(process.argv[4]) : Infinity;
      await Promise.all(spec.refs.filter((r) => r.containerId <= upTo).map((r) => m.submit(r)));
    } else if (mode === 'status') {
      const s = m.status();
      process.stdout.write(`${JSON.stringify({ lastContainer: s.lastContainer, transactions: s.transactions, blocked: s.blocked })}\n`);
    } else if (mode === 'catalog') {
      const txns = m.transactions();
      const history = await m.verifyHistory();
      process.stdout.write(`${JSON.stringify({ txns, history })}\n`);
    } else {
      throw new Error(`unknown mode ${mode}`);
    }
  } finally {
    await m.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
