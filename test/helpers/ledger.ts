/**
 * The flush ledger: an independent libnbd client (Debian's python3-libnbd)
 * writes 4 KiB block i with a pattern derived from (round, i), flushes every
 * few writes and reports each acknowledged flush. After a crash, every block
 * up to the last reported flush must hold its pattern.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { run, type RunResult } from './daemon';

const PYTHON = '/usr/bin/python3';

const WRITER = `
import nbd, sys, hashlib
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rnd, blocks, every = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(blocks):
    d = hashlib.sha256(f"{rnd}-{i}".encode()).digest()
    h.pwrite((d * 128)[:4096], i * 4096)
    if i % every == every - 1:
        h.flush()
        print(f"flushed {i}", flush=True)
`;

const CHECK = `
import nbd, sys, hashlib
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rnd, last = sys.argv[2], int(sys.argv[3])
bad = [i for i in range(last + 1) if h.pread(4096, i * 4096) != (hashlib.sha256(f"{rnd}-{i}".encode()).digest() * 128)[:4096]]
if bad:
    print(f"lost blocks: {bad[:20]} ({len(bad)} in all)")
    sys.exit(1)
print(f"verified {last + 1} blocks")
`;

/** Fails loudly when the libnbd Python bindings are missing. */
export async function requireLedgerTools(): Promise<void> {
  if (!fs.existsSync(PYTHON)) throw new Error(`${PYTHON} is missing`);
  const r = await run(PYTHON, ['-c', 'import nbd']);
  if (r.code !== 0) throw new Error('python3-libnbd is missing (run tools/install-system-deps.sh)');
}

export interface LedgerWriter {
  /** Index of the last block covered by an acknowledged flush (-1: none yet). */
  readonly lastFlushed: number;
  readonly process: ChildProcess;
}

export function startLedgerWriter(uri: string, round: number, opts: { blocks: number; flushEvery: number }): LedgerWriter {
  const child = spawn(PYTHON, ['-c', WRITER, uri, String(round), String(opts.blocks), String(opts.flushEvery)], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const ledger = { lastFlushed: -1, process: child };
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    buf += s;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const m = /^flushed (\d+)$/.exec(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      if (m) ledger.lastFlushed = Number(m[1]);
    }
  });
  return ledger;
}

/** Checks blocks 0..last with yet another independent connection. */
export function checkLedger(uri: string, round: number, last: number): Promise<RunResult> {
  return run(PYTHON, ['-c', CHECK, uri, String(round), String(last)]);
}
