/**
 * Bringing the local state in line with the backend at open, after a
 * crash or a move of the state directory:
 *   1. staging packs a crash left are cut at their last whole record,
 *      sealed and published (their chunks are unreferenced until an
 *      archive uses them, so the next gc reclaims them if none does);
 *   2. packs marked 'deleting' by a gc are deleted;
 *   3. packs on the backend the index does not know (a crash between the
 *      put and the index commit, or a new state directory) are indexed
 *      from their trailing index, or from a scan if that is damaged.
 * Also rebuildIndex: the whole index again from the packs (seed 003: the
 * manifests and packs are enough).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { PoolCore } from './core';
import { errnoOf } from './errors';
import { readPackContents } from './pack-reader';
import { salvageStaging } from './pack-writer';

export interface RecoveryReport {
  salvagedPacks: number;
  salvagedChunks: number;
  deletedPacks: number;
  indexedPacks: number;
  /** Backend packs that could not be indexed at all, with why. */
  damagedPacks: Array<{ pack: string; reason: string }>;
  /** Manifests that could not be read (their points are left out), with why. */
  damagedManifests: Array<{ manifest: string; reason: string }>;
}

function emptyReport(): RecoveryReport {
  return { salvagedPacks: 0, salvagedChunks: 0, deletedPacks: 0, indexedPacks: 0, damagedPacks: [], damagedManifests: [] };
}

export async function recover(core: PoolCore): Promise<RecoveryReport> {
  const r = emptyReport();
  const stamp = core.index.nextEpoch();
  for (const name of fs.readdirSync(core.stagingDir)) {
    const file = path.join(core.stagingDir, name);
    if (!name.endsWith('.pack')) {
      fs.rmSync(file, { force: true });
      continue;
    }
    const sealed = await salvageStaging(file, core.config.poolId, core.store.codec.key);
    if (!sealed) continue;
    try {
      await core.store.publish(sealed, stamp);
      r.salvagedPacks++;
      r.salvagedChunks += sealed.entries.length;
    } catch (err) {
      // Staging packs hold only chunks of archives that never committed: losing them costs nothing but a re-read.
      fs.rmSync(file, { force: true });
      r.damagedPacks.push({ pack: `staging/${name}`, reason: `dropped, could not be published: ${(err as Error).message}` });
    }
  }
  for (const p of core.index.packs()) {
    if (p.state !== 'deleting') continue;
    await core.backend.delete(p.key);
    await core.index.removePack(p.no);
    r.deletedPacks++;
  }
  await indexUnknownPacks(core, stamp, r);
  return r;
}

async function indexUnknownPacks(core: PoolCore, stamp: number, r: RecoveryReport): Promise<void> {
  const known = new Set(core.index.packs().map((p) => p.key));
  for (const obj of await core.backend.list('packs/')) {
    if (known.has(obj.key) || !obj.key.endsWith('.pack')) continue;
    try {
      const c = await readPackContents(
        (off, len) => core.backend.get(obj.key, { offset: off, length: len }),
        obj.size,
        core.config.poolId,
        core.store.codec.key,
      );
      for (const e of c.entries) core.store.bloom.add(e.handle);
      await core.index.addPack(
        { key: obj.key, kind: c.header.kind, size: obj.size, entries: c.entries.length, created: c.header.created, state: 'live' },
        c.entries,
        stamp,
        (hex) => core.store.quarantinedHex.has(hex),
      );
      r.indexedPacks++;
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') continue;
      r.damagedPacks.push({ pack: obj.key, reason: (err as Error).message });
    }
  }
}

/** Drops the local index and rebuilds it from every pack on the backend. */
export async function rebuildIndex(core: PoolCore): Promise<RecoveryReport> {
  await core.index.clearAll();
  core.store.quarantinedHex.clear();
  const r = emptyReport();
  await indexUnknownPacks(core, core.index.nextEpoch(), r);
  await core.refreshBloom();
  return r;
}
