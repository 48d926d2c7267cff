/**
 * A catalog entry from a filesystem inode: stat, content digest, symlink
 * target, a directory's block runs, and the content stamp judged against
 * the entry the previous cataloged point had.
 */
import type { ExtFilesystem, Run, Stat } from '../fs';
import { Digest, fromStat, sameIdentity, type Entry } from './entry';
import type { BlockRanges } from './ranges';

/** Flat (logical, physical, length) triples of written runs. */
export function flatRuns(runs: Run[]): number[] {
  const out: number[] = [];
  for (const r of runs) if (!r.unwritten) out.push(r.logical, r.physical, r.length);
  return out;
}

export interface Described {
  entry: Entry;
  /** Blocks holding the content or its map (data runs and tree blocks), for the stamp. */
  touched: (changed: BlockRanges) => boolean;
}

function finish(stat: Stat, e: Entry, d: Digest, runs: Run[], meta: number[]): Described {
  for (const r of runs)
    d.num(r.logical)
      .num(r.physical)
      .num(r.length)
      .num(r.unwritten ? 1 : 0);
  if (stat.type === 'dir') e.runs = flatRuns(runs);
  e.digest = d.hex();
  return {
    entry: e,
    touched: (changed) => runs.some((r) => !r.unwritten && changed.overlaps(r.physical, r.length)) || meta.some((b) => changed.has(b)),
  };
}

/**
 * Describes an inode without I/O when its map and content identity live in
 * the inode (most files: a walk's hot path), else undefined. `dirRuns`: a
 * directory's runs when the caller has them (a walk's directory callback).
 */
export function describeSync(fs: ExtFilesystem, stat: Stat, dirRuns?: Run[]): Described | undefined {
  const e = fromStat(stat);
  const d = new Digest().num(stat.size);
  switch (stat.type) {
    case 'symlink': {
      const link = fs.peekLink(stat.ino);
      if (!link) return undefined;
      e.link = link;
      d.bytes(link);
      return finish(stat, e, d, [], []);
    }
    case 'dir':
    case 'file': {
      if (stat.type === 'dir' && dirRuns) return finish(stat, e, d, dirRuns, []);
      const runs = fs.peekRuns(stat);
      // [] is also what data kept in the inode gives: that content is digested by describe.
      if (!runs || (runs.length === 0 && stat.size > 0)) return undefined;
      return finish(stat, e, d, runs, []);
    }
    case 'chr':
    case 'blk':
      d.num(stat.rdev?.major ?? 0).num(stat.rdev?.minor ?? 0);
      return finish(stat, e, d, [], []);
    default:
      return finish(stat, e, d, [], []);
  }
}

/**
 * Describes an inode. `dirRuns`: a directory's runs when the caller has
 * them already (a walk's directory callback).
 */
export async function describe(fs: ExtFilesystem, stat: Stat, dirRuns?: Run[]): Promise<Described> {
  const fast = describeSync(fs, stat, dirRuns);
  if (fast) return fast;
  const e = fromStat(stat);
  const d = new Digest().num(stat.size);
  if (stat.type === 'symlink') {
    e.link = await fs.readlink(stat.ino);
    d.bytes(e.link);
    return finish(stat, e, d, [], []);
  }
  const x = await fs.fileExtents(stat.ino);
  if (x.inline) {
    const parts: Buffer[] = [];
    if (stat.type === 'file') for await (const c of fs.readFile(stat.ino)) parts.push(Buffer.from(c));
    d.num(1).bytes(Buffer.concat(parts));
  }
  return finish(stat, e, d, x.runs, x.metaBlocks);
}

/**
 * The content stamp: the new point's seq if the content is new (no entry
 * before, another inode or block map, or a write on one of its blocks
 * since), else the stamp it had. Without the block history between the
 * two points, an unchanged identity and mtime keep the stamp.
 */
export function stampOf(d: Described, prev: Entry | undefined, changed: BlockRanges | null, seq: number): number {
  const e = d.entry;
  if (!prev || !sameIdentity(prev, e)) return seq;
  if (changed === null) return prev.mtime[0] === e.mtime[0] && prev.mtime[1] === e.mtime[1] ? prev.stamp : seq;
  return d.touched(changed) ? seq : prev.stamp;
}
