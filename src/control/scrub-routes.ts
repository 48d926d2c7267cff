/**
 * Control routes and metrics of the scrub (daemon/scrub.ts):
 *
 *   GET  /v1/scrub                       schedule, each group's last pass and running one, damage found
 *   POST /v1/scrub {target?, wait?}      scrub a volume's group (or a group; all without target) now;
 *                                        waits for the reports unless wait is false (202)
 */
import type * as http from 'node:http';
import * as client from 'prom-client';
import type { ScrubService } from '../daemon/scrub';
import { HttpError, allow, readJsonObject, sendJson } from '../util/http';

export async function routeScrub(
  scrub: ScrubService,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  method: string,
  p: string,
): Promise<boolean> {
  if (p !== '/v1/scrub') return false;
  allow(method, ['GET', 'HEAD', 'POST']);
  if (method !== 'POST') {
    sendJson(res, 200, scrub.status());
    return true;
  }
  const body = await readJsonObject(req);
  for (const k of Object.keys(body))
    if (k !== 'target' && k !== 'wait') throw new HttpError(400, `unknown field "${k}" (expected target, wait)`);
  if (body.target !== undefined && typeof body.target !== 'string') throw new HttpError(400, 'target must be a volume or group name');
  const group = body.target === undefined ? undefined : scrub.groupOf(body.target);
  const reports = scrub.run(group);
  if (body.wait === false) {
    reports.catch(() => undefined);
    sendJson(res, 202, { started: group ?? 'all' });
    return true;
  }
  sendJson(res, 200, { reports: await reports });
  return true;
}

/** rewind_scrub_* metrics, per group. */
export function scrubMetrics(reg: client.Registry, scrub: ScrubService): void {
  const gauge = (name: string, help: string, value: (g: ReturnType<ScrubService['status']>['groups'][number]) => number | null) =>
    new client.Gauge({
      name,
      help,
      labelNames: ['group'],
      registers: [reg],
      collect() {
        this.reset();
        for (const g of scrub.status().groups) {
          const v = value(g);
          if (v !== null) this.set({ group: g.group }, v);
        }
      },
    });
  gauge('rewind_scrub_running', 'A scrub pass is running over the group (1) or not (0)', (g) => (g.running ? 1 : 0));
  gauge(
    'rewind_scrub_damage_marks',
    'Damaged containers and replica block ranges known (reads needing them are refused)',
    (g) => g.damage.length,
  );
  gauge('rewind_scrub_damaged_replica_blocks', 'Replica blocks a scrub found damaged', (g) =>
    g.damage.filter((d) => d.kind === 'replica').reduce((a, d) => a + (d.blocks?.length ?? 0), 0),
  );
  gauge('rewind_scrub_last_finish_timestamp_seconds', 'When the last scrub pass of the group finished', (g) =>
    g.last?.finished ? Date.parse(g.last.finished) / 1000 : null,
  );
  gauge('rewind_scrub_last_bytes', 'Bytes the last scrub pass read', (g) => g.last?.bytesRead ?? null);
  gauge('rewind_scrub_last_bytes_per_second', 'Average read rate of the last scrub pass', (g) => g.last?.bytesPerSecond ?? null);
  gauge('rewind_scrub_last_errors', 'Damage the last scrub pass found (containers + replica blocks)', (g) =>
    g.last ? g.last.containerErrors + g.last.replicaBlockErrors : null,
  );
  let last = 0;
  new client.Counter({
    name: 'rewind_scrub_read_bytes_total',
    help: 'Bytes read by scrub passes since the daemon started',
    registers: [reg],
    collect() {
      const now = scrub.status().bytesRead;
      if (now > last) this.inc(now - last);
      last = now;
    },
  });
}
