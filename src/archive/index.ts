/**
 * The archive pool (issue 14): archived points as hash trees over
 * content-addressed chunks in packs, fed only by changed blocks.
 *
 *   const pool = await ArchivePool.open(stateDir, { create: {}, keyFile? });
 *   const p1 = await pool.archive({ name, group, seq, time, marker, quiesce,
 *     volumes: [{ volume, size, read(offset, length) }] });
 *   const p2 = await pool.archive({ name: 'n2', predecessor: 'n1',
 *     volumes: [{ volume, size, read, changed: [{ offset, length }, ...] }] });
 *   const v = pool.openVolume('n2', volume);   v.read(off, len), v.allocation(off, len)
 *   await pool.diff({ point: 'n1' }, { point: 'n2' });      // Extent[]
 *   await pool.forget(['n1']); await pool.forgetByPolicy('daily:30d,weekly:26w,monthly:forever');
 *   await pool.gc(); await pool.verify({ points? });
 *   pool.stats(); pool.list(); pool.point(name); await pool.close();
 *
 * Errors are ArchiveError with an errno-style code (errors.ts). Nothing
 * here knows about volumes, journals or the daemon: the caller supplies
 * images (read callbacks) and the extents changed since a predecessor.
 */
export { ArchivePool, type OpenOptions, type PoolStats } from './pool';
export type { ArchiveSpec, ArchiveProgress } from './archive';
export type { VolumeSource, Extent } from './builder';
export type { ArchivedVolume, AllocationExtent } from './reader';
export type { PointManifest, VolumeManifest, VolumeStats, QuiesceInfo } from './manifest';
export type { CreateOptions, PoolConfig } from './config';
export type { GcOptions, GcReport } from './gc';
export type { VerifyOptions, VerifyReport, BadChunk } from './verify';
export type { ForgetPlan } from './policy';
export { parseForgetPolicy, planForget } from './policy';
export type { RecoveryReport } from './recovery';
export type { ArchiveBackend, BackendObject, PutOptions } from './backend';
export { LocalBackend } from './local-backend';
export { ArchiveError, ArchiveFormatError, type ArchiveErrorCode } from './errors';
export { generateKeyFile } from './crypto';
