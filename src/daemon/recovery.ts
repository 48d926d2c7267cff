/**
 * Crash recovery of protected volumes after an unclean stop (run after
 * start-up, the volume offline meanwhile; see protection.ts): the manager
 * first catches up on every container that survived, then each region the
 * state map still marks dirty is compared block by block with the replica,
 * and only blocks that differ are journaled again. Where the manager cannot
 * be reached (the intercept role), every dirty region is journaled again.
 */
import * as fs from 'node:fs';
import type { ProtectedVolume, ReplicaComparer } from '../journal/protected-volume';
import { blockDigests, REPLICA_HASH_BYTES, REPLICA_HASH_MAX_RANGE } from '../link/protocol';
import type { Logger } from '../util/logger';
import type { GroupRuntime } from './group-runtime';

/** At start-up after a crash, how long the intercept role waits for its manager before re-capturing every dirty region. */
const RECOVERY_LINK_WAIT_MS = 5000;
/** ... and how long for the manager to apply what survived. */
const RECOVERY_CATCHUP_MS = 120_000;

export async function recoverGroup(
  rt: GroupRuntime,
  logger: Logger,
  done: (volume: string, ok: boolean) => void = () => undefined,
): Promise<void> {
  for (const pv of rt.pendingRecovery.splice(0)) {
    let ok = true;
    try {
      const replica = await recoveryComparer(rt, pv, logger);
      const r = await pv.resyncDirtyRegions(replica ?? undefined);
      logger.warn(
        {
          volume: pv.name,
          dirtyBytes: r.dirtyBytes,
          comparedBytes: r.compared,
          journaledBytes: r.bytes,
          ms: r.ms,
          withReplica: !!replica,
        },
        'resynced regions left dirty by an unclean stop',
      );
    } catch (err) {
      // The regions stay dirty; served, the volume could leave the replica behind production.
      ok = false;
      logger.error(
        { volume: pv.name, err: (err as Error).message },
        'crash recovery of the volume failed: it stays offline until the next start',
      );
    }
    done(pv.name, ok);
  }
  if (rt.resync && !rt.resyncStarted) {
    rt.resyncStarted = true;
    rt.resync.start();
  }
}

/**
 * After an unclean stop: once the manager has applied every surviving
 * container, the replica says what a dirty region should hold, so only
 * blocks that differ need journaling. Null when the manager cannot be
 * reached in time (the intercept role): then every dirty region is
 * journaled, as before.
 */
async function recoveryComparer(rt: GroupRuntime, pv: ProtectedVolume, logger: Logger): Promise<ReplicaComparer | null> {
  const bs = rt.record.blockSize;
  const manager = rt.manager;
  if (manager) {
    const ok = await (rt.caughtUp ??= rt.journal.catchUp().then(
      () => true,
      (err: Error) => {
        logger.warn({ group: rt.record.name, err: err.message }, 'the manager could not catch up: every dirty region is journaled again');
        return false;
      },
    ));
    if (!ok) return null;
    const file = manager.replicaPath(pv.volumeId);
    return {
      blockSize: bs,
      // Not proven equal (the replica unreadable): journal it.
      differing: (off, data) =>
        differsFromFile(file, off, data, bs).catch(() => new Array<boolean>(Math.ceil(data.length / bs)).fill(true)),
    };
  }
  const link = rt.link!;
  rt.caughtUp ??= (async () => {
    if (!(await link.waitUp(RECOVERY_LINK_WAIT_MS))) return false;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), RECOVERY_CATCHUP_MS)));
    try {
      return await Promise.race([rt.journal.catchUp().then(() => true), late]);
    } finally {
      clearTimeout(timer);
    }
  })().catch(() => false);
  if (!(await rt.caughtUp)) {
    logger.warn({ group: rt.record.name }, 'the manager is not reachable: every dirty region is journaled again');
    return null;
  }
  return {
    blockSize: bs,
    differing: async (off, data) => {
      const out: boolean[] = new Array(Math.ceil(data.length / bs)).fill(true);
      try {
        for (let p = 0; p < data.length; p += REPLICA_HASH_MAX_RANGE) {
          const piece = data.subarray(p, Math.min(p + REPLICA_HASH_MAX_RANGE, data.length));
          const theirs = await link.replicaHashes(pv.volumeId, off + p, piece.length, bs);
          const ours = blockDigests(piece, bs);
          const first = p / bs;
          for (let i = 0; i * REPLICA_HASH_BYTES < ours.length; i++) {
            const a = i * REPLICA_HASH_BYTES;
            out[first + i] =
              theirs.length < a + REPLICA_HASH_BYTES || ours.compare(theirs, a, a + REPLICA_HASH_BYTES, a, a + REPLICA_HASH_BYTES) !== 0;
          }
        }
      } catch (err) {
        // Not proven equal: journal it.
        logger.warn({ volume: pv.name, err: (err as Error).message }, 'replica hashes unavailable; re-capturing the range');
      }
      return out;
    },
  };
}

/** Per block of `data` (at `offset`): does the file hold something else there? Past its end it reads as zeroes. */
async function differsFromFile(file: string, offset: number, data: Buffer, blockSize: number): Promise<boolean[]> {
  const theirs = Buffer.alloc(data.length);
  const fh = await fs.promises.open(file, 'r');
  try {
    let done = 0;
    while (done < data.length) {
      const { bytesRead } = await fh.read(theirs, done, data.length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
  const out: boolean[] = [];
  for (let p = 0; p < data.length; p += blockSize) {
    const e = Math.min(p + blockSize, data.length);
    out.push(data.compare(theirs, p, e, p, e) !== 0);
  }
  return out;
}
