/**
 * What the daemon needs of an image (a volume's production file or block
 * device): an NbdExport it can close, and a backend that creates and opens
 * them (FileExport; wrapped for fault injection in tests).
 */
import type { NbdExport } from '../nbd';

/** An opened image: what FileExport provides. */
export interface ImageExport extends NbdExport {
  close(): Promise<void> | void;
}

/** How images are created and opened (FileExport in the daemon). */
export interface ImageBackend {
  create(path: string, size: number): Promise<void>;
  open(path: string, opts: { readOnly: boolean }): Promise<ImageExport>;
}
