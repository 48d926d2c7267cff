/**
 * What `rewind status` shows of a protected volume, and what verify reports:
 * gathered from the group's journal, its manager (local) or what the link
 * last heard (intercept role), the resync and the volume itself.
 */
import type { GroupRuntime } from './group-runtime';
import type { ProtectedVolume, VolumeIoStatus } from '../journal/protected-volume';
import type { RemoteLinkStatus } from '../link/client';
import type { ResyncStatus } from '../link/resync';
import type { DamageMark } from '../manager/damage';
import type { StoredScrub } from './scrub';

export interface VolumeProtectionStatus {
  volume: string;
  group: string;
  volumeId: number;
  /** "resync": a super transaction after degraded mode is running (intercept role). */
  state: 'normal' | 'degraded' | 'resync';
  degraded: { since: string; reason: string } | null;
  appliedSeq: number;
  appliedContainer: number;
  lastSeq: number;
  active: { containerId: number; bytes: number; records: number } | null;
  sealedPending: number[];
  lag: { writes: number; bytes: number; seconds: number };
  dirtyRegions: number;
  regionSize: number;
  transactions: number;
  lastError: string | null;
  /** First transaction pinned by snapshots, clones or running exports (no cleanup may remove it or later ones); null if none. */
  pinnedFrom: number | null;
  /** Production I/O failures (counts, last error, whether it is failing now). */
  io: VolumeIoStatus;
  /** The group's last scrub and the damage known (where its manager is: single-process, manager role). */
  scrub?: { last: StoredScrub | null; damage: DamageMark[] };
  /** Single process: the manager's disk is full, applying waits (the group is degraded meanwhile). */
  managerStalled?: { n: number; error: string; since: string };
  /** Intercept role: the link to the remote manager, the local LFC pool, the resync. */
  link?: RemoteLinkStatus & { poolBytes: number; poolLimit: number };
  resync?: ResyncStatus & { superTransaction: { id: number; fromSeq: number; lastContainer: number | null } | null };
}

export interface VerifyReport {
  volume: string;
  equal: boolean;
  productionSha256: string;
  replicaSha256: string;
  firstDifference: number | null;
  bytesCompared: number;
  appliedSeq: number;
  containers: Array<{ n: number; kind: string; ok: boolean; offset?: number; problem?: string }>;
  ok: boolean;
}

export function protectionStatus(name: string, rt: GroupRuntime, pv: ProtectedVolume): VolumeProtectionStatus {
  const js = rt.journal.status();
  // What the manager has applied: asked locally, or as the link last heard it (intercept role).
  const ms = rt.manager?.status();
  const c = rt.manager ? null : rt.link!.committed;
  const applied = ms
    ? { seq: ms.lastSeq, container: ms.lastContainer, time: ms.lastTime, transactions: ms.transactions }
    : { seq: c!.committedSeq, container: c!.committedContainer, time: c!.committedTime, transactions: c!.committedContainer };
  const rs = rt.resync?.status() ?? null;
  const lagWrites = Math.max(0, js.lastAppendedSeq - applied.seq);
  const out: VolumeProtectionStatus = {
    volume: name,
    group: rt.record.name,
    volumeId: pv.volumeId,
    state: rs ? rs.state : js.degraded ? 'degraded' : 'normal',
    degraded: js.degraded ? { since: js.degraded.since, reason: js.degraded.reason } : null,
    appliedSeq: applied.seq,
    appliedContainer: applied.container,
    lastSeq: js.lastAppendedSeq,
    active: js.active ? { containerId: js.active.containerId, bytes: js.active.bytes, records: js.active.records } : null,
    sealedPending: js.sealedPending,
    lag: {
      writes: lagWrites,
      bytes: lagWrites > 0 ? js.unappliedBytes : 0,
      // Age of the oldest write not yet applied, approximated by the time
      // between the last applied write and the last journaled one.
      seconds: lagWrites > 0 ? Math.max(0, (js.lastAppendedTime - (applied.time || js.lastAppendedTime)) / 1000) : 0,
    },
    dirtyRegions: pv.stateMap.dirtyCount(),
    regionSize: rt.record.regionSize,
    transactions: applied.transactions,
    lastError: js.lastError,
    pinnedFrom: rt.manager ? rt.manager.history.pins.from() : null,
    io: pv.ioStatus(),
  };
  if (rt.manager) out.scrub = { last: rt.manager.lastScrub() ?? null, damage: rt.manager.history.damage.list() };
  if (rs) out.resync = { ...rs, superTransaction: js.superRun };
  if (rt.link) out.link = { ...rt.link.status(), poolBytes: js.poolBytes, poolLimit: js.poolLimit };
  if (ms?.stalled) out.managerStalled = ms.stalled;
  return out;
}
