/** Small helpers shared by the time-travel services: view records and the pins of points. */
import { UserError } from '../util/errors';
import { AclError, parseAcl } from '../access/acl';
import type { ResolvedPoint } from './point';
import type { HistoryPort, VolumeContext } from './ports';
import type { ViewRecord } from './store';

/** The point without how it was chosen: that is told once, when a view is made; records keep the point. */
export function bare(p: ResolvedPoint): ResolvedPoint {
  const { substitute: _s, ...rest } = p;
  return rest;
}

/** A new view record of `volume` at `point` (no layers, not read-only, unless `extra` says so). */
export function newRecord(
  kind: ViewRecord['kind'],
  name: string,
  volume: string,
  ctx: VolumeContext,
  p: ResolvedPoint,
  extra: Partial<ViewRecord>,
): ViewRecord {
  const point = bare(p);
  if (extra.from) extra = { ...extra, from: bare(extra.from) };
  return {
    name,
    kind,
    volume,
    group: ctx.group,
    volumeId: ctx.volumeId,
    size: ctx.size,
    point,
    parent: null,
    layers: [],
    readOnly: false,
    created: new Date().toISOString(),
    steps: 0,
    ...extra,
  };
}

export function viewAcl(raw: unknown): string[] | undefined {
  try {
    return parseAcl(raw);
  } catch (err) {
    if (err instanceof AclError) throw new UserError('invalid', err.message);
    throw err;
  }
}

/** A view at `p` reads T_k onward (and AILFC_k for an overlay). */
export function pinFrom(p: ResolvedPoint): number {
  return p.overlay ?? p.k;
}

/** Pins a point in its group's history (see manager/pins.ts). */
export function pinPoint(h: HistoryPort, holder: string, p: ResolvedPoint): void {
  h.pins.pin(holder, pinFrom(p), p.overlay !== null);
}
