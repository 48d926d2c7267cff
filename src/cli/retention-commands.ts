/**
 * `rewind retention VOL [--policy P | --clear] [--dry-run | --run] [--json]`:
 * show or set the retention policy of a volume's group, preview what a
 * policy would fade, or fade now.
 */
import type { Command } from 'commander';
import type { RetentionInfo } from '../daemon/retention';
import type { FadeReport } from '../manager/retention';
import { formatSize } from '../util/size';
import { ControlClient } from '../control/client';
import { CliError, EXIT, makeClient, resolveEndpoint, resolveToken, table, type GlobalOptions } from './common';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

type Opts = GlobalOptions & { policy?: string; clear?: boolean; dryRun?: boolean; run?: boolean; rate?: string; json?: boolean };

function infoText(i: RetentionInfo): string {
  const lines = [
    `volume ${i.volume} (group ${i.group})`,
    `  policy:    ${i.policy ?? 'none (every write is kept)'}${i.set ? ` (set ${i.set})` : ''}`,
    `  history:   ${i.transactions} transactions, ${formatSize(i.historyBytes)}`,
    `  retained:  ${i.retainedFrom ? `from @seq:${i.retainedFrom.seq} (${i.retainedFrom.time})` : 'no history yet'}`,
  ];
  return lines.join('\n');
}

function reportText(r: FadeReport): string {
  const steps = r.dryRun ? r.steps : r.steps.filter((s) => s.done || s.skipped);
  const rows = steps.map((s) => [
    `${s.from}..${s.to}`,
    s.drop ? 'drop' : 'merge',
    String(s.pointsRemoved),
    s.lastSeq ? `@seq:${s.firstSeq}..@seq:${s.lastSeq}` : '-',
    s.firstTime && s.lastTime ? `${s.firstTime} .. ${s.lastTime}` : '-',
    formatSize(s.bytesFreed),
    s.skipped ? `skipped: ${s.skipped}` : r.dryRun ? 'would go' : 'done',
  ]);
  const out: string[] = [];
  out.push(`policy ${r.policy ?? 'none'} at ${r.now}${r.dryRun ? ' (dry run: nothing changed)' : ''}`);
  if (rows.length) out.push(table(['TXNS', 'ACTION', 'POINTS', 'SEQS', 'TIMES', 'FREED', 'STATUS'], rows));
  else out.push('nothing to fade: every retained point is still wanted');
  out.push(
    `${r.dryRun ? 'would remove' : 'removed'} ${r.pointsRemoved} points, ${r.dryRun ? 'would free' : 'freed'} ${formatSize(r.bytesFreed)}; ` +
      `history ${formatSize(r.historyBytesBefore)} -> ${formatSize(r.historyBytesAfter)}, transactions ${r.transactionsBefore} -> ${r.transactionsAfter}`,
  );
  if (r.retainedFrom) out.push(`retained from @seq:${r.retainedFrom.seq} (${r.retainedFrom.time})`);
  return out.join('\n');
}

export async function retention(volume: string, o: Opts): Promise<void> {
  const c = makeClient(o);
  const base = `/v1/volumes/${encodeURIComponent(volume)}/retention`;
  if (o.dryRun && o.run) throw new CliError('--dry-run and --run exclude each other', EXIT.USAGE);
  if (o.clear && o.policy) throw new CliError('--clear and --policy exclude each other', EXIT.USAGE);
  if (o.dryRun) {
    // With --policy: preview that policy without storing it.
    const body: Record<string, unknown> = { dryRun: true };
    if (o.policy) body.policy = o.policy;
    const r = await c.request<FadeReport>('POST', `${base}/fade`, body);
    return print(o.json ? JSON.stringify(r, null, 2) : reportText(r));
  }
  let info: RetentionInfo | null = null;
  if (o.policy || o.clear) info = await c.request<RetentionInfo>('PUT', base, { policy: o.clear ? null : o.policy });
  if (o.run) {
    // A fade may take long (it runs at low priority): no 30 s answer timeout.
    const endpoint = resolveEndpoint(o);
    const token = endpoint.kind === 'tcp' ? resolveToken(o) : undefined;
    const slow = new ControlClient(endpoint, token === undefined ? { timeoutMs: 24 * 3_600_000 } : { token, timeoutMs: 24 * 3_600_000 });
    const body: Record<string, unknown> = {};
    if (o.rate !== undefined) {
      const mbps = Number(o.rate);
      if (!(mbps >= 0)) throw new CliError(`--rate ${o.rate}: a number of MB/s (0 = unthrottled)`, EXIT.USAGE);
      body.bytesPerSecond = Math.round(mbps * 1e6);
    }
    const r = await slow.request<FadeReport>('POST', `${base}/fade`, body);
    return print(o.json ? JSON.stringify(r, null, 2) : reportText(r));
  }
  info ??= await c.request<RetentionInfo>('GET', base);
  print(o.json ? JSON.stringify(info, null, 2) : infoText(info));
}

export function registerRetention(program: Command): void {
  program
    .command('retention')
    .description("show or set the retention policy of a protected volume's group, preview what it fades (--dry-run), or fade now (--run)")
    .argument('<volume>', 'a protected volume')
    .option(
      '--policy <tiers>',
      'e.g. "all:48h, hourly:30d, daily:365d" (tiers all, hourly, daily, weekly, monthly, every:SPAN; ages s m h d w mo y or forever)',
    )
    .option('--clear', 'remove the policy: keep every write')
    .option('--dry-run', 'show which points would go and the space freed (with --policy: for that policy, without setting it)')
    .option('--run', 'fade now')
    .option('--rate <MB/s>', "with --run: I/O rate of the merge worker (read + written; 0 = unthrottled; default the daemon's, 64 MiB/s)")
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await retention(v, cmd.optsWithGlobals());
    });
}
