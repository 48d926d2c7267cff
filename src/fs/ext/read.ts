/**
 * File contents and physical layout. readFileChunks reads only the file's
 * data blocks (and the extent or indirect blocks that map them), in chunks,
 * with one read in flight ahead of the consumer; holes and unwritten
 * extents come back as chunks without data, never read.
 */
import { corrupt, FsError } from '../errors';
import { LIMITS } from '../limits';
import { inodeRunsSync, type Run } from './blockmap';
import type { ExtSource } from './source';
import { inlineContents } from './inline';
import { FLAG, I_BLOCK, type Inode } from './inode';

export interface ReadOptions {
  /** First byte to read (default 0). */
  offset?: number;
  /** Bytes to read (default: to the end of the file). */
  length?: number;
  /** Largest chunk, in bytes (default 1 MiB). */
  chunkSize?: number;
  /**
   * Read into a ring of three chunk buffers instead of a new buffer per
   * chunk: a chunk's data is then valid only until the next chunk is
   * requested (write it out or hash it first). In a fresh process this is
   * the difference between touching 3 MiB of memory and the file's size.
   */
  reuseBuffers?: boolean;
  /**
   * Chunks whose reads are started ahead of the consumer (default 1). More
   * keeps a slow or busy source streaming; with reuseBuffers the ring holds
   * readAhead + 2 buffers, so the guarantee above is the same.
   */
  readAhead?: number;
}

export interface FileChunk {
  /** Offset in the file. */
  offset: number;
  length: number;
  /** Absent for a hole or an unwritten extent (zeroes). Do not modify: it may be a cache's buffer. */
  data?: Buffer;
}

export interface ExtentRun extends Run {
  /** Byte offset of the run's first block in the image. */
  imageOffset: number;
}

export interface FileExtents {
  ino: number;
  size: number;
  blockSize: number;
  /** Data runs in logical order (blocks; may extend past size when preallocated). */
  runs: ExtentRun[];
  /** Extent-tree or indirect blocks, in the order read. */
  metaBlocks: number[];
  /** Extended-attribute block, 0 if none. */
  xattrBlock: number;
  /** Data kept in the inode (inline data or a fast symlink): no blocks. */
  inline: boolean;
}

/** True if the inode has no block map: its bytes (if any) live in the inode. */
export function dataInInode(fs: Pick<ExtSource, 'blockSize'>, inode: Inode): boolean {
  const { stat } = inode;
  if (stat.flags & FLAG.INLINE_DATA) return true;
  if (stat.type === 'symlink') {
    const eaBlocks = inode.fileAcl !== 0 ? fs.blockSize / 512 : 0;
    return stat.allocated / 512 - eaBlocks <= 0;
  }
  return false;
}

function hasData(inode: Inode): boolean {
  const t = inode.stat.type;
  return t === 'file' || t === 'dir' || t === 'symlink';
}

export async function* readFileChunks(fs: ExtSource, inode: Inode, opts: ReadOptions): AsyncGenerator<FileChunk> {
  const { stat } = inode;
  const what = `inode ${stat.ino}`;
  if (stat.flags & FLAG.ENCRYPT) throw new FsError('UNSUPPORTED', fs.where, what, 'contents are encrypted');
  if (stat.flags & FLAG.COMPR) throw new FsError('UNSUPPORTED', fs.where, what, 'contents are compressed (ext2 compression)');
  const start = opts.offset ?? 0;
  const chunk = opts.chunkSize ?? LIMITS.readChunk;
  if (!Number.isSafeInteger(start) || start < 0 || !(chunk > 0)) throw new FsError('INVALID', fs.where, what, 'bad offset or chunk size');
  const end = Math.min(stat.size, opts.length === undefined ? Infinity : start + opts.length);
  if (!hasData(inode) || start >= end) return;
  if (dataInInode(fs, inode)) {
    const bytes =
      stat.flags & FLAG.INLINE_DATA ? inlineContents(fs.superblock, inode) : inode.raw.subarray(I_BLOCK, I_BLOCK + Math.min(stat.size, 60));
    if (bytes.length < end) throw corrupt(what, `size ${stat.size} exceeds the bytes stored in the inode`);
    yield { offset: start, length: end - start, data: bytes.subarray(start, end) };
    return;
  }
  // Reads are started `depth` pieces ahead of the consumer, so I/O overlaps its work. With reuse:
  // chunk k is read into ring[k % (depth + 2)]; that buffer is reused by chunk k + depth + 2, whose
  // read starts only when the consumer asks for chunk k + 2.
  const depth = Math.max(1, Math.min(16, Math.floor(opts.readAhead ?? 1)));
  const ring = opts.reuseBuffers ? Array.from({ length: depth + 2 }, () => Buffer.allocUnsafe(Math.min(chunk, end - start))) : null;
  let k = 0;
  const ahead: Array<{ c: FileChunk; p?: Promise<Buffer> }> = [];
  for await (const piece of pieces(fs, inode, start, end, chunk)) {
    const started: { c: FileChunk; p?: Promise<Buffer> } = { c: piece.c };
    if (piece.block !== undefined) {
      const into = ring?.[k++ % ring.length]!.subarray(0, piece.c.length);
      started.p = fs.dev.readSpan(piece.block, piece.skip, piece.c.length, `${what} data`, into);
      started.p.catch(() => undefined); // if the consumer stops early, a failed read-ahead is not unhandled
    }
    if (ahead.length === depth) yield await settle(ahead.shift()!);
    ahead.push(started);
  }
  for (const a of ahead) yield await settle(a);
}

async function settle(a: { c: FileChunk; p?: Promise<Buffer> }): Promise<FileChunk> {
  return a.p ? { ...a.c, data: await a.p } : a.c;
}

interface Piece {
  c: FileChunk;
  /** Physical block to read from (absent for zeroes) and the byte offset into it. */
  block?: number;
  skip: number;
}

/** The file's pieces in order: data spans and zero spans of at most `chunk` bytes. */
async function* pieces(fs: ExtSource, inode: Inode, start: number, end: number, chunk: number): AsyncGenerator<Piece> {
  const bs = fs.blockSize;
  let pos = start;
  function* zeroes(to: number): Generator<Piece> {
    for (; pos < to; pos = Math.min(to, pos + chunk)) yield { c: { offset: pos, length: Math.min(to, pos + chunk) - pos }, skip: 0 };
  }
  for await (const run of fs.runs(inode, Math.floor(start / bs))) {
    const runStart = run.logical * bs;
    const runEnd = Math.min(end, (run.logical + run.length) * bs);
    if (runStart >= end) break;
    if (runEnd <= pos) continue;
    yield* zeroes(runStart);
    if (run.unwritten) {
      yield* zeroes(runEnd);
      continue;
    }
    for (; pos < runEnd; pos = Math.min(runEnd, pos + chunk)) {
      const rel = pos - runStart;
      yield { c: { offset: pos, length: Math.min(runEnd, pos + chunk) - pos }, block: run.physical + Math.floor(rel / bs), skip: rel % bs };
    }
  }
  yield* zeroes(end);
}

/**
 * fileExtents without I/O: undefined when the block map needs a block read
 * (an extent tree deeper than the inode, indirect blocks).
 */
export function fileExtentsSync(fs: ExtSource, inode: Inode): FileExtents | undefined {
  const out = emptyExtents(fs, inode);
  if (!hasData(inode) || out.inline) return out;
  const runs = inodeRunsSync({ sb: fs.superblock, ino: inode.stat.ino }, inode);
  if (!runs) return undefined;
  for (const r of runs) (out.runs as ExtentRun[]).push({ ...r, imageOffset: fs.imageOffset(r.physical) });
  checkOverlap(out.runs, inode.stat.ino);
  return out;
}

/** A file's extents before its block map is read: complete for a file without data or with its data in the inode. */
function emptyExtents(fs: ExtSource, inode: Inode): FileExtents {
  return {
    ino: inode.stat.ino,
    size: inode.stat.size,
    blockSize: fs.blockSize,
    runs: [],
    metaBlocks: [],
    xattrBlock: inode.fileAcl,
    inline: hasData(inode) && dataInInode(fs, inode),
  };
}

export function checkOverlap(runs: Run[], ino: number): void {
  // Two runs of one file sharing a block is corruption (ext4 has no reflinks).
  if (runs.length < 2) return;
  const byPhys = [...runs].sort((a, b) => a.physical - b.physical);
  for (let i = 1; i < byPhys.length; i++) {
    const prev = byPhys[i - 1]!;
    if (byPhys[i]!.physical < prev.physical + prev.length) {
      throw corrupt(`inode ${ino} block map`, `runs at blocks ${prev.physical} (+${prev.length}) and ${byPhys[i]!.physical} overlap`);
    }
  }
}

export async function fileExtents(fs: ExtSource, inode: Inode): Promise<FileExtents> {
  const out = emptyExtents(fs, inode);
  if (!hasData(inode) || out.inline) return out;
  for await (const r of fs.runs(inode, 0, (b) => out.metaBlocks.push(b))) out.runs.push({ ...r, imageOffset: fs.imageOffset(r.physical) });
  checkOverlap(out.runs, inode.stat.ino);
  return out;
}
