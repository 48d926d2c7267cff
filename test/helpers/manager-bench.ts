/**
 * Backup manager throughput micro-benchmark (not a test):
 *   node dist/test/helpers/manager-bench.js [containers=4] [volumeGiB=4] [workers=2]
 * Each container is a 64 MiB AILFC of 4 KiB writes at random aligned
 * offsets of one volume. Reports, per container and overall, the apply rate
 * (MiB/s of write payload and writes/s, from submit to commit, the
 * durable BILFC + replica fdatasync + LMDB commit included), the phase times
 * and the peak RSS of the process (the workers are threads of it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RecordKind } from '../../src/lfc';
import { BackupManager } from '../../src/manager/backup-manager';
import { Rng, tmpDir, writeAilfc, type Op } from './manager-fixtures';

async function main(): Promise<void> {
  const containers = Number(process.argv[2] ?? 4);
  const volGiB = Number(process.argv[3] ?? 4);
  const workers = Number(process.argv[4] ?? 2);
  const dir = tmpDir('mgr-bench');
  const size = volGiB * 2 ** 30;
  const blocks = size / 4096;
  const perContainer = Math.floor((64 * 2 ** 20) / (4096 + 48)); // records so the file is ~64 MiB
  const rng = new Rng(1234);
  const phases: Array<Record<string, unknown>> = [];
  const logger = {
    info: (o: object, msg?: string) => {
      if (msg === 'transaction committed') phases.push(o as Record<string, unknown>);
    },
    warn: () => undefined,
    error: (o: object, msg?: string) => console.error(msg, o),
    debug: () => undefined,
  };
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 20);
  try {
    const m = await BackupManager.open(path.join(dir, 'mgr'), {
      groupId: 1,
      volumes: [{ volumeId: 0, name: 'bench', size }],
      workers,
      logger,
    });
    const baseRss = process.memoryUsage().rss;
    let seq = 1;
    const payload = rng.bytes(4096);
    // Sequential: one container at a time (latency of one transaction).
    // Queued: the rest submitted at once (sustained rate; verification of
    // n+1 overlaps the apply of n).
    const refs = [];
    for (let n = 1; n <= containers; n++) {
      const ops: Op[] = [];
      for (let i = 0; i < perContainer; i++) {
        ops.push({ kind: RecordKind.Write, volumeId: 0, offset: rng.int(0, blocks - 1) * 4096, length: 4096, data: payload });
      }
      refs.push(await writeAilfc(path.join(dir, 'journal'), 1, n, ops, seq));
      seq += ops.length;
    }
    const fileMiB = fs.statSync(refs[0]!.path).size / 2 ** 20;
    const report = (label: string, count: number, ms: number): string => {
      const writes = count * perContainer;
      return `${label}: ${count} x ${fileMiB.toFixed(1)} MiB AILFC, ${writes} writes in ${ms.toFixed(0)} ms = ${((writes * 4096) / 2 ** 20 / (ms / 1000)).toFixed(0)} MiB/s, ${Math.round(writes / (ms / 1000))} writes/s`;
    };
    const half = Math.max(1, Math.floor(containers / 2));
    let t0 = performance.now();
    for (let i = 0; i < half; i++) await m.submit(refs[i]!);
    console.log(report('one at a time', half, performance.now() - t0));
    t0 = performance.now();
    await Promise.all(refs.slice(half).map((r) => m.submit(r)));
    if (containers > half) console.log(report('queued', containers - half, performance.now() - t0));
    phases.forEach((p, i) =>
      console.log(
        `  T_${i + 1}: prepare ${p.prepareMs} ms ${JSON.stringify(p.prepare)}; apply ${p.applyMs} ms ${JSON.stringify(p.apply)}; commit ${p.commitMs} ms`,
      ),
    );
    console.log(`RSS ${(baseRss / 2 ** 20).toFixed(0)} MiB after open, peak ${(peakRss / 2 ** 20).toFixed(0)} MiB`);
    await m.close();
  } finally {
    clearInterval(sampler);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
