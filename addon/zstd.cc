// zstd for the archive pool: one-shot frames, one compression and one
// decompression context per thread (the main thread and each libuv
// threadpool thread), reused across calls because creating a context costs
// more than compressing a 64 KiB leaf.
//
//   zstdCompressSync(src, level)            -> Buffer
//   zstdDecompressSync(src, size)           -> Buffer of exactly `size` bytes
//   zstdCompress(src, level)                -> Promise<Buffer>   (threadpool)
//   zstdDecompress(src, size)               -> Promise<Buffer>   (threadpool)
//   zstdCompressBatch([src...], level)      -> Promise<Buffer[]> (threadpool,
//                                              one job for many chunks: a
//                                              threadpool round trip can cost
//                                              as much as compressing 64 KiB)
//   zstdDigestBatch([src...], [size...], key|null)
//                                           -> Promise<Array<Buffer|string>>
//                                              (threadpool: each src is a
//                                              zstd frame of `size` bytes, or
//                                              plain where size is -1; the
//                                              33-byte handle of the plain
//                                              bytes, or why it failed; for
//                                              verify, which needs only that)
//   zstdVersion                             -> "1.5.4" (or "" without zstd)
//
// Decompression is bounded by the caller's `size` (the archive knows each
// chunk's raw length): a frame that would produce more, or a different
// amount, fails with code ERR_ZSTD instead of allocating what a hostile
// frame header claims.

#include "zstd.h"

#include "background.h"
#include "digest.h"
#include "errors.h"

#include <stdlib.h>
#include <string.h>

#include <memory>
#include <string>
#include <vector>

#ifdef REWIND_HAVE_ZSTD
#include <zstd.h>
#endif

namespace rwnative {
namespace {

constexpr int64_t kMaxSize = int64_t(1) << 30;  // 1 GiB: far above any chunk

Napi::Error ZstdError(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_ZSTD"));
  return e;
}

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsBuffer())
    throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

int64_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d)))
    throw Napi::RangeError::New(info.Env(), std::string(name) + " out of range");
  return static_cast<int64_t>(d);
}

// A malloc'd result handed to JS without a copy.
struct Out {
  uint8_t* data = nullptr;
  size_t size = 0;
  std::string error;  // empty on success
};

Napi::Buffer<uint8_t> ToBuffer(Napi::Env env, Out& out) {
  // Copying into a V8-owned buffer is cheaper than an external buffer with
  // a finalizer: external memory makes V8 run its GC far more often.
  Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, out.data, out.size);
  ::free(out.data);
  out.data = nullptr;
  return b;
}

#ifdef REWIND_HAVE_ZSTD
struct CctxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DctxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

ZSTD_CCtx* ThreadCctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CctxFree> c(ZSTD_createCCtx());
  return c.get();
}

ZSTD_DCtx* ThreadDctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DctxFree> c(ZSTD_createDCtx());
  return c.get();
}

void DoCompress(const uint8_t* src, size_t n, int level, Out* out) {
  size_t cap = ZSTD_compressBound(n);
  out->data = static_cast<uint8_t*>(::malloc(cap ? cap : 1));
  if (!out->data) {
    out->error = "zstd: out of memory";
    return;
  }
  size_t r = ZSTD_compressCCtx(ThreadCctx(), out->data, cap, src, n, level);
  if (ZSTD_isError(r)) {
    out->error = std::string("zstd compress: ") + ZSTD_getErrorName(r);
    ::free(out->data);
    out->data = nullptr;
    return;
  }
  out->size = r;
  // Give back the slack of the bound; shrinking realloc does not copy much.
  if (r > 0 && r < cap) {
    void* q = ::realloc(out->data, r);
    if (q) out->data = static_cast<uint8_t*>(q);
  }
}

void DoDecompress(const uint8_t* src, size_t n, size_t size, Out* out) {
  unsigned long long declared = ZSTD_getFrameContentSize(src, n);
  if (declared == ZSTD_CONTENTSIZE_ERROR) {
    out->error = "zstd decompress: not a zstd frame";
    return;
  }
  if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != size) {
    out->error = "zstd decompress: frame holds " + std::to_string(declared) + " bytes, expected " + std::to_string(size);
    return;
  }
  out->data = static_cast<uint8_t*>(::malloc(size ? size : 1));
  if (!out->data) {
    out->error = "zstd: out of memory";
    return;
  }
  size_t r = ZSTD_decompressDCtx(ThreadDctx(), out->data, size, src, n);
  if (ZSTD_isError(r) || r != size) {
    out->error = ZSTD_isError(r) ? std::string("zstd decompress: ") + ZSTD_getErrorName(r)
                                 : "zstd decompress: produced " + std::to_string(r) + " bytes, expected " + std::to_string(size);
    ::free(out->data);
    out->data = nullptr;
    return;
  }
  out->size = size;
}
#else
void DoCompress(const uint8_t*, size_t, int, Out* out) { out->error = "unavailable"; }
void DoDecompress(const uint8_t*, size_t, size_t, Out* out) { out->error = "unavailable"; }
#endif

void RequireZstd(Napi::Env env) {
#ifndef REWIND_HAVE_ZSTD
  Napi::Error e = Napi::Error::New(env, "rewind native addon was built without libzstd (install libzstd-dev and rebuild)");
  e.Set("code", Napi::String::New(env, "ERR_ZSTD_UNAVAILABLE"));
  throw e;
#endif
}

class ZstdWorker final : public Napi::AsyncWorker {
 public:
  ZstdWorker(Napi::Env env, Napi::Buffer<uint8_t> src, bool compress, int64_t arg)
      : Napi::AsyncWorker(env, compress ? "rewind:zstdCompress" : "rewind:zstdDecompress"),
        deferred_(Napi::Promise::Deferred::New(env)),
        src_(Napi::Persistent(src)),  // keeps the input alive while the thread reads it
        data_(src.Data()),
        n_(src.Length()),
        compress_(compress),
        arg_(arg) {}

  ~ZstdWorker() override { ::free(out_.data); }

  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  void Execute() override {
    if (compress_) {
      DoCompress(data_, n_, static_cast<int>(arg_), &out_);
    } else {
      DoDecompress(data_, n_, static_cast<size_t>(arg_), &out_);
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!out_.error.empty()) {
      deferred_.Reject(ZstdError(env, out_.error).Value());
    } else {
      deferred_.Resolve(ToBuffer(env, out_));
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Buffer<uint8_t>> src_;
  const uint8_t* data_;
  size_t n_;
  bool compress_;
  int64_t arg_;
  Out out_;
};

// Compresses many buffers in one threadpool job.
class ZstdBatchWorker final : public Napi::AsyncWorker {
 public:
  ZstdBatchWorker(Napi::Env env, Napi::Array srcs, int level)
      : Napi::AsyncWorker(env, "rewind:zstdCompressBatch"),
        deferred_(Napi::Promise::Deferred::New(env)),
        level_(level) {
    uint32_t n = srcs.Length();
    refs_.reserve(n);
    items_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value v = srcs.Get(i);
      if (!v.IsBuffer()) throw Napi::TypeError::New(env, "every element must be a Buffer");
      Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
      refs_.push_back(Napi::Persistent(b));  // each input stays alive while the thread reads it
      items_[i].data = b.Data();
      items_[i].n = b.Length();
    }
  }

  ~ZstdBatchWorker() override {
    for (auto& it : items_) ::free(it.out.data);
  }

  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  void Execute() override {
    BackgroundScope background;  // only the archive compresses in batches
    for (auto& it : items_) DoCompress(it.data, it.n, level_, &it.out);
  }
  void OnOK() override {
    Napi::Env env = Env();
    for (auto& it : items_) {
      if (!it.out.error.empty()) {
        deferred_.Reject(ZstdError(env, it.out.error).Value());
        return;
      }
    }
    Napi::Array out = Napi::Array::New(env, items_.size());
    for (uint32_t i = 0; i < items_.size(); i++) out.Set(i, ToBuffer(env, items_[i].out));
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  struct Item {
    const uint8_t* data = nullptr;
    size_t n = 0;
    Out out;
  };
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Buffer<uint8_t>>> refs_;
  std::vector<Item> items_;
  int level_;
};

Napi::Value CompressBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    RequireZstd(env);
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "argument 0 must be an array of Buffers");
    int level = static_cast<int>(ArgInt(info, 1, "level", -7, 22));
    auto* w = new ZstdBatchWorker(env, info[0].As<Napi::Array>(), level);
    return w->Start();
  } catch (const Napi::Error& e) {
    return RejectedPromise(env, e);
  }
}

// Decompresses and digests many chunks in one threadpool job; the plain
// bytes never reach JS.
class DigestBatchWorker final : public Napi::AsyncWorker {
 public:
  DigestBatchWorker(Napi::Env env, Napi::Array srcs, Napi::Array sizes, DigestKey key)
      : Napi::AsyncWorker(env, "rewind:zstdDigestBatch"), deferred_(Napi::Promise::Deferred::New(env)), key_(std::move(key)) {
    uint32_t n = srcs.Length();
    if (sizes.Length() != n) throw Napi::TypeError::New(env, "srcs and sizes differ in length");
    refs_.reserve(n);
    items_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value v = srcs.Get(i);
      Napi::Value z = sizes.Get(i);
      if (!v.IsBuffer()) throw Napi::TypeError::New(env, "every src must be a Buffer");
      if (!z.IsNumber()) throw Napi::TypeError::New(env, "every size must be a number");
      double d = z.As<Napi::Number>().DoubleValue();
      if (!(d >= -1 && d <= static_cast<double>(kMaxSize)) || d != static_cast<double>(static_cast<int64_t>(d)))
        throw Napi::RangeError::New(env, "size out of range");
      Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
      refs_.push_back(Napi::Persistent(b));
      items_[i].data = b.Data();
      items_[i].n = b.Length();
      items_[i].size = static_cast<int64_t>(d);
    }
  }

  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  void Execute() override {
    BackgroundScope background;  // archive verify
    for (auto& it : items_) {
      if (it.size < 0) {
        DigestHandle(key_, it.data, it.n, it.handle);
        continue;
      }
      Out out;
      DoDecompress(it.data, it.n, static_cast<size_t>(it.size), &out);
      if (out.error.empty()) DigestHandle(key_, out.data, out.size, it.handle);
      it.error = out.error;
      ::free(out.data);
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, items_.size());
    for (uint32_t i = 0; i < items_.size(); i++) {
      const Item& it = items_[i];
      if (it.error.empty())
        out.Set(i, Napi::Buffer<uint8_t>::Copy(env, it.handle, kHandleSize));
      else
        out.Set(i, Napi::String::New(env, it.error));
    }
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  struct Item {
    const uint8_t* data = nullptr;
    size_t n = 0;
    int64_t size = -1;
    uint8_t handle[kHandleSize] = {};
    std::string error;
  };
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Buffer<uint8_t>>> refs_;
  std::vector<Item> items_;
  DigestKey key_;
};

Napi::Value DigestBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    RequireZstd(env);
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsArray())
      throw Napi::TypeError::New(env, "zstdDigestBatch([src...], [size...], key)");
    auto* w = new DigestBatchWorker(env, info[0].As<Napi::Array>(), info[1].As<Napi::Array>(), ArgDigestKey(info, 2));
    return w->Start();
  } catch (const Napi::Error& e) {
    return RejectedPromise(env, e);
  }
}

Napi::Value Sync(const Napi::CallbackInfo& info, bool compress) {
  Napi::Env env = info.Env();
  RequireZstd(env);
  Napi::Buffer<uint8_t> src = ArgBuffer(info, 0);
  Out out;
  if (compress) {
    DoCompress(src.Data(), src.Length(), static_cast<int>(ArgInt(info, 1, "level", -7, 22)), &out);
  } else {
    DoDecompress(src.Data(), src.Length(), static_cast<size_t>(ArgInt(info, 1, "size", 0, kMaxSize)), &out);
  }
  if (!out.error.empty()) throw ZstdError(env, out.error);
  return ToBuffer(env, out);
}

Napi::Value Async(const Napi::CallbackInfo& info, bool compress) {
  Napi::Env env = info.Env();
  try {
    RequireZstd(env);
    Napi::Buffer<uint8_t> src = ArgBuffer(info, 0);
    int64_t arg = compress ? ArgInt(info, 1, "level", -7, 22) : ArgInt(info, 1, "size", 0, kMaxSize);
    auto* w = new ZstdWorker(env, src, compress, arg);
    return w->Start();
  } catch (const Napi::Error& e) {
    return RejectedPromise(env, e);
  }
}

}  // namespace

void RegisterZstd(Napi::Env env, Napi::Object exports) {
  exports.Set("zstdCompressSync", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Sync(i, true); }, "zstdCompressSync"));
  exports.Set("zstdDecompressSync", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Sync(i, false); }, "zstdDecompressSync"));
  exports.Set("zstdCompress", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Async(i, true); }, "zstdCompress"));
  exports.Set("zstdDecompress", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Async(i, false); }, "zstdDecompress"));
  exports.Set("zstdCompressBatch", Napi::Function::New(env, CompressBatch, "zstdCompressBatch"));
  exports.Set("zstdDigestBatch", Napi::Function::New(env, DigestBatch, "zstdDigestBatch"));
#ifdef REWIND_HAVE_ZSTD
  exports.Set("zstdVersion", Napi::String::New(env, ZSTD_versionString()));
#else
  exports.Set("zstdVersion", Napi::String::New(env, ""));
#endif
}

}  // namespace rwnative
