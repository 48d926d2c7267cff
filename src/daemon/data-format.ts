/**
 * The data directory's format marker, DATA_DIR/format.json:
 *
 *   {"magic": "rewind-data-dir", "format": 2, "written": ISO time, "upgradedFrom"?: 1}
 *
 * Versions of the directory as a whole:
 *   1  the layout before versions existed (no format.json; up to 161dee2).
 *      Its stores and files are read as they are: each store records its
 *      own version the first time this build opens it (util/format-version.ts).
 *   2  every LMDB environment, binary format and JSON state file carries
 *      its version; format.json exists.
 *
 * checkDataDir() runs before anything else opens the directory: a marker
 * from a newer Rewind (or a malformed one) is refused with a message
 * naming it, so nothing is misread. markDataDir() writes the marker
 * (tmp + fsync + rename + dir fsync) once every store has opened: a crash
 * before that leaves a version 1 directory, whose stores are stamped
 * again, idempotently, at the next start.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../util/atomic-file';
import { FormatError, tooNew } from '../util/format-version';

export const DATA_DIR_FORMAT = 2;
export const DATA_DIR_MAGIC = 'rewind-data-dir';
export const FORMAT_FILE = 'format.json';

/** What a data directory holds when it was written before format.json existed. */
const LEGACY_ENTRIES = ['catalog', 'groups', 'timetravel', 'volumes'];

export interface DataDirFormat {
  /** 0: a new (empty) directory; 1: written before versions; 2: current. */
  found: number;
  file: string;
}

/** Reads DATA_DIR/format.json; refuses a newer or malformed one (FormatError). */
export function checkDataDir(dataDir: string): DataDirFormat {
  const file = path.join(dataDir, FORMAT_FILE);
  let raw: string;
  try {
    raw = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const legacy = LEGACY_ENTRIES.some((e) => fs.existsSync(path.join(dataDir, e)));
    return { found: legacy ? 1 : 0, file };
  }
  let m: { magic?: unknown; format?: unknown };
  try {
    m = JSON.parse(raw) as typeof m;
  } catch (err) {
    throw new FormatError(`${file}: not a Rewind format marker (${(err as Error).message}); is ${dataDir} a Rewind data directory?`);
  }
  if (m === null || typeof m !== 'object' || m.magic !== DATA_DIR_MAGIC)
    throw new FormatError(
      `${file}: not a Rewind format marker (magic ${JSON.stringify(m?.magic)}); is ${dataDir} a Rewind data directory?`,
    );
  if (typeof m.format !== 'number' || !Number.isInteger(m.format) || m.format < 1)
    throw new FormatError(`${file}: malformed format version ${JSON.stringify(m.format)}`);
  if (m.format > DATA_DIR_FORMAT) throw tooNew('the data directory', file, m.format, DATA_DIR_FORMAT);
  return { found: m.format, file };
}

/** Records the current version (after every store has opened and recorded its own). */
export async function markDataDir(dataDir: string, was: DataDirFormat): Promise<void> {
  if (was.found === DATA_DIR_FORMAT) return;
  const body: Record<string, unknown> = { magic: DATA_DIR_MAGIC, format: DATA_DIR_FORMAT, written: new Date().toISOString() };
  if (was.found > 0) body.upgradedFrom = was.found;
  await writeFileAtomic(was.file, JSON.stringify(body, null, 2) + '\n');
}
