// Leaf handles for the archiver, in the libuv threadpool:
//
//   digestLeaves(buf, leafSize, key|null) -> Promise<Buffer>
//
// For each leaf of `buf` (consecutive leafSize slices, the last may be
// shorter): 33 bytes, the zero handle if every byte is zero (such leaves
// are stored nowhere), else the scheme byte and SHA-256 (HMAC-SHA256 under
// `key`). The main thread only reads and compares handles; hashing a
// volume's data was most of its time.

#include "digest.h"

#include "background.h"
#include "errors.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <string.h>

#include <vector>

namespace rwnative {

DigestKey ArgDigestKey(const Napi::CallbackInfo& info, size_t i) {
  DigestKey k;
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return k;
  if (!info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), "key must be a Buffer or null");
  auto b = info[i].As<Napi::Buffer<uint8_t>>();
  k.key.assign(reinterpret_cast<const char*>(b.Data()), b.Length());
  k.hmac = true;
  return k;
}

void DigestHandle(const DigestKey& k, const uint8_t* data, size_t n, uint8_t* out) {
  if (k.hmac) {
    unsigned int len = 32;
    out[0] = kSchemeHmacSha256;
    HMAC(EVP_sha256(), k.key.data(), static_cast<int>(k.key.size()), data, n, out + 1, &len);
  } else {
    out[0] = kSchemeSha256;
    SHA256(data, n, out + 1);
  }
}

namespace {

bool AllZero(const uint8_t* p, size_t n) {
  // Word-wise first; memcmp against the data itself shifted by one word
  // would read it twice.
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w != 0) return false;
  }
  for (; i < n; i++)
    if (p[i] != 0) return false;
  return true;
}

class LeavesWorker final : public Napi::AsyncWorker {
 public:
  LeavesWorker(Napi::Env env, Napi::Buffer<uint8_t> buf, size_t leaf, DigestKey key)
      : Napi::AsyncWorker(env, "rewind:digestLeaves"),
        deferred_(Napi::Promise::Deferred::New(env)),
        ref_(Napi::Persistent(buf)),  // keeps the input alive while the thread reads it
        data_(buf.Data()),
        n_(buf.Length()),
        leaf_(leaf),
        key_(std::move(key)),
        out_(((n_ + leaf_ - 1) / leaf_) * kHandleSize) {}

  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  void Execute() override {
    BackgroundScope background;
    size_t k = 0;
    for (size_t at = 0; at < n_; at += leaf_, k++) {
      size_t len = n_ - at < leaf_ ? n_ - at : leaf_;
      uint8_t* h = out_.data() + k * kHandleSize;
      if (AllZero(data_ + at, len))
        memset(h, 0, kHandleSize);
      else
        DigestHandle(key_, data_ + at, len, h);
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(Env(), out_.data(), out_.size())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Buffer<uint8_t>> ref_;
  const uint8_t* data_;
  size_t n_;
  size_t leaf_;
  DigestKey key_;
  std::vector<uint8_t> out_;
};

Napi::Value DigestLeaves(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "digestLeaves(buf, leafSize, key)");
    double leaf = info[1].As<Napi::Number>().DoubleValue();
    if (!(leaf >= 1 && leaf <= (1 << 30)) || leaf != static_cast<double>(static_cast<int64_t>(leaf)))
      throw Napi::RangeError::New(env, "leafSize out of range");
    auto* w = new LeavesWorker(env, info[0].As<Napi::Buffer<uint8_t>>(), static_cast<size_t>(leaf), ArgDigestKey(info, 2));
    return w->Start();
  } catch (const Napi::Error& e) {
    return RejectedPromise(env, e);
  }
}

}  // namespace

void RegisterDigest(Napi::Env env, Napi::Object exports) {
  exports.Set("digestLeaves", Napi::Function::New(env, DigestLeaves, "digestLeaves"));
}

}  // namespace rwnative
