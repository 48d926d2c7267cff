/**
 * Time travel: snapshots, clones, stepping, virtual full exports and
 * production restores of protected volumes (MISSION §4).
 *
 *   snapshot   a read-only export of a volume at a point: a PointImage,
 *              no data copied (creation reads one AILFC's record headers at
 *              most, whatever the volume's size)
 *   clone      a snapshot plus write layers (layers.ts); a clone of a clone
 *              shares the parent's frozen layers
 *   step       moves a snapshot (or an unwritten clone) by single writes
 *   export     writes a sparse raw image of any point (virtual full backup)
 *   restore    rolls production (and, through the journal, the replica)
 *              back to a point: see restore()
 *
 * Every view pins the history it reads (BackupManager.pin), so no cleanup
 * may remove it while the view lives. Views are stored in DATA_DIR/
 * timetravel/index (LMDB) and come back after a restart.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackupManager } from '../manager/backup-manager';
import type { GroupJournal } from '../journal/group-journal';
import type { ProtectedVolume } from '../journal/protected-volume';
import { UserError } from '../util/errors';
import { validateVolumeName } from '../catalog/catalog';
import { describeWrite, parsePoint, resolvePoint, stepSeq, txnRecords, type PointSpec, type ResolvedPoint } from './point';
import { parseNearest, pointText } from './point-gaps';
import { resolveForImage, resolveForQuery, type JournalTail, type PendingPoint } from './resolver';
import { RecordKind } from '../lfc';
import { PointImage, STATUS_BLOCKS, type ImageSource } from './point-image';
import { LayeredImage, ViewStore, WriteLayer, type LayerRecord, type ViewRecord } from './layers';
import { ViewExport } from './view-export';
import { isZero } from '../util/zero';
import { AclError, parseAcl } from '../access/acl';
import { changedRuns, runsToExtents, writeDiffFile, type BlockRunLite, type Extent } from './diff';
import { ViewBitmaps, type ViewBitmapsOptions } from './dirty-bitmap';
import { dueRules, parseDuration, parseRule, runHook, type HookResult, type MarkerKind, type MarkerRecord, type Schedule } from './markers';

export interface VolumeContext {
  manager: BackupManager;
  journal: GroupJournal;
  /** The journal's position and uncommitted writes (across the link on a remote manager). */
  tail: JournalTail;
  pv: ProtectedVolume;
  group: string;
  volumeId: number;
  size: number;
}

export interface TimeTravelHost {
  /** The protected volume's context; throws UserError when it is not protected. */
  context(volume: string): VolumeContext;
  /** A protected volume or a consistency group by name. */
  target(name: string): { group: string; volume: string | null; ctx: VolumeContext };
  volumeName(group: string, volumeId: number): string;
  /** Is the name taken by a volume? (Views and volumes share one namespace of exports.) */
  volumeExists(name: string): boolean;
  /** Drop the clients of an export; resolves when their requests are done. */
  disconnect(name: string): Promise<number>;
  /** Take a volume's export offline (no new clients) or back online. */
  setOffline(volume: string, reason: string | null): void;
  /** Why production restore cannot run here (the manager role), if it cannot. */
  restoreRefusal?: string;
  logger: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
}

export interface PointInfo {
  seq: number;
  time: string;
  txn: number;
  write: ResolvedPoint['write'] & { volume: string };
  description: string;
  /** Journaled but not yet committed by the manager (`rewind point` only; txn is the container it will become). */
  pending?: boolean;
  /** The asked point was no point; the nearest valid one on this side was used (--nearest). */
  substituted?: { asked: string; reason: string; nearest: 'before' | 'after'; note: string };
}

export interface ViewInfo {
  name: string;
  kind: 'snapshot' | 'clone' | 'diff';
  volume: string;
  group: string;
  size: number;
  readOnly: boolean;
  parent: string | null;
  point: PointInfo;
  created: string;
  /** Blocks written to the clone (its own layer). */
  writtenBlocks: number;
  steps: number;
  /** Its own access list, if it has one (else the source volume's applies). */
  allow: string[] | null;
}

export interface Progress {
  phase: string;
  done: number;
  total: number;
}

export interface RestoreIntent {
  volume: string;
  seq: number;
  ranges: Array<{ offset: number; length: number }> | null;
  /** The group's last applied seq before the first restore write: the point that undoes the restore. */
  undoSeq: number | null;
  started: string;
}

export interface RestoreResult {
  volume: string;
  point: PointInfo;
  blocksChanged: number;
  blocksWritten: number;
  bytesWritten: number;
  /** Seq range of the restore's own writes (null if nothing differed). */
  firstSeq: number | null;
  lastSeq: number | null;
  transactions: number[];
  /** The point to restore to in order to undo this restore. */
  undo: string | null;
  durationMs: number;
  /** Where the time went: catching up with earlier writes, rewriting, sealing and applying the restore. */
  phases: { catchUpMs: number; rewriteMs: number; commitMs: number };
  resumed: boolean;
}

interface ViewRuntime {
  record: ViewRecord;
  image: ImageSource;
  layered: LayeredImage | null;
  layers: WriteLayer[];
  exp: ViewExport;
}

const RESTORE_CHUNK = 1 << 20;
const RESTORE_PARALLEL = 32;

export class TimeTravel {
  private readonly runtimes = new Map<string, Promise<ViewRuntime>>();
  private readonly restoring = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private lastSweep = 0;
  private readonly pinSourcesAdded = new Set<string>();
  /** The clock of schedules and marker expiry (tests may shift it). */
  now: () => number = () => Date.now() + Number(process.env.REWIND_TEST_CLOCK_OFFSET_MS ?? 0);
  /** Serialises view creation, deletion and stepping. */
  private mutex: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly store: ViewStore,
    private readonly host: TimeTravelHost,
  ) {}

  static async open(dataDir: string, host: TimeTravelHost): Promise<TimeTravel> {
    const store = ViewStore.open(path.join(dataDir, 'timetravel'));
    const tt = new TimeTravel(store, host);
    tt.timer = setInterval(() => void tt.tick(), 1000);
    tt.timer.unref();
    for (const v of store.views()) {
      try {
        pinPoint(host.context(v.volume).manager, `view:${v.name}`, v.from ?? v.point);
        if (v.from) pinPoint(host.context(v.volume).manager, `view:${v.name}:to`, v.point);
      } catch (err) {
        host.logger.warn({ view: v.name, volume: v.volume, err: (err as Error).message }, 'view of a volume that is not protected any more');
      }
    }
    return tt;
  }

  /** Finish restores a crash interrupted (the volumes stay offline until then). */
  async resumeRestores(): Promise<void> {
    for (const intent of this.store.restoreIntents()) {
      this.host.logger.warn({ volume: intent.volume, seq: intent.seq }, 'resuming a production restore interrupted by a crash');
      try {
        await this.runRestore(intent, () => undefined, true);
      } catch (err) {
        this.host.logger.error({ volume: intent.volume, err: (err as Error).message }, 'could not finish the interrupted restore; the volume stays offline');
      }
    }
  }

  /** Volumes with a restore pending (kept offline). */
  pendingRestoreVolumes(): string[] {
    return this.store.restoreIntents().map((i) => i.volume);
  }

  private serialised<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn, fn);
    this.mutex = run.catch(() => undefined);
    return run;
  }

  // ---- points ------------------------------------------------------------

  private markerLookup(volume: string): (name: string) => { seq: number } | null {
    let group: string;
    try {
      group = this.host.context(volume).group;
    } catch {
      return () => null;
    }
    return (name) => {
      const m = this.store.marker(group, name);
      return m ? { seq: m.seq } : null;
    };
  }

  private specOf(ctx: VolumeContext, at: unknown): PointSpec {
    const spec = parsePoint(at);
    if (spec.kind !== 'marker') return spec;
    const m = this.store.marker(ctx.group, spec.name);
    return m ? { kind: 'seq', seq: m.seq, text: spec.text } : spec;
  }

  /**
   * Resolves a point of a volume for a command that reads the image there.
   * A point past what the manager has applied (the newest writes, "latest",
   * a recent time) first seals and waits for the manager to catch up. A
   * point where history has none is refused naming the nearest valid
   * points, unless `nearest` asks for one of them (the info says so).
   */
  async resolve(volume: string, at: unknown, opts: { nearest?: unknown } = {}): Promise<{ point: ResolvedPoint; info: PointInfo; ctx: VolumeContext }> {
    const nearest = parseNearest(opts.nearest);
    const ctx = this.host.context(volume);
    const point = await resolveForImage(ctx, this.specOf(ctx, at), this.markerLookup(volume), nearest);
    return { point, info: this.pointInfo(ctx.group, point), ctx };
  }

  /** `rewind point`: which write a point names. Never seals: writes not committed yet are read from the journal. */
  async resolveInfo(volume: string, at: unknown, opts: { nearest?: unknown } = {}): Promise<PointInfo> {
    const nearest = parseNearest(opts.nearest);
    const ctx = this.host.context(volume);
    return this.pointInfo(ctx.group, await resolveForQuery(ctx, this.specOf(ctx, at), this.markerLookup(volume), nearest));
  }

  /** A view's info as made at a point the user asked for by --nearest: it says so. */
  private withSubstitute<T extends { point: PointInfo; group: string }>(v: T, p: ResolvedPoint): T {
    return p.substitute ? { ...v, point: this.pointInfo(v.group, p) } : v;
  }

  private pointInfo(group: string, p: ResolvedPoint | PendingPoint): PointInfo {
    const name = (id: number): string => this.host.volumeName(group, id);
    const out: PointInfo = {
      seq: p.seq,
      time: new Date(p.time).toISOString(),
      txn: p.txn,
      write: { ...p.write, volume: name(p.write.volumeId) },
      description: describeWrite(p.write, name),
    };
    if ('pending' in p) out.pending = true;
    if (p.substitute) {
      const s = p.substitute;
      out.substituted = {
        asked: s.asked,
        reason: s.why,
        nearest: s.nearest,
        note: `${s.asked} ${s.why}; using the nearest valid point ${s.nearest} it, ${pointText(p.seq, p.time)}`,
      };
    }
    return out;
  }

  // ---- views -------------------------------------------------------------

  has(name: string): boolean {
    return this.store.view(name) !== undefined;
  }

  /**
   * What the NBD provider needs of a view, read from its record alone (no
   * block counting): its source volume, own access list and description.
   */
  exportEntry(name: string): { name: string; volume: string; allow: string[] | undefined; description: string } | undefined {
    const v = this.store.view(name);
    return v && { name: v.name, volume: v.volume, allow: v.allow, description: `rewind ${v.kind} of ${v.volume} at seq ${v.point.seq} (${new Date(v.point.time).toISOString()})` };
  }

  exportEntries(): Array<NonNullable<ReturnType<TimeTravel['exportEntry']>>> {
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

  private info(v: ViewRecord): ViewInfo {
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
      point: this.pointInfo(v.group, v.point),
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

  private runtime(name: string): Promise<ViewRuntime> {
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
    const base = await PointImage.open(ctx.manager, record.volumeId, record.size, record.point);
    const holder: { rt?: ViewRuntime } = {};
    const bitmaps = this.viewBitmaps(record, ctx, holder);
    let rt: ViewRuntime;
    if (record.kind === 'diff' || record.kind === 'snapshot') {
      rt = { record, image: base, layered: null, layers: [], exp: new ViewExport(base, null, bitmaps) };
    } else {
      const layers = record.layers.map((id) => {
        const rec = this.store.layer(id);
        if (!rec) throw new Error(`clone ${record.name}: layer ${id} is missing`);
        return WriteLayer.open(this.store, rec);
      });
      const layered = new LayeredImage(base, layers, record.readOnly);
      rt = { record, image: layered, layered, layers, exp: new ViewExport(layered, layered, bitmaps) };
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
      const get = (): Promise<BlockRunLite[]> => (runs ??= changedRuns(ctx.manager, record.volumeId, from, b));
      own.push({ leaf: record.name, runs: get }, { leaf: `@seq:${from.seq}`, runs: get });
    }
    return new ViewBitmaps({
      own,
      blockSize: ctx.manager.blockSize,
      size: record.size,
      since: async (leaf) => {
        const a = await resolvePoint(ctx.manager, this.specOf(ctx, leaf), this.markerLookup(record.volume));
        if (a.seq > b.seq) return null;
        return a.seq === b.seq ? [] : changedRuns(ctx.manager, record.volumeId, a, b);
      },
      listed: () =>
        this.store
          .markers(record.group)
          .filter((m) => m.seq <= b.seq)
          .sort((x, y) => y.seq - x.seq)
          .slice(0, 64)
          .map((m) => m.name),
      ...(record.kind === 'clone' ? { alsoDirty: (blk: number) => (holder.rt?.layers ?? []).some((l) => l.has(blk)) } : {}),
    });
  }

  private checkNewName(name: string): void {
    const err = validateVolumeName(name);
    if (err) throw new UserError('invalid', err.replace(/volume name/g, 'name'));
    if (this.host.volumeExists(name) || this.store.view(name)) throw new UserError('conflict', `an export named "${name}" already exists`);
  }

  private defaultName(base: string, kind: string, seq: number): string {
    const stem = `${base}.${kind}-${seq}`.slice(0, 56);
    let name = stem;
    for (let i = 2; this.host.volumeExists(name) || this.store.view(name); i++) name = `${stem}-${i}`;
    return name;
  }

  /** `rewind snapshot VOL --at POINT [--name N] [--allow SPEC]...`. */
  snapshot(volume: string, at: unknown, name?: unknown, opts: { allow?: unknown; nearest?: unknown } = {}): Promise<ViewInfo> {
    const allow = viewAcl(opts.allow);
    return this.serialised(async () => {
      const { point, ctx } = await this.resolve(volume, at, { nearest: opts.nearest });
      const viewName = name === undefined || name === null || name === '' ? this.defaultName(volume, 'snap', point.seq) : String(name);
      this.checkNewName(viewName);
      const rec = newRecord('snapshot', viewName, volume, ctx, point, { readOnly: true, ...(allow ? { allow } : {}) });
      pinPoint(ctx.manager, `view:${viewName}`, point);
      await this.store.put({ views: [rec] });
      this.host.logger.info({ view: viewName, volume, seq: point.seq }, 'snapshot created');
      return this.withSubstitute(this.info(rec), point);
    });
  }

  /**
   * `rewind clone SOURCE [--at POINT] [--name N]`: SOURCE is a protected
   * volume (then --at is required) or a clone (its current content; --at is
   * refused).
   */
  clone(source: string, at: unknown, name?: unknown, opts: { readOnly?: boolean; allow?: unknown; nearest?: unknown } = {}): Promise<ViewInfo> {
    const allow = viewAcl(opts.allow);
    return this.serialised(async () => {
      const parent = this.store.view(source);
      if (parent) return this.cloneOfView(parent, at, name, { ...opts, allow });
      if (at === undefined || at === null || at === '') throw new UserError('invalid', `--at POINT is required to clone volume "${source}"`);
      const { point, ctx } = await this.resolve(source, at, { nearest: opts.nearest });
      const viewName = name === undefined || name === null || name === '' ? this.defaultName(source, 'clone', point.seq) : String(name);
      this.checkNewName(viewName);
      const layer = await this.store.newLayer(ctx.size, ctx.manager.blockSize);
      const rec = newRecord('clone', viewName, source, ctx, point, { layers: [layer.id], readOnly: opts.readOnly === true, ...(allow ? { allow } : {}) });
      pinPoint(ctx.manager, `view:${viewName}`, point);
      await this.store.put({ views: [rec], layers: [layer] });
      this.host.logger.info({ view: viewName, volume: source, seq: point.seq }, 'clone created');
      return this.withSubstitute(this.info(rec), point);
    });
  }

  private async cloneOfView(parent: ViewRecord, at: unknown, name: unknown, opts: { readOnly?: boolean; allow?: string[] | undefined }): Promise<ViewInfo> {
    if (at !== undefined && at !== null && at !== '') {
      throw new UserError('invalid', `"${parent.name}" is a ${parent.kind}: a clone of it takes its current content, so --at does not apply`);
    }
    const viewName = name === undefined || name === null || name === '' ? this.defaultName(parent.name, 'clone', parent.point.seq) : String(name);
    this.checkNewName(viewName);
    const ctx = this.host.context(parent.volume);
    const now = new Date().toISOString();
    const childTop = await this.store.newLayer(parent.size, ctx.manager.blockSize);
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
        const parentTop = await this.store.newLayer(parent.size, ctx.manager.blockSize);
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
      pinPoint(ctx.manager, `view:${viewName}`, rec.point);
      this.host.logger.info({ view: viewName, parent: parent.name }, 'clone of a clone created');
      return this.info(rec);
    }
    pinPoint(ctx.manager, `view:${viewName}`, rec.point);
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
      }
      // Layers no other view uses go.
      const used = new Set(this.store.views().flatMap((x) => x.layers));
      const gone = v.layers.filter((id) => !used.has(id));
      const files = gone.map((id) => this.store.layer(id)?.file).filter((f): f is string => !!f);
      await this.store.put({ removeLayers: gone });
      for (const f of files) await fs.promises.rm(f, { force: true });
      try {
        this.host.context(v.volume).manager.unpin(`view:${name}`);
        this.host.context(v.volume).manager.unpin(`view:${name}:to`);
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
      if (v.kind === 'clone') {
        const own = v.layers.length ? this.store.layerBlocks(v.layers[v.layers.length - 1]!).length : 0;
        const rt = this.runtimes.get(name) ? await this.runtime(name) : null;
        const pending = rt?.layers.length ? rt.layers[rt.layers.length - 1]!.count() : 0;
        if (v.parent !== null || v.layers.length > 1 || own > 0 || pending > 0) {
          throw new UserError('conflict', `clone "${name}" holds writes of its own; only snapshots and unwritten clones can step (take a snapshot to step instead)`);
        }
      }
      const given = ['forward', 'back', 'to'].filter((k) => how[k as keyof typeof how] !== undefined && how[k as keyof typeof how] !== null);
      if (given.length !== 1) throw new UserError('invalid', 'give exactly one of forward, back or to');
      const ctx = this.host.context(v.volume);
      const nearest = parseNearest(how.nearest);
      let spec: PointSpec;
      if (how.to !== undefined && how.to !== null) spec = this.specOf(ctx, how.to);
      else {
        const raw = how.forward ?? how.back;
        const k = typeof raw === 'number' ? raw : Number(raw);
        if (!Number.isSafeInteger(k) || k < 1) throw new UserError('invalid', `step count must be a positive integer, not ${JSON.stringify(raw)}`);
        if (how.forward !== undefined) await ctx.tail.catchUp();
        const seq = await stepSeq(ctx.manager, v.volumeId, v.point.seq, how.forward !== undefined ? k : -k);
        spec = { kind: 'seq', seq, text: `@seq:${seq}` };
      }
      const point = await resolveForImage(ctx, spec, this.markerLookup(v.volume), nearest);
      const next: ViewRecord = { ...v, point: bare(point), steps: v.steps + 1 };
      pinPoint(ctx.manager, `view:${name}:next`, point); // both points pinned while switching
      await this.store.put({ views: [next] });
      const old = this.runtimes.get(name);
      this.runtimes.delete(name);
      await this.host.disconnect(name);
      if (old) for (const l of (await old.catch(() => null))?.layers ?? []) l.close();
      pinPoint(ctx.manager, `view:${name}`, point);
      ctx.manager.unpin(`view:${name}:next`);
      this.host.logger.info({ view: name, from: v.point.seq, to: point.seq }, 'view stepped');
      return { ...this.withSubstitute(this.info(next), point), from: this.pointInfo(v.group, v.point) };
    });
  }


  // ---- markers -------------------------------------------------------------

  /** Markers pin their points, resolved when retention asks (one source per group). */
  private ensureMarkerPins(group: string, ctx: VolumeContext): void {
    if (this.pinSourcesAdded.has(group)) return;
    this.pinSourcesAdded.add(group);
    ctx.manager.addPinSource(() => {
      const out: Array<{ holder: string; k: number; overlay: boolean }> = [];
      for (const m of this.store.markers(group)) {
        const p = ctx.manager.pinOfSeq(m.seq);
        if (p) out.push({ holder: `marker:${m.name}`, ...p });
      }
      return out;
    });
  }

  /**
   * `rewind mark VOL|GROUP NAME [--quiesce-pre CMD --quiesce-post CMD --timeout S] [--keep D]`:
   * records the current seq (every write acknowledged so far) under a name.
   * With a pre-hook that succeeds the marker is application-consistent;
   * if it fails or times out (it is killed) the marker is still placed, as
   * crash-consistent, with the reason. The post-hook always runs.
   */
  async mark(
    target: string,
    name: unknown,
    opts: { pre?: unknown; post?: unknown; timeout?: unknown; keep?: unknown } = {},
    auto = false,
  ): Promise<MarkerRecord> {
    const { group, volume, ctx } = this.host.target(target);
    const err = validateVolumeName(name);
    if (err) throw new UserError('invalid', err.replace(/volume name/g, 'marker name'));
    const markerName = name as string;
    if (/^(seq|txn|time):|^(latest|now)$/i.test(markerName)) throw new UserError('invalid', `"${markerName}" would read as a point, not a marker name`);
    if (this.store.marker(group, markerName)) throw new UserError('conflict', `a marker named "${markerName}" already exists in group ${group}`);
    for (const [k, v] of Object.entries({ pre: opts.pre, post: opts.post })) {
      if (v !== undefined && v !== null && (typeof v !== 'string' || !v.trim())) throw new UserError('invalid', `${k} must be a shell command`);
    }
    let timeoutS = 30;
    if (opts.timeout !== undefined && opts.timeout !== null) {
      timeoutS = typeof opts.timeout === 'number' ? opts.timeout : parseDuration(String(opts.timeout), 'timeout');
      if (!(timeoutS > 0)) throw new UserError('invalid', 'timeout must be positive');
    }
    let keepS: number | null = null;
    if (opts.keep !== undefined && opts.keep !== null) keepS = typeof opts.keep === 'number' ? opts.keep : parseDuration(String(opts.keep), 'keep');
    this.ensureMarkerPins(group, ctx);
    const env = { REWIND_MARKER: markerName, REWIND_GROUP: group, REWIND_VOLUME: volume ?? '' };
    let pre: HookResult | null = null;
    let kind: MarkerKind = 'crash-consistent';
    let reason: string | null = null;
    if (typeof opts.pre === 'string') {
      pre = await runHook(opts.pre, timeoutS * 1000, env);
      if (pre.timedOut) reason = `pre-hook timed out after ${timeoutS}s and was killed`;
      else if (pre.exitCode !== 0) reason = `pre-hook failed (${pre.signal ? `signal ${pre.signal}` : `exit ${pre.exitCode}`})${pre.output ? `: ${pre.output.split('\n').pop()}` : ''}`;
      else kind = 'application-consistent';
    }
    // The intercept's current write as of now (after the pre-hook): asked of
    // the journal itself, across the link on a remote manager, never a
    // status report that may be a second old.
    const seq = (await ctx.tail.locate(undefined, { fresh: true })).position.seq;
    const time = this.now();
    let post: HookResult | null = null;
    if (typeof opts.post === 'string') post = await runHook(opts.post, timeoutS * 1000, env);
    const rec: MarkerRecord = {
      name: markerName,
      group,
      volume,
      seq,
      time,
      kind,
      reason,
      retainUntil: keepS === null ? null : time + keepS * 1000,
      auto,
      hooks: { pre, post },
    };
    if (!(await this.store.addMarker(rec))) throw new UserError('conflict', `a marker named "${markerName}" already exists in group ${group}`);
    this.host.logger.info({ marker: markerName, group, seq, kind, reason }, 'marker placed');
    return rec;
  }

  /** Markers of a volume's group (or a group), filtered by name glob, kind and time. */
  markers(target: string, f: { name?: string; kind?: string; since?: number; until?: number } = {}): MarkerRecord[] {
    const { group } = this.host.target(target);
    const re = f.name ? new RegExp(`^${f.name.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`) : null;
    return this.store
      .markers(group)
      .filter((m) => (!re || re.test(m.name)) && (!f.kind || m.kind === f.kind || m.kind.startsWith(f.kind)) && (f.since === undefined || m.time >= f.since) && (f.until === undefined || m.time <= f.until))
      .sort((a, b) => a.seq - b.seq || a.time - b.time);
  }

  async unmark(target: string, name: string): Promise<MarkerRecord> {
    const { group } = this.host.target(target);
    const m = this.store.marker(group, name);
    if (!m) throw new UserError('not-found', `no marker named "${name}" in group ${group}`);
    await this.store.removeMarkers([[group, name]]);
    return m;
  }

  /** `rewind surface VOL MARKER`: a read-only export named after the marker. */
  async surface(volume: string, marker: string): Promise<ViewInfo> {
    const { group } = this.host.target(volume);
    if (!this.store.marker(group, marker)) throw new UserError('not-found', `no marker named "${marker}" in group ${group}`);
    const v = await this.snapshot(volume, marker, marker);
    await this.store.put({ views: [{ ...this.store.view(marker)!, surfaced: marker }] });
    return v;
  }

  /** `rewind submerge NAME`: removes a surfaced marker's export (the marker stays). */
  async submerge(name: string): Promise<{ removed: string; disconnected: number }> {
    const v = this.store.view(name);
    if (!v || !v.surfaced) throw new UserError('not-found', `"${name}" is not a surfaced marker`);
    return this.remove(name);
  }

  // ---- schedules -------------------------------------------------------------

  schedule(volume: string): Schedule {
    this.host.context(volume);
    return this.store.schedule(volume) ?? { volume, rules: [], last: {} };
  }

  /** Adds rules (or with clear, replaces them all). Persisted: schedules survive restarts. */
  async setSchedule(volume: string, change: { add?: unknown; clear?: unknown }): Promise<Schedule> {
    this.host.context(volume);
    const cur = change.clear === true ? { volume, rules: [], last: {} } : this.schedule(volume);
    const add = change.add === undefined ? [] : Array.isArray(change.add) ? change.add : [change.add];
    for (const r of add) {
      if (typeof r !== 'string') throw new UserError('invalid', 'rules are strings such as "every=15m,hours=09:00-17:00,days=mon-fri,keep=7d"');
      cur.rules.push(parseRule(r));
    }
    await this.store.putSchedule(cur.rules.length ? cur : null, volume);
    return cur;
  }

  /** Once a second: scheduled markers, then (every 10 s) expired markers. */
  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      const now = this.now();
      for (const s of this.store.schedules()) {
        const due = dueRules(s, now);
        if (!due.length) continue;
        const rules = due.map((i) => s.rules[i]!);
        const keep = rules.some((r) => r.keep === null) ? null : Math.max(...rules.map((r) => r.keep!));
        const hooked = rules.find((r) => r.pre || r.post);
        const stamp = new Date(now).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
        let name = `auto-${stamp}`;
        try {
          const { group } = this.host.target(s.volume);
          for (let i = 2; this.store.marker(group, name); i++) name = `auto-${stamp}-${i}`;
          await this.mark(s.volume, name, { pre: hooked?.pre ?? undefined, post: hooked?.post ?? undefined, timeout: hooked?.timeout, keep }, true);
        } catch (err) {
          this.host.logger.warn({ volume: s.volume, err: (err as Error).message }, 'scheduled marker failed');
        }
        for (const i of due) s.last[String(i)] = now;
        await this.store.putSchedule(s, s.volume);
      }
      if (now - this.lastSweep >= 10_000) {
        this.lastSweep = now;
        const gone = this.store.markers().filter((m) => m.retainUntil !== null && m.retainUntil < now);
        if (gone.length) {
          await this.store.removeMarkers(gone.map((m) => [m.group, m.name] as [string, string]));
          this.host.logger.info({ expired: gone.length }, 'expired markers deleted');
        }
      }
    } catch (err) {
      this.host.logger.error({ err: (err as Error).message }, 'marker schedule tick failed');
    } finally {
      this.ticking = false;
    }
  }


  // ---- diffs and bisect --------------------------------------------------------

  private async twoPoints(volume: string, from: unknown, to: unknown, what: [string, string], nearest?: unknown): Promise<{ a: ResolvedPoint; b: ResolvedPoint; ctx: VolumeContext }> {
    if (from === undefined || from === null || from === '') throw new UserError('invalid', `${what[0]} POINT is required`);
    if (to === undefined || to === null || to === '') throw new UserError('invalid', `${what[1]} POINT is required`);
    const { point: a, ctx } = await this.resolve(volume, from, { nearest });
    const { point: b } = await this.resolve(volume, to, { nearest });
    if (a.seq >= b.seq) {
      throw new UserError('invalid', `${what[0]} (@seq:${a.seq}, ${new Date(a.time).toISOString()}) must come before ${what[1]} (@seq:${b.seq}, ${new Date(b.time).toISOString()})`);
    }
    return { a, b, ctx };
  }

  /**
   * `rewind diff VOL --from A --to B`: the 4 KiB-block extents any write of
   * VOL touched between A (exclusive) and B, from the index. With `name`
   * also a read-only export of B reporting only those extents as data; with
   * `out` also a diff file (format in diff.ts).
   */
  async diff(
    volume: string,
    body: { from?: unknown; to?: unknown; name?: unknown; out?: unknown; nearest?: unknown },
    progress: (p: Progress) => void = () => undefined,
  ): Promise<{ from: PointInfo; to: PointInfo; blockSize: number; extents: Extent[]; changedBytes: number; export: string | null; file: string | null; fileBytes: number | null }> {
    if (body.out !== undefined && (typeof body.out !== 'string' || !path.isAbsolute(body.out))) throw new UserError('invalid', 'out must be an absolute file path');
    if (typeof body.out === 'string' && fs.existsSync(body.out)) throw new UserError('conflict', `${body.out} already exists; choose a new file name`);
    const { a, b, ctx } = await this.twoPoints(volume, body.from, body.to, ['--from', '--to'], body.nearest);
    const holder = `diff:${process.hrtime.bigint()}`;
    pinPoint(ctx.manager, holder, a);
    pinPoint(ctx.manager, `${holder}:to`, b);
    try {
      const runs = await changedRuns(ctx.manager, ctx.volumeId, a, b);
      const bs = ctx.manager.blockSize;
      const extents = runsToExtents(runs, bs, ctx.size);
      const changedBytes = extents.reduce((x, e) => x + e.length, 0);
      let exportName: string | null = null;
      if (body.name !== undefined && body.name !== null && body.name !== '') {
        exportName = await this.serialised(async () => {
          const n = String(body.name);
          this.checkNewName(n);
          const rec = newRecord('diff', n, volume, ctx, b, { from: a, readOnly: true });
          pinPoint(ctx.manager, `view:${n}`, a);
          pinPoint(ctx.manager, `view:${n}:to`, b);
          await this.store.put({ views: [rec] });
          return n;
        });
      }
      let file: string | null = null;
      let fileBytes: number | null = null;
      if (typeof body.out === 'string') {
        const img = await PointImage.open(ctx.manager, ctx.volumeId, ctx.size, b);
        const r = await writeDiffFile(body.out, img, extents, { from: a, to: b }, (done, total) => progress({ phase: 'diff file', done, total }));
        file = body.out;
        fileBytes = r.fileBytes;
      }
      return { from: this.pointInfo(ctx.group, a), to: this.pointInfo(ctx.group, b), blockSize: bs, extents, changedBytes, export: exportName, file, fileBytes };
    } finally {
      ctx.manager.unpin(holder);
      ctx.manager.unpin(`${holder}:to`);
    }
  }

  /**
   * The points a bisect searches between good and bad: every write of the
   * volume (granularity write) or every transaction end (transaction) in
   * (good, bad], ending with bad itself.
   */
  async bisectCandidates(volume: string, body: { good?: unknown; bad?: unknown; granularity?: unknown; nearest?: unknown }): Promise<{ good: PointInfo; bad: PointInfo; granularity: string; candidates: number[] }> {
    const g = body.granularity ?? 'write';
    if (g !== 'write' && g !== 'transaction') throw new UserError('invalid', `granularity must be write or transaction, not ${JSON.stringify(g)}`);
    const { a, b, ctx } = await this.twoPoints(volume, body.good, body.bad, ['the good point', 'the bad point'], body.nearest);
    const out: number[] = [];
    for (let n = a.overlay ?? a.k; n <= b.txn; n++) {
      const t = ctx.manager.transaction(n);
      if (!t || t.records === 0) continue;
      if (g === 'transaction' || t.mergedFrom !== undefined) {
        if (t.lastSeq > a.seq && t.lastSeq < b.seq) out.push(t.lastSeq);
        continue;
      }
      for (const r of await txnRecords(ctx.manager, n)) {
        if (r.volumeId === ctx.volumeId && r.kind !== RecordKind.Error && r.seq > a.seq && r.seq < b.seq) out.push(r.seq);
      }
    }
    out.push(b.seq);
    return { good: this.pointInfo(ctx.group, a), bad: this.pointInfo(ctx.group, b), granularity: g, candidates: out };
  }

  // ---- virtual full export -------------------------------------------------

  /** Writes a sparse raw image of the volume at a point to `out` (a new file). */
  async exportImage(volume: string, at: unknown, out: unknown, progress: (p: Progress) => void = () => undefined, opts: { nearest?: unknown } = {}): Promise<{ file: string; point: PointInfo; size: number; dataBytes: number; durationMs: number }> {
    const t0 = Date.now();
    if (typeof out !== 'string' || !path.isAbsolute(out)) throw new UserError('invalid', 'out must be an absolute file path');
    if (fs.existsSync(out)) throw new UserError('conflict', `${out} already exists; choose a new file name`);
    if (!fs.existsSync(path.dirname(out))) throw new UserError('invalid', `directory ${path.dirname(out)} does not exist`);
    const { point, info, ctx } = await this.resolve(volume, at, opts);
    const holder = `export:${process.hrtime.bigint()}`;
    pinPoint(ctx.manager, holder, point);
    const tmp = `${out}.partial`;
    try {
      const img = await PointImage.open(ctx.manager, ctx.volumeId, ctx.size, point);
      const fh = await fs.promises.open(tmp, 'w', 0o600);
      let dataBytes = 0;
      try {
        await fh.truncate(ctx.size);
        const bs = img.blockSize;
        const nblocks = Math.ceil(ctx.size / bs);
        for (let b = 0; b < nblocks; b += STATUS_BLOCKS) {
          const count = Math.min(STATUS_BLOCKS, nblocks - b);
          const map = await img.zeroMap(b, count);
          for (let i = 0; i < count; ) {
            if (map[i]) {
              i++;
              continue;
            }
            let j = i + 1;
            while (j < count && !map[j] && j - i < RESTORE_CHUNK / bs) j++;
            const start = (b + i) * bs;
            const end = Math.min(ctx.size, (b + j) * bs);
            const data = await img.read(start, end - start);
            await fh.write(data, 0, data.length, start);
            dataBytes += data.length;
            i = j;
          }
          progress({ phase: 'export', done: Math.min(ctx.size, (b + count) * bs), total: ctx.size });
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.promises.rename(tmp, out);
      return { file: out, point: info, size: ctx.size, dataBytes, durationMs: Date.now() - t0 };
    } catch (err) {
      await fs.promises.rm(tmp, { force: true });
      throw err;
    } finally {
      ctx.manager.unpin(holder);
    }
  }

  // ---- production restore --------------------------------------------------

  /**
   * `rewind restore VOL --to POINT [--range OFF:LEN]... [--force]`.
   *
   *   1. The volume's export goes offline: new clients are refused, attached
   *      ones disconnected (they never see stale data).
   *   2. Writes so far are sealed and applied (the manager catches up).
   *   3. The blocks changed since the point are found from the transactions'
   *      block runs (cost in proportion to the changes, not the volume), and
   *      each is rewritten with its content at the point, read through a
   *      PointImage, unless production already holds exactly that.
   *   4. Those writes go through the intercept like any write, flagged as a
   *      restore, and are sealed into their own transaction(s): the replica
   *      is rolled back by the manager, and the restore is itself a point in
   *      history that a second restore can undo.
   * A restore intent is stored before anything is written; after a crash the
   * daemon keeps the volume offline and runs the restore again at start-up,
   * which converges on the same image (it rewrites whatever differs).
   */
  async restore(
    volume: string,
    body: { to?: unknown; ranges?: unknown; force?: unknown; nearest?: unknown },
    progress: (p: Progress) => void = () => undefined,
  ): Promise<RestoreResult> {
    const ctx = this.host.context(volume);
    if (this.restoring.has(volume)) throw new UserError('conflict', `a restore of "${volume}" is already running`);
    const views = this.store.views().filter((v) => v.volume === volume);
    if (views.length && body.force !== true) {
      throw new UserError('conflict', `volume "${volume}" has ${views.length} snapshot(s)/clone(s) attached (${views.map((v) => v.name).join(', ')}); delete them or pass --force (they keep their point in time)`);
    }
    const ranges = parseRanges(body.ranges, ctx.size);
    if (ctx.journal.isDegraded) throw new UserError('conflict', `volume "${volume}" is degraded (not journaling); a restore must be journaled, so it waits until journaling resumes`);
    this.restoring.add(volume);
    try {
      // Never a silent substitute: a point with no image is refused, unless --nearest asked for one (and the result says so).
      const { point, info } = await this.resolve(volume, body.to, { nearest: body.nearest });
      // Refused before an intent is stored: a stored one would keep the volume offline.
      if (this.host.restoreRefusal) throw new UserError('invalid', this.host.restoreRefusal);
      const intent: RestoreIntent = { volume, seq: point.seq, ranges, undoSeq: null, started: new Date().toISOString() };
      await this.store.putRestoreIntent(intent);
      const r = await this.runRestore(intent, progress, false);
      return info.substituted ? { ...r, point: { ...r.point, substituted: info.substituted } } : r;
    } finally {
      this.restoring.delete(volume);
    }
  }

  private async runRestore(intent: RestoreIntent, progress: (p: Progress) => void, resumed: boolean): Promise<RestoreResult> {
    const t0 = Date.now();
    const volume = intent.volume;
    const ctx = this.host.context(volume);
    this.host.setOffline(volume, 'a production restore is running');
    const disconnected = await this.host.disconnect(volume);
    if (disconnected) this.host.logger.info({ volume, disconnected }, 'restore: clients disconnected');
    const holder = `restore:${volume}`;
    try {
      progress({ phase: 'catch-up', done: 0, total: 1 });
      if (ctx.journal.isDegraded) throw new UserError('conflict', `volume "${volume}" is degraded (not journaling); a restore must be journaled, so it waits until journaling resumes`);
      await ctx.pv.flush();
      await ctx.journal.catchUp();
      const before = ctx.manager.status().lastContainer;
      const tCaughtUp = Date.now();
      const point = await resolvePoint(ctx.manager, { kind: 'seq', seq: intent.seq, text: `@seq:${intent.seq}` });
      pinPoint(ctx.manager, holder, point);
      if (intent.undoSeq === null) {
        intent.undoSeq = ctx.manager.status().lastSeq;
        await this.store.putRestoreIntent(intent);
      }
      const img = await PointImage.open(ctx.manager, ctx.volumeId, ctx.size, point);
      const bs = ctx.manager.blockSize;
      // Byte ranges to rewrite: blocks changed since the point, within the requested ranges.
      const changed = ctx.manager.changedSince(ctx.volumeId, point.overlay ?? point.k);
      let pieces: Array<{ offset: number; length: number }> = changed.map((r) => ({
        offset: r.start * bs,
        length: Math.min(ctx.size, (r.start + r.count) * bs) - r.start * bs,
      }));
      if (intent.ranges) pieces = intersect(pieces, intent.ranges);
      const total = pieces.reduce((a, p) => a + p.length, 0);
      const blocksChanged = changed.reduce((a, r) => a + r.count, 0);
      progress({ phase: 'restore', done: 0, total });
      await ctx.journal.seal('restore-start');
      const firstSeqBefore = ctx.journal.status().lastAppendedSeq;
      let done = 0;
      let bytesWritten = 0;
      let blocksWritten = 0;
      // Chunks of at most 1 MiB, RESTORE_PARALLEL at a time (they never overlap, and the volume is offline).
      const chunks: Array<{ off: number; len: number }> = [];
      for (const p of pieces) {
        for (let off = p.offset; off < p.offset + p.length; off += RESTORE_CHUNK) chunks.push({ off, len: Math.min(RESTORE_CHUNK, p.offset + p.length - off) });
      }
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < chunks.length) {
          const { off, len } = chunks[next++]!;
          const [want, have] = await Promise.all([img.read(off, len), ctx.pv.production.read(off, len)]);
          // Write only the runs of blocks that differ.
          const writes: Promise<void>[] = [];
          for (let a = 0; a < len; ) {
            const blockEnd = (x: number): number => Math.min(len, (Math.floor((off + x) / bs) + 1) * bs - off);
            let z = blockEnd(a);
            if (want.subarray(a, z).equals(have.subarray(a, z))) {
              a = z;
              continue;
            }
            while (z < len) {
              const nz = blockEnd(z);
              if (want.subarray(z, nz).equals(have.subarray(z, nz))) break;
              z = nz;
            }
            const slice = want.subarray(a, z);
            writes.push(isZero(slice) ? ctx.pv.restoreZero(off + a, z - a) : ctx.pv.restoreWrite(off + a, slice));
            bytesWritten += z - a;
            blocksWritten += Math.ceil((z - a) / bs);
            a = z;
          }
          await Promise.all(writes);
          done += len;
          progress({ phase: 'restore', done, total });
        }
      };
      await Promise.all(Array.from({ length: RESTORE_PARALLEL }, worker));
      await ctx.pv.flush();
      const tRewritten = Date.now();
      const lastSeqAfter = ctx.journal.status().lastAppendedSeq;
      progress({ phase: 'commit', done: total, total });
      await ctx.journal.catchUp();
      const after = ctx.manager.status().lastContainer;
      const txns: number[] = [];
      for (let n = before + 1; n <= after; n++) txns.push(n);
      const wrote = bytesWritten > 0;
      const result: RestoreResult = {
        volume,
        point: this.pointInfo(ctx.group, point),
        blocksChanged,
        blocksWritten,
        bytesWritten,
        firstSeq: wrote ? firstSeqBefore + 1 : null,
        lastSeq: wrote ? lastSeqAfter : null,
        transactions: wrote ? txns : [],
        // Set even when this run found nothing left to write: a run a crash interrupted may have.
        undo: intent.undoSeq ? `@seq:${intent.undoSeq}` : null,
        durationMs: Date.now() - t0,
        phases: { catchUpMs: tCaughtUp - t0, rewriteMs: tRewritten - tCaughtUp, commitMs: Date.now() - tRewritten },
        resumed,
      };
      await this.store.putRestoreIntent(null, volume, result);
      this.host.logger.info({ ...result, point: result.point.seq }, 'production restore done');
      return result;
    } finally {
      ctx.manager.unpin(holder);
      if (!this.store.restoreIntents().some((i) => i.volume === volume)) this.host.setOffline(volume, null);
    }
  }

  /** A protected volume was deleted: drop its schedule, restore intent and markers (all the group's if the group is gone). */
  async volumeRemoved(volume: string, group: string, groupGone: boolean): Promise<void> {
    await this.store.putSchedule(null, volume);
    await this.store.putRestoreIntent(null, volume);
    const gone = this.store.markers(group).filter((m) => groupGone || m.volume === volume);
    if (gone.length) await this.store.removeMarkers(gone.map((m) => [m.group, m.name] as [string, string]));
    if (groupGone) this.pinSourcesAdded.delete(group);
  }

  restores(volume?: string): RestoreResult[] {
    return this.store.restoreLog<RestoreResult>().filter((r) => !volume || r.volume === volume);
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    while (this.ticking) await new Promise((r) => setTimeout(r, 20));
    for (const r of this.runtimes.values()) {
      const rt = await r.catch(() => null);
      if (!rt) continue;
      await rt.layered?.flush().catch(() => undefined);
      for (const l of rt.layers) l.close();
    }
    this.runtimes.clear();
    await this.store.close();
  }
}

/** The point without how it was chosen: that is told once, when a view is made; records keep the point. */
function bare(p: ResolvedPoint): ResolvedPoint {
  const { substitute: _s, ...rest } = p;
  return rest;
}

/** A new view record of `volume` at `point` (no layers, not read-only, unless `extra` says so). */
function newRecord(kind: ViewRecord['kind'], name: string, volume: string, ctx: VolumeContext, p: ResolvedPoint, extra: Partial<ViewRecord>): ViewRecord {
  const point = bare(p);
  if (extra.from) extra = { ...extra, from: bare(extra.from) };
  return {
    name,
    kind,
    volume,
    group: ctx.group,
    volumeId: ctx.volumeId,
    size: ctx.size,
    point,
    parent: null,
    layers: [],
    readOnly: false,
    created: new Date().toISOString(),
    steps: 0,
    ...extra,
  };
}

function viewAcl(raw: unknown): string[] | undefined {
  try {
    return parseAcl(raw);
  } catch (err) {
    if (err instanceof AclError) throw new UserError('invalid', err.message);
    throw err;
  }
}

/** A view at `p` reads T_k onward (and AILFC_k for an overlay). */
function pinFrom(p: ResolvedPoint): number {
  return p.overlay ?? p.k;
}

/** Pins a point in its manager (see BackupManager.pin). */
function pinPoint(m: BackupManager, holder: string, p: ResolvedPoint): void {
  m.pin(holder, pinFrom(p), p.overlay !== null);
}

/** Validates OFFSET:LEN ranges (numbers or size strings) against the volume. */
function parseRanges(raw: unknown, size: number): Array<{ offset: number; length: number }> | null {
  if (raw === undefined || raw === null) return null;
  if (!Array.isArray(raw) || raw.length === 0) throw new UserError('invalid', 'ranges must be a non-empty list of {offset, length}');
  const out: Array<{ offset: number; length: number }> = [];
  for (const r of raw) {
    const o = (r as { offset?: unknown })?.offset;
    const l = (r as { length?: unknown })?.length;
    if (!Number.isSafeInteger(o) || !Number.isSafeInteger(l) || (o as number) < 0 || (l as number) <= 0) {
      throw new UserError('invalid', `bad range ${JSON.stringify(r)}: offset >= 0 and length > 0 are required`);
    }
    if ((o as number) + (l as number) > size) throw new UserError('invalid', `range ${o}:${l} runs past the end of the volume (${size} bytes)`);
    out.push({ offset: o as number, length: l as number });
  }
  return out;
}

/** The parts of sorted, disjoint `pieces` inside any of `ranges`. */
function intersect(pieces: Array<{ offset: number; length: number }>, ranges: Array<{ offset: number; length: number }>): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (const p of pieces) {
    for (const r of ranges) {
      const a = Math.max(p.offset, r.offset);
      const z = Math.min(p.offset + p.length, r.offset + r.length);
      if (a < z) out.push({ offset: a, length: z - a });
    }
  }
  out.sort((x, y) => x.offset - y.offset);
  const merged: Array<{ offset: number; length: number }> = [];
  for (const p of out) {
    const last = merged[merged.length - 1];
    if (last && p.offset <= last.offset + last.length) last.length = Math.max(last.length, p.offset + p.length - last.offset);
    else merged.push({ ...p });
  }
  return merged;
}
