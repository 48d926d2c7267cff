/**
 * Child process of test/archive-crash.test.ts:
 *   node archive-crash-child.js SPEC
 * SPEC is JSON { dir, mode, gens?, keep? }:
 *   archive  archive generations g<N+1>..g<gens> of the test volume, each
 *            from the previous one with only its changed extents
 *   gc       forget all but the newest `keep` points, then gc
 * REWIND_ARCHIVE_CRASH_AT makes it SIGKILL itself at a step; the parent
 * may also kill it at any moment. Prints one line per committed step.
 */
import { ArchivePool } from '../../src/archive';
import { bufferSource, openPool } from './archive-fixtures';
import { generation, lastGeneration } from './archive-history';

interface Spec {
  dir: string;
  mode: 'archive' | 'gc';
  gens?: number;
  keep?: number;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as Spec;
  const pool: ArchivePool = await openPool(spec.dir);
  try {
    if (spec.mode === 'archive') {
      for (let g = lastGeneration(pool) + 1; g <= (spec.gens ?? 0); g++) {
        const { image, changed } = generation(g);
        const pred = pool.list().some((p) => p.name === `g${g - 1}`) ? `g${g - 1}` : null;
        await pool.archive({
          name: `g${g}`,
          seq: g,
          time: g * 1000,
          predecessor: pred,
          volumes: [bufferSource('vol', image, pred ? changed : undefined)],
        });
        process.stdout.write(`archived g${g}\n`);
      }
    } else {
      const names = pool.list().map((p) => p.name);
      await pool.forget(names.slice(0, Math.max(0, names.length - (spec.keep ?? 2))));
      const r = await pool.gc({ repackBelow: 0.95 });
      process.stdout.write(`gc swept ${r.chunksSwept} deleted ${r.packsDeleted} repacked ${r.packsRepacked}\n`);
    }
  } finally {
    await pool.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
