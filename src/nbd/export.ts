/**
 * The export interface of nbd-server-ts.
 *
 * The server knows nothing about what stands behind an export. Anything that
 * implements `NbdExport` can be served, in the way nbdkit serves plugins:
 * a raw file, memory, or a journaling filter stacked on either.
 *
 * Conventions:
 * - Offsets and lengths are plain numbers (exports up to 2^53 bytes).
 *   The server validates every request against `size` and the block-size
 *   constraints before calling the export, so implementations may assume
 *   0 <= offset, offset + length <= size, and length > 0.
 * - Failures are reported by throwing (or rejecting with) an Error whose
 *   `code` is a POSIX errno name ("EIO", "ENOSPC", ...) or an `NbdError`.
 *   The server maps them onto NBD error values; it never crashes on them.
 * - Every method may be called concurrently with any other, on the same
 *   connection or across connections. Ordering between overlapping
 *   requests in flight is the client's business (NBD semantics), but an
 *   export that needs more (a journal does) serialises internally.
 */
import type { ClientCertificate } from '../tls';

/** Extent flags of the `base:allocation` metadata context. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
/** Extent flag of qemu's `qemu:dirty-bitmap:NAME` contexts: the extent is dirty (changed). */
export const STATE_DIRTY = 1;

export interface Extent {
  /** Length in bytes, > 0. */
  length: number;
  /** Bitwise OR of STATE_HOLE and STATE_ZERO. */
  flags: number;
}

export interface BlockSizeConstraints {
  /** Power of two, 1..65536. */
  minimum: number;
  /** Power of two, >= max(minimum, 512). */
  preferred: number;
  /** Largest READ/WRITE payload accepted, >= preferred. */
  maximum: number;
}

export interface WriteFlags {
  /** NBD_CMD_FLAG_FUA: the data must be durable before the call resolves. */
  fua: boolean;
}

export interface ZeroFlags extends WriteFlags {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  noHole: boolean;
  /**
   * NBD_CMD_FLAG_FAST_ZERO: fail quickly with ENOTSUP unless zeroing is
   * cheaper than writing zeroes would be.
   */
  fastZero: boolean;
}

export interface ReadChunk {
  offset: number;
  length: number;
  /** Present for data; absent for a range that reads as zeroes. */
  data?: Buffer;
}

/** What the export supports; drives the transmission flags. */
export interface ExportCapabilities {
  flush: boolean;
  fua: boolean;
  trim: boolean;
  zero: boolean;
  fastZero: boolean;
  cache: boolean;
  blockStatus: boolean;
  /**
   * True only if FLUSH/FUA on one connection makes writes from every
   * connection durable and visible, i.e. the export keeps no
   * per-connection cache. Advertised as NBD_FLAG_CAN_MULTI_CONN.
   */
  multiConn: boolean;
}

/** An export as opened for one connection. */
export interface NbdExport {
  /** Size in bytes. Fixed for the life of the connection. */
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: ExportCapabilities;
  /** Constraints to advertise; the server's defaults apply when absent. */
  readonly blockSize?: BlockSizeConstraints;

  /**
   * Read `length` bytes at `offset`. The result must be exactly `length`
   * long. When `into` is given (exactly `length` bytes, lent by the server
   * from its buffer pool), an export should fill it and return it; it may
   * ignore it and return a buffer of its own.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /**
   * Optional sparse read: chunks covering [offset, offset+length) in
   * ascending order, with holes marked by a missing `data`. The server uses
   * it for large structured reads to send NBD_REPLY_TYPE_OFFSET_HOLE.
   * `into` is as for read(): data chunks may be views of it.
   */
  readSparse?(offset: number, length: number, into?: Buffer): Promise<ReadChunk[]>;
  /**
   * Write `data` at `offset`. `data` is lent by the server: it is valid
   * until the returned promise settles and is reused afterwards, so an
   * export that needs the bytes later must copy them.
   */
  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, flags: WriteFlags): Promise<void>;
  zero(offset: number, length: number, flags: ZeroFlags): Promise<void>;
  cache(offset: number, length: number): Promise<void>;
  /**
   * `base:allocation` extents starting exactly at `offset`. They must be
   * consecutive and cover at least one byte; they may stop short of
   * `offset + length` and the last may run past it.
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /**
   * Optional metadata contexts besides `base:allocation` (which the server
   * always offers, from blockStatus()). See MetaContextSource.
   */
  readonly metaContexts?: MetaContextSource;
  /** Called once when the connection that opened this export ends. */
  close?(): Promise<void> | void;
}

/**
 * Extra metadata contexts of an export (NBD "Metadata querying"), e.g.
 * qemu's `qemu:dirty-bitmap:NAME`. Names are full context names,
 * "namespace:leaf". The server owns the protocol: for NBD_OPT_LIST_META_CONTEXT
 * a query ending in ':' ("qemu:", "qemu:dirty-bitmap:") is a prefix
 * wildcard over list(), any other query is looked up with open(); for
 * NBD_OPT_SET_META_CONTEXT only exact names select (open() non-null).
 */
export interface MetaContextSource {
  /** Names worth listing (a context may be selectable without being listed). */
  list(): string[] | Promise<string[]>;
  /** The context of that exact name, or null if the export has none. */
  open(name: string): MetaContext | null | Promise<MetaContext | null>;
}

export interface MetaContext {
  readonly name: string;
  /**
   * Extents of this context starting exactly at `offset`, with flags as the
   * context defines them; same rules as NbdExport.blockStatus().
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
}

/** Credentials of the process at the other end of a Unix socket (SO_PEERCRED). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/** A client certificate that was verified against the server's CA (defined by the TLS library). */
export type { ClientCertificate } from '../tls';

/**
 * Who is asking: the identity providers use for access control and logging.
 * The server fills in what the transport tells it; it never decides access
 * itself (see ExportProvider.authorize).
 */
export interface ClientInfo {
  /** "tcp" | "unix" | "stdio" | a caller's label for serveStream(). Stays the same after STARTTLS. */
  transport: string;
  remoteAddress?: string;
  remotePort?: number;
  /** Connection id, unique within the server. */
  id: number;
  /** True once STARTTLS has completed. */
  tls: boolean;
  /** Subject of a verified client certificate as "CN=alice,O=Acme", if any. */
  certSubject?: string;
  /** The verified client certificate, if the server asked for one and it verified. */
  cert?: ClientCertificate;
  /** Unix socket (and stdio over a socketpair): the peer process, when the server could learn it. */
  peer?: PeerCredentials;
}

export interface ExportListing {
  name: string;
  description?: string;
}

/**
 * A provider maps export names to exports, the way an nbdkit instance maps
 * names to plugin handles. `open` is called once per connection that picks
 * the export (and for NBD_OPT_INFO), so a provider may hand out per-client
 * handles, apply ACLs or refuse.
 */
export interface ExportProvider {
  /** Exports to list for NBD_OPT_LIST (may depend on the client). */
  list(client: ClientInfo): ExportListing[] | Promise<ExportListing[]>;
  /**
   * Resolve a name ("" is the default export) to an export, or null if it
   * does not exist or this client may not see it.
   */
  open(name: string, client: ClientInfo): Promise<OpenedExport | null>;
  /**
   * Optional access control: may this client see and open export `name`
   * (as the client spelled it; "" is the default export)? The server asks
   * before NBD_OPT_INFO, NBD_OPT_GO, NBD_OPT_EXPORT_NAME and meta-context
   * options (a denied export gets NBD_REP_ERR_POLICY, or the connection is
   * closed for EXPORT_NAME) and filters NBD_OPT_LIST with it. Absent: every
   * export is open to every client.
   */
  authorize?(name: string, client: ClientInfo): boolean | Promise<boolean>;
}

export interface OpenedExport {
  /** Canonical name, sent as NBD_INFO_NAME. */
  name: string;
  description?: string;
  export: NbdExport;
}

/** An error carrying an explicit NBD error value. */
export class NbdError extends Error {
  constructor(
    readonly nbdErrno: number,
    message: string,
  ) {
    super(message);
    this.name = 'NbdError';
  }
}
