/**
 * The scrub on the command line:
 *
 *   rewind scrub [VOLUME|GROUP] [--no-wait] [--json]     scrub now (all groups without a target); waits for the reports
 *   rewind scrub --status [--json]                      schedule, last passes, damage known
 *   rewind serve --scrub-interval 7d --scrub-rate 32M   the schedule (also "scrub": {"interval", "rate"} in --config)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import type { ServeConfig } from '../app/serve';
import { DEFAULT_SCRUB, type ScrubSettings, type ScrubStatus } from '../daemon/scrub';
import type { DamageMark } from '../manager/damage';
import type { ScrubReport } from '../manager/scrub';
import { formatDuration, parseDuration } from '../util/duration';
import { formatSize, parseSize } from '../util/size';
import { CliError, EXIT, makeClient, type GlobalOptions } from './common';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

export interface ScrubServeOptions {
  scrubInterval?: string;
  scrubRate?: string;
  config?: string;
}

export function addScrubServeOptions(serve: Command): Command {
  return serve
    .option(
      '--scrub-interval <duration>',
      `scrub every group's history and replica this often: 12h, 7d, off (default ${formatDuration(DEFAULT_SCRUB.intervalMs)})`,
    )
    .option('--scrub-rate <size>', `bytes a scrub reads per second; 0: unthrottled (default ${formatSize(DEFAULT_SCRUB.bytesPerSecond)})`);
}

/** --scrub-* flags over the configuration file's "scrub" object over the defaults. */
export function applyScrubOptions(o: ScrubServeOptions, config: ServeConfig): void {
  const s: ScrubSettings = { ...DEFAULT_SCRUB };
  if (o.config) {
    const file = path.resolve(o.config);
    let parsed: { scrub?: { interval?: unknown; rate?: unknown } };
    try {
      parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof parsed;
    } catch (err) {
      throw new CliError(`configuration file ${file}: ${(err as Error).message}`, EXIT.USAGE);
    }
    const c = parsed?.scrub;
    if (c !== undefined) {
      if (!c || typeof c !== 'object') throw new CliError(`configuration file ${file}: "scrub" must be an object`, EXIT.USAGE);
      for (const k of Object.keys(c))
        if (k !== 'interval' && k !== 'rate')
          throw new CliError(`configuration file ${file}: unknown setting scrub.${k} (known: interval, rate)`, EXIT.USAGE);
      if (c.interval !== undefined) s.intervalMs = setting(() => parseDuration(c.interval as string), `scrub.interval in ${file}`);
      if (c.rate !== undefined) s.bytesPerSecond = setting(() => parseSize(c.rate as string), `scrub.rate in ${file}`);
    }
  }
  if (o.scrubInterval !== undefined) s.intervalMs = setting(() => parseDuration(o.scrubInterval!), '--scrub-interval');
  if (o.scrubRate !== undefined) s.bytesPerSecond = setting(() => parseSize(o.scrubRate!), '--scrub-rate');
  config.scrub = s;
}

function setting(fn: () => number, what: string): number {
  try {
    return fn();
  } catch (err) {
    throw new CliError(`${what}: ${(err as Error).message}`, EXIT.USAGE);
  }
}

export function damageText(m: DamageMark): string {
  if (m.kind === 'replica') return `replica ${m.file}: ${m.blocks?.length ?? 0} block(s) from ${m.blocks?.[0]}: ${m.problem}`;
  return `${m.container ? `${m.container.toUpperCase()}_${m.n} ` : ''}(${m.file})${m.blocks ? ` ${m.blocks.length} block(s)` : ''}: ${m.problem}`;
}

function reportText(r: Omit<ScrubReport, 'found'> & { group?: string; found: number | DamageMark[] }): string {
  const found = typeof r.found === 'number' ? r.found : r.found.length;
  return (
    `${r.state} ${r.finished}: ${formatSize(r.bytesRead)} read in ${(r.durationMs / 1000).toFixed(1)} s (${formatSize(r.bytesPerSecond)}/s); ` +
    `containers ${r.containersChecked} checked, ${r.containerErrors} bad; replica blocks ${r.replicaBlocksChecked} checked, ${r.replicaBlockErrors} bad` +
    (found ? `; ${found} new finding(s)` : '') +
    (r.cleared ? `; ${r.cleared} cleared` : '') +
    (r.error ? `; error: ${r.error}` : '')
  );
}

export function scrubStatusText(s: ScrubStatus): string {
  const out = [`scrub: every ${formatDuration(s.intervalMs)} at ${formatSize(s.bytesPerSecond)}/s`];
  for (const g of s.groups) {
    const state = g.running ? `running (${formatSize(g.progressBytes ?? 0)} read)` : g.last ? reportText(g.last) : 'never scrubbed';
    out.push(`  group ${g.group}: ${state}${g.nextDue ? `; next ${g.nextDue}` : ''}`);
    for (const d of g.damage) out.push(`    DAMAGED ${damageText(d)}`);
  }
  for (const src of s.sources)
    out.push(
      `  ${src.name}: ${src.last ? `${src.last.checked} checked, ${src.last.errors.length} bad (${src.last.finished})` : 'never scrubbed'}`,
    );
  return out.join('\n');
}

export function registerScrub(program: Command): void {
  program
    .command('scrub')
    .description(
      "read every stored container of a volume's group (or of every group) and check its checksums, and the replica against what the history says it holds; damage found is refused on read from then on",
    )
    .argument('[target]', 'a protected volume or consistency group (default: all)')
    .option('--status', 'show the schedule, the last passes and the damage known, scrub nothing')
    .option('--no-wait', 'start the pass and return')
    .option('--json', 'print JSON')
    .action(async (target: string | undefined, _o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { status?: boolean; wait: boolean; json?: boolean }>();
      const client = makeClient(o, { waitsForManager: true });
      if (o.status) {
        const s = await client.request<ScrubStatus>('GET', '/v1/scrub');
        return print(o.json ? JSON.stringify(s, null, 2) : scrubStatusText(s));
      }
      const r = await client.request<{ reports?: Array<ScrubReport & { group: string }>; started?: string }>('POST', '/v1/scrub', {
        ...(target ? { target } : {}),
        wait: o.wait,
      });
      if (o.json) return print(JSON.stringify(r, null, 2));
      if (!r.reports) return print(`scrub started (${r.started})`);
      for (const rep of r.reports) {
        print(`group ${rep.group}: ${reportText(rep)}`);
        for (const d of rep.found) print(`  DAMAGED ${damageText(d)}`);
      }
      if (r.reports.some((x) => x.found.length > 0 || x.state === 'failed')) throw new CliError('the scrub found damage', EXIT.FAILURE);
    });
}
