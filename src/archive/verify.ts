/**
 * Verify: every chunk reachable from the chosen points (default: all) is
 * read back in pack order (whole packs, sequentially), its record checked,
 * decrypted, decompressed and re-hashed. A bad chunk is quarantined (reads
 * that reach it fail with EIO naming it; an archive that meets the same
 * data again stores a fresh copy, which lifts the quarantine) and reported
 * with its pack and every point that references it. A quarantined chunk
 * that now checks out is released.
 */
import { digestStored, type StoredChunk } from './codec';
import { treeOf, type PoolCore } from './core';
import { ArchiveError } from './errors';
import { handleHex, isZeroHandle, type Handle } from './handle';
import type { ChunkLocation } from './index-db';
import { markTree, MarkSet } from './mark';
import { recordSize } from './pack-format';
import { checkRecord, recordWindows } from './pack-reader';
import { child, childCount, type TreeShape } from './tree';

export interface VerifyOptions {
  /** Points to check (default: every point). */
  points?: string[];
  onProgress?: (p: { phase: 'mark' | 'check'; done: number; total: number }) => void;
}

export interface BadChunk {
  chunk: string;
  /** Backend key of its pack, or null if the index has no copy at all. */
  pack: string | null;
  offset: number | null;
  reason: string;
  /** Every point (of the whole pool) that references it. */
  points: string[];
}

export interface VerifyReport {
  points: string[];
  chunksChecked: number;
  /** Plaintext bytes re-hashed. */
  bytesChecked: number;
  /** Stored bytes read from packs. */
  bytesRead: number;
  packsRead: number;
  bad: BadChunk[];
  missingPacks: string[];
  truncatedPacks: string[];
  released: number;
  ms: number;
}

interface Window {
  key: string;
  offset: number;
  length: number;
  entries: Array<[Buffer, ChunkLocation]>;
}

export async function verifyPool(core: PoolCore, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const t0 = Date.now();
  const { index, store } = core;
  const names = opts.points ?? [...core.manifests.keys()];
  for (const n of names) if (!core.manifests.has(n)) throw new ArchiveError('ENOENT', `no archived point "${n}"`);
  const report: VerifyReport = {
    points: names,
    chunksChecked: 0,
    bytesChecked: 0,
    bytesRead: 0,
    packsRead: 0,
    bad: [],
    missingPacks: [],
    truncatedPacks: [],
    released: 0,
    ms: 0,
  };
  const bad = new Map<string, Omit<BadChunk, 'points'>>();
  const ok = new Set<string>();

  // 1. What is reachable; nodes that cannot be read and leaves with no index entry are bad already.
  const marks = new MarkSet();
  const unreadable = new Map<string, Error>();
  let done = 0;
  for (const n of names) {
    const p = core.manifests.get(n)!;
    for (const v of p.volumes) {
      const t = treeOf(p, v);
      await markTree(store, t.shape, t.root, marks, {
        unreadable,
        onLeaf: (h) => {
          if (!index.get(h))
            bad.set(handleHex(h), { chunk: handleHex(h), pack: null, offset: null, reason: 'missing from the index (no copy left)' });
        },
      });
    }
    opts.onProgress?.({ phase: 'mark', done: ++done, total: names.length });
  }

  // 2. Reachable index entries by pack, in pack and offset order.
  const byPack = new Map<number, Array<[Buffer, ChunkLocation]>>();
  for (const [h, loc] of index.entries()) {
    if (!marks.has(h)) continue;
    let l = byPack.get(loc.pack);
    if (!l) byPack.set(loc.pack, (l = []));
    l.push([h, loc]);
  }
  const packNos = [...byPack.keys()].sort((a, b) => a - b);
  const fail = (h: Buffer, key: string | null, loc: ChunkLocation | null, reason: string): void => {
    bad.set(handleHex(h), { chunk: handleHex(h), pack: key, offset: loc?.offset ?? null, reason });
  };
  // Windows of whole records, in pack and offset order.
  const windows: Window[] = [];
  for (const no of packNos) {
    const entries = byPack.get(no)!.sort((x, y) => x[1].offset - y[1].offset);
    const rec = index.pack(no);
    const size = rec ? await core.backend.size(rec.key) : null;
    if (!rec || size === null) {
      if (rec) report.missingPacks.push(rec.key);
      for (const [h, loc] of entries) fail(h, rec?.key ?? null, loc, rec ? 'its pack is missing' : 'its pack is not in the index');
      continue;
    }
    report.packsRead++;
    if (entries.some(([, loc]) => loc.offset + recordSize(loc) > size)) report.truncatedPacks.push(rec.key);
    const whole = entries.filter(([h, loc]) => {
      if (loc.offset + recordSize(loc) <= size) return true;
      fail(h, rec.key, loc, `pack truncated at ${size} bytes`);
      return false;
    });
    for (const w of recordWindows(whole, ([, loc]) => loc))
      windows.push({ key: rec.key, offset: w.offset, length: w.length, entries: w.items });
  }
  const read = (w: Window): Promise<Buffer | Error> =>
    core.backend.get(w.key, { offset: w.offset, length: w.length }).catch((err: Error) => err);
  let next = windows.length > 0 ? read(windows[0]!) : null;
  for (let i = 0; i < windows.length; i++) {
    const w = windows[i]!;
    const buf = await next!;
    next = i + 1 < windows.length ? read(windows[i + 1]!) : null; // read ahead while checking
    if (buf instanceof Error) {
      for (const [h, loc] of w.entries) fail(h, w.key, loc, `its pack could not be read: ${buf.message}`);
      continue;
    }
    report.bytesRead += buf.length;
    for (const h of await checkWindow(core, w, buf, report, fail)) ok.add(handleHex(h));
    opts.onProgress?.({ phase: 'check', done: i + 1, total: windows.length });
  }
  // A node that could not be read while marking (quarantined earlier, say) but checked out now is fine.
  for (const [hex, err] of unreadable)
    if (!bad.has(hex) && !ok.has(hex)) bad.set(hex, { chunk: hex, pack: null, offset: null, reason: err.message });

  // 3. Quarantine what is bad, release what checked out, and name the points affected.
  for (const b of bad.values()) {
    if (b.pack && !store.quarantinedHex.has(b.chunk)) await store.quarantine(Buffer.from(b.chunk, 'hex'), b.pack, b.offset ?? 0, b.reason);
  }
  for (const [hex] of [...store.quarantinedHex]) {
    const h = Buffer.from(hex, 'hex');
    if (!bad.has(hex) && marks.has(h) && index.get(h)) {
      store.quarantinedHex.delete(hex);
      await index.clearQuarantine(h);
      report.released++;
    }
  }
  const users = bad.size > 0 ? await pointsReferencing(core, new Set(bad.keys())) : new Map<string, string[]>();
  report.bad = [...bad.values()].map((b) => ({ ...b, points: users.get(b.chunk) ?? [] }));
  report.ms = Date.now() - t0;
  return report;
}

/**
 * Checks the records of one window (its bytes as read): framing and CRC
 * here, then decryption, decompression and the handle in threadpool
 * batches. Returns the handles that are good.
 */
async function checkWindow(
  core: PoolCore,
  w: Window,
  buf: Buffer,
  report: VerifyReport,
  fail: (h: Buffer, key: string, loc: ChunkLocation, reason: string) => void,
): Promise<Handle[]> {
  const stored: StoredChunk[] = [];
  const locs: ChunkLocation[] = [];
  for (const [h, loc] of w.entries) {
    const rec = buf.subarray(loc.offset - w.offset, loc.offset - w.offset + recordSize(loc));
    if (rec.length < recordSize(loc)) {
      fail(h, w.key, loc, `pack truncated (record at ${loc.offset} cut short)`);
      continue;
    }
    try {
      const payload = checkRecord(rec, loc.offset, { handle: h, ...loc });
      stored.push({ handle: h, type: loc.type, codec: loc.codec, rawLength: loc.rawLength, stored: payload });
      locs.push(loc);
    } catch (err) {
      fail(h, w.key, loc, (err as Error).message);
    }
  }
  const got = await digestStored(core.store.codec, core.store.hasher.nativeKey, stored);
  const good: Handle[] = [];
  stored.forEach((c, i) => {
    const r = got[i]!;
    const loc = locs[i]!;
    if (r instanceof Error) fail(c.handle, w.key, loc, r.message);
    else if (!r.equals(c.handle)) fail(c.handle, w.key, loc, 'content does not match its handle');
    else {
      report.chunksChecked++;
      report.bytesChecked += c.rawLength;
      good.push(c.handle);
    }
  });
  return good;
}

/** For each bad handle, the points whose trees reach it (one walk per distinct node). */
async function pointsReferencing(core: PoolCore, badHex: Set<string>): Promise<Map<string, string[]>> {
  const memo = new Map<string, string[]>();
  const under = async (h: Handle, shape: TreeShape, level: number, index: number): Promise<string[]> => {
    if (isZeroHandle(h)) return [];
    const hex = handleHex(h);
    if (badHex.has(hex)) return [hex];
    if (level === 0) return [];
    const m = memo.get(hex);
    if (m) return m;
    const found = new Set<string>();
    try {
      const n = await core.store.node(h, level, childCount(shape, level, index));
      for (let c = 0; c < n.count; c++) for (const x of await under(child(n, c), shape, level - 1, index * shape.fanout + c)) found.add(x);
    } catch {
      found.add(hex); // an unreadable node counts as the bad chunk itself
    }
    const out = [...found];
    memo.set(hex, out);
    return out;
  };
  const users = new Map<string, string[]>();
  for (const p of core.manifests.values()) {
    const hit = new Set<string>();
    for (const v of p.volumes) {
      const t = treeOf(p, v);
      for (const x of await under(t.root, t.shape, t.shape.height, 0)) hit.add(x);
    }
    for (const x of hit) users.set(x, [...(users.get(x) ?? []), p.name]);
  }
  return users;
}
