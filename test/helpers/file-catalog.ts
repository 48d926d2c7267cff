/**
 * The file catalog's builder over plain image files, with no daemon: each
 * "point" is an image file at a seq, and the blocks changed between two
 * points are found by comparing the files 4 KiB block by block (what the
 * block history would say). For unit tests of full and incremental builds.
 */
import * as fs from 'node:fs';
import { openImageFile, type FsImage } from '../../src/fs';
import { buildPoint, diffPoint, type VolumeRuns } from '../../src/file-catalog/build';
import { CatalogStore } from '../../src/file-catalog/store';
import { Throttle } from '../../src/file-catalog/throttle';
import type { PointRecord } from '../../src/file-catalog/types';
import type { PathChange } from '../../src/file-catalog/writer';

const BS = 4096;

/** 4 KiB blocks that differ between two files of one size. */
export function changedRuns(a: string, b: string): VolumeRuns {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const size = fs.fstatSync(fb).size;
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    const out: VolumeRuns = [];
    for (let off = 0; off < size; off += ba.length) {
      const na = fs.readSync(fa, ba, 0, ba.length, off);
      const nb = fs.readSync(fb, bb, 0, bb.length, off);
      for (let i = 0; i < Math.max(na, nb); i += BS) {
        if (ba.subarray(i, i + BS).equals(bb.subarray(i, i + BS))) continue;
        const blk = (off + i) / BS;
        const last = out[out.length - 1];
        if (last && last.start + last.count === blk) last.count++;
        else out.push({ start: blk, count: 1 });
      }
    }
    return out;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

export class FilePoints {
  readonly files = new Map<number, string>();
  private readonly open: Array<{ close(): Promise<void> }> = [];

  constructor(
    readonly store: CatalogStore,
    readonly vid: number,
  ) {}

  private async image(seq: number): Promise<FsImage> {
    const img = await openImageFile(this.files.get(seq)!);
    this.open.push(img);
    return img;
  }

  private input(seq: number, file: string) {
    this.files.set(seq, file);
    return {
      store: this.store,
      point: { volume: 'vol', vid: this.vid, group: 'vol', volumeId: 0, seq, time: seq * 1000, txn: seq, markers: [] },
      historyBlockSize: BS,
      other: (o: number) => ({
        seq: o,
        changed: async () => changedRuns(this.files.get(o)!, file),
        image: () => this.image(o),
      }),
      throttle: new Throttle(1),
    };
  }

  async build(seq: number, file: string): Promise<PointRecord> {
    const input = this.input(seq, file);
    return buildPoint({ ...input, image: await this.image(seq) });
  }

  async diff(seq: number, file: string, base: number): Promise<PathChange[]> {
    const input = this.input(seq, file);
    return (await diffPoint({ ...input, image: await this.image(seq) }, base)).changes;
  }

  async close(): Promise<void> {
    for (const o of this.open) await o.close();
    this.open.length = 0;
  }
}

export function openStore(dir: string): CatalogStore {
  return CatalogStore.open(dir);
}
