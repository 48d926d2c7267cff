// rewind_native: the few block-storage system calls Node does not offer.
//
//   fallocate(fd, mode, offset, length)        -> Promise<void>  (threadpool)
//   fallocateSync(fd, mode, offset, length)    -> undefined
//   fdatasync(fd)                              -> Promise<void>  (threadpool)
//   fdatasyncSync(fd)                          -> undefined
//   seekData(fd, offset) / seekHole(fd, offset) -> number (-1 on ENXIO)
//   mapExtents(fd, offset, length, limit, max) -> Promise<Float64Array>
//                                                 pairs [length, isData, ...]
//   blockDeviceSize(fd)                        -> number
//   blockDeviceInfo(fd)                        -> { size, logicalSectorSize,
//                                                   physicalSectorSize,
//                                                   major, minor }
//   fadviseWillNeed(fd, offset, length)        -> undefined
//   fadviseRandom(fd)                          -> undefined (no readahead)
//   preadNoWait(fd, buf, bufOff, len, pos)     -> bytes read, or -1 if the
//   pwriteNoWait(fd, buf, bufOff, len, pos)       kernel would block (the
//                                                 data is not in the page
//                                                 cache / writeback would
//                                                 wait): preadv2/pwritev2
//                                                 with RWF_NOWAIT, so the
//                                                 event loop never waits on
//                                                 a disk; the caller then
//                                                 uses the threadpool.
//
//   zstdCompress / zstdDecompress (+Sync)     -> see zstd.cc (libzstd)
//   digestLeaves                              -> see digest.cc (archive handles)
//   setBackgroundNice                         -> see background.h (archive jobs yield)
//
// Failures become JS Errors with `.code` (errno name), `.errno` (positive
// number) and `.syscall`; asynchronous functions reject instead of throwing,
// argument errors included. Nothing here aborts the process.

#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#endif

#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "errors.h"
#include "background.h"
#include "digest.h"
#include "zstd.h"

namespace rwnative {
void InitIoRing(Napi::Env env, Napi::Object exports);
}

namespace rwnative {
namespace {

// ---------------------------------------------------------------------------
// Platform layer: each returns 0 / a value, or -1 with errno set.

#ifdef __linux__
constexpr bool kLinux = true;
#else
constexpr bool kLinux = false;
#endif

struct FallocMode {
  const char* name;
  int flags;
};

#ifdef __linux__
const FallocMode kModes[] = {
    {"punch", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE},
    {"zero", FALLOC_FL_ZERO_RANGE},
    {"zero-keep-size", FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE},
    {"alloc", 0},
    {"alloc-keep-size", FALLOC_FL_KEEP_SIZE},
};
#else
const FallocMode kModes[] = {
    {"punch", 0}, {"zero", 0}, {"zero-keep-size", 0}, {"alloc", 0}, {"alloc-keep-size", 0},
};
#endif

int DoFallocate(int fd, int mode, int64_t offset, int64_t length) {
#ifdef __linux__
  int r;
  do {
    r = ::fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (r < 0 && errno == EINTR);
  return r;
#else
  errno = ENOSYS;
  return -1;
#endif
}

int DoFdatasync(int fd) {
  int r;
  do {
#if defined(__linux__)
    r = ::fdatasync(fd);
#else
    r = ::fsync(fd);
#endif
  } while (r < 0 && errno == EINTR);
  return r;
}

int64_t DoSeek(int fd, int64_t offset, bool data) {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
  return static_cast<int64_t>(::lseek(fd, static_cast<off_t>(offset), data ? SEEK_DATA : SEEK_HOLE));
#else
  errno = ENOSYS;
  return -1;
#endif
}

int IsBlockDevice(int fd, struct stat* st) {
  if (::fstat(fd, st) < 0) return -1;
  if (!S_ISBLK(st->st_mode)) {
    errno = ENOTTY;
    return -1;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// Argument helpers. They throw Napi::TypeError / RangeError.

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), "fd must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d == std::floor(d)) || d < -2147483648.0 || d > 2147483647.0)
    throw Napi::RangeError::New(info.Env(), "fd must be a 32-bit integer");
  return static_cast<int>(d);
}

int64_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < 0 || d > 9007199254740991.0)
    throw Napi::RangeError::New(info.Env(),
                                std::string(what) + " must be a non-negative safe integer");
  return static_cast<int64_t>(d);
}

const FallocMode& ArgMode(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() > i && info[i].IsString()) {
    std::string s = info[i].As<Napi::String>().Utf8Value();
    for (const FallocMode& m : kModes)
      if (s == m.name) return m;
  }
  throw Napi::TypeError::New(
      info.Env(), "mode must be one of 'punch', 'zero', 'zero-keep-size', 'alloc', 'alloc-keep-size'");
}

// ---------------------------------------------------------------------------
// Promise-returning thread-pool work.

class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* resource, std::string what, const char* syscall)
      : Napi::AsyncWorker(env, resource),
        deferred_(Napi::Promise::Deferred::New(env)),
        what_(std::move(what)),
        syscall_(syscall) {}

  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, err_, what_, syscall_).Value());
    } else {
      deferred_.Resolve(Result(env));
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }

  Napi::Promise::Deferred deferred_;
  std::string what_;
  const char* syscall_;
  int err_ = 0;
};

// Runs `body` (which may throw Napi errors) and turns a synchronous throw into
// a rejected promise.
template <typename F>
Napi::Value RejectOnThrow(const Napi::CallbackInfo& info, F body) {
  try {
    return body();
  } catch (const Napi::Error& e) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(info.Env());
    d.Reject(e.Value());
    return d.Promise();
  }
}

class FallocateWorker final : public PromiseWorker {
 public:
  FallocateWorker(Napi::Env env, int fd, const FallocMode& mode, int64_t offset, int64_t length)
      : PromiseWorker(env, "rewind:fallocate", std::string("fallocate(") + mode.name + ")", "fallocate"),
        fd_(fd), mode_(mode.flags), offset_(offset), length_(length) {}

 protected:
  void Execute() override {
    if (DoFallocate(fd_, mode_, offset_, length_) < 0) err_ = errno;
  }

 private:
  int fd_;
  int mode_;
  int64_t offset_;
  int64_t length_;
};

class FdatasyncWorker final : public PromiseWorker {
 public:
  FdatasyncWorker(Napi::Env env, int fd)
      : PromiseWorker(env, "rewind:fdatasync", "fdatasync", "fdatasync"), fd_(fd) {}

 protected:
  void Execute() override {
    if (DoFdatasync(fd_) < 0) err_ = errno;
  }

 private:
  int fd_;
};

// Walks SEEK_DATA/SEEK_HOLE from `offset`, producing consecutive extents
// (length, isData) that cover at least [offset, min(offset+length, limit)),
// clamped to `limit`, at most `max` of them.
class MapExtentsWorker final : public PromiseWorker {
 public:
  MapExtentsWorker(Napi::Env env, int fd, int64_t offset, int64_t length, int64_t limit, int64_t max)
      : PromiseWorker(env, "rewind:mapExtents", "mapExtents", "lseek"),
        fd_(fd), offset_(offset), length_(length), limit_(limit), max_(max) {}

 protected:
  void Execute() override {
    int64_t end = std::min(offset_ + length_, limit_);
    int64_t pos = offset_;
    int retries = 0;
    while (pos < end && static_cast<int64_t>(out_.size() / 2) < max_) {
      int64_t d = DoSeek(fd_, pos, true);
      if (d < 0) {
        int e = errno;
        if (e == ENXIO) {  // no data at or after pos: a hole up to the limit
          Push(limit_ - pos, false);
          return;
        }
        if (e == EINVAL || e == EOPNOTSUPP || e == ENOSYS) {  // no sparse support: all data
          Push(limit_ - pos, true);
          return;
        }
        err_ = e;
        return;
      }
      if (d > pos) {
        int64_t hole_end = std::min(d, limit_);
        Push(hole_end - pos, false);
        pos = hole_end;
        continue;
      }
      int64_t h = DoSeek(fd_, pos, false);
      if (h < 0) {
        int e = errno;
        if (e == ENXIO) {  // truncated under us
          Push(limit_ - pos, false);
          return;
        }
        err_ = e;
        return;
      }
      if (h <= pos) {  // raced with a concurrent punch/truncate; look again
        if (++retries > 64) {
          err_ = EAGAIN;
          return;
        }
        continue;
      }
      int64_t data_end = std::min(h, limit_);
      Push(data_end - pos, true);
      pos = data_end;
    }
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Float64Array a = Napi::Float64Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), a.Data());
    return a;
  }

 private:
  void Push(int64_t len, bool data) {
    if (len <= 0) return;
    size_t n = out_.size();
    if (n >= 2 && (out_[n - 1] != 0) == data) {
      out_[n - 2] += static_cast<double>(len);
      return;
    }
    out_.push_back(static_cast<double>(len));
    out_.push_back(data ? 1 : 0);
  }

  int fd_;
  int64_t offset_;
  int64_t length_;
  int64_t limit_;
  int64_t max_;
  std::vector<double> out_;
};

// ---------------------------------------------------------------------------
// Exported functions.

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  return RejectOnThrow(info, [&]() -> Napi::Value {
    int fd = ArgFd(info, 0);
    const FallocMode& mode = ArgMode(info, 1);
    int64_t offset = ArgOffset(info, 2, "offset");
    int64_t length = ArgOffset(info, 3, "length");
    auto* w = new FallocateWorker(info.Env(), fd, mode, offset, length);
    return w->Start();
  });
}

Napi::Value FallocateSync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  const FallocMode& mode = ArgMode(info, 1);
  int64_t offset = ArgOffset(info, 2, "offset");
  int64_t length = ArgOffset(info, 3, "length");
  if (DoFallocate(fd, mode.flags, offset, length) < 0)
    throw ErrnoError(info.Env(), errno, std::string("fallocate(") + mode.name + ")", "fallocate");
  return info.Env().Undefined();
}

Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
  return RejectOnThrow(info, [&]() -> Napi::Value {
    int fd = ArgFd(info, 0);
    auto* w = new FdatasyncWorker(info.Env(), fd);
    return w->Start();
  });
}

Napi::Value FdatasyncSync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (DoFdatasync(fd) < 0) throw ErrnoError(info.Env(), errno, "fdatasync", "fdatasync");
  return info.Env().Undefined();
}

Napi::Value Seek(const Napi::CallbackInfo& info, bool data) {
  int fd = ArgFd(info, 0);
  int64_t offset = ArgOffset(info, 1, "offset");
  int64_t r = DoSeek(fd, offset, data);
  if (r < 0) {
    int e = errno;
    if (e == ENXIO) return Napi::Number::New(info.Env(), -1);
    throw ErrnoError(info.Env(), e, data ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)", "lseek");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

Napi::Value SeekData(const Napi::CallbackInfo& info) { return Seek(info, true); }
Napi::Value SeekHole(const Napi::CallbackInfo& info) { return Seek(info, false); }

Napi::Value MapExtents(const Napi::CallbackInfo& info) {
  return RejectOnThrow(info, [&]() -> Napi::Value {
    int fd = ArgFd(info, 0);
    int64_t offset = ArgOffset(info, 1, "offset");
    int64_t length = ArgOffset(info, 2, "length");
    int64_t limit = ArgOffset(info, 3, "limit");
    int64_t max = ArgOffset(info, 4, "maxExtents");
    if (max < 1) throw Napi::RangeError::New(info.Env(), "maxExtents must be >= 1");
    auto* w = new MapExtentsWorker(info.Env(), fd, offset, length, limit, max);
    return w->Start();
  });
}

Napi::Value BlockDeviceSize(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
#ifdef __linux__
  struct stat st;
  if (IsBlockDevice(fd, &st) < 0) throw ErrnoError(info.Env(), errno, "blockDeviceSize", "ioctl");
  uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) < 0)
    throw ErrnoError(info.Env(), errno, "ioctl(BLKGETSIZE64)", "ioctl");
  return Napi::Number::New(info.Env(), static_cast<double>(size));
#else
  throw ErrnoError(info.Env(), ENOSYS, "blockDeviceSize", "ioctl");
#endif
}

Napi::Value BlockDeviceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
#ifdef __linux__
  struct stat st;
  if (IsBlockDevice(fd, &st) < 0) throw ErrnoError(env, errno, "blockDeviceInfo", "ioctl");
  uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) < 0) throw ErrnoError(env, errno, "ioctl(BLKGETSIZE64)", "ioctl");
  int logical = 512;
  if (::ioctl(fd, BLKSSZGET, &logical) < 0) throw ErrnoError(env, errno, "ioctl(BLKSSZGET)", "ioctl");
  unsigned int physical = 0;
  if (::ioctl(fd, BLKPBSZGET, &physical) < 0) physical = static_cast<unsigned int>(logical);
  Napi::Object o = Napi::Object::New(env);
  o.Set("size", Napi::Number::New(env, static_cast<double>(size)));
  o.Set("logicalSectorSize", Napi::Number::New(env, logical));
  o.Set("physicalSectorSize", Napi::Number::New(env, physical));
  o.Set("major", Napi::Number::New(env, major(st.st_rdev)));
  o.Set("minor", Napi::Number::New(env, minor(st.st_rdev)));
  return o;
#else
  throw ErrnoError(env, ENOSYS, "blockDeviceInfo", "ioctl");
#endif
}

Napi::Value FadviseWillNeed(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int64_t offset = ArgOffset(info, 1, "offset");
  int64_t length = ArgOffset(info, 2, "length");
#ifdef POSIX_FADV_WILLNEED
  int r = ::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_WILLNEED);
  if (r != 0) throw ErrnoError(info.Env(), r, "posix_fadvise(WILLNEED)", "posix_fadvise");
#endif
  return info.Env().Undefined();
}

// Readahead off for this open file: sorted scattered small reads (a
// container's before-images) otherwise ramp the readahead window up and
// fill large folios, zeroing whole holes for a 4 KiB read (20x slower here).
Napi::Value FadviseRandom(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
#ifdef POSIX_FADV_RANDOM
  int r = ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  if (r != 0) throw ErrnoError(info.Env(), r, "posix_fadvise(RANDOM)", "posix_fadvise");
#endif
  return info.Env().Undefined();
}

// Positioned I/O that refuses to block: RWF_NOWAIT. Returns the byte count,
// -1 when the kernel reports EAGAIN (would block), or -2 when it does not
// support RWF_NOWAIT for this file (EOPNOTSUPP: e.g. buffered writes on
// ext4), so the caller falls back to the threadpool (and stops trying on
// -2). Other errors throw.
Napi::Value NoWaitIo(const Napi::CallbackInfo& info, bool write) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "buffer must be a Buffer");
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  int64_t bufOff = ArgOffset(info, 2, "bufferOffset");
  int64_t len = ArgOffset(info, 3, "length");
  int64_t pos = ArgOffset(info, 4, "position");
  if (bufOff + len > static_cast<int64_t>(buf.Length()))
    throw Napi::RangeError::New(env, "range exceeds the buffer");
#if defined(__linux__) && defined(RWF_NOWAIT)
  struct iovec iov;
  iov.iov_base = buf.Data() + bufOff;
  iov.iov_len = static_cast<size_t>(len);
  ssize_t r;
  do {
    r = write ? ::pwritev2(fd, &iov, 1, static_cast<off_t>(pos), RWF_NOWAIT)
              : ::preadv2(fd, &iov, 1, static_cast<off_t>(pos), RWF_NOWAIT);
  } while (r < 0 && errno == EINTR);
  if (r >= 0) return Napi::Number::New(env, static_cast<double>(r));
  int e = errno;
  if (e == EAGAIN) return Napi::Number::New(env, -1);
  if (e == EOPNOTSUPP) return Napi::Number::New(env, -2);
  throw ErrnoError(env, e, write ? "pwritev2(RWF_NOWAIT)" : "preadv2(RWF_NOWAIT)", write ? "pwritev2" : "preadv2");
#else
  return Napi::Number::New(env, -2);
#endif
}

Napi::Value PreadNoWait(const Napi::CallbackInfo& info) { return NoWaitIo(info, false); }
Napi::Value PwriteNoWait(const Napi::CallbackInfo& info) { return NoWaitIo(info, true); }

// getsockopt(SO_PEERCRED) on a connected Unix socket: the pid, uid and gid
// of the peer process as of connect(). Throws ENOTSOCK etc. on failure.
Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
#if defined(__linux__) && defined(SO_PEERCRED)
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    throw ErrnoError(env, errno, "getsockopt(SO_PEERCRED)", "getsockopt");
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
#else
  throw ErrnoError(env, ENOSYS, "peerCredentials", "getsockopt");
#endif
}

// A zero-filled Buffer whose memory starts at a multiple of `alignment` (a
// power of two, at least sizeof(void*)): what O_DIRECT I/O needs. Freed
// when the Buffer is collected.
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t size = ArgOffset(info, 0, "size");
  int64_t align = ArgOffset(info, 1, "alignment");
  if (size <= 0 || size > (int64_t(1) << 31))
    throw Napi::RangeError::New(env, "size must be between 1 byte and 2 GiB");
  if (align < static_cast<int64_t>(sizeof(void*)) || (align & (align - 1)) != 0 || align > (1 << 20))
    throw Napi::RangeError::New(env, "alignment must be a power of two between 8 and 1 MiB");
  void* p = nullptr;
  int rc = ::posix_memalign(&p, static_cast<size_t>(align), static_cast<size_t>(size));
  if (rc != 0) throw ErrnoError(env, rc, "posix_memalign", "posix_memalign");
  ::memset(p, 0, static_cast<size_t>(size));
  // Tell V8 about the memory so that garbage collection weighs it.
  Napi::MemoryManagement::AdjustExternalMemory(env, size);
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), static_cast<size_t>(size),
                                    [size](Napi::Env fenv, uint8_t* data) {
                                      ::free(data);
                                      Napi::MemoryManagement::AdjustExternalMemory(fenv, -size);
                                    });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("fallocateSync", Napi::Function::New(env, FallocateSync, "fallocateSync"));
  exports.Set("fdatasync", Napi::Function::New(env, Fdatasync, "fdatasync"));
  exports.Set("fdatasyncSync", Napi::Function::New(env, FdatasyncSync, "fdatasyncSync"));
  exports.Set("seekData", Napi::Function::New(env, SeekData, "seekData"));
  exports.Set("seekHole", Napi::Function::New(env, SeekHole, "seekHole"));
  exports.Set("mapExtents", Napi::Function::New(env, MapExtents, "mapExtents"));
  exports.Set("blockDeviceSize", Napi::Function::New(env, BlockDeviceSize, "blockDeviceSize"));
  exports.Set("blockDeviceInfo", Napi::Function::New(env, BlockDeviceInfo, "blockDeviceInfo"));
  exports.Set("fadviseWillNeed", Napi::Function::New(env, FadviseWillNeed, "fadviseWillNeed"));
  exports.Set("fadviseRandom", Napi::Function::New(env, FadviseRandom, "fadviseRandom"));
  exports.Set("preadNoWait", Napi::Function::New(env, PreadNoWait, "preadNoWait"));
  exports.Set("pwriteNoWait", Napi::Function::New(env, PwriteNoWait, "pwriteNoWait"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer, "alignedBuffer"));
  exports.Set("linux", Napi::Boolean::New(env, kLinux));
  RegisterZstd(env, exports);
  RegisterDigest(env, exports);
  RegisterBackground(env, exports);
  InitIoRing(env, exports);
  return exports;
}

}  // namespace
}  // namespace rwnative

static Napi::Object InitRewindNative(Napi::Env env, Napi::Object exports) {
  return rwnative::Init(env, exports);
}

NODE_API_MODULE(rewind_native, InitRewindNative)
