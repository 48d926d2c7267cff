/**
 * Long fuzz run of the diff file reader (what `rewind apply-diff` trusts),
 * for humans (CI runs a short run of the same harness in test/fuzz-diff.test.ts):
 *
 *   node dist/tools/fuzz-diff.js [--minutes 30] [--seed N] [--coverage] [--dir /dev/shm]
 */
import { exitWith, runFileFuzzTool } from './lib/file-fuzz-tool';
import { fuzzDiffs, makeDiffSeeds } from './lib/fuzz-diff';

exitWith(
  runFileFuzzTool(
    {
      name: 'fuzz-diff',
      covers: 'src/timetravel/diff',
      coverageFiles: ['/src/timetravel/diff.js'],
      makeSeeds: makeDiffSeeds,
      fuzz: fuzzDiffs,
    },
    process.argv,
  ),
);
