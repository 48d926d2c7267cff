/**
 * Test-only: a synthetic history for the console's scale test, written
 * straight into a stopped daemon's LMDB catalogs (no container is applied,
 * no history file exists): `transactions` transaction records of a
 * protected volume's group spread over `spanMs` up to `end` (a daily cycle
 * in the write rate, so the chart has a shape), the oldest tenth marked as
 * merged by retention, one super transaction in the middle, and `markers`
 * markers (a third application-consistent) in the time-travel store.
 *
 * Rates, transactions and markers draw from this; reading an image at one
 * of these points does not work (their containers do not exist).
 */
import * as path from 'node:path';
import { open } from 'lmdb';
import { ManagerCatalog } from '../../src/manager/catalog';
import type { TransactionRecord } from '../../src/manager/types';
import type { MarkerRecord } from '../../src/timetravel/markers';

export interface SyntheticHistory {
  firstTime: number;
  lastTime: number;
  lastSeq: number;
  transactions: number;
  markers: number;
  superRange: { fromN: number; toN: number };
  writeMs: number;
}

export async function writeSyntheticHistory(
  dataDir: string,
  group: string,
  opts: { transactions: number; markers: number; spanMs: number; end: number; volume: string },
): Promise<SyntheticHistory> {
  const t0 = Date.now();
  const cat = ManagerCatalog.open(path.join(dataDir, 'groups', group, 'manager'));
  const config = cat.config();
  if (!config) throw new Error(`no manager catalog for group ${group} in ${dataDir}`);
  if (cat.applied().lastContainer !== 0) throw new Error('the synthetic history must start an empty group');
  const txn = cat.root.openDB<TransactionRecord, number>('txn', {});
  const seqDb = cat.root.openDB<number, number>('seq', {});
  const meta = cat.root.openDB<unknown, string>('meta', {});
  const N = opts.transactions;
  const start = opts.end - opts.spanMs;
  const step = opts.spanMs / N;
  const superFrom = Math.floor(N * 0.6);
  const superTo = superFrom + 40;
  let seq = 0;
  let time = start;
  let rnd = 12345;
  const rand = (): number => {
    rnd = (rnd * 1103515245 + 12345) & 0x7fffffff;
    return rnd / 0x7fffffff;
  };
  await cat.root.transaction(() => {
    for (let n = 1; n <= N; n++) {
      const day = Math.sin((2 * Math.PI * (time - start)) / 86_400_000);
      const records = 1 + Math.floor(rand() * 60 * (1.2 + day));
      const firstTime = time;
      const lastTime = time + step * 0.7;
      const rec: TransactionRecord = {
        n,
        groupId: config.groupId,
        firstSeq: seq + 1,
        lastSeq: seq + records,
        firstTime: Math.round(firstTime),
        lastTime: Math.round(lastTime),
        records,
        errors: 0,
        ailfc: { file: `ailfc-${n}.synthetic`, size: records * 65_600, bodyCrc: 0, recordCount: records },
        bilfc: { file: `bilfc-${n}.synthetic`, size: records * 65_600, bodyCrc: 0, recordCount: records * 16 },
        blocks: records * 16,
        bytesApplied: records * 65_536,
        volumes: [1],
        blockSize: config.blockSize,
        committedAt: Math.round(lastTime + 1000),
      };
      if (n <= N / 10) rec.mergedFrom = n;
      if (n >= superFrom && n <= superTo)
        rec.superTransaction = { id: superFrom, fromSeq: seq + 1, last: n === superTo, fromTime: Math.round(firstTime) };
      void txn.put(n, rec);
      void seqDb.put(rec.lastSeq, n);
      seq += records;
      time += step;
    }
    void meta.put('applied', { lastContainer: N, lastSeq: seq, lastTime: Math.round(time - step * 0.3) });
  });
  await cat.close();

  const tt = open({ path: path.join(dataDir, 'timetravel', 'index'), maxDbs: 8 });
  const markersDb = tt.openDB<MarkerRecord, [string, string]>('markers', {});
  await tt.transaction(() => {
    for (let i = 0; i < opts.markers; i++) {
      const mt = start + ((i + 0.5) * opts.spanMs) / opts.markers;
      const name = `m-${String(i).padStart(5, '0')}`;
      void markersDb.put([group, name], {
        name,
        group,
        volume: opts.volume,
        seq: Math.max(1, Math.round((seq * (mt - start)) / opts.spanMs)),
        time: Math.round(mt),
        kind: i % 3 === 0 ? 'application-consistent' : 'crash-consistent',
        reason: null,
        retainUntil: null,
        auto: i % 3 !== 0,
        hooks: { pre: null, post: null },
      });
    }
  });
  await tt.close();
  return {
    firstTime: start,
    lastTime: time,
    lastSeq: seq,
    transactions: N,
    markers: opts.markers,
    superRange: { fromN: superFrom, toN: superTo },
    writeMs: Date.now() - t0,
  };
}
