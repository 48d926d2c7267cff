/**
 * Caps on everything an image can ask the reader to do. A well-formed
 * filesystem never reaches them; a hostile one meets a LIMIT or CORRUPT
 * error instead of unbounded memory or time.
 */
export const LIMITS = {
  /** ext4 never builds extent trees deeper than 5 (the kernel's own bound). */
  maxExtentDepth: 5,
  /** Symlink targets longer than PATH_MAX are refused. */
  maxSymlinkLength: 4096,
  /** Directories larger than this are refused (largedir allows ~2^32 blocks; nobody has them). */
  maxDirectoryBytes: 4 * 1024 ** 3,
  /** Nesting depth of a walk (frames on the explicit stack). */
  maxWalkDepth: 2048,
  /** Path components resolved in one lookup, and symlinks followed (ELOOP). */
  maxPathComponents: 4096,
  maxSymlinkHops: 40,
  /** MBR: logical partitions followed along the EBR chain. */
  maxLogicalPartitions: 256,
  /** GPT: bytes of partition entries read (128 entries x 128 bytes is usual). */
  maxGptEntryBytes: 1024 * 1024,
  /** Group descriptor table bytes read at open (16 TiB of 4 KiB blocks: 8 MiB). */
  maxGroupDescriptorBytes: 64 * 1024 * 1024,
  /** Bytes read per image call when streaming file data. */
  readChunk: 1024 * 1024,
} as const;
