/**
 * Model check of archiving from the journal across retention merges: a
 * synthetic history of two volumes (a consistency group) in a real
 * BackupManager; points are archived at random transaction ends, each from
 * the previous archived point with only the extents the journal reports
 * changed since it (changedSince, as the daemon's archiver does); retention
 * fades the history at a random moment, so later archives find their
 * predecessor inside merged history, or behind dropped history. Every
 * archived point reads byte for byte what the model says the volumes held.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { ArchivePool } from '../src/archive';
import { BackupManager } from '../src/manager/backup-manager';
import { resolvePoint } from '../src/timetravel/point';
import { PointImage } from '../src/timetravel/point-image';
import { changedSince } from '../src/timetravel/archiver';
import { readAll, SMALL } from './helpers/archive-fixtures';
import { tmpDir } from './helpers/manager-fixtures';
import { buildTimeline, DAY, HOUR, modelAt, RGROUP, RVOLS } from './helpers/retention-fixtures';

const AGES = [
  ...[200, 180, 150].map((d) => d * DAY),
  ...[100, 99, 98.5, 70, 69, 68, 45, 44, 31].map((d) => d * DAY + 3 * HOUR),
  ...[25, 25.01, 24, 12, 12.01, 12.02, 8].map((d) => d * DAY + 2 * HOUR),
  ...[150, 149.5, 149.2, 100, 99.9, 60].map((h) => h * HOUR),
  ...[40, 20, 5, 0.2].map((h) => h * HOUR),
];
const POLICY = 'all:48h, hourly:7d, daily:30d, weekly:120d';

const range = (a: number, z: number): number[] => Array.from({ length: Math.max(0, z - a + 1) }, (_, i) => a + i);

test('archives built from the journal block runs read exactly the model, across retention merges and drops', async (t) => {
  t.timeout(600_000);
  let run = 0;
  // How each incremental archive found its predecessor: at a transaction end, inside merged history, behind dropped history.
  const cases = { end: 0, merged: 0, dropped: 0 };
  // Random histories do not always give both kinds of predecessor in one
  // batch of runs: more batches until they have (a few at most).
  for (let batch = 0; batch < 6 && !(cases.merged > 0 && cases.dropped > 0); batch++)
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 1000 }),
        fc.array(fc.integer({ min: 0, max: 99 }), { minLength: 4, maxLength: 8 }),
        fc.integer({ min: 1, max: 3 }),
        async (seed, picks, fadeAfter) => {
          const dir = tmpDir(`arch-journal-${run++}`);
          const now = Date.UTC(2026, 2, 10, 9, 30);
          const tl = await buildTimeline(path.join(dir, 'journal'), AGES, now, seed);
          const m = await BackupManager.open(path.join(dir, 'mgr'), { groupId: RGROUP, volumes: RVOLS });
          const pool = await ArchivePool.open(path.join(dir, 'pool'), { create: SMALL });
          try {
            for (const ref of tl.refs) await m.submit(ref);
            await m.retention.setPolicy(POLICY);
            let pred: { name: string; seq: number } | null = null;
            const archived: Array<{ name: string; seq: number }> = [];
            for (let i = 0; i < picks.length; i++) {
              if (i === fadeAfter) await m.fade({ now });
              // A transaction end that is still a point and not before the predecessor.
              // Before the fade, ends that the fade will take away (inside a merge or a drop) are picked.
              // (Even picks prefer merges, odd ones drops.)
              let fading: Set<number> | null = null;
              if (i < fadeAfter) {
                const steps = (await m.fade({ now, dryRun: true })).steps;
                const kind = steps.filter((st) => st.drop === (picks[i]! % 2 === 1));
                fading = new Set((kind.length ? kind : steps).flatMap((st) => range(st.from, st.to - 1)));
              }
              const ends = m.history
                .transactions()
                .filter((x) => x.records > 0 && x.lastSeq >= (pred?.seq ?? 0) && (!fading || fading.has(x.n)))
                .map((x) => x.lastSeq);
              if (!ends.length) break;
              const seq = ends[picks[i]! % ends.length]!;
              const point = await resolvePoint(m.history, { kind: 'seq', seq, text: `@seq:${seq}` });
              if (pred) {
                const first = m.history.transactions().find((x) => x.records > 0)!;
                if (first.firstSeq > pred.seq + 1) cases.dropped++;
                else if (m.history.transactions().some((x) => x.lastSeq === pred!.seq)) cases.end++;
                else cases.merged++;
              }
              const volumes = [];
              for (const v of RVOLS) {
                const img = await PointImage.open(m.history, v.volumeId, v.size, point);
                const changed = pred ? await changedSince(m.history, v.volumeId, v.size, pred.seq, point) : null;
                volumes.push({
                  volume: v.name,
                  size: v.size,
                  read: (o: number, l: number) => img.read(o, l),
                  ...(changed ? { changed } : {}),
                });
              }
              const name = `p${i}`;
              await pool.archive({ name, group: 'g', seq, predecessor: pred?.name ?? null, volumes });
              pred = { name, seq };
              archived.push(pred);
            }
            for (const a of archived) {
              const want = modelAt(tl, a.seq);
              for (const v of RVOLS) {
                if (!(await readAll(pool, a.name, v.name)).equals(want.get(v.volumeId)!)) {
                  t.fail(`seed ${seed}: ${a.name} (seq ${a.seq}) volume ${v.name} differs from the model`);
                  return false;
                }
              }
            }
            return true;
          } finally {
            await pool.close();
            await m.close();
            fs.rmSync(dir, { recursive: true, force: true });
          }
        },
      ),
      { numRuns: 6 },
    );
  t.log(cases);
  t.true(cases.merged > 0 && cases.dropped > 0, 'some predecessors lay in merged history, some behind dropped history');
});
