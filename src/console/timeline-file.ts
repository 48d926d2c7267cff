/**
 * The timeline index saved to a file, so a daemon restart does not read a
 * million LMDB records again (about 5 s) before the console's first draw:
 * DATA_DIR/console/timeline/GROUP.idx, replaced atomically.
 *
 *   8 bytes   magic "RWTLIX01"
 *   4 bytes   u32 LE length L of the JSON header
 *   L bytes   JSON {state, length, supers}
 *   then the columns, each `length` values, little-endian, in this order:
 *   n u32, t0 f64, t1 f64, seq f64, cumW f64, cumB f64, flags u8
 *
 * A file that does not parse, or whose sizes disagree, is ignored (the
 * index is rebuilt from the catalog); a stale one is brought up to date by
 * TimelineIndex.sync like any other state.
 */
import * as fs from 'node:fs';
import { writeFileAtomic } from '../util/atomic-file';
import { Columns, type HistoryState, type SuperSpan, type TimelineIndex } from './timeline-index';

const MAGIC = Buffer.from('RWTLIX01', 'latin1');

interface Header {
  state: HistoryState;
  length: number;
  supers: SuperSpan[];
}

export function encodeIndex(idx: TimelineIndex): Buffer | null {
  if (!idx.state) return null;
  const c = idx.cols;
  const len = c.length;
  const header = Buffer.from(JSON.stringify({ state: idx.state, length: len, supers: [...idx.supers.values()] } satisfies Header));
  const parts: Buffer[] = [MAGIC, u32(header.length), header];
  const add = (a: Uint32Array | Float64Array | Uint8Array): void => {
    parts.push(Buffer.from(a.buffer, a.byteOffset, len * a.BYTES_PER_ELEMENT));
  };
  add(c.n);
  add(c.t0);
  add(c.t1);
  add(c.seq);
  add(c.cumW);
  add(c.cumB);
  add(c.flags);
  return Buffer.concat(parts);
}

/** The saved rows, or null if the file is missing or not one of ours. */
export function decodeIndex(buf: Buffer): { state: HistoryState; cols: Columns; supers: SuperSpan[] } | null {
  if (buf.length < 12 || !buf.subarray(0, 8).equals(MAGIC)) return null;
  const hlen = buf.readUInt32LE(8);
  if (12 + hlen > buf.length) return null;
  let h: Header;
  try {
    h = JSON.parse(buf.subarray(12, 12 + hlen).toString('utf8')) as Header;
  } catch {
    return null;
  }
  const len = h.length;
  if (!Number.isInteger(len) || len < 0 || !h.state || !Array.isArray(h.supers)) return null;
  if (buf.length !== 12 + hlen + len * (4 + 5 * 8 + 1)) return null;
  const cols = new Columns(Math.max(1024, len + 64));
  let off = 12 + hlen;
  // Copied out of the file buffer: typed arrays need aligned offsets.
  const take = <T extends Uint32Array | Float64Array | Uint8Array>(into: T): void => {
    const bytes = len * into.BYTES_PER_ELEMENT;
    // A plain Uint8Array view, not buf.subarray(): set() from a Buffer is an element-wise copy (100x slower).
    new Uint8Array(into.buffer, into.byteOffset, bytes).set(new Uint8Array(buf.buffer, buf.byteOffset + off, bytes));
    off += bytes;
  };
  take(cols.n);
  take(cols.t0);
  take(cols.t1);
  take(cols.seq);
  take(cols.cumW);
  take(cols.cumB);
  take(cols.flags);
  cols.length = len;
  return { state: h.state, cols, supers: h.supers };
}

export async function loadIndexFile(file: string): Promise<ReturnType<typeof decodeIndex>> {
  let buf: Buffer;
  try {
    buf = await fs.promises.readFile(file);
  } catch {
    return null;
  }
  return decodeIndex(buf);
}

export async function saveIndexFile(file: string, idx: TimelineIndex): Promise<boolean> {
  const changed = idx.changedSinceSave;
  const buf = encodeIndex(idx);
  if (!buf) return false;
  await writeFileAtomic(file, buf, { mode: 0o600 });
  // Rows appended while the file was written still count as unsaved.
  idx.changedSinceSave = Math.max(0, idx.changedSinceSave - changed);
  return true;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}
