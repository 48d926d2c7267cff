/** Prometheus gauges of the archive pool (absent until a pool exists). */
import * as client from 'prom-client';
import type { PoolStats } from '../archive';

const GAUGES: Array<[string, string, keyof PoolStats]> = [
  ['rewind_archive_points', 'Archived points in the pool', 'points'],
  ['rewind_archive_logical_bytes', 'Sum of the sizes of every archived volume of every point', 'logicalBytes'],
  ['rewind_archive_stored_bytes', 'Bytes of all pack files (compressed chunks, headers, indexes, not yet collected garbage)', 'packBytes'],
  ['rewind_archive_chunk_stored_bytes', 'Bytes of the distinct chunks after compression (and encryption)', 'storedBytes'],
  ['rewind_archive_unique_bytes', 'Plaintext bytes of the distinct chunks', 'uniqueBytes'],
  ['rewind_archive_dedup_ratio', 'Logical bytes over stored bytes', 'dedupRatio'],
  ['rewind_archive_chunks', 'Distinct chunks (leaves and tree nodes) in the pool', 'chunks'],
  ['rewind_archive_packs', 'Pack files in the pool', 'packs'],
  ['rewind_archive_quarantined_chunks', 'Chunks verify found bad (reads of points using them fail with EIO)', 'quarantined'],
];

export function registerArchiveMetrics(reg: client.Registry, stats: () => PoolStats | null): void {
  for (const [name, help, key] of GAUGES) {
    new client.Gauge({
      name,
      help,
      registers: [reg],
      collect() {
        const s = stats();
        if (s) this.set(s[key]);
      },
    });
  }
}
