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

/**
 * Describes an inode. `dirRuns`: a directory's runs when the caller has
 * them already (a walk's directory callback).
 */
export async function describe(fs: ExtFilesystem, stat: Stat, dirRuns?: Run[]): Promise<Described> {
  const e = fromStat(stat);
  const d = new Digest().num(stat.size);
  let runs: Run[] = [];
  let meta: number[] = [];
  switch (stat.type) {
    case 'symlink': {
      e.link = await fs.readlink(stat.ino);
      d.bytes(e.link);
      break;
    }
    case 'file':
    case 'dir': {
      if (stat.type === 'dir' && dirRuns) runs = dirRuns;
      else {
        const x = await fs.fileExtents(stat.ino);
        if (x.inline) {
          const parts: Buffer[] = [];
          if (stat.type === 'file') for await (const c of fs.readFile(stat.ino)) parts.push(Buffer.from(c));
          d.num(1).bytes(Buffer.concat(parts));
        }
        runs = x.runs;
        meta = x.metaBlocks;
      }
      for (const r of runs)
        d.num(r.logical)
          .num(r.physical)
          .num(r.length)
          .num(r.unwritten ? 1 : 0);
      if (stat.type === 'dir') e.runs = flatRuns(runs);
      break;
    }
    case 'chr':
    case 'blk':
      d.num(stat.rdev?.major ?? 0).num(stat.rdev?.minor ?? 0);
      break;
    default:
      break;
  }
  e.digest = d.hex();
  return {
    entry: e,
    touched: (changed) => runs.some((r) => !r.unwritten && changed.overlaps(r.physical, r.length)) || meta.some((b) => changed.has(b)),
  };
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
