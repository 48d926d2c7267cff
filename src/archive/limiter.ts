/** An async semaphore over a weight (bytes in flight): bounds memory of a pipeline. */
export class Limiter {
  private used = 0;
  private readonly waiting: Array<{ w: number; go: () => void }> = [];

  constructor(private readonly capacity: number) {}

  /** Waits until `w` fits (a single request larger than the capacity runs alone). */
  async acquire(w: number): Promise<void> {
    if (this.used === 0 || (this.waiting.length === 0 && this.used + w <= this.capacity)) {
      this.used += w;
      return;
    }
    await new Promise<void>((go) => this.waiting.push({ w, go }));
  }

  release(w: number): void {
    this.used -= w;
    while (this.waiting.length > 0) {
      const next = this.waiting[0]!;
      if (this.used !== 0 && this.used + next.w > this.capacity) break;
      this.waiting.shift();
      this.used += next.w;
      next.go();
    }
  }

  async run<T>(w: number, fn: () => Promise<T>): Promise<T> {
    await this.acquire(w);
    try {
      return await fn();
    } finally {
      this.release(w);
    }
  }
}
