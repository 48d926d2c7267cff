// Content digests for the archive pool's handles (src/archive/handle.ts),
// computed off the main thread: SHA-256, or HMAC-SHA256 under a pool's id
// key. OpenSSL is the one Node itself carries (its symbols are exported to
// addons), so no library is linked.
#pragma once

#include <napi.h>
#include <stddef.h>
#include <stdint.h>

#include <string>

namespace rwnative {

constexpr size_t kHandleSize = 33;
constexpr uint8_t kSchemeZero = 0;
constexpr uint8_t kSchemeSha256 = 1;
constexpr uint8_t kSchemeHmacSha256 = 2;

// The pool's hashing scheme: no key means SHA-256.
struct DigestKey {
  std::string key;
  bool hmac = false;
};

// Parses the optional key argument (undefined, null or a Buffer).
DigestKey ArgDigestKey(const Napi::CallbackInfo& info, size_t i);

// Writes the 33-byte handle of `data` (scheme byte, digest) to `out`.
void DigestHandle(const DigestKey& k, const uint8_t* data, size_t n, uint8_t* out);

// Adds digestLeaves to `exports` (see digest.cc).
void RegisterDigest(Napi::Env env, Napi::Object exports);

}  // namespace rwnative
