/**
 * One writer's chunk output: global dedup through the index, then zstd
 * (on the threadpool), encryption and appending to the session's open
 * data and tree packs; full packs are sealed and published while the
 * archive goes on. A chunk is "pending" from the moment it is queued until
 * its pack is indexed, so a session never stores the same chunk twice.
 *
 * The session's stamp (its epoch) marks every chunk it stores or finds by
 * global dedup, which is what keeps gc's hands off them until the point
 * commits (gc.ts). abort() drops the open packs; packs already published
 * stay as unreferenced chunks for the next gc.
 */
import * as fs from 'node:fs';
import { encodeChunks } from './codec';
import { crashPoint } from './crash-hook';
import type { ChunkStore } from './chunk-store';
import { handleHex, type Handle } from './handle';
import { KIND_DATA, KIND_TREE, TYPE_LEAF, type ChunkType, type PackKind } from './pack-format';
import { PackWriter } from './pack-writer';

export type PutResult = 'stored' | 'dedup' | 'pending';

export interface PutItem {
  h: Handle;
  type: ChunkType;
  plain: Buffer;
}

export interface SessionCounters {
  chunksStored: number;
  bytesStored: number;
  packsPublished: number;
}

export class WriteSession {
  readonly counters: SessionCounters = { chunksStored: 0, bytesStored: 0, packsPublished: 0 };
  private readonly pending = new Set<string>();
  private readonly open = new Map<PackKind, Promise<PackWriter>>();
  private readonly publishing = new Set<Promise<void>>();
  private failure: unknown = null;

  constructor(
    private readonly store: ChunkStore,
    readonly stamp: number,
    private readonly stagingDir: string,
    private readonly poolId: string,
    private readonly packTarget: number,
  ) {}

  /** Makes sure the pool has chunk `h` (plaintext `plain`). */
  async put(h: Handle, type: ChunkType, plain: Buffer): Promise<PutResult> {
    return (await this.putMany([{ h, type, plain }]))[0]!;
  }

  /**
   * Makes sure the pool has each chunk: dedup first (the session's pending
   * set, then the index), then the new ones compressed in one threadpool
   * job and appended. `plain` buffers are not retained once this resolves.
   */
  async putMany(items: PutItem[]): Promise<PutResult[]> {
    if (this.failure) throw this.failure;
    const results: PutResult[] = new Array<PutResult>(items.length);
    const fresh: PutItem[] = [];
    items.forEach((it, i) => {
      const hex = handleHex(it.h);
      if (this.pending.has(hex)) results[i] = 'pending';
      else {
        const loc = this.store.lookup(it.h);
        if (loc) {
          if (loc.stamp < this.stamp) this.store.touch(it.h, this.stamp);
          results[i] = 'dedup';
        } else {
          this.pending.add(hex);
          fresh.push(it);
          results[i] = 'stored';
        }
      }
    });
    if (fresh.length === 0) return results;
    try {
      const enc = await encodeChunks(
        this.store.codec,
        fresh.map((it) => ({ handle: it.h, type: it.type, plain: it.plain })),
      );
      for (let k = 0; k < fresh.length; k++) {
        const it = fresh[k]!;
        const kind = it.type === TYPE_LEAF ? KIND_DATA : KIND_TREE;
        // Checked after the last await before appending: a writer being sealed gets no more records.
        let p: Promise<PackWriter>;
        let w: PackWriter;
        do ({ p, w } = await this.writer(kind));
        while (w.closing);
        const e = w.append(it.h, it.type, enc[k]!.codec, it.plain.length, enc[k]!.stored, enc[k]!.crc);
        this.counters.chunksStored++;
        this.counters.bytesStored += e.storedLength;
        if (w.size >= this.packTarget) {
          w.closing = true;
          if (this.open.get(kind) === p) this.open.delete(kind);
          this.track(this.publishWriter(w));
        }
        await w.backpressure();
      }
      return results;
    } catch (err) {
      this.failure ??= err;
      throw this.failure;
    }
  }

  /** The open writer of a kind (created on first use); it may be closing by the time the caller resumes. */
  private async writer(kind: PackKind): Promise<{ p: Promise<PackWriter>; w: PackWriter }> {
    for (;;) {
      let p = this.open.get(kind);
      if (!p) {
        p = PackWriter.create(this.stagingDir, kind, this.poolId, this.store.codec.key !== null);
        this.open.set(kind, p);
      }
      const w = await p;
      if (!w.closing) return { p, w };
      if (this.open.get(kind) === p) this.open.delete(kind);
    }
  }

  private track(p: Promise<void>): void {
    const q = p.catch((err: unknown) => {
      this.failure ??= err;
    });
    this.publishing.add(q);
    void q.finally(() => this.publishing.delete(q));
  }

  private async publishWriter(w: PackWriter): Promise<void> {
    let sealed;
    try {
      sealed = await w.seal(this.store.codec.key);
      crashPoint('pack-sealed');
      await this.store.publish(sealed, this.stamp);
    } catch (err) {
      await fs.promises.rm(w.file, { force: true }); // its chunks are referenced by nothing committed
      throw err;
    }
    this.counters.packsPublished++;
    for (const e of sealed.entries) this.pending.delete(handleHex(e.handle));
  }

  /** Seals and publishes every open pack; after this all the session's chunks are indexed. */
  async flush(): Promise<void> {
    const open = [...this.open.values()];
    this.open.clear();
    for (const p of open) {
      this.track(
        p.then((w) => {
          if (w.closing) return;
          w.closing = true;
          return this.publishWriter(w);
        }),
      );
    }
    while (this.publishing.size > 0) await Promise.all([...this.publishing]);
    if (this.failure) throw this.failure;
    await this.store.settle();
  }

  /** Drops unpublished packs (the archive failed). */
  async abort(): Promise<void> {
    const open = [...this.open.values()];
    this.open.clear();
    for (const p of open) await p.then((w) => w.abort()).catch(() => undefined);
    while (this.publishing.size > 0) await Promise.all([...this.publishing]);
  }
}
