/**
 * The server-wide memory budget's rules (src/nbd/budget.ts), with holders
 * that stand in for connections: admission while it fits, waiting in line,
 * the reserve of an empty-handed holder, a request larger than the budget,
 * and wake-ups in arrival order as memory is given back.
 */
import test from 'ava';
import { BUDGET_RESERVE, MemoryBudget, type BudgetHolder } from '../src/nbd/budget';

const MiB = 1024 * 1024;
const settle = () => new Promise<void>((r) => setImmediate(r));

/** Holds what it was admitted; on retry asks again for what it wants. */
class Holder implements BudgetHolder {
  holding = 0;
  want = 0;
  admitted: number[] = [];
  constructor(
    readonly name: string,
    readonly budget: MemoryBudget,
    readonly log: string[],
  ) {}
  ask(bytes: number): boolean {
    this.want = bytes;
    const ok = this.budget.admit(this, bytes, this.holding);
    if (ok) {
      this.holding += bytes;
      this.budget.report(this, this.holding);
      this.admitted.push(bytes);
      this.log.push(this.name);
      this.want = 0;
    }
    return ok;
  }
  release(bytes: number): void {
    this.holding -= bytes;
    this.budget.report(this, this.holding);
  }
  budgetRetry(): void {
    if (this.want) this.ask(this.want);
  }
}

test('admits while it fits, then queues; wakes the line in order as memory comes back', async (t) => {
  const log: string[] = [];
  const b = new MemoryBudget(8 * MiB);
  const [a, c, d] = ['a', 'c', 'd'].map((n) => new Holder(n, b, log)) as [Holder, Holder, Holder];
  t.true(a.ask(6 * MiB));
  t.false(c.ask(4 * MiB), 'does not fit');
  t.false(d.ask(MiB), 'fits, but c is first in line');
  t.is(b.stats().waiting, 2);
  a.release(2 * MiB); // 4 MiB held: c fits (8), then d does not (9)
  await settle();
  t.deepEqual(log, ['a', 'c']);
  a.release(4 * MiB);
  await settle();
  t.deepEqual(log, ['a', 'c', 'd']);
  t.is(b.stats().waiting, 0);
  t.true(b.stats().peak <= 8 * MiB);
});

test('an empty-handed holder gets a small request through a full budget; one that holds memory waits', async (t) => {
  const log: string[] = [];
  const b = new MemoryBudget(4 * MiB);
  const flood = new Holder('flood', b, log);
  const good = new Holder('good', b, log);
  t.true(flood.ask(4 * MiB));
  t.false(new Holder('other', b, log).ask(MiB));
  t.true(good.ask(BUDGET_RESERVE), 'the reserve, past the line');
  t.false(good.ask(4096), 'not a second one while holding the first');
  good.release(BUDGET_RESERVE);
  await settle();
  t.deepEqual(log, ['flood', 'good', 'good'], 'woken once it held nothing again');
  t.false(new Holder('big', b, log).ask(BUDGET_RESERVE + 1), 'over the reserve: waits');
});

test('a request larger than the whole budget goes through once nothing else is held', async (t) => {
  const log: string[] = [];
  const b = new MemoryBudget(2 * MiB);
  const small = new Holder('small', b, log);
  const huge = new Holder('huge', b, log);
  t.true(small.ask(MiB));
  t.false(huge.ask(16 * MiB));
  small.release(MiB);
  await settle();
  t.deepEqual(log, ['small', 'huge']);
  b.forget(huge);
  t.is(b.stats().used, 0);
});
