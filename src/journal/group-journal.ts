/**
 * The journal of one consistency group: one sequence, one active AILFC,
 * one set of seal boundaries for every volume in the group (a volume that
 * is not in a named group is a group of one).
 *
 * - Sequence numbers are reserved when a write arrives (before the
 *   production write) and records reach the AILFC strictly in seq order: a
 *   record whose predecessors are not appended yet waits in a small reorder
 *   buffer. Every reserved seq ends as exactly one record (the write, or an
 *   error record if the production write failed).
 * - Sealing (by size, by age, or on command) switches appends to a spare
 *   container created ahead of time, so writes do not pause; the old one is
 *   sealed in the background and handed to the backup manager.
 * - When the manager commits T_n, the state-map bits of regions that no
 *   later write dirtied are cleared, and the local copy of AILFC_n is
 *   deleted (the manager keeps its own).
 * - If the journal itself fails (a full or failing journal disk), the group
 *   goes "degraded": production writes go on, the state maps go on
 *   tracking, nothing more is journaled.
 * - With a pool limit (poolBytes: a remote manager, see src/link/), the
 *   pool is the sealed containers waiting for the manager. The active
 *   container seals at the seal size or the pool size, whichever is
 *   smaller, and (by size or age) only when the pool has room for it; a
 *   commit that makes room seals it. A record that finds the active
 *   container full and no room for it in the pool puts the group in
 *   degraded mode of kind "pool" (the active container is sealed anyway,
 *   then only the state maps track writes). So a burst up to twice the pool
 *   never degrades a group whose link is up, however slowly the manager
 *   commits, and the journal holds at most the pool plus one active
 *   container (twice the pool). Once the pool has drained, beginSuper() resumes
 *   journaling: every container from there to endSuper() is tagged as part
 *   of one super transaction (001 [1168]-[1169]) that also stands for the
 *   writes never journaled (seqs from fromSeq on). Both states are kept in
 *   <dir>/super.json so a restart resumes them.
 *
 * Longer than most files (about 800 lines), on purpose: seq reservation,
 * ordered appends, sealing, the pool and degraded mode with its super
 * transactions change one state together and are read together. Crash
 * recovery of the directory is in recover.ts.
 */
import { recoverContainers } from './recover';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ContainerWriter, journalDirectIo, readRecords, type RecordInput } from '../lfc';
import { ContainerKind, FILE_HEADER_SIZE, FOOTER_SIZE, RECORD_HEADER_SIZE, RecordKind, containerFileName, type Footer } from '../lfc';
import type { CommitInfo, ManagerLink, SealedContainerRef } from './link';
import type { StateMap } from './state-map';
import { type Logger } from '../util/logger';
import { writeFileAtomicSync } from '../util/atomic-file';
import { JSON_FORMATS, jsonFormat } from '../util/format-version';

export type { SealedContainerRef, CommitInfo, ManagerLink } from './link';

export interface GroupJournalOptions {
  dir: string;
  groupId: number;
  link: ManagerLink;
  /** Seal when the active AILFC reaches this many bytes (default 64 MiB). */
  sealBytes?: number;
  /** Seal this long after the first record of a container (default 2000 ms). */
  sealAgeMs?: number;
  blockSize?: number;
  /** The manager's committed position, so numbering continues after it. */
  committedContainer: number;
  committedSeq: number;
  logger: Logger;
  /** Space limit of the local pool of LFCs (sealed, not yet committed, plus the active one); 0 or absent: none. */
  poolBytes?: number;
  /**
   * Append AILFC records with O_DIRECT (ContainerWriter's direct mode).
   * Default: off, unless the environment sets REWIND_JOURNAL_IO=direct.
   * Measured here it raised burst ingest by up to 40% in some runs and by
   * nothing in others, and it slowed the manager, which then reads AILFCs
   * and BILFCs from disk instead of the page cache: sustained throughput
   * (ingest until the manager has caught up) was 10-15% lower.
   */
  directIo?: boolean;
}

/** A super transaction: the containers from `id` to `lastContainer` (null: still open). */
export interface SuperRun {
  id: number;
  fromSeq: number;
  /** When its degraded stretch began (ms): the time of the first write not journaled. */
  fromTime?: number;
  lastContainer: number | null;
  /**
   * The resync's progress (link/resync.ts): every region dirty before this
   * (volume id, byte offset), in volume then offset order, has been
   * re-read into the run. Absent: none yet.
   */
  cursor?: { volumeId: number; offset: number };
  /**
   * Set when the pool overflowed again while the run was open: writes from
   * this seq on were not journaled, so regions before the cursor that they
   * dirtied are re-read too. Cleared once a pass has gone past the cursor
   * it resumed from.
   */
  redoFrom?: number;
}

export interface JournalDegraded {
  since: string;
  reason: string;
  /**
   * "journal": the journal disk failed; "pool": the LFC pool is full (link
   * down or slow); "manager": the backup manager cannot store what it is
   * sent (its disk is full). The last two are left by themselves, through
   * a super transaction, once everything buffered is committed.
   */
  kind?: 'journal' | 'pool' | 'manager';
  /** First seq not journaled (pool kind). */
  fromSeq?: number;
  /** When that write came (ms; pool kind). */
  fromTime?: number;
}

/** A journaled write as its record header says (no payload). */
export interface JournalRecordInfo {
  seq: number;
  time: number;
  kind: number;
  flags: number;
  volumeId: number;
  offset: number;
  length: number;
  /** The AILFC holding it: the transaction it becomes once the manager commits it. */
  containerId: number;
}

/** Where the journal stands right now (what a marker or "latest" means). */
export interface JournalPosition {
  /** The last write handed to the journal (every acknowledged write has a seq <= it), and its time. */
  seq: number;
  time: number;
  committedSeq: number;
  /**
   * A degraded stretch (or its resync) whose super transaction is not
   * committed yet. ("unreachable": set by a remote manager that cannot ask
   * the intercept: what came after its last report is unknown.)
   */
  open: { fromSeq: number; fromTime: number; state: 'degraded' | 'resync' | 'unreachable' } | null;
}

/** What to look up among journaled writes the manager has not committed yet. */
export type PendingQuery = { seq: number } | { ms: number };

const SUPER_FILE = 'super.json';

/** Degraded modes a super transaction ends (the journal itself is fine). */
function resyncable(d: JournalDegraded | null | undefined): d is JournalDegraded {
  return d?.kind === 'pool' || d?.kind === 'manager';
}

interface Parked {
  rec: RecordInput;
  payload: Buffer | null;
  resolve: () => void;
  reject: (e: unknown) => void;
}

const RESOLVED = Promise.resolve();

export interface JournalStatus {
  groupId: number;
  nextSeq: number;
  lastAppendedSeq: number;
  lastAppendedTime: number;
  /** Payload bytes journaled but not yet committed by the manager. */
  unappliedBytes: number;
  active: { containerId: number; bytes: number; records: number; firstSeq: number; lastSeq: number } | null;
  sealedPending: number[];
  committedContainer: number;
  committedSeq: number;
  committedTime: number;
  degraded: JournalDegraded | null;
  lastError: string | null;
  /** Bytes of the local pool in use (sealed uncommitted containers + the active one), and its limit (0: none). */
  poolBytes: number;
  poolLimit: number;
  superRun: SuperRun | null;
}

export class GroupJournal {
  readonly groupId: number;
  private readonly dir: string;
  private readonly link: ManagerLink;
  private readonly sealBytes: number;
  private readonly sealAgeMs: number;
  private readonly blockSize: number;
  private readonly directIo: boolean;
  private readonly log: Logger;

  private active!: ContainerWriter;
  private spare: Promise<ContainerWriter> | null = null;
  private nextContainer = 1;
  private nextSeq = 1;
  private nextAppend = 1;
  private readonly parked = new Map<number, Parked>();
  private ageTimer: NodeJS.Timeout | null = null;
  private sealing: Promise<unknown> = RESOLVED;
  private readonly pending = new Map<number, Promise<CommitInfo | null>>();
  private readonly pendingBytes = new Map<number, number>();
  private lastAppendedTime = 0;
  private readonly stateMaps = new Map<number, StateMap>();
  private committedContainer: number;
  private committedSeq: number;
  private committedTime = 0;
  private degraded: JournalDegraded | null = null;
  private readonly poolLimit: number;
  private readonly pendingFileBytes = new Map<number, number>();
  private superRun: SuperRun | null = null;
  private stateListeners: Array<(state: 'degraded' | 'drained' | 'normal') => void> = [];
  private lastError: string | null = null;
  /** A size or age seal waits for room in the pool; the next commit that makes room does it. */
  private sealDeferred = false;
  /** The last record appended (what "latest" names without reading the file). */
  private lastRecord: JournalRecordInfo | null = null;
  /** Containers switched out but not handed to the manager yet (being sealed): id -> active path. */
  private readonly sealingPaths = new Map<number, string>();
  private closed = false;
  private commitListeners: Array<(c: CommitInfo) => void> = [];

  private constructor(opts: GroupJournalOptions) {
    this.groupId = opts.groupId;
    this.dir = opts.dir;
    this.link = opts.link;
    this.sealBytes = opts.sealBytes ?? 64 * 1024 * 1024;
    this.sealAgeMs = opts.sealAgeMs ?? 2000;
    this.blockSize = opts.blockSize ?? 4096;
    this.directIo = opts.directIo ?? journalDirectIo();
    this.log = opts.logger;
    this.committedContainer = opts.committedContainer;
    this.committedSeq = opts.committedSeq;
    this.poolLimit = opts.poolBytes ?? 0;
  }

  /**
   * Open the group's journal directory, repairing what a crash left:
   * a torn tail in the active AILFC is truncated and the container sealed;
   * sealed containers not yet committed are handed to the manager again
   * (it ignores ones it has already committed).
   */
  static async open(opts: GroupJournalOptions): Promise<GroupJournal> {
    const j = new GroupJournal(opts);
    await fs.promises.mkdir(opts.dir, { recursive: true });
    await j.loadSuperState();
    const found = await recoverContainers(opts);
    const { maxContainer, maxSeq, toSubmit } = found;
    j.nextContainer = maxContainer + 1;
    j.nextSeq = maxSeq + 1;
    j.nextAppend = j.nextSeq;
    j.active = await j.createWriter(j.nextContainer++);
    j.spare = j.createWriter(j.nextContainer++);
    j.spare.catch(() => undefined);
    toSubmit.sort((a, b) => a.containerId - b.containerId);
    for (const ref of toSubmit) j.submit(ref);
    return j;
  }

  addStateMap(volumeId: number, map: StateMap): void {
    this.stateMaps.set(volumeId, map);
  }

  onCommit(cb: (c: CommitInfo) => void): void {
    this.commitListeners.push(cb);
  }

  /** Reserve the next sequence number (before the production write). */
  reserve(): number {
    return this.nextSeq++;
  }

  /**
   * Append the record for a reserved seq. Resolves when it is in the AILFC
   * (page cache). Records are written in seq order whatever the call order.
   * In degraded mode this resolves at once: nothing is journaled.
   */
  append(
    seq: number,
    kind: RecordKind,
    volumeId: number,
    offset: number,
    length: number,
    payload: Buffer | null,
    flags = 0,
  ): Promise<void> {
    const rec: RecordInput = { kind, flags, volumeId, seq, time: 0, offset, length };
    if (seq !== this.nextAppend) {
      return new Promise<void>((resolve, reject) => this.parked.set(seq, { rec, payload, resolve, reject }));
    }
    const p = this.write(rec, payload);
    this.nextAppend++;
    if (this.parked.size) this.drainParked();
    return p;
  }

  private drainParked(): void {
    let next: Parked | undefined;
    while ((next = this.parked.get(this.nextAppend))) {
      this.parked.delete(this.nextAppend);
      this.nextAppend++;
      this.write(next.rec, next.payload).then(next.resolve, next.reject);
    }
  }

  private write(rec: RecordInput, payload: Buffer | null): Promise<void> {
    if (this.closed) return RESOLVED;
    if (this.degraded) {
      // Not journaled, but written: the lag (recovery point) counts from it.
      if (resyncable(this.degraded)) this.lastAppendedTime = Date.now();
      return RESOLVED;
    }
    const w = this.active;
    let full = false;
    if (this.poolLimit > 0 && w.recordCount > 0 && w.size + RECORD_HEADER_SIZE + (payload?.length ?? 0) > this.sealAt) {
      // The active container is full: it goes to the pool if there is room (a
      // seal may still be switching containers: count it at most at its limit), else degrade.
      if (this.sealedBytes() + Math.min(w.size, this.sealAt) > this.poolLimit) {
        this.enterPoolDegraded(rec.seq);
        return RESOLVED;
      }
      full = true;
    }
    rec.time = this.lastAppendedTime = Date.now();
    this.lastRecord = {
      seq: rec.seq,
      time: rec.time,
      kind: rec.kind,
      flags: rec.flags ?? 0,
      volumeId: rec.volumeId,
      offset: rec.offset,
      length: rec.length,
      containerId: w.header.containerId,
    };
    const p = w.append(rec, payload).catch(this.onAppendError);
    if (w.recordCount === 1 && this.sealAgeMs > 0 && !this.ageTimer) {
      this.ageTimer = setTimeout(() => {
        this.ageTimer = null;
        void this.seal('age');
      }, this.sealAgeMs);
      this.ageTimer.unref?.();
    }
    if (full || w.size >= this.sealAt) void this.seal('size');
    return p;
  }

  /** Size at which the active container seals: the seal size, or the pool if that is smaller (every container fits in the pool). */
  private get sealAt(): number {
    return this.poolLimit > 0 ? Math.min(this.sealBytes, this.poolLimit) : this.sealBytes;
  }

  /** Bytes of sealed containers not yet committed: what the pool limit counts. */
  sealedBytes(): number {
    let n = 0;
    for (const b of this.pendingFileBytes.values()) n += b;
    return n;
  }

  private readonly onAppendError = (err: unknown): void => this.fail(err);

  /** The journal disk failed: keep serving, stop journaling, report it. */
  private fail(err: unknown): void {
    const reason = (err as Error)?.message ?? String(err);
    this.lastError = reason;
    if (!this.degraded) {
      this.degraded = { since: new Date().toISOString(), reason };
      this.log.error({ group: this.groupId, err: reason }, 'journal failed: volume group is degraded (state map only)');
    }
  }

  /** Bytes the journal holds: sealed containers not yet committed, plus the active one. */
  poolUsage(): number {
    let n = this.active ? this.active.size : 0;
    for (const b of this.pendingFileBytes.values()) n += b;
    return n;
  }

  /**
   * The pool is full: stop journaling (from seq `fromSeq` on) and keep only
   * the state maps; the active container is sealed so the buffered pool is
   * complete. Hosts see nothing.
   */
  private enterPoolDegraded(fromSeq: number, kind: 'pool' | 'manager' = 'pool', reason?: string): void {
    if (this.degraded) return;
    const now = Date.now();
    this.degraded = {
      since: new Date(now).toISOString(),
      reason:
        reason ??
        `the local pool of LFCs is full (${this.sealedBytes()} of ${this.poolLimit} bytes waiting for the manager, and the active container is full): tracking writes in the state map only`,
      kind,
      fromSeq,
      fromTime: now,
    };
    // Not journaled, but written: the write's time is the stretch's start.
    this.lastAppendedTime = now;
    this.log.warn(
      { group: this.groupId, fromSeq, poolBytes: this.poolUsage(), poolLimit: this.poolLimit },
      'LFC pool full: degraded mode (state map only)',
    );
    this.saveSuperState();
    void this.seal('degraded');
    for (const cb of this.stateListeners) cb('degraded');
  }

  /**
   * The backup manager cannot store containers now (its disk is full): stop
   * journaling from the next write on, as when the pool is full, so the
   * containers waiting for it stop growing; the super transaction after it
   * has caught up re-captures what changed meanwhile.
   */
  degradeForManager(reason: string): void {
    if (this.closed) return;
    this.enterPoolDegraded(
      this.nextAppend,
      'manager',
      `the backup manager cannot store containers (${reason}): tracking writes in the state map only`,
    );
  }

  get poolLimitBytes(): number {
    return this.poolLimit;
  }

  /** Sealed containers not yet committed. */
  get pendingCount(): number {
    return this.pending.size;
  }

  onStateChange(cb: (state: 'degraded' | 'drained' | 'normal') => void): void {
    this.stateListeners.push(cb);
  }

  /** Degraded because the pool filled, and everything buffered is committed: a super transaction can start. */
  get drained(): boolean {
    return resyncable(this.degraded) && this.pending.size === 0;
  }

  get superTransaction(): SuperRun | null {
    return this.superRun;
  }

  /**
   * Leave pool-degraded mode: journaling resumes, and every container from
   * the active one on belongs to a super transaction standing for the
   * writes from `fromSeq` on, until endSuper(). The caller then re-captures
   * the dirty regions (ProtectedVolume.resyncRange).
   */
  async beginSuper(): Promise<SuperRun> {
    const d = this.degraded;
    if (this.superRun && this.superRun.lastContainer === null) {
      // Degraded again while a super transaction was open: it goes on, from its first fromSeq;
      // what was written before its cursor while degraded is re-read (redoFrom).
      if (resyncable(d)) {
        const from = d.fromSeq ?? this.nextAppend;
        if (this.superRun.cursor) this.superRun.redoFrom = Math.min(this.superRun.redoFrom ?? Infinity, from);
        this.degraded = null;
        this.saveSuperState();
        this.log.info({ group: this.groupId, super: this.superRun }, 'journaling resumed: the open super transaction continues');
      }
      return this.superRun;
    }
    if (!d || !resyncable(d)) throw new Error('beginSuper: the journal is not in pool-degraded mode');
    await this.seal('super-start');
    await this.sealing;
    this.superRun = {
      id: this.active.header.containerId,
      fromSeq: d.fromSeq ?? this.nextAppend,
      fromTime: d.fromTime ?? Date.parse(d.since),
      lastContainer: null,
    };
    this.degraded = null;
    this.saveSuperState();
    this.log.info({ group: this.groupId, super: this.superRun }, 'journaling resumed: super transaction started');
    return this.superRun;
  }

  /**
   * Records the resync's progress in the open run (persisted: super.json).
   * `redone`: the pass went past the cursor it resumed from, so the regions
   * an earlier overflow left to re-read are done.
   */
  setResyncCursor(cursor: { volumeId: number; offset: number }, redone: boolean): void {
    const r = this.superRun;
    if (!r || r.lastContainer !== null) return;
    r.cursor = cursor;
    if (redone) delete r.redoFrom;
    this.saveSuperState();
  }

  /**
   * Close the super transaction after the resync: the active container is
   * sealed as its last one. Resolves once that container is committed.
   */
  async endSuper(): Promise<void> {
    const run = this.superRun;
    if (!run) return;
    if (run.lastContainer === null) {
      await this.seal('super-end');
      await this.sealing;
      // Degraded again meanwhile: the run stays open, a later resync ends it.
      if (run.lastContainer === null) return;
      this.log.info({ group: this.groupId, super: run }, 'super transaction sealed');
    }
    const last = this.pending.get(run.lastContainer);
    if (last) await last;
    if (this.superRun === run && this.committedContainer >= run.lastContainer) {
      this.superRun = null;
      this.saveSuperState();
      for (const cb of this.stateListeners) cb('normal');
    }
  }

  /**
   * The highest seq whose commit may clear state-map bits. Writes from the
   * degraded stretch were never journaled but have lower seqs than the
   * records journaled after it: until the super transaction's last container
   * is committed, no region dirtied from its fromSeq on may be cleared.
   */
  private clearCap(): number {
    let cap = Infinity;
    if (resyncable(this.degraded) && this.degraded.fromSeq !== undefined) cap = this.degraded.fromSeq - 1;
    const r = this.superRun;
    if (r && (r.lastContainer === null || this.committedContainer < r.lastContainer)) cap = Math.min(cap, r.fromSeq - 1);
    return cap;
  }

  private tagFor(containerId: number): SealedContainerRef['superTransaction'] {
    const r = this.superRun;
    if (!r || containerId < r.id || (r.lastContainer !== null && containerId > r.lastContainer)) return undefined;
    return {
      id: r.id,
      fromSeq: r.fromSeq,
      ...(r.fromTime !== undefined ? { fromTime: r.fromTime } : {}),
      last: r.lastContainer === containerId,
    };
  }

  private async loadSuperState(): Promise<void> {
    let raw: string;
    try {
      raw = await fs.promises.readFile(path.join(this.dir, SUPER_FILE), 'utf8');
    } catch {
      return;
    }
    let s: { degraded?: JournalDegraded; run?: SuperRun; format?: unknown };
    try {
      s = JSON.parse(raw) as typeof s;
    } catch (err) {
      // A torn file cannot be: it is replaced atomically. Dirty regions are re-captured at start-up anyway.
      this.log.error({ group: this.groupId, err: (err as Error).message }, `unreadable ${SUPER_FILE}: ignored`);
      return;
    }
    // Written by a newer Rewind: refused rather than misread (the stretch it records must not be lost).
    jsonFormat(s, 'the degraded and super-transaction state', path.join(this.dir, SUPER_FILE), JSON_FORMATS.superState);
    if (s.degraded && resyncable(s.degraded)) {
      this.degraded = s.degraded;
      this.log.warn({ group: this.groupId, degraded: s.degraded }, 'still degraded (LFC pool was full at the last stop)');
    }
    if (s.run) this.superRun = s.run;
  }

  /** Persist the pool-degraded state and the super run (tmp + fsync + rename). */
  private saveSuperState(): void {
    const file = path.join(this.dir, SUPER_FILE);
    const d = resyncable(this.degraded) ? this.degraded : undefined;
    try {
      if (!d && !this.superRun) {
        fs.rmSync(file, { force: true });
        return;
      }
      writeFileAtomicSync(file, JSON.stringify({ format: JSON_FORMATS.superState, degraded: d, run: this.superRun ?? undefined }));
    } catch (err) {
      this.log.error({ group: this.groupId, err: (err as Error).message }, `cannot write ${SUPER_FILE}`);
    }
  }

  /** Make every appended record durable (FLUSH / FUA). */
  async sync(): Promise<void> {
    if (this.degraded || this.closed) return;
    try {
      await this.active.sync();
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * Seal the active AILFC now (if it holds records) and hand it to the
   * manager. Resolves with the sealed container's id and the promise of its
   * commit, or null when there was nothing to seal.
   */
  seal(reason: string): Promise<{ containerId: number; committed: Promise<CommitInfo | null> } | null> {
    const run = this.sealing.then(() => this.doSeal(reason));
    this.sealing = run.catch(() => undefined);
    return run;
  }

  private async doSeal(reason: string): Promise<{ containerId: number; committed: Promise<CommitInfo | null> } | null> {
    if (this.closed || (this.degraded && !resyncable(this.degraded))) return null;
    // The end of a super transaction is sealed even if empty: its container carries the "last" tag.
    const superEnd = reason === 'super-end' && this.superRun !== null && this.superRun.lastContainer === null && !this.degraded;
    if (this.active.recordCount === 0 && !superEnd) return null;
    // Seals requested by size while an earlier one was switching containers
    // find a fresh, small active container: leave it alone.
    if (reason === 'size' && this.active.size < this.sealAt) return null;
    // Size and age seals wait for room in the pool (a commit will make it);
    // a container bigger than the pool still goes when the pool is empty.
    if ((reason === 'size' || reason === 'age' || reason === 'room') && this.poolLimit > 0 && !this.degraded) {
      const sealed = this.sealedBytes();
      if (sealed > 0 && sealed + this.active.size > this.poolLimit) {
        this.sealDeferred = true;
        return null;
      }
    }
    this.sealDeferred = false;
    if (this.ageTimer) {
      clearTimeout(this.ageTimer);
      this.ageTimer = null;
    }
    let next: ContainerWriter;
    try {
      next = await this.spare!;
    } catch (err) {
      this.fail(err);
      return null;
    }
    // Switch: records from here on go to the new container.
    const old = this.active;
    if (superEnd && this.superRun && this.superRun.lastContainer === null && !this.degraded) {
      this.superRun.lastContainer = old.header.containerId;
      this.saveSuperState();
    }
    this.active = next;
    this.sealingPaths.set(old.header.containerId, old.path);
    this.spare = this.createWriter(this.nextContainer++);
    this.spare.catch(() => undefined);
    if (this.active.recordCount > 0 && !this.ageTimer && this.sealAgeMs > 0) {
      this.ageTimer = setTimeout(() => {
        this.ageTimer = null;
        void this.seal('age');
      }, this.sealAgeMs);
      this.ageTimer.unref?.();
    }
    let sealed: { path: string; footer: Footer };
    try {
      sealed = await old.seal();
    } catch (err) {
      this.sealingPaths.delete(old.header.containerId);
      this.fail(err);
      return null;
    }
    this.log.debug({ group: this.groupId, container: old.header.containerId, reason, records: sealed.footer.recordCount }, 'sealed AILFC');
    const ref: SealedContainerRef = {
      groupId: this.groupId,
      containerId: old.header.containerId,
      path: sealed.path,
      footer: sealed.footer,
    };
    const committed = this.submit(ref);
    this.sealingPaths.delete(ref.containerId);
    return { containerId: ref.containerId, committed };
  }

  private submit(ref: SealedContainerRef): Promise<CommitInfo | null> {
    const tag = this.tagFor(ref.containerId);
    if (tag) ref.superTransaction = tag;
    this.pendingBytes.set(ref.containerId, ref.footer.payloadBytes);
    this.pendingFileBytes.set(
      ref.containerId,
      FILE_HEADER_SIZE + ref.footer.recordCount * RECORD_HEADER_SIZE + ref.footer.payloadBytes + FOOTER_SIZE,
    );
    const p = this.link.submit(ref).then(
      async (c) => {
        this.pending.delete(ref.containerId);
        this.pendingBytes.delete(ref.containerId);
        this.pendingFileBytes.delete(ref.containerId);
        if (c.containerId > this.committedContainer) {
          this.committedContainer = c.containerId;
          this.committedSeq = Math.max(this.committedSeq, c.lastSeq);
          this.committedTime = Math.max(this.committedTime, c.lastTime);
        }
        for (const m of this.stateMaps.values()) m.clearCommitted(Math.min(this.committedSeq, this.clearCap()));
        if (this.sealDeferred && this.sealedBytes() + this.active.size <= this.poolLimit) void this.seal('room');
        await fs.promises.rm(ref.path, { force: true });
        for (const cb of this.commitListeners) cb(c);
        if (this.drained) for (const cb of this.stateListeners) cb('drained');
        return c;
      },
      (err) => {
        this.pending.delete(ref.containerId);
        this.pendingFileBytes.delete(ref.containerId);
        if (this.closed) {
          // Shutting down: the sealed file stays and is handed over again at the next start.
          this.log.info({ group: this.groupId, container: ref.containerId }, 'AILFC left for the manager to apply at the next start');
          return null;
        }
        this.lastError = `container ${ref.containerId}: ${(err as Error)?.message ?? err}`;
        this.log.error({ group: this.groupId, container: ref.containerId, err: this.lastError }, 'manager refused container');
        return null;
      },
    );
    this.pending.set(ref.containerId, p);
    return p;
  }

  /**
   * Seal, then wait until the manager has committed everything sealed so far.
   * Containers sealed after this call (by the timer or size, while clients go
   * on writing) are not waited for: under steady writes there always is one
   * more, and waiting for "none pending" would never end.
   */
  async catchUp(): Promise<CommitInfo | null> {
    // Every record appended before this call is in the active container or
    // an earlier one.
    const bound = this.active.header.containerId;
    await this.seal('catch-up');
    const upTo = [...this.pending.entries()].filter(([n]) => n <= bound).sort((a, b) => a[0] - b[0]);
    let last: CommitInfo | null = null;
    for (const [, p] of upTo) last = (await p) ?? last;
    return last;
  }

  private async createWriter(n: number): Promise<ContainerWriter> {
    return ContainerWriter.create(this.dir, ContainerKind.AILFC, {
      groupId: this.groupId,
      containerId: n,
      blockSize: this.blockSize,
      direct: this.directIo,
    });
  }

  status(): JournalStatus {
    const a = this.active;
    return {
      groupId: this.groupId,
      nextSeq: this.nextSeq,
      lastAppendedSeq: this.nextAppend - 1,
      lastAppendedTime: this.lastAppendedTime,
      unappliedBytes: [...this.pendingBytes.values()].reduce((x, y) => x + y, 0) + (a ? a.payloadBytes : 0),
      active: a
        ? { containerId: a.header.containerId, bytes: a.size, records: a.recordCount, firstSeq: a.firstSeq, lastSeq: a.lastSeq }
        : null,
      sealedPending: [...this.pending.keys()].sort((x, y) => x - y),
      committedContainer: this.committedContainer,
      committedSeq: this.committedSeq,
      committedTime: this.committedTime,
      degraded: this.degraded,
      lastError: this.lastError,
      poolBytes: this.poolUsage(),
      poolLimit: this.poolLimit,
      superRun: this.superRun,
    };
  }

  /** Where the journal stands right now; see JournalPosition. */
  position(): JournalPosition {
    const d = this.degraded;
    const r = this.superRun;
    let open: JournalPosition['open'] = null;
    if (resyncable(d) && d.fromSeq !== undefined)
      open = { fromSeq: d.fromSeq, fromTime: d.fromTime ?? Date.parse(d.since), state: 'degraded' };
    else if (r && (r.lastContainer === null || this.committedContainer < r.lastContainer))
      open = { fromSeq: r.fromSeq, fromTime: r.fromTime ?? 0, state: 'resync' };
    return { seq: this.nextAppend - 1, time: this.lastAppendedTime, committedSeq: this.committedSeq, open };
  }

  /**
   * A journaled write the manager has not committed yet: the one with that
   * seq (or the last before it), or the last one at or before that time.
   * Reads record headers of the sealed containers waiting for the manager
   * and of the active one (as far as it is written), newest first; nothing
   * is sealed. Null when the answer lies in committed history (or is older
   * than every uncommitted write).
   */
  async findPending(q: PendingQuery): Promise<JournalRecordInfo | null> {
    const last = this.lastRecord;
    const hit = (r: { seq: number; time: number }): boolean => ('seq' in q ? r.seq <= q.seq : r.time <= q.ms);
    if (last && hit(last) && last.seq === this.nextAppend - 1) return last.seq > this.committedSeq ? last : null;
    const files: Array<{ id: number; paths: string[] }> = [];
    if (this.active)
      files.push({
        id: this.active.header.containerId,
        paths: [this.active.path, path.join(this.dir, containerFileName('ailfc', this.active.header.containerId))],
      });
    const sealedName = (id: number): string => path.join(this.dir, containerFileName('ailfc', id));
    const older = new Map<number, string[]>();
    for (const [id, p] of this.sealingPaths) older.set(id, [p, sealedName(id)]);
    for (const id of this.pending.keys()) older.set(id, [sealedName(id)]);
    for (const id of [...older.keys()].sort((a, b) => b - a)) files.push({ id, paths: older.get(id)! });
    for (const f of files) {
      let best: JournalRecordInfo | null = null;
      let read = false;
      for (const file of f.paths) {
        try {
          for await (const r of readRecords(file, { payloads: false })) {
            if (r.seq <= this.committedSeq || !hit(r)) continue;
            if (!best || r.seq > best.seq)
              best = {
                seq: r.seq,
                time: r.time,
                kind: r.kind,
                flags: r.flags,
                volumeId: r.volumeId,
                offset: r.offset,
                length: r.length,
                containerId: f.id,
              };
          }
          read = true;
          break;
        } catch (err) {
          // Renamed by a seal, or deleted after its commit: try its sealed name, or it is history now.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
      if (best) return best;
      if (!read) return null;
    }
    return null;
  }

  get isDegraded(): boolean {
    return this.degraded !== null;
  }

  /**
   * Stop journaling: records still parked are refused, the active AILFC is
   * sealed if it holds records (the next start hands it to the manager) or
   * deleted if empty, and the spare is removed.
   */
  async close(): Promise<void> {
    if (this.ageTimer) clearTimeout(this.ageTimer);
    this.ageTimer = null;
    await this.sealing;
    this.closed = true;
    for (const [seq, p] of this.parked) p.reject(new Error(`journal closed before seq ${seq} was appended`));
    this.parked.clear();
    const a = this.active;
    if (a.recordCount > 0 && (!this.degraded || resyncable(this.degraded))) await a.seal().catch((err) => this.fail(err));
    else {
      await a.close().catch(() => undefined);
      if (a.recordCount === 0) await fs.promises.rm(a.path, { force: true });
    }
    if (this.spare) {
      const s = await this.spare.catch(() => null);
      if (s) {
        await s.close().catch(() => undefined);
        await fs.promises.rm(s.path, { force: true });
      }
    }
  }

  get directory(): string {
    return path.resolve(this.dir);
  }
}
