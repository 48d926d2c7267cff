/**
 * The pool's local index (seed 003 L318, "persistent handle management
 * index"): LMDB under STATE/index, rebuildable from the packs.
 *
 *   chunks      handle (33 bytes) → 32-byte location: pack no u32 |
 *               record offset u48 + u16 0 | stored length u32 | raw length
 *               u32 | type u8 | codec u8 | u16 0 | payload CRC u32 |
 *               stamp u32
 *   packs       pack no (uint32 key) → PackRecord (backend key, kind,
 *               size, entries, created, state)
 *   quarantine  handle → QuarantineRecord (chunks verify or a read found bad)
 *   meta        "poolId", "epoch" (the writer/gc clock), "nextPack",
 *               "generation" (bumped by every insert, for the bloom filter),
 *               "totals" ({chunks, stored, raw})
 *
 * A chunk's stamp is the epoch of the last writer that stored it or found
 * it by global dedup; gc never sweeps a chunk stamped at or after the
 * oldest running writer (see gc.ts). All changes to an entry are
 * read-modify-write inside a transaction, so a touch never undoes a
 * relocation and a sweep never deletes a chunk touched since it looked.
 */
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import type { ChunkType, PackEntry, PackKind } from './pack-format';
import { handleHex } from './handle';

export interface ChunkLocation {
  pack: number;
  offset: number;
  storedLength: number;
  rawLength: number;
  type: ChunkType;
  codec: number;
  crc: number;
  stamp: number;
}

export interface PackRecord {
  no: number;
  key: string;
  kind: PackKind;
  size: number;
  entries: number;
  created: number;
  /** 'deleting': its chunks are gone from the index; the object is being removed. */
  state: 'live' | 'deleting';
}

export interface QuarantineRecord {
  pack: string;
  offset: number;
  reason: string;
  at: number;
}

export interface IndexTotals {
  chunks: number;
  stored: number;
  raw: number;
}

const LOC_SIZE = 32;

export function encodeLocation(l: ChunkLocation): Buffer {
  const b = Buffer.alloc(LOC_SIZE);
  b.writeUInt32LE(l.pack, 0);
  b.writeUIntLE(l.offset, 4, 6);
  b.writeUInt32LE(l.storedLength, 12);
  b.writeUInt32LE(l.rawLength, 16);
  b[20] = l.type;
  b[21] = l.codec;
  b.writeUInt32LE(l.crc, 24);
  b.writeUInt32LE(l.stamp, 28);
  return b;
}

export function decodeLocation(b: Buffer): ChunkLocation {
  return {
    pack: b.readUInt32LE(0),
    offset: b.readUIntLE(4, 6),
    storedLength: b.readUInt32LE(12),
    rawLength: b.readUInt32LE(16),
    type: b[20] as ChunkType,
    codec: b[21]!,
    crc: b.readUInt32LE(24),
    stamp: b.readUInt32LE(28),
  };
}

export class IndexDb {
  private constructor(
    readonly root: RootDatabase,
    private readonly chunks: Database<Buffer, Buffer>,
    private readonly packDb: Database<PackRecord, number>,
    private readonly quarantineDb: Database<QuarantineRecord, Buffer>,
    private readonly meta: Database<unknown, string>,
  ) {}

  static open(stateDir: string): IndexDb {
    const root = open({ path: path.join(stateDir, 'index'), maxDbs: 8 });
    return new IndexDb(
      root,
      root.openDB<Buffer, Buffer>('chunks', { keyEncoding: 'binary', encoding: 'binary' }),
      root.openDB<PackRecord, number>('packs', { keyEncoding: 'uint32' }),
      root.openDB<QuarantineRecord, Buffer>('quarantine', { keyEncoding: 'binary' }),
      root.openDB<unknown, string>('meta', {}),
    );
  }

  async close(): Promise<void> {
    await this.root.flushed;
    await this.root.close();
  }

  // --- meta -----------------------------------------------------------------

  getMeta<T>(key: string): T | undefined {
    return this.meta.get(key) as T | undefined;
  }

  async setMeta(key: string, value: unknown): Promise<void> {
    await this.meta.put(key, value);
  }

  /** Advances the writer/gc clock and returns the new epoch (committed before it returns). */
  nextEpoch(): number {
    return this.root.transactionSync(() => {
      const e = ((this.meta.get('epoch') as number | undefined) ?? 0) + 1;
      this.meta.putSync('epoch', e);
      return e;
    });
  }

  generation(): number {
    return (this.meta.get('generation') as number | undefined) ?? 0;
  }

  totals(): IndexTotals {
    return (this.meta.get('totals') as IndexTotals | undefined) ?? { chunks: 0, stored: 0, raw: 0 };
  }

  // --- chunks ---------------------------------------------------------------

  get(h: Buffer): ChunkLocation | undefined {
    const v = this.chunks.get(h);
    return v ? decodeLocation(v) : undefined;
  }

  /** Every entry, from a snapshot (entries changed meanwhile may be missed or seen). */
  *entries(): Generator<[Buffer, ChunkLocation]> {
    for (const { key, value } of this.chunks.getRange({ snapshot: true })) {
      yield [Buffer.from(key), decodeLocation(value)];
    }
  }

  *keys(): Generator<Buffer> {
    for (const key of this.chunks.getKeys({ snapshot: true })) yield key as Buffer;
  }

  /**
   * Registers a published pack and its chunks in one transaction. A chunk
   * already indexed keeps its location (its stamp is raised), unless that
   * copy is quarantined or in a pack being deleted: then the new copy
   * replaces it. Returns the pack's number and the handles newly indexed.
   */
  async addPack(
    rec: Omit<PackRecord, 'no'>,
    entries: PackEntry[],
    stamp: number,
    quarantined: (hex: string) => boolean,
  ): Promise<{ no: number; added: Buffer[]; healed: Buffer[] }> {
    const added: Buffer[] = [];
    const healed: Buffer[] = [];
    const no = await this.root.transaction(() => {
      added.length = 0;
      healed.length = 0;
      const no = (this.meta.get('nextPack') as number | undefined) ?? 1;
      this.meta.put('nextPack', no + 1);
      this.packDb.put(no, { ...rec, no });
      const t = { ...this.totals() };
      for (const e of entries) {
        const loc: ChunkLocation = {
          pack: no,
          offset: e.offset,
          storedLength: e.storedLength,
          rawLength: e.rawLength,
          type: e.type,
          codec: e.codec,
          crc: e.crc,
          stamp,
        };
        const curBuf = this.chunks.get(e.handle);
        const cur = curBuf ? decodeLocation(curBuf) : undefined;
        const replace = cur !== undefined && (quarantined(handleHex(e.handle)) || this.packDb.get(cur.pack)?.state !== 'live');
        if (!cur || replace) {
          if (cur) {
            t.stored -= cur.storedLength;
            t.raw -= cur.rawLength;
            t.chunks--;
            this.quarantineDb.remove(e.handle);
            healed.push(e.handle);
          }
          this.chunks.put(e.handle, encodeLocation(loc));
          t.chunks++;
          t.stored += e.storedLength;
          t.raw += e.rawLength;
          added.push(e.handle);
        } else if (cur.stamp < stamp) {
          this.chunks.put(e.handle, encodeLocation({ ...cur, stamp }));
        }
      }
      this.meta.put('totals', t);
      this.meta.put('generation', this.generation() + 1);
      return no;
    });
    return { no, added, healed };
  }

  /** Raises a chunk's stamp (a writer found it by global dedup). */
  async touch(handles: Buffer[], stamp: number): Promise<void> {
    await this.root.transaction(() => {
      for (const h of handles) {
        const v = this.chunks.get(h);
        if (!v) continue;
        const cur = decodeLocation(v);
        if (cur.stamp < stamp) this.chunks.put(h, encodeLocation({ ...cur, stamp }));
      }
    });
  }

  /**
   * Removes, synchronously and in one transaction, those of `handles` for
   * which `dead` still holds on their current entry. Returns what was
   * removed with the locations they had.
   */
  sweepSync(handles: Buffer[], dead: (h: Buffer, loc: ChunkLocation) => boolean): Array<[Buffer, ChunkLocation]> {
    return this.root.transactionSync(() => {
      const gone: Array<[Buffer, ChunkLocation]> = [];
      const t = { ...this.totals() };
      for (const h of handles) {
        const v = this.chunks.get(h);
        if (!v) continue;
        const loc = decodeLocation(v);
        if (!dead(h, loc)) continue;
        this.chunks.removeSync(h);
        this.quarantineDb.removeSync(h);
        t.chunks--;
        t.stored -= loc.storedLength;
        t.raw -= loc.rawLength;
        gone.push([h, loc]);
      }
      this.meta.putSync('totals', t);
      return gone;
    });
  }

  /**
   * Registers a pack made by gc from live records of older packs, and
   * points each moved chunk at its copy if it still lies where it was
   * copied from (stamps are kept). Returns the new pack's number and how
   * many chunks moved.
   */
  async addRelocatedPack(
    rec: Omit<PackRecord, 'no'>,
    moves: Array<{ from: number; fromOffset: number; entry: PackEntry }>,
  ): Promise<{ no: number; moved: number }> {
    let moved = 0;
    const no = await this.root.transaction(() => {
      moved = 0;
      const no = (this.meta.get('nextPack') as number | undefined) ?? 1;
      this.meta.put('nextPack', no + 1);
      this.packDb.put(no, { ...rec, no });
      for (const m of moves) {
        const v = this.chunks.get(m.entry.handle);
        if (!v) continue;
        const cur = decodeLocation(v);
        if (cur.pack !== m.from || cur.offset !== m.fromOffset) continue;
        this.chunks.put(m.entry.handle, encodeLocation({ ...cur, pack: no, offset: m.entry.offset }));
        moved++;
      }
      return no;
    });
    return { no, moved };
  }

  /** The number the next pack will get (packs numbered below it exist now or existed). */
  nextPackNo(): number {
    return (this.meta.get('nextPack') as number | undefined) ?? 1;
  }

  // --- packs ----------------------------------------------------------------

  packs(): PackRecord[] {
    return [...this.packDb.getRange({ snapshot: true })].map((e) => e.value);
  }

  pack(no: number): PackRecord | undefined {
    return this.packDb.get(no);
  }

  async setPackState(no: number, state: PackRecord['state']): Promise<void> {
    await this.root.transaction(() => {
      const r = this.packDb.get(no);
      if (r) this.packDb.put(no, { ...r, state });
    });
  }

  async removePack(no: number): Promise<void> {
    await this.packDb.remove(no);
  }

  // --- quarantine -----------------------------------------------------------

  async quarantine(h: Buffer, rec: QuarantineRecord): Promise<void> {
    await this.quarantineDb.put(h, rec);
  }

  quarantined(): Array<[Buffer, QuarantineRecord]> {
    return [...this.quarantineDb.getRange({ snapshot: true })].map((e) => [Buffer.from(e.key), e.value]);
  }

  async clearQuarantine(h: Buffer): Promise<void> {
    await this.quarantineDb.remove(h);
  }

  /** Empties chunks, packs and quarantine (for a rebuild from the packs). */
  async clearAll(): Promise<void> {
    await this.root.transaction(() => {
      this.chunks.clearSync();
      this.packDb.clearSync();
      this.quarantineDb.clearSync();
      this.meta.put('totals', { chunks: 0, stored: 0, raw: 0 });
      this.meta.put('generation', this.generation() + 1);
    });
  }
}
