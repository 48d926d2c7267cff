/**
 * NBD protocol fuzzing harness, shared by the CI test (test/fuzz-nbd.test.ts)
 * and the long run for humans (tools/fuzz-nbd.ts).
 *
 * Byte streams go through real sockets into real NbdServers (the handshake
 * and transmission parsers exactly as clients reach them): a plain TCP
 * server (direct-read mode), a TLS-required and a TLS-optional server
 * (ordinary 'data' mode, TLS_REQD paths, STARTTLS followed by garbage),
 * and serveStream() on an accepted socket (the stdio path).
 *
 * Inputs are valid sessions recorded from the in-tree client and built by
 * hand (the corpus), mutated by fast-check: bit flips, interesting 16/32-bit
 * values, insertions, deletions, duplications, truncations and splices of
 * two sessions, delivered in random chunk sizes. Pure random bytes too.
 *
 * Invariants checked for every input: no uncaught exception or unhandled
 * rejection; the server closes the connection within a timeout after the
 * client half-closes (no hang); no connection is left behind and every
 * export opened is closed again; memory stays bounded over the run; and
 * the server still serves a good client byte-exactly afterwards.
 */
import * as net from 'node:net';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import fc from 'fast-check';
import { NbdClient } from '../../src/nbd/client';
import type { ExportProvider, NbdExport, OpenedExport } from '../../src/nbd/export';
import * as P from '../../src/nbd/protocol';
import { NbdServer } from '../../src/nbd/server';
import type { TlsSettings } from '../../src/tls';
import { MemoryExport } from '../../src/storage/memory-export';

const MiB = 1024 * 1024;

// ------------------------------------------------------------------ corpus

function opt(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(P.IHAVEOPT, 0);
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function nameReq(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}

function metaReq(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name), 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q), 0);
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

function flags(f = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(f, 0);
  return b;
}

function req(type: number, f: number, cookie: number, offset: number, length: number, payload?: Buffer): Buffer {
  const h = P.encodeRequest(type, f, BigInt(cookie), offset, length);
  return payload ? Buffer.concat([h, payload]) : h;
}

/** Sessions built byte by byte: option haggling of every kind, EXPORT_NAME, requests of every command. */
export function handmadeSessions(): Buffer[] {
  const w = Buffer.alloc(4096, 0x5a);
  const transmission = [
    req(P.CMD_WRITE, 0, 1, 0, 4096, w),
    req(P.CMD_WRITE, P.CMD_FLAG_FUA, 2, 65536, 4096, w),
    req(P.CMD_READ, 0, 3, 0, 8192),
    req(P.CMD_READ, P.CMD_FLAG_DF, 4, 0, 131072),
    req(P.CMD_TRIM, 0, 5, 4096, 4096),
    req(P.CMD_WRITE_ZEROES, P.CMD_FLAG_NO_HOLE, 6, 8192, 4096),
    req(P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO, 7, 8192, 4096),
    req(P.CMD_CACHE, 0, 8, 0, 65536),
    req(P.CMD_BLOCK_STATUS, 0, 9, 0, MiB),
    req(P.CMD_BLOCK_STATUS, P.CMD_FLAG_REQ_ONE, 10, 0, 4096),
    req(P.CMD_FLUSH, 0, 11, 0, 0),
    req(P.CMD_DISC, 0, 12, 0, 0),
  ];
  return [
    // Option haggling, everything, then abort.
    Buffer.concat([
      flags(),
      opt(P.OPT_LIST),
      opt(P.OPT_INFO, nameReq('rw', [P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE])),
      opt(P.OPT_LIST_META_CONTEXT, metaReq('rw', ['base:'])),
      opt(P.OPT_SET_META_CONTEXT, metaReq('rw', [P.BASE_ALLOCATION])),
      opt(P.OPT_STRUCTURED_REPLY),
      opt(P.OPT_SET_META_CONTEXT, metaReq('rw', [P.BASE_ALLOCATION])),
      opt(42, Buffer.from('unknown option data')),
      opt(P.OPT_STARTTLS),
      opt(P.OPT_ABORT),
    ]),
    // Structured, meta context, GO, every command.
    Buffer.concat([
      flags(),
      opt(P.OPT_STRUCTURED_REPLY),
      opt(P.OPT_SET_META_CONTEXT, metaReq('rw', [P.BASE_ALLOCATION])),
      opt(P.OPT_GO, nameReq('rw', [P.INFO_BLOCK_SIZE])),
      ...transmission,
    ]),
    // Old-fashioned: no NO_ZEROES, EXPORT_NAME, simple replies.
    Buffer.concat([
      flags(P.FLAG_C_FIXED_NEWSTYLE),
      opt(P.OPT_EXPORT_NAME, Buffer.from('rw')),
      ...transmission.slice(0, 6),
      transmission.at(-1)!,
    ]),
    // Read-only export: writes refused.
    Buffer.concat([
      flags(),
      opt(P.OPT_GO, nameReq('ro')),
      req(P.CMD_WRITE, 0, 1, 0, 4096, w),
      req(P.CMD_READ, 0, 2, 0, 4096),
      req(P.CMD_DISC, 0, 3, 0, 0),
    ]),
    // A write payload over the maximum, then more requests.
    Buffer.concat([
      flags(),
      opt(P.OPT_GO, nameReq('')),
      req(P.CMD_WRITE, 0, 1, 0, 33 * MiB),
      Buffer.alloc(64),
      req(P.CMD_READ, 0, 2, 0, 512),
    ]),
    // STARTTLS first, then a fake TLS ClientHello-ish record.
    Buffer.concat([flags(), opt(P.OPT_STARTTLS), Buffer.from('160301002a0100002603035a', 'hex'), Buffer.alloc(40, 1)]),
  ];
}

/** Records what the in-tree client sends in real sessions (through a recording proxy). */
export async function recordClientSessions(): Promise<Buffer[]> {
  const { server, port } = await startTarget('plain');
  const sessions: Buffer[] = [];
  const proxy = net.createServer((c) => {
    const chunks: Buffer[] = [];
    sessions.push(Buffer.alloc(0));
    const idx = sessions.length - 1;
    const up = net.connect({ host: '127.0.0.1', port });
    c.on('data', (d: Buffer) => {
      chunks.push(Buffer.from(d));
      sessions[idx] = Buffer.concat(chunks);
      up.write(d);
    });
    up.on('data', (d) => c.write(d));
    c.on('end', () => up.end());
    up.on('end', () => c.end());
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const pport = (proxy.address() as net.AddressInfo).port;
  try {
    const a = await NbdClient.connect({ port: pport, exportName: 'rw' });
    await a.write(0, Buffer.alloc(4096, 1));
    await a.write(8192, Buffer.alloc(70_000, 2)); // large: the direct-read path
    await a.read(0, 4096);
    await a.read(0, 256 * 1024); // sparse: hole chunks
    await a.trim(4096, 4096);
    await a.zero(65536, 65536, P.CMD_FLAG_NO_HOLE);
    await a.cache(0, 4096);
    await a.blockStatus(0, MiB);
    await a.blockStatus(0, 4096, P.CMD_FLAG_REQ_ONE);
    await a.write(12288, Buffer.alloc(512, 3), P.CMD_FLAG_FUA);
    await a.flush();
    await Promise.all([a.read(0, 512), a.read(512, 512), a.write(1024, Buffer.alloc(512, 4))]);
    await a.disconnect();
    const b = await NbdClient.connect({ port: pport, exportName: 'ro', structured: false });
    await b.read(0, 4096);
    await b.raw(P.CMD_WRITE, 0, 0, 512, Buffer.alloc(512)).catch(() => undefined);
    await b.disconnect();
    const c = await NbdClient.connect({ port: pport, exportName: '', blockStatus: false });
    await c.read(MiB - 512, 512);
    await c.raw(P.CMD_READ, 0, MiB, 512).catch(() => undefined); // beyond the end
    await c.disconnect();
  } finally {
    proxy.close();
    await server.close();
  }
  return sessions.filter((s) => s.length > 0);
}

// ----------------------------------------------------------------- targets

export type TargetKind = 'plain' | 'tls-require' | 'tls-on' | 'stream';

export interface Target {
  kind: TargetKind;
  server: NbdServer;
  port: number;
  /** Exports opened and not yet closed. */
  openExports(): number;
  close(): Promise<void>;
}

/** Counts opens and closes, so a leaked export shows. */
function countingProvider(): { provider: ExportProvider; open(): number; mem: MemoryExport } {
  const mem = new MemoryExport(MiB);
  const ro = new MemoryExport(MiB, { readOnly: true });
  let live = 0;
  const wrap = (e: NbdExport): NbdExport => {
    live++;
    let closed = false;
    const out: NbdExport = {
      size: e.size,
      readOnly: e.readOnly,
      capabilities: e.capabilities,
      read: (o, l, into) => e.read(o, l, into),
      write: (o, d, f) => e.write(o, d, f),
      flush: () => e.flush(),
      trim: (o, l, f) => e.trim(o, l, f),
      zero: (o, l, f) => e.zero(o, l, f),
      cache: (o, l) => e.cache(o, l),
      blockStatus: (o, l) => e.blockStatus(o, l),
      close() {
        if (!closed) live--;
        closed = true;
      },
    };
    if (e.blockSize) (out as { blockSize?: NbdExport['blockSize'] }).blockSize = e.blockSize;
    if (e.readSparse) out.readSparse = (o, l, into) => e.readSparse!(o, l, into);
    return out;
  };
  const provider: ExportProvider = {
    list: () => [{ name: 'rw', description: 'fuzz rw' }, { name: 'ro' }],
    async open(name): Promise<OpenedExport | null> {
      if (name === 'rw' || name === '') return { name: 'rw', export: wrap(mem) };
      if (name === 'ro') return { name: 'ro', export: wrap(ro) };
      return null;
    },
    authorize: (name) => name !== 'secret',
  };
  return { provider, open: () => live, mem };
}

export async function startTarget(kind: TargetKind, credentials?: TlsSettings['credentials']): Promise<Target> {
  const { provider, open } = countingProvider();
  let tls: TlsSettings = { mode: 'off' };
  if (kind === 'tls-require' || kind === 'tls-on') {
    if (!credentials) throw new Error(`${kind} needs TLS credentials`);
    tls = { mode: kind === 'tls-require' ? 'require' : 'on', credentials };
  }
  const server = new NbdServer({
    provider,
    tls,
    limits: { handshakeTimeoutMs: 5000, writeStallTimeoutMs: 5000, maxBufferedBytesPerConnection: 8 * MiB },
  });
  if (kind !== 'stream') {
    const { port } = await server.listenTcp('127.0.0.1', 0);
    return { kind, server, port, openExports: open, close: () => server.close() };
  }
  // serveStream() on accepted sockets: the path stdio mode takes.
  const listener = net.createServer({ allowHalfOpen: true }, (sock) => void server.serveStream(sock, 'stream'));
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  const port = (listener.address() as net.AddressInfo).port;
  return {
    kind,
    server,
    port,
    openExports: open,
    close: async () => {
      listener.close();
      await server.close();
    },
  };
}

// -------------------------------------------------------------- mutations

export type Mutation =
  | { t: 'flip'; pos: number; bit: number }
  | { t: 'byte'; pos: number; v: number }
  | { t: 'u16'; pos: number; v: number }
  | { t: 'u32'; pos: number; v: number }
  | { t: 'insert'; pos: number; bytes: Uint8Array }
  | { t: 'delete'; pos: number; len: number }
  | { t: 'dup'; pos: number; len: number }
  | { t: 'truncate'; pos: number };

const INTERESTING_32 = [
  0,
  1,
  2,
  16,
  28,
  512,
  4096,
  65535,
  65536,
  0x7fffffff,
  0x80000000,
  0xffffffff,
  32 * MiB,
  32 * MiB + 1,
  64 * MiB + 1,
  0x100000,
];
const INTERESTING_16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x7fff, 0x8000, 0xffff];

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ t: fc.constant('flip' as const), pos: fc.nat(), bit: fc.nat(7) }),
  fc.record({ t: fc.constant('byte' as const), pos: fc.nat(), v: fc.nat(255) }),
  fc.record({ t: fc.constant('u16' as const), pos: fc.nat(), v: fc.constantFrom(...INTERESTING_16) }),
  fc.record({ t: fc.constant('u32' as const), pos: fc.nat(), v: fc.constantFrom(...INTERESTING_32) }),
  fc.record({ t: fc.constant('insert' as const), pos: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 48 }) }),
  fc.record({ t: fc.constant('delete' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ t: fc.constant('dup' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 256 }) }),
  fc.record({ t: fc.constant('truncate' as const), pos: fc.nat() }),
);

export function mutate(input: Buffer, muts: Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of muts) {
    if (b.length === 0 && m.t !== 'insert') continue;
    const pos = b.length ? m.pos % b.length : 0;
    switch (m.t) {
      case 'flip':
        b[pos]! ^= 1 << m.bit;
        break;
      case 'byte':
        b[pos] = m.v;
        break;
      case 'u16':
        if (pos + 2 <= b.length) b.writeUInt16BE(m.v, pos);
        break;
      case 'u32':
        if (pos + 4 <= b.length) b.writeUInt32BE(m.v >>> 0, pos);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, pos), Buffer.from(m.bytes), b.subarray(pos)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.length, pos + m.len))]);
        break;
      case 'dup':
        b = Buffer.concat([b.subarray(0, pos + Math.min(m.len, b.length - pos)), b.subarray(pos)]);
        break;
      case 'truncate':
        b = b.subarray(0, pos);
        break;
    }
  }
  return b;
}

export interface FuzzCase {
  bytes: Buffer;
  chunks: number[];
  target: number;
}

/** Cases: mutated corpus sessions (most), splices of two, and random bytes after a valid greeting reply or alone. */
export function caseArb(corpus: Buffer[], targets: number): fc.Arbitrary<FuzzCase> {
  const pick = fc.nat(corpus.length - 1);
  const bytes = fc.oneof(
    { weight: 12, arbitrary: fc.tuple(pick, fc.array(mutationArb, { maxLength: 6 })).map(([i, m]) => mutate(corpus[i]!, m)) },
    {
      weight: 3,
      arbitrary: fc.tuple(pick, pick, fc.nat(), fc.nat(), fc.array(mutationArb, { maxLength: 3 })).map(([i, j, a, c, m]) => {
        const x = corpus[i]!;
        const y = corpus[j]!;
        return mutate(Buffer.concat([x.subarray(0, a % (x.length + 1)), y.subarray(c % (y.length + 1))]), m);
      }),
    },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 512 }).map((r) => Buffer.concat([flags(), Buffer.from(r)])) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 2048 }).map((r) => Buffer.from(r)) },
  );
  return fc.record({
    bytes,
    chunks: fc.array(fc.integer({ min: 1, max: 8192 }), { maxLength: 12 }),
    target: fc.nat(targets - 1),
  });
}

// -------------------------------------------------------------- execution

export class FuzzFailure extends Error {}

/**
 * Sends `bytes` to the target in `chunks`, half-closes, reads and discards
 * replies, and waits for the server to close. Throws FuzzFailure on a hang.
 */
export async function execute(target: Target, bytes: Buffer, chunks: number[], timeoutMs = 10_000): Promise<{ replyBytes: number }> {
  const sock = net.connect({ host: '127.0.0.1', port: target.port, allowHalfOpen: true });
  let replyBytes = 0;
  let closed = false;
  const closedP = new Promise<void>((resolve) => {
    sock.on('close', () => {
      closed = true;
      resolve();
    });
  });
  sock.on('data', (d: Buffer) => (replyBytes += d.length));
  sock.on('error', () => undefined);
  await new Promise<void>((resolve) => {
    sock.once('connect', resolve);
    sock.once('close', resolve);
  });
  let pos = 0;
  let ci = 0;
  while (pos < bytes.length && !closed) {
    const n = chunks.length ? chunks[ci++ % chunks.length]! : bytes.length;
    const piece = bytes.subarray(pos, pos + n);
    pos += piece.length;
    if (!sock.write(piece)) {
      await new Promise<void>((r) => {
        if (closed) return r();
        const done = () => {
          sock.off('drain', done);
          sock.off('close', done);
          r();
        };
        sock.once('drain', done);
        sock.once('close', done);
      });
    }
    if (ci % 3 === 0) await new Promise((r) => setImmediate(r));
  }
  if (!closed) sock.end();
  let timer: NodeJS.Timeout | undefined;
  const hang = await Promise.race([
    closedP.then(() => false),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(true), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  if (hang) {
    sock.destroy();
    throw new FuzzFailure(
      `${target.kind}: the server did not close the connection within ${timeoutMs} ms of the client's end (input ${bytes.length} bytes)`,
    );
  }
  return { replyBytes };
}

/** The server is still correct: a good client writes and reads back. */
export async function checkGoodClient(target: Target): Promise<void> {
  if (target.kind === 'tls-require') return; // needs TLS; checked on the other targets
  const c = await NbdClient.connect({ port: target.port, exportName: 'rw' });
  try {
    const data = Buffer.alloc(65536);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
    await c.write(MiB - 65536, data);
    const back = await c.read(MiB - 65536, 65536);
    if (!back.equals(data)) throw new FuzzFailure(`${target.kind}: a good client read back wrong data after fuzzing`);
  } finally {
    await c.disconnect();
  }
}

let gcFn: (() => void) | null | undefined;
/** Forces a garbage collection (for memory checks); a no-op if it cannot. */
export function collectGarbage(): void {
  if (gcFn === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc') as () => void;
    } catch {
      gcFn = null;
    }
  }
  gcFn?.();
}

export interface FuzzStats {
  executions: number;
  replyBytes: number;
  inputBytes: number;
  byTarget: Record<string, number>;
  heapBeforeMiB: number;
  heapAfterMiB: number;
  rssPeakMiB: number;
}

export interface RunOptions {
  targets: Target[];
  corpus: Buffer[];
  timeLimitMs: number;
  seed?: number;
  /** Heap growth (after GC) allowed over the run. */
  maxHeapGrowthMiB?: number;
  onProgress?(s: FuzzStats): void;
}

/**
 * Runs fast-check over the cases until the time limit. Throws on any
 * invariant violation (fast-check shrinks the input first and reports it).
 */
export async function fuzzNbd(o: RunOptions): Promise<FuzzStats> {
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  collectGarbage();
  const stats: FuzzStats = {
    executions: 0,
    replyBytes: 0,
    inputBytes: 0,
    byTarget: {},
    heapBeforeMiB: process.memoryUsage().heapUsed / MiB,
    heapAfterMiB: 0,
    rssPeakMiB: process.memoryUsage().rss / MiB,
  };
  try {
    await fc.assert(
      fc.asyncProperty(caseArb(o.corpus, o.targets.length), async (c) => {
        const target = o.targets[c.target]!;
        const r = await execute(target, c.bytes, c.chunks);
        stats.executions++;
        stats.inputBytes += c.bytes.length;
        stats.replyBytes += r.replyBytes;
        stats.byTarget[target.kind] = (stats.byTarget[target.kind] ?? 0) + 1;
        // The server lets go of the connection and its export.
        const deadline = Date.now() + 5000;
        while ((target.server.connectionCount() > 0 || target.openExports() > 0) && Date.now() < deadline) {
          await new Promise((res) => setTimeout(res, 2));
        }
        if (target.server.connectionCount() > 0) throw new FuzzFailure(`${target.kind}: a connection was left open`);
        if (target.openExports() > 0) throw new FuzzFailure(`${target.kind}: an export was left open`);
        if (uncaught.length) throw new FuzzFailure(`uncaught: ${String((uncaught[0] as Error)?.stack ?? uncaught[0])}`);
        if (stats.executions % 200 === 0) {
          stats.rssPeakMiB = Math.max(stats.rssPeakMiB, process.memoryUsage().rss / MiB);
          o.onProgress?.(stats);
        }
      }),
      {
        numRuns: Number.MAX_SAFE_INTEGER,
        interruptAfterTimeLimit: o.timeLimitMs,
        markInterruptAsFailure: false,
        ...(o.seed !== undefined ? { seed: o.seed } : {}),
      },
    );
    for (const t of o.targets) await checkGoodClient(t);
    if (uncaught.length) throw new FuzzFailure(`uncaught: ${String((uncaught[0] as Error)?.stack ?? uncaught[0])}`);
    collectGarbage();
    stats.heapAfterMiB = process.memoryUsage().heapUsed / MiB;
    stats.rssPeakMiB = Math.max(stats.rssPeakMiB, process.memoryUsage().rss / MiB);
    const allowed = o.maxHeapGrowthMiB ?? 64;
    if (stats.heapAfterMiB - stats.heapBeforeMiB > allowed) {
      throw new FuzzFailure(`heap grew from ${stats.heapBeforeMiB.toFixed(1)} to ${stats.heapAfterMiB.toFixed(1)} MiB over the run`);
    }
    return stats;
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
  }
}
