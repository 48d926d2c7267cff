/**
 * ArchivePool: the capacity-optimised pool of seed 003 (L136, L296-L392)
 * as a library. See index.ts for the interface and docs/ARCHITECTURE.md
 * ("The archive pool") for the formats.
 *
 * A pool is a backend (config, manifests, packs: everything needed to read
 * it) plus a local state directory (lock, LMDB index, bloom filter,
 * staging packs), which can be rebuilt from the backend.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { archivePoint, stagingDirOf, type ArchiveSpec } from './archive';
import type { ArchiveBackend } from './backend';
import { BloomFilter } from './bloom';
import type { Extent } from './builder';
import { ChunkStore } from './chunk-store';
import { CONFIG_KEY, keysFor, newConfig, readConfig, type CreateOptions, type PoolConfig } from './config';
import { pointVolume, treeOf, type PoolCore, type WriterEntry } from './core';
import type { PoolKeys } from './crypto';
import { diffTrees } from './diff';
import { ArchiveError, ArchiveFormatError, errnoOf } from './errors';
import { makeHasher } from './handle';
import { IndexDb } from './index-db';
import { LocalBackend } from './local-backend';
import { PoolLock } from './lock';
import { decodeManifest, manifestKey, nameOfManifestKey, type PointManifest } from './manifest';
import { collectGarbage, type GcOptions, type GcReport } from './gc';
import { parseForgetPolicy, planForget, type ForgetPlan } from './policy';
import { ArchivedVolume } from './reader';
import { rebuildIndex, recover, type RecoveryReport } from './recovery';
import { verifyPool, type VerifyOptions, type VerifyReport } from './verify';

export interface OpenOptions {
  /** Where packs and manifests live (default: a LocalBackend in STATE/store). */
  backend?: ArchiveBackend;
  /** Key file of an encrypted pool (or of one to create with `create.encrypt`). */
  keyFile?: string;
  /** Create the pool if the backend has none, with these settings. */
  create?: CreateOptions;
  /** Re-hash every chunk read (default true). */
  verifyReads?: boolean;
  /** Bytes of decoded tree nodes to cache (default 64 MiB). */
  nodeCacheBytes?: number;
}

export interface PoolStats {
  points: number;
  /** Sum of the sizes of every archived volume of every point. */
  logicalBytes: number;
  chunks: number;
  /** Plaintext bytes of the distinct chunks. */
  uniqueBytes: number;
  /** Chunk bytes after compression (and encryption). */
  storedBytes: number;
  packs: number;
  /** Bytes of all packs (stored bytes, record headers, indexes, dead chunks). */
  packBytes: number;
  /** logicalBytes / packBytes. */
  dedupRatio: number;
  quarantined: number;
}

export class ArchivePool {
  private readonly reserved = new Set<string>();
  private maintenance: string | null = null;
  private nextReader = 1;
  private closed = false;

  private constructor(
    private readonly core: PoolCore,
    private readonly lock: PoolLock,
    /** What open had to repair. */
    readonly recovery: RecoveryReport,
  ) {}

  /** Opens (or with `create`, creates) the pool whose local state lives in `stateDir`. */
  static async open(stateDir: string, opts: OpenOptions = {}): Promise<ArchivePool> {
    fs.mkdirSync(stateDir, { recursive: true });
    const lock = await PoolLock.acquire(stateDir);
    let index: IndexDb | null = null;
    const backend = opts.backend ?? new LocalBackend(path.join(stateDir, 'store'));
    try {
      if (backend instanceof LocalBackend) await backend.cleanup();
      let config = await readConfig(backend);
      let keys: PoolKeys | null;
      if (!config) {
        if (!opts.create) throw new ArchiveError('ENOENT', `no archive pool at ${backend.description} (pass create to make one)`);
        ({ config, keys } = newConfig(opts.create, opts.keyFile));
        await backend.put(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 1)}\n`), { exclusive: true });
      } else keys = keysFor(config, opts.keyFile);
      const stagingDir = stagingDirOf(stateDir);
      fs.mkdirSync(stagingDir, { recursive: true });
      index = IndexDb.open(stateDir);
      const fresh = index.getMeta<string>('poolId') !== config.poolId;
      if (fresh) {
        await index.clearAll(); // state of another pool, or none: rebuilt from the packs below
        await index.setMeta('poolId', config.poolId);
      }
      const store = new ChunkStore({
        backend,
        index,
        bloom: loadBloom(stateDir, index),
        codec: { level: config.compression.level, key: keys?.enc ?? null },
        hasher: makeHasher(config.scheme, keys?.id),
        verifyReads: opts.verifyReads ?? true,
        nodeCacheBytes: opts.nodeCacheBytes ?? 64 * 1024 * 1024,
      });
      const core: PoolCore = {
        stateDir,
        stagingDir,
        config,
        keys,
        backend,
        index,
        store,
        manifests: new Map(),
        writers: new Map<number, WriterEntry>(),
        readers: new Map(),
        refreshBloom: async () => {
          store.bloom = bloomFromIndex(index!);
          saveBloom(stateDir, store.bloom, index!.generation());
        },
      };
      const recovery = await recover(core);
      await loadManifests(core, recovery);
      return new ArchivePool(core, lock, recovery);
    } catch (err) {
      await index?.close().catch(() => undefined);
      await backend.close().catch(() => undefined);
      await lock.release();
      throw err;
    }
  }

  get config(): PoolConfig {
    return this.core.config;
  }

  private live(): void {
    if (this.closed) throw new ArchiveError('ECLOSED', 'the archive pool is closed');
  }

  /** Archives one point (one or more volumes at one seq). See ArchiveSpec. */
  archive(spec: ArchiveSpec): Promise<PointManifest> {
    this.live();
    return archivePoint(this.core, spec, this.reserved);
  }

  /** Every point, oldest first (by point time, then creation). */
  list(): PointManifest[] {
    return [...this.core.manifests.values()].sort((a, b) => (a.time ?? a.created) - (b.time ?? b.created) || a.created - b.created);
  }

  point(name: string): PointManifest {
    const p = this.core.manifests.get(name);
    if (!p) throw new ArchiveError('ENOENT', `no archived point "${name}"`);
    return p;
  }

  /**
   * A readable view of one volume of a point (the volume may be omitted if
   * there is one). Its chunks outlive a forget of the point until close().
   */
  openVolume(point: string, volume?: string): ArchivedVolume {
    this.live();
    const { p, v } = pointVolume(this.core, point, volume);
    const t = treeOf(p, v);
    const id = this.nextReader++;
    this.core.readers.set(id, t);
    return new ArchivedVolume(this.core.store, p.name, v.volume, t.shape, t.root, () => this.core.readers.delete(id));
  }

  /** Extents where two archived volumes may differ (pruned walk of both trees). */
  async diff(a: { point: string; volume?: string }, b: { point: string; volume?: string }): Promise<Extent[]> {
    this.live();
    const x = pointVolume(this.core, a.point, a.volume);
    const y = pointVolume(this.core, b.point, b.volume);
    return diffTrees(this.core.store, treeOf(x.p, x.v), treeOf(y.p, y.v));
  }

  /** Forgets points (their chunks go at the next gc). Unknown names fail before anything is forgotten. */
  async forget(names: string[]): Promise<string[]> {
    this.live();
    for (const n of names) if (!this.core.manifests.has(n)) throw new ArchiveError('ENOENT', `no archived point "${n}"`);
    for (const n of names) {
      await this.core.backend.delete(manifestKey(n));
      this.core.manifests.delete(n);
    }
    return names;
  }

  /** Applies a forget policy ("daily:30d, weekly:26w, monthly:forever"); dryRun only plans. */
  async forgetByPolicy(policy: string, opts: { now?: number; dryRun?: boolean } = {}): Promise<ForgetPlan> {
    this.live();
    const tiers = parseForgetPolicy(policy);
    const plan = planForget(
      this.list().map((p) => ({ name: p.name, series: p.group ?? p.volumes.map((v) => v.volume).join('+'), time: p.time ?? p.created })),
      tiers,
      opts.now ?? Date.now(),
    );
    if (!opts.dryRun) await this.forget(plan.forget);
    return plan;
  }

  private async exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.live();
    if (this.maintenance) throw new ArchiveError('EBUSY', `cannot ${what}: a ${this.maintenance} is running`);
    this.maintenance = what;
    try {
      return await fn();
    } finally {
      this.maintenance = null;
    }
  }

  /** Mark, sweep and repack. Safe while archives run (see gc.ts). */
  gc(opts: GcOptions = {}): Promise<GcReport> {
    return this.exclusive('gc', () => collectGarbage(this.core, opts));
  }

  /** Re-hashes every chunk reachable from the chosen points (default all). */
  verify(opts: VerifyOptions = {}): Promise<VerifyReport> {
    return this.exclusive('verify', () => verifyPool(this.core, opts));
  }

  /** Rebuilds the local index from the packs on the backend. Not while archives run. */
  rebuildIndex(): Promise<RecoveryReport> {
    return this.exclusive('rebuild', async () => {
      if (this.core.writers.size > 0) throw new ArchiveError('EBUSY', 'cannot rebuild the index while archives run');
      return rebuildIndex(this.core);
    });
  }

  /** Counters for metrics (cheap: kept in the index as chunks come and go). */
  stats(): PoolStats {
    const t = this.core.index.totals();
    const packs = this.core.index.packs();
    const packBytes = packs.reduce((a, p) => a + p.size, 0);
    let logical = 0;
    for (const p of this.core.manifests.values()) for (const v of p.volumes) logical += v.size;
    return {
      points: this.core.manifests.size,
      logicalBytes: logical,
      chunks: t.chunks,
      uniqueBytes: t.raw,
      storedBytes: t.stored,
      packs: packs.length,
      packBytes,
      dedupRatio: packBytes > 0 ? logical / packBytes : 0,
      quarantined: this.core.store.quarantinedHex.size,
    };
  }

  /** Quarantined chunks, with where and why. */
  quarantined(): Array<{ chunk: string; pack: string; offset: number; reason: string; at: number }> {
    return this.core.index.quarantined().map(([h, q]) => ({ chunk: h.toString('hex'), ...q }));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.core.store.settle();
    saveBloom(this.core.stateDir, this.core.store.bloom, this.core.index.generation());
    await this.core.index.close();
    await this.core.backend.close();
    await this.lock.release();
  }
}

/** Loads every manifest; one that cannot be read is reported and left out, not fatal. */
async function loadManifests(core: PoolCore, r: RecoveryReport): Promise<void> {
  for (const obj of await core.backend.list('points/')) {
    const name = nameOfManifestKey(obj.key);
    if (!name) continue;
    try {
      core.manifests.set(name, decodeManifest(await core.backend.get(obj.key), core.config.poolId, core.keys?.enc ?? null));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') continue;
      if (!(err instanceof ArchiveFormatError)) throw err;
      r.damagedManifests.push({ manifest: obj.key, reason: err.message });
    }
  }
}

const BLOOM_FILE = 'bloom.bin';

function bloomFromIndex(index: IndexDb): BloomFilter {
  const f = BloomFilter.forCapacity(Math.max(1 << 20, 2 * index.totals().chunks));
  for (const k of index.keys()) f.add(k);
  return f;
}

/** The saved filter if it matches the index's generation and has room, else one rebuilt from the index. */
function loadBloom(stateDir: string, index: IndexDb): BloomFilter {
  try {
    const { filter, generation } = BloomFilter.deserialize(fs.readFileSync(path.join(stateDir, BLOOM_FILE)));
    if (generation === index.generation() && filter.count <= filter.capacity) return filter;
  } catch {
    // missing or damaged: rebuild
  }
  const f = bloomFromIndex(index);
  saveBloom(stateDir, f, index.generation());
  return f;
}

function saveBloom(stateDir: string, f: BloomFilter, generation: number): void {
  const file = path.join(stateDir, BLOOM_FILE);
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, f.serialize(generation));
  fs.renameSync(tmp, file);
}
