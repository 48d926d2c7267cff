/**
 * Time travel's records, in one LMDB environment (DATA_DIR/timetravel/index),
 * each kind kept by a store named for it:
 *
 *   ViewStore     views   name -> ViewRecord (snapshots, clones, diff exports)
 *                 layers  id -> LayerRecord (a clone's write layers)
 *                 blocks  [layerId, block] -> true (committed at flush)
 *                 meta    'nextLayerId'
 *   MarkerStore   markers [group, name] -> MarkerRecord
 *                 schedules volume -> Schedule
 *   RestoreStore  meta    'restore:VOL' -> the intent of a running restore,
 *                         'restored:N' -> results, 'restoreCount'
 *
 * The meta database also holds 'format', the layout's version
 * (util/format-version.ts). Layer files live in DATA_DIR/timetravel/layers/.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { STORE_FORMATS, stampStore } from '../util/format-version';
import type { ResolvedPoint } from './point';
import type { MarkerRecord, Schedule } from './markers';

export interface LayerRecord {
  id: number;
  /** Absolute path of the sparse layer file. */
  file: string;
  size: number;
  blockSize: number;
  /** Frozen layers are shared by clones and never written again. */
  frozen: boolean;
  created: string;
}

export interface ViewRecord {
  name: string;
  /** diff: the image of `point` restricted to what changed since `from` (see diff.ts). */
  kind: 'snapshot' | 'clone' | 'diff';
  /** The protected volume whose history it reads. */
  volume: string;
  group: string;
  volumeId: number;
  size: number;
  point: ResolvedPoint;
  /** For a clone of a clone: the clone it was made from. */
  parent: string | null;
  /** Write layers, bottom first; a clone's last one is its writable top. Empty for a snapshot. */
  layers: number[];
  readOnly: boolean;
  created: string;
  /** Steps taken (snapshots and unwritten clones can be stepped). */
  steps: number;
  /** Set for a surfaced marker (rewind surface): the marker's name. */
  surfaced?: string;
  /** For a diff export: the earlier point. */
  from?: ResolvedPoint;
  /** Its own access list (allow entries); absent: the source volume's. */
  allow?: string[];
  /** Set when its base is an archived point (archive:NAME), not the journal: the point's name. */
  archive?: string;
}

type BlockKey = [number, number];

export interface RestoreIntentRecord {
  volume: string;
  seq: number;
  ranges: Array<{ offset: number; length: number }> | null;
  undoSeq: number | null;
  started: string;
  /** Restoring to an archived point (its name); seq is then the point's. */
  archive?: string;
}

/** The three stores over one environment. */
export interface TimeTravelStores {
  views: ViewStore;
  markers: MarkerStore;
  restores: RestoreStore;
  close(): Promise<void>;
}

export function openStores(dir: string): TimeTravelStores {
  fs.mkdirSync(path.join(dir, 'layers'), { recursive: true, mode: 0o700 });
  const where = path.join(dir, 'index');
  const root = open({ path: where, maxDbs: 8 });
  const meta = root.openDB<unknown, string>('meta', {});
  const layers = root.openDB<LayerRecord, number>('layers', {});
  try {
    stampStore(meta, "time travel's index", where, STORE_FORMATS.timetravel);
  } catch (err) {
    void root.close();
    throw err;
  }
  // A moved data directory: layer files are recorded by absolute path (see Catalog.relocate).
  for (const { value: l } of layers.getRange({})) {
    const here = path.join(dir, 'layers', path.basename(l.file));
    if (here !== l.file && !fs.existsSync(l.file) && fs.existsSync(here)) layers.putSync(l.id, { ...l, file: here });
  }
  return {
    views: new ViewStore(
      dir,
      root,
      root.openDB<ViewRecord, string>('views', {}),
      layers,
      root.openDB<boolean, BlockKey>('blocks', {}),
      meta,
    ),
    markers: new MarkerStore(
      root,
      root.openDB<MarkerRecord, [string, string]>('markers', {}),
      root.openDB<Schedule, string>('schedules', {}),
    ),
    restores: new RestoreStore(root, meta),
    close: () => root.close(),
  };
}

/** Snapshots, clones and diff exports, and the write layers of clones. */
export class ViewStore {
  constructor(
    readonly dir: string,
    private readonly root: RootDatabase,
    private readonly viewsDb: Database<ViewRecord, string>,
    private readonly layersDb: Database<LayerRecord, number>,
    private readonly blocksDb: Database<boolean, BlockKey>,
    private readonly meta: Database<unknown, string>,
  ) {}

  views(): ViewRecord[] {
    return [...this.viewsDb.getRange({})].map((e) => e.value);
  }

  view(name: string): ViewRecord | undefined {
    return this.viewsDb.get(name);
  }

  layer(id: number): LayerRecord | undefined {
    return this.layersDb.get(id);
  }

  layers(): LayerRecord[] {
    return [...this.layersDb.getRange({})].map((e) => e.value);
  }

  /** Blocks committed to a layer, ascending. */
  layerBlocks(id: number): number[] {
    const out: number[] = [];
    for (const { key } of this.blocksDb.getRange({ start: [id, 0], end: [id + 1, 0] })) out.push(key[1]);
    return out;
  }

  /** Creates the sparse file of a new layer and returns its record (not yet stored). */
  async newLayer(size: number, blockSize: number): Promise<LayerRecord> {
    const id = await this.root.transaction(() => {
      const n = (this.meta.get('nextLayerId') as number | undefined) ?? 1;
      this.meta.putSync('nextLayerId', n + 1);
      return n;
    });
    const file = path.join(this.dir, 'layers', `layer-${id}.raw`);
    const fh = await fs.promises.open(file, 'w', 0o600);
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return { id, file, size, blockSize, frozen: false, created: new Date().toISOString() };
  }

  /** Stores views and layers (and deletes others) in one transaction. */
  async put(change: { views?: ViewRecord[]; layers?: LayerRecord[]; removeViews?: string[]; removeLayers?: number[] }): Promise<void> {
    await this.root.transaction(() => {
      for (const v of change.views ?? []) this.viewsDb.putSync(v.name, v);
      for (const l of change.layers ?? []) this.layersDb.putSync(l.id, l);
      for (const n of change.removeViews ?? []) this.viewsDb.removeSync(n);
      for (const id of change.removeLayers ?? []) {
        this.layersDb.removeSync(id);
        for (const { key } of this.blocksDb.getRange({ start: [id, 0], end: [id + 1, 0] })) this.blocksDb.removeSync(key);
      }
    });
    await this.root.flushed;
  }

  async commitBlocks(id: number, blocks: Iterable<number>): Promise<void> {
    await this.root.transaction(() => {
      for (const b of blocks) this.blocksDb.putSync([id, b], true);
    });
    await this.root.flushed;
  }
}

/** Markers (pseudosnapshots) and the schedules that place them (markers.ts). */
export class MarkerStore {
  private changes = 0;

  /** Grows with every marker added or removed (this process is the only writer): readers cache on it. */
  get version(): number {
    return this.changes;
  }

  constructor(
    private readonly root: RootDatabase,
    private readonly markersDb: Database<MarkerRecord, [string, string]>,
    private readonly schedulesDb: Database<Schedule, string>,
  ) {}

  marker(group: string, name: string): MarkerRecord | undefined {
    return this.markersDb.get([group, name]);
  }

  markers(group?: string): MarkerRecord[] {
    const range = group === undefined ? {} : { start: [group, ''] as [string, string], end: [group + '\u0000', ''] as [string, string] };
    return [...this.markersDb.getRange(range)].map((e) => e.value).filter((m) => group === undefined || m.group === group);
  }

  /** Adds a marker unless the name is taken in its group (then false). */
  async addMarker(m: MarkerRecord): Promise<boolean> {
    const ok = await this.markersDb.transaction(() => {
      if (this.markersDb.get([m.group, m.name]) !== undefined) return false;
      this.markersDb.putSync([m.group, m.name], m);
      return true;
    });
    if (ok) this.changes++;
    return ok;
  }

  async removeMarkers(keys: Array<[string, string]>): Promise<void> {
    await this.root.transaction(() => {
      for (const k of keys) this.markersDb.removeSync(k);
    });
    this.changes++;
  }

  schedules(): Schedule[] {
    return [...this.schedulesDb.getRange({})].map((e) => e.value);
  }

  schedule(volume: string): Schedule | undefined {
    return this.schedulesDb.get(volume);
  }

  async putSchedule(s: Schedule | null, volume: string): Promise<void> {
    if (s) await this.schedulesDb.put(volume, s);
    else await this.schedulesDb.remove(volume);
    await this.root.flushed;
  }
}

/** Production restores: the intent of one running (crash safety) and the results of those done. */
export class RestoreStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly meta: Database<unknown, string>,
  ) {}

  /** Sets (or with null, clears, optionally logging the result) the volume's restore intent. */
  async putRestoreIntent(intent: RestoreIntentRecord | null, volume?: string, result?: unknown): Promise<void> {
    await this.root.transaction(() => {
      if (intent) this.meta.putSync(`restore:${intent.volume}`, intent);
      else {
        this.meta.removeSync(`restore:${volume}`);
        if (result) {
          const n = ((this.meta.get('restoreCount') as number | undefined) ?? 0) + 1;
          this.meta.putSync('restoreCount', n);
          this.meta.putSync(`restored:${String(n).padStart(10, '0')}`, result);
        }
      }
    });
    await this.root.flushed;
  }

  restoreIntents(): RestoreIntentRecord[] {
    return [...this.meta.getRange({ start: 'restore:', end: 'restore;' })].map((e) => e.value as RestoreIntentRecord);
  }

  restoreLog<T = never>(): T[] {
    return [...this.meta.getRange({ start: 'restored:', end: 'restored;' })].map((e) => e.value as T);
  }
}
