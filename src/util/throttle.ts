/**
 * A byte-rate throttle for background work (scrub): take(n) after using n
 * bytes sleeps as long as needed to stay at or under the rate, measured
 * from the start. 0 = no limit.
 */
export class Throttle {
  private readonly t0 = Date.now();
  private used = 0;

  constructor(readonly bytesPerSecond: number) {}

  async take(bytes: number, aborted: () => boolean = () => false): Promise<void> {
    this.used += bytes;
    if (this.bytesPerSecond <= 0) return;
    const due = this.t0 + (this.used / this.bytesPerSecond) * 1000;
    // Sleep in slices so a stop request is seen soon.
    while (!aborted() && Date.now() < due) await new Promise((r) => setTimeout(r, Math.min(250, due - Date.now())));
  }

  get bytes(): number {
    return this.used;
  }
}
