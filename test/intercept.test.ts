/**
 * The intercept's contract (src/journal/protected-volume.ts), with a fake
 * production image, journal and state map that record the order of calls:
 *   reserve seq -> mark dirty -> production write -> journal append -> reply;
 *   FUA makes image, journal and state map durable before the reply;
 *   overlapping writes reach the image in seq order, others run at once;
 *   a failed production write is answered with the error, journaled as an
 *   error record, and the range's content is re-captured as resync records;
 *   crash recovery journals only blocks that differ from the replica.
 * And the RangeLock it is built on.
 */
import test from 'ava';
import fc from 'fast-check';
import type { Extent, NbdExport, WriteFlags, ZeroFlags } from '../src/nbd';
import { RecordKind } from '../src/lfc';
import { ProtectedVolume, type DirtyMap, type InterceptJournal, type ReplicaComparer } from '../src/journal/protected-volume';
import { RangeLock } from '../src/journal/range-lock';

const tick = () => new Promise<void>((r) => setImmediate(r));

class Recorder {
  readonly calls: string[] = [];
  note(s: string): void {
    this.calls.push(s);
  }
}

class FakeImage implements NbdExport {
  readonly readOnly = false;
  readonly capabilities = {
    flush: true,
    fua: true,
    trim: true,
    zero: true,
    fastZero: false,
    cache: false,
    blockStatus: true,
    multiConn: true,
  };
  readonly blockSize = undefined;
  readonly data: Buffer;
  /** Writes wait on these gates, in call order, when set. */
  gates: Array<Promise<void>> = [];
  failNext: string | null = null;
  constructor(
    readonly size: number,
    private readonly rec: Recorder,
  ) {
    this.data = Buffer.alloc(size);
  }
  async read(o: number, l: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(o, o + l));
  }
  async write(o: number, d: Buffer, f: WriteFlags): Promise<void> {
    this.rec.note(`image.write ${o}+${d.length}${f.fua ? ' fua' : ''}`);
    const gate = this.gates.shift();
    if (gate) await gate;
    if (this.failNext) {
      const code = this.failNext;
      this.failNext = null;
      // A short write: half of it landed.
      d.copy(this.data, o, 0, d.length >> 1);
      throw Object.assign(new Error(`injected ${code}`), { code });
    }
    d.copy(this.data, o);
    this.rec.note(`image.done ${o}+${d.length}`);
  }
  async trim(o: number, l: number): Promise<void> {
    this.rec.note(`image.trim ${o}+${l}`);
    this.data.fill(0, o, o + l);
  }
  async zero(o: number, l: number, _f: ZeroFlags): Promise<void> {
    this.rec.note(`image.zero ${o}+${l}`);
    this.data.fill(0, o, o + l);
  }
  async flush(): Promise<void> {
    this.rec.note('image.flush');
  }
  async cache(): Promise<void> {}
  async blockStatus(o: number, l: number): Promise<Extent[]> {
    return [{ length: l, flags: 0 }];
  }
}

interface Appended {
  seq: number;
  kind: RecordKind;
  offset: number;
  length: number;
  payload: Buffer | null;
  flags: number;
}

class FakeJournal implements InterceptJournal {
  private next = 1;
  readonly records: Appended[] = [];
  constructor(private readonly rec: Recorder) {}
  reserve(): number {
    const s = this.next++;
    this.rec.note(`reserve ${s}`);
    return s;
  }
  async append(
    seq: number,
    kind: RecordKind,
    _v: number,
    offset: number,
    length: number,
    payload: Buffer | null,
    flags = 0,
  ): Promise<void> {
    this.rec.note(`append ${seq} kind ${kind}`);
    this.records.push({ seq, kind, offset, length, payload: payload ? Buffer.from(payload) : null, flags });
  }
  async sync(): Promise<void> {
    this.rec.note('journal.sync');
  }
}

class FakeMap implements DirtyMap {
  readonly regionSize = 65536;
  readonly dirty = new Map<number, number>();
  loaded: Array<{ offset: number; length: number }> = [];
  adopted: number | null = null;
  clearedLoaded = false;
  constructor(private readonly rec: Recorder) {}
  markDirty(offset: number, length: number, seq: number): void {
    this.rec.note(`mark ${offset}+${length} seq ${seq}`);
    this.dirty.set(offset, seq);
  }
  pin(): void {}
  unpin(): void {}
  async sync(): Promise<void> {
    this.rec.note('map.sync');
  }
  dirtyRanges() {
    return this.loaded;
  }
  dirtyCount(): number {
    return this.loaded.length;
  }
  adoptLoaded(seq: number): void {
    this.adopted = seq;
  }
  clearLoaded(): number {
    this.clearedLoaded = true;
    return this.loaded.length;
  }
  async close(): Promise<void> {}
}

function rig(size = 1 << 20) {
  const rec = new Recorder();
  const image = new FakeImage(size, rec);
  const journal = new FakeJournal(rec);
  const map = new FakeMap(rec);
  const pv = new ProtectedVolume('v', 1, image, journal, map);
  return { rec, image, journal, map, pv };
}

test('a write: seq, dirty mark, production write, journal append, in that order; FUA adds image, journal and map durability before the reply', async (t) => {
  const { rec, pv, journal } = rig();
  await pv.write(4096, Buffer.alloc(4096, 7), { fua: false });
  t.deepEqual(rec.calls, ['reserve 1', 'mark 4096+4096 seq 1', 'image.write 4096+4096', 'image.done 4096+4096', 'append 1 kind 1']);
  rec.calls.length = 0;
  await pv.write(0, Buffer.alloc(512, 1), { fua: true });
  t.deepEqual(rec.calls.slice(0, 5), ['reserve 2', 'mark 0+512 seq 2', 'image.write 0+512', 'image.done 0+512', 'append 2 kind 1']);
  t.deepEqual(
    new Set(rec.calls.slice(5)),
    new Set(['image.flush', 'journal.sync', 'map.sync']),
    'FUA: everything durable before the reply',
  );
  t.is(journal.records[1]!.flags & 1, 1, 'the record carries the FUA flag');
  rec.calls.length = 0;
  await pv.trim(0, 8192, { fua: false });
  await pv.zero(8192, 8192, { fua: false, noHole: false, fastZero: false });
  t.deepEqual(rec.calls, [
    'reserve 3',
    'mark 0+8192 seq 3',
    'image.trim 0+8192',
    'append 3 kind 2',
    'reserve 4',
    'mark 8192+8192 seq 4',
    'image.zero 8192+8192',
    'append 4 kind 3',
  ]);
});

test('overlapping writes in flight reach the image in seq order; a disjoint one does not wait', async (t) => {
  const { rec, pv, image, journal } = rig();
  let open1!: () => void;
  image.gates.push(new Promise<void>((r) => (open1 = r)));
  const w1 = pv.write(0, Buffer.alloc(8192, 1), { fua: false });
  await tick();
  const w2 = pv.write(4096, Buffer.alloc(8192, 2), { fua: false }); // overlaps w1
  const w3 = pv.write(65536, Buffer.alloc(4096, 3), { fua: false }); // disjoint
  await w3;
  t.true(rec.calls.includes('image.done 65536+4096'), 'the disjoint write finished while the first was held');
  t.false(rec.calls.includes('image.write 4096+8192'), 'the overlapping write waits for the first');
  open1();
  await Promise.all([w1, w2]);
  t.true(rec.calls.indexOf('image.done 0+8192') < rec.calls.indexOf('image.write 4096+8192'));
  t.deepEqual(image.data.subarray(4096, 12288), Buffer.alloc(8192, 2), 'the later seq wins on the image');
  // Seqs are taken after the lock: the disjoint write got seq 2, the waiting one seq 3.
  const pair = journal.records.filter((r) => r.offset < 65536);
  t.deepEqual(
    pair.map((r) => [r.offset, r.seq]),
    [
      [0, 1],
      [4096, 3],
    ],
    'journal order of the overlapping pair = seq order = image order',
  );
});

test('a failed production write: the client gets the error, an error record is journaled, then the range is re-captured as resync records', async (t) => {
  const { pv, image, journal } = rig();
  image.failNext = 'EIO';
  const err = await t.throwsAsync(pv.write(0, Buffer.alloc(4096, 9), { fua: false }));
  t.is((err as NodeJS.ErrnoException).code, 'EIO');
  t.deepEqual(
    journal.records.map((r) => r.kind),
    [RecordKind.Error, RecordKind.Resync],
  );
  const resync = journal.records[1]!;
  t.true(resync.seq > journal.records[0]!.seq);
  t.deepEqual(resync.payload, image.data.subarray(0, 4096), 'the resync record holds what production really holds');
  t.is(pv.ioStatus().errors.write, 1);
});

test('crash recovery with a replica: only blocks that differ are journaled, in runs; the loaded regions are adopted or cleared', async (t) => {
  const { pv, image, journal, map } = rig(256 * 1024);
  image.data.fill(5, 0, 64 * 1024);
  map.loaded = [{ offset: 0, length: 128 * 1024 }];
  // The replica differs in blocks 3, 4 and 20.
  const replica: ReplicaComparer = {
    blockSize: 4096,
    differing: async (off, data) => Array.from({ length: data.length / 4096 }, (_, i) => [3, 4, 20].includes(off / 4096 + i)),
  };
  const r = await pv.resyncDirtyRegions(replica);
  t.is(r.bytes, 3 * 4096);
  t.deepEqual(
    journal.records.map((x) => [x.kind, x.offset, x.length]),
    [
      [RecordKind.Resync, 3 * 4096, 8192],
      [RecordKind.Resync, 20 * 4096, 4096],
    ],
  );
  t.deepEqual(journal.records[0]!.payload, image.data.subarray(3 * 4096, 5 * 4096));
  t.is(map.adopted, journal.records[1]!.seq, 'the dirty bits clear when the resync commits');
  // Nothing differs: nothing journaled, the loaded bits clear at once.
  const b = rig(256 * 1024);
  b.map.loaded = [{ offset: 0, length: 64 * 1024 }];
  const r2 = await b.pv.resyncDirtyRegions({ blockSize: 4096, differing: async (_o, d) => new Array(d.length / 4096).fill(false) });
  t.is(r2.bytes, 0);
  t.is(b.journal.records.length, 0);
  t.true(b.map.clearedLoaded);
  // Without a replica every dirty byte is journaled.
  const c = rig(256 * 1024);
  c.map.loaded = [{ offset: 0, length: 64 * 1024 }];
  t.is((await c.pv.resyncDirtyRegions()).bytes, 64 * 1024);
});

test('range lock: a request waits exactly for the earlier overlapping ones, in arrival order', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 60 }), fc.integer({ min: 1, max: 20 })), { minLength: 1, maxLength: 25 }),
      async (reqs) => {
        const lock = new RangeLock();
        const order: number[] = [];
        const tokens = reqs.map(([o, l]) => lock.acquire(o, l));
        const runs = tokens.map(async (tok, i) => {
          if (tok.wait) await tok.wait;
          order.push(i);
          await tick();
          tok.release();
        });
        await Promise.all(runs);
        // For every overlapping pair, the earlier one ran first.
        for (let i = 0; i < reqs.length; i++) {
          for (let j = i + 1; j < reqs.length; j++) {
            const [a, al] = reqs[i]!;
            const [b, bl] = reqs[j]!;
            if (a < b + bl && b < a + al && order.indexOf(i) > order.indexOf(j)) return false;
          }
        }
        // Requests with nothing earlier overlapping get no promise at all.
        const none = reqs.map((_, i) => !reqs.slice(0, i).some(([a, al]) => a < reqs[i]![0] + reqs[i]![1] && reqs[i]![0] < a + al));
        return none.every((n, i) => n === (tokens[i]!.wait === null)) && lock.size === 0;
      },
    ),
    { numRuns: 200 },
  );
  t.pass();
});
