/** The daemon's image backend: raw files and block devices via FileExport. */
import { FileExport } from '../storage/file-export';
import type { ImageBackend } from './volumes';

export const fileBackend: ImageBackend = {
  create: (path, size) => FileExport.create(path, size),
  open: (path, opts) => FileExport.open(path, { readOnly: opts.readOnly }),
};
