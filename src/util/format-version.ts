/**
 * On-disk format versions. Every file and store Rewind writes carries a
 * version: binary formats in their header (LFC containers, the state map,
 * diff files), LMDB environments as meta "format", small JSON state files
 * as a "format" field, and the data directory as a whole in format.json
 * (daemon/data-format.ts). A version this build does not know is refused
 * with a message naming the file; a missing one is the layout written
 * before versions existed (version 1), which is read as it is.
 */

/** Code of every FormatError. */
export const FORMAT_ERROR_CODE = 'ERR_REWIND_FORMAT';

export class FormatError extends Error {
  readonly code = FORMAT_ERROR_CODE;
  constructor(message: string) {
    super(message);
    this.name = 'FormatError';
  }
}

/** The refusal of a store or file written by a newer Rewind. */
export function tooNew(what: string, where: string, found: unknown, supported: number): FormatError {
  return new FormatError(
    `${where}: ${what} has format version ${String(found)}, written by a newer Rewind (this one reads versions up to ${supported}); ` +
      'run the newer Rewind, or a data directory backed up before it was used',
  );
}

/**
 * The version a value read from disk claims: undefined (written before
 * versions) is 1; a number above `supported`, or anything that is not a
 * positive integer, throws.
 */
export function checkVersion(what: string, where: string, found: unknown, supported: number): number {
  if (found === undefined || found === null) return 1;
  if (typeof found !== 'number' || !Number.isInteger(found) || found < 1)
    throw new FormatError(`${where}: ${what} has a malformed format version ${JSON.stringify(found)}`);
  if (found > supported) throw tooNew(what, where, found, supported);
  return found;
}

/** Versions of the small JSON state files (the "format" field each carries). */
export const JSON_FORMATS = {
  /** groups/G/link-state.json (intercept): the last commit the manager acknowledged. */
  linkState: 1,
  /** groups/G/journal/super.json: pool-degraded state, the open super transaction, its resync cursor. */
  superState: 1,
  /** groups/G/link-group.json (manager): the group as the intercept described it. */
  linkGroup: 1,
  /** groups/G/spool/tags.json and ailfc-N.lfc.part.json (manager). */
  spool: 1,
  /** groups/G/restore-hold.json (intercept): volumes a remote restore holds offline. */
  restoreHold: 1,
} as const;

/** Reads the "format" field of a parsed JSON state file (see checkVersion). */
export function jsonFormat(obj: unknown, what: string, file: string, supported: number): number {
  const v = obj !== null && typeof obj === 'object' ? (obj as { format?: unknown }).format : undefined;
  return checkVersion(what, file, v, supported);
}

/** The meta database of an LMDB environment, as far as versions need it. */
export interface VersionedMeta {
  get(key: string): unknown;
  putSync(key: string, value: unknown): unknown;
}

/**
 * Checks (and, for a store written before versions or a new one, records)
 * the version of an LMDB environment, kept as meta "format". A store
 * without one has the layout of version 1. When a layout changes, its
 * migration from the older version runs here, in one LMDB transaction,
 * before the new version is recorded (so a crash leaves the old one).
 */
export function stampStore(meta: VersionedMeta, what: string, where: string, current: number): number {
  const found = meta.get('format');
  const v = checkVersion(what, where, found, current);
  if (v !== current) throw new FormatError(`${where}: ${what} has format version ${v}, and no migration to ${current} exists`);
  if (found === undefined) meta.putSync('format', current);
  return v;
}

/** Versions of the LMDB environments. */
export const STORE_FORMATS = {
  /** DATA_DIR/catalog: volumes, groups. */
  catalog: 1,
  /** groups/G/manager/index: transactions, block index, runs, meta (applied, config, retention, verified, scrub). */
  managerIndex: 1,
  /** DATA_DIR/timetravel/index: views, layers, markers, schedules, restore intents. */
  timetravel: 1,
} as const;
