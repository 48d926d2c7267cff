/**
 * Errors of the filesystem reader. Images are hostile input, so every
 * failure names where it happened (the partition and filesystem) and which
 * on-disk structure was wrong, e.g.
 *   partition 2 (ext4): inode 1234 extent tree: depth 9 exceeds 5
 * Callers map `code` onto their own statuses (CLI exit, HTTP).
 */

export type FsErrorCode =
  | 'CORRUPT' // a structure on the image contradicts itself or the format
  | 'UNSUPPORTED' // valid, but a format or feature this reader does not read
  | 'LIMIT' // a size or count beyond the reader's caps (see limits.ts)
  | 'NOT_FOUND' // no such path or inode
  | 'NOT_DIR' // a path component or inode is not a directory
  | 'INVALID' // a bad argument from the caller
  | 'IO'; // the image itself failed to read

export class FsError extends Error {
  override readonly name = 'FsError';
  constructor(
    readonly code: FsErrorCode,
    /** "partition 2 (ext4)", "whole disk", "GPT"...; empty when unknown. */
    readonly where: string,
    /** The structure at fault: "superblock", "inode 12 extent tree"... */
    readonly structure: string,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super([where, structure, detail].filter((s) => s !== '').join(': '), options);
  }

  /** The same error placed in a partition (errors raised below the fs object). */
  within(where: string): FsError {
    if (this.where !== '') return this;
    const e = new FsError(this.code, where, this.structure, this.detail, { cause: this.cause });
    e.stack = this.stack;
    return e;
  }
}

export function corrupt(structure: string, detail: string): FsError {
  return new FsError('CORRUPT', '', structure, detail);
}

export function unsupported(structure: string, detail: string): FsError {
  return new FsError('UNSUPPORTED', '', structure, detail);
}

export function limit(structure: string, detail: string): FsError {
  return new FsError('LIMIT', '', structure, detail);
}

/** Any thrown value as an FsError located at `where` (I/O errors keep their cause). */
export function asFsError(err: unknown, where: string, structure = 'image'): FsError {
  if (err instanceof FsError) return err.within(where);
  const msg = err instanceof Error ? err.message : String(err);
  return new FsError('IO', where, structure, msg, { cause: err });
}
