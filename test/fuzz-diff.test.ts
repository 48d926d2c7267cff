/**
 * CI-length fuzz run of the diff file reader (issue 17): mutated and
 * re-signed real diff files through readDiffFile (tools/lib/fuzz-diff.ts).
 * The long run: `node dist/tools/fuzz-diff.js --minutes 30`.
 *
 * Inputs the fuzzer once got accepted are replayed first as regressions.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { exerciseDiff, fuzzDiffs, makeDiffSeeds, resign, type DiffSeed } from '../tools/lib/fuzz-diff';

const FUZZ_MS = Number(process.env.REWIND_FUZZ_MS ?? 60_000) / 2;
const ALL = { header: true, records: true, footer: true, counts: false };

function fastTemp(): string {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  return fs.mkdtempSync(path.join(base, 'rw-fuzzd-'));
}

/** Seed index and an edit of its bytes (then re-signed), named by what it once broke. */
const REGRESSIONS: Array<[string, number, (b: Buffer) => void]> = [
  // Accepted: the footer's data byte total was not checked against the records.
  ['footer data bytes 2^64-1 on an empty diff', 0, (b) => b.writeBigUInt64LE(2n ** 64n - 1n, b.length - 32 + 16)],
  ['footer data bytes one short', 2, (b) => b.writeBigUInt64LE(b.readBigUInt64LE(b.length - 32 + 16) - 1n, b.length - 32 + 16)],
  // Accepted: offsets past 2^53 lost precision, so overlapping records passed the order check.
  [
    'volume size 2^64-1, records at 2^60 and 2^60+4096',
    2,
    (b) => {
      b.writeBigUInt64LE(2n ** 64n - 1n, 16);
      b.writeBigUInt64LE(2n ** 60n, 64);
      b.writeBigUInt64LE(2n ** 60n + 4096n, 64 + 16 + b.readUInt32LE(64 + 8));
    },
  ],
  ['volume size 2^53+1', 1, (b) => b.writeBigUInt64LE(2n ** 53n + 1n, 16)],
  ['record length 0', 1, (b) => b.writeUInt32LE(0, 64 + 8)],
  ['record length 2^32-1', 1, (b) => b.writeUInt32LE(0xffffffff, 64 + 8)],
  ['record past the volume end', 1, (b) => b.writeBigUInt64LE(b.readBigUInt64LE(16), 64)],
];

test('diff file regressions: refused cleanly, and the seeds read back exactly', async (t) => {
  const dir = fastTemp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const seeds: DiffSeed[] = await makeDiffSeeds(path.join(dir, 'seeds'));
  const file = path.join(dir, 'r.diff');
  for (const s of seeds) {
    fs.writeFileSync(file, s.bytes);
    t.is(await exerciseDiff(file, s.bytes), 'accepted', 'an unmutated diff file is read');
  }
  for (const [name, i, edit] of REGRESSIONS) {
    const b = Buffer.from(seeds[i]!.bytes);
    edit(b);
    resign(b, ALL);
    fs.writeFileSync(file, b);
    t.is(await exerciseDiff(file, b), 'refused', name);
  }
});

test(`fuzz run (${Math.round(FUZZ_MS / 1000)} s): the diff reader fails only cleanly and accepts only sound files`, async (t) => {
  const dir = fastTemp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const seeds = await makeDiffSeeds(path.join(dir, 'seeds'));
  const stats = await fuzzDiffs({ dir, seeds, timeLimitMs: FUZZ_MS });
  t.log(`executions ${stats.executions} (accepted ${stats.accepted})`);
  t.true(stats.executions > 500);
  t.true(stats.accepted > 0, 're-signing lets some mutated files through to the record checks');
});
