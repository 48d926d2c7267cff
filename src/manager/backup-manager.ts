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
 *               still being applied (startPrefetch).
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
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from '../util/fsync-dir';
import { FdCache, preadFully } from '../util/fd-cache';
import { mapExtentsRaw } from '../native';
import Piscina from 'piscina';
import { verifyContainer } from '../lfc';
import { RECORD_FLAG_ZERO, RECORD_HEADER_SIZE, containerFileName, decodeRecordHeader } from '../lfc';
import type { ApplyOk, ApplyTask, BilfcOk, BilfcTask, Failure, VerifyOk, VerifyTask, WorkerVolume } from './apply-worker';
import { ManagerCatalog, type VolumeEntry } from './catalog';
import { crashPoint } from './crash-hook';
import { blockLength, unpackBeforeBlocks } from './plan';
import { Fader, type FadeOptions, type FadeReport } from './retention';
import {CorruptContainerError, type BlockRun, type CommitInfo, type ManagedVolume, type SealedContainerRef, type TransactionRecord} from './types';
import { SILENT_LOGGER, type Logger } from '../util/logger';


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
}

/** A history file whose content verifyHistory() checked, as it was then. */
interface VerifiedFile {
  size: number;
  bodyCrc: number;
}

export interface HistoryCheck {
  n: number;
  kind: 'ailfc' | 'bilfc';
  ok: boolean;
  offset?: number;
  problem?: string;
}

interface Waiter {
  resolve(c: CommitInfo): void;
  reject(e: Error): void;
}

interface Pending {
  ref: SealedContainerRef;
  waiters: Waiter[];
}

interface InFlight {
  n: number;
  runs: BlockRun[];
  bilfcPath: string;
}

/** history/ailfc-N.lfc, or ailfc-N.mA.lfc when retention merged T_A..T_N into T_N. */
const HISTORY_RE = /^(ailfc|bilfc)-(\d{16})(?:\.m\d{16})?\.lfc$/;

export class BackupManager {
  private readonly events = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  private readonly volumes = new Map<number, VolumeEntry>();
  /**
   * Per volume, per block: the last committed transaction that touched it
   * (0: none). A time-travel read of block b before T_k needs the block
   * index only if lastTouch[b] >= k; otherwise the replica (or the
   * transaction being applied) holds it. Built from the "runs" index at
   * open, updated in the same tick as each commit becomes visible.
   */
  private readonly lastTouch = new Map<number, Uint32Array>();
  private lastTouchReliable = true;
  private running: Promise<void> | null = null;
  private applyingN: number | null = null;
  private blocked: { n: number; error: Error; ref: SealedContainerRef | null } | null = null;
  private inflight: InFlight | null = null;
  private readonly replicaReads = new Set<Promise<unknown>>();
  private readonly prefetched = new Map<number, { ref: SealedContainerRef; result: Promise<VerifyOk | Failure> }>();
  private closed = false;
  /** Descriptors of history files and replicas for time-travel reads. */
  /** Shared with time-travel overlays, so retention can close a file's descriptor before deleting it. */
  readonly fds = new FdCache(256);
  /** Live pins: holder -> the first transaction it reads (T_k onward must stay). */
  private readonly pins = new Map<string, number>();
  private readonly overlayPins = new Map<string, number>();
  private readonly pinSources: Array<() => Array<{ holder: string; k: number; overlay: boolean }>> = [];
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
      m.buildLastTouch();
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
    return path.join(this.replicaDir, `vol-${volumeId}.raw`);
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
      if (st.size !== 0 && st.size !== v.size) throw new Error(`replicated image ${file} exists with ${st.size} bytes, volume ${v.volumeId} has ${v.size}`);
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
      return Promise.reject(new Error(`AILFC_${ref.containerId} belongs to group ${ref.groupId}, this manager serves group ${this.groupId}`));
    }
    const n = ref.containerId;
    if (!Number.isSafeInteger(n) || n < 1) return Promise.reject(new RangeError(`bad container id ${n}`));
    const next = this.catalog.nextContainer();
    if (n < next) {
      const faded = this.retention.fadedCommit(n);
      if (faded) return Promise.resolve(faded);
      const rec = this.catalog.transaction(n);
      if (!rec) return Promise.reject(new Error(`AILFC_${n} precedes this group's first container ${this.catalog.config()!.firstContainer}`));
      if (rec.ailfc.bodyCrc !== ref.footer.bodyCrc || rec.ailfc.recordCount !== ref.footer.recordCount) {
        return Promise.reject(
          new Error(`AILFC_${n} was committed with ${rec.ailfc.recordCount} records (body CRC ${rec.ailfc.bodyCrc}); the resent one has ${ref.footer.recordCount} (CRC ${ref.footer.bodyCrc})`),
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
    if (this.running || this.closed) return;
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
        this.pending.delete(n);
        for (const w of p.waiters) w.resolve(info);
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        this.pending.delete(n);
        this.blocked = { n, error: e, ref: p.ref };
        this.log.error({ container: n, err: e.message }, 'container not applied; the group waits until it is resubmitted');
        for (const w of p.waiters) w.reject(e);
        this.emitSafe('blocked', { n, error: e });
      } finally {
        this.applyingN = null;
        this.inflight = null;
      }
    }
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

  /** File names of committed transactions (a merge by retention may rename them); see historyFile. */
  private readonly fileNames = new Map<number, { ailfc: string; bilfc: string }>();

  /**
   * Path of T_n's stored container as the catalog records it (retention may
   * have merged T_n and written it under a new name). For an uncommitted n,
   * the default name. Call forgetFileNames() after changing records.
   */
  historyFile(kind: 'ailfc' | 'bilfc', n: number): string {
    let names = this.fadeCommitting ? undefined : this.fileNames.get(n);
    if (!names) {
      const rec = this.catalog.transaction(n);
      if (!rec) return this.historyPath(kind, n);
      names = { ailfc: rec.ailfc.file, bilfc: rec.bilfc.file };
      if (this.fileNames.size > 100_000) this.fileNames.clear();
      // While retention commits a merge, a name must come from the same index snapshot as its position.
      if (!this.fadeCommitting) this.fileNames.set(n, names);
    }
    return path.join(this.historyDir, names[kind]);
  }

  forgetFileNames(): void {
    this.fileNames.clear();
  }

  /** Set by retention around a merge's commit: historyFile() does not cache meanwhile. */
  private fadeCommitting = false;

  /** The default path of AILFC_n / BILFC_n (where the apply writes them). */
  historyPath(kind: 'ailfc' | 'bilfc', n: number): string {
    return path.join(this.historyDir, containerFileName(kind, n));
  }

  /** Processes AILFC_n (n is the next container); resolves once T_n is committed. */
  private verifyTask(n: number): VerifyTask {
    return { op: 'verify', n, groupId: this.groupId, blockSize: this.blockSize, ailfcPath: this.historyPath('ailfc', n), volumes: this.workerVolumes() };
  }

  /**
   * Starts step 0 and the verification of AILFC_n (n queued, not next yet)
   * in the background: it needs no replica, so it overlaps the apply of the
   * container before it.
   */
  private startPrefetch(n: number): void {
    const p = this.pending.get(n);
    if (!p || this.prefetched.has(n) || this.closed) return;
    const ref = p.ref;
    const result = (async () => {
      await this.takeCopy(ref.path, this.historyPath('ailfc', n), n);
      return (await this.pool.run(this.verifyTask(n))) as VerifyOk | Failure;
    })();
    result.catch(() => undefined);
    this.prefetched.set(n, { ref, result });
  }

  /** Processes AILFC_n (n is the next container); resolves once T_n is committed. */
  private async process(n: number, ref: SealedContainerRef): Promise<CommitInfo> {
    const t0 = Date.now();
    const ailfcPath = this.historyPath('ailfc', n);
    const bilfcPath = this.historyPath('bilfc', n);
    let ver: VerifyOk | Failure | null = null;
    const pre = this.prefetched.get(n);
    if (pre) {
      this.prefetched.delete(n);
      // Wait for it in any case (its copy must not race ours); use a success for the same ref.
      const r = await pre.result.catch(() => null);
      if (r && r.ok && pre.ref === ref) ver = r;
    }
    await this.takeCopy(ref.path, ailfcPath, n);
    crashPoint('copied', n);
    if (!ver) ver = (await this.pool.run(this.verifyTask(n))) as VerifyOk | Failure;
    if (!ver.ok) throw await this.failure(n, ver, ailfcPath, bilfcPath, await exists(bilfcPath));
    if (ver.footer.bodyCrc !== ref.footer.bodyCrc || ver.footer.recordCount !== ref.footer.recordCount) {
      throw new Error(
        `AILFC_${n}: the copy in history has ${ver.footer.recordCount} records (body CRC ${ver.footer.bodyCrc}), the submitted footer says ${ref.footer.recordCount} (CRC ${ref.footer.bodyCrc})`,
      );
    }
    this.startPrefetch(n + 1);

    await fs.promises.rm(`${bilfcPath}.tmp`, { force: true });
    const bilfcExists = await exists(bilfcPath);
    const volumes = this.workerVolumes();
    const bilfcTask: BilfcTask = {
      op: 'bilfc',
      n,
      groupId: this.groupId,
      blockSize: this.blockSize,
      historyDir: this.historyDir,
      bilfcExists,
      volumes,
      runs: ver.runs,
      blocks: ver.blocks,
      bilfcSize: ver.bilfcSize,
    };
    const bil = (await this.pool.run(bilfcTask)) as BilfcOk | Failure;
    if (!bil.ok) throw await this.failure(n, bil, ailfcPath, bilfcPath, bilfcExists);
    const t1 = Date.now();
    const prep = ver;

    // From here the replica changes: make readers of untouched-by-index
    // blocks go to BILFC_n, and let replica reads started before finish.
    this.inflight = { n, runs: prep.runs, bilfcPath };
    if (this.replicaReads.size) await Promise.allSettled([...this.replicaReads]);

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
    await this.catalog.commit(rec, prep.runs, this.blockSize);
    crashPoint('after-commit', n);
    this.catalog.resetReadTxn();
    this.noteTouched(n, prep.runs);
    this.inflight = null;
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

  /**
   * Makes history/ailfc-n.lfc the manager's own copy of the sender's file:
   * a hard link when possible, else tmp + fsync + rename. A copy already in
   * place (crash recovery) is kept if it is the same file or the sender's is
   * gone; otherwise it is replaced (the worker verifies whatever is used).
   */
  private async takeCopy(src: string, dest: string, n: number): Promise<void> {
    const srcAbs = path.resolve(src);
    if (srcAbs === path.resolve(dest)) return;
    const [ss, ds] = await Promise.all([fs.promises.stat(srcAbs).catch(() => null), fs.promises.stat(dest).catch(() => null)]);
    if (ds) {
      if (!ss || (ss.dev === ds.dev && ss.ino === ds.ino)) return;
      if (ss.size === ds.size && (await sameContent(srcAbs, dest))) return;
      await fs.promises.rm(dest, { force: true });
    }
    if (!ss) throw new Error(`AILFC_${n}: ${src} does not exist`);
    if (this.opts.linkHistory !== false) {
      try {
        await fs.promises.link(srcAbs, dest);
        await fsyncDir(this.historyDir);
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EMLINK') throw err;
      }
    }
    const tmp = `${dest}.tmp`;
    const from = await fs.promises.open(srcAbs, 'r');
    const to = await fs.promises.open(tmp, 'w');
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      let pos = 0;
      let crashed = false;
      for (;;) {
        const { bytesRead } = await from.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) break;
        await to.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
        if (!crashed && pos >= ss.size / 2) {
          crashed = true;
          crashPoint('copy-mid', n);
        }
      }
      await to.sync();
    } finally {
      await from.close();
      await to.close();
    }
    await fs.promises.rename(tmp, dest);
    await fsyncDir(this.historyDir);
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
    const ailfcPath = this.historyPath('ailfc', n);
    if (!(await exists(ailfcPath))) return;
    const footer = await verifyContainer(ailfcPath);
    const bilfc = await exists(this.historyPath('bilfc', n));
    this.log.info({ container: n, bilfcSealed: bilfc }, 'finishing a transaction interrupted by a crash');
    if (!footer.ok) {
      // Cannot finish without a good AILFC: move it aside and block until it is resent.
      const err = await this.failure(n, { ok: false, reason: 'corrupt', container: 'ailfc', offset: footer.offset, problem: footer.problem }, ailfcPath, this.historyPath('bilfc', n), bilfc);
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

  /** The LMDB catalog (read-only use: block index lookups for time travel). */
  get index(): ManagerCatalog {
    return this.catalog;
  }

  // --- time travel support -------------------------------------------------------

  /**
   * The content of block `blockIndex` of volume `volumeId` at T_{k-1}, i.e.
   * just before AILFC_k was applied (k = lastContainer + 1: the replica as it
   * is now). The image at seq p in AILFC_k is this, for every block,
   * overlaid with AILFC_k's records of seq <= p (history/ailfc-k.lfc).
   *
   * Lookup: the smallest committed m >= k that touched the block (one LMDB
   * range read) → its before-image in BILFC_m; else, if the transaction
   * being applied right now touches it, its before-image in that BILFC
   * (sealed before the replica is touched); else the replica, which no
   * transaction from k on has changed there. Replica reads are tracked, and
   * an apply waits for the ones that started before it, so a read never
   * sees a half-applied block.
   */
  readBlockBefore(volumeId: number, blockIndex: number, k: number): Promise<Buffer> {
    const v = this.volumes.get(volumeId);
    if (!v) return Promise.reject(new RangeError(`unknown volume ${volumeId}`));
    const nblocks = Math.ceil(v.size / this.blockSize);
    if (!Number.isInteger(blockIndex) || blockIndex < 0 || blockIndex >= nblocks) {
      return Promise.reject(new RangeError(`block ${blockIndex} is outside volume ${volumeId}`));
    }
    try {
      return this.readBefore(volumeId, blockIndex * this.blockSize, blockLength(blockIndex, this.blockSize, v.size), k);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private touchArray(volumeId: number): Uint32Array | undefined {
    let a = this.lastTouch.get(volumeId);
    if (!a) {
      const v = this.volumes.get(volumeId);
      if (!v) return undefined;
      a = new Uint32Array(Math.ceil(v.size / this.blockSize));
      this.lastTouch.set(volumeId, a);
    }
    return a;
  }

  /** Records that T_n touched these runs (for the time-travel fast path). */
  noteTouched(n: number, runs: Array<{ volumeId: number; start: number; count: number }>): void {
    for (const r of runs) {
      const a = this.touchArray(r.volumeId);
      if (!a) continue;
      for (let b = r.start; b < r.start + r.count && b < a.length; b++) if (a[b]! < n) a[b] = n;
    }
  }

  private buildLastTouch(): void {
    this.lastTouch.clear();
    this.lastTouchReliable = true;
    for (const rec of this.catalog.transactions()) {
      const runs = this.catalog.runs(rec.n);
      // A transaction committed without its runs (an older index): no fast path.
      if (rec.blocks > 0 && runs.length === 0) this.lastTouchReliable = false;
      this.noteTouched(rec.n, runs);
    }
  }

  /**
   * Where each block first..first+count-1 of volume `volumeId` was at
   * T_{k-1}: a BeforeBlock record (file, position) or the replica (file
   * null). Synchronous, so the caller can start replica reads in the same
   * tick (see readBefore).
   */
  private blockSources(volumeId: number, first: number, count: number, k: number): Array<{ file: string | null; position: number }> {
    const inf = this.inflight;
    const touched = this.lastTouchReliable ? this.lastTouch.get(volumeId) : undefined;
    const out = new Array<{ file: string | null; position: number }>(count);
    for (let i = 0; i < count; i++) {
      const b = first + i;
      // No committed transaction from k on touched b: skip the index lookup.
      const src = touched && touched[b]! < k ? undefined : this.catalog.beforeBlockSource(volumeId, b, k);
      if (src) {
        out[i] = { file: this.historyFile('bilfc', src.n), position: src.position };
        continue;
      }
      if (inf && inf.n >= k) {
        const pos = runPosition(inf.runs, volumeId, b, this.blockSize);
        if (pos !== undefined) {
          out[i] = { file: inf.bilfcPath, position: pos };
          continue;
        }
      }
      out[i] = { file: null, position: b * this.blockSize };
    }
    return out;
  }

  private checkRange(volumeId: number, offset: number, length: number, k: number): VolumeEntry {
    const v = this.volumes.get(volumeId);
    if (!v) throw new RangeError(`unknown volume ${volumeId}`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > v.size) {
      throw new RangeError(`range ${offset}+${length} is outside volume ${volumeId} (${v.size} bytes)`);
    }
    const first = this.catalog.config()!.firstContainer;
    const next = this.catalog.nextContainer();
    if (!Number.isInteger(k) || k < first || k > next) throw new RangeError(`T_${k - 1} is not available (transactions ${first}..${next - 1} are committed)`);
    return v;
  }

  /** Groups consecutive blocks whose sources are adjacent in one file. */
  private segments(srcs: Array<{ file: string | null; position: number }>): Array<{ i: number; count: number; file: string | null; position: number }> {
    const segs: Array<{ i: number; count: number; file: string | null; position: number }> = [];
    const stride = RECORD_HEADER_SIZE + this.blockSize;
    for (let i = 0; i < srcs.length; i++) {
      const s = srcs[i]!;
      const last = segs[segs.length - 1];
      if (last && last.file === s.file && s.position === last.position + last.count * (s.file === null ? this.blockSize : stride)) {
        last.count++;
      } else {
        segs.push({ i, count: 1, file: s.file, position: s.position });
      }
    }
    return segs;
  }

  /**
   * Bytes [offset, offset+length) of volume `volumeId` as they were at
   * T_{k-1} (k = lastContainer + 1: as the replica is now, yet stable while
   * later transactions are applied). Before-images are checked against
   * their CRCs. The same lookup as readBlockBefore, for a whole range, with
   * adjacent blocks read together and descriptors cached.
   */
  readBefore(volumeId: number, offset: number, length: number, k: number, into?: Buffer): Promise<Buffer> {
    const v = this.checkRange(volumeId, offset, length, k);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const count = last - first + 1;
    const out = into && into.length === length ? into : Buffer.allocUnsafe(length);
    const end = Math.min(v.size, (last + 1) * bs);
    const aligned = offset === first * bs && offset + length === end;
    const dest = aligned ? out : Buffer.allocUnsafe(end - first * bs);
    const srcs = this.blockSources(volumeId, first, count, k);
    const replicaFile = this.replicaPath(volumeId);
    const replicaReads: Promise<void>[] = [];
    const others: Promise<void>[] = [];
    for (const seg of this.segments(srcs)) {
      const at = seg.i * bs;
      const byteStart = (first + seg.i) * bs;
      const bytes = Math.min(v.size, byteStart + seg.count * bs) - byteStart;
      if (seg.file === null) {
        const fd = this.fds.acquire(replicaFile);
        replicaReads.push(preadFully(fd, dest, at, bytes, byteStart).finally(() => this.fds.release(replicaFile, fd)));
      } else {
        const file = seg.file;
        const fd = this.fds.acquire(file);
        const rawLen = seg.count * RECORD_HEADER_SIZE + bytes;
        const raw = Buffer.allocUnsafe(rawLen);
        others.push(
          preadFully(fd, raw, 0, rawLen, seg.position)
            .then(() => unpackBeforeBlocks(raw, seg.position, volumeId, first + seg.i, seg.count, bs, v.size, dest, at))
            .finally(() => this.fds.release(file, fd)),
        );
      }
    }
    if (replicaReads.length) this.trackReplicaRead(Promise.all(replicaReads));
    return Promise.all([...replicaReads, ...others]).then(() => {
      if (!aligned) dest.copy(out, 0, offset - first * bs, offset - first * bs + length);
      return out;
    });
  }

  /**
   * For blocks first..first+count-1 of the volume at T_{k-1}: 1 where the
   * block read as zero and held no data (a hole), 0 where it held data.
   * From the before-blocks' zero flag and the replica's holes.
   */
  zeroMapBefore(volumeId: number, first: number, count: number, k: number): Promise<Uint8Array> {
    const bs = this.blockSize;
    const size = this.volumes.get(volumeId)?.size ?? 0;
    const v = this.checkRange(volumeId, first * bs, Math.min(count * bs, size - first * bs), k);
    const map = new Uint8Array(count);
    const srcs = this.blockSources(volumeId, first, count, k);
    const replicaFile = this.replicaPath(volumeId);
    const replicaReads: Promise<void>[] = [];
    const others: Promise<void>[] = [];
    const stride = RECORD_HEADER_SIZE + bs;
    for (const seg of this.segments(srcs)) {
      const byteStart = (first + seg.i) * bs;
      const bytes = Math.min(v.size, byteStart + seg.count * bs) - byteStart;
      if (seg.file === null) {
        const fd = this.fds.acquire(replicaFile);
        replicaReads.push(
          mapExtentsRaw(fd, byteStart, bytes, v.size, 1 << 16)
            .then((raw) => {
              let pos = byteStart;
              for (let j = 0; j < raw.length && pos < byteStart + bytes; j += 2) {
                const len = raw[j]!;
                if (raw[j + 1] === 0) {
                  // A hole: every block wholly inside it reads as zero.
                  const holeEnd = pos + len;
                  for (let b = Math.ceil(pos / bs); Math.min((b + 1) * bs, v.size) <= holeEnd && b < first + seg.i + seg.count; b++) {
                    const idx = b - first;
                    if (idx >= seg.i) map[idx] = 1;
                  }
                }
                pos += len;
              }
            })
            .finally(() => this.fds.release(replicaFile, fd)),
        );
      } else {
        const file = seg.file;
        const fd = this.fds.acquire(file);
        const hdr = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
        others.push(
          (async () => {
            for (let j = 0; j < seg.count; j++) {
              const at = seg.position + j * stride;
              await preadFully(fd, hdr, 0, RECORD_HEADER_SIZE, at);
              const h = decodeRecordHeader(hdr, 0);
              if (typeof h === 'string') throw Object.assign(new Error(`${file}: before-block at ${at}: ${h}`), { code: 'EIO' });
              map[seg.i + j] = h.flags & RECORD_FLAG_ZERO ? 1 : 0;
            }
          })().finally(() => this.fds.release(file, fd)),
        );
      }
    }
    if (replicaReads.length) this.trackReplicaRead(Promise.all(replicaReads));
    return Promise.all([...replicaReads, ...others]).then(() => map);
  }

  private trackReplicaRead(p: Promise<unknown>): void {
    const tracked = p.catch(() => undefined);
    this.replicaReads.add(tracked);
    void tracked.finally(() => this.replicaReads.delete(tracked));
  }

  /**
   * The blocks of volume `volumeId` that T_k, T_{k+1}, ... (every committed
   * transaction from k on) touched, as sorted disjoint [start, count) runs.
   * What a restore to a point before T_k must rewrite.
   */
  changedSince(volumeId: number, k: number): Array<{ start: number; count: number }> {
    const marks: Array<[number, number]> = [];
    const last = this.catalog.applied().lastContainer;
    for (let n = Math.max(k, this.catalog.config()!.firstContainer); n <= last; n++) {
      for (const r of this.catalog.runs(n)) if (r.volumeId === volumeId) marks.push([r.start, r.count]);
    }
    marks.sort((a, b) => a[0] - b[0]);
    const out: Array<{ start: number; count: number }> = [];
    for (const [start, count] of marks) {
      const prev = out[out.length - 1];
      if (prev && start <= prev.start + prev.count) prev.count = Math.max(prev.count, start + count - prev.start);
      else out.push({ start, count });
    }
    return out;
  }

  /** Block runs T_n touched on one volume (index "runs"). */
  transactionRuns(n: number, volumeId: number): Array<{ start: number; count: number }> {
    return this.catalog.runs(n).filter((r) => r.volumeId === volumeId).map((r) => ({ start: r.start, count: r.count }));
  }

  /**
   * Pin a point for `holder` (a snapshot, clone, marker or running export):
   * the image before T_k, plus AILFC_k's records up to its seq when
   * `overlay`. Retention must keep that point readable: it may not merge
   * transactions across the boundary before T_k, nor merge T_k itself when
   * it is an overlay point. pinnedFrom() is the oldest pinned k.
   */
  pin(holder: string, k: number, overlay = false): void {
    this.retention.checkPin(k, overlay);
    this.pins.set(holder, k);
    if (overlay) this.overlayPins.set(holder, k);
    else this.overlayPins.delete(holder);
  }

  /** Every pinned point: boundary before T_k, and whether T_k must stay whole. */
  pinnedPoints(): Array<{ holder: string; k: number; overlay: boolean }> {
    const out = [...this.pins].map(([holder, k]) => ({ holder, k, overlay: this.overlayPins.get(holder) === k }));
    for (const src of this.pinSources) out.push(...src());
    return out;
  }

  /** Pins computed when asked (markers: many, cheap to resolve at that moment). */
  addPinSource(fn: () => Array<{ holder: string; k: number; overlay: boolean }>): void {
    this.pinSources.push(fn);
  }

  /** The pin of seq p: (k, overlay) as a point at p needs them, or null if p is not committed yet. */
  pinOfSeq(p: number): { k: number; overlay: boolean } | null {
    const n = this.catalog.transactionForSeq(p);
    if (n === undefined) return null;
    const rec = this.catalog.transaction(n)!;
    return p >= rec.lastSeq ? { k: n + 1, overlay: false } : { k: n, overlay: true };
  }

  unpin(holder: string): void {
    this.pins.delete(holder);
    this.overlayPins.delete(holder);
  }

  /** The first pinned transaction (everything from it on is pinned), or null. */
  pinnedFrom(): number | null {
    let min: number | null = null;
    for (const { k } of this.pinnedPoints()) if (min === null || k < min) min = k;
    return min;
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
      fds: this.fds,
      volumes: () => [...this.volumes.values()].map((v) => ({ volumeId: v.volumeId, size: v.size })),
      applying: () => this.applyingN,
      pinnedPoints: () => this.pinnedPoints(),
      historyFile: (kind, n) => this.historyFile(kind, n),
      forgetFileNames: () => this.forgetFileNames(),
      committing: (on) => {
        this.fadeCommitting = on;
        this.fileNames.clear();
      },
    }));
  }

  /** Fades history out by the stored policy (see Fader.fade). */
  fade(opts?: FadeOptions): Promise<FadeReport> {
    return this.retention.fade(opts);
  }

  // --- verification --------------------------------------------------------------

  /**
   * Checks stored containers in history/ (checksums, framing) and, for
   * committed transactions, against the size and body CRC in the catalog;
   * a committed transaction whose file is missing is reported too.
   *
   * A container whose content was checked once since it was written is not
   * read again (its size is still compared), so verify stays fast as
   * history grows: `full` re-reads everything (what a scrub does). The
   * record of checked files lives in the index meta ("verified").
   */
  async verifyHistory(opts: { full?: boolean } = {}): Promise<HistoryCheck[]> {
    const out: HistoryCheck[] = [];
    const seen = new Set<string>();
    const verified = new Map(Object.entries(this.catalog.metaValue<Record<string, VerifiedFile>>('verified') ?? {}));
    const names = (await fs.promises.readdir(this.historyDir)).filter((f) => HISTORY_RE.test(f)).sort();
    for (const name of names) {
      const m = HISTORY_RE.exec(name)!;
      const kind = m[1] as 'ailfc' | 'bilfc';
      const n = Number(m[2]);
      seen.add(name);
      const file = path.join(this.historyDir, name);
      const size = (await fs.promises.stat(file)).size;
      const rec = this.catalog.transaction(n);
      const want = rec?.[kind];
      const before = verified.get(name);
      if (!opts.full && before && before.size === size && (!want || (want.file === name && want.size === size && want.bodyCrc === before.bodyCrc))) {
        out.push({ n, kind, ok: true });
        continue;
      }
      verified.delete(name);
      const v = await verifyContainer(file);
      if (!v.ok) {
        out.push({ n, kind, ok: false, offset: v.offset, problem: v.problem });
        continue;
      }
      if (want && (want.file !== name || want.size !== size || want.bodyCrc !== v.footer.bodyCrc)) {
        out.push({ n, kind, ok: false, offset: -1, problem: `differs from the catalog: ${size} bytes, body CRC ${v.footer.bodyCrc}; catalog has ${want.size} bytes, CRC ${want.bodyCrc}` });
        continue;
      }
      // Only committed containers are remembered: an uncommitted one may still change.
      if (want) verified.set(name, { size, bodyCrc: v.footer.bodyCrc });
      out.push({ n, kind, ok: true });
    }
    for (const name of [...verified.keys()]) if (!seen.has(name)) verified.delete(name);
    await this.catalog.putMetaValue('verified', Object.fromEntries(verified));
    for (const rec of this.catalog.transactions()) {
      for (const kind of ['ailfc', 'bilfc'] as const) {
        if (!seen.has(rec[kind].file)) out.push({ n: rec.n, kind, ok: false, problem: `${rec[kind].file} is missing` });
      }
    }
    out.sort((a, b) => a.n - b.n || (a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : 0));
    return out;
  }

  /** Finishes the container being applied (later ones stay queued), then closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fader?.close();
    if (this.running) await this.running.catch(() => undefined);
    await Promise.allSettled([...this.prefetched.values()].map((p) => p.result));
    this.prefetched.clear();
    const err = new Error('backup manager closed before the container was applied');
    for (const p of this.pending.values()) for (const w of p.waiters) w.reject(err);
    this.pending.clear();
    await this.pool.destroy();
    this.fds.closeAll();
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

/** Position of (volumeId, block)'s BeforeBlock record in the BILFC described by `runs`, if it is there. */
export function runPosition(runs: BlockRun[], volumeId: number, block: number, blockSize: number): number | undefined {
  let a = 0;
  let z = runs.length - 1;
  while (a <= z) {
    const m = (a + z) >> 1;
    const r = runs[m]!;
    if (r.volumeId < volumeId || (r.volumeId === volumeId && r.start + r.count <= block)) a = m + 1;
    else if (r.volumeId > volumeId || r.start > block) z = m - 1;
    else return r.position + (block - r.start) * (RECORD_HEADER_SIZE + blockSize);
  }
  return undefined;
}

async function exists(p: string): Promise<boolean> {
  return fs.promises.access(p).then(
    () => true,
    () => false,
  );
}


async function sameContent(a: string, b: string): Promise<boolean> {
  const [fa, fb] = await Promise.all([fs.promises.open(a, 'r'), fs.promises.open(b, 'r')]);
  try {
    const ba = Buffer.allocUnsafe(1 << 20);
    const bb = Buffer.allocUnsafe(1 << 20);
    let pos = 0;
    for (;;) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length, pos), fb.read(bb, 0, bb.length, pos)]);
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (ra.bytesRead === 0) return true;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
      pos += ra.bytesRead;
    }
  } finally {
    await fa.close();
    await fb.close();
  }
}
