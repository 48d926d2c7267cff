/**
 * Chunk payloads: zstd (when it saves space), then AES-256-GCM when the
 * pool is encrypted. The associated data binds a sealed payload to its
 * handle and type, so a payload moved under another handle fails to open;
 * it does not bind the pack, so repacking copies records verbatim.
 */
import { crc32 } from '../util/crc32';
import { zstdCompressBatch, zstdCompressSync, zstdDecompress, zstdDecompressSync, zstdDigestBatch } from '../native';
import { cpuJob } from './cpu-jobs';
import { seal, unseal } from './crypto';
import { HANDLE_SIZE, type Handle } from './handle';
import { CODEC_SEALED, CODEC_ZSTD, type ChunkType } from './pack-format';

export interface CodecOptions {
  /** zstd level (1..19; 3 is zstd's default). 0 stores chunks uncompressed. */
  level: number;
  /** AES-256-GCM key, or null for a plaintext pool. */
  key: Buffer | null;
}

export interface EncodedChunk {
  codec: number;
  stored: Buffer;
  crc: number;
}

function aad(handle: Handle, type: ChunkType): Buffer {
  const b = Buffer.allocUnsafe(HANDLE_SIZE + 1);
  handle.copy(b, 0);
  b[HANDLE_SIZE] = type;
  return b;
}

/** Below this a chunk is decompressed on the calling thread (cheaper than a threadpool round trip). */
const SYNC_BELOW = 256 * 1024;

export interface PlainChunk {
  handle: Handle;
  type: ChunkType;
  plain: Buffer;
}

/**
 * Encodes chunks, compressing them all in one threadpool job. The result
 * never shares memory with `plain` (a caller may reuse its buffers once
 * this resolves).
 */
export async function encodeChunks(opts: CodecOptions, chunks: PlainChunk[]): Promise<EncodedChunk[]> {
  const want = opts.level > 0 ? chunks.filter((c) => c.plain.length >= 128) : [];
  const total = want.reduce((a, c) => a + c.plain.length, 0);
  // A little (a tree node, one small leaf) is cheaper to compress here than to send to the threadpool.
  const zs =
    total === 0
      ? []
      : total < SYNC_BELOW / 4
        ? want.map((c) => zstdCompressSync(c.plain, opts.level))
        : await cpuJob(() =>
            zstdCompressBatch(
              want.map((c) => c.plain),
              opts.level,
            ),
          );
  const z = new Map<PlainChunk, Buffer>(want.map((c, i) => [c, zs[i]!]));
  return chunks.map((c) => {
    let codec = 0;
    let body = z.get(c);
    // Keep zstd only if it saves at least 1/64: decompressing costs too.
    if (body && body.length < c.plain.length - (c.plain.length >> 6)) codec |= CODEC_ZSTD;
    else body = opts.key ? c.plain : Buffer.from(c.plain);
    if (opts.key) {
      body = seal(opts.key, body, aad(c.handle, c.type));
      codec |= CODEC_SEALED;
    }
    return { codec, stored: body, crc: crc32(body) };
  });
}

export async function encodeChunk(opts: CodecOptions, handle: Handle, type: ChunkType, plain: Buffer): Promise<EncodedChunk> {
  return (await encodeChunks(opts, [{ handle, type, plain }]))[0]!;
}

/** Why a stored chunk could not be decoded (the caller names the chunk). */
export class ChunkDecodeError extends Error {}

/**
 * The stored payload decrypted (if sealed) and checked against the pool's
 * key and, when not compressed, the raw length. Throws ChunkDecodeError.
 */
function openBody(opts: CodecOptions, handle: Handle, type: ChunkType, codec: number, rawLength: number, stored: Buffer): Buffer {
  let body = stored;
  if (codec & CODEC_SEALED) {
    if (!opts.key) throw new ChunkDecodeError('chunk is encrypted but the pool has no key');
    const open = unseal(opts.key, body, aad(handle, type));
    if (!open) throw new ChunkDecodeError('authentication failed (corrupt chunk, or a different key)');
    body = open;
  } else if (opts.key) {
    throw new ChunkDecodeError('chunk is not encrypted in an encrypted pool');
  }
  if (!(codec & CODEC_ZSTD) && body.length !== rawLength)
    throw new ChunkDecodeError(`stored ${body.length} bytes for a ${rawLength}-byte chunk`);
  return body;
}

/** Reverses encodeChunk. Throws ChunkDecodeError; does not check the handle. */
export async function decodeChunk(
  opts: CodecOptions,
  handle: Handle,
  type: ChunkType,
  codec: number,
  rawLength: number,
  stored: Buffer,
): Promise<Buffer> {
  const body = openBody(opts, handle, type, codec, rawLength, stored);
  if (!(codec & CODEC_ZSTD)) return body;
  try {
    return rawLength < SYNC_BELOW ? zstdDecompressSync(body, rawLength) : await zstdDecompress(body, rawLength);
  } catch (err) {
    throw new ChunkDecodeError(`decompression failed: ${(err as Error).message}`);
  }
}

export interface StoredChunk {
  handle: Handle;
  type: ChunkType;
  codec: number;
  rawLength: number;
  stored: Buffer;
}

/**
 * The handle the plaintext of each stored chunk hashes to (with the pool's
 * native digest key), or why it could not be decoded. Decryption runs
 * here; decompression and hashing run on the threadpool, in `jobs`
 * batches side by side, and the plaintext never comes back: verify needs
 * only the handle.
 */
export async function digestStored(
  opts: CodecOptions,
  digestKey: Buffer | null,
  chunks: StoredChunk[],
  jobs = 2,
): Promise<Array<Handle | ChunkDecodeError>> {
  const out: Array<Handle | ChunkDecodeError> = new Array(chunks.length);
  const srcs: Buffer[] = [];
  const sizes: number[] = [];
  const at: number[] = [];
  chunks.forEach((c, i) => {
    let body: Buffer;
    try {
      body = openBody(opts, c.handle, c.type, c.codec, c.rawLength, c.stored);
    } catch (err) {
      out[i] = err as ChunkDecodeError;
      return;
    }
    srcs.push(body);
    sizes.push(c.codec & CODEC_ZSTD ? c.rawLength : -1);
    at.push(i);
  });
  const per = Math.max(1, Math.ceil(srcs.length / jobs));
  const parts: Array<Promise<void>> = [];
  for (let k = 0; k < srcs.length; k += per) {
    parts.push(
      cpuJob(() => zstdDigestBatch(srcs.slice(k, k + per), sizes.slice(k, k + per), digestKey)).then((r) =>
        r.forEach((x, j) => {
          out[at[k + j]!] = typeof x === 'string' ? new ChunkDecodeError(`decompression failed: ${x}`) : x;
        }),
      ),
    );
  }
  await Promise.all(parts);
  return out;
}
