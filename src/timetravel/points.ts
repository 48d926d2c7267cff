/**
 * Points as users name them (@seq:N, @txn:N, times, latest, markers),
 * resolved against a volume's history and journal, and described in the
 * shape every command answers with (PointInfo).
 */
import { describeWrite, parsePoint, type PointSpec, type ResolvedPoint } from './point';
import { parseNearest, pointText } from './point-gaps';
import { resolveForImage, resolveForQuery, type PendingPoint } from './resolver';
import type { PointInfo, TimeTravelHost } from './api';
import type { VolumeContext } from './ports';
import type { MarkerStore } from './store';

export class PointService {
  constructor(
    private readonly host: TimeTravelHost,
    private readonly markers: MarkerStore,
  ) {}

  markerLookup(volume: string): (name: string) => { seq: number } | null {
    let group: string;
    try {
      group = this.host.context(volume).group;
    } catch {
      return () => null;
    }
    return (name) => {
      const m = this.markers.marker(group, name);
      return m ? { seq: m.seq } : null;
    };
  }

  context(volume: string): VolumeContext {
    return this.host.context(volume);
  }

  specOf(ctx: VolumeContext, at: unknown): PointSpec {
    const spec = parsePoint(at);
    if (spec.kind !== 'marker') return spec;
    const m = this.markers.marker(ctx.group, spec.name);
    return m ? { kind: 'seq', seq: m.seq, text: spec.text } : spec;
  }

  /**
   * Resolves a point of a volume for a command that reads the image there.
   * A point past what the manager has applied (the newest writes, "latest",
   * a recent time) first seals and waits for the manager to catch up. A
   * point where history has none is refused naming the nearest valid
   * points, unless `nearest` asks for one of them (the info says so).
   */
  async resolve(
    volume: string,
    at: unknown,
    opts: { nearest?: unknown } = {},
  ): Promise<{ point: ResolvedPoint; info: PointInfo; ctx: VolumeContext }> {
    const nearest = parseNearest(opts.nearest);
    const ctx = this.host.context(volume);
    const point = await resolveForImage(ctx, this.specOf(ctx, at), this.markerLookup(volume), nearest);
    return { point, info: this.pointInfo(ctx.group, point), ctx };
  }

  /** `rewind point`: which write a point names. Never seals: writes not committed yet are read from the journal. */
  async resolveInfo(volume: string, at: unknown, opts: { nearest?: unknown } = {}): Promise<PointInfo> {
    const nearest = parseNearest(opts.nearest);
    const ctx = this.host.context(volume);
    return this.pointInfo(ctx.group, await resolveForQuery(ctx, this.specOf(ctx, at), this.markerLookup(volume), nearest));
  }

  /** A view's info as made at a point the user asked for by --nearest: it says so. */
  withSubstitute<T extends { point: PointInfo; group: string }>(v: T, p: ResolvedPoint): T {
    return p.substitute ? { ...v, point: this.pointInfo(v.group, p) } : v;
  }

  pointInfo(group: string, p: ResolvedPoint | PendingPoint): PointInfo {
    const name = (id: number): string => this.host.volumeName(group, id);
    const out: PointInfo = {
      seq: p.seq,
      time: new Date(p.time).toISOString(),
      txn: p.txn,
      write: { ...p.write, volume: name(p.write.volumeId) },
      description: describeWrite(p.write, name),
    };
    if ('pending' in p) out.pending = true;
    if (p.substitute) {
      const s = p.substitute;
      out.substituted = {
        asked: s.asked,
        reason: s.why,
        nearest: s.nearest,
        note: `${s.asked} ${s.why}; using the nearest valid point ${s.nearest} it, ${pointText(p.seq, p.time)}`,
      };
    }
    return out;
  }
}
