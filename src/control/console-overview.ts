/**
 * What the console's volumes page and its live updates show, gathered from
 * the daemon's services in one answer (instead of a request per volume per
 * field): every volume with its protection state, lag, retention policy and
 * connections; the consistency groups; snapshots and clones with their NBD
 * URIs; the jobs. Both the single-process daemon and the manager role
 * (replicated volumes, app/manager-role.ts) provide a ConsoleSource.
 */
import type { LiveState } from '../console/api';
import type { JobRegistry } from '../daemon/jobs';
import type { Protection } from '../daemon/protection';
import type { ViewInfo } from '../timetravel/api';
import { hostPort, nbdUris, type NbdEndpoints } from './endpoints';

/** A volume as the console lists it (a subset of VolumeView, plus its protection and policy). */
export interface ConsoleVolume {
  name: string;
  size: number;
  allocatedBytes: number | null;
  readOnly: boolean;
  kind: string;
  description: string;
  connections: number;
  offline: string | null;
  uris: { tcp: string | null; unix: string | null };
  protection: { group: string; volumeId: number } | null;
}

/** The protection status fields the console reads (daemon/protection.ts VolumeProtectionStatus, or the manager role's). */
export interface ConsoleProtection {
  group: string;
  state: string;
  degraded: unknown;
  appliedSeq: number;
  lastSeq: number;
  transactions: number;
  lag: { writes: number; bytes: number; seconds: number };
  dirtyRegions: number;
  lastError?: string | null;
  link?: unknown;
  resync?: unknown;
}

export interface ConsoleSource {
  role: 'single' | 'intercept' | 'manager';
  volumes(): Promise<ConsoleVolume[]>;
  /** Null when the volume is not protected; throws nothing (errors become null). */
  protection(volume: string): Promise<ConsoleProtection | null>;
  /** The group's retention policy (null: keep everything). */
  retention(volume: string): string | null;
  views(): ViewInfo[];
  uris(name: string): { tcp: string | null; unix: string | null };
  nbd: { tcp: string | null; unix: string | null };
  version: string;
}

export interface Overview {
  version: string;
  role: string;
  nbd: { tcp: string | null; unix: string | null };
  volumes: Array<ConsoleVolume & { status: ConsoleProtection | null; retention: string | null; views: number }>;
  groups: Array<{ name: string; volumes: string[]; state: string; retention: string | null; replication: unknown }>;
  views: Array<ViewInfo & { uris: { tcp: string | null; unix: string | null } }>;
  jobs: { version: number; running: number };
}

async function statusOf(src: ConsoleSource, v: ConsoleVolume): Promise<ConsoleProtection | null> {
  if (!v.protection) return null;
  try {
    return await src.protection(v.name);
  } catch {
    return null;
  }
}

export async function buildOverview(src: ConsoleSource, jobs: JobRegistry): Promise<Overview> {
  const volumes = await src.volumes();
  const views = src.views();
  const out: Overview['volumes'] = [];
  const groups = new Map<string, Overview['groups'][number]>();
  for (const v of volumes) {
    const status = await statusOf(src, v);
    let retention: string | null = null;
    if (v.protection) {
      try {
        retention = src.retention(v.name);
      } catch {
        retention = null;
      }
    }
    out.push({ ...v, status, retention, views: views.filter((x) => x.volume === v.name).length });
    if (v.protection) {
      const g = groups.get(v.protection.group) ?? {
        name: v.protection.group,
        volumes: [],
        state: status?.state ?? 'unknown',
        retention,
        replication: status?.link ?? null,
      };
      g.volumes.push(v.name);
      if (status && status.state !== 'normal') g.state = status.state;
      groups.set(g.name, g);
    }
  }
  return {
    version: src.version,
    role: src.role,
    nbd: src.nbd,
    volumes: out,
    groups: [...groups.values()],
    views: views.map((x) => ({ ...x, uris: src.uris(x.name) })),
    jobs: { version: jobs.version, running: jobs.running() },
  };
}

/** The small state pushed to open consoles every couple of seconds. */
export async function buildLiveState(src: ConsoleSource, jobs: JobRegistry): Promise<LiveState> {
  const volumes: LiveState['volumes'] = [];
  for (const v of await src.volumes()) {
    const s = await statusOf(src, v);
    volumes.push({
      name: v.name,
      connections: v.connections,
      offline: v.offline,
      protection: s && {
        state: s.state,
        lastSeq: s.lastSeq,
        appliedSeq: s.appliedSeq,
        transactions: s.transactions,
        lag: s.lag,
        dirtyRegions: s.dirtyRegions,
      },
    });
  }
  return { time: Date.now(), volumes, jobs: { version: jobs.version, running: jobs.running() } };
}

/** The console's view of this daemon (single process, or the intercept role: no local history there). */
export function daemonConsoleSource(o: {
  role: ConsoleSource['role'];
  version: string;
  endpoints: NbdEndpoints;
  volumes: () => Promise<ConsoleVolume[]>;
  protection: Protection;
  views: () => ViewInfo[];
}): ConsoleSource {
  const { tcp, unix } = o.endpoints;
  return {
    role: o.role,
    version: o.version,
    nbd: { tcp: tcp ? hostPort(tcp.host, tcp.port) : null, unix: unix ?? null },
    volumes: o.volumes,
    protection: async (n) => o.protection.status(n),
    retention: (n) => o.protection.managerOf(n).manager.retention.stored()?.text ?? null,
    views: o.views,
    uris: (n) => nbdUris(o.endpoints, n),
  };
}
