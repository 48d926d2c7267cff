/**
 * The timeline of a protected volume for the web console: write rate,
 * transactions, single writes, faded history, super transactions, markers
 * and lag over a time window, bucketed on the server so the answer stays
 * small at any zoom (see api.ts for the shape and its bounds).
 *
 * Rates come from the group's TimelineIndex (timeline-index.ts), one per
 * group, saved under DATA_DIR/console/timeline/ when the daemon stops or
 * after a large change; markers from time travel's marker store; lag from
 * the LagSampler. It reads only through TimelineHost, which the daemon (or
 * the manager role) builds from the group's backup manager.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TransactionRecord, TxnRecord } from '../manager/types';
import type { MarkerRecord } from '../timetravel/markers';
import { UserError } from '../util/errors';
import type { Logger } from '../util/logger';
import {
  DEFAULT_BUCKETS,
  MAX_BUCKETS,
  MAX_ITEMS,
  MAX_WRITES,
  MAX_WRITE_TXNS,
  type MarkerItem,
  type Timeline,
  type TxnItem,
  type WriteItem,
} from './api';
import { loadIndexFile, saveIndexFile } from './timeline-file';
import { FLAG_MERGED, TimelineIndex, type TxnSource } from './timeline-index';

/** A group's history as the console reads it. */
export interface GroupHistory {
  group: string;
  volumeId: number;
  groupVolumes: string[];
  source: TxnSource;
  /** Record headers of AILFC_n (single writes when zoomed in). */
  records(n: number): Promise<TxnRecord[]>;
}

export interface TimelineHost {
  /** The history of a protected volume's group; throws UserError when there is none here. */
  history(volume: string): GroupHistory;
  /** Markers of the volume's group (those placed on the group and on this volume count). */
  markers(volume: string): MarkerRecord[];
  /** Grows whenever a marker is added or removed: markers are re-read only then (10,000 take 0.4 s to decode). */
  markersVersion(): number;
  /** Lag samples of the volume within [from, to] (LagSampler.samples). */
  lag(volume: string, from: number, to: number): { t: number[]; seconds: number[]; bytes: number[] };
}

/** Save an index once this many rows changed since its file was written (and always at close). */
const SAVE_AFTER_ROWS = 50_000;

const KINDS: Record<number, WriteItem['kind']> = { 1: 'write', 2: 'trim', 3: 'zero', 4: 'error', 5: 'resync' };

interface IndexEntry {
  idx: TimelineIndex;
  created: number;
  /** Built or loaded (logged once). */
  logged: boolean;
  /** The saved file has been read (or there was none). */
  loaded: Promise<void>;
}

/** A volume's markers sorted by time, as of a marker-store version. */
interface MarkerCache {
  version: number;
  times: Float64Array;
  items: MarkerRecord[];
}

export class TimelineService {
  private readonly indexes = new Map<string, IndexEntry>();
  private readonly markerCache = new Map<string, MarkerCache>();
  private saving: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly host: TimelineHost,
    /** Where indexes are saved (null: never). */
    private readonly dir: string | null,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  private file(group: string): string | null {
    return this.dir ? path.join(this.dir, `${encodeURIComponent(group)}.idx`) : null;
  }

  /** The group's index, from its file if there is one, brought up to date with the catalog. */
  async index(h: GroupHistory): Promise<TimelineIndex> {
    const created = h.source.state().created;
    let e = this.indexes.get(h.group);
    if (!e || e.created !== created) {
      const idx = new TimelineIndex(h.source);
      const file = this.file(h.group);
      const entry: IndexEntry = { idx, created, logged: false, loaded: Promise.resolve() };
      // Concurrent first callers share one read of the saved file.
      entry.loaded = (async () => {
        const saved = file ? await loadIndexFile(file) : null;
        if (saved && saved.state.created === created) {
          idx.adopt(saved.state, saved.cols, saved.supers);
          entry.logged = true;
        }
      })();
      this.indexes.set(h.group, entry);
      e = entry;
    }
    await e.loaded;
    const t0 = Date.now();
    await e.idx.sync();
    if (!e.logged) {
      e.logged = true;
      this.logger.info({ group: h.group, rows: e.idx.length, ms: Date.now() - t0 }, 'console: timeline index built from the catalog');
    }
    if (e.idx.changedSinceSave >= SAVE_AFTER_ROWS) this.save(h.group, e.idx);
    return e.idx;
  }

  /** Builds (or loads) the index of every group in the background, so the first draw does not wait. */
  warm(volumes: string[]): void {
    void (async () => {
      const seen = new Set<string>();
      for (const v of volumes) {
        try {
          const h = this.host.history(v);
          if (seen.has(h.group)) continue;
          seen.add(h.group);
          await this.index(h);
          this.markersOf(v);
        } catch (err) {
          this.logger.debug({ volume: v, err: (err as Error).message }, 'console: no timeline index');
        }
      }
    })();
  }

  private save(group: string, idx: TimelineIndex): void {
    const file = this.file(group);
    if (!file) return;
    this.saving = this.saving
      .then(async () => {
        await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
        await saveIndexFile(file, idx);
      })
      .catch((err) => this.logger.warn({ group, err: (err as Error).message }, 'console: saving the timeline index failed'));
  }

  /** Saves every index that changed since its file was written. */
  async close(): Promise<void> {
    for (const [group, e] of this.indexes) if (e.idx.changedSinceSave > 0) this.save(group, e.idx);
    await this.saving;
  }

  async timeline(volume: string, q: { from?: number; to?: number; buckets?: number }): Promise<Timeline> {
    const t0 = Date.now();
    const h = this.host.history(volume);
    const idx = await this.index(h);
    const st = h.source.state();
    const now = this.now();
    const extent = idx.extent();
    const buckets = Math.max(1, Math.min(MAX_BUCKETS, Math.floor(q.buckets ?? DEFAULT_BUCKETS)));
    let from = q.from ?? (extent ? extent.first : now - 3600_000);
    let to = q.to ?? Math.max(now, extent?.last ?? now);
    if (q.from === undefined && q.to === undefined && extent) {
      const pad = Math.max(1000, (to - from) * 0.02);
      from -= pad;
      to += pad;
    }
    if (!(to > from)) throw new UserError('invalid', `the window is empty: from (${from}) must be before to (${to})`);
    const bucketMs = (to - from) / buckets;
    const rate = this.rates(idx, from, bucketMs, buckets);
    const lo = idx.firstEndingAtOrAfter(from);
    const hi = idx.firstStartingAtOrAfter(to);
    const total = Math.max(0, hi - lo);
    const items = total <= MAX_ITEMS ? this.items(h, idx, lo, hi) : null;
    const writes = items && items.length <= MAX_WRITE_TXNS ? await this.writes(h, items, from, to) : null;
    return {
      volume,
      group: h.group,
      groupVolumes: h.groupVolumes,
      now,
      extent,
      applied: { container: st.lastContainer, seq: st.lastSeq, time: st.lastTime },
      from,
      to,
      bucketMs,
      rate,
      transactions: { total, items },
      writes,
      faded: this.faded(idx, lo, hi, bucketMs),
      supers: [...idx.supers.values()]
        .filter((s) => s.lastTime >= from && s.fromTime <= to)
        .map((s) => ({ id: s.id, fromSeq: s.fromSeq, toSeq: s.lastSeq, from: s.fromTime, to: s.lastTime, complete: s.complete })),
      markers: this.markers(volume, from, to, bucketMs, buckets),
      lag: downsample(this.host.lag(volume, from, to), from, bucketMs, buckets),
      stats: { rows: idx.length, serverMs: Date.now() - t0 },
    };
  }

  private rates(idx: TimelineIndex, from: number, bucketMs: number, n: number): Timeline['rate'] {
    const c = idx.cols;
    const t: number[] = [];
    const bytes: number[] = [];
    const writes: number[] = [];
    const txns: number[] = [];
    let prevB = idx.cumulativeAt(c.cumB, from);
    let prevW = idx.cumulativeAt(c.cumW, from);
    for (let i = 0; i < n; i++) {
      const a = from + i * bucketMs;
      const b = a + bucketMs;
      const cb = idx.cumulativeAt(c.cumB, b);
      const cw = idx.cumulativeAt(c.cumW, b);
      t.push(Math.round(a));
      bytes.push(Math.round(cb - prevB));
      writes.push(Math.round((cw - prevW) * 1000) / 1000);
      txns.push(Math.max(0, idx.firstStartingAtOrAfter(b) - idx.firstEndingAtOrAfter(a)));
      prevB = cb;
      prevW = cw;
    }
    return { t, bytes, writes, transactions: txns };
  }

  /** The transactions of rows lo..hi-1, read from the catalog (at most MAX_ITEMS). */
  private items(h: GroupHistory, idx: TimelineIndex, lo: number, hi: number): TxnItem[] {
    if (hi <= lo) return [];
    const recs = h.source.transactions({ from: idx.cols.n[lo]!, to: idx.cols.n[hi - 1]!, limit: MAX_ITEMS });
    return recs
      .filter((r) => r.records > 0)
      .map((r) => ({
        n: r.n,
        firstSeq: r.firstSeq,
        lastSeq: r.lastSeq,
        firstTime: r.firstTime,
        lastTime: r.lastTime,
        records: r.records,
        bytes: r.bytesApplied,
        errors: r.errors,
        mergedFrom: r.mergedFrom ?? null,
        superId: r.superTransaction?.id ?? null,
      }));
  }

  /** Single writes of a narrow window (unmerged transactions only: merged ones lost their inner points). */
  private async writes(h: GroupHistory, items: TxnItem[], from: number, to: number): Promise<WriteItem[] | null> {
    if (items.reduce((s, i) => s + i.records, 0) > MAX_WRITES * 4) return null;
    const out: WriteItem[] = [];
    for (const it of items) {
      if (it.mergedFrom !== null || it.superId !== null) continue;
      let recs: TxnRecord[];
      try {
        recs = await h.records(it.n);
      } catch {
        return null;
      }
      for (const r of recs) {
        if (r.time < from || r.time > to) continue;
        out.push({ seq: r.seq, time: r.time, kind: KINDS[r.kind] ?? 'other', offset: r.offset, length: r.length, volume: r.volumeId });
        if (out.length > MAX_WRITES) return null;
      }
    }
    return out;
  }

  /** Runs of merged rows in lo..hi-1 as time spans, joined when closer than a bucket. */
  private faded(idx: TimelineIndex, lo: number, hi: number, bucketMs: number): Timeline['faded'] {
    const c = idx.cols;
    const out: Timeline['faded'] = [];
    for (let i = lo; i < hi; i++) {
      if (!(c.flags[i]! & FLAG_MERGED)) continue;
      const last = out[out.length - 1];
      if (last && c.t0[i]! - last.to <= bucketMs) {
        last.to = c.t1[i]!;
        last.transactions++;
      } else out.push({ from: c.t0[i]!, to: c.t1[i]!, transactions: 1 });
    }
    return out;
  }

  private markersOf(volume: string): MarkerCache {
    const version = this.host.markersVersion();
    let c = this.markerCache.get(volume);
    if (!c || c.version !== version) {
      const items = this.host
        .markers(volume)
        .filter((m) => m.volume === null || m.volume === volume)
        .sort((a, b) => a.time - b.time);
      c = { version, times: Float64Array.from(items, (m) => m.time), items };
      this.markerCache.set(volume, c);
    }
    return c;
  }

  private markers(volume: string, from: number, to: number, bucketMs: number, n: number): Timeline['markers'] {
    const c = this.markersOf(volume);
    const all = c.items.slice(lowerBound(c.times, from), lowerBound(c.times, to + 1));
    if (all.length <= MAX_ITEMS) {
      const items: MarkerItem[] = all.map((m) => ({
        name: m.name,
        seq: m.seq,
        time: m.time,
        kind: m.kind,
        auto: m.auto,
        volume: m.volume,
        reason: m.reason,
      }));
      return { total: all.length, items, buckets: null };
    }
    const application = new Array<number>(n).fill(0);
    const crash = new Array<number>(n).fill(0);
    for (const m of all) {
      const i = Math.min(n - 1, Math.floor((m.time - from) / bucketMs));
      if (m.kind === 'application-consistent') application[i]!++;
      else crash[i]!++;
    }
    return { total: all.length, items: null, buckets: { application, crash } };
  }
}

/** Lag samples reduced to one per bucket (the largest: a spike must not vanish when zoomed out). */
function downsample(s: { t: number[]; seconds: number[]; bytes: number[] }, from: number, bucketMs: number, n: number): Timeline['lag'] {
  if (s.t.length <= n) return s;
  const t: number[] = [];
  const seconds: number[] = [];
  const bytes: number[] = [];
  let cur = -1;
  for (let i = 0; i < s.t.length; i++) {
    const b = Math.min(n - 1, Math.floor((s.t[i]! - from) / bucketMs));
    if (b !== cur) {
      cur = b;
      t.push(s.t[i]!);
      seconds.push(s.seconds[i]!);
      bytes.push(s.bytes[i]!);
    } else {
      seconds[seconds.length - 1] = Math.max(seconds[seconds.length - 1]!, s.seconds[i]!);
      bytes[bytes.length - 1] = Math.max(bytes[bytes.length - 1]!, s.bytes[i]!);
    }
  }
  return { t, seconds, bytes };
}

/** The manager API the console's history needs (BackupManager). */
export interface ManagerLike {
  status(): { lastContainer: number; lastSeq: number; lastTime: number; transactions: number };
  createdAt(): number;
  transactions(opts?: { from?: number; to?: number; limit?: number }): TransactionRecord[];
  transactionNumbers(to?: number): number[];
  history: { status(): { firstContainer: number }; records(n: number): Promise<TxnRecord[]> };
}

/** A group's history read from its backup manager. */
export function managerHistory(m: ManagerLike, group: string, volumeId: number, groupVolumes: string[]): GroupHistory {
  return {
    group,
    volumeId,
    groupVolumes,
    source: {
      state: () => {
        const s = m.status();
        return {
          created: m.createdAt(),
          lastContainer: s.lastContainer,
          lastSeq: s.lastSeq,
          lastTime: s.lastTime,
          firstContainer: m.history.status().firstContainer,
          count: s.transactions,
        };
      },
      transactions: (o) => m.transactions(o),
      transactionNumbers: (to) => m.transactionNumbers(to),
    },
    records: (n) => m.history.records(n),
  };
}

/** First index with a[i] >= v. */
function lowerBound(a: Float64Array, v: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
