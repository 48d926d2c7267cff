/**
 * Child process of the retention crash test (test/retention.test.ts):
 *   node retention-crash-child.js SPEC   open the manager, fade with the stored policy at spec.now
 * SPEC is a JSON file { dir, groupId, volumes, now }. REWIND_FADE_CRASH_AT
 * makes the fade SIGKILL the process at a step (merge-mid, merged,
 * committed, freed-mid).
 */
import * as fs from 'node:fs';
import { BackupManager } from '../../src/manager/backup-manager';
import type { ManagedVolume } from '../../src/manager/types';

interface Spec {
  dir: string;
  groupId: number;
  volumes: ManagedVolume[];
  now: number;
}

async function main(): Promise<void> {
  const spec = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as Spec;
  const m = await BackupManager.open(spec.dir, { groupId: spec.groupId, volumes: spec.volumes });
  try {
    const r = await m.fade({ now: spec.now });
    process.stdout.write(`${JSON.stringify({ done: r.steps.filter((s) => s.done).length })}\n`);
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
