/** fio command lines shared by the benchmarks. */

/**
 * Timed random writes through fio's NBD engine, with JSON output (the
 * "ingest" load of bench-manager and bench-retention).
 */
export function fioRandWriteArgs(
  uri: string,
  o: { bs: string; iodepth: string | number; size: string; runtime: string | number },
): string[] {
  return [
    '--name=ingest',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    `--bs=${o.bs}`,
    `--iodepth=${o.iodepth}`,
    `--size=${o.size}`,
    '--time_based',
    `--runtime=${o.runtime}`,
    '--output-format=json',
  ];
}
