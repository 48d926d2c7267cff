/**
 * The file catalog's LMDB environment (DATA_DIR/file-catalog/index):
 *
 *   points    [vid, seq] -> PointRecord: a cataloged point and its context
 *   entries   keys.ts entry key    -> Entry in entry.ts's binary layout | one byte 0 (gone)
 *   inodes    keys.ts inodes key   -> [ino, path, print, ...] | 0: the paths of 16 inodes, each
 *                                     with its inode's stat print (entry.ts statPrint)
 *   dirblocks keys.ts dirblock key -> directory inode | 0
 *   jobs      id -> JobRecord (builds, persisted so a restart resumes them)
 *   meta      "vol:NAME" -> {vid, group, volumeId}; "nextVid"; "nextJob"; "format"
 *
 * The three keyed tables are temporal: a row is written at a point only
 * where the thing it describes differs from what the point before it (in
 * seq order, among complete points) says. A point's view of a key is its
 * last row at or before the point among COMPLETE points, so a build in
 * progress (or left by a crash) is invisible until its point is marked
 * complete, and unchanged entries are shared by every point after them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { prefixEnd, readSeq, subject, volumePrefix, withSeq, SEQ_LEN } from './keys';
import type { JobRecord, PointRecord } from './types';
import { tooNew } from '../util/format-version';

/** The layout of the rows below; see checkFormat. */
const FORMAT = 2;

export type Row<V> = { key: Buffer; seq: number; value: V };

export type Table = 'entries' | 'inodes' | 'dirblocks';

export class CatalogStore {
  private readonly completeCache = new Map<number, number[]>();
  /** Decoded point records per volume, in seq order: --versions over 1,000 points reads them all. */
  private readonly recordCache = new Map<number, Map<number, PointRecord>>();
  private readonly completeSets = new Map<number, Set<number>>();

  private constructor(
    readonly root: RootDatabase,
    readonly points: Database<PointRecord, [number, number]>,
    readonly tables: Record<Table, Database<unknown, Buffer>>,
    readonly jobs: Database<JobRecord, number>,
    readonly meta: Database<unknown, string>,
  ) {}

  static open(dir: string): CatalogStore {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const root = open({ path: path.join(dir, 'index'), maxDbs: 8 });
    const bin = { keyEncoding: 'binary' as const };
    const store = new CatalogStore(
      root,
      root.openDB<PointRecord, [number, number]>('points', {}),
      {
        entries: root.openDB<unknown, Buffer>('entries', { ...bin, encoding: 'binary' }),
        inodes: root.openDB<unknown, Buffer>('inodes', bin),
        dirblocks: root.openDB<unknown, Buffer>('dirblocks', bin),
      },
      root.openDB<JobRecord, number>('jobs', {}),
      root.openDB<unknown, string>('meta', {}),
    );
    store.checkFormat(dir);
    return store;
  }

  /**
   * A catalog in an older layout is dropped, not migrated: it is derived
   * data, and every point can be cataloged again from the history. One from
   * a newer Rewind is refused (util/format-version.ts), never dropped.
   */
  private checkFormat(dir: string): void {
    const found = this.meta.get('format');
    if (found === FORMAT) return;
    if (typeof found === 'number' && found > FORMAT) throw tooNew('the file catalog', path.join(dir, 'index'), found, FORMAT);
    this.root.transactionSync(() => {
      for (const db of [this.points, ...Object.values(this.tables), this.jobs, this.meta]) db.clearSync();
      this.meta.putSync('format', FORMAT);
    });
  }

  close(): Promise<void> {
    return this.root.close();
  }

  // ---- volumes ------------------------------------------------------------

  /**
   * The catalog's number for a volume. A volume deleted and created again
   * under the same name (another group or volume id) gets a new number;
   * the old one's rows are left for dropVolume.
   */
  async vidOf(volume: string, identity: { group: string; volumeId: number }): Promise<number> {
    const cur = this.meta.get(`vol:${volume}`) as { vid: number; group: string; volumeId: number } | undefined;
    if (cur && cur.group === identity.group && cur.volumeId === identity.volumeId) return cur.vid;
    let vid = 0;
    await this.root.transaction(() => {
      vid = ((this.meta.get('nextVid') as number | undefined) ?? 0) + 1;
      this.meta.putSync('nextVid', vid);
      this.meta.putSync(`vol:${volume}`, { vid, ...identity });
    });
    return vid;
  }

  knownVid(volume: string): number | undefined {
    return (this.meta.get(`vol:${volume}`) as { vid: number } | undefined)?.vid;
  }

  /** Deletes everything cataloged of a volume (it was removed). */
  async dropVolume(volume: string): Promise<void> {
    const vid = this.knownVid(volume);
    if (vid === undefined) return;
    const p = volumePrefix(vid);
    for (const db of Object.values(this.tables)) await this.deleteRange(db, p, prefixEnd(p));
    await this.root.transaction(() => {
      for (const { key } of this.points.getRange({ start: [vid, 0], end: [vid + 1, 0] })) this.points.removeSync(key);
      this.meta.removeSync(`vol:${volume}`);
    });
    this.forget(vid);
  }

  private async deleteRange(db: Database<unknown, Buffer>, start: Buffer, end: Buffer): Promise<void> {
    for (;;) {
      const keys = [...db.getKeys({ start, end, limit: 5000 })] as Buffer[];
      if (!keys.length) return;
      await this.root.transaction(() => {
        for (const k of keys) db.removeSync(k);
      });
    }
  }

  // ---- points -------------------------------------------------------------

  /** The volume's point records by seq (cached until a point record of it is written; do not modify them). */
  records(vid: number): Map<number, PointRecord> {
    let m = this.recordCache.get(vid);
    if (!m) {
      m = new Map(this.pointsRange(vid).map((p) => [p.seq, p]));
      this.recordCache.set(vid, m);
    }
    return m;
  }

  private pointsRange(vid: number): PointRecord[] {
    return [...this.points.getRange({ start: [vid, 0], end: [vid + 1, 0] })].map((e) => e.value);
  }

  pointsOf(vid: number): PointRecord[] {
    return [...this.records(vid).values()];
  }

  point(vid: number, seq: number): PointRecord | undefined {
    return this.records(vid).get(seq);
  }

  async putPoint(p: PointRecord): Promise<void> {
    await this.points.put([p.vid, p.seq], p);
    this.forget(p.vid);
  }

  async removePointRecord(vid: number, seq: number): Promise<void> {
    await this.points.remove([vid, seq]);
    this.forget(vid);
  }

  /** Drops what is cached of the volume's points (after writing a point record). */
  forget(vid: number): void {
    this.completeCache.delete(vid);
    this.recordCache.delete(vid);
  }

  /** Seqs of the volume's complete points, ascending. */
  complete(vid: number): number[] {
    let c = this.completeCache.get(vid);
    if (!c) {
      c = this.pointsOf(vid)
        .filter((p) => p.state === 'complete')
        .map((p) => p.seq);
      this.completeCache.set(vid, c);
      this.completeSets.set(vid, new Set(c));
    }
    return c;
  }

  private completeSet(vid: number): Set<number> {
    this.complete(vid);
    return this.completeSets.get(vid)!;
  }

  /** The complete points just before and after seq (not seq itself). */
  neighbours(vid: number, seq: number): { before: number | null; after: number | null } {
    const c = this.complete(vid);
    let before: number | null = null;
    let after: number | null = null;
    for (const s of c) {
      if (s < seq) before = s;
      else if (s > seq && after === null) after = s;
    }
    return { before, after };
  }

  // ---- temporal reads -----------------------------------------------------

  /** The row of `subj` visible at point `at`: its last row at or before `at` among complete points. */
  visible<V = unknown>(table: Table, subj: Buffer, at: number, vid: number): Row<V> | undefined {
    const complete = this.completeSet(vid);
    for (const { key, value } of this.tables[table].getRange({ start: withSeq(subj, at), end: subj, reverse: true })) {
      const k = key as Buffer;
      if (k.length !== subj.length + SEQ_LEN) continue;
      const seq = readSeq(k);
      if (complete.has(seq)) return { key: k, seq, value: value as V };
    }
    return undefined;
  }

  /** The row written exactly at seq, if any (complete or not). */
  rowAt<V = unknown>(table: Table, subj: Buffer, seq: number): V | undefined {
    return this.tables[table].get(withSeq(subj, seq)) as V | undefined;
  }

  /** Every row of a subject, in point order (all points, complete or not). */
  rows<V = unknown>(table: Table, subj: Buffer): Row<V>[] {
    const out: Row<V>[] = [];
    for (const { key, value } of this.tables[table].getRange({ start: subj, end: prefixEnd(subj) })) {
      const k = key as Buffer;
      if (k.length !== subj.length + SEQ_LEN) continue;
      out.push({ key: k, seq: readSeq(k), value: value as V });
    }
    return out;
  }

  /**
   * The rows visible at `at` of every subject under `prefix`, in key order:
   * for each subject its last complete row at or before `at` (tombstones
   * included; callers skip them). Subjects are contiguous in key order, so
   * one pass suffices.
   */
  *scanVisible<V = unknown>(table: Table, prefix: Buffer, at: number, vid: number, opts: { after?: Buffer } = {}): Generator<Row<V>> {
    yield* this.scanVisibleRange<V>(table, opts.after ? prefixEnd(opts.after) : prefix, prefixEnd(prefix), at, vid);
  }

  /** scanVisible over keys in [start, end). */
  *scanVisibleRange<V = unknown>(table: Table, start: Buffer, end: Buffer, at: number, vid: number): Generator<Row<V>> {
    const complete = this.completeSet(vid);
    let cur: Buffer | null = null;
    let best: Row<V> | null = null;
    for (const { key, value } of this.tables[table].getRange({ start, end })) {
      const k = key as Buffer;
      const s = subject(k);
      if (cur === null || !s.equals(cur)) {
        if (best) yield best;
        cur = Buffer.from(s);
        best = null;
      }
      const seq = readSeq(k);
      if (seq <= at && complete.has(seq)) best = { key: k, seq, value: value as V };
    }
    if (best) yield best;
  }

  /** Every row written at exactly `seq` under a prefix (purging an abandoned build, exporting deltas). */
  *rowsWrittenAt(table: Table, prefix: Buffer, seq: number): Generator<Buffer> {
    for (const key of this.tables[table].getKeys({ start: prefix, end: prefixEnd(prefix) })) {
      const k = key as Buffer;
      if (readSeq(k) === seq) yield k;
    }
  }

  /** Removes every row a point wrote (an abandoned or failed build). */
  async purgeRowsAt(vid: number, seq: number): Promise<number> {
    let n = 0;
    for (const table of Object.keys(this.tables) as Table[]) {
      const keys = [...this.rowsWrittenAt(table, volumePrefix(vid), seq)];
      for (let i = 0; i < keys.length; i += 5000) {
        const part = keys.slice(i, i + 5000);
        await this.root.transaction(() => {
          for (const k of part) void this.tables[table].remove(k);
        });
      }
      n += keys.length;
    }
    return n;
  }

  // ---- jobs ---------------------------------------------------------------

  jobList(): JobRecord[] {
    return [...this.jobs.getRange({})].map((e) => e.value);
  }

  job(id: number): JobRecord | undefined {
    return this.jobs.get(id);
  }

  async newJobId(): Promise<number> {
    let id = 0;
    await this.root.transaction(() => {
      id = ((this.meta.get('nextJob') as number | undefined) ?? 0) + 1;
      this.meta.putSync('nextJob', id);
    });
    return id;
  }

  async putJob(j: JobRecord): Promise<void> {
    await this.jobs.put(j.id, j);
  }

  async removeJob(id: number): Promise<void> {
    await this.jobs.remove(id);
  }
}

/**
 * Row writes, committed in LMDB transactions of bounded size. Commits are
 * pipelined: a full batch starts its transaction and the build goes on (a
 * few may be in flight; put returns a promise only when the oldest must be
 * awaited), and flush waits for all of them. LMDB commits in order, so a
 * point marked complete after flush is never visible before its rows.
 */
export class RowWriter {
  private pending: Array<[Table, Buffer, unknown]> = [];
  private inflight: Promise<unknown>[] = [];
  private failed: unknown = null;
  written = 0;

  constructor(
    private readonly store: CatalogStore,
    private readonly batch = 8000,
    private readonly maxInflight = 3,
  ) {}

  put(table: Table, key: Buffer, value: unknown): Promise<void> | undefined {
    this.pending.push([table, key, value]);
    this.written++;
    return this.pending.length >= this.batch ? this.commit() : undefined;
  }

  private commit(): Promise<void> | undefined {
    if (this.failed) throw this.failed;
    if (!this.pending.length) return undefined;
    const rows = this.pending;
    this.pending = [];
    const p = this.store.root
      .transaction(() => {
        for (const [t, k, v] of rows) void this.store.tables[t].put(k, v);
      })
      .catch((err: unknown) => {
        this.failed ??= err;
      });
    this.inflight.push(p);
    if (this.inflight.length <= this.maxInflight) return undefined;
    return this.inflight.shift()!.then(() => {
      if (this.failed) throw this.failed;
    });
  }

  async flush(): Promise<void> {
    this.commit();
    await Promise.all(this.inflight);
    this.inflight = [];
    if (this.failed) throw this.failed;
  }
}
