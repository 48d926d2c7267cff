/**
 * A full catalog of one filesystem: walk every path (src/fs walk, bounded
 * memory), describe each inode, and hand each path to the PointWriter,
 * which keeps only what differs from the previous cataloged point. Paths
 * the previous point had and this walk did not meet are then marked gone.
 * Damage in one directory or inode is reported and skipped.
 */
import type { ExtFilesystem, FsError, Run, Stat } from '../fs';
import { escapeName, ROOT_INO } from '../fs';
import { describe, describeSync, stampOf, type Described } from './describe';
import type { Entry } from './entry';
import type { BlockRanges } from './ranges';
import type { Throttle } from './throttle';
import type { PointWriter } from './writer';

export interface PartitionJob {
  fs: ExtFilesystem;
  partition: number;
  writer: PointWriter;
  seq: number;
  /** Blocks changed since the previous cataloged point (null: history unknown). */
  changed: BlockRanges | null;
  throttle: Throttle;
  warn(message: string): void;
  progress(entries: number): void;
}

export async function catalogFull(j: PartitionJob): Promise<{ entries: number }> {
  const { fs, partition: part, writer } = j;
  let entries = 0;
  // Directories are set once their runs are known (the walk's directory callback, after their entries).
  // Keyed by path: a directory reached twice (a loop) has two paths and one inode.
  const pendingDirs = new Map<string, { path: Buffer; stat: Stat }>();

  const warn = (path: Buffer, err: unknown): void => j.warn(`${escapeName(path)}: ${(err as Error).message}`);
  const record = (path: Buffer, d: Described): Promise<void> | undefined => {
    const prev: Entry | undefined = writer.before(part, path);
    d.entry.stamp = stampOf(d, prev, j.changed, j.seq);
    const wait = writer.set(part, path, d.entry, prev ?? null);
    if (path.length === 0) return wait; // the root is not a path of its own
    entries++;
    if (entries % 1024 === 0) j.progress(entries);
    return wait;
  };
  // Synchronous when the inode describes itself (most files), so the walk does not wait on a promise per entry.
  const setPath = (path: Buffer, stat: Stat, dirRuns?: Run[]): Promise<void> | undefined => {
    let d: Described | undefined;
    try {
      d = describeSync(fs, stat, dirRuns);
    } catch (err) {
      warn(path, err);
      return undefined;
    }
    if (d) return record(path, d);
    return describe(fs, stat, dirRuns).then(
      (x) => record(path, x),
      (err: unknown) => warn(path, err),
    );
  };

  // The root directory is an entry too (the empty path): its blocks map changes in "/" for incremental builds.
  const rootStat = await fs.stat(ROOT_INO);
  pendingDirs.set('', { path: Buffer.alloc(0), stat: rootStat });
  await fs.walk({
    entry: (e) => {
      const stat = e.stat!;
      if (stat.type === 'dir') {
        pendingDirs.set(e.path.toString('latin1'), { path: e.path, stat });
        return;
      }
      const p = j.throttle.pause();
      return p ? p.then(() => setPath(e.path, stat)) : setPath(e.path, stat);
    },
    directory: async (d) => {
      const key = d.path.toString('latin1');
      const pending = pendingDirs.get(key);
      if (!pending) return;
      pendingDirs.delete(key);
      await setPath(pending.path, pending.stat, d.runs);
    },
    error: (err: FsError, at) => j.warn(`${escapeName(at.path)}: ${err.message}`),
  });
  // Directories the walk did not enter (a loop, damage): listed with what their inode says.
  for (const { path, stat } of pendingDirs.values()) await setPath(path, stat);
  await writer.removeUnseen(part, Buffer.alloc(0));
  j.progress(entries);
  return { entries };
}
