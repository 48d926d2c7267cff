/** Loading an image into an NBD export, and fio's write figure, for the benchmarks that need a daemon. */
import * as fs from 'node:fs';
import { NbdClient } from '../../src/nbd/client';
import { runCommand } from './process';
import { fioRandWriteArgs } from './fio';

const BS = 4096;

/**
 * Writes the 4 KiB blocks of `next` that differ from `prev` (from zero
 * without one) to export `name` over NBD, then flushes. Returns the count.
 */
export async function writeImageBlocks(port: number, name: string, next: string, prev: string | null): Promise<number> {
  const c = await NbdClient.connect({ port, exportName: name });
  const fa = prev ? fs.openSync(prev, 'r') : null;
  const fb = fs.openSync(next, 'r');
  const a = Buffer.alloc(4 * 1024 * 1024);
  const b = Buffer.alloc(4 * 1024 * 1024);
  const zero = Buffer.alloc(BS);
  let blocks = 0;
  try {
    const size = fs.fstatSync(fb).size;
    for (let off = 0; off < size; off += b.length) {
      const n = fs.readSync(fb, b, 0, b.length, off);
      if (fa) fs.readSync(fa, a, 0, a.length, off);
      let run = -1;
      const flush = async (end: number): Promise<void> => {
        if (run >= 0) await c.write(off + run, Buffer.from(b.subarray(run, end)));
        run = -1;
      };
      for (let i = 0; i < n; i += BS) {
        const blk = b.subarray(i, i + BS);
        const differs = fa ? !blk.equals(a.subarray(i, i + BS)) : !blk.equals(zero);
        if (differs) {
          blocks++;
          if (run < 0) run = i;
        } else await flush(i);
      }
      await flush(n);
    }
    await c.flush();
  } finally {
    if (fa !== null) fs.closeSync(fa);
    fs.closeSync(fb);
    await c.disconnect().catch(() => c.destroy());
  }
  return blocks;
}

/** fio 4 KiB random writes (iodepth 32) to `uri` for `runtime` seconds: MB/s written. */
export async function fioRandWriteMBs(uri: string, runtime: string | number, size = '1G'): Promise<number> {
  const r = await runCommand('fio', fioRandWriteArgs(uri, { bs: '4k', iodepth: 32, size, runtime }), { timeoutMs: 600_000 });
  try {
    // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    const json = r.stdout.slice(r.stdout.indexOf('{'));
    return (JSON.parse(json) as { jobs: Array<{ write: { bw_bytes: number } }> }).jobs[0]!.write.bw_bytes / 1e6;
  } catch (err) {
    throw new Error(`fio: ${r.stdout}${r.stderr}`, { cause: err });
  }
}
