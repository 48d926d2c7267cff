/**
 * Test hook for the crash campaign: with REWIND_MANAGER_CRASH_AT set to
 * "<step>@<n>" (or "<step>" for any container) the process SIGKILLs itself
 * when the manager reaches that step while processing AILFC_n. Works from
 * piscina workers too (process.kill kills the whole process). Unset in
 * production, where crashPoint() is one environment lookup.
 *
 * Steps, in processing order:
 *   copy-mid       history copy of AILFC_n half written (copy path only)
 *   copied         AILFC_n is in history/, nothing else done
 *   bilfc-mid      half of BILFC_n's before-blocks appended (file is .tmp)
 *   bilfc-sealed   BILFC_n sealed and renamed, replica untouched
 *   apply-mid      about half of the final blocks written to the replica
 *   apply-done     replica written and fdatasync'd, T_n not committed
 *   after-commit   LMDB commit of T_n flushed, 'commit' not yet emitted
 */
export type CrashStep = 'copy-mid' | 'copied' | 'bilfc-mid' | 'bilfc-sealed' | 'apply-mid' | 'apply-done' | 'after-commit';

export const CRASH_ENV = 'REWIND_MANAGER_CRASH_AT';

export function crashPoint(step: CrashStep, n: number): void {
  const want = process.env[CRASH_ENV];
  if (!want) return;
  const at = want.indexOf('@');
  const name = at < 0 ? want : want.slice(0, at);
  if (name !== step) return;
  if (at >= 0 && Number(want.slice(at + 1)) !== n) return;
  process.kill(process.pid, 'SIGKILL');
}
