/**
 * The link between an intercept (`rewind serve --role intercept`) and a
 * remote backup manager (`rewind serve --role manager`): framing, message
 * types and the shared-secret handshake. See docs/ARCHITECTURE.md, "The
 * link", for the whole protocol.
 *
 * Frame (all integers big-endian):
 *   0  u32  length L of what follows (type + body), 1 <= L <= MAX_FRAME
 *   4  u8   message type (MsgType)
 *   5  body: UTF-8 JSON for every type but DATA;
 *      DATA: u64 containerId, u64 offset, then the container's bytes
 *
 * Handshake (one TCP connection per consistency group):
 *   manager   -> HELLO   {magic, version, nonce: 32 random bytes, hex}
 *   intercept -> AUTH    {nonce, mac: HMAC-SHA256(secret, "rewind-link client\n" + serverNonce + clientNonce)}
 *   manager   -> AUTH_OK {mac: HMAC-SHA256(secret, "rewind-link server\n" + clientNonce + serverNonce)}
 *   intercept -> GROUP   {group, groupId, blockSize, regionSize, volumes}
 *   manager   -> GROUP_OK {committedContainer, committedSeq, committedTime}
 * Either side drops the connection (after an ERROR frame) on a bad magic,
 * version or MAC, an oversized or unknown frame, or a handshake slower than
 * HANDSHAKE_TIMEOUT_MS. The secret never crosses the wire; both sides prove
 * they hold it, with fresh nonces, so a recorded session cannot be replayed.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const LINK_MAGIC = 'rewind-link';
export const LINK_VERSION = 1;
/** Largest frame (type + body): a DATA frame carries at most DATA_CHUNK bytes. */
export const MAX_FRAME = 8 * 1024 * 1024 + 64;
export const DATA_CHUNK = 4 * 1024 * 1024;
/** JSON frames are small; anything bigger is refused as garbage (except VERIFY_RESULT). */
export const MAX_JSON_FRAME = 4 * 1024 * 1024;
export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const PING_INTERVAL_MS = 1000;
/** No frame from the peer for this long: the link is dead (a cut cable sends no RST). */
export const DEAD_AFTER_MS = 5000;
export const DEFAULT_LINK_PORT = 10810;

export const enum MsgType {
  HELLO = 1,
  AUTH = 2,
  AUTH_OK = 3,
  ERROR = 4,
  GROUP = 5,
  GROUP_OK = 6,
  PUT = 7,
  PUT_READY = 8,
  DATA = 9,
  END = 10,
  COMMIT = 11,
  NACK = 12,
  PING = 13,
  PONG = 14,
  STATUS = 15,
  VERIFY_REQ = 16,
  VERIFY_READY = 17,
  VERIFY_RESULT = 18,
  CATCHUP_REQ = 19,
  CATCHUP_DONE = 20,
  REPLICA_HASHES_REQ = 21,
  REPLICA_HASHES = 22,
  /** m->i: where does the journal stand now (and, optionally, which uncommitted write a seq or time names)? */
  POSITION_REQ = 23,
  /** i->m: the answer, as of when the request arrived. */
  POSITION = 24,
  /** m->i: a step of a production restore run by the manager: begin, hashes, flush, end (remote-restore.ts). */
  RESTORE_REQ = 25,
  /** m->i: a restore write (or zeroing) to journal: u32 header length, JSON header, the bytes. */
  RESTORE_DATA = 26,
  /** i->m: the answer to a RESTORE_REQ or RESTORE_DATA, by id. */
  RESTORE_ANSWER = 27,
}

const TYPE_MAX = 27;

export class LinkProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LinkProtocolError';
  }
}

export function encodeJson(type: MsgType, body: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(body), 'utf8');
  const b = Buffer.allocUnsafe(5 + json.length);
  b.writeUInt32BE(1 + json.length, 0);
  b[4] = type;
  json.copy(b, 5);
  return b;
}

/** Header of a DATA frame; the payload follows it as a separate buffer (no copy). */
export function encodeDataHeader(containerId: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(21);
  b.writeUInt32BE(1 + 16 + length, 0);
  b[4] = MsgType.DATA;
  b.writeBigUInt64BE(BigInt(containerId), 5);
  b.writeBigUInt64BE(BigInt(offset), 13);
  return b;
}

export interface Frame {
  type: MsgType;
  body: Buffer;
}

/**
 * Splits a byte stream into frames. Throws LinkProtocolError on a frame
 * that cannot be valid (length 0, over MAX_FRAME, unknown type): the
 * connection must then be dropped.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;

  push(data: Buffer): Frame[] {
    this.chunks.push(data);
    this.have += data.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.have < 5) break;
      const head = this.peek(5);
      const len = head.readUInt32BE(0);
      const type = head[4]!;
      if (len < 1 || len > MAX_FRAME) throw new LinkProtocolError(`bad frame length ${len}`);
      if (type < 1 || type > TYPE_MAX) throw new LinkProtocolError(`unknown frame type ${type}`);
      if (type !== MsgType.DATA && type !== MsgType.VERIFY_RESULT && len > MAX_JSON_FRAME)
        throw new LinkProtocolError(`oversized frame (${len} bytes, type ${type})`);
      if (this.have < 4 + len) break;
      const all = this.take(4 + len);
      out.push({ type: type as MsgType, body: all.subarray(5) });
    }
    return out;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!;
  }

  private take(n: number): Buffer {
    let first = this.chunks[0]!;
    if (first.length < n) {
      first = Buffer.concat(this.chunks);
      this.chunks = [first];
    }
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.have -= n;
    return out;
  }
}

export function parseJson<T>(f: Frame): T {
  try {
    const v = JSON.parse(f.body.toString('utf8')) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as T;
  } catch (err) {
    throw new LinkProtocolError(`malformed JSON in frame type ${f.type}: ${(err as Error).message}`);
  }
}

export function parseData(f: Frame): { containerId: number; offset: number; data: Buffer } {
  if (f.body.length < 16) throw new LinkProtocolError('short DATA frame');
  return { containerId: Number(f.body.readBigUInt64BE(0)), offset: Number(f.body.readBigUInt64BE(8)), data: f.body.subarray(16) };
}

export function nonce(): string {
  return randomBytes(32).toString('hex');
}

export function clientMac(secret: Buffer, serverNonce: string, clientNonce: string): string {
  return createHmac('sha256', secret).update(`rewind-link client\n${serverNonce}${clientNonce}`).digest('hex');
}

export function serverMac(secret: Buffer, clientNonce: string, serverNonce: string): string {
  return createHmac('sha256', secret).update(`rewind-link server\n${clientNonce}${serverNonce}`).digest('hex');
}

export function macEquals(a: unknown, b: string): boolean {
  if (typeof a !== 'string' || a.length !== b.length) return false;
  return timingSafeEqual(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

export function isNonce(v: unknown): v is string {
  return typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
}

// --- message bodies -------------------------------------------------------------

export interface HelloMsg {
  magic: string;
  version: number;
  nonce: string;
}

export interface GroupMsg {
  group: string;
  groupId: number;
  blockSize: number;
  regionSize: number;
  volumes: Array<{ volumeId: number; name: string; size: number }>;
}

export interface GroupOkMsg {
  committedContainer: number;
  committedSeq: number;
  committedTime: number;
}

export interface SuperTag {
  /** First container of the super transaction (its id). */
  id: number;
  /** First seq whose write the super transaction stands for (the first one not journaled while degraded). */
  fromSeq: number;
  /** When that write came (ms, intercept clock): where the degraded stretch begins in time. */
  fromTime?: number;
  /** This container ends the super transaction. */
  last: boolean;
}

export interface PutMsg {
  containerId: number;
  size: number;
  footer: import('../lfc').Footer;
  superTransaction?: SuperTag;
}

export interface PutReadyMsg {
  containerId: number;
  /** Send from this offset (bytes already spooled); -1: nothing to send (have it all, or committed). */
  offset: number;
}

export interface NackMsg {
  containerId: number;
  message: string;
  /** true: a transfer problem, send it again; false: the manager refuses the container itself. */
  resend: boolean;
}

/** What the intercept reports about itself, every second. */
export interface InterceptStatusMsg {
  time: number;
  state: 'normal' | 'degraded' | 'resync';
  /** fromSeq/fromTime: the first write not journaled (the degraded stretch's start). */
  degraded: { since: string; reason: string; fromSeq?: number; fromTime?: number } | null;
  resync: { id: number; fromSeq: number; fromTime?: number; regionsLeft: number } | null;
  lastAppendedSeq: number;
  lastAppendedTime: number;
  queued: number;
  poolBytes: number;
  poolLimit: number;
  bytesSent: number;
  volumes: Array<{ volumeId: number; name: string; dirtyRegions: number }>;
  /** Volumes a restore run by the manager holds offline (remote-restore.ts). */
  restoreHeld?: number[];
}

/** i→m: digests of the replica's blocks in [offset, offset+length) (crash recovery on the intercept). */
export interface ReplicaHashesReq {
  id: string;
  volumeId: number;
  offset: number;
  length: number;
  blockSize: number;
}

/** m→i: `hashes` = base64 of REPLICA_HASH_BYTES per block, or `error`. */
export interface ReplicaHashesMsg {
  id: string;
  hashes?: string;
  error?: string;
}

/** Largest range one REPLICA_HASHES_REQ may ask for (its answer stays far below the JSON frame limit). */
export const REPLICA_HASH_MAX_RANGE = 64 * 1024 * 1024;
/** Bytes of SHA-256 kept per block: 128 bits is ample to tell a changed block. */
export const REPLICA_HASH_BYTES = 16;

/** Digests per block of `data` (the last block may be short), as REPLICA_HASHES carries them. */
export function blockDigests(data: Buffer, blockSize: number): Buffer {
  const n = Math.ceil(data.length / blockSize);
  const out = Buffer.allocUnsafe(n * REPLICA_HASH_BYTES);
  for (let i = 0; i < n; i++) {
    createHash('sha256')
      .update(data.subarray(i * blockSize, Math.min((i + 1) * blockSize, data.length)))
      .digest()
      .copy(out, i * REPLICA_HASH_BYTES, 0, REPLICA_HASH_BYTES);
  }
  return out;
}
/** POSITION_REQ body: `find` asks which uncommitted write a seq or time names (see GroupJournal.findPending). */
export interface PositionReqMsg {
  id: string;
  find?: { seq: number } | { ms: number };
}

/** POSITION body. */
export interface PositionMsg {
  id: string;
  position?: import('../journal/group-journal').JournalPosition;
  found?: import('../journal/group-journal').JournalRecordInfo | null;
  error?: string;
}
