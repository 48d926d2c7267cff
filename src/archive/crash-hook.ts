/**
 * Test hook for the crash tests: with REWIND_ARCHIVE_CRASH_AT set to
 * "<step>" or "<step>@<n>" the process SIGKILLs itself the first (or n-th)
 * time it reaches that step. Unset in production, where crashPoint() is
 * one environment lookup.
 *
 * Archive: pack-sealed (staging pack sealed, not on the backend),
 * pack-put (on the backend, not indexed), before-manifest (all chunks
 * indexed, manifest not written), after-manifest.
 * Gc: gc-marked, gc-sweep-batch (after each batch of index deletions),
 * gc-swept, gc-repack-put (new pack on the backend, not indexed),
 * gc-repack-indexed (chunks moved to the new pack, old pack still there),
 * gc-pack-deleting (old pack marked, object not deleted), gc-pack-deleted
 * (object deleted, record not yet removed).
 */
export const CRASH_ENV = 'REWIND_ARCHIVE_CRASH_AT';

const seen = new Map<string, number>();

export function crashPoint(step: string): void {
  const want = process.env[CRASH_ENV];
  if (!want) return;
  const at = want.indexOf('@');
  const name = at < 0 ? want : want.slice(0, at);
  if (name !== step) return;
  const n = (seen.get(step) ?? 0) + 1;
  seen.set(step, n);
  if (at < 0 || Number(want.slice(at + 1)) === n) process.kill(process.pid, 'SIGKILL');
}
