/**
 * The persistent state map (src/journal/state-map.ts) against real files:
 * mark/clear semantics, persistence, a SIGKILL'd marker, geometry checks,
 * range coalescing, loaded regions, large (sparse) volumes, and a model
 * check of random operation sequences.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { STATE_MAP_HEADER_SIZE, StateMap, StateMapGeometryError } from '../src/journal/state-map';

type T = ExecutionContext<unknown>;

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

function tempFile(t: T, name = 'vol.smap'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-smap-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, name);
}

async function openMap(t: T, file: string, volumeSize: number, regionSize?: number): Promise<StateMap> {
  const m = await StateMap.open(file, { volumeSize, regionSize });
  t.teardown(() => m.close());
  return m;
}

/** Dirty region indexes from the bitmap bytes in the file. */
function fileDirty(file: string, regionCount: number): number[] {
  const b = fs.readFileSync(file).subarray(STATE_MAP_HEADER_SIZE);
  const out: number[] = [];
  for (let r = 0; r < regionCount; r++) if (b[r >>> 3] & (1 << (r & 7))) out.push(r);
  return out;
}

test('markDirty sets region bits and writes them to the file before returning', async (t) => {
  const file = tempFile(t);
  const m = await openMap(t, file, 10 * MiB);
  t.is(m.regionSize, 65536);
  t.is(m.regionCount, 160);
  t.is(fs.statSync(file).size, STATE_MAP_HEADER_SIZE + 20);
  t.is(m.dirtyCount(), 0);
  m.markDirty(0, 1, 1); // region 0
  m.markDirty(65536 * 3 - 1, 2, 2); // regions 2 and 3
  m.markDirty(65536 * 10, 65536 * 12, 3); // regions 10..21 (crossing bytes)
  m.markDirty(10 * MiB - 512, 512, 4); // last region
  m.markDirty(5000, 0, 5); // empty: nothing
  const want = [0, 2, 3, ...Array.from({ length: 12 }, (_, i) => 10 + i), 159];
  t.is(m.dirtyCount(), want.length);
  t.deepEqual(fileDirty(file, 160), want);
  t.true(m.isDirty(0));
  t.true(m.isDirty(65535));
  t.false(m.isDirty(65536));
  t.true(m.isDirty(65536 * 21 + 5));
  t.false(m.isDirty(65536 * 22));
  t.throws(() => m.markDirty(10 * MiB - 512, 1024, 6), { instanceOf: RangeError });
  t.throws(() => m.markDirty(-1, 10, 6), { instanceOf: RangeError });
  t.is(m.dirtyCount(), want.length);
  await m.sync();
});

test('clearCommitted clears by latest seq: regions written again later stay dirty', async (t) => {
  const file = tempFile(t);
  const m = await openMap(t, file, 1 * MiB, 4096);
  m.markDirty(0, 4096, 1); // r0 @1
  m.markDirty(4096, 8192, 2); // r1, r2 @2
  m.markDirty(4096, 100, 5); // r1 @5
  m.markDirty(40960, 4096, 3); // r10 @3
  m.markDirty(40960, 4096, 2); // r10 stays @3 (an older seq never lowers it)
  t.is(m.dirtyCount(), 4);
  t.is(m.clearCommitted(0), 0);
  t.is(m.clearCommitted(2), 2); // r0, r2
  t.deepEqual(fileDirty(file, 256), [1, 10]);
  t.is(m.clearCommitted(3), 1); // r10
  t.is(m.clearCommitted(4), 0);
  t.true(m.isDirty(4096));
  t.is(m.clearCommitted(5), 1);
  t.is(m.dirtyCount(), 0);
  t.deepEqual(fileDirty(file, 256), []);
  // Dirty again after clearing.
  m.markDirty(0, 4096, 6);
  t.deepEqual(fileDirty(file, 256), [0]);
});

test('the dirty set persists across close and open; loaded regions need adoptLoaded', async (t) => {
  const file = tempFile(t);
  const m = await StateMap.open(file, { volumeSize: 64 * MiB });
  m.markDirty(0, 3 * 65536, 10);
  m.markDirty(20 * MiB, 1, 11);
  m.markDirty(64 * MiB - 1, 1, 12);
  const ranges = m.dirtyRanges();
  await m.sync();
  await m.close();
  await m.close(); // idempotent

  const m2 = await openMap(t, file, 64 * MiB);
  t.deepEqual(m2.dirtyRanges(), ranges);
  t.is(m2.dirtyCount(), 5);
  t.is(m2.loadedCount(), 5);
  // Loaded regions have an unknown seq: no commit clears them...
  t.is(m2.clearCommitted(1e12), 0);
  // ...except once written again (they then carry that write's seq).
  m2.markDirty(20 * MiB, 100, 20);
  t.is(m2.loadedCount(), 4);
  t.is(m2.clearCommitted(20), 1);
  t.is(m2.dirtyCount(), 4);
  // After the resync, adoptLoaded gives them a seq.
  m2.adoptLoaded(30);
  m2.markDirty(65536, 1, 31); // region 1 written again after the resync
  t.is(m2.clearCommitted(29), 0);
  t.is(m2.clearCommitted(30), 3);
  t.deepEqual(m2.dirtyRanges(), [{ offset: 65536, length: 65536 }]);
  t.is(m2.loadedCount(), 0);
  t.is(m2.clearCommitted(31), 1);
  t.is(m2.dirtyCount(), 0);
  await m2.close();
  const m3 = await openMap(t, file, 64 * MiB);
  t.is(m3.dirtyCount(), 0);
});

test('clearLoaded and clearRange clear without a seq', async (t) => {
  const file = tempFile(t);
  const m = await StateMap.open(file, { volumeSize: 1 * MiB + 100, regionSize: 4096 });
  t.is(m.regionCount, 257);
  m.markDirty(0, 1 * MiB + 100, 1);
  await m.close();
  const m2 = await openMap(t, file, 1 * MiB + 100, 4096);
  t.is(m2.dirtyCount(), 257);
  m2.markDirty(8192, 4096, 5); // region 2 recorded
  t.is(m2.clearLoaded(), 256);
  t.deepEqual(m2.dirtyRanges(), [{ offset: 8192, length: 4096 }]);
  m2.markDirty(0, 1 * MiB + 100, 6);
  // Partly covered regions at either end stay; the partial last region is cleared when the range reaches the volume end.
  t.is(m2.clearRange(100, 4096 * 3), 2); // regions 1, 2... region 0 and 3 partly covered
  t.false(m2.isDirty(4096));
  t.false(m2.isDirty(8192));
  t.true(m2.isDirty(0));
  t.true(m2.isDirty(12288));
  t.is(m2.clearRange(1 * MiB, 100), 1);
  t.false(m2.isDirty(1 * MiB + 50));
  t.deepEqual(fileDirty(file, 257).length, m2.dirtyCount());
});

test('dirtyRanges coalesces adjacent regions and clips the last one to the volume', async (t) => {
  const file = tempFile(t);
  const size = 100 * 4096 + 1000;
  const m = await openMap(t, file, size, 4096);
  t.is(m.regionCount, 101);
  t.deepEqual(m.dirtyRanges(), []);
  m.markDirty(4096 * 5, 4096, 1);
  m.markDirty(4096 * 6, 4096 * 2, 2); // 5..7 coalesce
  m.markDirty(4096 * 9, 1, 3);
  m.markDirty(4096 * 16, 4096 * 16, 4); // 16..31, whole bytes
  m.markDirty(size - 1, 1, 5); // last (partial) region
  m.markDirty(4096 * 99, 1, 6); // adjacent to it
  t.deepEqual(m.dirtyRanges(), [
    { offset: 4096 * 5, length: 4096 * 3 },
    { offset: 4096 * 9, length: 4096 },
    { offset: 4096 * 16, length: 4096 * 16 },
    { offset: 4096 * 99, length: 4096 + 1000 },
  ]);
});

test('a different geometry, a corrupt header or a truncated bitmap is refused clearly', async (t) => {
  const file = tempFile(t);
  const m = await StateMap.open(file, { volumeSize: 1 * GiB });
  await m.close();
  const err = await t.throwsAsync(StateMap.open(file, { volumeSize: 2 * GiB }), { instanceOf: StateMapGeometryError });
  t.regex(err!.message, /1073741824-byte volume with 65536-byte regions/);
  await t.throwsAsync(StateMap.open(file, { volumeSize: 1 * GiB, regionSize: 4096 }), { instanceOf: StateMapGeometryError });
  await t.throwsAsync(StateMap.open(file, { volumeSize: 1 * GiB, regionSize: 3000 }), { instanceOf: RangeError });
  const good = fs.readFileSync(file);
  const bad = Buffer.from(good);
  bad[16] ^= 1;
  fs.writeFileSync(file, bad);
  await t.throwsAsync(StateMap.open(file, { volumeSize: 1 * GiB }), { message: /header CRC/ });
  fs.writeFileSync(file, good.subarray(0, good.length - 1));
  await t.throwsAsync(StateMap.open(file, { volumeSize: 1 * GiB }), { message: /truncated/ });
  fs.writeFileSync(file, good);
  const ok = await openMap(t, file, 1 * GiB);
  t.is(ok.dirtyCount(), 0);
});

const CHILD = `
const { StateMap } = require(process.argv[1]);
(async () => {
  const m = await StateMap.open(process.argv[2], { volumeSize: 1024 * 1024 * 1024, regionSize: 65536 });
  let seq = 1;
  for (;;) {
    const region = Math.floor(Math.random() * 16384);
    m.markDirty(region * 65536 + 100, 4096, seq++);
    process.stdout.write(region + '\\n');
    if (seq % 50 === 0) await new Promise((r) => setImmediate(r));
  }
})();
`;

test('a SIGKILLed process leaves every region it marked dirty', async (t) => {
  const modPath = path.resolve(__dirname, '../src/journal/state-map.js');
  for (let round = 0; round < 3; round++) {
    const file = tempFile(t);
    const child = spawn(process.execPath, ['-e', CHILD, modPath, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_c, sig) => resolve(sig)));
    while (out.split('\n').length < 20) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, Math.random() * 100));
    child.kill('SIGKILL');
    t.is(await exited, 'SIGKILL');
    const marked = new Set(
      out
        .split('\n')
        .filter((l) => /^\d+$/.test(l))
        .map(Number),
    );
    const m = await openMap(t, file, 1 * GiB);
    const missing = [...marked].filter((r) => !m.isDirty(r * 65536));
    t.deepEqual(missing, []);
    t.true(m.dirtyCount() >= marked.size);
    t.is(m.loadedCount(), m.dirtyCount());
  }
});

test('large volumes: sparse seq tracking, switching to an array and back under a huge range', async (t) => {
  const file = tempFile(t);
  // 4M regions of 512 bytes: above the always-flat limit.
  const size = 2 * GiB;
  const m = await openMap(t, file, size, 512);
  t.is(m.regionCount, 4 * 1024 * 1024);
  for (let i = 0; i < 1000; i++) m.markDirty(i * 1024 * 1024, 4096, i + 1); // 8 regions each
  t.is(m.dirtyCount(), 8000);
  t.is(m.clearCommitted(500), 4000);
  // A trim of most of the volume: more than 1/8 of the regions.
  m.markDirty(0, 1 * GiB, 2000);
  // The 4000 regions still dirty (seqs 501..1000) lie in the first GiB: they now carry seq 2000.
  t.is(m.dirtyCount(), 2 * 1024 * 1024);
  t.is(m.clearCommitted(1999), 0);
  t.is(m.clearCommitted(2000), 2 * 1024 * 1024);
  t.is(m.dirtyCount(), 0);
  m.markDirty(size - 512, 512, 2001);
  t.deepEqual(m.dirtyRanges(), [{ offset: size - 512, length: 512 }]);
  t.is(m.clearCommitted(2001), 1);
  t.is(fileDirty(file, m.regionCount).length, 0);
});

test('a 1 TiB volume at 64 KiB regions: 2 MiB bitmap, cheap sparse marks', async (t) => {
  const file = tempFile(t);
  const m = await openMap(t, file, 1 * TiB);
  t.is(m.regionCount, 16 * 1024 * 1024);
  t.is(fs.statSync(file).size, STATE_MAP_HEADER_SIZE + 2 * MiB);
  const before = process.memoryUsage().arrayBuffers;
  const t0 = process.hrtime.bigint();
  const N = 100000;
  let x = 12345;
  for (let i = 0; i < N; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    m.markDirty((x % (16 * 1024 * 1024)) * 65536, 4096, i + 1);
  }
  const ns = Number(process.hrtime.bigint() - t0) / N;
  t.log(`markDirty on a 1 TiB map: ${ns.toFixed(0)} ns per random 4 KiB write`);
  t.true(process.memoryUsage().arrayBuffers - before < 32 * MiB, 'no per-region seq array for a sparse dirty set');
  t.true(m.dirtyCount() > 0.99 * N);
  const dirty = m.dirtyCount();
  t.is(m.clearCommitted(N), dirty);
  t.is(m.dirtyCount(), 0);
});

test('model check: random marks, commits, reopens', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-smap-model-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const RS = 4096;
  const REGIONS = 40;
  const SIZE = REGIONS * RS - 100;
  type Op = { t: 'mark'; off: number; len: number } | { t: 'commit'; back: number } | { t: 'reopen' } | { t: 'adopt' };
  const op: fc.Arbitrary<Op> = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({ t: fc.constant('mark' as const), off: fc.nat(SIZE - 1), len: fc.integer({ min: 1, max: 5 * RS }) }),
    },
    { weight: 3, arbitrary: fc.record({ t: fc.constant('commit' as const), back: fc.nat(5) }) },
    { weight: 1, arbitrary: fc.constant({ t: 'reopen' as const }) },
    { weight: 1, arbitrary: fc.constant({ t: 'adopt' as const }) },
  );
  let k = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 60 }), async (ops) => {
      const file = path.join(dir, `m${k++}`);
      let m = await StateMap.open(file, { volumeSize: SIZE, regionSize: RS });
      // Model: region -> latest seq (Infinity = loaded, unknown).
      const model = new Map<number, number>();
      let seq = 0;
      try {
        for (const o of ops) {
          if (o.t === 'mark') {
            const len = Math.min(o.len, SIZE - o.off);
            seq++;
            m.markDirty(o.off, len, seq);
            for (let r = Math.floor(o.off / RS); r <= Math.floor((o.off + len - 1) / RS); r++) {
              const cur = model.get(r);
              model.set(r, cur === undefined || cur === Infinity ? seq : Math.max(cur, seq));
            }
          } else if (o.t === 'commit') {
            const c = seq - o.back;
            let n = 0;
            for (const [r, s] of model) {
              if (s <= c) {
                model.delete(r);
                n++;
              }
            }
            if (m.clearCommitted(c) !== n) return false;
          } else if (o.t === 'reopen') {
            await m.close();
            m = await StateMap.open(file, { volumeSize: SIZE, regionSize: RS });
            for (const r of model.keys()) model.set(r, Infinity);
          } else {
            m.adoptLoaded(seq);
            for (const [r, s] of model) if (s === Infinity) model.set(r, seq);
          }
          const want = [...model.keys()].sort((a, b) => a - b);
          if (m.dirtyCount() !== want.length) return false;
          const got = fileDirty(file, REGIONS);
          if (got.join() !== want.join()) return false;
          for (let r = 0; r < REGIONS; r++) if (m.isDirty(r * RS) !== model.has(r)) return false;
        }
        return true;
      } finally {
        await m.close();
      }
    }),
    { numRuns: 150 },
  );
  t.pass();
});
