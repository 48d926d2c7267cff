/**
 * Writing packs. A pack is built in a local staging file, appended record
 * by record (a crash leaves a torn tail, which the next open cuts at the
 * last whole record and seals: salvageStaging), then sealed with its index
 * and footer, fsynced, and handed to the backend in one atomic put.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from '../util/crc32';
import { seal } from './crypto';
import { ArchiveFormatError } from './errors';
import type { Handle } from './handle';
import {
  FOOTER_SIZE,
  PACK_HEADER_SIZE,
  decodePackHeader,
  encodeFooter,
  encodeIndex,
  encodePackHeader,
  encodeRecordHeader,
  recordSize,
  scanRecords,
  type ChunkType,
  type PackEntry,
  type PackHeader,
  type PackKind,
} from './pack-format';

export function packKey(packId: string): string {
  return `packs/${packId.slice(0, 2)}/${packId}.pack`;
}

/** The encoded index blob: sealed under the pool key (aad: pack id) when encrypted. */
export function packIndexBlob(entries: PackEntry[], packId: string, key: Buffer | null): Buffer {
  const plain = encodeIndex(entries);
  return key ? seal(key, plain, Buffer.from(packId, 'hex')) : plain;
}

export interface SealedPack {
  header: PackHeader;
  file: string;
  size: number;
  entries: PackEntry[];
}

/** Records are written in batches of about this many bytes (fewer, larger writes). */
const BATCH = 1024 * 1024;
/** Appends wait while more than this is queued for writing. */
const MAX_QUEUED = 8 * 1024 * 1024;

export class PackWriter {
  readonly entries: PackEntry[] = [];
  /** Set (synchronously) by the owner when it stops appending and will seal. */
  closing = false;
  private sealed = false;
  private pos = PACK_HEADER_SIZE;
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private batchAt = PACK_HEADER_SIZE;
  private queued = 0;
  private chain: Promise<void> = Promise.resolve();
  private failed: unknown = null;

  private constructor(
    readonly header: PackHeader,
    readonly file: string,
    private readonly fh: fs.promises.FileHandle,
  ) {}

  static async create(stagingDir: string, kind: PackKind, poolId: string, encrypted: boolean): Promise<PackWriter> {
    const header: PackHeader = { kind, encrypted, poolId, packId: randomBytes(16).toString('hex'), created: Date.now() };
    const file = path.join(stagingDir, `${header.packId}.pack`);
    const fh = await fs.promises.open(file, 'wx', 0o600);
    const w = new PackWriter(header, file, fh);
    w.write([encodePackHeader(header)], 0, PACK_HEADER_SIZE);
    return w;
  }

  /** Bytes the sealed pack will have, so far (index and footer excluded). */
  get size(): number {
    return this.pos;
  }

  private write(bufs: Buffer[], at: number, n: number): void {
    this.queued += n;
    this.chain = this.chain.then(async () => {
      try {
        if (!this.failed) await this.fh.writev(bufs, at);
      } catch (err) {
        this.failed ??= err;
      } finally {
        this.queued -= n;
      }
    });
  }

  private flushBatch(): void {
    if (this.batchBytes === 0) return;
    this.write(this.batch, this.batchAt, this.batchBytes);
    this.batch = [];
    this.batchAt = this.pos;
    this.batchBytes = 0;
  }

  /**
   * Adds a record (written soon, in a batch; not synced until seal) and
   * returns its entry. Throws if an earlier write failed (ENOSPC...).
   */
  append(handle: Handle, type: ChunkType, codec: number, rawLength: number, stored: Buffer, crc = crc32(stored)): PackEntry {
    if (this.failed) throw this.failed;
    if (this.sealed) throw new Error(`pack ${this.header.packId}: append after seal`);
    const e: PackEntry = { handle, type, codec, offset: this.pos, rawLength, storedLength: stored.length, crc };
    this.pos += recordSize(e);
    this.entries.push(e);
    this.batch.push(encodeRecordHeader(e), stored);
    this.batchBytes += recordSize(e);
    if (this.batchBytes >= BATCH) this.flushBatch();
    return e;
  }

  /** Waits while too much is queued for writing; rejects if a write failed. */
  async backpressure(): Promise<void> {
    while (this.queued > MAX_QUEUED) await this.chain;
    if (this.failed) throw this.failed;
  }

  /** Writes index and footer, fsyncs and closes. The file is then ready for the backend. */
  async seal(key: Buffer | null): Promise<SealedPack> {
    if (this.sealed) throw new Error(`pack ${this.header.packId}: sealed twice`);
    this.sealed = true;
    this.closing = true;
    this.flushBatch();
    const blob = packIndexBlob(this.entries, this.header.packId, key);
    const indexOffset = this.pos;
    const footer = encodeFooter({ indexOffset, indexLength: blob.length, entries: this.entries.length, indexCrc: crc32(blob) });
    this.write([blob, footer], indexOffset, blob.length + footer.length);
    await this.chain;
    if (this.failed) {
      await this.fh.close().catch(() => undefined);
      throw this.failed;
    }
    await this.fh.sync();
    await this.fh.close();
    return { header: this.header, file: this.file, size: indexOffset + blob.length + FOOTER_SIZE, entries: this.entries };
  }

  /** Drops the staging file (an archive that failed). */
  async abort(): Promise<void> {
    this.failed ??= new Error('aborted');
    await this.chain;
    await this.fh.close().catch(() => undefined);
    await fs.promises.rm(this.file, { force: true });
  }
}

/**
 * Repairs a staging pack left by a crash: keeps the records before the
 * first torn or corrupt one, cuts the rest and seals the file. Returns
 * null (and removes the file) if nothing whole is left or the header is
 * not ours.
 */
export async function salvageStaging(file: string, poolId: string, key: Buffer | null): Promise<SealedPack | null> {
  let buf: Buffer;
  try {
    buf = await fs.promises.readFile(file);
  } catch {
    return null;
  }
  let header: PackHeader;
  try {
    header = decodePackHeader(buf.subarray(0, PACK_HEADER_SIZE));
    if (header.poolId !== poolId) throw new ArchiveFormatError('pack of another pool');
  } catch {
    await fs.promises.rm(file, { force: true });
    return null;
  }
  const { entries, end } = scanRecords(buf);
  if (entries.length === 0) {
    await fs.promises.rm(file, { force: true });
    return null;
  }
  const blob = packIndexBlob(entries, header.packId, key);
  const footer = encodeFooter({ indexOffset: end, indexLength: blob.length, entries: entries.length, indexCrc: crc32(blob) });
  const fh = await fs.promises.open(file, 'r+');
  try {
    await fh.truncate(end);
    await fh.writev([blob, footer], end);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { header, file, size: end + blob.length + FOOTER_SIZE, entries };
}
