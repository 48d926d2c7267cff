/**
 * Errors of the archive pool. Every failure a caller can act on is an
 * ArchiveError with an errno-style `code`, so the NBD layer (which maps
 * `code` onto NBD errors) and the HTTP layer can use it as is:
 *
 *   EIO           a chunk is corrupt, quarantined or missing: `chunk` and
 *                 `pack` name it (reads of other points still work)
 *   ENOSPC        the backend or the staging directory is full; nothing was
 *                 committed and the next gc reclaims what was written
 *   ENOENT        no such point or volume
 *   EEXIST        a point of that name exists already
 *   EINVAL        bad arguments (sizes, names, leaf sizes, policies)
 *   EBUSY         the pool is open in another process, or a gc is running
 *   EKEYREJECTED  the key file does not belong to this pool, or a key is
 *                 missing for an encrypted pool
 *   EFORMAT       a file is not what it claims (ArchiveFormatError): the
 *                 only error the pack and manifest readers raise on hostile
 *                 input
 */
export type ArchiveErrorCode = 'EIO' | 'ENOSPC' | 'ENOENT' | 'EEXIST' | 'EINVAL' | 'EBUSY' | 'EKEYREJECTED' | 'EFORMAT' | 'ECLOSED';

export interface ArchiveErrorDetail {
  /** Hex handle of the chunk concerned. */
  chunk?: string;
  /** Backend key of the pack concerned. */
  pack?: string;
  cause?: unknown;
}

export class ArchiveError extends Error {
  readonly chunk: string | undefined;
  readonly pack: string | undefined;

  constructor(
    readonly code: ArchiveErrorCode,
    message: string,
    detail: ArchiveErrorDetail = {},
  ) {
    super(message, detail.cause === undefined ? undefined : { cause: detail.cause });
    this.name = 'ArchiveError';
    this.chunk = detail.chunk;
    this.pack = detail.pack;
  }
}

/** A malformed file (pack, pack index, manifest, node, bloom filter). */
export class ArchiveFormatError extends ArchiveError {
  constructor(message: string, detail: ArchiveErrorDetail = {}) {
    super('EFORMAT', message, detail);
    this.name = 'ArchiveFormatError';
  }
}

/** The errno name of a Node error, if any ("ENOSPC", "ENOENT", ...). */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * Wraps a failure while writing: ENOSPC/EDQUOT become ArchiveError ENOSPC
 * with a message saying what to do; ArchiveErrors pass through.
 */
export function writeFailure(err: unknown, what: string): Error {
  if (err instanceof ArchiveError) return err;
  const code = errnoOf(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ArchiveError(
      'ENOSPC',
      `${what}: no space left (${code}); nothing was committed, and the next archive gc reclaims the space already written`,
      { cause: err },
    );
  }
  return err instanceof Error ? err : new Error(String(err));
}
