/**
 * The LFC floor: the container format of AILFCs and BILFCs, below the
 * journal (which writes AILFCs) and the manager (which reads them and
 * writes BILFCs). format.ts is the byte-by-byte specification.
 */
export * from './format';
export { checkRecords, type CheckedRecords, decodeFileHeader, decodeRecordHeader, encodeFileHeader, encodeFooter } from './codec';
export { ContainerWriter, INLINE_WRITE_MAX, journalDirectIo, type WriterOptions } from './writer';
export { readRecordAt, readRecords, repairActive, scanContainer, verifyContainer } from './reader';
export { listContainers } from './files';
