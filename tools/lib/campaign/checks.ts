/**
 * The invariant checks the crash campaign runs after every round (MISSION.md,
 * "Rules that must hold at every instant"). Each failure is a Violation
 * naming the invariant; the campaign stops at the first and keeps the data.
 */
import type { NbdClient } from '../../../src/nbd/client';
import { sleep } from '../../../test/helpers/daemon';
import { BS, blockHashes, differing } from './model';
import { VOLUME, apiCall, type Target } from './target';

export type Invariant =
  | 'flushed-writes-survive'
  | 'replica-equals-production'
  | 'no-transaction-twice'
  | 'seq-strictly-increasing'
  | 'points-byte-exact'
  | 'recovers';

export class Violation extends Error {
  constructor(
    readonly invariant: Invariant,
    message: string,
  ) {
    super(`${invariant}: ${message}`);
    this.name = 'Violation';
  }
}

const V = `/v1/volumes/${VOLUME}`;

/** A control call that must succeed (else a Violation of `inv`: every call here is part of recovering). */
export async function must(socket: string, method: string, p: string, body?: unknown, inv: Invariant = 'recovers'): Promise<any> {
  const r = await apiCall(socket, method, p, body);
  if (r.status >= 300) throw new Violation(inv, `${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Connects, retrying while the volume is still offline after a restart. */
export async function connectRetry(
  open: () => Promise<NbdClient>,
  timeoutMs = 180_000,
  /** True once retrying is pointless (the campaign killed the daemon meanwhile). */
  cancelled: () => boolean = () => false,
): Promise<NbdClient> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await open();
    } catch (err) {
      if (cancelled()) throw err;
      if (Date.now() > deadline)
        throw new Violation('recovers', `no NBD connection within ${timeoutMs / 1000} s: ${(err as Error).message}`);
      await sleep(200);
    }
  }
}

/** Block hashes of `count` blocks from block `first` of an export. */
export async function readHashes(c: NbdClient, first: number, count: number): Promise<string[]> {
  const out: string[] = [];
  const CH = 256;
  for (let b = 0; b < count; b += CH) {
    const n = Math.min(CH, count - b);
    out.push(...blockHashes(await c.read((first + b) * BS, n * BS)));
  }
  return out;
}

export function describeBlocks(blocks: number[]): string {
  return `${blocks.length} block(s) differ, first ${blocks.slice(0, 8).join(', ')} (4 KiB blocks of the modelled region)`;
}

/** Waits until the history side has applied everything production journaled (invariant 2 is checked after). */
export async function catchUp(t: Target, timeoutMs = 240_000): Promise<{ lastSeq: number }> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    await apiCall(t.interceptSocket, 'POST', `${V}/seal`, {}).catch(() => undefined);
    try {
      const si = (await apiCall(t.interceptSocket, 'GET', `${V}/status`)).body;
      const sm = (await apiCall(t.managerSocket, 'GET', `${V}/status`)).body;
      last = JSON.stringify({ intercept: si, manager: t.mode === 'single' ? undefined : sm });
      const linkUp = t.mode === 'single' || si.link?.state === 'up';
      if (si.state === 'normal' && linkUp && si.dirtyRegions === 0 && sm.appliedSeq === si.lastSeq) return { lastSeq: si.lastSeq };
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Violation('recovers', `the manager did not catch up within ${timeoutMs / 1000} s: ${last}`);
    await sleep(300);
  }
}

/** Invariant 2 through the manager's verify: replica equal to production, every stored container sound. */
export async function checkReplica(t: Target): Promise<void> {
  const v = await must(t.managerSocket, 'POST', `${V}/verify`);
  if (!v.equal) throw new Violation('replica-equals-production', `replica and production differ at ${v.firstDifference}`);
  if (!v.ok) {
    const bad = (v.containers ?? []).filter((c: { ok: boolean }) => !c.ok);
    throw new Violation('replica-equals-production', `stored containers fail their checks: ${JSON.stringify(bad).slice(0, 2000)}`);
  }
}

interface Txn {
  n: number;
  firstSeq: number;
  lastSeq: number;
  records: number;
}

/** Invariants 3 and 5 (no transaction twice) and seq order, on the transaction log. Returns the last seq. */
export async function checkLog(t: Target): Promise<{ transactions: number; lastSeq: number }> {
  const txns = (await must(t.managerSocket, 'GET', `${V}/log`)).transactions as Txn[];
  let lastSeq = 0;
  let prev: Txn | null = null;
  for (const x of txns) {
    if (prev && x.n <= prev.n) throw new Violation('no-transaction-twice', `transaction ${x.n} follows ${prev.n}`);
    if (x.records > 0) {
      if (x.firstSeq > x.lastSeq) throw new Violation('seq-strictly-increasing', `T_${x.n} spans seq ${x.firstSeq}..${x.lastSeq}`);
      if (x.firstSeq <= lastSeq)
        throw new Violation('no-transaction-twice', `T_${x.n} starts at seq ${x.firstSeq}, at or before seq ${lastSeq} of an earlier one`);
      lastSeq = x.lastSeq;
    }
    prev = x;
  }
  return { transactions: txns.length, lastSeq };
}

/** Reads a view (snapshot or clone) and compares it with the model's hashes at its point. */
export async function checkView(
  t: Target,
  name: string,
  base: number,
  want: string[],
  what: string,
  part: { from: number; count: number } = { from: 0, count: want.length },
): Promise<void> {
  const c = await t.connectView(name);
  try {
    const got = await readHashes(c, base + part.from, part.count);
    const d = differing(got, want.slice(part.from, part.from + part.count)).map((b) => b + part.from);
    if (d.length) throw new Violation('points-byte-exact', `${what}: ${describeBlocks(d)}`);
  } finally {
    c.destroy();
  }
}

/** Refusals that mean "retention merged this point away" or "inside a super transaction": not a loss. */
export function isFadedRefusal(body: unknown): boolean {
  return /retention merged|super transaction|dropped by retention|older than|faded|no longer/i.test(JSON.stringify(body));
}
