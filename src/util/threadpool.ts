/**
 * Raises libuv's thread pool size for the daemon.
 *
 * Every async fs call (pread/pwrite/fsync on volume images) runs on libuv's
 * thread pool, 4 threads by default, which caps the daemon at four
 * concurrent disk I/Os. libuv reads UV_THREADPOOL_SIZE from the environment
 * once, when the pool starts on its first use, so assigning process.env
 * (which calls setenv(3) on the main thread) works as long as it happens
 * before any async fs/dns/crypto/zlib work. This module does exactly that and
 * nothing else; src/cli/main.ts imports it first, before commander, pino or
 * lmdb are loaded. A value set by the user is left alone.
 *
 * (The alternative, re-exec'ing node with the variable set, costs a second
 * process start and complicates signals and pid files; it is not needed.)
 */
export const DEFAULT_THREADPOOL_SIZE = 16;

if (process.env.UV_THREADPOOL_SIZE === undefined || process.env.UV_THREADPOOL_SIZE === '') {
  process.env.UV_THREADPOOL_SIZE = String(DEFAULT_THREADPOOL_SIZE);
}

export function threadpoolSize(): number {
  return Number(process.env.UV_THREADPOOL_SIZE) || 4;
}
