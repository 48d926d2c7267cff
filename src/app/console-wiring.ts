/**
 * The web console's parts as the daemon composes them: the timeline service
 * over each group's backup manager (local, or the manager role's replicas),
 * the lag sampler over the daemon's protection status, and the static files
 * (loaded only when a TCP control listener will serve them: the console is
 * off without --control).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Catalog } from '../catalog/catalog';
import { ConsoleAssets } from '../console/assets';
import { LagSampler, type LagReading } from '../console/lag-sampler';
import { TimelineService, managerHistory, type GroupHistory } from '../console/timeline';
import type { Protection } from '../daemon/protection';
import type { LinkServer } from '../link/server';
import type { TimeTravel } from '../timetravel/service';
import { UserError } from '../util/errors';
import type { Logger } from '../util/logger';

export interface ConsoleParts {
  timeline: TimelineService;
  sampler: LagSampler;
  assets: ConsoleAssets | null;
  close(): Promise<void>;
}

export function consoleParts(opts: {
  dataDir: string;
  catalog: Catalog;
  protection: Protection;
  timeTravel: TimeTravel;
  linkServer: LinkServer | null;
  /** A TCP control listener will serve the console's page. */
  served: boolean;
  logger: Logger;
}): ConsoleParts {
  const { catalog, protection, timeTravel, linkServer } = opts;
  const dir = path.join(opts.dataDir, 'console');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const sampler = new LagSampler(
    () => {
      const out: LagReading[] = [];
      for (const v of catalog.list()) {
        if (!v.protection) continue;
        try {
          const s = protection.status(v.name);
          out.push({ volume: v.name, seconds: s.lag.seconds, bytes: s.lag.bytes });
        } catch {
          // not attached yet, or being removed
        }
      }
      return out;
    },
    { file: path.join(dir, 'lag.json') },
  );
  const history = (volume: string): GroupHistory => {
    if (linkServer) {
      const { g, volumeId } = linkServer.find(volume);
      return managerHistory(
        g.manager,
        g.name,
        volumeId,
        g.meta.volumes.map((v) => v.name),
      );
    }
    const rec = catalog.get(volume);
    if (!rec) throw new UserError('not-found', `no volume named "${volume}"`);
    if (!rec.protection) throw new UserError('conflict', `volume "${volume}" is not protected: it has no history to show`);
    const { manager, group } = protection.managerOf(volume);
    return managerHistory(
      manager,
      group,
      rec.protection.volumeId,
      catalog.groupVolumes(group).map((v) => v.name),
    );
  };
  const timeline = new TimelineService(
    {
      history,
      markers: (v) => timeTravel.markers.markers(v),
      markersVersion: () => timeTravel.markers.version,
      lag: (v, from, to) => sampler.samples(v, from, to),
    },
    path.join(dir, 'timeline'),
    opts.logger,
  );
  const assets = opts.served ? ConsoleAssets.load() : null;
  sampler.start();
  if (opts.served) {
    const names = linkServer ? linkServer.volumes().map((v) => v.name) : catalog.list().map((v) => v.name);
    timeline.warm(names);
  }
  return {
    timeline,
    sampler,
    assets,
    close: async () => {
      await sampler.stop();
      await timeline.close();
    },
  };
}
