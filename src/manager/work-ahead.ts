/**
 * What the backup manager does for container n+1 while T_n is still in
 * progress, so the steps of two transactions overlap:
 *
 *   verify  step 0 and the verification of AILFC_n+1 (it needs no replica),
 *           started once AILFC_n is verified;
 *   bilfc   BILFC_n+1, built while T_n's replica writes are made durable.
 *           The replica it reads is the state T_n's commit will declare, and
 *           a redo of T_n after a crash writes the same bytes, so the BILFC
 *           is valid either way (after a crash it is verified like any
 *           sealed BILFC). Built once per n: a retry of T_n keeps it.
 *
 * A result is used only for the same copy of the container (the same
 * submitted ref); a BILFC built for another copy is removed.
 */
import * as fs from 'node:fs';
import type Piscina from 'piscina';
import type { BilfcOk, BilfcTask, Failure, VerifyOk, VerifyTask } from './apply-worker';
import { takeCopy } from './history-copy';
import type { SealedContainerRef } from './types';

export interface WorkAheadHost {
  readonly pool: Piscina;
  readonly historyDir: string;
  /** Hard-link AILFCs into history (else copy). */
  readonly linkHistory: boolean;
  historyPath(kind: 'ailfc' | 'bilfc', n: number): string;
  /** The submitted copy of container n, if it is queued. */
  queued(n: number): SealedContainerRef | undefined;
  verifyTask(n: number): VerifyTask;
  bilfcTask(n: number, ver: VerifyOk, bilfcExists: boolean): BilfcTask;
  closed(): boolean;
}

export async function exists(p: string): Promise<boolean> {
  return fs.promises.access(p).then(
    () => true,
    () => false,
  );
}

export class WorkAhead {
  private readonly verified = new Map<number, { ref: SealedContainerRef; result: Promise<VerifyOk | Failure> }>();
  /** null result: nothing was built (AILFC_n did not verify). */
  private built: { n: number; ref: SealedContainerRef; result: Promise<BilfcOk | Failure | null> } | null = null;

  constructor(private readonly h: WorkAheadHost) {}

  /** Starts copying and verifying AILFC_n if it is queued and not started yet. */
  verify(n: number): void {
    const ref = this.h.queued(n);
    if (!ref || this.verified.has(n) || this.h.closed()) return;
    const result = (async () => {
      await takeCopy(this.h.historyDir, this.h.linkHistory, ref.path, this.h.historyPath('ailfc', n), n);
      return (await this.h.pool.run(this.h.verifyTask(n))) as VerifyOk | Failure;
    })();
    result.catch(() => undefined);
    this.verified.set(n, { ref, result });
  }

  /**
   * The verification of AILFC_n started ahead, if it succeeded for this
   * copy. Waited for in any case: its copy into history must not race the
   * caller's.
   */
  async takeVerified(n: number, ref: SealedContainerRef): Promise<VerifyOk | null> {
    const pre = this.verified.get(n);
    if (!pre) return null;
    this.verified.delete(n);
    const r = await pre.result.catch(() => null);
    return r && r.ok && pre.ref === ref ? r : null;
  }

  /** Starts building BILFC_n, once AILFC_n's verification (started ahead) succeeds. */
  buildBilfc(n: number): void {
    const pre = this.verified.get(n);
    if (!pre || this.h.closed() || this.built?.n === n) return;
    const bilfcPath = this.h.historyPath('bilfc', n);
    const result = (async () => {
      const ver = await pre.result;
      if (!ver.ok) return null;
      await fs.promises.rm(`${bilfcPath}.tmp`, { force: true });
      return (await this.h.pool.run(this.h.bilfcTask(n, ver, await exists(bilfcPath)))) as BilfcOk | Failure;
    })();
    result.catch(() => undefined);
    this.built = { n, ref: pre.ref, result };
  }

  /**
   * BILFC_n built ahead, when it is usable for this copy of AILFC_n;
   * otherwise null, with anything it built removed (the caller builds
   * BILFC_n afresh from the replica, which holds T_n-1's state).
   */
  async takeBilfc(n: number, ref: SealedContainerRef): Promise<BilfcOk | null> {
    const b = this.built;
    if (!b || b.n !== n) return null;
    this.built = null;
    const r = await b.result.catch(() => null);
    if (r?.ok && b.ref === ref) return r;
    if (r?.ok && r.built) await fs.promises.rm(this.h.historyPath('bilfc', n), { force: true });
    return null;
  }

  /** Waits for everything started (before the pool is destroyed). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.verified.values()].map((p) => p.result));
    this.verified.clear();
    await this.built?.result.catch(() => undefined);
    this.built = null;
  }
}
