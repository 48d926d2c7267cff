/** `rewind serve` options of the archive pool. */
import * as path from 'node:path';
import type { Command } from 'commander';
import type { ServeConfig } from '../app/serve';
import { parseVolumeSize } from '../util/size';
import { CliError, EXIT } from './common';

export interface ArchiveServeOptions {
  archiveDir?: string;
  archiveKey?: string;
  archiveLeafSize?: string;
}

export function addArchiveServeOptions(serve: Command): Command {
  return serve
    .option('--archive-dir <dir>', 'local state of the archive pool, packs in DIR/store (default <data-dir>/archive)')
    .option('--archive-key <file>', 'key file of an encrypted archive pool (AES-256-GCM; a new pool is created encrypted)')
    .option('--archive-leaf-size <size>', 'leaf (chunk) size of a new archive pool, a power of two from 4K to 4M (default 64K)');
}

export function applyArchiveOptions(o: ArchiveServeOptions, config: ServeConfig): void {
  const a: NonNullable<ServeConfig['archive']> = {};
  if (o.archiveDir) a.dir = path.resolve(o.archiveDir);
  if (o.archiveKey) a.keyFile = path.resolve(o.archiveKey);
  if (o.archiveLeafSize) {
    let n: number;
    try {
      n = parseVolumeSize(o.archiveLeafSize);
    } catch (err) {
      throw new CliError(`--archive-leaf-size: ${(err as Error).message}`, EXIT.USAGE);
    }
    if (n < 4096 || n > 4 << 20 || (n & (n - 1)) !== 0)
      throw new CliError('--archive-leaf-size must be a power of two from 4K to 4M', EXIT.USAGE);
    a.leafSize = n;
  }
  if (Object.keys(a).length) config.archive = a;
}
