/**
 * Retention policies and the fade-out plan (pure: no I/O).
 *
 * A policy is a list of tiers, finest first, e.g.
 *
 *   all:48h, hourly:30d, daily:365d
 *
 *   all:AGE           every write is a point while it is younger than AGE
 *   hourly:AGE        one point per hour (the last one of each UTC hour) up to AGE
 *   daily:AGE         one per UTC day;  weekly:AGE (weeks from Monday), monthly:AGE (UTC months)
 *   every:SPAN:AGE    one per SPAN (e.g. every:15m:7d)
 *
 * AGE and SPAN are a number and a unit: s, m (minutes), h, d, w, mo (30 d),
 * y (365 d); AGE may also be "forever". Ages must grow from tier to tier.
 * Beyond the last tier's age history is dropped.
 *
 * Points and boundaries. Fading works on transaction boundaries: the
 * boundary after T_n is the point at T_n's last write (= "before T_{n+1}").
 * A boundary survives if it is the last one of its bucket in the tier its
 * age falls in (or any, in an "all" tier), if a pin needs it (a view at
 * "before T_k" needs the boundary before T_k; an overlay view inside T_k
 * needs T_k whole), or if it is at or after the newest committed
 * transaction (never touched while it may still be extended by the apply).
 * Between two surviving boundaries, transactions T_a..T_b are merged into
 * one T_b. The run before the oldest surviving boundary is dropped when it
 * is older than the last tier: it becomes the anchor, a stub transaction
 * that keeps only the point at its end.
 */

export type TierKind = 'all' | 'hourly' | 'daily' | 'weekly' | 'monthly' | 'every';

export interface RetentionTier {
  kind: TierKind;
  /** Bucket span in ms (0 for "all"; nominal for monthly). */
  spanMs: number;
  /** Maximum age in ms (Infinity = forever). */
  maxAgeMs: number;
  /** The tier as written, normalized. */
  text: string;
}

export interface RetentionPolicy {
  tiers: RetentionTier[];
  /** Normalized text: tiers joined by ", ". */
  text: string;
}

export class RetentionPolicyError extends Error {
  constructor(
    message: string,
    readonly tier: string | null,
  ) {
    super(message);
    this.name = 'RetentionPolicyError';
  }
}

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const UNIT_MS: Record<string, number> = {
  s: 1000,
  sec: 1000,
  m: 60_000,
  min: 60_000,
  h: HOUR,
  d: DAY,
  w: 7 * DAY,
  mo: 30 * DAY,
  y: 365 * DAY,
};

function parseDuration(text: string, what: string, tier: string, allowForever: boolean): number {
  const t = text.trim().toLowerCase();
  if (allowForever && (t === 'forever' || t === 'inf' || t === 'infinity')) return Infinity;
  const m = /^(\d+(?:\.\d+)?)(s|sec|m|min|h|d|w|mo|y)$/.exec(t);
  if (!m) {
    throw new RetentionPolicyError(
      `retention tier "${tier}": cannot parse ${what} "${text}" (a number and a unit: s, m, h, d, w, mo, y${allowForever ? ', or forever' : ''})`,
      tier,
    );
  }
  const ms = Number(m[1]) * UNIT_MS[m[2]!]!;
  if (!(ms >= 1000)) throw new RetentionPolicyError(`retention tier "${tier}": ${what} "${text}" is shorter than one second`, tier);
  return ms;
}

function formatDuration(ms: number): string {
  if (ms === Infinity) return 'forever';
  for (const [u, v] of [
    ['y', 365 * DAY],
    ['w', 7 * DAY],
    ['d', DAY],
    ['h', HOUR],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms % v === 0) return `${ms / v}${u}`;
  }
  return `${ms / 1000}s`;
}

const NAMED_SPAN: Record<string, number> = { hourly: HOUR, daily: DAY, weekly: 7 * DAY, monthly: 30 * DAY };

/**
 * Parses "all:48h, hourly:30d, daily:365d". Throws RetentionPolicyError
 * naming the bad tier.
 */
export function parseRetention(text: unknown): RetentionPolicy {
  if (typeof text !== 'string' || text.trim() === '') {
    throw new RetentionPolicyError('a retention policy is required, e.g. "all:48h, hourly:30d, daily:365d"', null);
  }
  const parts = text.split(/[,;\s]+/).filter((s) => s !== '');
  const tiers: RetentionTier[] = [];
  for (const [i, raw] of parts.entries()) {
    const fields = raw.split(':');
    const kind = fields[0]!.toLowerCase();
    let tier: RetentionTier;
    if (kind === 'all' || kind in NAMED_SPAN) {
      if (fields.length !== 2)
        throw new RetentionPolicyError(`retention tier "${raw}" (tier ${i + 1}): expected ${kind}:AGE, e.g. ${kind}:30d`, raw);
      const maxAgeMs = parseDuration(fields[1]!, 'age', raw, true);
      tier = {
        kind: kind as TierKind,
        spanMs: kind === 'all' ? 0 : NAMED_SPAN[kind]!,
        maxAgeMs,
        text: `${kind}:${formatDuration(maxAgeMs)}`,
      };
    } else if (kind === 'every') {
      if (fields.length !== 3)
        throw new RetentionPolicyError(`retention tier "${raw}" (tier ${i + 1}): expected every:SPAN:AGE, e.g. every:15m:7d`, raw);
      const spanMs = parseDuration(fields[1]!, 'span', raw, false);
      const maxAgeMs = parseDuration(fields[2]!, 'age', raw, true);
      tier = { kind: 'every', spanMs, maxAgeMs, text: `every:${formatDuration(spanMs)}:${formatDuration(maxAgeMs)}` };
    } else {
      throw new RetentionPolicyError(
        `retention tier "${raw}" (tier ${i + 1}): unknown kind "${fields[0]}" (use all, hourly, daily, weekly, monthly or every:SPAN)`,
        raw,
      );
    }
    const prev = tiers[tiers.length - 1];
    if (tier.kind === 'all' && prev)
      throw new RetentionPolicyError(`retention tier "${raw}" (tier ${i + 1}): "all" can only be the first (finest) tier`, raw);
    if (prev && !(tier.maxAgeMs > prev.maxAgeMs)) {
      throw new RetentionPolicyError(
        `retention tier "${raw}" (tier ${i + 1}): its age must be longer than the previous tier's (${prev.text})`,
        raw,
      );
    }
    if (prev && prev.maxAgeMs === Infinity)
      throw new RetentionPolicyError(`retention tier "${raw}" (tier ${i + 1}): follows a tier that keeps history forever`, raw);
    if (prev && tier.spanMs < prev.spanMs) {
      throw new RetentionPolicyError(
        `retention tier "${raw}" (tier ${i + 1}): its points are closer together than the previous tier's (${prev.text}); tiers go from fine to coarse`,
        raw,
      );
    }
    tiers.push(tier);
  }
  return { tiers, text: tiers.map((t) => t.text).join(', ') };
}

/** The bucket of time `t` in a tier: boundaries in one bucket keep only the last. */
export function bucketOf(tier: RetentionTier, t: number): number {
  switch (tier.kind) {
    case 'all':
      return t; // unused: every boundary survives
    case 'monthly': {
      const d = new Date(t);
      return d.getUTCFullYear() * 12 + d.getUTCMonth();
    }
    case 'weekly':
      // 1970-01-01 was a Thursday: shift so that weeks start on Monday 00:00 UTC.
      return Math.floor((t + 3 * DAY) / (7 * DAY));
    default:
      return Math.floor(t / tier.spanMs);
  }
}

// --- the plan ----------------------------------------------------------------

/** What planning needs of a committed transaction. */
export interface PlanTxn {
  n: number;
  records: number;
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  committedAt: number;
  mergedFrom?: number;
  /** AILFC + BILFC bytes. */
  bytes: number;
}

export interface PlanInput {
  policy: RetentionPolicy;
  now: number;
  /** Committed transactions, ascending n (the anchor, if any, first). */
  txns: PlanTxn[];
  /** T_anchor is a stub whose start is not a point any more (n < firstReadable), or null. */
  anchor: number | null;
  /** Pinned points: boundary before T_k; overlay: T_k must stay whole. */
  pins: Array<{ k: number; overlay: boolean }>;
  /** Transactions from this n on are never touched (the newest, or those being applied). */
  protectFrom: number;
}

export interface MergeStep {
  /** Merge T_from..T_to into T_to (or, for a drop, collapse them into the stub T_to). */
  from: number;
  to: number;
  drop: boolean;
  /** Transactions in the range. */
  transactions: number;
  bytes: number;
  /** The points that go: seqs firstSeq..lastSeq except the ends that stay. */
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  /** Writes that stop being points. */
  points: number;
}

export interface FadePlan {
  steps: MergeStep[];
  /** Boundaries (after T_n) that survive, ascending. */
  surviving: number[];
}

/**
 * Which boundaries survive and which runs merge. Pure; see the file comment.
 */
export function planFade(input: PlanInput): FadePlan {
  const { policy, now, txns } = input;
  const steps: MergeStep[] = [];
  if (txns.length === 0) return { steps, surviving: [] };
  const tiers = policy.tiers;
  const lastAge = tiers[tiers.length - 1]!.maxAgeMs;
  // cut[i]: the boundary after txns[i] survives.
  const cut = new Array<boolean>(txns.length).fill(false);
  const idx = new Map<number, number>(txns.map((t, i) => [t.n, i]));
  // The time of the boundary after txns[i]: the last write at or before it.
  const times: number[] = [];
  let carry = 0;
  for (const t of txns) {
    if (t.records > 0) carry = t.lastTime;
    times.push(carry || t.committedAt);
  }

  // 1. Tiers: the last boundary of each bucket (every one in an "all" tier).
  const lastInBucket = new Map<string, number>();
  for (let i = 0; i < txns.length; i++) {
    const age = now - times[i]!;
    const ti = tiers.findIndex((t) => age <= t.maxAgeMs);
    if (ti < 0) continue; // older than every tier
    const tier = tiers[ti]!;
    if (tier.kind === 'all') {
      cut[i] = true;
      continue;
    }
    lastInBucket.set(`${ti}:${bucketOf(tier, times[i]!)}`, i);
  }
  for (const i of lastInBucket.values()) cut[i] = true;

  // 2. Never touched: the newest transactions (and everything being applied).
  for (let i = 0; i < txns.length; i++) {
    if (txns[i]!.n >= input.protectFrom - 1) cut[i] = true;
  }
  // 3. Pins: the boundary before T_k (after T_{k-1}); an overlay pin keeps T_k whole.
  let pinnedStart = false;
  for (const p of input.pins) {
    const before = idx.get(p.k - 1);
    if (before !== undefined) cut[before] = true;
    if (p.overlay) {
      const at = idx.get(p.k);
      if (at !== undefined) cut[at] = true;
    }
    // The image before the oldest transaction is pinned: the oldest run may merge, not drop.
    if (p.k <= txns[0]!.n) pinnedStart = true;
  }
  cut[txns.length - 1] = true;
  const surviving: number[] = [];
  for (let i = 0; i < txns.length; i++) if (cut[i]) surviving.push(txns[i]!.n);

  // 4. Runs between surviving boundaries. The oldest run is dropped (collapsed
  // into the anchor stub) when the start of history is past the last tier.
  const first = txns[0]!;
  const startTime = first.records > 0 && input.anchor !== first.n ? first.firstTime : times[0]!;
  const dropFirst = !pinnedStart && (input.anchor !== null || (lastAge !== Infinity && now - startTime > lastAge));
  let start = 0;
  for (let i = 0; i < txns.length; i++) {
    if (!cut[i]) continue;
    const run = txns.slice(start, i + 1);
    if (start === 0 && dropFirst) {
      if (!(run.length === 1 && run[0]!.n === input.anchor)) steps.push(step(run, true));
    } else if (run.length >= 2) {
      steps.push(step(run, false));
    }
    start = i + 1;
  }
  return { steps, surviving };
}

function step(run: PlanTxn[], drop: boolean): MergeStep {
  const withData = run.filter((t) => t.records > 0);
  const first = withData[0];
  const last = withData[withData.length - 1];
  let points = 0;
  for (const t of run) points += t.mergedFrom !== undefined ? (t.records > 0 ? 1 : 0) : t.records;
  if (last) points -= 1; // the end stays a point
  return {
    from: run[0]!.n,
    to: run[run.length - 1]!.n,
    drop,
    transactions: run.length,
    bytes: run.reduce((a, t) => a + t.bytes, 0),
    firstSeq: first?.firstSeq ?? 0,
    lastSeq: last?.lastSeq ?? 0,
    firstTime: first?.firstTime ?? 0,
    lastTime: last?.lastTime ?? 0,
    points: Math.max(0, points),
  };
}

/** Splits a merge into consecutive pieces of at most `maxBytes` input (at least 2 transactions each). */
export function splitRun(ns: Array<{ n: number; bytes: number }>, maxBytes: number): Array<{ from: number; to: number }> {
  const out: Array<{ from: number; to: number }> = [];
  let i = 0;
  while (i < ns.length) {
    let j = i;
    let bytes = ns[i]!.bytes;
    while (j + 1 < ns.length && (j - i < 1 || bytes + ns[j + 1]!.bytes <= maxBytes)) {
      j++;
      bytes += ns[j]!.bytes;
    }
    if (j > i) out.push({ from: ns[i]!.n, to: ns[j]!.n });
    i = j + 1;
  }
  return out;
}
