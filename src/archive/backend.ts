/**
 * Where a pool's objects live: its config, the manifests of its points and
 * its packs. Keys are relative paths with '/' separators ("config",
 * "points/NAME.point", "packs/ab/ID.pack"). The interface is deliberately
 * small so that an S3 backend (the next issue) fits: whole-object atomic
 * writes, ranged reads, listing by prefix, deletes.
 */
export interface BackendObject {
  key: string;
  size: number;
}

export interface PutOptions {
  /** Fail with EEXIST instead of replacing an existing object. */
  exclusive?: boolean;
}

export interface ArchiveBackend {
  /** For messages: "local directory /x", "s3://bucket/prefix". */
  readonly description: string;
  /**
   * Stores an object atomically and durably: once this resolves the object
   * survives a crash; a crash before leaves the old object or none, never a
   * torn one. `{ file }` hands over a local file (it may be moved away).
   * Errors keep their errno code (ENOSPC, EEXIST...).
   */
  put(key: string, body: Buffer | { file: string }, opts?: PutOptions): Promise<void>;
  /**
   * Reads an object, or `length` bytes of it from `offset`. A range past the
   * end returns what exists (a short buffer); a missing object rejects with
   * code ENOENT.
   */
  get(key: string, range?: { offset: number; length: number }): Promise<Buffer>;
  /** Size of an object, or null if there is none. */
  size(key: string): Promise<number | null>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<BackendObject[]>;
  /** Removes an object durably; a missing object is not an error. */
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}
