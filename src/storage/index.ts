/** Storage back ends implementing the NBD export interface (src/nbd/export.ts). */
export { FileExport, codedError, MAX_BLOCK_STATUS_EXTENTS, ZERO_WRITE_CHUNK } from './file-export';
export type { FileOpenOptions, FileCreateOptions, FileImageInfo } from './file-export';
export { MemoryExport } from './memory-export';
export type { MemoryOp, MemoryExportHooks, MemoryExportOptions, MemoryExportStats } from './memory-export';
