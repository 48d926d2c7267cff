/**
 * Byte sizes as people type them: "4096", "64k", "512M", "1G", "1GiB", "2T".
 *
 * Units are binary (k = 1024) whatever their spelling: "1G", "1GB" and
 * "1GiB" all mean 2^30 bytes, as in qemu-img and nbdkit. A size used for a
 * volume must be a positive multiple of 512 (the sector size every NBD
 * client assumes) and at most 2^53 - 1 (exact in a JS number).
 */

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
  e: 2 ** 60,
};

export class SizeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SizeError';
  }
}

/**
 * Parses a size into bytes. Throws SizeError with a message fit for a user
 * ("invalid size \"1X\": ...") on anything else. Accepts numbers as well, so
 * JSON bodies may carry either `"1G"` or `1073741824`.
 */
export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) {
      throw new SizeError(`invalid size ${input}: must be a non-negative integer number of bytes`);
    }
    return input;
  }
  if (typeof input !== 'string') {
    throw new SizeError('invalid size: expected a string such as "1G" or a number of bytes');
  }
  const text = input.trim();
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text);
  if (!m) {
    throw new SizeError(`invalid size "${input}": expected a number with an optional unit (k, M, G, T; e.g. "512M", "1G", "4096")`);
  }
  const unitText = m[2]!.toLowerCase();
  // Accept "g", "gb", "gib" (and "b" alone for bytes).
  let unit: string;
  if (unitText === '' || unitText === 'b') unit = unitText;
  else if (/^[kmgtpe](?:i?b)?$/.test(unitText)) unit = unitText[0]!;
  else throw new SizeError(`invalid size "${input}": unknown unit "${m[2]}" (use k, M, G, T, P or E)`);
  const multiplier = UNITS[unit]!;
  const numText = m[1]!;
  let bytes: number;
  if (numText.includes('.')) {
    // "1.5G": allowed when the result is a whole number of bytes.
    bytes = Number(numText) * multiplier;
    if (!Number.isInteger(bytes)) {
      throw new SizeError(`invalid size "${input}": not a whole number of bytes`);
    }
  } else {
    const big = BigInt(numText) * BigInt(multiplier);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new SizeError(`invalid size "${input}": too large (maximum is ${Number.MAX_SAFE_INTEGER} bytes)`);
    }
    bytes = Number(big);
  }
  if (!Number.isSafeInteger(bytes)) {
    throw new SizeError(`invalid size "${input}": too large (maximum is ${Number.MAX_SAFE_INTEGER} bytes)`);
  }
  return bytes;
}

/** parseSize plus the rules for a volume: > 0 and a multiple of 512. */
export function parseVolumeSize(input: string | number): number {
  const bytes = parseSize(input);
  checkVolumeSize(bytes, typeof input === 'string' ? `"${input}"` : String(input));
  return bytes;
}

export function checkVolumeSize(bytes: number, shown: string = String(bytes)): void {
  if (bytes <= 0) throw new SizeError(`invalid size ${shown}: must be greater than zero`);
  if (bytes % 512 !== 0) {
    throw new SizeError(`invalid size ${shown}: ${bytes} bytes is not a multiple of 512`);
  }
}

/** 1073741824 -> "1 GiB", 1536 -> "1.5 KiB", 100 -> "100 B". */
export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const names = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let value = bytes;
  let i = -1;
  while (value >= 1024 && i < names.length - 1) {
    value /= 1024;
    i++;
  }
  const shown = value >= 100 || Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1).replace(/\.0$/, '');
  // toFixed(0) may round 1023.6 up to "1024": acceptable for display.
  return `${shown} ${names[i]}`;
}
