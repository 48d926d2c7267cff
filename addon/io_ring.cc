// IoRing: batched file I/O through io_uring, completed on the event loop.
//
//   const r = new IoRing(entries, onComplete)
//   r.read(id, fd, buf, bufOffset, length, position)    -> bool (false: the
//   r.write(id, fd, buf, bufOffset, length, position)       submission queue is
//   r.writev(id, fd, [buf, ...], position)                 full: submit, retry)
//   r.fdatasync(id, fd)
//   r.submit()                                          -> number submitted
//   r.close()
//   onComplete(Float64Array [id, result, id, result, ...])  result >= 0 bytes,
//                                                           < 0 a negated errno
//
// Why: a request through libuv's threadpool costs a thread hand-off and a
// JS callback each; here every request queued in one tick goes to the
// kernel in one io_uring_enter, and every completion that has arrived comes
// back in one callback. The kernel signals completions on an eventfd that
// libuv polls, so no thread of ours runs and nothing blocks the loop.
//
// Buffers: the caller keeps each Buffer alive until its completion (the JS
// wrapper holds it); only its address is given to the kernel. writev's iovec
// array lives here until the completion.

#include <napi.h>
#include <uv.h>

#ifdef REWIND_HAVE_URING
#include <liburing.h>
#include <sys/eventfd.h>
#endif

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <unordered_map>
#include <vector>

#include "errors.h"

namespace rwnative {
namespace {

#ifdef REWIND_HAVE_URING

class IoRing : public Napi::ObjectWrap<IoRing> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "IoRing",
                       {InstanceMethod("read", &IoRing::Read), InstanceMethod("write", &IoRing::Write),
                        InstanceMethod("writev", &IoRing::Writev), InstanceMethod("fdatasync", &IoRing::Fdatasync),
                        InstanceMethod("submit", &IoRing::Submit), InstanceMethod("close", &IoRing::Close)});
  }

  explicit IoRing(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IoRing>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction())
      throw Napi::TypeError::New(env, "new IoRing(entries, onComplete)");
    unsigned entries = info[0].As<Napi::Number>().Uint32Value();
    if (entries < 8 || entries > 32768) throw Napi::RangeError::New(env, "entries must be in 8..32768");
    int r = io_uring_queue_init(entries, &ring_, 0);
    if (r < 0) throw ErrnoError(env, -r, "io_uring_queue_init", "io_uring_setup");
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) {
      int e = errno;
      io_uring_queue_exit(&ring_);
      throw ErrnoError(env, e, "eventfd", "eventfd");
    }
    r = io_uring_register_eventfd(&ring_, efd_);
    if (r < 0) {
      ::close(efd_);
      io_uring_queue_exit(&ring_);
      throw ErrnoError(env, -r, "io_uring_register_eventfd", "io_uring_register");
    }
    onComplete_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    uv_poll_init(loop, poll_, efd_);
    poll_->data = this;
    uv_poll_start(poll_, UV_READABLE, &IoRing::OnReadable);
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));  // only pending I/O keeps the loop alive
    open_ = true;
  }

  ~IoRing() override { Shutdown(); }

 private:
  struct io_uring ring_;
  int efd_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference onComplete_;
  bool open_ = false;
  uint64_t inflight_ = 0;
  // writev iovec arrays, by id, until their completion.
  std::unordered_map<uint64_t, std::vector<struct iovec>> iovecs_;

  static uint64_t Id(const Napi::Value& v) {
    double d = v.As<Napi::Number>().DoubleValue();
    return static_cast<uint64_t>(d);
  }

  struct io_uring_sqe* Sqe(Napi::Env env) {
    if (!open_) throw Napi::Error::New(env, "IoRing is closed");
    return io_uring_get_sqe(&ring_);
  }

  void Queued() {
    if (inflight_++ == 0) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  // read/write(id, fd, buf, bufOffset, length, position)
  Napi::Value Rw(const Napi::CallbackInfo& info, bool write) {
    Napi::Env env = info.Env();
    if (info.Length() < 6 || !info[2].IsBuffer()) throw Napi::TypeError::New(env, "(id, fd, buffer, offset, length, position)");
    auto buf = info[2].As<Napi::Buffer<uint8_t>>();
    size_t off = info[3].As<Napi::Number>().Int64Value();
    size_t len = info[4].As<Napi::Number>().Int64Value();
    int64_t pos = info[5].As<Napi::Number>().Int64Value();
    if (off > buf.Length() || len > buf.Length() - off || pos < 0) throw Napi::RangeError::New(env, "range exceeds the buffer");
    struct io_uring_sqe* sqe = Sqe(env);
    if (!sqe) return Napi::Boolean::New(env, false);
    int fd = info[1].As<Napi::Number>().Int32Value();
    if (write)
      io_uring_prep_write(sqe, fd, buf.Data() + off, static_cast<unsigned>(len), static_cast<uint64_t>(pos));
    else
      io_uring_prep_read(sqe, fd, buf.Data() + off, static_cast<unsigned>(len), static_cast<uint64_t>(pos));
    io_uring_sqe_set_data64(sqe, Id(info[0]));
    Queued();
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Read(const Napi::CallbackInfo& info) { return Rw(info, false); }
  Napi::Value Write(const Napi::CallbackInfo& info) { return Rw(info, true); }

  // writev(id, fd, buffers[], position)
  Napi::Value Writev(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[2].IsArray()) throw Napi::TypeError::New(env, "(id, fd, buffers, position)");
    Napi::Array bufs = info[2].As<Napi::Array>();
    int64_t pos = info[3].As<Napi::Number>().Int64Value();
    if (pos < 0) throw Napi::RangeError::New(env, "negative position");
    std::vector<struct iovec> iov(bufs.Length());
    for (uint32_t i = 0; i < bufs.Length(); i++) {
      Napi::Value v = bufs[i];
      if (!v.IsBuffer()) throw Napi::TypeError::New(env, "buffers must be Buffers");
      auto b = v.As<Napi::Buffer<uint8_t>>();
      iov[i].iov_base = b.Data();
      iov[i].iov_len = b.Length();
    }
    struct io_uring_sqe* sqe = Sqe(env);
    if (!sqe) return Napi::Boolean::New(env, false);
    uint64_t id = Id(info[0]);
    auto& stored = iovecs_[id];
    stored = std::move(iov);
    io_uring_prep_writev(sqe, info[1].As<Napi::Number>().Int32Value(), stored.data(), static_cast<unsigned>(stored.size()),
                         static_cast<uint64_t>(pos));
    io_uring_sqe_set_data64(sqe, id);
    Queued();
    return Napi::Boolean::New(env, true);
  }

  // fdatasync(id, fd)
  Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct io_uring_sqe* sqe = Sqe(env);
    if (!sqe) return Napi::Boolean::New(env, false);
    io_uring_prep_fsync(sqe, info[1].As<Napi::Number>().Int32Value(), IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, Id(info[0]));
    Queued();
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!open_) return Napi::Number::New(env, 0);
    int r;
    do {
      r = io_uring_submit(&ring_);
    } while (r == -EINTR);
    if (r < 0) throw ErrnoError(env, -r, "io_uring_submit", "io_uring_enter");
    return Napi::Number::New(env, r);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    if (!open_) return;
    open_ = false;
    // Wait for what the kernel still holds: its buffers are ours until then.
    while (inflight_ > 0) {
      struct io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
      iovecs_.erase(io_uring_cqe_get_data64(cqe));
      io_uring_cqe_seen(&ring_, cqe);
      inflight_--;
    }
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    io_uring_unregister_eventfd(&ring_);
    ::close(efd_);
    io_uring_queue_exit(&ring_);
  }

  static void OnReadable(uv_poll_t* handle, int status, int events) {
    static_cast<IoRing*>(handle->data)->Drain();
  }

  // Every completion that has arrived, to JS in one call.
  void Drain() {
    uint64_t counter;
    while (::read(efd_, &counter, sizeof counter) > 0) {
    }
    if (!open_) return;
    std::vector<double> out;
    struct io_uring_cqe* cqes[256];
    for (;;) {
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
      if (n == 0) break;
      for (unsigned i = 0; i < n; i++) {
        uint64_t id = io_uring_cqe_get_data64(cqes[i]);
        out.push_back(static_cast<double>(id));
        out.push_back(static_cast<double>(cqes[i]->res));
        if (!iovecs_.empty()) iovecs_.erase(id);
      }
      io_uring_cq_advance(&ring_, n);
      inflight_ -= n;
    }
    if (inflight_ == 0 && poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    if (out.empty()) return;
    Napi::Env env = onComplete_.Env();
    Napi::HandleScope scope(env);
    Napi::Float64Array arr = Napi::Float64Array::New(env, out.size());
    memcpy(arr.Data(), out.data(), out.size() * sizeof(double));
    // MakeCallback: promises resolved in JS run their reactions afterwards.
    // The JS side never throws here; if it did, it is an uncaught exception.
    try {
      onComplete_.MakeCallback(env.Global(), {arr});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
  }
};

#endif  // REWIND_HAVE_URING

}  // namespace

void InitIoRing(Napi::Env env, Napi::Object exports) {
#ifdef REWIND_HAVE_URING
  exports.Set("IoRing", IoRing::Define(env));
#else
  (void)env;
  (void)exports;
#endif
}

}  // namespace rwnative
