/**
 * Log file containers (LFCs): the on-disk format of AILFCs (after-image
 * logs, the journal of writes) and BILFCs (before-image logs).
 *
 * Both kinds share one framing. All integers are little-endian. Checksums
 * are CRC-32 with the zlib polynomial (src/util/crc32.ts).
 *
 * This floor (src/lfc) is the container format's only home: codec.ts
 * encodes and decodes the three structures below, writer.ts appends,
 * reader.ts scans, reads, repairs and verifies. Nothing else decodes a
 * record header by hand.
 *
 * File header (64 bytes, at offset 0):
 *   0  u8[8]  magic "RWLFC\x00\x00\x01"
 *   8  u8     kind: 1 = AILFC, 2 = BILFC
 *   9  u8     format version (1)
 *  10  u16    reserved (0)
 *  12  u32    group id (consistency group; a lone volume is a group of one)
 *  16  u64    container sequence id n (AILFC_n / BILFC_n), assigned at creation
 *  24  f64    creation time, ms since the epoch
 *  32  u32    region/block size the writer used (BILFC: block size)
 *  36  u8[24] reserved (0)
 *  60  u32    CRC-32 of bytes 0..59
 *
 * Records follow the header back to back. Record header (48 bytes):
 *   0  u32    magic 0x52524543 ("RREC" read as big-endian bytes 'R','R','E','C')
 *   4  u8     kind: 1 write, 2 trim, 3 zero, 4 error, 5 resync, 16 before-block
 *   5  u8     flags (bit 0: FUA; bit 1: before-block is all zero;
 *             bit 2: written by a production restore)
 *   6  u16    volume id (within the group)
 *   8  u64    seq: strictly increasing within the group (BILFC: 0)
 *  16  f64    wall-clock time, ms since the epoch (BILFC: 0)
 *  24  u64    offset in the volume, bytes
 *  32  u32    length of the affected range, bytes
 *  36  u32    payload length (write, resync, before-block: = length;
 *             trim, zero: 0; error: length of a UTF-8 message)
 *  40  u32    CRC-32 of the payload
 *  44  u32    CRC-32 of bytes 0..43 of this header
 * then `payload length` bytes of payload.
 *
 * A record is valid only if its magic, header CRC and payload CRC all
 * match and it lies wholly inside the file. A torn tail is the first
 * invalid or truncated record: recovery truncates the file there.
 *
 * Sealing appends a 64-byte footer:
 *   0  u32    magic 0x5253454c ("RSEL")
 *   4  u32    reserved
 *   8  u64    record count
 *  16  u64    first seq (0 if no records)
 *  24  u64    last seq
 *  32  f64    first time
 *  40  f64    last time
 *  48  u64    total payload bytes
 *  56  u32    CRC-32 of every record byte (headers and payloads, in file
 *             order, from offset 64 up to the footer)
 *  60  u32    CRC-32 of bytes 0..59 of the footer
 * A sealed container ends with exactly one footer; nothing may follow it.
 *
 * File names (in the group's journal directory):
 *   active-<n>.lfc   the AILFC being appended to (at most one per group)
 *   ailfc-<n>.lfc    sealed AILFC_n (n zero-padded to 16 digits)
 *   bilfc-<n>.lfc    BILFC_n, written by the backup manager (as
 *                    bilfc-<n>.lfc.tmp until it is sealed)
 *   active-<n>.lfc.init  an active container being created: its header is
 *                    written and fdatasync'ed under this name, then it is
 *                    linked to active-<n>.lfc; a leftover holds no records
 * Sealing = append footer, fdatasync, rename active-<n> to ailfc-<n>
 * (bilfc-<n>.lfc.tmp to bilfc-<n>.lfc), fsync the directory. A crash in
 * between leaves either an active file (recovery seals it) or a sealed one
 * (nothing to do).
 */

export const LFC_MAGIC = Buffer.from('RWLFC\x00\x00\x01', 'latin1');
export const LFC_VERSION = 1;
export const FILE_HEADER_SIZE = 64;
export const RECORD_HEADER_SIZE = 48;
export const FOOTER_SIZE = 64;
export const RECORD_MAGIC = 0x52524543;
export const FOOTER_MAGIC = 0x5253454c;

export const enum ContainerKind {
  AILFC = 1,
  BILFC = 2,
}

export const enum RecordKind {
  Write = 1,
  Trim = 2,
  Zero = 3,
  /** The production write failed; payload is the error message. */
  Error = 4,
  /** Production content re-captured after a crash (state-map resync). */
  Resync = 5,
  /** BILFC: a block of the replicated image before AILFC_n was applied. */
  BeforeBlock = 16,
}

export const RECORD_FLAG_FUA = 1;
/** BILFC before-block: the payload is all zero (the block read as a hole). */
export const RECORD_FLAG_ZERO = 2;
/** AILFC record written by a production restore (rewind restore). */
export const RECORD_FLAG_RESTORE = 4;

export interface FileHeader {
  kind: ContainerKind;
  groupId: number;
  containerId: number;
  created: number;
  blockSize: number;
}

export interface RecordHeader {
  kind: RecordKind;
  flags: number;
  volumeId: number;
  seq: number;
  time: number;
  offset: number;
  length: number;
  payloadLength: number;
  payloadCrc: number;
}

export interface Footer {
  recordCount: number;
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  /** CRC-32 over all record bytes between the file header and the footer. */
  bodyCrc: number;
  payloadBytes: number;
}

export function containerFileName(kind: 'active' | 'ailfc' | 'bilfc', n: number): string {
  return `${kind}-${String(n).padStart(16, '0')}.lfc`;
}

export interface RecordInput {
  kind: RecordKind;
  flags?: number;
  volumeId: number;
  seq: number;
  time: number;
  offset: number;
  length: number;
}

export interface StoredRecord extends RecordHeader {
  /** File offset of the record header. */
  position: number;
  /** The payload, or null when the record has none or payloads were not requested. */
  payload: Buffer | null;
}

/** Running statistics of a container: exactly what its footer records at seal. */
export type ContainerStats = Footer;

export interface ScanResult extends ContainerStats {
  header: FileHeader;
  sealed: boolean;
  footer?: Footer;
  /** Offset just past the last valid record (or past the footer if sealed). */
  validEnd: number;
  /** Set when the file has bytes after validEnd that are not a valid record. */
  tornAt?: number;
  problem?: string;
  /** File size when scanned. */
  fileSize: number;
}

export interface RepairResult extends ScanResult {
  /** Bytes cut off the end of the file (0 if nothing was torn). */
  truncatedBytes: number;
}

/** Corrupt or torn content. `offset` is the file offset of the bad structure. */
export class LfcFormatError extends Error {
  readonly code = 'ERR_LFC_CORRUPT';
  constructor(
    readonly path: string,
    readonly offset: number,
    readonly problem: string,
  ) {
    super(`${path}: ${problem} at offset ${offset}`);
    this.name = 'LfcFormatError';
  }
}
