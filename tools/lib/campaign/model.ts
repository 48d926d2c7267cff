/**
 * The crash campaign's model of a volume, per 4 KiB block: which contents a
 * block may hold after a kill -9, and what it holds at a quiescent cut.
 *
 * Each block belongs to one load connection, which has at most one request
 * in flight, so the values written to a block form one line. `vals[b]`
 * starts at the newest value that must survive (written before the last
 * acknowledged FLUSH, or acknowledged with FUA) and lists every value
 * written after it, the one in flight included: after a crash the block
 * must hold one of them. Blocks are compared by hash (md5: speed, not
 * security), so a cut costs one string per block.
 */
import * as crypto from 'node:crypto';

export const BS = 4096;
const ZERO = Buffer.alloc(BS);
export const ZERO_HASH = blockHash(ZERO);

export function blockHash(b: Buffer): string {
  return crypto.createHash('md5').update(b).digest('base64');
}

/** Per-block hashes of `buf` (a whole number of blocks). */
export function blockHashes(buf: Buffer): string[] {
  const out: string[] = [];
  for (let o = 0; o < buf.length; o += BS) out.push(blockHash(buf.subarray(o, o + BS)));
  return out;
}

export class VolumeModel {
  /** Allowed values per block, oldest first; the last acknowledged one is `cur`. */
  private readonly vals: string[][];
  private readonly cur: string[];

  constructor(readonly blocks: number) {
    this.vals = Array.from({ length: blocks }, () => [ZERO_HASH]);
    this.cur = new Array<string>(blocks).fill(ZERO_HASH);
  }

  /** A request is sent: its values become possible. */
  issue(first: number, hashes: string[]): void {
    hashes.forEach((h, i) => this.vals[first + i]!.push(h));
  }

  /** The request was acknowledged; with FUA its values are durable. */
  ack(first: number, hashes: string[], fua: boolean): void {
    hashes.forEach((h, i) => {
      this.cur[first + i] = h;
      if (fua) this.vals[first + i] = [h];
    });
  }

  /** A FLUSH was acknowledged: every acknowledged value of these blocks is durable. */
  flushed(first: number, count: number): void {
    for (let b = first; b < first + count; b++) this.vals[b] = [this.cur[b]!];
  }

  allowed(b: number): readonly string[] {
    return this.vals[b]!;
  }

  /** After a crash: the image is the truth from here on (after it passed the check). */
  adopt(hashes: string[]): void {
    hashes.forEach((h, b) => {
      this.vals[b] = [h];
      this.cur[b] = h;
    });
  }

  /** The image at a quiescent moment (nothing in flight): what a point there must read. */
  current(): string[] {
    return [...this.cur];
  }

  /** Blocks whose content is not one of the allowed values: [block, found, allowed count]. */
  mismatches(found: string[]): Array<{ block: number; found: string; allowed: readonly string[] }> {
    const out = [];
    for (let b = 0; b < this.blocks; b++) {
      if (!this.vals[b]!.includes(found[b]!)) out.push({ block: b, found: found[b]!, allowed: this.vals[b]! });
    }
    return out;
  }
}

/** Blocks where two hash lists differ. */
export function differing(a: readonly string[], b: readonly string[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) out.push(i);
  return out;
}
