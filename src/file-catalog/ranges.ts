/**
 * Sorted, disjoint block ranges: the blocks of one filesystem that the block
 * history says changed between two points, asked "does this file's block map
 * touch any of them?" once per changed file.
 */
import type { ExtFilesystem } from '../fs';

export class BlockRanges {
  private constructor(
    private readonly starts: Float64Array,
    private readonly ends: Float64Array,
  ) {}

  /** Merges ranges given in any order. */
  static of(ranges: Array<{ first: number; count: number }>): BlockRanges {
    const sorted = ranges.filter((r) => r.count > 0).sort((a, b) => a.first - b.first);
    const s: number[] = [];
    const e: number[] = [];
    for (const r of sorted) {
      const last = e.length - 1;
      if (last >= 0 && r.first <= e[last]!) e[last] = Math.max(e[last]!, r.first + r.count);
      else {
        s.push(r.first);
        e.push(r.first + r.count);
      }
    }
    return new BlockRanges(Float64Array.from(s), Float64Array.from(e));
  }

  /**
   * A filesystem's blocks covered by changed byte ranges of the volume
   * (history block runs of `historyBlockSize` bytes).
   */
  static ofVolumeRuns(fs: ExtFilesystem, runs: Array<{ start: number; count: number }>, historyBlockSize: number): BlockRanges {
    const out: Array<{ first: number; count: number }> = [];
    for (const r of runs) {
      const b = fs.blocksOfImageRange(r.start * historyBlockSize, r.count * historyBlockSize);
      if (b) out.push(b);
    }
    return BlockRanges.of(out);
  }

  get count(): number {
    let n = 0;
    for (let i = 0; i < this.starts.length; i++) n += this.ends[i]! - this.starts[i]!;
    return n;
  }

  /** Does [first, first+count) meet any range? */
  overlaps(first: number, count: number): boolean {
    let lo = 0;
    let hi = this.starts.length - 1;
    // The last range starting before the end of the query.
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! < first + count) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found >= 0 && this.ends[found]! > first;
  }

  has(block: number): boolean {
    return this.overlaps(block, 1);
  }

  /** Each block, in order (callers cap how many they take). */
  *blocks(): Generator<number> {
    for (let i = 0; i < this.starts.length; i++) for (let b = this.starts[i]!; b < this.ends[i]!; b++) yield b;
  }

  *spans(): Generator<{ first: number; count: number }> {
    for (let i = 0; i < this.starts.length; i++) yield { first: this.starts[i]!, count: this.ends[i]! - this.starts[i]! };
  }
}
