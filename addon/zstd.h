// zstd compression for the archive pool (src/archive), linked against the
// system libzstd (Debian: libzstd-dev). Built without it, the functions
// exist but throw ERR_ZSTD_UNAVAILABLE and `zstd` is false.
#pragma once

#include <napi.h>

namespace rwnative {

// Adds zstdCompress, zstdDecompress (promises, libuv threadpool),
// zstdCompressSync, zstdDecompressSync and zstdVersion to `exports`.
void RegisterZstd(Napi::Env env, Napi::Object exports);

}  // namespace rwnative
