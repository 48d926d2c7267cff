/**
 * The campaign's mixed load: several NBD connections, each owning a region
 * of the volume and keeping one request in flight, so the model knows
 * exactly which values a block may hold. Requests: sequential and random
 * writes (some FUA), trims, write-zeroes (with and without NO_HOLE) and
 * flushes. The load can pause at a quiescent cut (nothing in flight) for
 * points, markers and restores, and be cut off by a kill.
 */
import * as crypto from 'node:crypto';
import type { NbdClient } from '../../../src/nbd/client';
import { CMD_FLAG_FUA, CMD_FLAG_NO_HOLE } from '../../../src/nbd/protocol';
import { BS, ZERO_HASH, blockHashes, type VolumeModel } from './model';

export interface Region {
  first: number;
  count: number;
}

export interface LoadCounts {
  writes: number;
  fua: number;
  trims: number;
  zeroes: number;
  flushes: number;
}

class Conn {
  private seqPos = 0;
  busy: Promise<void> = Promise.resolve();
  constructor(
    readonly client: NbdClient,
    readonly region: Region,
    /** Block of the volume where the model's block 0 lies. */
    private readonly base: number,
  ) {}

  /** One request, chosen by `r`; the model follows it. */
  async step(r: () => number, m: VolumeModel, counts: LoadCounts): Promise<void> {
    const { first, count } = this.region;
    const x = r();
    if (x < 0.08) {
      await this.client.flush();
      m.flushed(first, count);
      counts.flushes++;
      return;
    }
    const n = 1 + Math.floor(r() * r() * 16);
    let b: number;
    if (x < 0.4) {
      b = first + (this.seqPos % Math.max(1, count - n));
      this.seqPos += n;
    } else b = first + Math.floor(r() * (count - n));
    const off = (this.base + b) * BS;
    if (x < 0.8) {
      const data = crypto.randomBytes(n * BS);
      const fua = r() < 0.15;
      const h = blockHashes(data);
      m.issue(b, h);
      await this.client.write(off, data, fua ? CMD_FLAG_FUA : 0);
      m.ack(b, h, fua);
      counts.writes++;
      if (fua) counts.fua++;
      return;
    }
    const h = new Array<string>(n).fill(ZERO_HASH);
    m.issue(b, h);
    if (x < 0.9) {
      await this.client.trim(off, n * BS);
      counts.trims++;
    } else {
      await this.client.zero(off, n * BS, r() < 0.5 ? CMD_FLAG_NO_HOLE : 0);
      counts.zeroes++;
    }
    m.ack(b, h, false);
  }
}

export class Load {
  private conns: Conn[] = [];
  private running = false;
  private paused = false;
  private loops: Promise<void>[] = [];
  private wake: Array<() => void> = [];
  readonly counts: LoadCounts = { writes: 0, fua: 0, trims: 0, zeroes: 0, flushes: 0 };
  /** The first error a connection met (a kill makes them all fail). */
  error: Error | null = null;

  constructor(
    private readonly model: VolumeModel,
    private readonly r: () => number,
  ) {}

  start(clients: NbdClient[], regions: Region[], base: number): void {
    this.conns = clients.map((c, i) => new Conn(c, regions[i]!, base));
    this.running = true;
    this.paused = false;
    this.error = null;
    this.loops = this.conns.map((c) => this.loop(c));
  }

  private async loop(c: Conn): Promise<void> {
    while (this.running) {
      if (this.paused) {
        await new Promise<void>((res) => this.wake.push(res));
        continue;
      }
      try {
        await c.step(this.r, this.model, this.counts);
      } catch (err) {
        this.error ??= err as Error;
        this.running = false;
      }
    }
  }

  /** Waits until no request is in flight and none starts. False if the load died meanwhile. */
  async pause(): Promise<boolean> {
    this.paused = true;
    // A loop parks itself once its current request is answered.
    while (this.running && this.wake.length < this.conns.length) await new Promise((r) => setTimeout(r, 2));
    return this.running;
  }

  resume(): void {
    this.paused = false;
    for (const w of this.wake.splice(0)) w();
  }

  get alive(): boolean {
    return this.running;
  }

  /** Stops after the requests in flight are answered (or fail). */
  async stop(): Promise<void> {
    this.running = false;
    this.resume();
    await Promise.all(this.loops);
  }

  /** Cuts the connections (a kill): requests in flight stay unanswered. */
  async abort(): Promise<void> {
    this.running = false;
    for (const c of this.conns) c.client.destroy();
    this.resume();
    await Promise.all(this.loops);
  }

  async close(): Promise<void> {
    await this.stop();
    for (const c of this.conns) c.client.destroy();
    this.conns = [];
  }
}
