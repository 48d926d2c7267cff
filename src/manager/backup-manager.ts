/**
 * The backup manager of one consistency group (MISSION data flow steps 1–4).
 *
 * It receives sealed AILFCs (submit), keeps its own copy of each in
 * <dir>/history/, and applies them strictly in containerId order to the
 * replicated images <dir>/replica/vol-<id>.raw. For AILFC_n:
 *
 *   0. copy     history/ailfc-n.lfc: a hard link to the sender's file, or a
 *               copy (tmp + fsync + rename + dir fsync) across filesystems.
 *   1. verify   (worker) every checksum of AILFC_n, its identity, its
 *               records against the group; the touched block runs. This
 *               needs no replica, so for a queued n+1 it runs while T_n is
 *               still being applied (work-ahead.ts, as is BILFC_n+1 while
 *               T_n's replica writes are made durable).
 *      bilfc    (worker) BILFC_n from the replicas (each touched block once,
 *               ascending) sealed (fdatasync + rename + dir fsync) BEFORE
 *               any replica is touched.
 *   2. apply    (workers, one task per touched volume, in parallel) final
 *               block = BILFC_n's before-image overlaid with AILFC_n's
 *               records in seq order; each written once, ascending, in
 *               coalesced runs, batch by batch (batchBytes); fdatasync.
 *   3. commit   one LMDB transaction: transaction record, block index, seq
 *               index, applied pointer; awaited until flushed. Then the
 *               'commit' event.
 *
 * A container that fails (corrupt: a checksum mismatch; or invalid: e.g. a
 * record for an unknown volume or beyond a volume's end) is never applied:
 * its submit rejects naming the container and the offset, it is logged, and
 * the group is BLOCKED at n: later containers wait. Re-submitting n (a fresh
 * copy from the sender) or calling retry() tries again.
 *
 * Crash recovery (open): the LMDB applied pointer is the single source of
 * truth; T_n is done iff n <= lastContainer, and a committed n is never
 * redone. For the next n:
 *   - *.tmp files in history/ are deleted: a half-made copy, or a BILFC_n
 *     that was never sealed (the replica was not touched yet);
 *   - if history/ailfc-n.lfc exists it is processed again right away. If a
 *     sealed bilfc-n.lfc exists, the replica may be partly updated: it is
 *     verified (checksums, and that it holds exactly the blocks AILFC_n
 *     touches) and reused, and step 2 redone from BILFC_n + AILFC_n, which is
 *     idempotent since the final blocks depend on those two files only.
 *     Otherwise from step 1.
 *     (history/ailfc-n.lfc may also be there because it was prefetched
 *     while T_{n-1} was applied: it is a copy of what the sender submitted,
 *     so finishing it is equally right.)
 * Stray files of committed transactions are harmless (tmp ones are removed).
 *
 * About 700 lines: the apply pipeline, its crash recovery and the retry of a
 * container that failed for space are one
 * ordered state machine. The read side is history.ts, verification
 * verify-history.ts, the history copy history-copy.ts.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from '../util/fsync-dir';
import Piscina from 'piscina';
import { verifyContainer } from '../lfc';
import type { ApplyOk, ApplyTask, BilfcOk, BilfcTask, Failure, SyncOk, SyncTask, VerifyOk, VerifyTask, WorkerVolume } from './apply-worker';
import { ManagerCatalog, type VolumeEntry } from './catalog';
import { crashPoint } from './crash-hook';
import { IndexCommitError, isOutOfSpace } from './errors';
import { takeCopy } from './history-copy';
import { WorkAhead, exists } from './work-ahead';
import { verifyHistory, type HistoryCheck } from './verify-history';
import { HistoryReader } from './history';
import { DamageRegistry, inheritedMarks } from './damage';
import { scrubGroup, type ScrubOptions, type ScrubReport } from './scrub';
import { Fader, type FadeOptions, type FadeReport } from './retention';
import { CorruptContainerError, type CommitInfo, type ManagedVolume, type SealedContainerRef, type TransactionRecord } from './types';
import { SILENT_LOGGER, type Logger } from '../util/logger';

export type { HistoryCheck } from './verify-history';

export interface BackupManagerOptions {
  groupId: number;
  volumes: ManagedVolume[];
  /** Block size of BILFCs and of the block index (default 4096). Fixed at creation. */
  blockSize?: number;
  /** piscina maxThreads (default 2). */
  workers?: number;
  logger?: Logger;
  /** The first containerId of the group (default 1). Fixed at creation. */
  firstContainer?: number;
  /** Bytes of final blocks a worker holds at once while applying (default 16 MiB). */
  batchBytes?: number;
  /** Take history copies by hard link when possible (default true); false always copies. */
  linkHistory?: boolean;
  /**
   * The super-transaction tag of AILFC_n when its ref carries none (crash
   * recovery finishes T_n from history/ without the sender's ref): the
   * remote link keeps the tags it received (src/link/server.ts).
   */
  superTagOf?: (n: number) => TransactionRecord['superTransaction'];
}

export interface ManagerStatus {
  /** Highest committed containerId (0 = none). */
  lastContainer: number;
  lastSeq: number;
  lastTime: number;
  /** Submitted containers waiting (not counting the one being applied). */
  queued: number;
  /** The container being processed, if any. */
  applying: number | null;
  /** Committed transactions in the catalog. */
  transactions: number;
  /** Set when the group stopped at a container that failed. */
  blocked: { n: number; error: string } | null;
  /** Set while the manager's disk is full: T_n waits and is retried (nothing is lost). */
  stalled: { n: number; error: string; since: string } | null;
}

interface Waiter {
  resolve(c: CommitInfo): void;
  reject(e: Error): void;
}

interface Pending {
  ref: SealedContainerRef;
  waiters: Waiter[];
}

export class BackupManager {
  private readonly events = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  private readonly volumes = new Map<number, VolumeEntry>();
  /** The read side: time travel, diffs, restores and retention read history through it. */
  readonly history: HistoryReader;
  private running: Promise<void> | null = null;
  private applyingN: number | null = null;
  private blocked: { n: number; error: Error; ref: SealedContainerRef | null } | null = null;
  /** The manager's disk is full: T_n waits and is tried again (see stall()). */
  private stalled: { n: number; error: string; since: number; retryMs: number } | null = null;
  /** Commits of the index that failed in a row (IndexCommitError). */
  private indexFailures = 0;
  private stallTimer: NodeJS.Timeout | null = null;
  /** T_n's apply has touched the replica: readers must keep going to BILFC_n until it is committed. */
  private replicaTouched = false;
  /** AILFC_n+1 verified and BILFC_n+1 built while T_n is in progress. */
  private readonly ahead: WorkAhead;
  private closed = false;
  readonly groupId: number;
  readonly blockSize: number;
  readonly historyDir: string;
  readonly replicaDir: string;

  private constructor(
    readonly dir: string,
    private readonly catalog: ManagerCatalog,
    private readonly pool: Piscina,
    private readonly log: Logger,
    private readonly opts: BackupManagerOptions,
    blockSize: number,
  ) {
    this.groupId = opts.groupId;
    this.blockSize = blockSize;
    this.historyDir = path.join(dir, 'history');
    this.replicaDir = path.join(dir, 'replica');
    this.ahead = new WorkAhead({
      pool,
      historyDir: this.historyDir,
      linkHistory: opts.linkHistory !== false,
      historyPath: (kind, n) => this.history.historyPath(kind, n),
      queued: (n) => this.pending.get(n)?.ref,
      verifyTask: (n) => this.verifyTask(n),
      bilfcTask: (n, ver, bilfcExists) => this.bilfcTask(n, ver, bilfcExists),
      closed: () => this.closed,
    });
    this.history = new HistoryReader(
      catalog,
      blockSize,
      this.historyDir,
      this.replicaDir,
      this.volumes,
      (k, overlay) => this.retention.checkPin(k, overlay),
      new DamageRegistry(catalog),
    );
  }

  /**
   * Opens (creating) <dir>: replica/vol-<id>.raw, history/, index (LMDB).
   * Runs crash recovery before resolving.
   */
  static async open(dir: string, opts: BackupManagerOptions): Promise<BackupManager> {
    const log = opts.logger ?? SILENT_LOGGER;
    await fs.promises.mkdir(path.join(dir, 'replica'), { recursive: true });
    await fs.promises.mkdir(path.join(dir, 'history'), { recursive: true });
    const catalog = ManagerCatalog.open(dir);
    let pool: Piscina | null = null;
    try {
      let config = catalog.config();
      if (!config) {
        const blockSize = opts.blockSize ?? 4096;
        if (!Number.isInteger(blockSize) || blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) {
          throw new RangeError(`block size ${blockSize}: must be a power of two, at least 512`);
        }
        config = { groupId: opts.groupId, blockSize, firstContainer: opts.firstContainer ?? 1, created: Date.now() };
        await catalog.setConfig(config);
      }
      if (config.groupId !== opts.groupId) {
        throw new Error(`${dir} belongs to group ${config.groupId}, not ${opts.groupId}`);
      }
      if (opts.blockSize !== undefined && opts.blockSize !== config.blockSize) {
        throw new Error(`${dir} was created with block size ${config.blockSize}, not ${opts.blockSize}`);
      }
      const maxThreads = Math.max(1, opts.workers ?? 2);
      pool = new Piscina({
        filename: path.join(__dirname, 'apply-worker.js'),
        maxThreads,
        minThreads: 1,
        idleTimeout: 30_000,
      });
      const m = new BackupManager(dir, catalog, pool, log, opts, config.blockSize);
      for (const v of catalog.volumes()) m.volumes.set(v.volumeId, v);
      m.history.rebuild();
      for (const v of opts.volumes) await m.addVolume(v);
      await m.recover();
      await m.retention.recover();
      return m;
    } catch (err) {
      if (pool) await pool.destroy();
      await catalog.close();
      throw err;
    }
  }

  // --- volumes -----------------------------------------------------------------

  replicaPath(volumeId: number): string {
    return this.history.replicaPath(volumeId);
  }

  /** Adds a volume to the group (a no-op if it is there with the same size). */
  async addVolume(v: ManagedVolume): Promise<void> {
    if (!Number.isInteger(v.volumeId) || v.volumeId < 0 || v.volumeId > 0xffff) {
      throw new RangeError(`volume id ${v.volumeId}: must be an integer in 0..65535`);
    }
    if (!Number.isSafeInteger(v.size) || v.size <= 0) throw new RangeError(`volume ${v.volumeId}: bad size ${v.size}`);
    const have = this.volumes.get(v.volumeId) ?? this.catalog.volume(v.volumeId);
    const file = this.replicaPath(v.volumeId);
    if (have) {
      if (have.size !== v.size) {
        throw new Error(`volume ${v.volumeId} (${have.name}) has size ${have.size}, not ${v.size}`);
      }
      const st = await fs.promises.stat(file).catch(() => null);
      if (!st) throw new Error(`replicated image ${file} of volume ${v.volumeId} is missing`);
      if (st.size !== v.size) throw new Error(`replicated image ${file} is ${st.size} bytes, volume ${v.volumeId} has ${v.size}`);
      this.volumes.set(v.volumeId, have);
      return;
    }
    // New: create the sparse image (or accept one a crash left behind), make it durable, then record it.
    const fh = await fs.promises.open(file, 'a+');
    try {
      const st = await fh.stat();
      if (st.size !== 0 && st.size !== v.size)
        throw new Error(`replicated image ${file} exists with ${st.size} bytes, volume ${v.volumeId} has ${v.size}`);
      await fh.truncate(v.size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsyncDir(this.replicaDir);
    const entry: VolumeEntry = {
      volumeId: v.volumeId,
      name: v.name,
      size: v.size,
      added: Date.now(),
      sinceContainer: this.catalog.applied().lastContainer,
    };
    await this.catalog.putVolume(entry);
    this.volumes.set(v.volumeId, entry);
    this.log.info({ volumeId: v.volumeId, name: v.name, size: v.size }, 'volume added to the group');
  }

  // --- submit and the apply loop -------------------------------------------------

  on(event: 'commit', cb: (c: CommitInfo) => void): void;
  on(event: 'blocked', cb: (b: { n: number; error: Error }) => void): void;
  /** The manager's disk is full: applying waits (stalled), and goes on by itself once there is room (resumed). */
  on(event: 'stalled', cb: (s: { n: number; error: string }) => void): void;
  on(event: 'resumed', cb: (s: { n: number }) => void): void;
  on(event: string, cb: (...args: never[]) => void): void {
    this.events.on(event, cb as (...args: unknown[]) => void);
  }

  /**
   * Receives a sealed AILFC. Resolves when T_n is committed (at once, with
   * the stored CommitInfo, for an n already committed). Containers are
   * applied strictly in containerId order; a later one waits for the ones
   * before it.
   */
  submit(ref: SealedContainerRef): Promise<CommitInfo> {
    if (this.closed) return Promise.reject(new Error('backup manager is closed'));
    if (ref.groupId !== this.groupId) {
      return Promise.reject(
        new Error(`AILFC_${ref.containerId} belongs to group ${ref.groupId}, this manager serves group ${this.groupId}`),
      );
    }
    const n = ref.containerId;
    if (!Number.isSafeInteger(n) || n < 1) return Promise.reject(new RangeError(`bad container id ${n}`));
    const next = this.catalog.nextContainer();
    if (n < next) {
      const faded = this.retention.fadedCommit(n);
      if (faded) return Promise.resolve(faded);
      const rec = this.catalog.transaction(n);
      if (!rec)
        return Promise.reject(new Error(`AILFC_${n} precedes this group's first container ${this.catalog.config()!.firstContainer}`));
      if (rec.ailfc.bodyCrc !== ref.footer.bodyCrc || rec.ailfc.recordCount !== ref.footer.recordCount) {
        return Promise.reject(
          new Error(
            `AILFC_${n} was committed with ${rec.ailfc.recordCount} records (body CRC ${rec.ailfc.bodyCrc}); the resent one has ${ref.footer.recordCount} (CRC ${ref.footer.bodyCrc})`,
          ),
        );
      }
      this.log.debug({ container: n }, 'resend of a committed container: nothing to apply');
      return Promise.resolve(commitInfo(rec));
    }
    return new Promise<CommitInfo>((resolve, reject) => {
      let p = this.pending.get(n);
      if (!p) {
        p = { ref, waiters: [] };
        this.pending.set(n, p);
      } else if (this.applyingN !== n) {
        p.ref = ref; // newest copy wins until processing starts
      }
      p.waiters.push({ resolve, reject });
      if (this.blocked && this.blocked.n === n) {
        this.log.info({ container: n }, 'container resubmitted: retrying the blocked group');
        this.blocked = null;
      }
      this.kick();
    });
  }

  /** Retries a blocked group with the last copy of the failed container. */
  retry(): void {
    if (!this.blocked) return;
    const { n, ref } = this.blocked;
    this.blocked = null;
    if (ref && !this.pending.has(n)) this.pending.set(n, { ref, waiters: [] });
    this.kick();
  }

  private kick(): void {
    if (this.running || this.closed || this.stallTimer) return;
    this.running = this.drive().finally(() => {
      this.running = null;
      if (!this.closed && !this.blocked && this.pending.has(this.catalog.nextContainer())) this.kick();
    });
  }

  private async drive(): Promise<void> {
    while (!this.closed && !this.blocked) {
      const n = this.catalog.nextContainer();
      const p = this.pending.get(n);
      if (!p) return;
      this.applyingN = n;
      try {
        const info = await this.process(n, p.ref);
        this.indexFailures = 0;
        this.pending.delete(n);
        if (this.stalled) this.resumeFromStall(n);
        for (const w of p.waiters) w.resolve(info);
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        if (e instanceof IndexCommitError && !this.closed && ++this.indexFailures >= 2) {
          // Failed again: LMDB's in-memory state may be what fails; a fresh environment re-reads it.
          this.log.warn({ container: n, failures: this.indexFailures }, "reopening the backup manager's index");
          await this.catalog
            .reopen()
            .catch((re: Error) => this.log.error({ err: re.message }, "the backup manager's index did not reopen"));
        }
        if ((isOutOfSpace(e) || e instanceof IndexCommitError) && !this.closed) {
          // Not the container's fault: it waits (its submit stays pending) and is tried again.
          await this.stall(n, e);
          return;
        }
        this.pending.delete(n);
        this.blocked = { n, error: e, ref: p.ref };
        this.log.error({ container: n, err: e.message }, 'container not applied; the group waits until it is resubmitted');
        for (const w of p.waiters) w.reject(e);
        this.emitSafe('blocked', { n, error: e });
      } finally {
        this.applyingN = null;
        // A stalled apply may have written part of the replica: readers keep reading BILFC_n for its blocks.
        if (!(this.stalled && this.replicaTouched)) this.history.abortApply();
      }
    }
  }

  /**
   * The manager's disk (history, replica or index) is full, or its index
   * refused a commit (IndexCommitError). T_n is tried again, every second
   * at first and at most every 10 s, until it goes through:
   * the redo is the crash-recovery path (a sealed BILFC_n is reused, the
   * apply from BILFC_n + AILFC_n is idempotent), so nothing is applied
   * twice and nothing is lost. Half-written files are removed to give the
   * space back. The 'stalled' event lets the intercept go degraded.
   */
  private async stall(n: number, err: Error): Promise<void> {
    const first = !this.stalled;
    const retryMs = first ? 1000 : Math.min(10_000, this.stalled!.retryMs * 2);
    this.stalled = { n, error: err.message, since: this.stalled?.since ?? Date.now(), retryMs };
    for (const f of await fs.promises.readdir(this.historyDir).catch(() => [] as string[])) {
      if (f.endsWith('.tmp')) await fs.promises.rm(path.join(this.historyDir, f), { force: true }).catch(() => undefined);
    }
    if (first) {
      this.log.error(
        { container: n, err: err.message },
        isOutOfSpace(err)
          ? "the backup manager's disk is full: the container waits and is retried until there is space"
          : "the backup manager's index did not commit: the container waits and is retried",
      );
      this.emitSafe('stalled', { n, error: err.message });
    }
    this.stallTimer = setTimeout(() => {
      this.stallTimer = null;
      this.kick();
    }, retryMs);
    this.stallTimer.unref?.();
  }

  private resumeFromStall(n: number): void {
    const s = this.stalled!;
    this.stalled = null;
    this.log.info({ container: n, stalledMs: Date.now() - s.since, after: s.error }, 'the backup manager applies again');
    this.emitSafe('resumed', { n });
  }

  private emitSafe(event: string, arg: unknown): void {
    try {
      this.events.emit(event, arg);
    } catch (err) {
      this.log.warn({ event, err: (err as Error).message }, 'event listener threw');
    }
  }

  private workerVolumes(): WorkerVolume[] {
    return [...this.volumes.values()]
      .sort((a, b) => a.volumeId - b.volumeId)
      .map((v) => ({ volumeId: v.volumeId, size: v.size, replicaPath: this.replicaPath(v.volumeId) }));
  }

  /** The worker task that verifies the copy of AILFC_n in history. */
  private verifyTask(n: number): VerifyTask {
    return {
      op: 'verify',
      n,
      groupId: this.groupId,
      blockSize: this.blockSize,
      ailfcPath: this.history.historyPath('ailfc', n),
      volumes: this.workerVolumes(),
    };
  }

  private bilfcTask(n: number, ver: VerifyOk, bilfcExists: boolean): BilfcTask {
    return {
      op: 'bilfc',
      n,
      groupId: this.groupId,
      blockSize: this.blockSize,
      historyDir: this.historyDir,
      bilfcExists,
      volumes: this.workerVolumes(),
      runs: ver.runs,
      blocks: ver.blocks,
      bilfcSize: ver.bilfcSize,
    };
  }

  /** Processes AILFC_n (n is the next container); resolves once T_n is committed. */
  private async process(n: number, ref: SealedContainerRef): Promise<CommitInfo> {
    const t0 = Date.now();
    const ailfcPath = this.history.historyPath('ailfc', n);
    const bilfcPath = this.history.historyPath('bilfc', n);
    let ver: VerifyOk | Failure | null = await this.ahead.takeVerified(n, ref);
    await takeCopy(this.historyDir, this.opts.linkHistory !== false, ref.path, ailfcPath, n);
    crashPoint('copied', n);
    if (!ver) ver = (await this.pool.run(this.verifyTask(n))) as VerifyOk | Failure;
    if (!ver.ok) throw await this.failure(n, ver, ailfcPath, bilfcPath, await exists(bilfcPath));
    if (ver.footer.bodyCrc !== ref.footer.bodyCrc || ver.footer.recordCount !== ref.footer.recordCount) {
      throw new Error(
        `AILFC_${n}: the copy in history has ${ver.footer.recordCount} records (body CRC ${ver.footer.bodyCrc}), the submitted footer says ${ref.footer.recordCount} (CRC ${ref.footer.bodyCrc})`,
      );
    }
    this.ahead.verify(n + 1);

    let bil: BilfcOk | Failure | null = await this.ahead.takeBilfc(n, ref);
    let bilfcExists = true;
    if (!bil) {
      await fs.promises.rm(`${bilfcPath}.tmp`, { force: true });
      bilfcExists = await exists(bilfcPath);
      bil = (await this.pool.run(this.bilfcTask(n, ver, bilfcExists))) as BilfcOk | Failure;
    }
    if (!bil.ok) throw await this.failure(n, bil, ailfcPath, bilfcPath, bilfcExists);
    const t1 = Date.now();
    const prep = ver;

    // From here the replica changes: make readers of untouched-by-index
    // blocks go to BILFC_n, and let replica reads started before finish.
    await this.history.beginApply(n, prep.runs, bilfcPath);
    this.replicaTouched = true;

    const volumes = this.workerVolumes();
    const touched = [...new Set(prep.runs.map((r) => r.volumeId))];
    const batchBytes = this.opts.batchBytes ?? 16 << 20;
    const results = await Promise.all(
      touched.map((volumeId) => {
        const task: ApplyTask = {
          op: 'apply',
          n,
          blockSize: this.blockSize,
          ailfcPath,
          bilfcPath,
          volume: volumes.find((v) => v.volumeId === volumeId)!,
          table: prep.table,
          runs: prep.runs.filter((r) => r.volumeId === volumeId),
          batchBytes,
          sync: false,
        };
        return this.pool.run(task) as Promise<ApplyOk | Failure>;
      }),
    );
    let bytesApplied = 0;
    const applyTimings: Record<string, number> = {};
    for (const r of results) {
      if (!r.ok) throw await this.failure(n, r, ailfcPath, bilfcPath, true);
      bytesApplied += r.bytes;
      for (const [k, v] of Object.entries(r.timings)) applyTimings[k] = Math.max(applyTimings[k] ?? 0, v);
    }
    // The replica's writes become durable while BILFC_n+1 is built from it.
    this.ahead.buildBilfc(n + 1);
    const sync: SyncTask = { op: 'sync', paths: touched.map((v) => this.replicaPath(v)) };
    const synced = (await this.pool.run(sync)) as SyncOk;
    applyTimings.fdatasync = synced.timings.fdatasync ?? 0;
    crashPoint('apply-done', n);
    const t2 = Date.now();

    const rec: TransactionRecord = {
      n,
      groupId: this.groupId,
      firstSeq: prep.stats.firstSeq,
      lastSeq: prep.stats.lastSeq,
      firstTime: prep.stats.firstTime,
      lastTime: prep.stats.lastTime,
      records: prep.stats.records,
      errors: prep.stats.errors,
      ailfc: prep.ailfc,
      bilfc: bil.bilfc,
      blocks: prep.blocks,
      bytesApplied,
      volumes: touched,
      blockSize: this.blockSize,
      committedAt: Date.now(),
    };
    const tag = ref.superTransaction ?? this.opts.superTagOf?.(n);
    if (tag) rec.superTransaction = { ...tag };
    await this.history.damage.add(inheritedMarks(this.history.damage, n, prep.runs, bilfcPath));
    await this.catalog.commit(rec, prep.runs, this.blockSize);
    crashPoint('after-commit', n);
    this.catalog.resetReadTxn();
    this.history.endApply(n, prep.runs);
    this.replicaTouched = false;
    const info = commitInfo(rec);
    this.log.info(
      {
        container: n,
        records: rec.records,
        blocks: rec.blocks,
        bytesApplied,
        recovered: !bil.built,
        prepareMs: t1 - t0,
        applyMs: t2 - t1,
        commitMs: Date.now() - t2,
        prepare: { ...prep.timings, ...bil.timings },
        apply: applyTimings,
      },
      'transaction committed',
    );
    this.emitSafe('commit', info);
    return info;
  }

  /** Turns a worker failure into the error submit rejects with; moves a corrupt AILFC copy aside. */
  private async failure(n: number, f: Failure, ailfcPath: string, bilfcPath: string, bilfcExists: boolean): Promise<Error> {
    const file = f.container === 'ailfc' ? ailfcPath : bilfcPath;
    if (f.container === 'ailfc' && f.reason === 'corrupt') {
      // Keep it for inspection, out of the way of a fresh copy.
      const rejected = path.join(this.historyDir, 'rejected');
      await fs.promises.mkdir(rejected, { recursive: true });
      const dest = path.join(rejected, `${path.basename(ailfcPath)}.${Date.now()}`);
      await fs.promises.rename(ailfcPath, dest).catch(() => undefined);
      this.log.error({ container: n, offset: f.offset, problem: f.problem, movedTo: dest }, 'corrupt AILFC rejected');
    } else if (f.container === 'bilfc') {
      this.log.error(
        { container: n, offset: f.offset, problem: f.problem, replicaMayBePartlyApplied: bilfcExists },
        'BILFC unusable: T_n cannot be completed from local data',
      );
    }
    if (f.reason === 'corrupt') return new CorruptContainerError(f.container, n, file, f.offset, f.problem);
    const e = new Error(`AILFC_${n} (${file}) cannot be applied: ${f.problem}`);
    (e as Error & { offset?: number }).offset = f.offset;
    return e;
  }

  /** Crash recovery: remove half-made files, then finish the next transaction if its AILFC is here. */
  private async recover(): Promise<void> {
    for (const name of await fs.promises.readdir(this.historyDir)) {
      if (name.endsWith('.tmp')) {
        await fs.promises.rm(path.join(this.historyDir, name), { force: true });
        this.log.info({ file: name }, 'removed a half-made history file');
      }
    }
    const n = this.catalog.nextContainer();
    const ailfcPath = this.history.historyPath('ailfc', n);
    if (!(await exists(ailfcPath))) return;
    const footer = await verifyContainer(ailfcPath);
    const bilfc = await exists(this.history.historyPath('bilfc', n));
    this.log.info({ container: n, bilfcSealed: bilfc }, 'finishing a transaction interrupted by a crash');
    if (!footer.ok) {
      // Cannot finish without a good AILFC: move it aside and block until it is resent.
      const err = await this.failure(
        n,
        { ok: false, reason: 'corrupt', container: 'ailfc', offset: footer.offset, problem: footer.problem },
        ailfcPath,
        this.history.historyPath('bilfc', n),
        bilfc,
      );
      this.blocked = { n, error: err, ref: null };
      return;
    }
    const ref: SealedContainerRef = { groupId: this.groupId, containerId: n, path: ailfcPath, footer: footer.footer };
    this.pending.set(n, { ref, waiters: [] });
    this.kick();
    await this.running;
    if (this.blocked) this.log.error({ container: n, err: this.blocked.error.message }, 'crash recovery could not finish the transaction');
  }

  // --- catalog queries -----------------------------------------------------------

  status(): ManagerStatus {
    const a = this.catalog.applied();
    let queued = this.pending.size;
    if (this.applyingN !== null && this.pending.has(this.applyingN)) queued--;
    return {
      lastContainer: a.lastContainer,
      lastSeq: a.lastSeq,
      lastTime: a.lastTime,
      queued,
      applying: this.applyingN,
      transactions: this.catalog.transactionCount(),
      blocked: this.blocked ? { n: this.blocked.n, error: this.blocked.error.message } : null,
      stalled: this.stalled ? { n: this.stalled.n, error: this.stalled.error, since: new Date(this.stalled.since).toISOString() } : null,
    };
  }

  transaction(n: number): TransactionRecord | undefined {
    return this.catalog.transaction(n);
  }

  transactions(opts?: { from?: number; to?: number; limit?: number }): TransactionRecord[] {
    return this.catalog.transactions(opts);
  }

  /** The committed transaction whose AILFC holds seq p. */
  transactionForSeq(p: number): number | undefined {
    return this.catalog.transactionForSeq(p);
  }

  /** The n of every committed transaction up to `to` (keys only: the console's timeline index syncs on it after a fade). */
  transactionNumbers(to?: number): number[] {
    return this.catalog.transactionNumbers(to);
  }

  /** When this history was created (ms): tells a history apart from an earlier one of the same group name. */
  createdAt(): number {
    return this.catalog.config()?.created ?? 0;
  }

  // --- retention (src/manager/retention.ts) -----------------------------------------

  private fader: Fader | null = null;

  /** The group's retention policy and fade-out. */
  get retention(): Fader {
    return (this.fader ??= new Fader({
      groupId: this.groupId,
      blockSize: this.blockSize,
      historyDir: this.historyDir,
      catalog: this.catalog,
      log: this.log,
      volumes: () => [...this.volumes.values()].map((v) => ({ volumeId: v.volumeId, size: v.size })),
      applying: () => this.applyingN,
      pinnedPoints: () => this.history.pins.points(),
      historyFile: (kind, n) => this.history.historyFile(kind, n),
      forgetFileNames: () => this.history.forgetFileNames(),
      forgetFile: (file) => this.history.forgetFile(file),
      committing: (on) => this.history.committing(on),
    }));
  }

  /** Fades history out by the stored policy (see Fader.fade). */
  fade(opts?: FadeOptions): Promise<FadeReport> {
    return this.retention.fade(opts);
  }

  // --- verification --------------------------------------------------------------

  /** Checks stored containers (see verify-history.ts); `full` re-reads those checked before. */
  verifyHistory(opts: { full?: boolean } = {}): Promise<HistoryCheck[]> {
    return verifyHistory(this.catalog, this.historyDir, opts);
  }

  /**
   * Scrubs the group's stored data: containers, and the replica against
   * the history (scrub.ts). Damage found refuses the reads that need it at
   * once. The report is kept as the index meta "scrub".
   */
  async scrub(opts: ScrubOptions): Promise<ScrubReport> {
    const r = await scrubGroup(
      {
        history: this.history,
        transactions: () => this.catalog.transactions(),
        volumes: () => [...this.volumes.values()],
      },
      { ...opts, aborted: () => this.closed || (opts.aborted?.() ?? false) },
    );
    if (!this.closed) await this.catalog.putMetaValue('scrub', { ...r, found: r.found.length });
    return r;
  }

  /** The last scrub's report (its findings counted), if any. */
  lastScrub(): (Omit<ScrubReport, 'found'> & { found: number }) | undefined {
    return this.catalog.metaValue('scrub');
  }

  /** Finishes the container being applied (later ones stay queued), then closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    await this.fader?.close();
    if (this.running) await this.running.catch(() => undefined);
    await this.ahead.drain();
    const err = new Error('backup manager closed before the container was applied');
    for (const p of this.pending.values()) for (const w of p.waiters) w.reject(err);
    this.pending.clear();
    await this.pool.destroy();
    this.history.close();
    await this.catalog.close();
  }
}

export function commitInfo(rec: TransactionRecord): CommitInfo {
  return {
    groupId: rec.groupId,
    containerId: rec.n,
    firstSeq: rec.firstSeq,
    lastSeq: rec.lastSeq,
    firstTime: rec.firstTime,
    lastTime: rec.lastTime,
    blocks: rec.blocks,
    bytesApplied: rec.bytesApplied,
  };
}
