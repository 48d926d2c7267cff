/**
 * Shared pieces of the archive tests: temporary pools on tmpfs, volume
 * images in memory as sources, and deterministic writes.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ArchivePool, type CreateOptions, type Extent, type OpenOptions, type VolumeSource } from '../../src/archive';
import { pattern, rng } from './random';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A temporary directory on tmpfs when there is one (fsync is free there). */
export function tempDir(t: { teardown(fn: () => void): void }, name = 'rw-arch-'): string {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, name));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Small leaves, a narrow tree and small packs: deep trees and many packs on little data. */
export const SMALL: CreateOptions = { leafSize: 16 * KiB, fanout: 4, packTarget: 256 * KiB, level: 1 };

export async function openPool(dir: string, opts: OpenOptions = {}): Promise<ArchivePool> {
  return ArchivePool.open(dir, { create: SMALL, ...opts });
}

/** A source reading a copy of `image` (so later writes to it do not leak in), counting reads. */
export function bufferSource(volume: string, image: Buffer, changed?: Extent[]): VolumeSource & { reads: number; bytes: number } {
  const copy = Buffer.from(image);
  const src = {
    volume,
    size: copy.length,
    reads: 0,
    bytes: 0,
    async read(offset: number, length: number): Promise<Buffer> {
      src.reads++;
      src.bytes += length;
      return Buffer.from(copy.subarray(offset, offset + length));
    },
    ...(changed ? { changed } : {}),
  };
  return src;
}

/** Image content that compresses somewhat, like real data: runs of text-like bytes and noise. */
export function makeImage(size: number, seed: number, zeroFraction = 0.2): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(size);
  const piece = 16 * KiB;
  for (let off = 0; off < size; off += piece) {
    const x = r();
    if (x < zeroFraction) continue;
    const n = Math.min(piece, size - off);
    if (x < 0.6) pattern(n, Math.floor(r() * 1e9)).copy(b, off);
    else b.write(`block ${off} ${Math.floor(r() * 1e6)} `.repeat(Math.ceil(n / 20)).slice(0, n), off, 'latin1');
  }
  return b;
}

/** Writes `count` random pieces into image; returns the extents written. */
export function scribble(image: Buffer, r: () => number, count: number, maxLen = 8 * KiB): Extent[] {
  const out: Extent[] = [];
  for (let i = 0; i < count; i++) {
    const length = 1 + Math.floor(r() * maxLen);
    const offset = Math.floor(r() * (image.length - length));
    if (r() < 0.2) image.fill(0, offset, offset + length);
    else pattern(length, Math.floor(r() * 1e9)).copy(image, offset);
    out.push({ offset, length });
  }
  return out;
}

/** Reads a whole archived volume. */
export async function readAll(pool: ArchivePool, point: string, volume?: string): Promise<Buffer> {
  const v = pool.openVolume(point, volume);
  try {
    return await v.read(0, v.size);
  } finally {
    v.close();
  }
}

/** Compares two buffers cheaply (ava's deepEqual is slow on MiBs); names the first difference. */
export function sameBytes(t: { true(v: boolean, msg?: string): void }, got: Buffer, want: Buffer, what = 'data'): void {
  if (got.equals(want)) return t.true(true);
  let i = 0;
  while (i < Math.min(got.length, want.length) && got[i] === want[i]) i++;
  t.true(false, `${what}: ${got.length} bytes vs ${want.length} expected; first difference at byte ${i}`);
}
