/**
 * The backup manager's LMDB environment, <dir>/index: the transaction
 * catalog and the block index for time travel. Every commit of a transaction
 * is ONE LMDB write transaction (and is awaited until flushed to disk).
 *
 * Sub-databases (keys use lmdb-js's ordered-binary encoding; array keys sort
 * element by element, numbers numerically):
 *
 *   meta      'format'  -> the layout's version (util/format-version.ts)
 *             'config'  -> { groupId, blockSize, firstContainer, created }
 *             'applied' -> { lastContainer, lastSeq, lastTime }
 *                          the applied pointer: T_1..T_lastContainer are
 *                          committed, and nothing else is. This is the single
 *                          source of truth for "is T_n done?".
 *   volumes   volumeId -> { volumeId, name, size, added, sinceContainer }
 *   txn       n -> TransactionRecord (see types.ts)
 *   seq       lastSeq -> n, for every T_n holding at least one record:
 *             the transaction holding seq p is the first entry with key >= p
 *   runs      n -> Float64Array [volumeId, start, count, position]*: the
 *             block runs T_n touched (BILFC_n's layout), so "what changed
 *             since T_k" is read per transaction, in proportion to the
 *             changes rather than to the volume or the whole history
 *   blocks    [volumeId, blockIndex, n] -> position (number)
 *             T_n touched block blockIndex of volume volumeId, and that
 *             block's before-image (its content at T_{n-1}) is the
 *             BeforeBlock record at byte `position` of BILFC_n.
 *
 * Time-travel lookup (what beforeBlockSource() does): the content of block b
 * of volume v at T_{k-1} (i.e. just before AILFC_k was applied) is
 *   - the before-image in BILFC_m where m = the smallest m >= k such that
 *     T_m touched (v, b): ONE range read, the first key >= [v, b, k] and
 *     < [v, b + 1];
 *   - else (no committed T_m, m >= k, touched it) the replicated image's
 *     block, which has not changed since T_{k-1} (but see
 *     BackupManager.readBlockBefore for the transaction being applied).
 * The image at seq p (inside AILFC_k, k = transactionForSeq(p)) is that,
 * overlaid with AILFC_k's records whose seq <= p.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { STORE_FORMATS, stampStore } from '../util/format-version';
import { IndexCommitError, isOutOfSpace } from './errors';
import type { BlockRun, TransactionRecord } from './types';

export interface ManagerConfig {
  groupId: number;
  blockSize: number;
  firstContainer: number;
  created: number;
}

export interface AppliedPointer {
  lastContainer: number;
  lastSeq: number;
  lastTime: number;
}

export interface VolumeEntry {
  volumeId: number;
  name: string;
  size: number;
  /** ms since the epoch. */
  added: number;
  /** lastContainer when the volume joined the group. */
  sinceContainer: number;
}

type BlockKey = [number, number, number];

export class ManagerCatalog {
  private closed = false;
  /** Cached meta values: only this process writes them (config once, applied at each commit). */
  private configCache: ManagerConfig | undefined;
  private appliedCache: AppliedPointer | undefined;

  // The environment and its databases; replaced together by reopen().
  root: RootDatabase;
  private meta: Database<unknown, string>;
  private vols: Database<VolumeEntry, number>;
  private txns: Database<TransactionRecord, number>;
  private seqs: Database<number, number>;
  private blocks: Database<number, BlockKey>;
  private txnRuns: Database<Buffer, number>;

  private constructor(private readonly where: string) {
    const root = open({ path: where, maxDbs: 8 });
    const meta = root.openDB<unknown, string>('meta', {});
    try {
      stampStore(meta, "the backup manager's index", where, STORE_FORMATS.managerIndex);
    } catch (err) {
      void root.close();
      throw err;
    }
    this.root = root;
    this.meta = meta;
    this.vols = root.openDB<VolumeEntry, number>('volumes', {});
    this.txns = root.openDB<TransactionRecord, number>('txn', {});
    this.seqs = root.openDB<number, number>('seq', {});
    this.blocks = root.openDB<number, BlockKey>('blocks', {});
    this.txnRuns = root.openDB<Buffer, number>('runs', { encoding: 'binary' });
  }

  static open(dir: string): ManagerCatalog {
    return new ManagerCatalog(path.join(dir, 'index'));
  }

  /**
   * Closes and opens the environment again: after a failed commit LMDB's
   * in-memory state (its free-space list) may be what failed, and only a
   * fresh environment re-reads it from the file. Between calls only.
   */
  async reopen(): Promise<void> {
    await this.root.close().catch(() => undefined);
    const fresh = new ManagerCatalog(this.where);
    this.root = fresh.root;
    this.meta = fresh.meta;
    this.vols = fresh.vols;
    this.txns = fresh.txns;
    this.seqs = fresh.seqs;
    this.blocks = fresh.blocks;
    this.txnRuns = fresh.txnRuns;
    this.configCache = undefined;
    this.appliedCache = undefined;
  }

  /**
   * LMDB cannot take a write that fails for space mid-commit: its
   * environment stays unusable until reopened. So every write first checks
   * that the index's file system has a margin free (1/16 of it, between
   * 8 and 64 MiB), and is refused with ENOSPC, before LMDB is touched, when
   * it has not: the manager then waits for space (BackupManager.stall).
   */
  private async guardSpace(): Promise<void> {
    let st: fs.StatsFs;
    try {
      st = await fs.promises.statfs(this.where);
    } catch {
      return;
    }
    const free = st.bavail * st.bsize;
    const margin = Math.max(8 << 20, Math.min(64 << 20, (st.blocks * st.bsize) / 16));
    if (free < margin)
      throw Object.assign(
        new Error(`ENOSPC: no space left on device for the backup manager's index ${this.where} (${free} bytes free, keeps ${margin})`),
        {
          code: 'ENOSPC',
        },
      );
  }

  config(): ManagerConfig | undefined {
    return (this.configCache ??= this.meta.get('config') as ManagerConfig | undefined);
  }

  async setConfig(c: ManagerConfig): Promise<void> {
    await this.guardSpace();
    this.configCache = undefined;
    await this.meta.put('config', c);
    await this.root.flushed;
  }

  applied(): AppliedPointer {
    return (this.appliedCache ??= (this.meta.get('applied') as AppliedPointer | undefined) ?? {
      lastContainer: 0,
      lastSeq: 0,
      lastTime: 0,
    });
  }

  /** The n the next commit must have. */
  nextContainer(): number {
    const last = this.applied().lastContainer;
    return last === 0 ? (this.config()?.firstContainer ?? 1) : last + 1;
  }

  volumes(): VolumeEntry[] {
    return [...this.vols.getRange({})].map((e) => e.value);
  }

  volume(id: number): VolumeEntry | undefined {
    return this.vols.get(id);
  }

  async putVolume(v: VolumeEntry): Promise<void> {
    await this.guardSpace();
    await this.vols.put(v.volumeId, v);
    await this.root.flushed;
  }

  /**
   * Commits T_n atomically: its record, its block index entries, its seq
   * entry and the applied pointer. Refuses (throws) unless n is exactly the
   * next transaction, so nothing is ever committed twice.
   */
  async commit(rec: TransactionRecord, runs: BlockRun[], blockSize: number): Promise<void> {
    const stride = 48 + blockSize; // RECORD_HEADER_SIZE + blockSize
    await this.guardSpace();
    // putSync inside the transaction: the writes join it, and a failed commit
    // rejects only the transaction's promise, awaited here (a put's own
    // promise would reject unobserved and end the process).
    const ok = await this.commitTxn(`T_${rec.n}`, () => {
      const cur = this.applied();

      if (rec.n !== this.nextContainer()) return false;
      if (this.txns.get(rec.n) !== undefined) return false;
      this.txns.putSync(rec.n, rec);
      if (rec.records > 0) this.seqs.putSync(rec.lastSeq, rec.n);
      for (const r of runs) {
        for (let i = 0; i < r.count; i++) this.blocks.putSync([r.volumeId, r.start + i, rec.n], r.position + i * stride);
      }
      this.txnRuns.putSync(rec.n, packRuns(runs));
      const next: AppliedPointer = {
        lastContainer: rec.n,
        lastSeq: rec.records > 0 ? rec.lastSeq : cur.lastSeq,
        lastTime: rec.records > 0 ? rec.lastTime : cur.lastTime,
      };
      this.meta.putSync('applied', next);
      return true;
    });
    this.appliedCache = undefined;
    if (!ok) throw new Error(`refusing to commit T_${rec.n}: the applied pointer is at ${this.applied().lastContainer}`);
    await this.root.flushed;
  }

  transaction(n: number): TransactionRecord | undefined {
    return this.txns.get(n);
  }

  transactions(opts: { from?: number; to?: number; limit?: number } = {}): TransactionRecord[] {
    const out: TransactionRecord[] = [];
    const range: { start?: number; end?: number; limit?: number } = {};
    if (opts.from !== undefined) range.start = opts.from;
    if (opts.to !== undefined) range.end = opts.to + 1;
    if (opts.limit !== undefined) range.limit = opts.limit;
    for (const { value } of this.txns.getRange(range)) out.push(value);
    return out;
  }

  /** O(1) from the database's statistics (getCount() walks every key: 0.6 s for a million). */
  transactionCount(): number {
    return (this.txns.getStats() as { entryCount: number }).entryCount;
  }

  /** The n of every committed transaction up to `to`, ascending: keys only (a tenth of the cost of reading records). */
  transactionNumbers(to?: number): number[] {
    return [...this.txns.getKeys(to === undefined ? {} : { end: to + 1 })];
  }

  /** n of the committed transaction whose AILFC holds seq p, if any. */
  transactionForSeq(p: number): number | undefined {
    for (const { key, value } of this.seqs.getRange({ start: p, limit: 1 })) {
      const rec = this.txns.get(value);
      if (rec && rec.firstSeq <= p && p <= key) return value;
    }
    return undefined;
  }

  /**
   * The smallest committed m >= k such that T_m touched (volumeId, blockIndex),
   * with the position of that block's BeforeBlock record in BILFC_m; or
   * undefined if no committed transaction from k on touched it.
   */
  beforeBlockSource(volumeId: number, blockIndex: number, k: number): { n: number; position: number } | undefined {
    for (const { key, value } of this.blocks.getRange({ start: [volumeId, blockIndex, k], end: [volumeId, blockIndex + 1, 0], limit: 1 })) {
      return { n: key[2], position: value };
    }
    return undefined;
  }

  /** Every transaction that touched (volumeId, blockIndex), ascending. */
  blockHistory(volumeId: number, blockIndex: number): Array<{ n: number; position: number }> {
    const out: Array<{ n: number; position: number }> = [];
    for (const { key, value } of this.blocks.getRange({ start: [volumeId, blockIndex, 0], end: [volumeId, blockIndex + 1, 0] })) {
      out.push({ n: key[2], position: value });
    }
    return out;
  }

  /** The block runs T_n touched (empty for an unknown n). */
  runs(n: number): BlockRun[] {
    const b = this.txnRuns.get(n);
    return b ? unpackRuns(b) : [];
  }

  // --- retention (see retention.ts) ---------------------------------------------

  /** A meta value other than config/applied (e.g. 'retention'). */
  metaValue<T>(key: string): T | undefined {
    return this.meta.get(key) as T | undefined;
  }

  async putMetaValue(key: string, value: unknown): Promise<void> {
    if (key === 'config' || key === 'applied') throw new Error(`meta "${key}" is not set this way`);
    await this.guardSpace();
    if (value === undefined) await this.meta.remove(key);
    else await this.meta.put(key, value);
    await this.root.flushed;
  }

  /**
   * Fade-out, in ONE LMDB transaction: the committed transactions `remove`
   * (their records, seq entries, block index entries and runs) are replaced
   * by `rec` (whose n is the last of them) with its block runs; with
   * `firstContainer`, history before it stops being readable. `check` runs
   * inside the write transaction: false (or records that changed since they
   * were read) aborts and nothing is written. Resolves true if committed.
   */
  async replaceTransactions(
    remove: TransactionRecord[],
    rec: TransactionRecord,
    runs: BlockRun[],
    blockSize: number,
    firstContainer: number | null,
    check: () => boolean,
  ): Promise<boolean> {
    const stride = 48 + blockSize;
    await this.guardSpace();
    const ok = await this.commitTxn(`the fade into T_${rec.n}`, () => {
      if (!check()) return false;
      for (const r of remove) {
        const cur = this.txns.get(r.n);
        if (!cur || cur.ailfc.file !== r.ailfc.file || cur.bilfc.file !== r.bilfc.file) return false;
      }
      if (rec.n > this.applied().lastContainer) return false;
      for (const r of remove) {
        const old = this.txnRuns.get(r.n);
        for (const run of old ? unpackRuns(old) : []) {
          for (let i = 0; i < run.count; i++) this.blocks.removeSync([run.volumeId, run.start + i, r.n]);
        }
        this.txnRuns.removeSync(r.n);
        if (r.records > 0 && this.seqs.get(r.lastSeq) === r.n) this.seqs.removeSync(r.lastSeq);
        this.txns.removeSync(r.n);
      }
      this.txns.putSync(rec.n, rec);
      if (rec.records > 0) this.seqs.putSync(rec.lastSeq, rec.n);
      for (const r of runs) {
        for (let i = 0; i < r.count; i++) this.blocks.putSync([r.volumeId, r.start + i, rec.n], r.position + i * stride);
      }
      this.txnRuns.putSync(rec.n, packRuns(runs));
      if (firstContainer !== null) {
        const c = this.meta.get('config') as ManagerConfig;
        this.meta.putSync('config', { ...c, firstContainer: Math.max(c.firstContainer, firstContainer) });
      }
      return true;
    });
    this.configCache = undefined;
    await this.root.flushed;
    return ok === true;
  }

  /** One LMDB write transaction; a failed commit becomes an IndexCommitError. */
  private async commitTxn(what: string, fn: () => boolean): Promise<boolean> {
    try {
      return (await this.root.transaction(fn)) === true;
    } catch (err) {
      if (isOutOfSpace(err)) throw err;
      throw new IndexCommitError(`the index did not commit ${what}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The first committed transaction with n >= k, if any. */
  transactionAtOrAfter(k: number): TransactionRecord | undefined {
    for (const { value } of this.txns.getRange({ start: k, limit: 1 })) return value;
    return undefined;
  }

  resetReadTxn(): void {
    this.root.resetReadTxn();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.root.close();
  }
}

/** Runs as a Buffer of f64 quadruples [volumeId, start, count, position]. */
export function packRuns(runs: BlockRun[]): Buffer {
  const f = new Float64Array(runs.length * 4);
  let i = 0;
  for (const r of runs) {
    f[i++] = r.volumeId;
    f[i++] = r.start;
    f[i++] = r.count;
    f[i++] = r.position;
  }
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
}

export function unpackRuns(b: Buffer): BlockRun[] {
  const out: BlockRun[] = [];
  for (let i = 0; i + 32 <= b.length; i += 32) {
    out.push({
      volumeId: b.readDoubleLE(i),
      start: b.readDoubleLE(i + 8),
      count: b.readDoubleLE(i + 16),
      position: b.readDoubleLE(i + 24),
    });
  }
  return out;
}
