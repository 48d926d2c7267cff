/**
 * Production restores on the manager role (the protocol is in
 * link/remote-restore.ts): the RestoreTarget of a replicated volume, and
 * the service that carries interrupted restores on once the intercept is
 * reachable again.
 */
import type { GroupHost } from '../link/group-host';
import { blockDigests, REPLICA_HASH_BYTES } from '../link/protocol';
import { RemoteProduction } from '../link/remote-restore';
import type { LinkServer } from '../link/server';
import type { RestoreTarget } from '../timetravel/ports';
import type { TimeTravel, TimeTravelHost } from '../timetravel/service';

/**
 * Production of a replicated volume, on its intercept: time travel's
 * restore runs on the manager, which has the history, and rewrites only
 * the blocks whose digests differ from the point's.
 */
export function remoteRestoreTarget(g: GroupHost, volumeId: number): RestoreTarget {
  const prod = new RemoteProduction(g, volumeId);
  return {
    hold: async () => void (await prod.begin()),
    release: async () => void (await prod.end()),
    flush: async () => void (await prod.flush()),
    async differing(offset, want, bs) {
      const theirs = await prod.hashes(offset, want.length, bs);
      const mine = blockDigests(want, bs);
      const out: boolean[] = [];
      for (let a = 0; a < mine.length; a += REPLICA_HASH_BYTES)
        out.push(!mine.subarray(a, a + REPLICA_HASH_BYTES).equals(theirs.subarray(a, a + REPLICA_HASH_BYTES)));
      return out;
    },
    restoreWrite: (offset, data) => prod.write(offset, data, data.length),
    restoreZero: (offset, length) => prod.write(offset, null, length),
  };
}

const RETRY_FIRST_MS = 2_000;
const RETRY_MAX_MS = 60_000;

/**
 * Restores a restart of either side or a lost link interrupted run again
 * while their group's intercept is connected: at once when it connects,
 * then on a timer (a failed run backs off, 2 s doubling to 60 s), since a
 * connection may come and go while an earlier run is still failing. A
 * volume the intercept still holds with no restore left for it here (the
 * manager ended the restore but the release was lost) is released.
 */
export class RemoteRestoreResumer {
  private readonly backoff = new Map<string, { at: number; ms: number }>();
  private readonly releasing = new Set<string>();
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly srv: LinkServer,
    private readonly tt: TimeTravel,
    private readonly logger: TimeTravelHost['logger'],
  ) {
    srv.onConnected((g) => {
      for (const v of g.meta.volumes) this.backoff.delete(v.name);
      this.tick();
    });
    srv.onStatus((g) => this.releaseOrphans(g));
    this.timer = setInterval(() => this.tick(), RETRY_FIRST_MS);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
  }

  private tick(): void {
    if (this.closed) return;
    const now = Date.now();
    for (const volume of this.tt.restores.pendingRestoreVolumes()) {
      let g: GroupHost;
      try {
        g = this.srv.find(volume).g;
      } catch {
        continue;
      }
      const b = this.backoff.get(volume);
      if (!g.conn || (b && b.at > now)) continue;
      void this.resume(volume, b?.ms ?? 0);
    }
  }

  private async resume(volume: string, lastMs: number): Promise<void> {
    // Marked first, so the next tick does not start it twice (resumeRestores also skips a running one).
    const ms = Math.min(RETRY_MAX_MS, Math.max(RETRY_FIRST_MS, lastMs * 2));
    this.backoff.set(volume, { at: Number.POSITIVE_INFINITY, ms: lastMs });
    await this.tt.restores.resumeRestores((v) => v === volume);
    if (this.tt.restores.pendingRestoreVolumes().includes(volume)) this.backoff.set(volume, { at: Date.now() + ms, ms });
    else this.backoff.delete(volume);
  }

  private releaseOrphans(g: GroupHost): void {
    const held = g.intercept?.restoreHeld ?? [];
    if (!held.length || this.closed) return;
    const pending = new Set(this.tt.restores.pendingRestoreVolumes());
    for (const id of held) {
      const v = g.meta.volumes.find((x) => x.volumeId === id);
      const key = `${g.name}:${id}`;
      if (!v || pending.has(v.name) || this.releasing.has(key)) continue;
      this.releasing.add(key);
      this.logger.warn({ volume: v.name }, 'the intercept holds a volume no restore here is running: releasing it');
      new RemoteProduction(g, id, 30_000)
        .end()
        .catch((err: Error) => this.logger.warn({ volume: v.name, err: err.message }, 'could not release the volume yet'))
        .finally(() => this.releasing.delete(key));
    }
  }
}
