/**
 * Serialises requests whose byte ranges overlap, in arrival order, and lets
 * everything else run concurrently. Used by the intercept so that two
 * overlapping writes in flight reach the production image in the same order
 * as their sequence numbers (and so as the journal).
 *
 * Arrival order is what matters: a request waits for every earlier request
 * that overlaps it, even one that is itself still waiting.
 */
interface Held {
  start: number;
  end: number;
  done: Promise<void>;
  release: () => void;
}

export class RangeLock {
  private held: Held[] = [];

  /**
   * Reserve [offset, offset + length). Returns null when nothing earlier
   * overlaps (the common case, no promise created) or a promise to await.
   * Either way, call `release()` on the returned token when finished (more
   * than once is harmless).
   */
  acquire(offset: number, length: number): { wait: Promise<void> | null; release: () => void } {
    const start = offset;
    const end = offset + length;
    let waits: Promise<void>[] | null = null;
    for (const h of this.held) {
      if (h.start < end && start < h.end) (waits ??= []).push(h.done);
    }
    let release!: () => void;
    const done = new Promise<void>((r) => (release = r));
    const entry: Held = { start, end, done, release };
    let released = false;
    this.held.push(entry);
    const token = {
      wait: waits ? (waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined)) : null,
      /** Idempotent: the intercept releases early and again in `finally`. */
      release: () => {
        if (released) return;
        released = true;
        const i = this.held.indexOf(entry);
        if (i >= 0) this.held.splice(i, 1);
        entry.release();
      },
    };
    return token;
  }

  get size(): number {
    return this.held.length;
  }
}
