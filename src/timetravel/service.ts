/**
 * Time travel (MISSION §4, §5): snapshots, clones, stepping, markers and
 * schedules, diffs, bisect, virtual full exports and production restores
 * of protected volumes, as one service of several parts:
 *
 *   points    PointService      what a point names (points.ts)
 *   views     ViewService       snapshots, clones, diff exports (views.ts)
 *   markers   MarkerService     markers, surfacing, schedules (marking.ts)
 *   queries   HistoryQueries    diff, bisect candidates, export (queries.ts)
 *   restores  RestoreService    production restore (restore.ts)
 *
 * It reads history and the journal only through its ports (ports.ts):
 * VolumeContext gives a HistoryPort (the manager's HistoryReader), a
 * JournalPort and, where production can be rewritten, a RestoreTarget.
 * Records live in DATA_DIR/timetravel/index (store.ts).
 */
import * as path from 'node:path';
import type { TimeTravelHost } from './api';
import { HistoryQueries } from './queries';
import { MarkerService } from './marking';
import { PointService } from './points';
import { RestoreService } from './restore';
import { openStores, type TimeTravelStores } from './store';
import { ViewService } from './views';

export type { PointInfo, Progress, RestoreIntent, RestoreResult, TimeTravelHost, ViewInfo } from './api';
export type { VolumeContext } from './ports';

export class TimeTravel {
  readonly points: PointService;
  readonly views: ViewService;
  readonly markers: MarkerService;
  readonly queries: HistoryQueries;
  readonly restores: RestoreService;

  private constructor(
    private readonly stores: TimeTravelStores,
    host: TimeTravelHost,
  ) {
    // The clock of schedules and marker expiry (tests may shift it).
    const now = () => Date.now() + Number(process.env.REWIND_TEST_CLOCK_OFFSET_MS ?? 0);
    this.points = new PointService(host, stores.markers);
    this.views = new ViewService(host, stores.views, stores.markers, this.points);
    this.markers = new MarkerService(host, stores.markers, this.views, now, this.points);
    this.queries = new HistoryQueries(this.points, this.views);
    this.restores = new RestoreService(host, stores.restores, this.views, this.points);
  }

  static async open(dataDir: string, host: TimeTravelHost): Promise<TimeTravel> {
    const tt = new TimeTravel(openStores(path.join(dataDir, 'timetravel')), host);
    tt.markers.start();
    tt.views.pinAll();
    return tt;
  }

  /** A protected volume was deleted: its schedule, restore intent and markers go (all the group's if the group is gone). */
  async volumeRemoved(volume: string, group: string, groupGone: boolean): Promise<void> {
    await this.markers.volumeRemoved(volume, group, groupGone);
    await this.restores.volumeRemoved(volume);
  }

  async close(): Promise<void> {
    await this.markers.close();
    await this.views.close();
    await this.stores.close();
  }
}
