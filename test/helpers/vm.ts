/**
 * Test helper for the VM test rig: boots the guest of vm-images/ under qemu
 * on Rewind exports and returns what its scenario reported.
 *
 *   const image = await ensureGuestImage();          // build once (cached across runs), or reuse
 *   const r = await runGuest({ disks: [volumeDisk(d, 'vol')], scenario: 'write-tree', args: { seed: 7 } });
 *   r.exitCode, r.results.manifest_sha256, r.serial
 *
 *   // crash test: kill -9 qemu 300 ms after the guest reported files 1..10 synced
 *   const g = await startGuest({ disks, scenario: 'writer', killOn: { match: syncedAtLeast(10), delayMs: 300 } });
 *   const r = await g.done;                           // r.killed, r.synced (last n seen before the kill)
 *
 * Missing tools (qemu, apt, dpkg-deb, cpio) make these functions throw: a test
 * that needs a VM fails, it is never skipped.
 */
import {
  buildGuestImage,
  startGuest as startGuestRun,
  type GuestDisk,
  type GuestImage,
  type GuestOptions,
  type GuestResult,
  type GuestRun,
} from '../../tools/vm-run';
import { findExecutable } from '../../tools/lib';
import type { TestDaemon } from './daemon';

export type { GuestDisk, GuestImage, GuestOptions, GuestResult, GuestRun, KillOn } from '../../tools/vm-run';

/** Options of runGuest/startGuest: GuestOptions, with the image optional (default: ensureGuestImage()). */
export type RunGuestOptions = Omit<GuestOptions, 'image'> & { image?: GuestImage };

const QEMU = process.env.REWIND_QEMU ?? 'qemu-system-x86_64';
let imagePromise: Promise<GuestImage> | null = null;

/**
 * The guest image: built by vm-images/build.sh on first use (a minute, then
 * cached under ~/.cache/rewind-vm), or found in the cache (a few seconds:
 * apt-cache resolves the package versions that make up the cache key).
 * $REWIND_VM_IMAGE names a prebuilt image directory instead.
 */
export function ensureGuestImage(): Promise<GuestImage> {
  if (!findExecutable(QEMU)) {
    return Promise.reject(new Error(`${QEMU} not found: the VM tests need qemu (sudo bash tools/install-system-deps.sh)`));
  }
  imagePromise ??= buildGuestImage().catch((err: unknown) => {
    imagePromise = null;
    throw err;
  });
  return imagePromise;
}

async function withImage(opts: RunGuestOptions): Promise<GuestOptions> {
  const image = opts.image ?? (await ensureGuestImage());
  return { timeoutMs: 180_000, ...opts, image };
}

/** Boots a guest and returns it running: `done` resolves when qemu exits, `kill()` ends it. */
export async function startGuest(opts: RunGuestOptions): Promise<GuestRun> {
  return startGuestRun(await withImage(opts));
}

/** Boots a guest, runs the scenario, resolves with { exitCode, results, serial, ... } when qemu has exited. */
export async function runGuest(opts: RunGuestOptions): Promise<GuestResult> {
  return (await startGuest(opts)).done;
}

/** The disk for a daemon's export, over its NBD Unix socket. */
export function volumeDisk(d: TestDaemon, exportName: string, readOnly = false): GuestDisk {
  return readOnly ? { socket: d.nbdSocket, exportName, readOnly } : { socket: d.nbdSocket, exportName };
}

/** A killOn matcher: the guest reported files 1..N (or more) synced. */
export function syncedAtLeast(n: number): (line: string) => boolean {
  return (line) => {
    const m = /REWIND-SYNCED n=(\d+)/.exec(line);
    return m !== null && Number(m[1]) >= n;
  };
}

/** A short account of a run for assertion messages: status, results and the serial console's tail. */
export function describeRun(r: GuestResult, lines = 40): string {
  const status = r.timedOut ? 'timed out' : r.killed ? 'killed' : `exit ${r.exitCode}`;
  return (
    `guest ${status} after ${(r.durationMs / 1000).toFixed(1)} s (qemu ${JSON.stringify(r.qemu)})\n` +
    `results: ${JSON.stringify(r.results)}\n` +
    `serial (last ${lines} lines):\n${r.serial.replace(/\r/g, '').trimEnd().split('\n').slice(-lines).join('\n')}\n` +
    (r.qemuStderr ? `qemu stderr:\n${r.qemuStderr}` : '')
  );
}
