/**
 * Long fuzz run of the journal container readers used at recovery, for
 * humans (CI runs 30 s of the same harness in test/fuzz-container.test.ts):
 *
 *   node dist/tools/fuzz-container.js [--minutes 30] [--seed N] [--coverage] [--dir /dev/shm]
 */
import { exitWith, runFileFuzzTool } from './lib/file-fuzz-tool';
import { fuzzContainers, makeSeeds } from './lib/fuzz-container';

exitWith(
  runFileFuzzTool(
    {
      name: 'fuzz-container',
      covers: 'src/lfc',
      coverageFiles: ['/src/lfc/reader.js', '/src/lfc/codec.js', '/src/lfc/files.js'],
      makeSeeds,
      fuzz: fuzzContainers,
    },
    process.argv,
  ),
);
