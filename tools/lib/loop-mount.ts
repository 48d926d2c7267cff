/**
 * Mounting an image file through a loop device we attach and detach
 * ourselves. With `mount -o loop` the device is detached automatically at
 * unmount, and on this kernel the last writes of the unmount (the journal
 * checkpoint, the superblock's clean state) were sometimes lost on a large
 * image: the file was left needing journal recovery. Flushing the device
 * before detaching it keeps them.
 */
import { execFileSync } from 'node:child_process';

const env = (): NodeJS.ProcessEnv => ({ ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` });

/** Runs fn with `image` mounted on `mnt` (options as for mount -o), then unmounts and detaches cleanly. */
export function withLoopMount<T>(image: string, mnt: string, options: string, fn: (dir: string) => T): T {
  const dev = execFileSync('losetup', ['-f', '--show', image], { env: env() }).toString().trim();
  try {
    execFileSync('mount', ['-o', options, dev, mnt], { env: env() });
    try {
      return fn(mnt);
    } finally {
      execFileSync('umount', [mnt], { env: env() });
      execFileSync('blockdev', ['--flushbufs', dev], { env: env() });
    }
  } finally {
    execFileSync('losetup', ['-d', dev], { env: env() });
  }
}
