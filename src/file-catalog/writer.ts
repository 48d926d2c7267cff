/**
 * Writes one point's catalog into the temporal tables (store.ts): given the
 * state of each path at the new point B, it writes a row only where B
 * differs from A, the complete point before B, so unchanged entries are
 * shared. Inode paths and directory blocks follow their entries.
 *
 * A point cataloged between two others (A < B < C) changes what C
 * inherits: for every subject B wrote, C gets an explicit row holding what
 * it saw before (its own view is unchanged), with the content stamp judged
 * against B; rows of C that now equal B's are dropped so C shares them.
 * Those deletions and B's "complete" mark commit in one LMDB transaction,
 * so no reader ever sees C without either.
 */
import { decodeEntry, encodeEntry, sameEntry, sameIdentity, type Entry, type StoredEntry } from './entry';
import { dirblockSubject, entrySubject, inopathSubject, joinPath, subtreePrefixes, entryKeyParts, withSeq, isLongParent } from './keys';
import { RowWriter, type CatalogStore, type Table } from './store';
import type { PointRecord } from './types';

/** Blocks of a directory's runs (flat triples logical, physical, length). */
export function dirBlocks(runs: number[] | null): number[] {
  const out: number[] = [];
  if (!runs) return out;
  for (let i = 0; i + 2 < runs.length; i += 3) for (let k = 0; k < runs[i + 2]!; k++) out.push(runs[i + 1]! + k);
  return out;
}

export interface Neighbours {
  /** The complete point before B (its view is what B is compared with). */
  before: number | null;
  /** The complete point after B, which inherited from `before` until now. */
  after: number | null;
}

/**
 * Did the content of the path change between B and C? Asked for paths C
 * wrote with a new stamp that B now also changed: C's stamp may belong to
 * B. Answer true when unsure.
 */
export type LaterChangeProbe = (path: Buffer, partition: number, atC: Entry) => Promise<boolean>;

/** A path whose entry differs between the base point and this one. */
export interface PathChange {
  partition: number;
  path: Buffer;
  before: Entry | null;
  after: Entry | null;
}

export class PointWriter {
  /** Dry mode (changed-files): nothing is written; the changes are collected here instead. */
  readonly changes: PathChange[] | null;
  private readonly rows: RowWriter;
  /** Subjects written at B, per table: C's fix-ups, and full builds' deletion pass. */
  private readonly touched = new Map<Table, Map<string, Buffer>>();
  private readonly seen = new Set<string>();
  changedPaths = 0;
  /** Paths that appeared and vanished at B, per partition (the root directory aside). */
  readonly delta = new Map<number, { added: number; removed: number }>();

  constructor(
    private readonly store: CatalogStore,
    private readonly vid: number,
    private readonly seq: number,
    readonly neighbours: Neighbours,
    opts: { dry?: boolean } = {},
  ) {
    this.changes = opts.dry ? [] : null;
    this.rows = new RowWriter(store);
    for (const t of ['entries', 'inopaths', 'dirblocks'] as Table[]) this.touched.set(t, new Map());
  }

  /** A's entry of a path (undefined: absent). */
  before(part: number, path: Buffer): Entry | undefined {
    const a = this.neighbours.before;
    if (a === null) return undefined;
    const row = this.store.visible<StoredEntry>('entries', entrySubject(this.vid, part, path), a, this.vid);
    return row && row.value !== 0 ? decodeEntry(row.value) : undefined;
  }

  get rowsWritten(): number {
    return this.rows.written;
  }

  private async row(table: Table, subj: Buffer, value: unknown): Promise<void> {
    if (this.changes) return;
    if (this.neighbours.after !== null) this.touched.get(table)!.set(subj.toString('latin1'), subj);
    await this.rows.put(table, withSeq(subj, this.seq), value);
  }

  /** Has this build set the path (full builds: the deletion pass skips it)? */
  wasSet(part: number, path: Buffer): boolean {
    return this.seen.has(entrySubject(this.vid, part, path).toString('latin1'));
  }

  /**
   * The path's state at B: an entry, or null (gone). Each path is set at most
   * once per build. `prev` is A's entry when the caller already has it.
   */
  async set(part: number, path: Buffer, entry: Entry | null, prev?: Entry | null): Promise<void> {
    const subj = entrySubject(this.vid, part, path);
    const skey = subj.toString('latin1');
    if (this.seen.has(skey)) return;
    this.seen.add(skey);
    const a = prev === undefined ? this.before(part, path) : (prev ?? undefined);
    if (entry && isLongParent(path.subarray(0, Math.max(0, path.lastIndexOf(0x2f))))) entry.path = path;
    if (a === undefined && entry === null) return;
    if (a !== undefined && entry !== null && sameEntry(a, entry)) return;
    this.changedPaths++;
    this.changes?.push({ partition: part, path, before: a ?? null, after: entry });
    if (path.length > 0 && (!a || !entry)) {
      const d = this.delta.get(part) ?? { added: 0, removed: 0 };
      if (entry) d.added++;
      else d.removed++;
      this.delta.set(part, d);
    }
    await this.row('entries', subj, entry ? encodeEntry(entry) : 0);
    if (!a || !entry || a.ino !== entry.ino) {
      if (a) await this.row('inopaths', inopathSubject(this.vid, part, a.ino, path), 0);
      // The key of a very long path holds a hash of its parent: the row keeps the path itself.
      if (entry) await this.row('inopaths', inopathSubject(this.vid, part, entry.ino, path), entry.path ?? 1);
    }
    const oldBlocks = a?.type === 'dir' ? dirBlocks(a.runs) : [];
    const newBlocks = entry?.type === 'dir' ? dirBlocks(entry.runs) : [];
    if (oldBlocks.length || newBlocks.length) {
      const keep = new Set(newBlocks);
      const sameDir = a && entry && a.ino === entry.ino;
      for (const b of oldBlocks) if (!keep.has(b)) await this.row('dirblocks', dirblockSubject(this.vid, part, b), 0);
      const had = new Set(sameDir ? oldBlocks : []);
      for (const b of newBlocks) if (!had.has(b)) await this.row('dirblocks', dirblockSubject(this.vid, part, b), entry!.ino);
    }
  }

  /**
   * Marks gone every path A had under `dir` (a whole partition when dir is
   * empty) that this build did not set: a removed directory's subtree, or a
   * full build's deletion pass.
   */
  async removeUnseen(part: number, dir: Buffer): Promise<void> {
    const a = this.neighbours.before;
    if (a === null) return;
    const under = Buffer.concat([dir, Buffer.from('/')]);
    for (const prefix of subtreePrefixes(this.vid, part, dir)) {
      for (const row of this.store.scanVisible<StoredEntry>('entries', prefix, a, this.vid)) {
        if (row.value === 0) continue;
        const e = decodeEntry(row.value);
        const { parent, name } = entryKeyParts(row.key);
        const path = e.path ?? joinPath(parent, name);
        if (dir.length > 0 && !path.subarray(0, under.length).equals(under)) continue;
        if (this.wasSet(part, path)) continue;
        await this.set(part, path, null, e);
      }
    }
  }

  /**
   * Writes C's fix-ups, then marks B complete (with C's dropped rows, in one
   * transaction). `record` is B's finished point record.
   */
  async finish(record: PointRecord, probe: LaterChangeProbe | null): Promise<void> {
    await this.rows.flush();
    const c = this.neighbours.after;
    const drop: Array<[Table, Buffer]> = [];
    if (c !== null) {
      for (const [table, subjects] of this.touched) {
        for (const subj of subjects.values()) {
          const atB = this.store.rowAt(table, subj, this.seq);
          const own = this.store.rowAt(table, subj, c);
          if (own === undefined) {
            // C inherited this subject from before B: pin down what it saw.
            const seen = this.store.visible(table, subj, c, this.vid);
            let value: unknown = seen ? seen.value : 0;
            if (table === 'entries' && value !== 0) {
              const e = decodeEntry(value as unknown[]);
              const b = atB && atB !== 0 ? decodeEntry(atB as unknown[]) : null;
              if (!b || !sameIdentity(b, e)) e.stamp = c;
              value = encodeEntry(e);
            }
            await this.rows.put(table, withSeq(subj, c), value);
          } else if (table === 'entries' && own !== 0 && atB !== undefined && atB !== 0) {
            const e = decodeEntry(own as unknown[]);
            const b = decodeEntry(atB as unknown[]);
            if (e.stamp === c && sameIdentity(b, e) && probe) {
              const { parent, name } = entryKeyParts(withSeq(subj, c));
              const part = subj.readUInt16BE(4);
              if (!(await probe(e.path ?? joinPath(parent, name), part, e))) {
                e.stamp = b.stamp;
                await this.rows.put(table, withSeq(subj, c), encodeEntry(e));
              }
            }
            if (sameEntry(e, b)) drop.push([table, withSeq(subj, c)]);
          } else if (table !== 'entries' && atB !== undefined && sameValue(own, atB)) {
            drop.push([table, withSeq(subj, c)]);
          } else if (table === 'entries' && own === 0 && atB === 0) {
            drop.push([table, withSeq(subj, c)]);
          }
        }
      }
      await this.rows.flush();
    }
    await this.store.root.transaction(() => {
      for (const [t, k] of drop) void this.store.tables[t].remove(k);
      void this.store.points.put([record.vid, record.seq], record);
    });
    await this.store.putPoint(record); // refreshes the complete-point cache
  }
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.from(a).equals(Buffer.from(b));
  return a === b;
}
