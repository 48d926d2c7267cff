/**
 * Client commands for managing history: mark, markers, unmark, surface,
 * submerge, schedule, checkpoint, diff, apply-diff, bisect.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MarkerRecord, Schedule } from '../timetravel/markers';
import { describeRule } from '../timetravel/markers';
import type { PointInfo, ViewInfo } from '../timetravel/service';
import { readDiffFile } from '../timetravel/diff';
import { formatSize } from '../util/size';
import { CliError, EXIT, makeClient, table, type GlobalOptions } from './common';
import { exportUris, nearestBody, substitutionNote } from './timetravel-commands';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

type Json = { json?: boolean };
const enc = encodeURIComponent;

function pointLine(p: PointInfo): string {
  return `seq ${p.seq}, ${p.time}: ${p.write.kind}${p.write.restore ? ' (restore)' : ''} of ${p.write.length} bytes at offset ${p.write.offset} on ${p.write.volume}`;
}

export async function mark(
  target: string,
  name: string,
  o: GlobalOptions & Json & { quiescePre?: string; quiescePost?: string; timeout?: string; keep?: string; at?: string; nearest?: string },
): Promise<void> {
  const body: Record<string, unknown> = { name };
  if (o.at) body.at = o.at;
  if (o.nearest) body.nearest = o.nearest;
  if (o.quiescePre) body.pre = o.quiescePre;
  if (o.quiescePost) body.post = o.quiescePost;
  if (o.timeout) body.timeout = /^\d+(\.\d+)?$/.test(o.timeout) ? Number(o.timeout) : o.timeout;
  if (o.keep) body.keep = o.keep;
  const m = await makeClient(o, { waitsForManager: true }).request<MarkerRecord>('POST', `/v1/markers/${enc(target)}`, body);
  if (o.json) return print(JSON.stringify(m, null, 2));
  print(`marked ${m.name} on ${m.volume ?? `group ${m.group}`} at seq ${m.seq} (${new Date(m.time).toISOString()}): ${m.kind}`);
  if (m.reason) print(`  ${m.reason}`);
  if (m.hooks.post && m.hooks.post.exitCode !== 0)
    print(`  post-hook ${m.hooks.post.timedOut ? 'timed out' : `exited ${m.hooks.post.exitCode}`}`);
}

export async function markers(
  target: string,
  o: GlobalOptions & Json & { name?: string; kind?: string; since?: string; until?: string },
): Promise<void> {
  const q = new URLSearchParams();
  for (const k of ['name', 'kind', 'since', 'until'] as const) if (o[k]) q.set(k, o[k]!);
  const r = await makeClient(o).request<{ markers: MarkerRecord[] }>('GET', `/v1/markers/${enc(target)}${q.size ? `?${q}` : ''}`);
  if (o.json) return print(JSON.stringify(r.markers, null, 2));
  if (!r.markers.length) return print('no markers');
  print(
    table(
      ['NAME', 'SEQ', 'TIME', 'KIND', 'ON', 'KEEP UNTIL', 'NOTE'],
      r.markers.map((m) => [
        m.name,
        String(m.seq),
        new Date(m.time).toISOString(),
        m.kind,
        m.volume ?? `group ${m.group}`,
        m.retainUntil ? new Date(m.retainUntil).toISOString() : '-',
        m.reason ?? (m.auto ? 'scheduled' : ''),
      ]),
    ),
  );
}

export async function unmark(target: string, name: string, o: GlobalOptions & Json): Promise<void> {
  const m = await makeClient(o).request<MarkerRecord>('DELETE', `/v1/markers/${enc(target)}/${enc(name)}`);
  if (o.json) return print(JSON.stringify(m, null, 2));
  print(`removed marker ${m.name} (seq ${m.seq})`);
}

export async function surface(volume: string, marker: string, o: GlobalOptions & Json): Promise<void> {
  const v = await makeClient(o).request<ViewInfo>('POST', `/v1/volumes/${enc(volume)}/surface`, { marker });
  if (o.json) return print(JSON.stringify(v, null, 2));
  print(`surfaced ${marker} of ${volume} (seq ${v.point.seq}) as a read-only export`);
  for (const u of await exportUris(o, v.name)) print(`  ${u}`);
}

export async function submerge(name: string, o: GlobalOptions & Json): Promise<void> {
  const r = await makeClient(o).request<{ removed: string; disconnected: number }>('POST', '/v1/submerge', { name });
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`submerged ${name}${r.disconnected ? ` (disconnected ${r.disconnected})` : ''}`);
}

function printSchedule(s: Schedule): void {
  if (!s.rules.length) return print(`no schedule for ${s.volume}`);
  s.rules.forEach((r, i) =>
    print(`${i + 1}. ${describeRule(r)}${s.last[String(i)] ? ` (last ${new Date(s.last[String(i)]!).toISOString()})` : ''}`),
  );
}

export async function schedule(volume: string, o: GlobalOptions & Json & { add?: string[]; clear?: boolean }): Promise<void> {
  const c = makeClient(o);
  const s =
    o.add?.length || o.clear
      ? await c.request<Schedule>('POST', `/v1/volumes/${enc(volume)}/schedule`, {
          ...(o.add?.length ? { add: o.add } : {}),
          ...(o.clear ? { clear: true } : {}),
        })
      : await c.request<Schedule>('GET', `/v1/volumes/${enc(volume)}/schedule`);
  if (o.json) return print(JSON.stringify(s, null, 2));
  printSchedule(s);
}

export async function checkpoint(volume: string, o: GlobalOptions & Json & { every: string; keep?: string }): Promise<void> {
  const every = /^\d+$/.test(o.every) ? `${o.every}s` : o.every;
  const rule = `every=${every}${o.keep ? `,keep=${o.keep}` : ''}`;
  await schedule(volume, { ...o, add: [rule] });
}

interface DiffResult {
  from: PointInfo;
  to: PointInfo;
  blockSize: number;
  extents: Array<{ offset: number; length: number }>;
  changedBytes: number;
  export: string | null;
  file: string | null;
  fileBytes: number | null;
}

export async function diff(
  volume: string,
  o: GlobalOptions & Json & { from?: string; to?: string; export?: string; out?: string; nearest?: string },
): Promise<void> {
  if (!o.from || !o.to) throw new CliError('--from POINT and --to POINT are required', EXIT.USAGE);
  const body: Record<string, unknown> = { from: o.from, to: o.to, ...nearestBody(o) };
  if (o.export) body.name = o.export;
  if (o.out) body.out = path.resolve(o.out);
  const r = await makeClient(o, { waitsForManager: true }).streamJson<DiffResult>(
    'POST',
    `/v1/volumes/${enc(volume)}/diff`,
    body,
    () => undefined,
  );
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`from ${pointLine(r.from)}`);
  for (const note of [substitutionNote(r.from), substitutionNote(r.to)]) if (note) print(note);
  print(`to   ${pointLine(r.to)}`);
  print(`${r.extents.length} changed extent(s), ${formatSize(r.changedBytes)} (${formatSize(r.blockSize)} blocks)`);
  for (const e of r.extents.slice(0, 20)) print(`  ${e.offset}+${e.length}`);
  if (r.extents.length > 20) print(`  ... ${r.extents.length - 20} more (--json lists them all)`);
  if (r.export) {
    print(`export ${r.export}: the image at --to; meta context qemu:dirty-bitmap:${r.export} marks the changed extents`);
    print(
      `  e.g. qemu-img map --output=json --image-opts driver=nbd,export=${r.export},server.type=...,x-dirty-bitmap=qemu:dirty-bitmap:${r.export}  ("data": false = changed)`,
    );
  }
  if (r.file) print(`wrote ${r.file} (${formatSize(r.fileBytes ?? 0)}); replay it with: rewind apply-diff ${r.file} IMAGE`);
}

export async function applyDiff(file: string, image: string, o: Json): Promise<void> {
  // Check the whole file first, then the image, then write.
  const info = await readDiffFile(file);
  const st = fs.statSync(image);
  if (!st.isFile() && !st.isBlockDevice()) throw new CliError(`${image} is not a file or block device`, EXIT.FAILURE);
  const fd = fs.openSync(image, 'r+');
  try {
    const size = st.isFile() ? st.size : info.volumeSize;
    if (st.isFile() && size !== info.volumeSize) {
      throw new CliError(`${image} is ${size} bytes; the diff is of a ${info.volumeSize}-byte volume`, EXIT.FAILURE);
    }
    await readDiffFile(file, async (offset, data) => {
      let done = 0;
      while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    });
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (o.json) return print(JSON.stringify(info, null, 2));
  print(`applied ${info.records} extent(s), ${formatSize(info.dataBytes)}: ${image} went from seq ${info.fromSeq} to seq ${info.toSeq}`);
}

/** Runs the check with REWIND_URI pointing at the clone; 0 good, 125 skip, anything else (a crash too) bad. */
function runCheck(cmd: string, env: Record<string, string>): Promise<{ code: number | null; signal: string | null }> {
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', cmd], { stdio: ['ignore', process.stderr, process.stderr], env: { ...process.env, ...env } });
    child.on('error', () => resolve({ code: 127, signal: null }));
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
}

export async function bisect(
  volume: string,
  o: GlobalOptions & Json & { good?: string; bad?: string; check?: string; granularity?: string; nearest?: string },
): Promise<void> {
  if (!o.good || !o.bad || !o.check) throw new CliError('--good POINT, --bad POINT and --check CMD are required', EXIT.USAGE);
  const c = makeClient(o, { waitsForManager: true });
  const plan = await c.request<{ good: PointInfo; bad: PointInfo; granularity: string; candidates: number[] }>(
    'POST',
    `/v1/volumes/${enc(volume)}/bisect-candidates`,
    { good: o.good, bad: o.bad, granularity: o.granularity ?? 'write', ...nearestBody(o) },
  );
  const h = await c.health();
  const cand = plan.candidates;
  const say = (s: string): void => {
    if (!o.json) process.stderr.write(`bisect: ${s}\n`);
  };
  for (const note of [substitutionNote(plan.good), substitutionNote(plan.bad)]) if (note) say(note.trim());
  say(
    `${cand.length} ${plan.granularity === 'write' ? 'writes' : 'transactions'} between good seq ${plan.good.seq} and bad seq ${plan.bad.seq}`,
  );
  // Invariant: lo is good (-1 = the good point), hi is bad (the last candidate is the bad point).
  let lo = -1;
  let hi = cand.length - 1;
  const skipped = new Set<number>();
  const steps: Array<{ seq: number; verdict: string; exit: number | null }> = [];
  const stamp = `${process.pid}-${Date.now().toString(36)}`;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    let pick = -1;
    for (let d = 0; d < hi - lo; d++) {
      for (const x of [mid - d, mid + d]) if (x > lo && x < hi && !skipped.has(x)) pick = pick < 0 ? x : pick;
      if (pick >= 0) break;
    }
    if (pick < 0) break; // every candidate left is skipped
    const seq = cand[pick]!;
    const name = `bisect-${stamp}-${steps.length + 1}`;
    await c.request('POST', `/v1/volumes/${enc(volume)}/clones`, { at: `@seq:${seq}`, name, readOnly: true });
    let r: { code: number | null; signal: string | null };
    try {
      const uri = h.nbd.tcp ? `nbd://${h.nbd.tcp}/${enc(name)}` : `nbd+unix:///${enc(name)}?socket=${h.nbd.unix}`;
      r = await runCheck(o.check, {
        REWIND_URI: uri,
        REWIND_URI_UNIX: h.nbd.unix ? `nbd+unix:///${enc(name)}?socket=${h.nbd.unix}` : '',
        REWIND_EXPORT: name,
        REWIND_SEQ: String(seq),
      });
    } finally {
      await c.request('DELETE', `/v1/views/${enc(name)}`).catch(() => undefined);
    }
    const verdict = r.code === 0 ? 'good' : r.code === 125 ? 'skip' : 'bad';
    steps.push({ seq, verdict, exit: r.code });
    say(
      `check ${steps.length}: seq ${seq} is ${verdict}${verdict === 'bad' && r.code !== 1 ? ` (exit ${r.code ?? `signal ${r.signal}`})` : ''}`,
    );
    if (verdict === 'good') lo = pick;
    else if (verdict === 'bad') hi = pick;
    else skipped.add(pick);
  }
  const first = await c.request<PointInfo>('POST', `/v1/volumes/${enc(volume)}/resolve`, { at: `@seq:${cand[hi]!}` });
  const result = {
    firstBad: first,
    checks: steps.length,
    skipped: skipped.size,
    exact: hi - lo === 1,
    candidatesLeft: hi - lo === 1 ? [cand[hi]] : cand.slice(lo + 1, hi + 1),
    steps,
  };
  if (o.json) return print(JSON.stringify(result, null, 2));
  if (hi - lo === 1) print(`first bad ${plan.granularity === 'write' ? 'write' : 'transaction end'}: ${pointLine(first)}`);
  else print(`could not narrow it down (skipped checks): the first bad write is one of seq ${result.candidatesLeft.join(', ')}`);
  print(`${steps.length} check(s), ${skipped.size} skipped`);
}
