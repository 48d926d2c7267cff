/**
 * Client commands of the file catalog: catalog (build, list, export and
 * import blobs), files (list, search, --versions), changed-files.
 * restore-file is in restore-file.ts.
 *
 * A query of a point that is not cataloged yet builds its catalog first
 * (with priority: not throttled), showing the job's progress.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import cliProgress from 'cli-progress';
import type { ControlClient } from '../control/client';
import { ApiError } from '../control/client';
import type { Change, FileInfo, FsContext, JobRecord, PointRecord, Version } from '../file-catalog/service';
import type { PointInfo } from '../timetravel/service';
import { formatSize } from '../util/size';
import { CliError, EXIT, makeClient, table, type GlobalOptions } from './common';

export const vol = (name: string, what: string): string => `/v1/volumes/${encodeURIComponent(name)}/${what}`;

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

type Common = GlobalOptions & { json?: boolean; progress?: boolean };

function query(params: Record<string, string | number | boolean | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== false) q.set(k, v === true ? '1' : String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Waits for a catalog job, with a progress line on stderr (unless --json or --no-progress). */
export async function waitJob(c: ControlClient, job: JobRecord, o: Common): Promise<JobRecord> {
  const tty = process.stderr.isTTY === true && !o.json && o.progress !== false;
  const bar = tty
    ? new cliProgress.SingleBar(
        { format: `catalog @seq:${job.seq} [{bar}] {phase} {value}`, stream: process.stderr, hideCursor: true, clearOnComplete: true },
        cliProgress.Presets.shades_classic,
      )
    : null;
  bar?.start(1, 0, { phase: 'queued' });
  try {
    for (;;) {
      const j = await c.request<JobRecord>('GET', `/v1/catalog/jobs/${job.id}`);
      if (bar) {
        bar.setTotal(Math.max(1, j.progress.total, j.progress.done));
        bar.update(j.progress.done, { phase: j.progress.phase });
      }
      if (j.state === 'done') return j;
      if (j.state === 'failed') throw new CliError(`cataloging @seq:${job.seq} failed: ${j.error}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  } finally {
    bar?.stop();
  }
}

/** Builds the point's catalog (priority) and waits; returns the point. */
export async function ensureCataloged(c: ControlClient, volume: string, at: string | undefined, o: Common): Promise<PointRecord | null> {
  const r = await c.request<{ job: JobRecord | null; point: PointRecord | null; info: PointInfo }>('POST', vol(volume, 'catalog'), {
    at: at ?? 'latest',
    priority: true,
  });
  if (r.point) return r.point;
  if (!o.json && process.stderr.isTTY !== true && o.progress !== false)
    process.stderr.write(`cataloging ${volume} at @seq:${r.info.seq} (${r.info.time})...\n`);
  await waitJob(c, r.job!, o);
  return null;
}

const notCataloged = (err: unknown): boolean => err instanceof ApiError && err.status === 409 && /cataloged/.test(err.message);

/** Runs `fn`; if the point is not cataloged yet, catalogs it and runs `fn` again. */
export async function withCatalog<T>(
  c: ControlClient,
  volume: string,
  at: string | undefined,
  o: Common,
  fn: () => Promise<T>,
): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (!notCataloged(err)) throw err;
  }
  await ensureCataloged(c, volume, at, o);
  return fn();
}

function fsLine(f: FsContext): string {
  const what = f.error
    ? `not cataloged: ${f.error}`
    : `${f.fsType}${f.fsLabel ? ` "${f.fsLabel}"` : ''}${f.uuid ? ` ${f.uuid}` : ''}, ${f.entries} paths`;
  return `  ${f.label}: ${what}${f.mountPoint ? `, mounted at ${f.mountPoint}` : ''}`;
}

function pointLine(p: PointRecord): string {
  return `@seq:${p.seq} (${new Date(p.time).toISOString()}, transaction ${p.txn}${p.markers.length ? `, marker ${p.markers.join(', ')}` : ''})`;
}

export async function catalog(
  volume: string,
  o: Common & { at?: string; wait?: boolean; export?: string; import?: string; force?: boolean; full?: boolean },
): Promise<void> {
  const c = makeClient(o, { waitsForManager: true });
  if (o.import) {
    const blob = fs.readFileSync(o.import);
    const res = await c.download('POST', vol(volume, 'catalog/import'), blob);
    const text = await new Promise<string>((resolve, reject) => {
      let s = '';
      res.setEncoding('utf8').on('data', (d: string) => (s += d));
      res.on('end', () => resolve(s));
      res.on('error', reject);
    });
    const p = JSON.parse(text) as PointRecord;
    if (o.json) return print(JSON.stringify(p, null, 2));
    return print(`imported the catalog of ${volume} at ${pointLine(p)}: ${p.filesystems.reduce((n, f) => n + f.entries, 0)} paths`);
  }
  if (o.export) {
    const out = path.resolve(o.export);
    if (fs.existsSync(out) && !o.force) throw new CliError(`${out} already exists (--force overwrites it)`);
    await withCatalog(c, volume, o.at, o, async () => {
      const res = await c.download('GET', vol(volume, `catalog/blob${query({ at: o.at })}`));
      const chunks: Buffer[] = [];
      for await (const chunk of res) chunks.push(chunk as Buffer);
      fs.writeFileSync(out, Buffer.concat(chunks), { mode: 0o600 });
      if (!o.json)
        print(`wrote ${out} (${formatSize(fs.statSync(out).size)}), the catalog of ${volume} at ${res.headers['x-rewind-point']}`);
      else print(JSON.stringify({ file: out, point: res.headers['x-rewind-point'], bytes: fs.statSync(out).size }));
    });
    return;
  }
  if (o.at) {
    const r = await c.request<{ job: JobRecord | null; point: PointRecord | null; info: PointInfo }>('POST', vol(volume, 'catalog'), {
      at: o.at,
      priority: o.wait !== false,
      ...(o.full ? { full: true } : {}),
    });
    if (r.point) {
      if (o.json) return print(JSON.stringify(r, null, 2));
      return print(`${volume} at ${pointLine(r.point)} is cataloged already`);
    }
    if (o.wait === false) {
      if (o.json) return print(JSON.stringify(r, null, 2));
      return print(`queued catalog job ${r.job!.id} for ${volume} at @seq:${r.info.seq} (${r.info.time})`);
    }
    const j = await waitJob(c, r.job!, o);
    if (o.json) return print(JSON.stringify(j, null, 2));
    const s = j.stats!;
    print(
      `cataloged ${volume} at @seq:${j.seq}: ${s.mode}${s.base !== null ? ` from @seq:${s.base}` : ''}, ${s.changedPaths} paths changed, ` +
        `${formatSize(s.bytesRead)} read in ${(s.durationMs / 1000).toFixed(2)} s`,
    );
    return;
  }
  const r = await c.request<{ volume: string; points: PointRecord[]; jobs: JobRecord[] }>('GET', vol(volume, 'catalog'));
  if (o.json) return print(JSON.stringify(r, null, 2));
  if (!r.points.length) print(`no point of ${volume} is cataloged`);
  for (const p of r.points) {
    print(
      `${pointLine(p)}: ${p.state}, ${p.source === 'imported' ? 'imported' : `${p.stats.mode}, ${p.stats.changedPaths} paths changed`}`,
    );
    for (const f of p.filesystems) print(fsLine(f));
    for (const e of p.errors.slice(0, 3)) print(`  error: ${e}`);
  }
  const open = r.jobs.filter((j) => j.state === 'queued' || j.state === 'running' || j.state === 'failed');
  if (open.length) {
    print('jobs:');
    for (const j of open) print(`  ${j.id}: @seq:${j.seq} (${j.asked}) ${j.state}${j.error ? `: ${j.error}` : ` ${j.progress.phase}`}`);
  }
}

function fileRow(e: FileInfo): string[] {
  return [
    e.modeText,
    String(e.nlink),
    String(e.uid),
    String(e.gid),
    e.type === 'chr' || e.type === 'blk' ? `${e.rdev?.[0] ?? 0},${e.rdev?.[1] ?? 0}` : String(e.size),
    e.mtime.replace('T', ' ').replace(/\.\d+Z$/, ''),
    e.path + (e.linkTarget !== undefined ? ` -> ${e.linkTarget}` : ''),
  ];
}

export async function files(
  volume: string,
  pathArg: string | undefined,
  o: Common & { at?: string; name?: string; newer?: string; recursive?: boolean; partition?: string; versions?: string | boolean },
): Promise<void> {
  const c = makeClient(o, { waitsForManager: true });
  if (o.versions !== undefined) {
    const p = typeof o.versions === 'string' ? o.versions : pathArg;
    if (!p) throw new CliError('--versions needs a PATH', EXIT.USAGE);
    const r = await c.request<{ path: string; partition: number; versions: Version[] }>(
      'GET',
      vol(volume, `files/versions${query({ path: p, partition: o.partition })}`),
    );
    if (o.json) return print(JSON.stringify(r, null, 2));
    if (!r.versions.length) return print(`${r.path}: in no cataloged point`);
    print(
      table(
        ['SEQ', 'TIME', 'TXN', 'SIZE', 'MTIME', 'MARKER'],
        r.versions.map((v) => [
          String(v.seq),
          v.time,
          String(v.txn),
          v.deleted ? '(deleted)' : String(v.size),
          v.mtime ?? '',
          v.markers.join(','),
        ]),
      ),
    );
    return;
  }
  const first = await withCatalog(c, volume, o.at, o, () =>
    c.request<{ point: PointRecord; entries: FileInfo[]; next: string | null }>(
      'GET',
      vol(
        volume,
        `files${query({ at: o.at, path: pathArg, name: o.name, newer: o.newer, recursive: o.recursive, partition: o.partition })}`,
      ),
    ),
  );
  const all = [...first.entries];
  let next = first.next;
  while (next) {
    const page = await c.request<{ entries: FileInfo[]; next: string | null }>(
      'GET',
      vol(
        volume,
        `files${query({ at: `@seq:${first.point.seq}`, path: pathArg, name: o.name, newer: o.newer, recursive: o.recursive, partition: o.partition, cursor: next })}`,
      ),
    );
    all.push(...page.entries);
    next = page.next;
  }
  if (o.json) return print(JSON.stringify({ point: first.point, entries: all }, null, 2));
  const multi = new Set(all.map((e) => e.partition)).size > 1;
  process.stderr.write(`${volume} at ${pointLine(first.point)}\n`);
  if (!all.length) return;
  print(
    table(
      ['MODE', 'LINKS', 'UID', 'GID', 'SIZE', 'MTIME', 'PATH'],
      all.map((e) => (multi ? [...fileRow(e).slice(0, 6), `${e.partition}:${e.path}`] : fileRow(e))),
    ),
  );
}

export async function changedFiles(volume: string, o: Common & { from?: string; to?: string; partition?: string }): Promise<void> {
  if (!o.from || !o.to) throw new CliError('--from POINT and --to POINT are required', EXIT.USAGE);
  const c = makeClient(o, { waitsForManager: true });
  const r = await withCatalog(c, volume, o.from, o, () =>
    c.request<{ from: PointInfo; to: PointInfo; changes: Change[] }>(
      'GET',
      vol(volume, `changed-files${query({ from: o.from, to: o.to, partition: o.partition })}`),
    ),
  );
  if (o.json) return print(JSON.stringify(r, null, 2));
  process.stderr.write(`${volume}: @seq:${r.from.seq} (${r.from.time}) -> @seq:${r.to.seq} (${r.to.time}): ${r.changes.length} paths\n`);
  const mark = { added: 'A', removed: 'D', modified: 'M', metadata: 'm' };
  for (const ch of r.changes) print(`${mark[ch.change]} ${ch.type === 'dir' ? `${ch.path}/` : ch.path}`);
}
