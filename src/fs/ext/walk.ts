/**
 * A depth-first walk of a directory tree with an explicit stack: one frame
 * per level, each holding one directory block's entries and a suspended
 * reader of the rest, so memory is bounded by depth x block, not by the
 * size of the tree. Directories are entered once (a second path to one is a
 * loop, reported and not followed); all directory bytes read in one walk
 * are capped by the filesystem's size.
 */
import { asFsError, FsError, limit } from '../errors';
import { LIMITS } from '../limits';
import { escapeName } from '../names';
import type { Run } from './blockmap';
import type { DirEntry } from './dir';
import type { ExtSource, Target } from './source';
import type { FileType, Inode, Stat } from './inode';

export interface WalkEntry {
  /** Path from the walk's root as bytes, "/"-separated, starting with "/" ("/etc/fstab"). */
  path: Buffer;
  name: Buffer;
  ino: number;
  /** Inode of the directory holding the entry. */
  parent: number;
  /** 1 for the root's entries. */
  depth: number;
  /** The inode's type (the entry's own type byte when stat is off). */
  type: FileType;
  /** Absent when the walk runs with stat: false. */
  stat?: Stat;
}

export interface WalkDirectory {
  ino: number;
  path: Buffer;
  /** The directory's data blocks (up to its size). */
  runs: Run[];
  /** Its extent-tree or indirect blocks. */
  metaBlocks: number[];
}

export interface WalkVisitor {
  /** Each entry, parents before children. Return false to not descend into a directory. */
  entry(e: WalkEntry): void | boolean | Promise<void | boolean>;
  /** After a directory's entries are all read: the blocks it occupies (for incremental catalogs). */
  directory?(d: WalkDirectory): void | Promise<void>;
  /**
   * With this callback, errors in one directory or inode are reported here
   * and the walk goes on without it; without it, the first error ends the walk.
   */
  error?(err: FsError, at: { path: Buffer; ino: number }): void | Promise<void>;
}

export interface WalkOptions {
  /** Where to start (default "/"): a path or a directory inode. */
  root?: Target;
  /** Path shown for the root when it is given as an inode (default ""). */
  rootPath?: Buffer;
  /** Read each entry's inode (default true). Off: names, inode numbers and entry types only. */
  stat?: boolean;
  maxDepth?: number;
}

export interface WalkSummary {
  entries: number;
  directories: number;
  errors: number;
  directoryBytes: number;
}

interface Frame {
  ino: number;
  path: Buffer;
  depth: number;
  batches: AsyncGenerator<DirEntry[]>;
  pending: DirEntry[];
  next: number;
  runs: Run[];
  meta: number[];
}

const SLASH = Buffer.from('/');

function childPath(parent: Buffer, name: Buffer): Buffer {
  const p = Buffer.allocUnsafe(parent.length + 1 + name.length);
  parent.copy(p, 0);
  p[parent.length] = 0x2f;
  name.copy(p, parent.length + 1);
  return p;
}

export async function walk(fs: ExtSource, visitor: WalkVisitor, opts: WalkOptions): Promise<WalkSummary> {
  const wantStat = opts.stat !== false;
  const maxDepth = opts.maxDepth ?? LIMITS.maxWalkDepth;
  const budget = fs.superblock.blocksCount * fs.blockSize;
  const summary: WalkSummary = { entries: 0, directories: 0, errors: 0, directoryBytes: 0 };
  const rootTarget = opts.root ?? '/';
  const rootIno = await fs.resolve(rootTarget, { follow: true });
  let rootPath = typeof rootTarget === 'number' ? (opts.rootPath ?? Buffer.alloc(0)) : Buffer.from(rootTarget);
  while (rootPath.length > 0 && rootPath[rootPath.length - 1] === 0x2f) rootPath = rootPath.subarray(0, rootPath.length - 1);
  if (rootPath.length > 0 && rootPath[0] !== 0x2f) rootPath = Buffer.concat([SLASH, rootPath]);

  let fatal: FsError | null = null; // the walk's own budget: ends the walk even when errors are reported
  const report = async (err: unknown, path: Buffer, ino: number): Promise<void> => {
    const e = asFsError(err, fs.where);
    if (!visitor.error || fatal) throw fatal ?? e;
    summary.errors++;
    await visitor.error(e, { path, ino });
  };

  const visited = new Set<number>([rootIno]);
  const stack: Frame[] = [];
  const enter = (ino: number, inode: Inode, path: Buffer, depth: number): void => {
    const f: Frame = {
      ino,
      path,
      depth,
      pending: [],
      next: 0,
      runs: [],
      meta: [],
      batches: undefined as unknown as AsyncGenerator<DirEntry[]>,
    };
    const onBlocks = (run: Run): void => {
      f.runs.push(run);
      summary.directoryBytes += run.length * fs.blockSize;
      if (summary.directoryBytes > budget) {
        fatal = limit('walk', `directories hold more than the filesystem's ${budget} bytes`).within(fs.where);
        throw fatal;
      }
    };
    f.batches = fs.dirBatches(ino, inode, onBlocks, (b) => f.meta.push(b));
    stack.push(f);
    summary.directories++;
  };
  enter(rootIno, await fs.inode(rootIno), rootPath, 0);

  while (stack.length > 0) {
    const f = stack[stack.length - 1]!;
    if (f.next >= f.pending.length) {
      let r: IteratorResult<DirEntry[]>;
      try {
        r = await f.batches.next();
      } catch (err) {
        stack.pop();
        await report(err, f.path, f.ino);
        continue;
      }
      if (r.done) {
        stack.pop();
        if (visitor.directory) await visitor.directory({ ino: f.ino, path: f.path, runs: f.runs, metaBlocks: f.meta });
        continue;
      }
      f.pending = r.value;
      f.next = 0;
      if (wantStat && f.pending.length > 1) {
        try {
          await fs.prefetchInodes(f.pending.map((e) => e.ino));
        } catch {
          // Reported per entry below, where the inode is read again.
        }
      }
      continue;
    }
    const e = f.pending[f.next++]!;
    const path = childPath(f.path, e.name);
    let stat: Stat | undefined;
    if (wantStat || e.dtype === 'unknown' || e.dtype === 'dir') {
      try {
        stat = fs.peekStat(e.ino) ?? (await fs.statOf(e.ino));
      } catch (err) {
        await report(err, path, e.ino);
        continue;
      }
    }
    const type = stat ? stat.type : e.dtype;
    const entry: WalkEntry = { path, name: e.name, ino: e.ino, parent: f.ino, depth: f.depth + 1, type };
    if (wantStat && stat) entry.stat = stat;
    summary.entries++;
    let res = visitor.entry(entry);
    if (res instanceof Promise) res = await res;
    if (type !== 'dir' || res === false || !stat) continue;
    if (visited.has(e.ino)) {
      await report(
        new FsError('CORRUPT', fs.where, `directory inode ${e.ino}`, `reached again at ${escapeName(path)} (directory loop or hard link)`),
        path,
        e.ino,
      );
      continue;
    }
    if (f.depth + 1 >= maxDepth) {
      await report(new FsError('CORRUPT', fs.where, `directory inode ${e.ino}`, `nesting deeper than ${maxDepth}`), path, e.ino);
      continue;
    }
    visited.add(e.ino);
    let inode: Inode;
    try {
      inode = await fs.inode(e.ino); // the directory's own copy: its map is read while other chunks come and go
    } catch (err) {
      await report(err, path, e.ino);
      continue;
    }
    enter(e.ino, inode, path, f.depth + 1);
  }
  return summary;
}
