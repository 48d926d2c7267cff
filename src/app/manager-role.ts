/**
 * `rewind serve --role manager`: what the daemon serves when it holds the
 * replicated images and history of remote intercepts.
 *
 * - A TimeTravelHost over the LinkServer's groups, so snapshots, clones,
 *   exports, diffs, markers and bisect candidates work on the manager as in
 *   the single-process mode. "Catch up" asks the intercept to seal and waits
 *   for the commits (CATCHUP_REQ); with the intercept unreachable, points
 *   resolve against what is applied. Production restore runs here too:
 *   its RestoreTarget is the intercept's production over the link
 *   (link/remote-restore.ts), so it is journaled there and can be undone.
 * - Control API routes for replicated volumes: status (link, lag,
 *   degraded state reported by the intercept), log, verify (replica against
 *   production checksums from the intercept), and the time-travel routes.
 */
import type * as http from 'node:http';
import { UserError } from '../util/errors';
import type { VolumeManager } from '../daemon/volumes';
import type { JournalPosition } from '../journal/group-journal';
import type { JournalPort } from '../timetravel/ports';
import { remoteRestoreTarget } from './remote-restores';
import type { InterceptStatusMsg } from '../link/protocol';
import type { TimeTravel, TimeTravelHost, VolumeContext } from '../timetravel/service';
import { allow, HttpError, readJsonObject, sendJson } from '../util/http';
import { routeTimeTravel } from '../control/timetravel-routes';
import type { LinkServer } from '../link/server';
import type { ConsoleProtection, ConsoleSource } from '../control/console-overview';
import { hostPort, nbdUris, type NbdEndpoints } from '../control/endpoints';
import { rewindVersion } from '../util/version';

export function managerTimeTravelHost(
  srv: LinkServer,
  base: Pick<TimeTravelHost, 'volumeExists' | 'disconnect' | 'setOffline' | 'logger'>,
): TimeTravelHost {
  const ctxOf = (name: string): VolumeContext => {
    const { g, volumeId, size, volume } = srv.find(name);
    if (volume !== name) throw new UserError('invalid', `"${name}" is a group; name one of its volumes`);
    const catchUp = async () => {
      if (!g.conn) {
        base.logger.warn({ group: g.name }, 'intercept not connected: points resolve against what is applied');
        return null;
      }
      await srv.catchUp(g);
      return null;
    };
    // The intercept's journal across the link.
    const journal: JournalPort = {
      catchUp,
      async locate(find, opts) {
        if (g.conn || opts?.fresh) return srv.position(g, find);
        // Not connected: its last status report stands in (a degraded stretch it reported stays refused).
        base.logger.warn({ group: g.name }, 'intercept not connected: points resolve against what is applied and its last status');
        return { position: staleInterceptPosition(g.intercept, g.manager.status()), found: null };
      },
      get isDegraded() {
        return g.intercept?.state === 'degraded';
      },
      // A restore's writes start a transaction of their own: seal, and wait for what was sealed.
      seal: () => srv.catchUp(g),
      lastAppendedSeq: async () => (await srv.position(g)).position.seq,
    };
    return { history: g.manager.history, journal, restore: remoteRestoreTarget(g, volumeId), group: g.name, volumeId, size };
  };
  return {
    context: ctxOf,
    target: (name) => {
      const f = srv.find(name);
      if (f.volume === name) return { group: f.g.name, volume: name, ctx: ctxOf(name) };
      return { group: f.g.name, volume: null, ctx: ctxOf(f.volume) };
    },
    volumeName: (group, id) => {
      for (const v of srv.volumes()) if (v.group === group && v.volumeId === id) return v.name;
      return `volume ${id}`;
    },
    volumeExists: (n) => base.volumeExists(n) || srv.volumes().some((v) => v.name === n),
    // Not stored as an intent while the intercept is away: it would roll production back whenever it returns.
    restoreRefusal: (v) => {
      const { g } = srv.find(v);
      return g.conn
        ? null
        : `the intercept of group ${g.name} is not connected: a production restore rewrites production there; run it again once the link is up`;
    },
    disconnect: base.disconnect,
    setOffline: base.setOffline,
    logger: base.logger,
  };
}

/**
 * The intercept's position while it is not connected, from its last status
 * report: a degraded stretch it reported stays open, and anything after
 * what is known (its last report, the last write applied) is unknown.
 */
function staleInterceptPosition(ic: InterceptStatusMsg | null, applied: { lastSeq: number; lastTime: number }): JournalPosition {
  const seq = Math.max(ic?.lastAppendedSeq ?? 0, applied.lastSeq);
  const time = Math.max(ic?.time ?? 0, ic?.lastAppendedTime ?? 0, applied.lastTime);
  let open: JournalPosition['open'] = { fromSeq: seq + 1, fromTime: time + 1, state: 'unreachable' };
  if (ic?.degraded?.fromSeq !== undefined)
    open = { fromSeq: ic.degraded.fromSeq, fromTime: ic.degraded.fromTime ?? Date.parse(ic.degraded.since), state: 'degraded' };
  else if (ic?.resync) open = { fromSeq: ic.resync.fromSeq, fromTime: ic.resync.fromTime ?? 0, state: 'resync' };
  return { seq, time, committedSeq: applied.lastSeq, open };
}

/**
 * Volume-status of a replicated volume, in the shape `rewind status VOLUME`
 * prints (plus the link). The last write and the lag are asked of the
 * intercept now when it is connected (its status report may be a second
 * old); `positionFrom` says which.
 */
export async function managerVolumeStatus(srv: LinkServer, name: string): Promise<Record<string, unknown>> {
  const { g, volumeId, volume } = srv.find(name);
  const st = srv.groupStatus(g);
  const ic = st.intercept;
  const iv = ic?.volumes.find((v) => v.volumeId === volumeId);
  const now = g.conn ? await srv.position(g).catch(() => null) : null;
  if (now) {
    const ms = g.manager.status();
    st.lagWrites = Math.max(0, now.position.seq - ms.lastSeq);
    st.lagSeconds = st.lagWrites > 0 ? Math.max(0, (now.position.time - (ms.lastTime || now.position.time)) / 1000) : 0;
  }
  return {
    volume,
    group: g.name,
    volumeId,
    role: 'manager',
    state: ic ? ic.state : 'unknown',
    degraded: ic?.degraded ?? null,
    appliedSeq: st.appliedSeq,
    appliedContainer: st.appliedContainer,
    lastSeq: now?.position.seq ?? ic?.lastAppendedSeq ?? st.appliedSeq,
    positionFrom: now ? 'intercept' : ic ? 'last report' : 'none',
    active: null,
    sealedPending: [],
    lag: { writes: st.lagWrites, bytes: 0, seconds: st.lagSeconds },
    dirtyRegions: iv?.dirtyRegions ?? 0,
    regionSize: g.meta.regionSize,
    transactions: st.transactions,
    lastError: st.link.lastError ?? st.blocked?.error ?? g.manager.status().stalled?.error ?? null,
    managerStalled: g.manager.status().stalled,
    pinnedFrom: g.manager.history.pins.from(),
    link: {
      ...st.link,
      queued: st.queued,
      interceptBytesSent: ic?.bytesSent ?? null,
      interceptQueued: ic?.queued ?? null,
      poolBytes: ic?.poolBytes ?? null,
      poolLimit: ic?.poolLimit ?? null,
    },
    resync: ic?.resync ?? null,
    scrub: { last: g.manager.lastScrub() ?? null, damage: g.manager.history.damage.list() },
  };
}

/** What the web console shows on the manager: the replicated volumes, their link and lag as the intercept reports them. */
export function managerConsoleSource(srv: LinkServer, tt: TimeTravel, endpoints: NbdEndpoints): ConsoleSource {
  const { tcp, unix } = endpoints;
  return {
    role: 'manager',
    version: rewindVersion(),
    nbd: { tcp: tcp ? hostPort(tcp.host, tcp.port) : null, unix: unix ?? null },
    volumes: async () =>
      srv.volumes().map((v) => ({
        name: v.name,
        size: v.size,
        allocatedBytes: null,
        readOnly: true,
        kind: 'replica',
        description: `replica of the intercept's volume (group ${v.group})`,
        connections: 0,
        offline: null,
        uris: { tcp: null, unix: null },
        protection: { group: v.group, volumeId: v.volumeId },
      })),
    protection: async (n) => (await managerVolumeStatus(srv, n)) as unknown as ConsoleProtection,
    retention: (n) => srv.find(n).g.manager.retention.stored()?.text ?? null,
    views: () => tt.views.list(),
    uris: (n) => nbdUris(endpoints, n),
  };
}

/**
 * Control routes of the manager role, tried before the ordinary ones.
 * Returns true when the request was handled.
 */
export function managerRoutes(srv: LinkServer, tt: TimeTravel) {
  const volumesView = {
    get: (n: string) => (srv.volumes().some((v) => v.name === n) ? ({ name: n } as unknown) : undefined),
  } as unknown as VolumeManager;
  return async (req: http.IncomingMessage, res: http.ServerResponse, method: string, p: string, url: URL): Promise<boolean> => {
    if (p === '/v1/link') {
      allow(method, ['GET', 'HEAD']);
      sendJson(res, 200, { role: 'manager', ...srv.status() });
      return true;
    }
    if (p === '/v1/volumes') {
      if (method !== 'GET' && method !== 'HEAD')
        throw new HttpError(405, 'the manager role replicates volumes; create them on the intercept');
      sendJson(res, 200, {
        volumes: srv.volumes().map((v) => ({
          name: v.name,
          size: v.size,
          allocatedBytes: null,
          readOnly: true,
          kind: 'replica',
          path: v.replica,
          external: false,
          created: '',
          connections: 0,
          isDefaultExport: false,
          uris: { tcp: null, unix: null },
          protection: { group: v.group, volumeId: v.volumeId },
        })),
      });
      return true;
    }
    const m = /^\/v1\/volumes\/([^/]+)\/(status|log|verify|seal)$/.exec(p);
    if (m) {
      let name: string;
      try {
        name = decodeURIComponent(m[1]!);
      } catch {
        throw new HttpError(400, 'malformed volume name in URL');
      }
      if (!srv.volumes().some((v) => v.name === name)) return false;
      switch (m[2]) {
        case 'status':
          allow(method, ['GET', 'HEAD']);
          sendJson(res, 200, await managerVolumeStatus(srv, name));
          return true;
        case 'log': {
          allow(method, ['GET', 'HEAD']);
          const limit = Number(url.searchParams.get('limit') ?? 0);
          const all = srv.find(name).g.manager.transactions({});
          sendJson(res, 200, { transactions: limit > 0 ? all.slice(-limit) : all });
          return true;
        }
        case 'verify':
          allow(method, ['POST']);
          sendJson(res, 200, await srv.verify(name, { full: url.searchParams.get('full') === '1' }));
          return true;
        case 'seal': {
          allow(method, ['POST']);
          await readJsonObject(req).catch(() => ({}));
          const { g } = srv.find(name);
          await srv.catchUp(g);
          const st = g.manager.status();
          sendJson(res, 200, { containerId: st.lastContainer, commit: { lastSeq: st.lastSeq, blocks: 0 } });
          return true;
        }
      }
    }
    return routeTimeTravel(tt, volumesView, req, res, method, p, url);
  };
}
