/**
 * Protection: the daemon's wiring of protected volumes. For each
 * consistency group it runs the intercept side (GroupJournal, one
 * ProtectedVolume and StateMap per volume) and the backup manager, joined
 * by a ManagerLink. In this single-process mode the link is a local call;
 * the manager is written as if it were remote (it receives sealed
 * containers, answers with commits).
 *
 *   DATA_DIR/groups/GROUP/journal/   AILFCs (intercept side)
 *   DATA_DIR/groups/GROUP/manager/   replicated images, history, LMDB index
 *   DATA_DIR/volumes/NAME/statemap   the volume's persistent state map
 */
import { recoverGroup } from './recovery';
import type { GroupRuntime } from './group-runtime';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { Catalog, GroupRecord, VolumeRecord } from '../catalog/catalog';
import { GroupJournal, type CommitInfo, type ManagerLink } from '../journal/group-journal';
import { ProtectedVolume, type VolumeIoStatus } from '../journal/protected-volume';
import { StateMap } from '../journal/state-map';
import { BackupManager } from '../manager/backup-manager';
import { FileExport } from '../storage/file-export';
import { UserError } from '../util/errors';
import { withFaults } from './fault-injection';
import { RemoteLink, type LinkTlsClient, type LinkTlsFiles, type RemoteLinkStatus } from '../link/client';
import { ResyncController, type ResyncStatus } from '../link/resync';
import { hashReader, HASH_CHUNK } from '../util/hash';
import { blockDigests, type GroupMsg, type InterceptStatusMsg } from '../link/protocol';
import { RestoreHolds, type RestoreHooks } from '../link/remote-restore';
import { type Logger } from '../util/logger';
import { recordCleanStop, takeCleanStop } from './clean-stop';
import type { JournalPort, RestoreTarget, VolumeContext } from '../timetravel/ports';
import type { DamageMark } from '../manager/damage';
import type { StoredScrub } from './scrub';

/** `rewind serve --role intercept`: the backup manager is remote (src/link/). */
export interface RemoteManagerOptions {
  host: string;
  port: number;
  secret: Buffer | null;
  tls: LinkTlsClient | null;
  /** The files `tls` was read from (reloaded on SIGHUP or change: cert-reload.ts). */
  tlsFiles?: LinkTlsFiles | null;
  /** Space limit of each group's local pool of LFCs (degraded mode beyond it). */
  poolBytes: number;
  window?: number;
}

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

/** Why a volume is offline while a restore run by the remote manager holds it. */
export const RESTORE_HELD =
  'a production restore run by the backup manager is rewriting it (it comes back when the manager ends the restore)';

/** The daemon's control of its exports: what a restore run by a remote manager needs on the intercept. */
export interface ExportControl {
  setOffline(volume: string, reason: string | null): void;
  /** Disconnects the volume's clients; resolves once their requests are done. */
  disconnect(volume: string): Promise<number>;
}

export class Protection {
  private readonly groups = new Map<string, GroupRuntime>();
  private readonly byVolume = new Map<string, GroupRuntime>();
  private exports: ExportControl | null = null;
  // Settled once start-up's crash recovery is over: a restore may not begin before (see restoreHooks).
  private markRecovered!: () => void;
  private readonly recovered = new Promise<void>((resolve) => (this.markRecovered = resolve));

  constructor(
    private readonly dataDir: string,
    private readonly catalog: Catalog,
    private readonly logger: Logger,
    private readonly remote: RemoteManagerOptions | null = null,
  ) {}

  /** The intercept's link TLS files, if it uses TLS (certificate reloads). */
  get remoteTlsFiles(): LinkTlsFiles | null {
    return this.remote?.tls ? (this.remote.tlsFiles ?? null) : null;
  }

  /** Rotated link client certificates: every group's link uses them from its next connection. */
  setRemoteTls(tls: LinkTlsClient): void {
    if (!this.remote?.tls) throw new Error('the manager link does not use TLS');
    this.remote.tls = tls;
    for (const rt of this.groups.values()) rt.link?.setTls(tls);
  }

  /** Open every group in the catalog: manager recovery first, then the journal, then resync. */
  async start(): Promise<void> {
    for (const g of this.catalog.listGroups()) {
      const vols = this.catalog.groupVolumes(g.name);
      if (vols.length) await this.openGroup(g, vols);
    }
  }

  private groupDir(name: string): string {
    return path.join(this.dataDir, 'groups', name);
  }

  private stateMapPath(volume: string): string {
    return path.join(this.dataDir, 'volumes', volume, 'statemap');
  }

  private async openGroup(record: GroupRecord, vols: VolumeRecord[]): Promise<GroupRuntime> {
    const dir = this.groupDir(record.name);
    await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
    const log = this.logger;
    if (this.remote) return this.openRemoteGroup(record, vols, dir);
    const manager = await BackupManager.open(path.join(dir, 'manager'), {
      groupId: record.groupId,
      blockSize: record.blockSize,
      volumes: vols.map((v) => ({ volumeId: v.protection!.volumeId, name: v.name, size: v.size })),
      logger: log,
    });
    const st = manager.status();
    const link: ManagerLink = { submit: (ref) => manager.submit(ref) };
    const cleanStop = await takeCleanStop(dir);
    const journal = await this.openJournal(record, dir, link, st.lastContainer, st.lastSeq);
    const rt: GroupRuntime = {
      record,
      manager,
      journal,
      volumes: new Map(),
      pendingRecovery: [],
      cleanStopSeq: cleanStop?.lastSeq ?? null,
    };
    this.groups.set(record.name, rt);
    // The manager's disk full: the journal stops growing (degraded, state maps only) until the manager has
    // caught up; then a super transaction re-captures what changed, as after a full LFC pool.
    const stalled = (error: string) => journal.degradeForManager(error);
    manager.on('stalled', (x) => stalled(x.error));
    if (st.stalled) stalled(st.stalled.error);
    for (const v of vols) await this.openVolume(rt, v);
    // Started by recover(), as in the intercept role.
    rt.resync = new ResyncController(journal, () => [...rt.volumes.values()], log);
    return rt;
  }

  /** The group's journal (DIR/journal), handing sealed containers to `link`. */
  private openJournal(
    record: GroupRecord,
    dir: string,
    link: ManagerLink,
    committedContainer: number,
    committedSeq: number,
    poolBytes?: number,
  ): Promise<GroupJournal> {
    return GroupJournal.open({
      dir: path.join(dir, 'journal'),
      groupId: record.groupId,
      link,
      sealBytes: record.sealBytes,
      // Tests only: REWIND_TEST_SEAL_AGE_MS stretches the age seal, so a test can count the transactions a command adds.
      sealAgeMs: Number(process.env.REWIND_TEST_SEAL_AGE_MS) || record.sealAgeMs,
      blockSize: record.blockSize,
      committedContainer,
      committedSeq,
      logger: this.logger,
      poolBytes,
    });
  }

  private groupMsg(record: GroupRecord, vols: Array<{ name: string; size: number; protection?: { volumeId: number } }>): GroupMsg {
    return {
      group: record.name,
      groupId: record.groupId,
      blockSize: record.blockSize,
      regionSize: record.regionSize,
      volumes: vols.map((v) => ({ volumeId: v.protection!.volumeId, name: v.name, size: v.size })),
    };
  }

  /** Intercept role: the journal talks to a remote manager through a RemoteLink, with a bounded LFC pool. */
  private async openRemoteGroup(record: GroupRecord, vols: VolumeRecord[], dir: string): Promise<GroupRuntime> {
    const r = this.remote!;
    const log = this.logger;
    const link = new RemoteLink({
      host: r.host,
      port: r.port,
      secret: r.secret,
      tls: r.tls,
      group: this.groupMsg(record, vols),
      stateFile: path.join(dir, 'link-state.json'),
      window: r.window ?? 4,
      logger: log,
    });
    const st = link.committed;
    const cleanStop = await takeCleanStop(dir);
    const journal = await this.openJournal(record, dir, link, st.committedContainer, st.committedSeq, r.poolBytes);
    const holds = new RestoreHolds(path.join(dir, 'restore-hold.json'));
    const rt: GroupRuntime = {
      record,
      manager: null,
      journal,
      volumes: new Map(),
      link,
      pendingRecovery: [],
      holds,
      cleanStopSeq: cleanStop?.lastSeq ?? null,
    };
    this.groups.set(record.name, rt);
    link.setHooks({
      restore: this.restoreHooks(rt, holds),
      status: () => this.interceptStatus(rt),
      catchUp: async () => {
        await journal.catchUp();
      },
      position: async (find) => ({ position: journal.position(), found: find ? await journal.findPending(find) : null }),
      verify: async (volumeId, ready) => {
        const pv = [...rt.volumes.values()].find((x) => x.volumeId === volumeId);
        if (!pv) throw new Error(`no volume ${volumeId} in group ${record.name}`);
        if (journal.isDegraded || journal.superTransaction)
          throw new Error(
            `group ${record.name} is ${journal.isDegraded ? 'degraded' : 'resyncing'}: the replica cannot equal production yet`,
          );
        return pv.quiesced(async () => {
          await pv.flush();
          await journal.catchUp();
          const appliedSeq = journal.status().committedSeq;
          ready(appliedSeq);
          const h = await hashReader(pv.size, (off, b) => pv.production.read(off, b.length));
          return { sha256: h.sha, chunk: HASH_CHUNK, hashes: h.hashes, appliedSeq };
        });
      },
    });
    // Up before the volumes open: crash recovery compares dirty regions with the replica.
    link.start();
    for (const v of vols) await this.openVolume(rt, v);
    // Started by recover(): a resync restarted mid-run must see the start-up re-capture first.
    rt.resync = new ResyncController(journal, () => [...rt.volumes.values()], log);
    return rt;
  }

  /**
   * Intercept role: the restore its manager runs (link/remote-restore.ts).
   * The hold is recorded before the volume is touched; writes are refused
   * for a volume not held, so they can never reach one hosts are using.
   */
  private restoreHooks(rt: GroupRuntime, holds: RestoreHolds): RestoreHooks {
    const vol = (id: number): ProtectedVolume => {
      const pv = [...rt.volumes.values()].find((x) => x.volumeId === id);
      if (!pv) throw new Error(`no volume ${id} in group ${rt.record.name}`);
      return pv;
    };
    const held = (id: number): ProtectedVolume => {
      const pv = vol(id);
      if (!holds.has(id)) throw new Error(`volume ${pv.name} is not held for a restore`);
      return pv;
    };
    return {
      begin: async (id) => {
        const pv = vol(id);
        // The manager finds what to rewrite in its history: writes a crash left unjournaled must be in it first.
        await this.recovered;
        if (rt.journal.isDegraded) throw new Error(`group ${rt.record.name} is degraded (not journaling): a restore must be journaled`);
        holds.hold(id, pv.name);
        this.exports?.setOffline(pv.name, RESTORE_HELD);
        const n = (await this.exports?.disconnect(pv.name)) ?? 0;
        await pv.flush();
        this.logger.warn({ volume: pv.name, disconnected: n }, 'a production restore run by the backup manager holds the volume');
      },
      hashes: async (id, offset, length, bs) => blockDigests(await held(id).production.read(offset, length), bs),
      write: (id, offset, data) => held(id).restoreWrite(offset, data),
      zero: (id, offset, length) => held(id).restoreZero(offset, length),
      flush: (id) => held(id).flush(),
      end: async (id) => {
        const pv = vol(id);
        // Not held: nothing to end (and a volume offline for another reason stays so).
        if (!holds.has(id)) return;
        await this.recovered;
        await pv.flush();
        holds.release(id);
        this.exports?.setOffline(pv.name, null);
        this.logger.info({ volume: pv.name }, 'the production restore run by the backup manager ended: the volume is back');
      },
    };
  }

  /** Attaches the daemon's exports (after start): volumes a restore holds go offline now. */
  setExportControl(c: ExportControl): void {
    this.exports = c;
    for (const name of this.heldVolumes()) c.setOffline(name, RESTORE_HELD);
  }

  /** Intercept role: volumes a restore run by the manager holds (kept across restarts). */
  heldVolumes(): string[] {
    return [...this.groups.values()].flatMap((rt) => rt.holds?.names() ?? []);
  }

  private interceptStatus(rt: GroupRuntime): Omit<InterceptStatusMsg, 'bytesSent' | 'queued'> {
    const js = rt.journal.status();
    const rs = rt.resync?.status();
    return {
      time: Date.now(),
      state: rs?.state ?? (js.degraded ? 'degraded' : 'normal'),
      degraded: js.degraded
        ? { since: js.degraded.since, reason: js.degraded.reason, fromSeq: js.degraded.fromSeq, fromTime: js.degraded.fromTime }
        : null,
      resync: js.superRun
        ? { id: js.superRun.id, fromSeq: js.superRun.fromSeq, fromTime: js.superRun.fromTime, regionsLeft: rs?.regionsLeft ?? 0 }
        : null,
      lastAppendedSeq: js.lastAppendedSeq,
      lastAppendedTime: js.lastAppendedTime,
      poolBytes: js.poolBytes,
      poolLimit: js.poolLimit,
      volumes: [...rt.volumes.values()].map((pv) => ({ volumeId: pv.volumeId, name: pv.name, dirtyRegions: pv.stateMap.dirtyCount() })),
      restoreHeld: rt.holds?.ids() ?? [],
    };
  }

  private async openVolume(rt: GroupRuntime, v: VolumeRecord): Promise<ProtectedVolume> {
    const smPath = this.stateMapPath(v.name);
    await fs.promises.mkdir(path.dirname(smPath), { recursive: true, mode: 0o700 });
    const stateMap = await StateMap.open(smPath, { volumeSize: v.size, regionSize: rt.record.regionSize });
    const production = withFaults(await FileExport.open(v.path), v.path);
    const pv = new ProtectedVolume(v.name, v.protection!.volumeId, production, rt.journal, stateMap);
    rt.journal.addStateMap(v.protection!.volumeId, stateMap);
    rt.volumes.set(v.name, pv);
    this.byVolume.set(v.name, rt);
    // Pool-degraded (intercept role): nothing can be journaled now; the super transaction resyncs later.
    if (stateMap.dirtyCount() > 0 && !rt.journal.isDegraded) {
      // After a clean stop every dirty region is in a container the manager has yet to apply.
      if (rt.cleanStopSeq !== null) stateMap.adoptLoaded(rt.cleanStopSeq);
      else rt.pendingRecovery.push(pv);
    }
    return pv;
  }

  /** Volumes waiting for recover(): the daemon keeps them offline until then. */
  recoveringVolumes(): string[] {
    return [...this.groups.values()].flatMap((rt) => rt.pendingRecovery.map((pv) => pv.name));
  }

  /**
   * Crash recovery of the volumes an unclean stop left dirty (after start(),
   * in the background, while they are offline): the manager catches up on
   * what survived, then only blocks that differ from the replica are
   * journaled again. `done(volume)` is called as each is ready; then each
   * group's resync controller (two-role mode) starts.
   */
  async recover(done: (volume: string, ok: boolean) => void = () => undefined): Promise<void> {
    try {
      await Promise.all([...this.groups.values()].map((rt) => recoverGroup(rt, this.logger, done)));
    } finally {
      this.markRecovered();
    }
  }

  /** A protected volume was just added to the catalog. */
  async attach(v: VolumeRecord): Promise<void> {
    const groupName = v.protection!.group;
    const rt = this.groups.get(groupName);
    const group = this.catalog.getGroup(groupName)!;
    if (!rt) {
      // A new volume has nothing to recover; this starts the group's resync controller (two-role mode).
      await recoverGroup(await this.openGroup(group, [v]), this.logger);
      return;
    }
    rt.record = group;
    if (rt.manager) await rt.manager.addVolume({ volumeId: v.protection!.volumeId, name: v.name, size: v.size });
    await this.openVolume(rt, v);
    if (rt.pendingRecovery.length) await recoverGroup(rt, this.logger);
    if (rt.link) rt.link.setGroup(this.groupMsg(group, this.catalog.groupVolumes(group.name)));
  }

  /** A protected volume left the catalog and its clients are gone. */
  async detach(v: VolumeRecord): Promise<void> {
    const rt = this.byVolume.get(v.name);
    if (!rt) return;
    const pv = rt.volumes.get(v.name)!;
    rt.volumes.delete(v.name);
    this.byVolume.delete(v.name);
    pv.dispose();
    await pv.stateMap.close();
    await pv.production.close?.();
    if (rt.volumes.size === 0) {
      this.groups.delete(rt.record.name);
      rt.resync?.close();
      await rt.journal.close();
      await rt.manager?.close();
      await rt.link?.close();
      await fs.promises.rm(this.groupDir(rt.record.name), { recursive: true, force: true });
      await this.catalog.removeGroup(rt.record.name);
    }
    await fs.promises.rm(this.stateMapPath(v.name), { force: true });
  }

  /** What time travel needs of a protected volume: its group's history, its journal, its intercept (timetravel/ports.ts). */
  context(name: string): VolumeContext {
    const { rt, pv } = this.runtime(name);
    const j = rt.journal;
    const journal: JournalPort = {
      locate: async (find) => ({ position: j.position(), found: find ? await j.findPending(find) : null }),
      catchUp: () => j.catchUp(),
      get isDegraded() {
        return j.isDegraded;
      },
      seal: (reason) => j.seal(reason),
      lastAppendedSeq: async () => j.status().lastAppendedSeq,
    };
    const restore: RestoreTarget = {
      // The host takes the export offline and disconnects its clients: nothing more to hold here.
      hold: async () => undefined,
      release: async () => undefined,
      flush: () => pv.flush(),
      differing: async (offset, want, bs) => differingBlocks(await pv.production.read(offset, want.length), want, bs),
      restoreWrite: (offset, data) => pv.restoreWrite(offset, data),
      restoreZero: (offset, length) => pv.restoreZero(offset, length),
    };
    return {
      history: this.localManager(rt, 'time travel').history,
      journal,
      restore,
      group: rt.record.name,
      volumeId: pv.volumeId,
      size: pv.size,
    };
  }

  /** The local backup manager of every group (single-process mode; none in the intercept role): the scrub's groups. */
  managers(): Array<{ group: string; manager: BackupManager }> {
    return [...this.groups.values()].flatMap((rt) => (rt.manager ? [{ group: rt.record.name, manager: rt.manager }] : []));
  }

  /** The backup manager of a protected volume's group (single-process mode): retention, the log. */
  managerOf(name: string): { manager: BackupManager; group: string } {
    const { rt } = this.runtime(name);
    return { manager: this.localManager(rt, 'retention'), group: rt.record.name };
  }

  /**
   * A protected volume, or a consistency group by name: its group, the
   * volume (null for a group) and the context of one of its volumes.
   */
  target(name: string): { group: string; volume: string | null; ctx: ReturnType<Protection['context']> } {
    if (this.byVolume.has(name)) return { group: this.byVolume.get(name)!.record.name, volume: name, ctx: this.context(name) };
    const rt = this.groups.get(name);
    const first = rt ? [...rt.volumes.keys()][0] : undefined;
    if (!rt || first === undefined) throw new UserError('not-found', `no protected volume or consistency group named "${name}"`);
    return { group: name, volume: null, ctx: this.context(first) };
  }

  /** Name of volume `volumeId` of a group (for messages). */
  volumeName(group: string, volumeId: number): string {
    const rt = this.groups.get(group);
    if (rt) for (const pv of rt.volumes.values()) if (pv.volumeId === volumeId) return pv.name;
    return `volume ${volumeId}`;
  }

  volume(name: string): ProtectedVolume | undefined {
    return this.byVolume.get(name)?.volumes.get(name);
  }

  /** The group's local manager; in the intercept role, a clear error naming the manager that has the history. */
  private localManager(rt: GroupRuntime, what: string): BackupManager {
    if (rt.manager) return rt.manager;
    throw new UserError(
      'invalid',
      `${what} is served by the backup manager (${this.remote!.host}:${this.remote!.port}) in the two-role mode: run the command against the manager's daemon`,
    );
  }

  private runtime(name: string): { rt: GroupRuntime; pv: ProtectedVolume } {
    const rt = this.byVolume.get(name);
    const pv = rt?.volumes.get(name);
    if (!rt || !pv) throw new UserError('invalid', `volume "${name}" is not protected`);
    return { rt, pv };
  }

  status(name: string): VolumeProtectionStatus {
    const { rt, pv } = this.runtime(name);
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

  async seal(name: string): Promise<{ containerId: number | null; commit: CommitInfo | null }> {
    const { rt } = this.runtime(name);
    const r = await rt.journal.seal('command');
    if (!r) return { containerId: null, commit: null };
    return { containerId: r.containerId, commit: await r.committed };
  }

  log(name: string, opts: { limit?: number } = {}) {
    const { rt } = this.runtime(name);
    const all = this.localManager(rt, 'the transaction log').transactions({});
    return opts.limit ? all.slice(-opts.limit) : all;
  }

  /**
   * Quiesce writes to the volume, let the manager catch up, compare
   * production and replica by checksum, and check every stored container.
   */
  async verify(name: string, opts: { full?: boolean } = {}): Promise<VerifyReport> {
    const { rt, pv } = this.runtime(name);
    const manager = this.localManager(rt, 'verify (it compares the replica with checksums of production it asks this intercept for)');
    const blocked = manager.status().blocked;
    if (blocked) {
      throw new UserError('conflict', `the backup manager is blocked at container ${blocked.n}: ${blocked.error}`);
    }
    return pv.quiesced(async () => {
      await pv.flush();
      await rt.journal.catchUp();
      const containers = await manager.verifyHistory(opts);
      const replica = manager.replicaPath(pv.volumeId);
      const cmp = await compareFiles(pv.production, replica, pv.size);
      const ok = cmp.equal && containers.every((c) => c.ok);
      return {
        volume: name,
        equal: cmp.equal,
        productionSha256: cmp.a,
        replicaSha256: cmp.b,
        firstDifference: cmp.firstDifference,
        bytesCompared: pv.size,
        appliedSeq: manager.status().lastSeq,
        containers,
        ok,
      };
    });
  }

  /**
   * Stops every group. Called once the NBD server has drained (no write in
   * flight): images, journal and state maps are synced, the journal sealed
   * (its containers are handed to the manager, now or at the next start),
   * and, if nothing was left undone (not degraded, no open super
   * transaction, no recovery pending), a clean-stop record spares the next
   * start its crash recovery.
   */
  async close(): Promise<void> {
    for (const rt of this.groups.values()) {
      rt.resync?.close();
      let synced = rt.pendingRecovery.length === 0;
      for (const pv of rt.volumes.values()) {
        await pv.flush().catch((e) => {
          synced = false;
          this.logger.error({ volume: pv.name, err: (e as Error).message }, 'flush at stop failed');
        });
      }
      const open = rt.journal.position().open;
      await rt.journal.close().catch((e) => {
        synced = false;
        this.logger.error({ err: (e as Error).message }, 'journal close');
      });
      if (synced && open === null && !rt.journal.isDegraded) {
        const lastSeq = rt.journal.status().lastAppendedSeq;
        await recordCleanStop(this.groupDir(rt.record.name), lastSeq).catch((e) =>
          this.logger.error({ err: (e as Error).message }, 'cannot record the clean stop (the next start recovers)'),
        );
      }
      await rt.link?.close();
      await rt.manager?.close().catch((e) => this.logger.error({ err: (e as Error).message }, 'manager close'));
      for (const pv of rt.volumes.values()) {
        pv.dispose();
        await pv.stateMap.close().catch(() => undefined);
        await pv.production.close?.();
      }
    }
    this.groups.clear();
    this.byVolume.clear();
  }
}

/** Per block: true where `have` and `want` differ (the last block may be short). */
function differingBlocks(have: Buffer, want: Buffer, bs: number): boolean[] {
  const out: boolean[] = [];
  for (let a = 0; a < want.length; a += bs) out.push(!want.subarray(a, a + bs).equals(have.subarray(a, a + bs)));
  return out;
}

/** SHA-256 of both images and the first differing offset, 1 MiB at a time. */
async function compareFiles(
  production: { read(o: number, l: number): Promise<Buffer> },
  replicaPath: string,
  size: number,
): Promise<{ equal: boolean; a: string; b: string; firstDifference: number | null }> {
  const ha = createHash('sha256');
  const hb = createHash('sha256');
  const fd = await fs.promises.open(replicaPath, 'r');
  let first: number | null = null;
  try {
    const step = 1024 * 1024;
    const rb = Buffer.alloc(step);
    for (let off = 0; off < size; off += step) {
      const n = Math.min(step, size - off);
      const a = await production.read(off, n);
      const b = rb.subarray(0, n);
      b.fill(0);
      await fd.read(b, 0, n, off);
      ha.update(a);
      hb.update(b);
      if (first === null && !a.equals(b)) {
        for (let i = 0; i < n; i++) {
          if (a[i] !== b[i]) {
            first = off + i;
            break;
          }
        }
      }
    }
  } finally {
    await fd.close();
  }
  return { equal: first === null, a: ha.digest('hex'), b: hb.digest('hex'), firstDifference: first };
}
