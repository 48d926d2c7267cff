/**
 * Client commands for time travel: snapshot, clone (and clone step/rm/list),
 * restore, export, point.
 */
import * as path from 'node:path';
import cliProgress from 'cli-progress';
import type { PointInfo, RestoreResult, ViewInfo } from '../timetravel/service';
import { formatSize, parseVolumeSize } from '../util/size';
import { CliError, EXIT, makeClient, table, type GlobalOptions } from './common';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

const vol = (name: string, what: string) => `/v1/volumes/${encodeURIComponent(name)}/${what}`;
const view = (name: string) => `/v1/views/${encodeURIComponent(name)}`;

type Json = { json?: boolean };
type Near = { nearest?: string };

function pointLine(p: PointInfo): string {
  const txn = p.pending ? `container ${p.txn} (journaled, not yet applied by the manager)` : `transaction ${p.txn}`;
  return `seq ${p.seq}, ${p.time}, ${txn}: ${p.write.kind}${p.write.restore ? ' (restore)' : ''} of ${p.write.length} bytes at offset ${p.write.offset} on ${p.write.volume}`;
}

/** --nearest as sent to the daemon (which checks the value). */
export function nearestBody(o: Near): Record<string, unknown> {
  return o.nearest === undefined ? {} : { nearest: o.nearest };
}

/** The line saying a point was replaced by the nearest valid one (--nearest), if it was. */
export function substitutionNote(p: PointInfo): string | null {
  return p.substituted ? `  note: ${p.substituted.note}` : null;
}

/** The export's NBD URIs, as the daemon serves them. */
export async function exportUris(o: GlobalOptions, name: string): Promise<string[]> {
  const h = await makeClient(o).health();
  const out: string[] = [];
  if (h.nbd.tcp) out.push(`nbd://${h.nbd.tcp}/${encodeURIComponent(name)}`);
  if (h.nbd.unix) out.push(`nbd+unix:///${encodeURIComponent(name)}?socket=${h.nbd.unix}`);
  return out;
}

async function printView(v: ViewInfo, o: GlobalOptions, verb: string): Promise<void> {
  print(`${verb} ${v.kind} ${v.name} of ${v.volume}${v.parent ? ` (from ${v.parent})` : ''}${v.readOnly ? ', read-only' : ''}`);
  print(`  at ${pointLine(v.point)}`);
  const note = substitutionNote(v.point);
  if (note) print(note);
  for (const u of await exportUris(o, v.name)) print(`  ${u}`);
}

export async function point(volume: string, at: string, o: GlobalOptions & Json & Near): Promise<void> {
  const p = await makeClient(o, { waitsForManager: true }).request<PointInfo>('POST', vol(volume, 'resolve'), { at, ...nearestBody(o) });
  if (o.json) return print(JSON.stringify(p, null, 2));
  print(`${at} is ${pointLine(p)}`);
  const note = substitutionNote(p);
  if (note) print(note);
}

export async function snapshot(
  volume: string,
  o: GlobalOptions & Json & Near & { at?: string; name?: string; allow?: string[] },
): Promise<void> {
  if (!o.at) throw new CliError("required option '--at <point>' not specified", EXIT.USAGE);
  const body: Record<string, unknown> = { at: o.at, ...nearestBody(o) };
  if (o.name) body.name = o.name;
  if (o.allow?.length) body.allow = o.allow;
  const v = await makeClient(o, { waitsForManager: true }).request<ViewInfo>('POST', vol(volume, 'snapshots'), body);
  if (o.json) return print(JSON.stringify(v, null, 2));
  await printView(v, o, 'created');
}

export async function clone(
  source: string,
  o: GlobalOptions & Json & Near & { at?: string; name?: string; readOnly?: boolean; allow?: string[] },
): Promise<void> {
  const body: Record<string, unknown> = { ...nearestBody(o) };
  if (o.allow?.length) body.allow = o.allow;
  if (o.at) body.at = o.at;
  if (o.name) body.name = o.name;
  if (o.readOnly) body.readOnly = true;
  const v = await makeClient(o, { waitsForManager: true }).request<ViewInfo>('POST', vol(source, 'clones'), body);
  if (o.json) return print(JSON.stringify(v, null, 2));
  await printView(v, o, 'created');
}

export async function viewList(kind: 'snapshot' | 'clone' | null, volume: string | undefined, o: GlobalOptions & Json): Promise<void> {
  const q = volume ? `?volume=${encodeURIComponent(volume)}` : '';
  const r = await makeClient(o).request<{ views: ViewInfo[] }>('GET', `/v1/views${q}`);
  const views = r.views.filter((v) => !kind || v.kind === kind);
  if (o.json) return print(JSON.stringify(views, null, 2));
  if (!views.length) return print(`no ${kind ?? 'snapshot or clone'}s`);
  print(
    table(
      ['NAME', 'KIND', 'VOLUME', 'SEQ', 'TIME', 'MODE', 'WRITTEN'],
      views.map((v) => [
        v.name,
        v.kind,
        v.volume,
        String(v.point.seq),
        v.point.time,
        v.readOnly ? 'ro' : 'rw',
        v.kind === 'clone' ? `${v.writtenBlocks} blocks` : '-',
      ]),
    ),
  );
}

export async function viewRemove(name: string, o: GlobalOptions & Json): Promise<void> {
  const r = await makeClient(o).request<{ removed: string; disconnected: number }>('DELETE', view(name));
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`removed ${name}${r.disconnected ? ` (disconnected ${r.disconnected} client${r.disconnected === 1 ? '' : 's'})` : ''}`);
}

export async function step(name: string, o: GlobalOptions & Json & Near & { forward?: string; back?: string; to?: string }): Promise<void> {
  const given = [o.forward, o.back, o.to].filter((x) => x !== undefined);
  if (given.length !== 1) throw new CliError('give exactly one of --forward K, --back K or --to POINT', EXIT.USAGE);
  const body: Record<string, unknown> = {};
  for (const k of ['forward', 'back'] as const) {
    if (o[k] !== undefined) {
      const n = Number(o[k]);
      if (!Number.isSafeInteger(n) || n < 1) throw new CliError(`--${k} must be a positive integer`, EXIT.USAGE);
      body[k] = n;
    }
  }
  if (o.to !== undefined) Object.assign(body, { to: o.to, ...nearestBody(o) });
  else if (o.nearest !== undefined) throw new CliError('--nearest goes with --to POINT', EXIT.USAGE);
  const r = await makeClient(o, { waitsForManager: true }).request<ViewInfo & { from: PointInfo }>('POST', `${view(name)}/step`, body);
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`${name} moved from seq ${r.from.seq} to ${pointLine(r.point)}`);
  const note = substitutionNote(r.point);
  if (note) print(note);
  print('  clients reconnect to see the new point');
}

/** "OFFSET:LEN" with size suffixes, e.g. 1M:64K. */
export function parseRange(text: string): { offset: number; length: number } {
  const m = /^([^:]+):([^:]+)$/.exec(text.trim());
  if (!m) throw new CliError(`--range ${text}: expected OFFSET:LEN (e.g. 0:1M)`, EXIT.USAGE);
  const num = (s: string): number => (/^\d+$/.test(s) ? Number(s) : parseVolumeSize(s));
  try {
    const offset = num(m[1]!);
    const length = num(m[2]!);
    return { offset, length };
  } catch (err) {
    throw new CliError(`--range ${text}: ${(err as Error).message}`, EXIT.USAGE);
  }
}

export function progressBar(label: string): { update(p: { phase: string; done: number; total: number }): void; stop(): void } {
  const tty = process.stderr.isTTY === true;
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {phase} | {doneh}/{totalh}`,
      stream: process.stderr,
      noTTYOutput: !tty,
      notTTYSchedule: 1000,
      hideCursor: tty,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(p) {
      const payload = { phase: p.phase, doneh: formatSize(p.done), totalh: formatSize(p.total) };
      if (!started) {
        bar.start(Math.max(1, p.total), p.done, payload);
        started = true;
      } else {
        bar.setTotal(Math.max(1, p.total));
        bar.update(p.done, payload);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

/** POSTs a long operation, showing its NDJSON progress as a bar (unless --no-progress or --json). */
export async function withProgress<T>(
  o: GlobalOptions & Json & { progress?: boolean },
  label: string,
  url: string,
  body: unknown,
): Promise<T> {
  const bar = o.progress === false || o.json ? null : progressBar(label);
  try {
    return await makeClient(o, { waitsForManager: true }).streamJson<T>('POST', url, body, (line) => {
      const p = line.progress as { phase: string; done: number; total: number } | undefined;
      if (p && bar) bar.update(p);
    });
  } finally {
    bar?.stop();
  }
}

export async function restore(
  volume: string,
  o: GlobalOptions & Json & Near & { to: string; range?: string[]; force?: boolean; progress?: boolean },
): Promise<void> {
  const body: Record<string, unknown> = { to: o.to, ...nearestBody(o) };
  if (o.range?.length) body.ranges = o.range.map(parseRange);
  if (o.force) body.force = true;
  const r = await withProgress<RestoreResult>(o, 'restore', vol(volume, 'restore'), body);
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`restored ${volume} to ${pointLine(r.point)}`);
  const note = substitutionNote(r.point);
  if (note) print(note);
  print(`  ${r.blocksChanged} blocks changed since then; rewrote ${formatSize(r.bytesWritten)} in ${(r.durationMs / 1000).toFixed(1)} s`);
  if (r.undo) print(`  the restore is journaled (seq ${r.firstSeq}-${r.lastSeq}); undo it with: rewind restore ${volume} --to ${r.undo}`);
}

export async function exportImage(
  volume: string,
  o: GlobalOptions & Json & Near & { at: string; out: string; progress?: boolean },
): Promise<void> {
  const out = path.resolve(o.out);
  const r = await withProgress<{ file: string; point: PointInfo; size: number; dataBytes: number; durationMs: number }>(
    o,
    'export',
    vol(volume, 'export'),
    { at: o.at, out, ...nearestBody(o) },
  );
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`wrote ${r.file}: ${formatSize(r.size)} raw image (${formatSize(r.dataBytes)} of data) of ${volume} at ${pointLine(r.point)}`);
  const note = substitutionNote(r.point);
  if (note) print(note);
}
