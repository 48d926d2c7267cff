/**
 * Log file containers (src/lfc) against real files:
 * round trips of both kinds, corruption detection, torn-tail repair at
 * every cut, ordering under concurrency, group commit, sealing, fuzzed
 * input, and a SIGKILL'd writer.
 */
import { pattern, rng } from './helpers/random';
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { crc32 } from '../src/util/crc32';
import fc from 'fast-check';
import rawFs = require('node:fs');
import {
  ContainerWriter,
  LfcFormatError,
  encodeFileHeader,
  listContainers,
  readRecordAt,
  readRecords,
  repairActive,
  scanContainer,
  verifyContainer,
  type RecordInput,
  type StoredRecord,
} from '../src/lfc';
import { crc32Combine } from '../src/util/crc32';
import { ContainerKind, FILE_HEADER_SIZE, FOOTER_SIZE, RECORD_HEADER_SIZE, RecordKind, containerFileName } from '../src/lfc';

type T = ExecutionContext<unknown>;

function tempDir(t: T): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-lfc-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Rec {
  input: RecordInput;
  payload: Buffer | null;
}

const AILFC_KINDS = [
  RecordKind.Write,
  RecordKind.Write,
  RecordKind.Write,
  RecordKind.Trim,
  RecordKind.Zero,
  RecordKind.Error,
  RecordKind.Resync,
];

/** Random records of a container kind; seqs strictly increasing for AILFCs. */
function makeRecords(kind: ContainerKind, n: number, seed: number, maxPayload = 70000): Rec[] {
  const r = rng(seed);
  const out: Rec[] = [];
  let seq = 1 + Math.floor(r() * 1000);
  let time = 1.7e12 + r() * 1e9;
  for (let i = 0; i < n; i++) {
    const rk = kind === ContainerKind.BILFC ? RecordKind.BeforeBlock : AILFC_KINDS[Math.floor(r() * AILFC_KINDS.length)];
    let length = Math.floor(r() * maxPayload);
    let payload: Buffer | null = null;
    if (rk === RecordKind.Write || rk === RecordKind.Resync || rk === RecordKind.BeforeBlock) {
      payload = length > 0 ? pattern(length, seed * 7919 + i) : null;
    } else if (rk === RecordKind.Error) {
      payload = Buffer.from(`EIO at record ${i}`, 'utf8');
      length = 4096;
    } else {
      length = length * 512;
    }
    out.push({
      input: {
        kind: rk,
        flags: r() < 0.2 ? 1 : 0,
        volumeId: Math.floor(r() * 4),
        seq: kind === ContainerKind.BILFC ? 0 : seq,
        time: kind === ContainerKind.BILFC ? 0 : time,
        offset: Math.floor(r() * 2 ** 40) * 512,
        length,
      },
      payload,
    });
    seq += 1 + Math.floor(r() * 3);
    time += r() * 10;
  }
  return out;
}

function recordSize(rec: Rec): number {
  return RECORD_HEADER_SIZE + (rec.payload ? rec.payload.length : 0);
}

async function writeAll(w: ContainerWriter, recs: Rec[]): Promise<number[]> {
  const positions: number[] = [];
  const ps: Promise<void>[] = [];
  for (const rec of recs) {
    positions.push(w.size);
    ps.push(w.append(rec.input, rec.payload));
  }
  await Promise.all(ps);
  return positions;
}

async function collect(file: string, payloads = true): Promise<StoredRecord[]> {
  const out: StoredRecord[] = [];
  for await (const r of readRecords(file, { payloads })) out.push(r);
  return out;
}

function checkRecord(t: T, got: StoredRecord, want: Rec, position: number, withPayload = true): void {
  const plen = want.payload ? want.payload.length : 0;
  t.is(got.position, position);
  t.is(got.kind, want.input.kind);
  t.is(got.flags, want.input.flags ?? 0);
  t.is(got.volumeId, want.input.volumeId);
  t.is(got.seq, want.input.seq);
  t.is(got.time, want.input.time);
  t.is(got.offset, want.input.offset);
  t.is(got.length, want.input.length);
  t.is(got.payloadLength, plen);
  t.is(got.payloadCrc, plen ? zlib.crc32(want.payload!) : 0);
  if (withPayload && plen > 0) t.true(got.payload!.equals(want.payload!), `payload of record at ${position}`);
  else t.is(got.payload, null);
}

function expectedStats(recs: Rec[]) {
  return {
    recordCount: recs.length,
    firstSeq: recs.length ? recs[0].input.seq : 0,
    lastSeq: recs.length ? recs[recs.length - 1].input.seq : 0,
    firstTime: recs.length ? recs[0].input.time : 0,
    lastTime: recs.length ? recs[recs.length - 1].input.time : 0,
    payloadBytes: recs.reduce((s, r) => s + (r.payload ? r.payload.length : 0), 0),
  };
}

async function newWriter(
  t: T,
  dir: string,
  kind = ContainerKind.AILFC,
  n = 1,
  opts: { inlineWriteMax?: number; direct?: boolean } = {},
): Promise<ContainerWriter> {
  const w = await ContainerWriter.create(dir, kind, { groupId: 7, containerId: n, blockSize: 4096, created: 1.7e12, ...opts });
  t.teardown(() => w.close());
  return w;
}

// ---------------------------------------------------------------------------

test('crc32 (src/util/crc32.ts) gives zlib.crc32 values, seeded continuation included', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 70000 }), fc.uint8Array({ maxLength: 3000 }), (a, b) => {
      t.is(crc32(a), zlib.crc32(a));
      t.is(crc32(b, crc32(a)), zlib.crc32(Buffer.concat([a, b])));
    }),
    { numRuns: 200 },
  );
});

test('crc32Combine equals the CRC of the concatenation', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 5000 }), (a, b) => {
      const whole = zlib.crc32(Buffer.concat([a, b]));
      return crc32Combine(zlib.crc32(a), zlib.crc32(b), b.length) === whole;
    }),
    { numRuns: 300 },
  );
  t.pass();
});

for (const [name, kind] of [
  ['AILFC', ContainerKind.AILFC],
  ['BILFC', ContainerKind.BILFC],
] as const) {
  test(`${name}: write, seal, read back byte-exact, verify`, async (t) => {
    const dir = tempDir(t);
    const recs = makeRecords(kind, 300, kind * 101);
    const w = await newWriter(t, dir, kind, 42);
    const expectedPath =
      kind === ContainerKind.AILFC
        ? path.join(dir, containerFileName('active', 42))
        : path.join(dir, `${containerFileName('bilfc', 42)}.tmp`);
    t.is(w.path, expectedPath);
    t.is(w.size, FILE_HEADER_SIZE);
    t.deepEqual(w.header, { kind, groupId: 7, containerId: 42, created: 1.7e12, blockSize: 4096 });
    const positions = await writeAll(w, recs);
    const exp = expectedStats(recs);
    t.is(w.recordCount, recs.length);
    t.is(w.firstSeq, exp.firstSeq);
    t.is(w.lastSeq, exp.lastSeq);
    t.is(w.size, FILE_HEADER_SIZE + recs.reduce((s, r) => s + recordSize(r), 0));
    const sizeBeforeSeal = w.size;

    const { path: sealedPath, footer } = await w.seal();
    const finalName = kind === ContainerKind.AILFC ? containerFileName('ailfc', 42) : containerFileName('bilfc', 42);
    t.is(sealedPath, path.join(dir, finalName));
    t.false(fs.existsSync(expectedPath));
    t.is(w.size, sizeBeforeSeal + FOOTER_SIZE);
    t.is(fs.statSync(sealedPath).size, w.size);

    // Footer fields.
    const fileBytes = fs.readFileSync(sealedPath);
    t.is(footer.recordCount, recs.length);
    t.is(footer.firstSeq, exp.firstSeq);
    t.is(footer.lastSeq, exp.lastSeq);
    t.is(footer.firstTime, exp.firstTime);
    t.is(footer.lastTime, exp.lastTime);
    t.is(footer.payloadBytes, exp.payloadBytes);
    t.is(footer.bodyCrc, zlib.crc32(fileBytes.subarray(FILE_HEADER_SIZE, fileBytes.length - FOOTER_SIZE)));

    // Sequential read back.
    const got = await collect(sealedPath);
    t.is(got.length, recs.length);
    for (let i = 0; i < recs.length; i++) checkRecord(t, got[i], recs[i], positions[i]);
    const noPayload = await collect(sealedPath, false);
    for (let i = 0; i < recs.length; i++) checkRecord(t, noPayload[i], recs[i], positions[i], false);

    // Random access.
    const fd = fs.openSync(sealedPath, 'r');
    try {
      for (const i of [0, 17, recs.length - 1]) checkRecord(t, await readRecordAt(fd, positions[i]), recs[i], positions[i]);
      await t.throwsAsync(readRecordAt(fd, positions[5] + 1), { instanceOf: LfcFormatError });
    } finally {
      fs.closeSync(fd);
    }

    const scan = await scanContainer(sealedPath);
    t.true(scan.sealed);
    t.is(scan.tornAt, undefined);
    t.is(scan.validEnd, fileBytes.length);
    t.deepEqual(scan.footer, footer);
    t.is(scan.bodyCrc, footer.bodyCrc);
    t.deepEqual(scan.header, w.header);

    const v = await verifyContainer(sealedPath);
    t.deepEqual(v, { ok: true, footer });
    t.deepEqual(await listContainers(dir), [{ kind: kind === ContainerKind.AILFC ? 'ailfc' : 'bilfc', n: 42, path: sealedPath }]);
  });
}

test('an empty container seals and verifies', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir);
  const { path: p, footer } = await w.seal();
  t.deepEqual(footer, { recordCount: 0, firstSeq: 0, lastSeq: 0, firstTime: 0, lastTime: 0, bodyCrc: 0, payloadBytes: 0 });
  t.deepEqual(await verifyContainer(p), { ok: true, footer });
  t.deepEqual(await collect(p), []);
  await t.throwsAsync(w.append({ kind: RecordKind.Trim, volumeId: 0, seq: 1, time: 1, offset: 0, length: 512 }, null));
});

test('create refuses to overwrite; listContainers sorts and classifies', async (t) => {
  const dir = tempDir(t);
  const w1 = await newWriter(t, dir, ContainerKind.AILFC, 3);
  await t.throwsAsync(ContainerWriter.create(dir, ContainerKind.AILFC, { groupId: 7, containerId: 3, blockSize: 4096 }), {
    code: 'EEXIST',
  });
  await w1.seal();
  await t.throwsAsync(ContainerWriter.create(dir, ContainerKind.AILFC, { groupId: 7, containerId: 3, blockSize: 4096 }), {
    code: 'EEXIST',
  });
  const b = await newWriter(t, dir, ContainerKind.BILFC, 2);
  await t.throwsAsync(ContainerWriter.create(dir, ContainerKind.BILFC, { groupId: 7, containerId: 2, blockSize: 4096 }), {
    code: 'EEXIST',
  });
  await newWriter(t, dir, ContainerKind.AILFC, 11);
  fs.writeFileSync(path.join(dir, 'unrelated.txt'), 'x');
  fs.writeFileSync(path.join(dir, `${containerFileName('active', 12)}.init`), '');
  const list = await listContainers(dir);
  t.deepEqual(
    list.map((c) => [c.kind, c.n]),
    [
      ['bilfc-tmp', 2],
      ['ailfc', 3],
      ['active', 11],
      ['partial', 12],
    ],
  );
  await b.seal();
  t.deepEqual(
    (await listContainers(dir)).map((c) => [c.kind, c.n]),
    [
      ['bilfc', 2],
      ['ailfc', 3],
      ['active', 11],
      ['partial', 12],
    ],
  );
});

test('append rejects invalid records without writing them', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir);
  const base = { kind: RecordKind.Write, volumeId: 0, seq: 10, time: 1, offset: 0, length: 4 };
  await w.append(base, Buffer.alloc(4));
  await t.throwsAsync(w.append({ ...base, seq: 10 }, Buffer.alloc(4)), { instanceOf: RangeError }); // not increasing
  await t.throwsAsync(w.append({ ...base, seq: 11 }, Buffer.alloc(5)), { instanceOf: RangeError }); // length mismatch
  await t.throwsAsync(w.append({ ...base, seq: 11, kind: RecordKind.Trim }, Buffer.alloc(4)), { instanceOf: RangeError });
  await t.throwsAsync(w.append({ ...base, seq: 2 ** 53 }, Buffer.alloc(4)), { instanceOf: RangeError });
  await t.throwsAsync(w.append({ ...base, seq: 11, kind: 99 as RecordKind }, Buffer.alloc(4)), { instanceOf: RangeError });
  await t.throwsAsync(w.append({ ...base, seq: 11, time: NaN }, Buffer.alloc(4)), { instanceOf: RangeError });
  await w.append({ ...base, seq: 11 }, Buffer.alloc(4));
  const { path: p } = await w.seal();
  t.deepEqual(
    (await collect(p)).map((r) => r.seq),
    [10, 11],
  );
  t.true((await verifyContainer(p)).ok);
});

test('records keep call order under thousands of unawaited appends; group commit batches writes', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir);
  const N = 5000;
  const ps: Promise<void>[] = [];
  const payloads: Buffer[] = [];
  for (let i = 0; i < N; i++) {
    const len = 512 * (1 + (i % 9));
    const p = pattern(len, i);
    payloads.push(p);
    ps.push(w.append({ kind: RecordKind.Write, volumeId: 0, seq: i + 1, time: i, offset: i * 512, length: len }, p));
    // Some appends arrive while a write is in flight.
    if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
  }
  const order: number[] = [];
  ps.forEach((p, i) => p.then(() => order.push(i)));
  await Promise.all(ps);
  await new Promise((r) => setImmediate(r));
  t.deepEqual(order, [...Array(N).keys()], 'promises resolve in call order');
  t.true(w.counters.writeCalls < N / 4, `only ${w.counters.writeCalls} write calls for ${N} records`);
  const { path: p } = await w.seal();
  const got = await collect(p);
  t.is(got.length, N);
  for (let i = 0; i < N; i++) {
    if (got[i].seq !== i + 1 || !got[i].payload!.equals(payloads[i])) {
      t.fail(`record ${i} out of order or wrong`);
      return;
    }
  }
  t.pass();
});

test('threadpool writes (inlineWriteMax 0) and large payloads keep order and content', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir, ContainerKind.AILFC, 1, { inlineWriteMax: 0 });
  const recs = makeRecords(ContainerKind.AILFC, 60, 5, 3 * 1024 * 1024);
  const ps = recs.map((r) => w.append(r.input, r.payload));
  await Promise.all(ps);
  const { path: p } = await w.seal();
  const got = await collect(p);
  t.is(got.length, recs.length);
  let pos = FILE_HEADER_SIZE;
  for (let i = 0; i < recs.length; i++) {
    checkRecord(t, got[i], recs[i], pos);
    pos += recordSize(recs[i]);
  }
  t.true((await verifyContainer(p)).ok);
});

test('sync() writes everything appended so far and shares fdatasyncs', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir);
  const recs = makeRecords(ContainerKind.AILFC, 200, 9, 8192);
  const syncs: Promise<void>[] = [];
  for (const r of recs) {
    void w.append(r.input, r.payload);
    syncs.push(w.sync());
  }
  await Promise.all(syncs);
  t.true(w.counters.syncCalls <= 3, `${w.counters.syncCalls} fdatasyncs for 200 sync() calls`);
  t.is(fs.statSync(w.path).size, w.size);
  const scan = await scanContainer(w.path);
  t.is(scan.recordCount, 200);
  t.false(scan.sealed);
  t.is(scan.tornAt, undefined);
  await w.sync(); // nothing new: resolves without an fdatasync
  t.true(w.counters.syncCalls <= 3);
});

test.serial('a write error fails the writer: pending and later calls reject with the errno error', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir);
  await w.append({ kind: RecordKind.Write, volumeId: 0, seq: 1, time: 1, offset: 0, length: 4 }, Buffer.alloc(4));
  const real = rawFs.writevSync;
  const eio = Object.assign(new Error('EIO: i/o error, writev'), { code: 'EIO', errno: -5 });
  rawFs.writevSync = () => {
    throw eio;
  };
  try {
    const a = w.append({ kind: RecordKind.Write, volumeId: 0, seq: 2, time: 1, offset: 0, length: 4 }, Buffer.alloc(4));
    const s = w.sync();
    await t.throwsAsync(a, { is: eio });
    await t.throwsAsync(s, { is: eio });
  } finally {
    rawFs.writevSync = real;
  }
  await t.throwsAsync(w.append({ kind: RecordKind.Write, volumeId: 0, seq: 3, time: 1, offset: 0, length: 4 }, Buffer.alloc(4)), {
    is: eio,
  });
  await t.throwsAsync(w.sync(), { is: eio });
  await t.throwsAsync(w.seal(), { is: eio });
  t.is(w.error, eio);
  const scan = await scanContainer(w.path);
  t.is(scan.recordCount, 1);
});

test('flipping any byte of a record or the footer is reported at the right offset', async (t) => {
  const dir = tempDir(t);
  const recs = makeRecords(ContainerKind.AILFC, 12, 77, 3000);
  const w = await newWriter(t, dir);
  const positions = await writeAll(w, recs);
  const { path: p } = await w.seal();
  const orig = fs.readFileSync(p);
  const footerAt = orig.length - FOOTER_SIZE;
  const starts = [...positions, footerAt];
  const owner = (off: number): number => {
    let s = starts[0];
    for (const x of starts) if (x <= off) s = x;
    return s;
  };
  const r = rng(3);
  const offsets = new Set<number>();
  // Every byte of two record headers and of the footer, and random payload bytes.
  for (let i = 0; i < RECORD_HEADER_SIZE; i++) offsets.add(positions[0] + i).add(positions[7] + i);
  for (let i = 0; i < FOOTER_SIZE; i++) offsets.add(footerAt + i);
  for (let i = 0; i < 60; i++) offsets.add(FILE_HEADER_SIZE + Math.floor(r() * (footerAt - FILE_HEADER_SIZE)));
  for (const off of offsets) {
    const bad = Buffer.from(orig);
    bad[off] ^= 1 << Math.floor(r() * 8);
    fs.writeFileSync(p, bad);
    const v = await verifyContainer(p);
    if (v.ok) {
      t.fail(`flip at ${off} not detected`);
      continue;
    }
    t.is(v.offset, owner(off), `flip at ${off}: ${v.problem}`);
    if (owner(off) === footerAt) t.regex(v.problem, /footer/);
    // A sealed container with a bad record: readRecords throws with the offset.
    if (owner(off) !== footerAt) {
      const err = await t.throwsAsync(collect(p), { instanceOf: LfcFormatError });
      t.is(err!.offset, owner(off));
    }
  }
  // The file header.
  for (const off of [0, 9, 20, 61]) {
    const bad = Buffer.from(orig);
    bad[off] ^= 0x10;
    fs.writeFileSync(p, bad);
    const v = await verifyContainer(p);
    t.false(v.ok);
    if (!v.ok) t.is(v.offset, 0);
    await t.throwsAsync(scanContainer(p), { instanceOf: LfcFormatError, message: new RegExp(p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) });
  }
  // Trailing garbage after the footer, a dropped footer.
  fs.writeFileSync(p, Buffer.concat([orig, Buffer.from('xx')]));
  t.like(await verifyContainer(p), { ok: false, offset: orig.length });
  fs.writeFileSync(p, orig.subarray(0, footerAt));
  t.like(await verifyContainer(p), { ok: false, offset: footerAt });
  fs.writeFileSync(p, orig);
  t.true((await verifyContainer(p)).ok);
});

test('corruption next to the 1 MiB read-chunk boundaries is found at the right record', async (t) => {
  const dir = tempDir(t);
  const recs = makeRecords(ContainerKind.AILFC, 250, 99, 90000);
  const w = await newWriter(t, dir);
  const positions = await writeAll(w, recs);
  const { path: p } = await w.seal();
  const orig = fs.readFileSync(p);
  t.true(orig.length > 3 * 1024 * 1024);
  const owner = (off: number): number => {
    let s = positions[0];
    for (const x of positions) if (x <= off) s = x;
    return s;
  };
  for (let k = 1; k * 1024 * 1024 < orig.length - FOOTER_SIZE - 200; k++) {
    for (const d of [-70, -64, -49, -48, -1, 0, 1, 47, 63, 64, 65]) {
      const off = k * 1024 * 1024 + d; // the reader's chunks start at multiples of 1 MiB
      const bad = Buffer.from(orig);
      bad[off] ^= 0x80;
      fs.writeFileSync(p, bad);
      const v = await verifyContainer(p);
      t.like(v, { ok: false, offset: owner(off) }, `flip at ${off}`);
    }
  }
  fs.writeFileSync(p, orig);
  t.true((await verifyContainer(p)).ok);
});

test('a footer whose fields disagree with the records is reported', async (t) => {
  const dir = tempDir(t);
  const recs = makeRecords(ContainerKind.AILFC, 5, 8, 1000);
  const w = await newWriter(t, dir);
  await writeAll(w, recs);
  const { path: p } = await w.seal();
  const orig = fs.readFileSync(p);
  const at = orig.length - FOOTER_SIZE;
  // Rewrite the record count (and the footer CRC so only the content is wrong).
  const bad = Buffer.from(orig);
  bad.writeUInt32LE(6, at + 8);
  bad.writeUInt32LE(zlib.crc32(bad.subarray(at, at + 60)), at + 60);
  fs.writeFileSync(p, bad);
  const v = await verifyContainer(p);
  t.like(v, { ok: false, offset: at });
  if (!v.ok) t.regex(v.problem, /record count/);
  // Body CRC.
  const bad2 = Buffer.from(orig);
  bad2.writeUInt32LE((bad2.readUInt32LE(at + 56) ^ 1) >>> 0, at + 56);
  bad2.writeUInt32LE(zlib.crc32(bad2.subarray(at, at + 60)), at + 60);
  fs.writeFileSync(p, bad2);
  const v2 = await verifyContainer(p);
  t.like(v2, { ok: false, offset: at });
  if (!v2.ok) t.regex(v2.problem, /body CRC/);
});

test('verify and read report missing files as I/O errors', async (t) => {
  const dir = tempDir(t);
  await t.throwsAsync(verifyContainer(path.join(dir, 'nope.lfc')), { code: 'ENOENT' });
  await t.throwsAsync(scanContainer(path.join(dir, 'nope.lfc')), { code: 'ENOENT' });
  await t.throwsAsync(collect(path.join(dir, 'nope.lfc')), { code: 'ENOENT' });
});

test('truncating an active container at every byte of its last record: repair cuts to the previous record', async (t) => {
  const dir = tempDir(t);
  const recs = makeRecords(ContainerKind.AILFC, 6, 21, 600);
  // Make sure the last record has a payload and the second-to-last has one too.
  recs[5] = {
    input: { kind: RecordKind.Write, volumeId: 1, seq: recs[4].input.seq + 1, time: 5, offset: 0, length: 300 },
    payload: pattern(300, 1),
  };
  const w = await newWriter(t, dir);
  const positions = await writeAll(w, recs);
  await w.sync();
  const full = fs.readFileSync(w.path);
  const lastStart = positions[5];
  for (let cut = lastStart; cut < full.length; cut++) {
    const file = path.join(dir, `cut-${cut}.lfc`);
    fs.writeFileSync(file, full.subarray(0, cut));
    const res = await repairActive(file);
    t.is(res.validEnd, lastStart);
    t.is(res.recordCount, 5);
    t.is(res.truncatedBytes, cut - lastStart);
    if (cut > lastStart) t.is(res.tornAt, lastStart);
    t.is(fs.statSync(file).size, lastStart);
    const got = await collect(file);
    t.is(got.length, 5);
    checkRecord(t, got[4], recs[4], positions[4]);
    fs.unlinkSync(file);
  }
  // The whole file: nothing to repair.
  const res = await repairActive(w.path);
  t.is(res.truncatedBytes, 0);
  t.is(res.recordCount, 6);
});

test('repair then reopen: appends continue and the sealed container verifies', async (t) => {
  const dir = tempDir(t);
  const recs = makeRecords(ContainerKind.AILFC, 40, 31, 5000);
  const w = await newWriter(t, dir, ContainerKind.AILFC, 5);
  await writeAll(w, recs.slice(0, 30));
  await w.close();
  // Tear the tail: half of a record.
  fs.appendFileSync(w.path, pattern(100, 1));
  const res = await repairActive(w.path);
  t.is(res.recordCount, 30);
  t.is(res.truncatedBytes, 100);
  const w2 = await ContainerWriter.reopen(w.path, res.validEnd, res);
  t.teardown(() => w2.close());
  t.is(w2.size, res.validEnd);
  t.is(w2.recordCount, 30);
  t.is(w2.lastSeq, recs[29].input.seq);
  await t.throwsAsync(w2.append({ ...recs[29].input }, recs[29].payload), { instanceOf: RangeError });
  await writeAll(w2, recs.slice(30));
  const { path: p, footer } = await w2.seal();
  t.is(p, path.join(dir, containerFileName('ailfc', 5)));
  t.is(footer.recordCount, 40);
  t.is(footer.firstSeq, recs[0].input.seq);
  t.deepEqual(await verifyContainer(p), { ok: true, footer });
  const got = await collect(p);
  let pos = FILE_HEADER_SIZE;
  for (let i = 0; i < 40; i++) {
    checkRecord(t, got[i], recs[i], pos);
    pos += recordSize(recs[i]);
  }
});

test('property: random records, random cut: recovery keeps exactly the records wholly before the cut', async (t) => {
  const dir = tempDir(t);
  let k = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 40 }),
      fc.integer({ min: 1, max: 1e9 }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      async (n, seed, where) => {
        const sub = path.join(dir, String(k++));
        fs.mkdirSync(sub);
        const recs = makeRecords(ContainerKind.AILFC, n, seed, 2000);
        const w = await ContainerWriter.create(sub, ContainerKind.AILFC, { groupId: 1, containerId: 1, blockSize: 512 });
        const positions = await writeAll(w, recs);
        const end = w.size;
        await w.close();
        const cut = FILE_HEADER_SIZE + Math.floor(where * (end - FILE_HEADER_SIZE + 1));
        fs.truncateSync(w.path, Math.min(cut, end));
        const keep = recs.filter((r, i) => positions[i] + recordSize(r) <= cut).length;
        const res = await repairActive(w.path);
        const got = await collect(w.path);
        const ok =
          res.recordCount === keep &&
          got.length === keep &&
          res.validEnd === (keep === 0 ? FILE_HEADER_SIZE : positions[keep - 1] + recordSize(recs[keep - 1])) &&
          fs.statSync(w.path).size === res.validEnd &&
          got.every((g, i) => g.seq === recs[i].input.seq && (recs[i].payload === null || g.payload!.equals(recs[i].payload!)));
        fs.rmSync(sub, { recursive: true });
        return ok;
      },
    ),
    { numRuns: 60 },
  );
  t.pass();
});

// ---------------------------------------------------------------------------
// Fuzz

async function exercise(file: string): Promise<void> {
  // Each of these may fail only with LfcFormatError; verify never throws for content.
  const clean = (err: unknown): void => {
    if (!(err instanceof LfcFormatError)) throw err;
  };
  await scanContainer(file).catch(clean);
  const v = await verifyContainer(file);
  if (v.ok !== false && v.ok !== true) throw new Error('bad verify result');
  try {
    for await (const _ of readRecords(file)) {
      // drain
    }
  } catch (err) {
    clean(err);
  }
  await repairActive(file).catch(clean);
}

test('fuzz: random bytes after a valid header and random whole files give clean errors only', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'fuzz.lfc');
  const header = encodeFileHeader({ kind: ContainerKind.AILFC, groupId: 1, containerId: 1, created: 0, blockSize: 512 });
  const recs = makeRecords(ContainerKind.AILFC, 4, 1, 200);
  const w = await newWriter(t, dir, ContainerKind.AILFC, 9);
  await writeAll(w, recs);
  const { path: sealedPath } = await w.seal();
  const valid = fs.readFileSync(sealedPath);
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.uint8Array({ maxLength: 400 }).map((b) => Buffer.concat([header, b])),
        fc.uint8Array({ maxLength: 400 }).map((b) => Buffer.from(b)),
        // A valid container with a few bytes overwritten by random values.
        fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }).map((edits) => {
          const b = Buffer.from(valid);
          for (const [i, v] of edits) b[i] = v;
          return b;
        }),
        // Truncated valid containers.
        fc.nat(valid.length).map((n) => valid.subarray(0, n)),
      ),
      async (bytes) => {
        fs.writeFileSync(file, bytes);
        await exercise(file);
        return true;
      },
    ),
    { numRuns: 400 },
  );
  t.pass();
});

test('a record claiming a 4 GiB payload is rejected by bounds checks, not allocated', async (t) => {
  const dir = tempDir(t);
  const w = await newWriter(t, dir);
  await w.append({ kind: RecordKind.Error, volumeId: 0, seq: 1, time: 0, offset: 0, length: 0 }, Buffer.from('x'));
  await w.close();
  const file = w.path;
  // Forge a valid-CRC header with payload length 0xffffffff (kind Error allows any length).
  const h = Buffer.alloc(RECORD_HEADER_SIZE);
  h.writeUInt32LE(0x52524543, 0);
  h[4] = RecordKind.Error;
  h.writeUInt32LE(2, 8);
  h.writeUInt32LE(0xffffffff, 36);
  h.writeUInt32LE(zlib.crc32(h.subarray(0, 44)), 44);
  fs.appendFileSync(file, Buffer.concat([h, Buffer.alloc(100)]));
  const before = process.memoryUsage().arrayBuffers;
  const scan = await scanContainer(file);
  t.is(scan.recordCount, 1);
  t.is(scan.tornAt, fs.statSync(file).size - 148);
  t.is(scan.problem, 'truncated payload');
  t.is((await collect(file)).length, 1);
  const fd = fs.openSync(file, 'r');
  await t.throwsAsync(readRecordAt(fd, scan.tornAt!), { message: /truncated payload/ });
  fs.closeSync(fd);
  t.true(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024);
});

// ---------------------------------------------------------------------------
// Kill -9

const CHILD = `
const { ContainerWriter } = require(process.argv[1]);
(async () => {
  const w = await ContainerWriter.create(process.argv[2], 1, { groupId: 1, containerId: 1, blockSize: 4096, inlineWriteMax: Number(process.argv[3]), direct: process.argv[4] === 'direct' });
  if (process.argv[4] === 'direct' && !w.isDirect) throw new Error('no O_DIRECT in ' + process.argv[2]);
  let seq = 1;
  const payload = Buffer.alloc(4096);
  process.stdout.write('ready\\n');
  for (;;) {
    const batch = [];
    const n = 1 + Math.floor(Math.random() * 64);
    for (let i = 0; i < n; i++) {
      const s = seq++;
      const len = s % 3 === 0 ? 0 : 512 * (1 + (s % 8));
      payload.writeUInt32LE(s, 0);
      const data = len ? Buffer.from(payload.subarray(0, len)) : null;
      batch.push(w.append({ kind: len ? 1 : 2, volumeId: 0, seq: s, time: Date.now(), offset: s * 512, length: len || 512 }, data).then(() => s));
    }
    for (const p of batch) process.stdout.write(String(await p) + '\\n');
  }
})();
`;

test('SIGKILL during appends: repair keeps every record whose append had resolved', async (t) => {
  const modPath = path.resolve(__dirname, '../src/lfc/index.js');
  for (let round = 0; round < 5; round++) {
    const dir = tempDir(t);
    // Round 0 writes on the threadpool, rounds 1-2 inline; rounds 3-4 in
    // direct mode (3: every batch with O_DIRECT, 4: small batches inline).
    const inline = round === 0 || round === 3 ? '0' : '262144';
    const mode = round >= 3 ? 'direct' : 'buffered';
    const child = spawn(process.execPath, ['-e', CHILD, modPath, dir, inline, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    while (!out.includes('ready\n')) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 250));
    child.kill('SIGKILL');
    t.is(await exited, 'SIGKILL');
    const printed = out
      .split('\n')
      .filter((l) => /^\d+$/.test(l))
      .map(Number);
    t.true(printed.length > 0, 'the child acknowledged some records');
    t.log(`round ${round} (${mode}): ${printed.length} records acknowledged before SIGKILL`);
    const file = path.join(dir, containerFileName('active', 1));
    const res = await repairActive(file);
    const got = await collect(file);
    const seqs = got.map((r) => r.seq);
    t.is(res.recordCount, got.length);
    // Every acknowledged seq survives, in order, as a prefix 1..k.
    const maxPrinted = Math.max(...printed);
    t.true(got.length >= maxPrinted, `kept ${got.length} records, child acknowledged up to ${maxPrinted}`);
    t.deepEqual(
      seqs,
      seqs.map((_, i) => i + 1),
    );
    for (const r of got) {
      if (r.payload && r.payload.readUInt32LE(0) !== r.seq) t.fail(`payload of ${r.seq} is wrong`);
    }
  }
});

test('direct mode: mixed O_DIRECT and inline batches at unaligned offsets keep every byte; padding is cut at close and seal', async (t) => {
  const dir = tempDir(t);
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 1e9 }),
      fc.array(
        fc.record({ bytes: fc.oneof(fc.integer({ min: 0, max: 9000 }), fc.integer({ min: 200_000, max: 1_200_000 })), wait: fc.boolean() }),
        { minLength: 1, maxLength: 24 },
      ),
      fc.integer({ min: 0, max: 2 }),
      async (seed, plan, ending) => {
        const n = seed;
        const w = await ContainerWriter.create(dir, ContainerKind.AILFC, {
          groupId: 7,
          containerId: n,
          blockSize: 4096,
          direct: true,
          inlineWriteMax: 65536,
        });
        t.true(w.isDirect, 'O_DIRECT is available in the test directory');
        const recs: Rec[] = [];
        const ps: Promise<void>[] = [];
        let seq = 1;
        for (const [i, step] of plan.entries()) {
          const payload = step.bytes ? pattern(step.bytes, seed + i) : null;
          const rec: Rec = {
            input: {
              kind: payload ? RecordKind.Write : RecordKind.Trim,
              volumeId: 1,
              seq: seq++,
              time: 1.7e12 + i,
              offset: i * 512,
              length: step.bytes || 512,
            },
            payload,
          };
          recs.push(rec);
          ps.push(w.append(rec.input, rec.payload));
          if (step.wait) await Promise.all(ps);
        }
        await Promise.all(ps);
        const end = FILE_HEADER_SIZE + recs.reduce((a, r) => a + recordSize(r), 0);
        t.is(w.size, end);
        t.true(fs.statSync(w.path).size >= end, 'the file holds at least every record');
        // Padding past the records reads as a torn tail.
        const scan = await scanContainer(w.path);
        t.is(scan.validEnd, end);
        t.is(scan.recordCount, recs.length);
        let file: string;
        if (ending === 0) {
          file = (await w.seal()).path;
          t.true((await verifyContainer(file)).ok);
        } else {
          await w.close();
          file = w.path;
          if (ending === 2) {
            // Reopen after close: appends continue at the end and the container seals.
            const res = await repairActive(file);
            t.is(res.truncatedBytes, 0);
            const w2 = await ContainerWriter.reopen(file, res.validEnd, res, { direct: true, inlineWriteMax: 0 });
            const extra: Rec = {
              input: { kind: RecordKind.Write, volumeId: 1, seq: seq++, time: 1.8e12, offset: 0, length: 5000 },
              payload: pattern(5000, seed),
            };
            recs.push(extra);
            await w2.append(extra.input, extra.payload);
            file = (await w2.seal()).path;
            t.true((await verifyContainer(file)).ok);
          }
        }
        const got = await collect(file);
        t.is(got.length, recs.length);
        let pos = FILE_HEADER_SIZE;
        for (let i = 0; i < recs.length; i++) {
          checkRecord(t, got[i]!, recs[i]!, pos);
          pos += recordSize(recs[i]!);
        }
        t.is(fs.statSync(file).size, pos + (ending === 1 ? 0 : FOOTER_SIZE), 'no padding is left in the file');
        fs.rmSync(file);
      },
    ),
    { numRuns: 25 },
  );
});

test.serial(
  'direct mode: a filesystem refusing O_DIRECT writes (EINVAL) gets the batch again through the page cache; EIO fails the writer',
  async (t) => {
    const dir = tempDir(t);
    const real = rawFs.write;
    const big = pattern(300_000, 5);
    try {
      // EINVAL on the first direct write: the writer goes buffered and loses nothing.
      const w = await newWriter(t, dir, ContainerKind.AILFC, 1, { direct: true });
      t.true(w.isDirect);
      let refused = 0;
      (rawFs as { write: unknown }).write = (...args: unknown[]) => {
        const cb = args[args.length - 1] as (err: Error | null, n?: number) => void;
        refused++;
        (rawFs as { write: unknown }).write = real;
        process.nextTick(() => cb(Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL', errno: -22 })));
      };
      await w.append({ kind: RecordKind.Write, volumeId: 0, seq: 1, time: 1, offset: 0, length: big.length }, big);
      await w.append({ kind: RecordKind.Write, volumeId: 0, seq: 2, time: 2, offset: 0, length: 100 }, big.subarray(0, 100));
      t.is(refused, 1);
      t.false(w.isDirect, 'the writer left direct mode');
      const { path: sealed } = await w.seal();
      t.true((await verifyContainer(sealed)).ok);
      const got = await collect(sealed);
      t.is(got.length, 2);
      t.true(got[0]!.payload!.equals(big));

      // EIO on a direct write fails the writer like any write error.
      const w2 = await newWriter(t, dir, ContainerKind.AILFC, 2, { direct: true });
      const eio = Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO', errno: -5 });
      (rawFs as { write: unknown }).write = (...args: unknown[]) => {
        const cb = args[args.length - 1] as (err: Error | null) => void;
        process.nextTick(() => cb(eio));
      };
      await t.throwsAsync(w2.append({ kind: RecordKind.Write, volumeId: 0, seq: 1, time: 1, offset: 0, length: big.length }, big), {
        is: eio,
      });
      (rawFs as { write: unknown }).write = real;
      await t.throwsAsync(w2.seal(), { is: eio });
    } finally {
      (rawFs as { write: unknown }).write = real;
    }
  },
);
