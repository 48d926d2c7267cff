/** Step 0 of an apply: the manager's own copy of a submitted AILFC in its history. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from '../util/fsync-dir';
import { crashPoint } from './crash-hook';

/**
 * Makes history/ailfc-n.lfc the manager's own copy of the sender's file:
 * a hard link when possible, else tmp + fsync + rename. A copy already in
 * place (crash recovery) is kept if it is the same file or the sender's is
 * gone; otherwise it is replaced (the worker verifies whatever is used).
 */
export async function takeCopy(historyDir: string, link: boolean, src: string, dest: string, n: number): Promise<void> {
  const srcAbs = path.resolve(src);
  if (srcAbs === path.resolve(dest)) return;
  const [ss, ds] = await Promise.all([fs.promises.stat(srcAbs).catch(() => null), fs.promises.stat(dest).catch(() => null)]);
  if (ds) {
    if (!ss || (ss.dev === ds.dev && ss.ino === ds.ino)) return;
    if (ss.size === ds.size && (await sameContent(srcAbs, dest))) return;
    await fs.promises.rm(dest, { force: true });
  }
  if (!ss) throw new Error(`AILFC_${n}: ${src} does not exist`);
  if (link) {
    try {
      await fs.promises.link(srcAbs, dest);
      await fsyncDir(historyDir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EMLINK') throw err;
    }
  }
  const tmp = `${dest}.tmp`;
  const from = await fs.promises.open(srcAbs, 'r');
  const to = await fs.promises.open(tmp, 'w');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let pos = 0;
    let crashed = false;
    for (;;) {
      const { bytesRead } = await from.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      await to.write(buf, 0, bytesRead, pos);
      pos += bytesRead;
      if (!crashed && pos >= ss.size / 2) {
        crashed = true;
        crashPoint('copy-mid', n);
      }
    }
    await to.sync();
  } finally {
    await from.close();
    await to.close();
  }
  await fs.promises.rename(tmp, dest);
  await fsyncDir(historyDir);
}

async function sameContent(a: string, b: string): Promise<boolean> {
  const [fa, fb] = await Promise.all([fs.promises.open(a, 'r'), fs.promises.open(b, 'r')]);
  try {
    const ba = Buffer.allocUnsafe(1 << 20);
    const bb = Buffer.allocUnsafe(1 << 20);
    let pos = 0;
    for (;;) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length, pos), fb.read(bb, 0, bb.length, pos)]);
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (ra.bytesRead === 0) return true;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
      pos += ra.bytesRead;
    }
  } finally {
    await fa.close();
    await fb.close();
  }
}
