/**
 * NBD wire constants, from the NBD protocol document
 * (shared/reference/nbd-protocol.md). Names follow the document.
 */

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server, 16 bits)
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
// Client flags (32 bits)
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags (16 bits)
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_ROTATIONAL = 1 << 4;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_SEND_DF = 1 << 7;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_RESIZE = 1 << 9;
export const FLAG_SEND_CACHE = 1 << 10;
export const FLAG_SEND_FAST_ZERO = 1 << 11;

// Options
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_PEEK_EXPORT = 4;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;
export const OPT_EXTENDED_HEADERS = 11;

// Option replies
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_FLAG_ERROR = 0x80000000;
export const REP_ERR_UNSUP = REP_FLAG_ERROR + 1;
export const REP_ERR_POLICY = REP_FLAG_ERROR + 2;
export const REP_ERR_INVALID = REP_FLAG_ERROR + 3;
export const REP_ERR_PLATFORM = REP_FLAG_ERROR + 4;
export const REP_ERR_TLS_REQD = REP_FLAG_ERROR + 5;
export const REP_ERR_UNKNOWN = REP_FLAG_ERROR + 6;
export const REP_ERR_SHUTDOWN = REP_FLAG_ERROR + 7;
export const REP_ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR + 8;
export const REP_ERR_TOO_BIG = REP_FLAG_ERROR + 9;

// Info types
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Commands
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

// Command flags
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured replies
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) + 1;
export const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// Errors
export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

/** Map a POSIX errno name to the NBD error value the spec prescribes. */
export function nbdErrnoFromCode(code: string | undefined): number {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return EPERM;
    case 'ENOMEM':
      return ENOMEM;
    case 'EINVAL':
      return EINVAL;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return ENOSPC;
    case 'EOVERFLOW':
      return EOVERFLOW;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return ENOTSUP;
    case 'ESHUTDOWN':
      return ESHUTDOWN;
    default:
      return EIO;
  }
}

export const BASE_ALLOCATION = 'base:allocation';

/** The 28-byte request header (magic, flags, type, cookie, offset, length). */
export function encodeRequest(type: number, flags: number, cookie: bigint, offset: number | bigint, length: number): Buffer {
  const h = Buffer.allocUnsafe(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

/** Default size constraints when an export states none. */
export const DEFAULT_MIN_BLOCK = 1;
export const DEFAULT_PREFERRED_BLOCK = 4096;
export const DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024;
