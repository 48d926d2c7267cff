/** Durations as people write them in flags and configuration files: "90s", "30m", "12h", "7d", "2w"; "0" or "off" = none. */
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

export class DurationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DurationError';
  }
}

/** Milliseconds; a bare number is seconds. */
export function parseDuration(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input < 0) throw new DurationError(`bad duration ${input}`);
    return input * 1000;
  }
  const s = input.trim().toLowerCase();
  if (s === 'off' || s === 'never') return 0;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/.exec(s);
  if (!m) throw new DurationError(`bad duration "${input}": use a number with s, m, h, d or w (e.g. 7d), or off`);
  return Math.round(Number(m[1]) * UNITS[m[2] ?? 's']!);
}

/** "7d", "12h", "90s": the largest whole unit. */
export function formatDuration(ms: number): string {
  if (ms <= 0) return 'off';
  for (const u of ['w', 'd', 'h', 'm', 's'] as const) if (ms % UNITS[u]! === 0) return `${ms / UNITS[u]!}${u}`;
  return `${ms}ms`;
}
