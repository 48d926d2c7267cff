/**
 * The archive's share of libuv's threadpool: at most one hashing or
 * compression job per core at a time. More would not go faster, and in the
 * daemon the same threadpool serves the journal's and the manager's file
 * operations, which must not queue behind a backlog of archive work.
 */
import * as os from 'node:os';
import { Limiter } from './limiter';

const jobs = new Limiter(Math.max(1, os.availableParallelism()));

/** Runs one threadpool job of the archive under the shared bound. */
export function cpuJob<T>(fn: () => Promise<T>): Promise<T> {
  return jobs.run(1, fn);
}
