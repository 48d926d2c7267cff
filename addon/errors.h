// Errno -> JS Error conversion for the rewind native addon.
#pragma once

#include <napi.h>

#include <string>

namespace rwnative {

// The symbolic name of an errno value ("EIO", "EOPNOTSUPP", ...).
// Unknown values yield "E<number>".
std::string ErrnoName(int err);

// A JS Error with message "<what>: <strerror>", `.code` the errno name,
// `.errno` the (positive) errno number and `.syscall` the system call.
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what,
                       const char* syscall);

// A promise already rejected with `e`: asynchronous functions reject
// instead of throwing, even for bad arguments.
Napi::Value RejectedPromise(Napi::Env env, const Napi::Error& e);

}  // namespace rwnative
