/** The daemon's image backend: raw files and block devices via FileExport. */
import { FileExport } from '../storage/file-export';
import { faultInjectingBackend } from './fault-injection';
import type { ImageBackend } from '../storage/image';

export const fileBackend: ImageBackend = {
  create: (path, size) => FileExport.create(path, size),
  open: (path, opts) => FileExport.open(path, { readOnly: opts.readOnly }),
};

/** fileBackend, wrapped for fault injection when REWIND_TEST_FAULTS is set (tests only). */
export function imageBackend(): ImageBackend {
  return faultInjectingBackend(fileBackend);
}
