/**
 * Process-wide cleanup registry for tools and tests that start child
 * processes or create temporary files.
 *
 * Each entry has an async action (used on normal shutdown and on signals)
 * and an optional synchronous fallback that runs from the 'exit' event, the
 * last chance to kill children when the process ends without running the
 * async actions (uncaught exception, process.exit() elsewhere).
 */

export interface CleanupHandle {
  /** Remove the entry without running it. */
  unregister(): void;
}

interface Entry {
  label: string;
  action: () => void | Promise<void>;
  syncFallback?: () => void;
}

const entries = new Set<Entry>();
let exitHookInstalled = false;
let running: Promise<void> | null = null;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const e of [...entries].reverse()) {
      try {
        e.syncFallback?.();
      } catch {
        // best effort at exit
      }
    }
    entries.clear();
  });
}

/**
 * Register a cleanup action. Actions run in reverse registration order.
 * `syncFallback` runs at process exit if the entry is still registered then.
 */
export function onCleanup(label: string, action: () => void | Promise<void>, syncFallback?: () => void): CleanupHandle {
  installExitHook();
  const entry: Entry = { label, action };
  if (syncFallback) entry.syncFallback = syncFallback;
  entries.add(entry);
  return { unregister: () => void entries.delete(entry) };
}

/**
 * Run every registered action once (reverse order), logging failures to
 * stderr rather than throwing. Concurrent callers share one run.
 */
export function runCleanups(): Promise<void> {
  if (running) return running;
  running = (async () => {
    while (entries.size > 0) {
      const list = [...entries].reverse();
      for (const e of list) {
        entries.delete(e);
        try {
          await e.action();
        } catch (err) {
          process.stderr.write(`cleanup "${e.label}" failed: ${(err as Error)?.message ?? err}\n`);
        }
      }
    }
  })().finally(() => {
    running = null;
  });
  return running;
}

const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

/**
 * For command-line tools: on SIGINT/SIGTERM/SIGHUP run all cleanups and exit
 * with 128+signal. A second signal while cleaning up exits immediately (the
 * 'exit' hook still kills registered children synchronously).
 */
export function installSignalHandlers(onSignal?: (signal: NodeJS.Signals) => void): void {
  let caught = false;
  for (const sig of Object.keys(SIGNAL_EXIT) as NodeJS.Signals[]) {
    process.on(sig, () => {
      if (caught) {
        process.exit(SIGNAL_EXIT[sig]);
      }
      caught = true;
      onSignal?.(sig);
      runCleanups().finally(() => process.exit(SIGNAL_EXIT[sig]));
    });
  }
}
