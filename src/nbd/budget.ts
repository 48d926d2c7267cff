/**
 * The server-wide memory budget: bytes of request payloads, read results,
 * unread replies and idle pooled buffers that all connections together may
 * hold. Per-connection limits alone make the worst case connections x
 * per-connection buffer; the budget caps the sum.
 *
 * Each connection reports its footprint whenever its flow changes. Before
 * reading a request that needs memory (a WRITE payload, a READ result) it
 * asks admit(): granted while the total stays within the limit, or, so a
 * well-behaved client is never starved by floods that hold the whole
 * budget, when the connection holds nothing and the request is small (the
 * reserve). A refused connection stops reading and waits in line; it is
 * woken, in arrival order, as others give memory back.
 *
 * Worst case: limit + connections x (RESERVE + receive staging); the
 * README states the figures.
 */

/** A request of at most this many bytes is always admitted to a connection that holds nothing. */
export const BUDGET_RESERVE = 128 * 1024;

export interface BudgetHolder {
  /** Called when memory may be available again; try admit() again. */
  budgetRetry(): void;
}

export class MemoryBudget {
  private usedBytes = 0;
  private peakUsed = 0;
  private wakeScheduled = false;
  private readonly held = new Map<BudgetHolder, number>();
  /** Refused holders in arrival order, with the bytes each asked for. */
  private readonly waiting = new Map<BudgetHolder, number>();
  private refusals = 0;

  constructor(readonly limit: number) {}

  get used(): number {
    return this.usedBytes;
  }

  /** The holder now holds `bytes` (0 when it closes). */
  report(h: BudgetHolder, bytes: number): void {
    const before = this.held.get(h) ?? 0;
    if (bytes === before) return;
    if (bytes === 0) this.held.delete(h);
    else this.held.set(h, bytes);
    this.usedBytes += bytes - before;
    if (this.usedBytes > this.peakUsed) this.peakUsed = this.usedBytes;
    if (bytes < before) this.scheduleWake();
  }

  /**
   * May the holder, now holding `holding` bytes, take `bytes` more? Granted
   * to the first in line when it fits (a request larger than the whole
   * budget when nothing else is held), or at once as the reserve of a
   * holder that holds nothing. If not, the holder waits in line for
   * budgetRetry().
   */
  admit(h: BudgetHolder, bytes: number, holding: number): boolean {
    this.report(h, holding);
    if (bytes === 0) return true;
    if (this.eligible(h, bytes, this.firstInLine(h))) {
      this.waiting.delete(h);
      return true;
    }
    this.refusals++;
    this.waiting.set(h, bytes);
    return false;
  }

  /** The holder is gone. */
  forget(h: BudgetHolder): void {
    this.waiting.delete(h);
    this.report(h, 0);
  }

  stats(): { limit: number; used: number; peak: number; waiting: number; refusals: number } {
    return { limit: this.limit, used: this.usedBytes, peak: this.peakUsed, waiting: this.waiting.size, refusals: this.refusals };
  }

  private firstInLine(h: BudgetHolder): boolean {
    for (const first of this.waiting.keys()) return first === h;
    return true;
  }

  private eligible(h: BudgetHolder, bytes: number, first: boolean): boolean {
    if (bytes <= BUDGET_RESERVE && !this.held.has(h)) return true;
    return first && (this.usedBytes + bytes <= this.limit || this.usedBytes === 0);
  }

  /**
   * Wakes run on a microtask, never inside the report() of a connection
   * that may be mid-parse, and several reports coalesce into one wake.
   */
  private scheduleWake(): void {
    if (this.wakeScheduled || this.waiting.size === 0) return;
    this.wakeScheduled = true;
    queueMicrotask(() => {
      this.wakeScheduled = false;
      this.wake();
    });
  }

  /**
   * Lets retry those that would be admitted now: the head of the line
   * while it fits, and anyone entitled to the reserve. Each retry admits
   * (and reports) synchronously.
   */
  private wake(): void {
    let headOpen = true;
    for (const [h, bytes] of this.waiting) {
      const first = headOpen && this.firstInLine(h);
      if (!this.eligible(h, bytes, first)) {
        headOpen = false;
        continue;
      }
      h.budgetRetry();
      if (this.waiting.has(h)) headOpen = false;
    }
  }
}
