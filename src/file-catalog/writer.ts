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
import { decodeEntry, encodeEntry, isGone, sameEntry, sameIdentity, statPrint, TOMBSTONE, type Entry } from './entry';
import {
  bucketOf,
  dirblockSubject,
  entryKey,
  entrySubject,
  inodesSubject,
  joinPath,
  subtreePrefixes,
  entryKeyParts,
  withSeq,
  isLongParent,
  SEQ_LEN,
} from './keys';
import { bucketAt } from './reads';
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
  /** Paths inodes gained and lost at B, per partition and bucket of 16 inodes (written at finish). */
  private readonly links = new Map<number, Map<number, Array<{ ino: number; path: Buffer; print: number | null }>>>();
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
    for (const t of ['entries', 'inodes', 'dirblocks'] as Table[]) this.touched.set(t, new Map());
  }

  /** A's entry of a path (undefined: absent). */
  before(part: number, path: Buffer): Entry | undefined {
    const a = this.neighbours.before;
    if (a === null) return undefined;
    const row = this.store.visible<Buffer>('entries', entrySubject(this.vid, part, path), a, this.vid);
    return row && !isGone(row.value) ? decodeEntry(row.value) : undefined;
  }

  get rowsWritten(): number {
    return this.rows.written;
  }

  /** Queues a row at B; a promise only when the writer wants the caller to wait (backpressure). */
  private row(table: Table, subj: Buffer | null, key: Buffer, value: unknown): Promise<void> | undefined {
    if (this.changes) return undefined;
    if (this.neighbours.after !== null) {
      const s = subj ?? key.subarray(0, key.length - SEQ_LEN);
      this.touched.get(table)!.set(s.toString('latin1'), Buffer.from(s));
    }
    return this.rows.put(table, key, value);
  }

  /** Has this build set the path (full builds: the deletion pass skips it)? */
  wasSet(part: number, path: Buffer): boolean {
    return this.seen.has(entrySubject(this.vid, part, path).toString('latin1'));
  }

  /**
   * The path's state at B: an entry, or null (gone). Each path is set at most
   * once per build. `prev` is A's entry when the caller already has it.
   * Synchronous unless the row writer asks the caller to wait (a promise).
   */
  set(part: number, path: Buffer, entry: Entry | null, prev?: Entry | null): Promise<void> | undefined {
    const a = prev === undefined ? this.before(part, path) : (prev ?? undefined);
    // Without a point before, a walk meets each path once and nothing is deleted: no need to remember paths.
    if (this.neighbours.before !== null || this.changes) {
      const skey = entrySubject(this.vid, part, path).toString('latin1');
      if (this.seen.has(skey)) return undefined;
      this.seen.add(skey);
    }
    if (entry && isLongParent(path.subarray(0, Math.max(0, path.lastIndexOf(0x2f))))) entry.path = path;
    if (a === undefined && entry === null) return undefined;
    if (a !== undefined && entry !== null && sameEntry(a, entry)) return undefined;
    this.changedPaths++;
    this.changes?.push({ partition: part, path, before: a ?? null, after: entry });
    if (path.length > 0 && (!a || !entry)) {
      const d = this.delta.get(part) ?? { added: 0, removed: 0 };
      if (entry) d.added++;
      else d.removed++;
      this.delta.set(part, d);
    }
    let wait: Promise<void> | undefined;
    const row = (table: Table, key: Buffer, value: unknown): void => {
      wait = this.row(table, null, key, value) ?? wait;
    };
    row('entries', entryKey(this.vid, part, path, this.seq), entry ? encodeEntry(entry) : TOMBSTONE);
    // The inode -> paths index: a path moves between inodes, or the inode's stat print changes.
    if (a && (!entry || a.ino !== entry.ino)) this.link(part, a.ino, path, null);
    if (entry) {
      const print = statPrint(entry);
      if (!a || a.ino !== entry.ino || statPrint(a) !== print) this.link(part, entry.ino, path, print);
    }
    const oldBlocks = a?.type === 'dir' ? dirBlocks(a.runs) : [];
    const newBlocks = entry?.type === 'dir' ? dirBlocks(entry.runs) : [];
    if (oldBlocks.length || newBlocks.length) {
      const keep = new Set(newBlocks);
      const sameDir = a && entry && a.ino === entry.ino;
      for (const b of oldBlocks) if (!keep.has(b)) row('dirblocks', withSeq(dirblockSubject(this.vid, part, b), this.seq), 0);
      const had = new Set(sameDir ? oldBlocks : []);
      for (const b of newBlocks) if (!had.has(b)) row('dirblocks', withSeq(dirblockSubject(this.vid, part, b), this.seq), entry!.ino);
    }
    return wait;
  }

  /** Records that `path` is (print: its inode's stat print) or is no longer (null) a path of `ino`. */
  private link(part: number, ino: number, path: Buffer, print: number | null): void {
    let m = this.links.get(part);
    if (!m) this.links.set(part, (m = new Map()));
    const b = bucketOf(ino);
    let l = m.get(b);
    if (!l) m.set(b, (l = []));
    l.push({ ino, path, print });
  }

  /** The inode -> paths rows of the buckets whose inodes gained or lost a path: A's list, changed. */
  private async writeBuckets(): Promise<void> {
    for (const [part, buckets] of this.links) {
      const a = this.neighbours.before;
      for (const [b, changes] of buckets) {
        const base = a === null ? [] : bucketAt({ store: this.store, vid: this.vid, part, at: a }, b);
        let items: Array<[number, Buffer, number]> = [];
        for (let i = 0; i + 2 < base.length; i += 3)
          items.push([base[i] as number, Buffer.from(base[i + 1] as Uint8Array), base[i + 2] as number]);
        for (const c of changes) {
          items = items.filter(([ino, p]) => ino !== c.ino || !p.equals(c.path));
          if (c.print !== null) items.push([c.ino, c.path, c.print]);
        }
        items.sort((x, y) => x[0] - y[0] || Buffer.compare(x[1], y[1]));
        const flat = items.flat();
        if (sameValue(flat, base)) continue;
        const wait = this.row('inodes', null, withSeq(inodesSubject(this.vid, part, b), this.seq), flat.length ? flat : 0);
        if (wait) await wait;
      }
    }
    this.links.clear();
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
      for (const row of this.store.scanVisible<Buffer>('entries', prefix, a, this.vid)) {
        if (isGone(row.value)) continue;
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
    await this.writeBuckets();
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
            let value: unknown = seen ? seen.value : table === 'entries' ? TOMBSTONE : 0;
            if (table === 'entries' && !isGone(value)) {
              const e = decodeEntry(value as Buffer);
              const b = atB !== undefined && !isGone(atB) ? decodeEntry(atB as Buffer) : null;
              if (!b || !sameIdentity(b, e)) e.stamp = c;
              value = encodeEntry(e);
            }
            await this.rows.put(table, withSeq(subj, c), value);
          } else if (table === 'entries' && !isGone(own) && atB !== undefined && !isGone(atB)) {
            const e = decodeEntry(own as Buffer);
            const b = decodeEntry(atB as Buffer);
            if (e.stamp === c && sameIdentity(b, e) && probe) {
              const { parent, name } = entryKeyParts(withSeq(subj, c));
              const part = subj.readUInt16BE(4);
              if (!(await probe(e.path ?? joinPath(parent, name), part, e))) {
                e.stamp = b.stamp;
                await this.rows.put(table, withSeq(subj, c), encodeEntry(e));
              }
            }
            if (sameEntry(e, b)) drop.push([table, withSeq(subj, c)]);
          } else if (table === 'entries' ? isGone(own) && atB !== undefined && isGone(atB) : atB !== undefined && sameValue(own, atB)) {
            drop.push([table, withSeq(subj, c)]);
          }
        }
      }
      await this.rows.flush();
    }
    await this.store.root.transaction(() => {
      for (const [t, k] of drop) void this.store.tables[t].remove(k);
      this.store.points.putSync([record.vid, record.seq], record);
    });
    await this.store.putPoint(record); // refreshes the complete-point cache
  }
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.from(a).equals(Buffer.from(b));
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  return a === b;
}
