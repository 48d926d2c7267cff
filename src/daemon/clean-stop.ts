/**
 * The record a clean stop leaves in a group's directory (clean-stop.json):
 * every write the volumes took was journaled, the journal sealed and the
 * images, journal and state maps synced, through `lastSeq`. The next start
 * then needs no crash recovery: regions still marked dirty are covered by
 * containers the manager has yet to apply, and clear when it commits
 * through lastSeq.
 *
 * The record is taken (read and removed, durably) when the group opens,
 * before any write can come, so a crash after that start is never taken
 * for a clean stop.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../util/atomic-file';

const FILE = 'clean-stop.json';

export interface CleanStop {
  version: 1;
  lastSeq: number;
  time: string;
}

export async function recordCleanStop(groupDir: string, lastSeq: number): Promise<void> {
  const rec: CleanStop = { version: 1, lastSeq, time: new Date().toISOString() };
  await writeFileAtomic(path.join(groupDir, FILE), JSON.stringify(rec));
}

/** The record of the last stop if it was clean (and removes it); null after a crash. */
export async function takeCleanStop(groupDir: string): Promise<CleanStop | null> {
  const file = path.join(groupDir, FILE);
  let rec: CleanStop | null = null;
  try {
    const v = JSON.parse(await fs.promises.readFile(file, 'utf8')) as Partial<CleanStop>;
    if (v.version === 1 && Number.isSafeInteger(v.lastSeq) && (v.lastSeq ?? -1) >= 0) rec = v as CleanStop;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    // Unreadable: treated as a crash (recovery is always safe).
  }
  await fs.promises.rm(file, { force: true });
  const d = await fs.promises.open(groupDir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
  return rec;
}
