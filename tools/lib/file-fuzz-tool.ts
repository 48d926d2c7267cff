/**
 * The command line shared by the long fuzz runs of file readers
 * (fuzz-container, fuzz-diff): options, a scratch directory (tmpfs when
 * there is one), progress every 10 s, the stats and, with --coverage, the
 * line coverage of the files under test.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Coverage } from './coverage';

export interface FileFuzzTool<S> {
  name: string;
  /** What --coverage reports, for the help text. */
  covers: string;
  /** Compiled files (suffixes) whose line coverage is reported. */
  coverageFiles: string[];
  makeSeeds(dir: string): Promise<S[]>;
  fuzz(o: {
    dir: string;
    seeds: S[];
    timeLimitMs: number;
    seed?: number;
    onProgress: (s: { executions: number; accepted?: number }) => void;
  }): Promise<object>;
}

export async function runFileFuzzTool<S>(tool: FileFuzzTool<S>, argv: string[]): Promise<number> {
  const o = new Command(tool.name)
    .option('--minutes <m>', 'how long to run', '30')
    .option('--seed <n>', 'fast-check seed (to replay a failure)')
    .option('--coverage', `report line coverage of ${tool.covers}`)
    .option('--dir <dir>', 'where to write the fuzzed files (tmpfs is fastest)', fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir())
    .parse(argv)
    .opts<{ minutes: string; seed?: string; coverage?: boolean; dir: string }>();
  const cov = o.coverage ? new Coverage() : null;
  await cov?.start();
  const dir = fs.mkdtempSync(path.join(o.dir, `rw-${tool.name}-`));
  try {
    const seeds = await tool.makeSeeds(path.join(dir, 'seeds'));
    const t0 = Date.now();
    let last = 0;
    const stats = await tool.fuzz({
      dir,
      seeds,
      timeLimitMs: Number(o.minutes) * 60_000,
      ...(o.seed !== undefined ? { seed: Number(o.seed) } : {}),
      onProgress: (s) => {
        if (Date.now() - last < 10_000) return;
        last = Date.now();
        const secs = (Date.now() - t0) / 1000;
        const accepted = s.accepted !== undefined ? `, ${s.accepted} accepted` : '';
        console.log(`${secs.toFixed(0)} s: ${s.executions} executions (${(s.executions / secs).toFixed(0)}/s)${accepted}`);
      },
    });
    console.log(JSON.stringify({ ...stats, seconds: Math.round((Date.now() - t0) / 1000) }, null, 2));
    if (cov) {
      for (const f of await cov.take(tool.coverageFiles)) {
        console.log(`coverage ${path.relative(process.cwd(), f.file)}: ${f.covered}/${f.lines} lines (${f.percent.toFixed(1)}%)`);
      }
    }
    return 0;
  } finally {
    await cov?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs a tool's main and exits with its code (1 with the message on an error). */
export function exitWith(main: Promise<number>): void {
  main.then(
    (code) => process.exit(code),
    (err) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
