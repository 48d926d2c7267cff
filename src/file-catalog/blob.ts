/**
 * One point's catalog as a self-contained blob, so an archived copy of the
 * point carries its index (seed 004: the snapshot stored together with the
 * index that describes it). The blob holds the point's whole view, not a
 * delta, and rebuilds the LMDB catalog on import (importBlob) wherever the
 * point falls among the points already cataloged.
 *
 * Format (little-endian; CRC-32 with the zlib polynomial):
 *   header, 64 bytes:
 *     0  u8[8] magic "RWFCAT\0\1"
 *     8  u32   format version (1)
 *    12  u32   H: bytes of the context JSON that follows the header
 *    16  u64   entry count
 *    24  u64   bytes of the body before compression
 *    32  u32   CRC-32 of the body before compression
 *    36  u32   CRC-32 of the context JSON
 *    40  u8[20] reserved (0)
 *    60  u32   CRC-32 of header bytes 0..59
 *   context: H bytes of UTF-8 JSON, the PointRecord (volume, group, volume
 *     id, seq, time, txn, markers, filesystems with partition, UUID, label
 *     and mount point, errors, stats)
 *   body: gzip of the records, one per path (the root directory is the empty
 *     path), in key order:
 *     u16 partition | u32 path length | path bytes | u32 J | J bytes of JSON:
 *     the entry (entry.ts Entry; Buffers as {"b64": "..."})
 */
import * as zlib from 'node:zlib';
import { crc32 } from '../util/crc32';
import { decodeEntry, isGone, type Entry } from './entry';
import { entryKeyParts, joinPath, partitionPrefix } from './keys';
import type { CatalogStore } from './store';
import type { PointRecord } from './types';
import { PointWriter } from './writer';

const MAGIC = Buffer.from('RWFCAT\x00\x01', 'latin1');
const HEADER = 64;

const replacer = (_k: string, v: unknown): unknown =>
  v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)
    ? { b64: Buffer.from((v as { data: number[] }).data).toString('base64') }
    : v;
const reviver = (_k: string, v: unknown): unknown =>
  v && typeof v === 'object' && typeof (v as { b64?: unknown }).b64 === 'string' && Object.keys(v).length === 1
    ? Buffer.from((v as { b64: string }).b64, 'base64')
    : v;

/** The blob of a complete point. */
export function exportBlob(store: CatalogStore, point: PointRecord): Buffer {
  const parts: Buffer[] = [];
  let count = 0;
  for (const fsCtx of point.filesystems) {
    if (fsCtx.error) continue;
    for (const row of store.scanVisible<Buffer>('entries', partitionPrefix(point.vid, fsCtx.partition), point.seq, point.vid)) {
      if (isGone(row.value)) continue;
      const e = decodeEntry(row.value);
      const { parent, name } = entryKeyParts(row.key);
      const path = e.path ?? joinPath(parent, name);
      const json = Buffer.from(JSON.stringify(e, replacer));
      const head = Buffer.alloc(6);
      head.writeUInt16LE(fsCtx.partition, 0);
      head.writeUInt32LE(path.length, 2);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(json.length, 0);
      parts.push(head, path, len, json);
      count++;
    }
  }
  const body = Buffer.concat(parts);
  const context = Buffer.from(JSON.stringify({ ...point, vid: undefined }));
  const h = Buffer.alloc(HEADER);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(1, 8);
  h.writeUInt32LE(context.length, 12);
  h.writeBigUInt64LE(BigInt(count), 16);
  h.writeBigUInt64LE(BigInt(body.length), 24);
  h.writeUInt32LE(crc32(body), 32);
  h.writeUInt32LE(crc32(context), 36);
  h.writeUInt32LE(crc32(h.subarray(0, 60)), 60);
  return Buffer.concat([h, context, zlib.gzipSync(body)]);
}

export interface ParsedBlob {
  point: Omit<PointRecord, 'vid'>;
  entries: Array<{ partition: number; path: Buffer; entry: Entry }>;
}

class BlobError extends Error {}

/** Parses and checks a blob; throws naming what is wrong. */
export function parseBlob(blob: Buffer): ParsedBlob {
  const bad = (m: string): never => {
    throw new BlobError(`not a valid file catalog blob: ${m}`);
  };
  if (blob.length < HEADER || !blob.subarray(0, 8).equals(MAGIC)) bad('bad magic');
  if (blob.readUInt32LE(60) !== crc32(blob.subarray(0, 60))) bad('header CRC mismatch');
  if (blob.readUInt32LE(8) !== 1) bad(`format version ${blob.readUInt32LE(8)} is not 1`);
  const h = blob.readUInt32LE(12);
  if (HEADER + h > blob.length) bad('context runs past the end');
  const context = blob.subarray(HEADER, HEADER + h);
  if (crc32(context) !== blob.readUInt32LE(36)) bad('context CRC mismatch');
  const count = Number(blob.readBigUInt64LE(16));
  const bodyLen = Number(blob.readBigUInt64LE(24));
  let body: Buffer;
  try {
    body = zlib.gunzipSync(blob.subarray(HEADER + h), { maxOutputLength: bodyLen + 1 });
  } catch (e) {
    return bad(`body: ${(e as Error).message}`);
  }
  if (body.length !== bodyLen || crc32(body) !== blob.readUInt32LE(32)) bad('body CRC or length mismatch');
  const point = JSON.parse(context.toString('utf8')) as Omit<PointRecord, 'vid'>;
  const entries: ParsedBlob['entries'] = [];
  let o = 0;
  while (o < body.length) {
    if (o + 6 > body.length) bad('truncated record');
    const partition = body.readUInt16LE(o);
    const pl = body.readUInt32LE(o + 2);
    const path = body.subarray(o + 6, o + 6 + pl);
    const jl = body.readUInt32LE(o + 6 + pl);
    const json = body.subarray(o + 10 + pl, o + 10 + pl + jl);
    if (o + 10 + pl + jl > body.length) bad('truncated record');
    entries.push({ partition, path: Buffer.from(path), entry: JSON.parse(json.toString('utf8'), reviver) as Entry });
    o += 10 + pl + jl;
  }
  if (entries.length !== count) bad(`${entries.length} records, the header says ${count}`);
  return { point, entries };
}

/**
 * Adds a blob's point to the catalog of `volume` (its own volume unless
 * renamed), as if it had been built: rows only where it differs from the
 * point before it, fix-ups for the point after it.
 */
export async function importBlob(store: CatalogStore, parsed: ParsedBlob, vid: number, volume: string): Promise<PointRecord> {
  const seq = parsed.point.seq;
  const existing = store.point(vid, seq);
  if (existing?.state === 'complete') return existing;
  if (existing) {
    await store.purgeRowsAt(vid, seq);
    await store.removePointRecord(vid, seq);
  }
  const record: PointRecord = { ...parsed.point, vid, volume, state: 'building', source: 'imported' };
  await store.putPoint(record);
  const writer = new PointWriter(store, vid, seq, store.neighbours(vid, seq));
  for (const { partition, path, entry } of parsed.entries) await writer.set(partition, path, entry);
  for (const f of record.filesystems) if (!f.error) await writer.removeUnseen(f.partition, Buffer.alloc(0));
  const done: PointRecord = {
    ...record,
    state: 'complete',
    stats: { ...record.stats, mode: 'imported', rowsWritten: writer.rowsWritten, changedPaths: writer.changedPaths },
  };
  await writer.finish(done, null);
  return done;
}
