// See background.h.

#include "background.h"

#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <thread>

namespace rwnative {
namespace {

std::atomic<int> g_nice{0};

int ThreadId() { return static_cast<int>(syscall(SYS_gettid)); }

// Can a thread go down to `n` and back up? Tried on a scratch thread, so a
// failure leaves no thread of the process lowered.
bool CanReturn(int n) {
  bool ok = false;
  std::thread t([&] {
    int tid = ThreadId();
    errno = 0;
    int old = getpriority(PRIO_PROCESS, tid);
    if (old == -1 && errno != 0) return;
    if (setpriority(PRIO_PROCESS, tid, n) != 0) return;
    ok = setpriority(PRIO_PROCESS, tid, old) == 0;
  });
  t.join();
  return ok;
}

Napi::Value SetBackgroundNice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "setBackgroundNice(n)");
  int n = info[0].As<Napi::Number>().Int32Value();
  if (n < 0 || n > 19) throw Napi::RangeError::New(env, "nice level must be 0..19");
  g_nice = (n > 0 && CanReturn(n)) ? n : 0;
  return Napi::Number::New(env, g_nice.load());
}

}  // namespace

BackgroundScope::BackgroundScope() {
  int n = g_nice.load();
  if (n <= 0) return;
  tid_ = ThreadId();
  errno = 0;
  old_ = getpriority(PRIO_PROCESS, tid_);
  if (old_ == -1 && errno != 0) return;
  if (old_ >= n) return;
  set_ = setpriority(PRIO_PROCESS, tid_, n) == 0;
}

BackgroundScope::~BackgroundScope() {
  if (set_) setpriority(PRIO_PROCESS, tid_, old_);
}

void RegisterBackground(Napi::Env env, Napi::Object exports) {
  exports.Set("setBackgroundNice", Napi::Function::New(env, SetBackgroundNice, "setBackgroundNice"));
}

}  // namespace rwnative
