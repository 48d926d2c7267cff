/**
 * Replication lag over time, for the console's timeline: a small sampler
 * that asks the daemon for every protected volume's lag (seconds and bytes
 * not yet applied by the manager) once a second and keeps it in two ring
 * buffers per volume:
 *
 *   fine    one sample a second, the last hour (3,600 samples)
 *   coarse  the largest of each minute, the last week (10,080 samples)
 *
 * so memory is fixed (about 330 KB per volume) however long the daemon
 * runs. The rings are saved to DATA_DIR/console/lag.json when the daemon
 * stops and read back at start, so a restart does not blank the chart.
 */
import * as fs from 'node:fs';
import { writeFileAtomic } from '../util/atomic-file';

export interface LagReading {
  volume: string;
  seconds: number;
  bytes: number;
}

export interface LagSamplerOptions {
  intervalMs?: number;
  fineSamples?: number;
  coarseMs?: number;
  coarseSamples?: number;
  /** Saved here at stop() and read at start() (none: kept in memory only). */
  file?: string | null;
}

class Ring {
  readonly t: Float64Array;
  readonly s: Float64Array;
  readonly b: Float64Array;
  head = 0;
  size = 0;

  constructor(readonly capacity: number) {
    this.t = new Float64Array(capacity);
    this.s = new Float64Array(capacity);
    this.b = new Float64Array(capacity);
  }

  push(t: number, s: number, b: number): void {
    const i = (this.head + this.size) % this.capacity;
    this.t[i] = t;
    this.s[i] = s;
    this.b[i] = b;
    if (this.size < this.capacity) this.size++;
    else this.head = (this.head + 1) % this.capacity;
  }

  /** Oldest first. */
  *entries(): Generator<[number, number, number]> {
    for (let k = 0; k < this.size; k++) {
      const i = (this.head + k) % this.capacity;
      yield [this.t[i]!, this.s[i]!, this.b[i]!];
    }
  }

  oldest(): number {
    return this.size ? this.t[this.head]! : Infinity;
  }
}

interface VolumeLag {
  fine: Ring;
  coarse: Ring;
  /** The minute being aggregated into the coarse ring. */
  minute: { start: number; s: number; b: number } | null;
}

export class LagSampler {
  private readonly vols = new Map<string, VolumeLag>();
  private timer: NodeJS.Timeout | null = null;
  private readonly intervalMs: number;
  private readonly fineSamples: number;
  private readonly coarseMs: number;
  private readonly coarseSamples: number;
  private readonly file: string | null;

  constructor(
    private readonly read: () => LagReading[],
    opts: LagSamplerOptions = {},
  ) {
    this.intervalMs = opts.intervalMs ?? 1000;
    this.fineSamples = opts.fineSamples ?? 3600;
    this.coarseMs = opts.coarseMs ?? 60_000;
    this.coarseSamples = opts.coarseSamples ?? 10_080;
    this.file = opts.file ?? null;
  }

  start(): void {
    if (this.timer) return;
    this.load();
    this.timer = setInterval(() => {
      try {
        this.sample(Date.now());
      } catch {
        // A volume going away mid-read: the next sample will do.
      }
    }, this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.file) await writeFileAtomic(this.file, JSON.stringify(this.toJson()), { mode: 0o600 }).catch(() => undefined);
  }

  /** Takes one sample of every volume now. */
  sample(now: number): void {
    for (const r of this.read()) this.add(r.volume, now, r.seconds, r.bytes);
  }

  private volume(name: string): VolumeLag {
    let v = this.vols.get(name);
    if (!v) {
      v = { fine: new Ring(this.fineSamples), coarse: new Ring(this.coarseSamples), minute: null };
      this.vols.set(name, v);
    }
    return v;
  }

  private add(name: string, t: number, s: number, b: number): void {
    const v = this.volume(name);
    v.fine.push(t, s, b);
    const start = Math.floor(t / this.coarseMs) * this.coarseMs;
    if (v.minute && v.minute.start !== start) {
      v.coarse.push(v.minute.start, v.minute.s, v.minute.b);
      v.minute = null;
    }
    if (!v.minute) v.minute = { start, s, b };
    else {
      v.minute.s = Math.max(v.minute.s, s);
      v.minute.b = Math.max(v.minute.b, b);
    }
  }

  /** Samples of a volume in [from, to], oldest first: coarse ones before the fine ring begins, then the fine ones. */
  samples(volume: string, from: number, to: number): { t: number[]; seconds: number[]; bytes: number[] } {
    const out = { t: [] as number[], seconds: [] as number[], bytes: [] as number[] };
    const v = this.vols.get(volume);
    if (!v) return out;
    const fineFrom = v.fine.oldest();
    const put = (t: number, s: number, b: number): void => {
      if (t < from || t > to) return;
      out.t.push(t);
      out.seconds.push(s);
      out.bytes.push(b);
    };
    for (const [t, s, b] of v.coarse.entries()) if (t < fineFrom) put(t, s, b);
    for (const [t, s, b] of v.fine.entries()) put(t, s, b);
    return out;
  }

  private toJson(): Record<string, { fine: number[][]; coarse: number[][] }> {
    const out: Record<string, { fine: number[][]; coarse: number[][] }> = {};
    for (const [name, v] of this.vols) {
      if (v.minute) v.coarse.push(v.minute.start, v.minute.s, v.minute.b);
      v.minute = null;
      out[name] = { fine: [...v.fine.entries()], coarse: [...v.coarse.entries()] };
    }
    return out;
  }

  private load(): void {
    if (!this.file) return;
    let data: unknown;
    try {
      data = JSON.parse(fs.readFileSync(this.file, 'utf8'));
    } catch {
      return;
    }
    if (typeof data !== 'object' || data === null) return;
    for (const [name, rings] of Object.entries(data as Record<string, { fine?: unknown; coarse?: unknown }>)) {
      const v = this.volume(name);
      for (const [key, ring] of [
        ['coarse', v.coarse],
        ['fine', v.fine],
      ] as const) {
        const rows = rings[key];
        if (!Array.isArray(rows)) continue;
        for (const r of rows) if (Array.isArray(r) && r.length === 3 && r.every((x) => typeof x === 'number')) ring.push(r[0], r[1], r[2]);
      }
    }
  }
}
