/**
 * Chunk payloads: zstd (when it saves space), then AES-256-GCM when the
 * pool is encrypted. The associated data binds a sealed payload to its
 * handle and type, so a payload moved under another handle fails to open;
 * it does not bind the pack, so repacking copies records verbatim.
 */
import { crc32 } from '../util/crc32';
import { zstdCompress, zstdDecompress } from '../native';
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

export async function encodeChunk(opts: CodecOptions, handle: Handle, type: ChunkType, plain: Buffer): Promise<EncodedChunk> {
  let codec = 0;
  let body = plain;
  if (opts.level > 0 && plain.length >= 128) {
    const z = await zstdCompress(plain, opts.level);
    // Keep zstd only if it saves at least 1/64: decompressing costs too.
    if (z.length < plain.length - (plain.length >> 6)) {
      body = z;
      codec |= CODEC_ZSTD;
    }
  }
  if (opts.key) {
    body = seal(opts.key, body, aad(handle, type));
    codec |= CODEC_SEALED;
  }
  return { codec, stored: body, crc: crc32(body) };
}

/** Why a stored chunk could not be decoded (the caller names the chunk). */
export class ChunkDecodeError extends Error {}

/** Reverses encodeChunk. Throws ChunkDecodeError; does not check the handle. */
export async function decodeChunk(opts: CodecOptions, handle: Handle, type: ChunkType, codec: number, rawLength: number, stored: Buffer): Promise<Buffer> {
  let body = stored;
  if (codec & CODEC_SEALED) {
    if (!opts.key) throw new ChunkDecodeError('chunk is encrypted but the pool has no key');
    const open = unseal(opts.key, body, aad(handle, type));
    if (!open) throw new ChunkDecodeError('authentication failed (corrupt chunk, or a different key)');
    body = open;
  } else if (opts.key) {
    throw new ChunkDecodeError('chunk is not encrypted in an encrypted pool');
  }
  if (codec & CODEC_ZSTD) {
    try {
      return await zstdDecompress(body, rawLength);
    } catch (err) {
      throw new ChunkDecodeError(`decompression failed: ${(err as Error).message}`);
    }
  }
  if (body.length !== rawLength) throw new ChunkDecodeError(`stored ${body.length} bytes for a ${rawLength}-byte chunk`);
  return body;
}
