/**
 * What the pool's operations (archive, gc, verify, recovery) share. One
 * process holds a pool open (lock.ts); inside it, archives, reads, one gc
 * or verify at a time, and forgets run concurrently on this state.
 */
import type { ArchiveBackend } from './backend';
import type { ChunkStore } from './chunk-store';
import type { PoolConfig } from './config';
import type { PoolKeys } from './crypto';
import { ArchiveError } from './errors';
import { parseHandle, type Handle } from './handle';
import type { IndexDb } from './index-db';
import type { PointManifest, VolumeManifest } from './manifest';
import { shapeOf, type TreeShape } from './tree';

/** A running archive, as gc sees it. */
export interface WriterEntry {
  /** Epoch at which it started: chunks it stores or finds are stamped with it. */
  stamp: number;
  /** Roots of the predecessor it reuses subtrees from (gc marks them). */
  pins: TreeRoot[];
}

export interface TreeRoot {
  shape: TreeShape;
  root: Handle;
}

export interface PoolCore {
  readonly stateDir: string;
  readonly stagingDir: string;
  readonly config: PoolConfig;
  readonly keys: PoolKeys | null;
  readonly backend: ArchiveBackend;
  readonly index: IndexDb;
  readonly store: ChunkStore;
  /** Every committed point by name (the backend's manifests, loaded at open). */
  readonly manifests: Map<string, PointManifest>;
  readonly writers: Map<number, WriterEntry>;
  /** Trees of open ArchivedVolumes: gc keeps them even if their point is forgotten meanwhile. */
  readonly readers: Map<number, TreeRoot>;
  /** Rebuilds the bloom filter from the index (after gc or a rebuild) and saves it. */
  refreshBloom(): Promise<void>;
}

export function treeOf(p: PointManifest, v: VolumeManifest): TreeRoot {
  return { shape: shapeOf(v.size, p.leafSize, p.fanout), root: parseHandle(v.root) };
}

export function pointVolume(core: PoolCore, point: string, volume?: string): { p: PointManifest; v: VolumeManifest } {
  const p = core.manifests.get(point);
  if (!p) throw new ArchiveError('ENOENT', `no archived point "${point}"`);
  if (volume === undefined) {
    if (p.volumes.length !== 1)
      throw new ArchiveError(
        'EINVAL',
        `archived point "${point}" has ${p.volumes.length} volumes (${p.volumes.map((v) => v.volume).join(', ')}): name one`,
      );
    return { p, v: p.volumes[0]! };
  }
  const v = p.volumes.find((x) => x.volume === volume);
  if (!v) throw new ArchiveError('ENOENT', `archived point "${point}" has no volume "${volume}"`);
  return { p, v };
}
