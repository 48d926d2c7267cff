/**
 * Keeps a background catalog build from taking the daemon's event loop:
 * after each slice of work it sleeps so that work is at most `duty` of the
 * wall time (NBD requests are served on the same thread in between). A
 * build someone waits for runs with duty 1 (no pauses).
 */
import type { FsImage } from '../fs';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Throttle {
  throttledMs = 0;
  private sliceStart = performance.now();

  constructor(
    readonly duty: number,
    private readonly sliceMs = 8,
  ) {
    if (!(duty > 0 && duty <= 1)) throw new RangeError(`duty ${duty}: must be in (0, 1]`);
  }

  /** A promise to await when the slice is used up, else undefined (no await: the hot path stays synchronous). */
  pause(): Promise<void> | undefined {
    if (this.duty >= 1) return undefined;
    const ran = performance.now() - this.sliceStart;
    if (ran < this.sliceMs) return undefined;
    const ms = (ran * (1 - this.duty)) / this.duty;
    return sleep(ms).then(() => {
      this.throttledMs += ms;
      this.sliceStart = performance.now();
    });
  }
}

/** An image whose reads wait for the throttle first. */
export function throttledImage(inner: FsImage, t: Throttle): FsImage {
  if (t.duty >= 1) return inner;
  return {
    get size() {
      return inner.size;
    },
    async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
      const p = t.pause();
      if (p) await p;
      return inner.read(offset, length, into);
    },
  };
}
