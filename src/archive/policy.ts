/**
 * Forgetting points by policy: tiers as for journal retention
 * (src/manager/retention-policy.ts, which this library may not import),
 * e.g. "daily:30d, weekly:26w, monthly:forever".
 *
 *   last:N          the N newest points
 *   all:AGE         every point younger than AGE
 *   hourly|daily|weekly|monthly|yearly:AGE
 *                   one point per UTC hour/day/week (from Monday)/month/year,
 *                   the newest of each, while its age is within AGE
 *   every:SPAN:AGE  one per SPAN (e.g. every:6h:14d)
 *
 * AGE and SPAN: a number and s, m, h, d, w, mo (30 d) or y (365 d); AGE
 * may be "forever". A point is judged by the first tier (in the order
 * written) whose age covers it; older than every tier, it is forgotten.
 * Policies apply per series (the group, or the volume names of a point
 * without one), and the newest point of each series is always kept, so a
 * policy never leaves a series without a base for its next archive.
 */
import { ArchiveError } from './errors';

export type ForgetTierKind = 'last' | 'all' | 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly' | 'every';

export interface ForgetTier {
  kind: ForgetTierKind;
  spanMs: number;
  maxAgeMs: number;
  count: number;
  text: string;
}

export interface PolicyPoint {
  name: string;
  series: string;
  /** Time of the point (ms). */
  time: number;
}

export interface ForgetPlan {
  keep: Array<{ name: string; reason: string }>;
  forget: string[];
}

const H = 3_600_000;
const D = 24 * H;
const UNIT: Record<string, number> = { s: 1000, m: 60_000, h: H, d: D, w: 7 * D, mo: 30 * D, y: 365 * D };
const SPAN: Record<string, number> = { hourly: H, daily: D, weekly: 7 * D, monthly: 30 * D, yearly: 365 * D };

function duration(t: string, tier: string, forever: boolean): number {
  const s = t.trim().toLowerCase();
  if (forever && (s === 'forever' || s === 'inf')) return Infinity;
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d|w|mo|y)$/.exec(s);
  if (!m)
    throw new ArchiveError(
      'EINVAL',
      `archive policy tier "${tier}": cannot parse "${t}" (a number and s, m, h, d, w, mo or y${forever ? ', or forever' : ''})`,
    );
  return Number(m[1]) * UNIT[m[2]!]!;
}

export function parseForgetPolicy(text: string): ForgetTier[] {
  const parts = String(text ?? '')
    .split(/[,;\s]+/)
    .filter(Boolean);
  if (parts.length === 0)
    throw new ArchiveError('EINVAL', 'an archive policy needs at least one tier, e.g. "daily:30d, weekly:26w, monthly:forever"');
  return parts.map((raw) => {
    const f = raw.split(':');
    const kind = f[0]!.toLowerCase();
    if (kind === 'last') {
      const n = Number(f[1]);
      if (f.length !== 2 || !Number.isInteger(n) || n < 1)
        throw new ArchiveError('EINVAL', `archive policy tier "${raw}": expected last:N with N >= 1`);
      return { kind, spanMs: 0, maxAgeMs: Infinity, count: n, text: `last:${n}` };
    }
    if (kind === 'all' || kind in SPAN) {
      if (f.length !== 2) throw new ArchiveError('EINVAL', `archive policy tier "${raw}": expected ${kind}:AGE`);
      return { kind: kind as ForgetTierKind, spanMs: SPAN[kind] ?? 0, maxAgeMs: duration(f[1]!, raw, true), count: 0, text: raw };
    }
    if (kind === 'every') {
      if (f.length !== 3) throw new ArchiveError('EINVAL', `archive policy tier "${raw}": expected every:SPAN:AGE`);
      return { kind, spanMs: duration(f[1]!, raw, false), maxAgeMs: duration(f[2]!, raw, true), count: 0, text: raw };
    }
    throw new ArchiveError(
      'EINVAL',
      `archive policy tier "${raw}": unknown kind "${f[0]}" (last, all, hourly, daily, weekly, monthly, yearly, every)`,
    );
  });
}

function bucket(t: ForgetTier, time: number): number {
  const d = new Date(time);
  switch (t.kind) {
    case 'monthly':
      return d.getUTCFullYear() * 12 + d.getUTCMonth();
    case 'yearly':
      return d.getUTCFullYear();
    case 'weekly':
      return Math.floor((time + 3 * D) / (7 * D)); // 1970-01-01 was a Thursday
    default:
      return Math.floor(time / t.spanMs);
  }
}

/** Which points a policy keeps and which it forgets (pure). */
export function planForget(points: PolicyPoint[], tiers: ForgetTier[], now: number): ForgetPlan {
  const keep = new Map<string, string>();
  const series = new Map<string, PolicyPoint[]>();
  for (const p of points) series.set(p.series, [...(series.get(p.series) ?? []), p]);
  for (const list of series.values()) {
    list.sort((a, b) => b.time - a.time || (a.name < b.name ? 1 : -1)); // newest first
    keep.set(list[0]!.name, 'newest of its series');
    const seen = new Map<string, true>();
    list.forEach((p, i) => {
      const age = now - p.time;
      const ti = tiers.findIndex((t) => (t.kind === 'last' ? i < t.count : age <= t.maxAgeMs));
      if (ti < 0) return;
      const t = tiers[ti]!;
      if (t.kind === 'last' || t.kind === 'all') {
        if (!keep.has(p.name)) keep.set(p.name, t.text);
        return;
      }
      const b = `${ti}:${bucket(t, p.time)}`;
      if (seen.has(b)) return; // a newer point holds this bucket
      seen.set(b, true);
      if (!keep.has(p.name)) keep.set(p.name, t.text);
    });
  }
  return {
    keep: [...keep].map(([name, reason]) => ({ name, reason })),
    forget: points.filter((p) => !keep.has(p.name)).map((p) => p.name),
  };
}
