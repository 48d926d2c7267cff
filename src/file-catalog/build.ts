/**
 * Builds the catalog of one point: its partition table, each filesystem
 * (incrementally from the complete point before it when that point read
 * the same filesystem and the block history between them is known, else
 * in full), mount points from the image's /etc/fstab, and the point's
 * context. Damage is reported in the point's errors and warnings; a
 * filesystem that cannot be read at all is recorded with its error.
 * Every read goes through a CountingImage, so the point's stats say what
 * the build cost.
 */
import { CountingImage, listPartitions, openFilesystem, type ExtFilesystem, type FsImage, type Partition } from '../fs';
import { catalogFull } from './full';
import { partitionOf } from './restore';
import { applyFstab, readFstab } from './fstab';
import { catalogIncremental } from './incremental';
import { BlockRanges } from './ranges';
import type { CatalogStore } from './store';
import { Throttle, throttledImage } from './throttle';
import type { BuildStats, FsContext, PointRecord } from './types';
import { PointWriter, type LaterChangeProbe, type PathChange } from './writer';

/** Block runs of a volume (in units of the history's block size). */
export type VolumeRuns = Array<{ start: number; count: number }>;

/** Another point of the same volume, as the build needs it. */
export interface OtherPoint {
  seq: number;
  /** Blocks changed between it and the point being built; null when the history no longer says. */
  changed: () => Promise<VolumeRuns | null>;
  /** Its image, when it can still be read. */
  image: () => Promise<FsImage | null>;
}

export interface BuildInput {
  store: CatalogStore;
  /** The point's record without what the build fills in (state, filesystems, errors, stats). */
  point: Omit<PointRecord, 'state' | 'filesystems' | 'errors' | 'stats' | 'built' | 'partitionScheme' | 'source'>;
  image: FsImage;
  /** Block size of the history's runs (4096). */
  historyBlockSize: number;
  /** Points by seq, for the complete neighbours the store names. */
  other: (seq: number) => OtherPoint;
  throttle: Throttle;
  progress?: (phase: string, done: number, total: number) => void;
  /** Walk every filesystem even where an incremental build could run (rows are still shared with the point before). */
  full?: boolean;
}

const MAX_MESSAGES = 50;

function contextOf(p: Partition): FsContext {
  const c: FsContext = {
    partition: p.index,
    label: p.label,
    scheme: p.scheme,
    offset: p.offset,
    size: p.size,
    partitionType: p.type,
    fsType: p.content?.type ?? 'unknown',
    mountPoint: null,
    entries: 0,
    warnings: [],
  };
  if (p.uuid) c.partitionUuid = p.uuid;
  if (p.content?.uuid) c.uuid = p.content.uuid;
  if (p.content?.label) c.fsLabel = p.content.label;
  return c;
}

/** Did A read the same filesystem (same place, same identity, same geometry)? */
function sameFilesystem(a: FsContext | undefined, b: FsContext, fs: ExtFilesystem): boolean {
  return (
    a !== undefined &&
    !a.error &&
    a.offset === b.offset &&
    a.size === b.size &&
    a.fsType === b.fsType &&
    a.uuid === b.uuid &&
    a.blocksCount === fs.superblock.blocksCount &&
    a.inodesCount === fs.superblock.inodesCount
  );
}

export async function buildPoint(input: BuildInput): Promise<PointRecord> {
  return (await run(input, null)).record;
}

/**
 * The paths that differ between the complete point `baseSeq` and this one,
 * found the way an incremental build finds them (from the block history
 * between them), writing nothing: `rewind changed-files`.
 */
export async function diffPoint(input: BuildInput, baseSeq: number): Promise<{ record: PointRecord; changes: PathChange[] }> {
  const r = await run(input, baseSeq);
  return { record: r.record, changes: r.changes! };
}

async function run(input: BuildInput, dryBase: number | null): Promise<{ record: PointRecord; changes: PathChange[] | null }> {
  const t0 = Date.now();
  const { store, point } = input;
  const dry = dryBase !== null;
  const neighbours = dry ? { before: dryBase, after: null } : store.neighbours(point.vid, point.seq);
  const baseRec = neighbours.before === null ? undefined : store.point(point.vid, neighbours.before);
  const record: PointRecord = {
    ...point,
    state: 'building',
    source: 'built',
    filesystems: [],
    errors: [],
    partitionScheme: 'none',
    stats: emptyStats(),
    built: new Date().toISOString(),
  };
  if (!dry) await store.putPoint(record);
  const writer = new PointWriter(store, point.vid, point.seq, neighbours, { dry });
  const countB = new CountingImage(throttledImage(input.image, input.throttle));
  const countA: CountingImage[] = [];
  const err = (m: string): void => {
    if (record.errors.length < MAX_MESSAGES) record.errors.push(m);
  };
  const progress = input.progress ?? (() => undefined);
  const phases: Record<string, number> = {};
  let mark = performance.now();
  const phase = (name: string): void => {
    const now = performance.now();
    phases[name] = Math.round((phases[name] ?? 0) + now - mark);
    mark = now;
  };

  // The history between the base and this point, once.
  const base = neighbours.before === null ? null : input.other(neighbours.before);
  let baseRuns: VolumeRuns | null = null;
  if (base && baseRec?.source === 'built' && !input.full) {
    try {
      baseRuns = await base.changed();
    } catch (e) {
      err(`history since @seq:${base.seq}: ${(e as Error).message} (full build)`);
    }
  }
  phase('history');
  let baseImage: Promise<FsImage | null> | null = null;
  const imageA = (): Promise<FsImage | null> =>
    (baseImage ??= base!
      .image()
      .then((img) => {
        if (!img) return null;
        const c = new CountingImage(throttledImage(img, input.throttle));
        countA.push(c);
        return c;
      })
      .catch(() => null));

  progress('partitions', 0, 0);
  let parts: Partition[] = [];
  try {
    const table = await listPartitions(countB);
    record.partitionScheme = table.scheme;
    parts = table.partitions;
    for (const w of table.warnings) err(`partition table: ${w}`);
  } catch (e) {
    err((e as Error).message);
  }
  const opened: Array<{ ctx: FsContext; fs: ExtFilesystem; incremental: boolean }> = [];
  for (const p of parts) {
    const ctx = contextOf(p);
    record.filesystems.push(ctx);
    if (!p.content?.supported) {
      ctx.error = p.content
        ? `${p.content.type === 'unknown' ? 'no known filesystem' : `${p.content.type} is not supported yet`}`
        : 'not probed';
      continue;
    }
    const prevCtx = baseRec?.filesystems.find((f) => f.partition === p.index);
    const maybeIncremental = baseRuns !== null && prevCtx !== undefined && !prevCtx.error;
    try {
      // A walk reads whole stretches of inode table: large reads, few round trips to the history (each one
      // a hop through the thread pool). An incremental build reads single changed blocks.
      const fs = await openFilesystem(countB, p, { inodeReadahead: maybeIncremental ? 4096 : 256 * 1024 });
      ctx.blockSize = fs.blockSize;
      ctx.blocksCount = fs.superblock.blocksCount;
      ctx.inodesCount = fs.superblock.inodesCount;
      ctx.warnings.push(...fs.warnings);
      opened.push({ ctx, fs, incremental: maybeIncremental && sameFilesystem(prevCtx, ctx, fs) });
    } catch (e) {
      ctx.error = (e as Error).message;
    }
  }
  for (const o of opened) {
    try {
      const lines = await readFstab(o.fs);
      if (lines) applyFstab(lines, record.filesystems);
    } catch {
      // An unreadable fstab only costs the mount points.
    }
  }

  phase('open');
  let changedMetadata = 0;
  let changedBlocks = 0;
  for (const o of opened) {
    const { ctx, fs } = o;
    const warn = (m: string): void => {
      if (ctx.warnings.length < 20) ctx.warnings.push(m);
    };
    const changed = baseRuns ? BlockRanges.ofVolumeRuns(fs, baseRuns, input.historyBlockSize) : null;
    if (changed) changedBlocks += changed.count;
    const prevCount = baseRec?.filesystems.find((f) => f.partition === ctx.partition)?.entries ?? 0;
    try {
      if (o.incremental && changed) {
        progress(`incremental ${ctx.label}`, 0, 0);
        const r = await catalogIncremental({
          fsB: fs,
          fsA: async () => {
            const img = await imageA();
            return img ? openFilesystem(img, { ...fs.partition }, { inodeReadahead: 4096 }).catch(() => null) : null;
          },
          partition: ctx.partition,
          writer,
          a: { store, vid: point.vid, part: ctx.partition, at: neighbours.before! },
          seq: point.seq,
          changed,
          throttle: input.throttle,
          warn,
          phases,
        });
        changedMetadata += r.changedMetadataBlocks;
        const d = writer.delta.get(ctx.partition) ?? { added: 0, removed: 0 };
        ctx.entries = prevCount + d.added - d.removed;
      } else {
        const r = await catalogFull({
          fs,
          partition: ctx.partition,
          writer,
          seq: point.seq,
          changed,
          throttle: input.throttle,
          warn,
          progress: (n) => progress(`catalog ${ctx.label}`, n, prevCount),
        });
        ctx.entries = r.entries;
      }
    } catch (e) {
      ctx.error = (e as Error).message;
      ctx.entries = 0;
    }
  }
  // Filesystems the base had that this point has not (or could not read): their paths are gone here.
  for (const prev of baseRec?.filesystems ?? []) {
    if (prev.error) continue;
    const now = record.filesystems.find((f) => f.partition === prev.partition);
    if (!now || now.error) await writer.removeUnseen(prev.partition, Buffer.alloc(0));
  }

  phase('read');
  const after = neighbours.after === null ? null : input.other(neighbours.after);
  const probe = after ? laterProbe(after, record, input.historyBlockSize) : null;
  record.state = 'complete';
  const bytes = countB.bytes + countA.reduce((n, c) => n + c.bytes, 0);
  record.stats = {
    mode: opened.some((o) => o.incremental) ? 'incremental' : 'full',
    base: opened.some((o) => o.incremental) ? neighbours.before : null,
    bytesRead: bytes,
    reads: countB.calls + countA.reduce((n, c) => n + c.calls, 0),
    blocksRead: Math.round(bytes / (opened[0]?.fs.blockSize ?? 4096)),
    changedBlocks,
    changedMetadataBlocks: changedMetadata,
    rowsWritten: writer.rowsWritten,
    changedPaths: writer.changedPaths,
    durationMs: 0,
    throttledMs: Math.round(input.throttle.throttledMs),
  };
  progress('commit', 0, 0);
  record.stats.phases = phases;
  if (!dry) {
    // The duration includes the commit; the record is written in the same transaction, so it is estimated by then.
    const commitStart = performance.now();
    record.stats.durationMs = Date.now() - t0;
    await writer.finish(record, probe);
    phases.commit = Math.round(performance.now() - commitStart);
    record.stats.durationMs = Date.now() - t0;
    await store.putPoint(record);
  } else record.stats.durationMs = Date.now() - t0;
  return { record, changes: writer.changes };
}

export function emptyStats(): BuildStats {
  return {
    mode: 'full',
    base: null,
    bytesRead: 0,
    reads: 0,
    blocksRead: 0,
    changedBlocks: 0,
    changedMetadataBlocks: 0,
    rowsWritten: 0,
    changedPaths: 0,
    durationMs: 0,
    throttledMs: 0,
  };
}

/** Asks the later point C whether a path's content changed between this point and C (true when unsure). */
function laterProbe(c: OtherPoint, b: PointRecord, historyBlockSize: number): LaterChangeProbe {
  let runs: Promise<VolumeRuns | null> | null = null;
  const opened = new Map<number, Promise<ExtFilesystem | null>>();
  let image: Promise<FsImage | null> | null = null;
  return async (_path, part, atC) => {
    runs ??= c.changed().catch(() => null);
    const r = await runs;
    if (!r) return true;
    let fsp = opened.get(part);
    if (!fsp) {
      image ??= c.image().catch(() => null);
      const ctx = b.filesystems.find((f) => f.partition === part);
      fsp = image.then((img) => (img && ctx ? openFilesystem(img, partitionOf(ctx)).catch(() => null) : null));
      opened.set(part, fsp);
    }
    const fs = await fsp;
    if (!fs) return true;
    try {
      const changed = BlockRanges.ofVolumeRuns(fs, r, historyBlockSize);
      const x = await fs.fileExtents(atC.ino);
      return x.inline || x.runs.some((run) => changed.overlaps(run.physical, run.length)) || x.metaBlocks.some((m) => changed.has(m));
    } catch {
      return true;
    }
  };
}
