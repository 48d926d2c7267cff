/**
 * Archiving a point: one or more volumes (a consistency group's, at one
 * seq) into trees, then one manifest. The point exists exactly when its
 * manifest is on the backend, and that is written last, after every chunk
 * it references is in a published, indexed pack: a crash or an error at
 * any moment before leaves no point, only unreferenced chunks that the
 * next gc reclaims.
 */
import * as path from 'node:path';
import { buildTree, emptyStats, type BuildContext, type VolumeSource } from './builder';
import { treeOf, type PoolCore, type TreeRoot } from './core';
import { crashPoint } from './crash-hook';
import { ArchiveError, writeFailure } from './errors';
import { handleHex } from './handle';
import { Limiter } from './limiter';
import { checkPointName, encodeManifest, manifestKey, type PointManifest, type QuiesceInfo, type VolumeManifest } from './manifest';
import { WriteSession } from './session';
import { checkLeafSize, shapeOf } from './tree';

export interface ArchiveSpec {
  /** Unique in the pool (letters, digits, . _ @ : + = -). */
  name: string;
  group?: string | null;
  seq?: number | null;
  /** Time of the point (its last write), ms since the epoch. */
  time?: number | null;
  marker?: string | null;
  quiesce?: QuiesceInfo | null;
  /**
   * An archived point to build from (temporal dedup): each volume of the
   * same name reuses its unchanged subtrees, and only `changed` extents are
   * read. The predecessor's leaf size is used.
   */
  predecessor?: string | null;
  volumes: VolumeSource[];
  /** Leaf size for a point without predecessor (default: the pool's). */
  leafSize?: number;
  meta?: Record<string, string | number | boolean | null>;
  signal?: AbortSignal;
  onProgress?: (p: ArchiveProgress) => void;
}

export interface ArchiveProgress {
  volume: string;
  leavesDone: number;
  bytesRead: number;
}

const IN_FLIGHT = 32 * 1024 * 1024;

export async function archivePoint(core: PoolCore, spec: ArchiveSpec, reserved: Set<string>): Promise<PointManifest> {
  checkPointName(spec.name);
  if (core.manifests.has(spec.name) || reserved.has(spec.name))
    throw new ArchiveError('EEXIST', `archived point "${spec.name}" exists already`);
  if (!Array.isArray(spec.volumes) || spec.volumes.length === 0) throw new ArchiveError('EINVAL', 'an archive needs at least one volume');
  const names = new Set(spec.volumes.map((v) => v.volume));
  if (names.size !== spec.volumes.length) throw new ArchiveError('EINVAL', 'volume names in one archive must be distinct');
  const pred = spec.predecessor ? core.manifests.get(spec.predecessor) : undefined;
  if (spec.predecessor && !pred) throw new ArchiveError('ENOENT', `predecessor "${spec.predecessor}" is not an archived point`);
  const leafSize = pred?.leafSize ?? spec.leafSize ?? core.config.leafSize;
  const fanout = pred?.fanout ?? core.config.fanout;
  try {
    checkLeafSize(leafSize);
  } catch (err) {
    throw new ArchiveError('EINVAL', (err as Error).message);
  }
  const bases = new Map<string, TreeRoot>();
  for (const v of pred?.volumes ?? []) if (names.has(v.volume)) bases.set(v.volume, treeOf(pred!, v));

  reserved.add(spec.name);
  const stamp = core.index.nextEpoch();
  const writerId = stamp;
  core.writers.set(writerId, { stamp, pins: [...bases.values()] });
  const session = new WriteSession(core.store, stamp, core.stagingDir, core.config.poolId, core.config.packTarget);
  try {
    const volumes: VolumeManifest[] = [];
    const inFlight = new Limiter(IN_FLIGHT);
    for (const src of spec.volumes) {
      const shape = shapeOf(src.size, leafSize, fanout);
      const stats = emptyStats();
      const before = session.counters.bytesStored;
      let leavesDone = 0;
      let bytesRead = 0;
      const ctx: BuildContext = {
        store: core.store,
        session,
        hasher: core.store.hasher,
        inFlight,
        ...(spec.signal ? { signal: spec.signal } : {}),
        onLeaves: (n, bytes) => {
          leavesDone += n;
          bytesRead += bytes;
          spec.onProgress?.({ volume: src.volume, leavesDone, bytesRead });
        },
      };
      const root = await buildTree(ctx, src, shape, bases.get(src.volume) ?? null, stats);
      stats.bytesStored = session.counters.bytesStored - before;
      volumes.push({ volume: src.volume, size: src.size, root: handleHex(root), height: shape.height, leaves: shape.leaves, stats });
    }
    await session.flush();
    crashPoint('before-manifest');
    const manifest: PointManifest = {
      name: spec.name,
      poolId: core.config.poolId,
      created: Date.now(),
      group: spec.group ?? null,
      seq: spec.seq ?? null,
      time: spec.time ?? null,
      marker: spec.marker ?? null,
      quiesce: spec.quiesce ?? null,
      predecessor: pred ? pred.name : null,
      scheme: core.config.scheme,
      leafSize,
      fanout,
      compression: core.config.compression.level > 0 ? `zstd-${core.config.compression.level}` : 'none',
      encrypted: core.keys !== null,
      volumes,
      meta: spec.meta ?? {},
    };
    await core.backend.put(manifestKey(spec.name), encodeManifest(manifest, core.keys?.enc ?? null), { exclusive: true });
    core.manifests.set(spec.name, manifest);
    crashPoint('after-manifest');
    return manifest;
  } catch (err) {
    await session.abort();
    if ((err as { code?: string }).code === 'EEXIST' && !(err instanceof ArchiveError)) {
      throw new ArchiveError('EEXIST', `archived point "${spec.name}" exists already on ${core.backend.description}`);
    }
    throw writeFailure(err, `archive "${spec.name}"`);
  } finally {
    core.writers.delete(writerId);
    reserved.delete(spec.name);
  }
}

export function stagingDirOf(stateDir: string): string {
  return path.join(stateDir, 'staging');
}
