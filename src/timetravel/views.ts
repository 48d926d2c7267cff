/**
 * Snapshots, clones and diff exports of protected volumes: made at a point
 * without copying data (a PointImage, plus write layers for clones), served
 * as NBD exports (ViewExport), stepped through history, deleted. Every view
 * pins the history it reads. Creation, deletion and stepping are serialised.
 */
import * as fs from 'node:fs';
import { UserError } from '../util/errors';
import { validateVolumeName } from '../catalog/catalog';
import { parseNearest } from './point-gaps';
import { resolvePoint, stepSeq, type PointSpec, type ResolvedPoint } from './point';
import { resolveForImage } from './resolver';
import { PointImage, type ImageSource } from './point-image';
import { LayeredImage, WriteLayer } from './layers';
import { ViewExport } from './view-export';
import { changedRuns, type BlockRunLite } from './diff';
import { ViewBitmaps, type ViewBitmapsOptions } from './dirty-bitmap';
import type { PointInfo, TimeTravelHost, ViewInfo } from './api';
import type { PointService } from './points';
import type { VolumeContext } from './ports';
import type { LayerRecord, MarkerStore, ViewRecord, ViewStore } from './store';
import { bare, newRecord, pinPoint, viewAcl } from './view-records';
import {
  archivePointInfo,
  archivePointName,
  archiveResolved,
  checkArchiveSize,
  type ArchiveImage,
  type ArchiveImages,
} from './archive-image';

interface ViewRuntime {
  record: ViewRecord;
  image: ImageSource;
  layered: LayeredImage | null;
  layers: WriteLayer[];
  exp: ViewExport;
  /** The archived point it reads, released with the view. */
  archive: ArchiveImage | null;
}

export class ViewService {
  private readonly runtimes = new Map<string, Promise<ViewRuntime>>();
  /** Serialises view creation, deletion and stepping. */
  private mutex: Promise<unknown> = Promise.resolve();
  /** Archived points as bases (archive:NAME), once the archiver is attached. */
  archives: ArchiveImages | null = null;

  constructor(
    private readonly host: TimeTravelHost,
    private readonly store: ViewStore,
    private readonly markerStore: MarkerStore,
    private readonly points: PointService,
  ) {}

  serialised<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn, fn);
    this.mutex = run.catch(() => undefined);
    return run;
  }

  archiveImages(): ArchiveImages {
    if (!this.archives) throw new UserError('invalid', 'archived points are not available on this daemon');
    return this.archives;
  }

  /** Archived points that views read, with the views (a forget of them is refused). */
  archivesInUse(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const v of this.store.views()) if (v.archive) out.set(v.archive, [...(out.get(v.archive) ?? []), v.name]);
    return out;
  }

  has(name: string): boolean {
    return this.store.view(name) !== undefined;
  }

  /**
   * What the NBD provider needs of a view, read from its record alone (no
   * block counting): its source volume, own access list and description.
   */
  exportEntry(name: string): { name: string; volume: string; allow: string[] | undefined; description: string } | undefined {
    const v = this.store.view(name);
    return (
      v && {
        name: v.name,
        volume: v.volume,
        allow: v.allow,
        description: `rewind ${v.kind} of ${v.volume} at ${v.archive ? `archived point ${v.archive}` : `seq ${v.point.seq}`} (${new Date(v.point.time).toISOString()})`,
      }
    );
  }

  exportEntries(): Array<NonNullable<ReturnType<ViewService['exportEntry']>>> {
    return this.store.views().map((v) => this.exportEntry(v.name)!);
  }

  list(volume?: string): ViewInfo[] {
    return this.store
      .views()
      .filter((v) => !volume || v.volume === volume || v.name === volume)
      .map((v) => this.info(v));
  }

  get(name: string): ViewInfo {
    const v = this.store.view(name);
    if (!v) throw new UserError('not-found', `no snapshot or clone named "${name}"`);
    return this.info(v);
  }

  info(v: ViewRecord): ViewInfo {
    let written = 0;
    if (v.kind === 'clone' && v.layers.length) {
      const top = v.layers[v.layers.length - 1]!;
      written = this.store.layerBlocks(top).length;
    }
    return {
      name: v.name,
      kind: v.kind,
      volume: v.volume,
      group: v.group,
      size: v.size,
      readOnly: v.readOnly,
      parent: v.parent,
      point: v.archive ? archivePointInfo(v.archive, v.point, v.volume) : this.points.pointInfo(v.group, v.point),
      created: v.created,
      writtenBlocks: written,
      steps: v.steps,
      allow: v.allow ?? null,
    };
  }

  /** The NBD export of a view (one per view, shared by its connections), or null. */
  async openExport(name: string): Promise<ViewExport | null> {
    if (!this.store.view(name)) return null;
    return (await this.runtime(name)).exp;
  }

  runtime(name: string): Promise<ViewRuntime> {
    let r = this.runtimes.get(name);
    if (!r) {
      r = this.buildRuntime(this.store.view(name)!);
      r.catch(() => this.runtimes.delete(name));
      this.runtimes.set(name, r);
    }
    return r;
  }

  private async buildRuntime(record: ViewRecord): Promise<ViewRuntime> {
    const ctx = this.host.context(record.volume);
    const archive = record.archive ? this.archiveImages().open(record.archive, record.volume, ctx.history.blockSize) : null;
    const base = archive ?? (await PointImage.open(ctx.history, record.volumeId, record.size, record.point));
    const holder: { rt?: ViewRuntime } = {};
    const bitmaps = this.viewBitmaps(record, ctx, holder);
    let rt: ViewRuntime;
    if (record.kind === 'diff' || record.kind === 'snapshot') {
      rt = { record, image: base, layered: null, layers: [], exp: new ViewExport(base, null, bitmaps), archive };
    } else {
      const layers = record.layers.map((id) => {
        const rec = this.store.layer(id);
        if (!rec) throw new Error(`clone ${record.name}: layer ${id} is missing`);
        return WriteLayer.open(this.store, rec);
      });
      const layered = new LayeredImage(base, layers, record.readOnly);
      rt = { record, image: layered, layered, layers, exp: new ViewExport(layered, layered, bitmaps), archive };
    }
    holder.rt = rt;
    return rt;
  }

  /**
   * The qemu:dirty-bitmap contexts of a view at point B: a diff export's own
   * (its name, and @seq:A), and "changed since POINT" for any point up to B;
   * a clone's own blocks are always dirty. See dirty-bitmap.ts.
   */
  private viewBitmaps(record: ViewRecord, ctx: VolumeContext, holder: { rt?: ViewRuntime }): ViewBitmaps {
    const b = record.point;
    const from = record.from;
    const own: ViewBitmapsOptions['own'] = [];
    if (record.kind === 'diff' && from) {
      let runs: Promise<BlockRunLite[]> | null = null;
      const get = (): Promise<BlockRunLite[]> => (runs ??= changedRuns(ctx.history, record.volumeId, from, b));
      own.push({ leaf: record.name, runs: get }, { leaf: `@seq:${from.seq}`, runs: get });
    }
    return new ViewBitmaps({
      own,
      blockSize: ctx.history.blockSize,
      size: record.size,
      since: async (leaf) => {
        if (record.archive) return null; // no journal history behind an archived point
        const a = await resolvePoint(ctx.history, this.points.specOf(ctx, leaf), this.points.markerLookup(record.volume));
        if (a.seq > b.seq) return null;
        return a.seq === b.seq ? [] : changedRuns(ctx.history, record.volumeId, a, b);
      },
      listed: () =>
        this.markerStore
          .markers(record.group)
          .filter((m) => m.seq <= b.seq)
          .sort((x, y) => y.seq - x.seq)
          .slice(0, 64)
          .map((m) => m.name),
      ...(record.kind === 'clone' ? { alsoDirty: (blk: number) => (holder.rt?.layers ?? []).some((l) => l.has(blk)) } : {}),
    });
  }

  checkNewName(name: string): void {
    const err = validateVolumeName(name);
    if (err) throw new UserError('invalid', err.replace(/volume name/g, 'name'));
    if (this.host.volumeExists(name) || this.store.view(name)) throw new UserError('conflict', `an export named "${name}" already exists`);
  }

  defaultName(base: string, kind: string, seq: number): string {
    const stem = `${base}.${kind}-${seq}`.slice(0, 56);
    let name = stem;
    for (let i = 2; this.host.volumeExists(name) || this.store.view(name); i++) name = `${stem}-${i}`;
    return name;
  }

  /** `rewind snapshot VOL --at POINT [--name N] [--allow SPEC]...`. */
  snapshot(volume: string, at: unknown, name?: unknown, opts: { allow?: unknown; nearest?: unknown } = {}): Promise<ViewInfo> {
    const allow = viewAcl(opts.allow);
    return this.serialised(async () => {
      if (archivePointName(at) !== null) return this.archiveView('snapshot', volume, at, name, { readOnly: true, allow });
      const { point, ctx } = await this.points.resolve(volume, at, { nearest: opts.nearest });
      const viewName = name === undefined || name === null || name === '' ? this.defaultName(volume, 'snap', point.seq) : String(name);
      this.checkNewName(viewName);
      const rec = newRecord('snapshot', viewName, volume, ctx, point, { readOnly: true, ...(allow ? { allow } : {}) });
      pinPoint(ctx.history, `view:${viewName}`, point);
      await this.store.put({ views: [rec] });
      this.host.logger.info({ view: viewName, volume, seq: point.seq }, 'snapshot created');
      return this.points.withSubstitute(this.info(rec), point);
    });
  }

  /**
   * `rewind clone SOURCE [--at POINT] [--name N]`: SOURCE is a protected
   * volume (then --at is required) or a clone (its current content; --at is
   * refused).
   */
  clone(
    source: string,
    at: unknown,
    name?: unknown,
    opts: { readOnly?: boolean; allow?: unknown; nearest?: unknown } = {},
  ): Promise<ViewInfo> {
    const allow = viewAcl(opts.allow);
    return this.serialised(async () => {
      const parent = this.store.view(source);
      if (parent) return this.cloneOfView(parent, at, name, { ...opts, allow });
      if (at === undefined || at === null || at === '')
        throw new UserError('invalid', `--at POINT is required to clone volume "${source}"`);
      if (archivePointName(at) !== null) return this.archiveView('clone', source, at, name, { readOnly: opts.readOnly === true, allow });
      const { point, ctx } = await this.points.resolve(source, at, { nearest: opts.nearest });
      const viewName = name === undefined || name === null || name === '' ? this.defaultName(source, 'clone', point.seq) : String(name);
      this.checkNewName(viewName);
      const layer = await this.store.newLayer(ctx.size, ctx.history.blockSize);
      const rec = newRecord('clone', viewName, source, ctx, point, {
        layers: [layer.id],
        readOnly: opts.readOnly === true,
        ...(allow ? { allow } : {}),
      });
      pinPoint(ctx.history, `view:${viewName}`, point);
      await this.store.put({ views: [rec], layers: [layer] });
      this.host.logger.info({ view: viewName, volume: source, seq: point.seq }, 'clone created');
      return this.points.withSubstitute(this.info(rec), point);
    });
  }

  /** A snapshot or clone whose base is an archived point: no history pinned, nothing copied. */
  private async archiveView(
    kind: 'snapshot' | 'clone',
    volume: string,
    at: unknown,
    name: unknown,
    opts: { readOnly: boolean; allow: string[] | undefined },
  ): Promise<ViewInfo> {
    const ctx = this.host.context(volume);
    const ref = this.archiveImages().ref(archivePointName(at)!, volume);
    checkArchiveSize(ref, ctx.size);
    const stem = `${volume}.${ref.point.replace(/[^A-Za-z0-9._-]/g, '_')}`;
    const viewName =
      name === undefined || name === null || name === ''
        ? this.defaultName(stem, kind === 'clone' ? 'clone' : 'snap', ref.seq ?? 0)
        : String(name);
    this.checkNewName(viewName);
    const layer = kind === 'clone' ? await this.store.newLayer(ctx.size, ctx.history.blockSize) : null;
    const rec = newRecord(kind, viewName, volume, ctx, archiveResolved(ref, ctx.volumeId), {
      archive: ref.point,
      layers: layer ? [layer.id] : [],
      readOnly: opts.readOnly,
      ...(opts.allow ? { allow: opts.allow } : {}),
    });
    await this.store.put({ views: [rec], ...(layer ? { layers: [layer] } : {}) });
    this.host.logger.info({ view: viewName, volume, archive: ref.point }, `${kind} of an archived point created`);
    return this.info(rec);
  }

  private async cloneOfView(
    parent: ViewRecord,
    at: unknown,
    name: unknown,
    opts: { readOnly?: boolean; allow?: string[] | undefined },
  ): Promise<ViewInfo> {
    if (at !== undefined && at !== null && at !== '') {
      throw new UserError(
        'invalid',
        `"${parent.name}" is a ${parent.kind}: a clone of it takes its current content, so --at does not apply`,
      );
    }
    const viewName =
      name === undefined || name === null || name === '' ? this.defaultName(parent.name, 'clone', parent.point.seq) : String(name);
    this.checkNewName(viewName);
    const ctx = this.host.context(parent.volume);
    const now = new Date().toISOString();
    const childTop = await this.store.newLayer(parent.size, ctx.history.blockSize);
    const rec: ViewRecord = {
      ...parent,
      name: viewName,
      kind: 'clone',
      parent: parent.name,
      layers: [...parent.layers, childTop.id],
      readOnly: opts.readOnly === true,
      created: now,
      steps: 0,
    };
    // Its own list, else the parent clone's (which defaults to the volume's).
    if (opts.allow) rec.allow = opts.allow;
    else if (parent.allow) rec.allow = parent.allow;
    else delete rec.allow;
    // A clone of a diff export or a surfaced marker is a plain clone of that image.
    delete rec.from;
    delete rec.surfaced;
    const layers: LayerRecord[] = [childTop];
    const views: ViewRecord[] = [rec];
    if (parent.kind === 'clone' && !parent.readOnly && parent.layers.length) {
      // Freeze the parent's top layer (now shared) and give the parent a fresh one.
      const rt = await this.runtime(parent.name);
      await rt.exp.quiesced(async () => {
        await rt.layered!.flush();
        const topId = parent.layers[parent.layers.length - 1]!;
        const frozen = { ...this.store.layer(topId)!, frozen: true };
        const parentTop = await this.store.newLayer(parent.size, ctx.history.blockSize);
        const parentNext: ViewRecord = { ...parent, layers: [...parent.layers, parentTop.id] };
        await this.store.put({ views: [rec, parentNext], layers: [frozen, childTop, parentTop] });
        const newTop = WriteLayer.open(this.store, parentTop);
        const oldLayers = rt.layers;
        const layered = new LayeredImage(rt.layered!.base, [...oldLayers, newTop], false);
        rt.layers = [...oldLayers, newTop];
        rt.layered = layered;
        rt.image = layered;
        rt.record = parentNext;
        rt.exp.swap(layered, layered);
      });
      if (!rec.archive) pinPoint(ctx.history, `view:${viewName}`, rec.point);
      this.host.logger.info({ view: viewName, parent: parent.name }, 'clone of a clone created');
      return this.info(rec);
    }
    if (!rec.archive) pinPoint(ctx.history, `view:${viewName}`, rec.point);
    await this.store.put({ views, layers });
    this.host.logger.info({ view: viewName, parent: parent.name }, 'clone created');
    return this.info(rec);
  }

  /** Deletes a snapshot or clone: its clients are disconnected, its own layers deleted. */
  remove(name: string): Promise<{ removed: string; disconnected: number }> {
    return this.serialised(async () => {
      const v = this.store.view(name);
      if (!v) throw new UserError('not-found', `no snapshot or clone named "${name}"`);
      await this.store.put({ removeViews: [name] });
      const disconnected = await this.host.disconnect(name);
      const rt = this.runtimes.get(name);
      this.runtimes.delete(name);
      if (rt) {
        const r = await rt.catch(() => null);
        for (const l of r?.layers ?? []) l.close();
        r?.archive?.close();
      }
      // Layers no other view uses go.
      const used = new Set(this.store.views().flatMap((x) => x.layers));
      const gone = v.layers.filter((id) => !used.has(id));
      const files = gone.map((id) => this.store.layer(id)?.file).filter((f): f is string => !!f);
      await this.store.put({ removeLayers: gone });
      for (const f of files) await fs.promises.rm(f, { force: true });
      try {
        this.host.context(v.volume).history.pins.unpin(`view:${name}`);
        this.host.context(v.volume).history.pins.unpin(`view:${name}:to`);
      } catch {
        // the volume is gone
      }
      this.host.logger.info({ view: name, disconnected }, 'view deleted');
      return { removed: name, disconnected };
    });
  }

  /**
   * Moves a snapshot (or a clone without writes of its own) through history
   * by single writes, or to a point. Its clients are disconnected; they
   * reconnect to see the new point.
   */
  step(name: string, how: { forward?: unknown; back?: unknown; to?: unknown; nearest?: unknown }): Promise<ViewInfo & { from: PointInfo }> {
    return this.serialised(async () => {
      const v = this.store.view(name);
      if (!v) throw new UserError('not-found', `no snapshot or clone named "${name}"`);
      if (v.archive) throw new UserError('invalid', `"${name}" reads archived point ${v.archive}, which has no history to step through`);
      if (v.kind === 'clone') {
        const own = v.layers.length ? this.store.layerBlocks(v.layers[v.layers.length - 1]!).length : 0;
        const rt = this.runtimes.get(name) ? await this.runtime(name) : null;
        const pending = rt?.layers.length ? rt.layers[rt.layers.length - 1]!.count() : 0;
        if (v.parent !== null || v.layers.length > 1 || own > 0 || pending > 0) {
          throw new UserError(
            'conflict',
            `clone "${name}" holds writes of its own; only snapshots and unwritten clones can step (take a snapshot to step instead)`,
          );
        }
      }
      const given = ['forward', 'back', 'to'].filter(
        (k) => how[k as keyof typeof how] !== undefined && how[k as keyof typeof how] !== null,
      );
      if (given.length !== 1) throw new UserError('invalid', 'give exactly one of forward, back or to');
      const ctx = this.host.context(v.volume);
      const nearest = parseNearest(how.nearest);
      let spec: PointSpec;
      if (how.to !== undefined && how.to !== null) spec = this.points.specOf(ctx, how.to);
      else {
        const raw = how.forward ?? how.back;
        const k = typeof raw === 'number' ? raw : Number(raw);
        if (!Number.isSafeInteger(k) || k < 1)
          throw new UserError('invalid', `step count must be a positive integer, not ${JSON.stringify(raw)}`);
        if (how.forward !== undefined) await ctx.journal.catchUp();
        const seq = await stepSeq(ctx.history, v.volumeId, v.point.seq, how.forward !== undefined ? k : -k);
        spec = { kind: 'seq', seq, text: `@seq:${seq}` };
      }
      const point = await resolveForImage(ctx, spec, this.points.markerLookup(v.volume), nearest);
      const next: ViewRecord = { ...v, point: bare(point), steps: v.steps + 1 };
      pinPoint(ctx.history, `view:${name}:next`, point); // both points pinned while switching
      await this.store.put({ views: [next] });
      const old = this.runtimes.get(name);
      this.runtimes.delete(name);
      await this.host.disconnect(name);
      if (old) for (const l of (await old.catch(() => null))?.layers ?? []) l.close();
      pinPoint(ctx.history, `view:${name}`, point);
      ctx.history.pins.unpin(`view:${name}:next`);
      this.host.logger.info({ view: name, from: v.point.seq, to: point.seq }, 'view stepped');
      return { ...this.points.withSubstitute(this.info(next), point), from: this.points.pointInfo(v.group, v.point) };
    });
  }

  /** A diff export of `volume`: B (its point) whose dirty bitmap is what changed since A. */
  addDiffView(name: string, volume: string, ctx: VolumeContext, a: ResolvedPoint, b: ResolvedPoint): Promise<string> {
    return this.serialised(async () => {
      this.checkNewName(name);
      const rec = newRecord('diff', name, volume, ctx, b, { from: a, readOnly: true });
      pinPoint(ctx.history, `view:${name}`, a);
      pinPoint(ctx.history, `view:${name}:to`, b);
      await this.store.put({ views: [rec] });
      return name;
    });
  }

  /** Marks a snapshot as a surfaced marker's export (rewind surface). */
  async markSurfaced(name: string, marker: string): Promise<void> {
    await this.store.put({ views: [{ ...this.store.view(name)!, surfaced: marker }] });
  }

  /** Is `name` a surfaced marker's export? */
  isSurfaced(name: string): boolean {
    return !!this.store.view(name)?.surfaced;
  }

  /** Views of a volume (a restore refuses while they exist, unless forced). */
  viewsOf(volume: string): ViewRecord[] {
    return this.store.views().filter((v) => v.volume === volume);
  }

  /** At open: every stored view pins its point again. */
  pinAll(): void {
    for (const v of this.store.views()) {
      if (v.archive) continue; // reads the archive pool, pins no history
      try {
        pinPoint(this.host.context(v.volume).history, `view:${v.name}`, v.from ?? v.point);
        if (v.from) pinPoint(this.host.context(v.volume).history, `view:${v.name}:to`, v.point);
      } catch (err) {
        this.host.logger.warn(
          { view: v.name, volume: v.volume, err: (err as Error).message },
          'view of a volume that is not protected any more',
        );
      }
    }
  }

  async close(): Promise<void> {
    for (const r of this.runtimes.values()) {
      const rt = await r.catch(() => null);
      if (!rt) continue;
      await rt.layered?.flush().catch(() => undefined);
      for (const l of rt.layers) l.close();
      rt.archive?.close();
    }
    this.runtimes.clear();
  }
}
