/**
 * `rewind archive ...`: archive points into the dedup archive pool and
 * manage it.
 *
 *   rewind archive VOL|GROUP --at POINT [--name N]
 *   rewind archive list | show NAME | verify [NAME...] | gc
 *   rewind archive forget NAME... | --policy 'daily:30d,weekly:26w,monthly:forever' [--dry-run]
 *
 * Archived points are used elsewhere as `archive:NAME` (snapshot, clone,
 * export, restore, diff).
 */
import type { Command } from 'commander';
import * as path from 'node:path';
import { generateKeyFile, type GcReport, type PointManifest, type PoolStats, type VerifyReport } from '../archive';
import type { ArchiveResult, PointSummary } from '../timetravel/archiver';
import { formatSize } from '../util/size';
import { CliError, EXIT, makeClient, table, type GlobalOptions } from './common';
import { withProgress } from './timetravel-commands';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

type Opts = GlobalOptions & { json?: boolean; progress?: boolean };

const point = (n: string) => `/v1/archives/${encodeURIComponent(n)}`;

async function archive(target: string, o: Opts & { at?: string; name?: string }): Promise<void> {
  if (!o.at) throw new CliError("required option '--at <point>' not specified", EXIT.USAGE);
  const body: Record<string, unknown> = { target, at: o.at };
  if (o.name) body.name = o.name;
  const r = await withProgress<ArchiveResult>(o, 'archive', '/v1/archives', body);
  if (o.json) return print(JSON.stringify(r, null, 2));
  const p = r.point;
  const read = p.volumes.reduce((a, v) => a + v.stats.bytesRead, 0);
  const stored = p.volumes.reduce((a, v) => a + v.stats.bytesStored, 0);
  print(`archived ${target} at seq ${p.seq} as ${p.name}${p.marker ? ` (marker ${p.marker})` : ''}`);
  print(`  ${p.volumes.map((v) => `${v.volume} ${formatSize(v.size)}`).join(', ')}; leaf ${formatSize(p.leafSize)}`);
  print(
    r.predecessor
      ? `  from ${r.predecessor}: ${r.changedBytes === null ? 'history faded, read everything' : `${formatSize(r.changedBytes)} changed`}; read ${formatSize(read)}, stored ${formatSize(stored)} in ${(r.durationMs / 1000).toFixed(1)} s`
      : `  full: read ${formatSize(read)}, stored ${formatSize(stored)} in ${(r.durationMs / 1000).toFixed(1)} s`,
  );
  print(`  use it as archive:${p.name} (snapshot, clone, export, restore, diff)`);
}

async function list(o: Opts): Promise<void> {
  const r = await makeClient(o).request<{ points: PointSummary[]; stats: PoolStats | null }>('GET', '/v1/archives');
  if (o.json) return print(JSON.stringify(r, null, 2));
  if (!r.points.length) return print('no archived points');
  print(
    table(
      ['NAME', 'VOLUMES', 'SEQ', 'TIME', 'MARKER', 'STORED', 'USED BY'],
      r.points.map((p) => [
        p.name,
        p.volumes.map((v) => v.volume).join(','),
        String(p.seq ?? '-'),
        p.time ?? '-',
        p.marker ?? '-',
        formatSize(p.bytesStored),
        p.usedBy.join(',') || '-',
      ]),
    ),
  );
  if (r.stats) print(statsLine(r.stats));
}

function statsLine(s: PoolStats): string {
  return `pool: ${s.points} points, ${formatSize(s.logicalBytes)} logical in ${formatSize(s.packBytes)} of packs (dedup ratio ${s.dedupRatio.toFixed(1)}), ${s.chunks} chunks${s.quarantined ? `, ${s.quarantined} QUARANTINED` : ''}`;
}

async function show(name: string, o: Opts): Promise<void> {
  const p = await makeClient(o).request<PointManifest & { usedBy: string[] }>('GET', point(name));
  if (o.json) return print(JSON.stringify(p, null, 2));
  print(`archived point ${p.name}`);
  print(
    `  group ${p.group ?? '-'}, seq ${p.seq ?? '-'}, ${p.time ? new Date(p.time).toISOString() : '-'}${p.marker ? `, marker ${p.marker}` : ''}`,
  );
  if (p.quiesce) print(`  quiesce: ${p.quiesce.kind}${p.quiesce.ok ? '' : ` (failed: ${p.quiesce.detail ?? ''})`}`);
  print(
    `  created ${new Date(p.created).toISOString()}, predecessor ${p.predecessor ?? '-'}, leaf ${formatSize(p.leafSize)}, ${p.compression}${p.encrypted ? ', encrypted' : ''}`,
  );
  for (const v of p.volumes) {
    print(`  ${v.volume}: ${formatSize(v.size)}, root ${v.root}`);
    print(
      `    read ${formatSize(v.stats.bytesRead)}, ${v.stats.leavesSameAsBase} leaves as before, ${v.stats.leavesDedup} found in the pool, ${v.stats.leavesStored} stored (${formatSize(v.stats.bytesStored)}), ${v.stats.subtreesReused} subtrees reused`,
    );
  }
  if (p.usedBy.length) print(`  used by ${p.usedBy.join(', ')}`);
}

async function verify(names: string[], o: Opts): Promise<void> {
  const r = await withProgress<VerifyReport>(o, 'verify', '/v1/archives/verify', names.length ? { points: names } : {});
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(
    `verified ${r.points.length} point(s): ${r.chunksChecked} chunks, ${formatSize(r.bytesChecked)} re-hashed from ${r.packsRead} packs in ${(r.ms / 1000).toFixed(1)} s`,
  );
  for (const p of r.missingPacks) print(`  MISSING pack ${p}`);
  for (const p of r.truncatedPacks) print(`  TRUNCATED pack ${p}`);
  for (const b of r.bad)
    print(
      `  BAD chunk ${b.chunk} in ${b.pack ?? '(no copy)'}${b.offset !== null ? ` at ${b.offset}` : ''}: ${b.reason}; used by ${b.points.join(', ') || '-'}`,
    );
  if (r.released) print(`  ${r.released} quarantined chunk(s) checked out and were released`);
  if (r.bad.length || r.missingPacks.length || r.truncatedPacks.length)
    throw new CliError(`verify found ${r.bad.length} bad chunk(s)`, EXIT.FAILURE);
  print('  all good');
}

async function gc(o: Opts): Promise<void> {
  const r = await withProgress<GcReport>(o, 'gc', '/v1/archives/gc', {});
  if (o.json) return print(JSON.stringify(r, null, 2));
  print(`gc: ${r.points} live point(s), ${r.chunksSwept} chunks swept (${formatSize(r.bytesSwept)}), ${r.packsDeleted} pack(s) deleted`);
}

async function forget(names: string[], o: Opts & { policy?: string; dryRun?: boolean }): Promise<void> {
  if (!!o.policy === names.length > 0) throw new CliError('give point names or --policy, not both (and not neither)', EXIT.USAGE);
  const body: Record<string, unknown> = o.policy ? { policy: o.policy } : { names };
  if (o.dryRun) body.dryRun = true;
  const r = await makeClient(o).request<{
    forgotten: string[];
    kept: Array<{ name: string; reason: string }>;
    inUse: string[];
    dryRun: boolean;
  }>('POST', '/v1/archives/forget', body);
  if (o.json) return print(JSON.stringify(r, null, 2));
  const verb = r.dryRun ? 'would forget' : 'forgot';
  print(`${verb} ${r.forgotten.length} point(s)${r.forgotten.length ? `: ${r.forgotten.join(', ')}` : ''}`);
  if (o.policy) for (const k of r.kept) print(`  keep ${k.name}: ${k.reason}`);
  if (!r.dryRun && r.forgotten.length) print('  their space is reclaimed by: rewind archive gc');
}

/** Writes a new random key file (0600) for `rewind serve --archive-key`; no daemon involved. */
function keygen(file: string): void {
  const out = path.resolve(file);
  try {
    generateKeyFile(out);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError(
      code === 'EEXIST' ? `${out} already exists; a key is never overwritten` : `cannot write ${out}: ${(err as Error).message}`,
      EXIT.FAILURE,
    );
  }
  print(
    `wrote a new archive key to ${out} (mode 0600); start the daemon with --archive-key ${out} and keep a copy: without it the pool cannot be read`,
  );
}

export function registerArchive(program: Command): void {
  const a = program
    .command('archive')
    .description('archive a point of a volume or consistency group into the dedup archive pool; manage the pool')
    .argument('[target]', 'a protected volume or a consistency group')
    .option('--at <point>', 'the point to archive (@seq:N, @txn:N, a time, a marker, latest)')
    .option('--name <name>', 'name of the archived point (default TARGET.seq-N)')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nArchived points are used as archive:NAME by snapshot, clone, export, restore and diff.')
    .action(async (target: string | undefined, _o: unknown, cmd: Command) => {
      if (!target) throw new CliError('name a volume or group to archive (or a subcommand: list, show, verify, gc, forget)', EXIT.USAGE);
      await archive(target, cmd.optsWithGlobals());
    });
  a.command('list')
    .description('list archived points and pool totals')
    .option('--json', 'print JSON')
    .action(async (_o: unknown, cmd: Command) => list(cmd.optsWithGlobals()));
  a.command('show')
    .description("an archived point's manifest")
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (n: string, _o: unknown, cmd: Command) => show(n, cmd.optsWithGlobals()));
  a.command('verify')
    .description('re-hash every chunk of the named points (default all); bad chunks are quarantined and reported')
    .argument('[names...]')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .action(async (names: string[], _o: unknown, cmd: Command) => verify(names, cmd.optsWithGlobals()));
  a.command('gc')
    .description('delete chunks no point references; repack packs that are mostly garbage')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .action(async (_o: unknown, cmd: Command) => gc(cmd.optsWithGlobals()));
  a.command('keygen')
    .description('write a new key file for an encrypted pool (rewind serve --archive-key FILE)')
    .argument('<file>')
    .action((f: string) => keygen(f));
  a.command('forget')
    .description('forget archived points by name or by a policy (their space goes at the next gc)')
    .argument('[names...]')
    .option('--policy <tiers>', "keep tiers, e.g. 'daily:30d,weekly:26w,monthly:forever' (newest point per period)")
    .option('--dry-run', 'only show what would be forgotten')
    .option('--json', 'print JSON')
    .action(async (names: string[], _o: unknown, cmd: Command) => forget(names, cmd.optsWithGlobals()));
}
