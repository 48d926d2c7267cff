// Background work in the libuv threadpool: the archive's hashing and
// compression run at a lower CPU priority (nice) than production I/O. A
// threadpool thread takes the background nice level for one job and
// returns to its own level after it, so the journal's and the manager's
// file operations on the same thread keep theirs. On an idle machine the
// job runs at full speed; under load it yields.
#pragma once

#include <napi.h>

namespace rwnative {

// Lowers the calling thread to the background level for its lifetime.
class BackgroundScope {
 public:
  BackgroundScope();
  ~BackgroundScope();
  BackgroundScope(const BackgroundScope&) = delete;
  BackgroundScope& operator=(const BackgroundScope&) = delete;

 private:
  int tid_ = 0;
  int old_ = 0;
  bool set_ = false;
};

// Adds setBackgroundNice(n) -> the level in effect (0 when a thread could
// not return to its level afterwards, e.g. without CAP_SYS_NICE).
void RegisterBackground(Napi::Env env, Napi::Object exports);

}  // namespace rwnative
