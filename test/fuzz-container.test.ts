/**
 * CI-length fuzz run of the journal container readers used at recovery
 * (issue 8): scanContainer, readRecords, verifyContainer and repairActive on
 * mutated real AILFCs and BILFCs (tools/lib/fuzz-container.ts). The long
 * run: `node dist/tools/fuzz-container.js --minutes 30`.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkFlipPrefix, exerciseFile, fuzzContainers, makeSeeds } from '../tools/lib/fuzz-container';

const FUZZ_MS = Number(process.env.REWIND_FUZZ_MS ?? 60_000) / 2;

function fastTemp(): string {
  // tmpfs when there is one: repair fdatasyncs every truncation.
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  return fs.mkdtempSync(path.join(base, 'rw-fuzzc-'));
}

test('every single-byte flip of an active container: repair keeps exactly the records before it', async (t) => {
  const dir = fastTemp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const seeds = await makeSeeds(path.join(dir, 'seeds'));
  const active = seeds.filter((s) => !s.sealed && s.records.length > 0);
  t.true(active.length > 0);
  const s = active[0]!;
  const file = path.join(dir, 'flip.lfc');
  let n = 0;
  for (let pos = 0; pos < s.bytes.length; pos += 7) {
    await checkFlipPrefix(file, s, pos, 0x40);
    n++;
  }
  // Cuts at every record boundary and inside each record.
  for (const r of s.records) {
    for (const cut of [r.start, r.start + 1, r.end - 1]) {
      const b = s.bytes.subarray(0, cut);
      fs.writeFileSync(file, b);
      await exerciseFile(file, b);
      n++;
    }
  }
  t.log(`${n} deterministic cases`);
});

test(`fuzz run (${Math.round(FUZZ_MS / 1000)} s): the recovery readers fail only cleanly and repair is sound`, async (t) => {
  const dir = fastTemp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const seeds = await makeSeeds(path.join(dir, 'seeds'));
  const stats = await fuzzContainers({ dir, seeds, timeLimitMs: FUZZ_MS });
  t.log(`executions ${stats.executions} (single-flip prefix checks ${stats.flipChecks})`);
  t.true(stats.executions > 500);
});
