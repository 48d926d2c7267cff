#include "errors.h"

#include <errno.h>
#include <string.h>

namespace rwnative {

std::string ErrnoName(int err) {
  switch (err) {
#define REWIND_ERRNO(name) \
  case name:               \
    return #name;
    REWIND_ERRNO(EPERM)
    REWIND_ERRNO(ENOENT)
    REWIND_ERRNO(ESRCH)
    REWIND_ERRNO(EINTR)
    REWIND_ERRNO(EIO)
    REWIND_ERRNO(ENXIO)
    REWIND_ERRNO(E2BIG)
    REWIND_ERRNO(ENOEXEC)
    REWIND_ERRNO(EBADF)
    REWIND_ERRNO(ECHILD)
    REWIND_ERRNO(EAGAIN)
    REWIND_ERRNO(ENOMEM)
    REWIND_ERRNO(EACCES)
    REWIND_ERRNO(EFAULT)
    REWIND_ERRNO(EBUSY)
    REWIND_ERRNO(EEXIST)
    REWIND_ERRNO(EXDEV)
    REWIND_ERRNO(ENODEV)
    REWIND_ERRNO(ENOTDIR)
    REWIND_ERRNO(EISDIR)
    REWIND_ERRNO(EINVAL)
    REWIND_ERRNO(ENFILE)
    REWIND_ERRNO(EMFILE)
    REWIND_ERRNO(ENOTTY)
    REWIND_ERRNO(ETXTBSY)
    REWIND_ERRNO(EFBIG)
    REWIND_ERRNO(ENOSPC)
    REWIND_ERRNO(ESPIPE)
    REWIND_ERRNO(EROFS)
    REWIND_ERRNO(EMLINK)
    REWIND_ERRNO(EPIPE)
    REWIND_ERRNO(EDOM)
    REWIND_ERRNO(ERANGE)
    REWIND_ERRNO(EDEADLK)
    REWIND_ERRNO(ENAMETOOLONG)
    REWIND_ERRNO(ENOLCK)
    REWIND_ERRNO(ENOSYS)
    REWIND_ERRNO(ENOTEMPTY)
    REWIND_ERRNO(ELOOP)
    REWIND_ERRNO(EOVERFLOW)
    REWIND_ERRNO(EOPNOTSUPP)  // == ENOTSUP on Linux
    REWIND_ERRNO(ETIMEDOUT)
    REWIND_ERRNO(ESTALE)
    REWIND_ERRNO(EDQUOT)
    REWIND_ERRNO(ECANCELED)
#ifdef ENOMEDIUM
    REWIND_ERRNO(ENOMEDIUM)
#endif
#ifdef EREMOTEIO
    REWIND_ERRNO(EREMOTEIO)
#endif
#ifdef ENODATA
    REWIND_ERRNO(ENODATA)
#endif
#ifdef EBADMSG
    REWIND_ERRNO(EBADMSG)
#endif
#ifdef EUCLEAN
    REWIND_ERRNO(EUCLEAN)
#endif
#ifdef ESHUTDOWN
    REWIND_ERRNO(ESHUTDOWN)
#endif
#undef REWIND_ERRNO
    default:
      break;
  }
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* name = strerrorname_np(err)) return name;
#endif
  return "E" + std::to_string(err);
}

static std::string Describe(int err) {
  char buf[256];
  buf[0] = '\0';
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  // GNU strerror_r returns a pointer that may or may not be buf.
  const char* msg = strerror_r(err, buf, sizeof buf);
  return msg ? std::string(msg) : std::string("Unknown error");
#else
  if (strerror_r(err, buf, sizeof buf) != 0) return "Unknown error " + std::to_string(err);
  return std::string(buf);
#endif
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what,
                       const char* syscall) {
  Napi::Error e = Napi::Error::New(env, what + ": " + Describe(err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

Napi::Value RejectedPromise(Napi::Env env, const Napi::Error& e) {
  Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
  d.Reject(e.Value());
  return d.Promise();
}

}  // namespace rwnative
