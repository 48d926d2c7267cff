/**
 * For the file catalog's acceptance tests against a live daemon: an ext4
 * image changed by the kernel itself (loop-mounted as root, as a guest would
 * change it), written into a protected volume over NBD block by block (only
 * the 4 KiB blocks that changed, so the block history sees what a guest's
 * writes would be), markers, and waiting for their catalogs.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { escapeName } from '../../src/fs';
import { NbdClient } from '../../src/nbd/client';
import type { JobRecord, PointRecord } from '../../src/file-catalog/service';
import { sleep, type TestDaemon } from './daemon';
import { apiOk } from './live';
import { withLoopMount } from '../../tools/lib/loop-mount';

const BS = 4096;

/** Writes the 4 KiB blocks of `next` that differ from `prev` (all non-zero ones without prev); returns how many. */
export async function writeChangedBlocks(d: TestDaemon, exportName: string, next: Buffer, prev: Buffer | null): Promise<number> {
  const c = await NbdClient.connect({ port: d.nbdPort, exportName });
  let blocks = 0;
  try {
    const zero = Buffer.alloc(BS);
    let runStart = -1;
    const flushRun = async (end: number): Promise<void> => {
      if (runStart < 0) return;
      for (let o = runStart; o < end; o += 1 << 20) await c.write(o, next.subarray(o, Math.min(end, o + (1 << 20))));
      runStart = -1;
    };
    for (let o = 0; o < next.length; o += BS) {
      const b = next.subarray(o, o + BS);
      const differs = prev ? !b.equals(prev.subarray(o, o + BS)) : !b.equals(zero);
      if (differs) {
        blocks++;
        if (runStart < 0) runStart = o;
      } else await flushRun(o);
    }
    await flushRun(next.length);
    await c.flush();
  } finally {
    await c.disconnect().catch(() => c.destroy());
  }
  return blocks;
}

/** Runs `fn` on the image mounted by the kernel (noatime: reading changes nothing), then unmounts it cleanly. */
export function withMounted(image: string, mnt: string, fn: (dir: string) => void): void {
  fs.mkdirSync(mnt, { recursive: true });
  withLoopMount(image, mnt, 'noatime', fn);
}

/**
 * sha256 of every regular file under dir, keyed by its path from the
 * filesystem's root in the catalog's printable form (escapeName: "/a/b",
 * bytes that are not text as \xHH), read with names as bytes.
 */
export function fileShas(dir: string): Map<string, { sha: string; size: number }> {
  const out = new Map<string, { sha: string; size: number }>();
  const walk = (abs: Buffer, rel: Buffer): void => {
    for (const name of fs.readdirSync(abs, { encoding: 'buffer' })) {
      if (rel.length === 0 && name.toString() === 'lost+found') continue;
      const a = Buffer.concat([abs, Buffer.from('/'), name]);
      const r = Buffer.concat([rel, Buffer.from('/'), name]);
      const st = fs.lstatSync(a);
      if (st.isDirectory()) walk(a, r);
      else if (st.isFile()) {
        const data = fs.readFileSync(a);
        out.set(escapeName(r), { sha: crypto.createHash('sha256').update(data).digest('hex'), size: data.length });
      }
    }
  };
  walk(Buffer.from(dir), Buffer.alloc(0));
  return out;
}

/** Places a marker and waits until its point is cataloged (the marker hook queues the build). */
export async function markCataloged(d: TestDaemon, volume: string, marker: string, timeoutMs = 120_000): Promise<PointRecord> {
  const m = await apiOk<{ seq: number }>(d, 'POST', `/v1/markers/${volume}`, { name: marker });
  return waitPoint(d, volume, m.seq, timeoutMs);
}

export async function waitPoint(d: TestDaemon, volume: string, seq: number, timeoutMs = 120_000): Promise<PointRecord> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await apiOk<{ points: PointRecord[]; jobs: JobRecord[] }>(d, 'GET', `/v1/volumes/${volume}/catalog`);
    const p = r.points.find((x) => x.seq === seq && x.state === 'complete');
    if (p) return p;
    const failed = r.jobs.find((j) => j.seq === seq && j.state === 'failed');
    if (failed) throw new Error(`catalog of @seq:${seq} failed: ${failed.error}`);
    if (Date.now() > deadline)
      throw new Error(`@seq:${seq} of ${volume} was not cataloged within ${timeoutMs} ms: ${JSON.stringify(r.jobs)}`);
    await sleep(200);
  }
}

/** GET that returns the raw body (file content) and the response headers. */
export async function download(d: TestDaemon, urlPath: string): Promise<{ body: Buffer; headers: Record<string, unknown> }> {
  const res = await d.client().download('GET', urlPath);
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return { body: Buffer.concat(chunks), headers: res.headers };
}

/** A Prometheus gauge's value from /v1/metrics. */
export async function metric(d: TestDaemon, name: string): Promise<number> {
  const text = await d.client().metrics();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  if (!m) throw new Error(`no metric ${name}`);
  return Number(m[1]);
}
