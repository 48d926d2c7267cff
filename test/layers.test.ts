/**
 * A clone's image (src/timetravel/layers.ts) and its export
 * (src/timetravel/view-export.ts), against a byte-array model:
 *   random writes, zeroes and trims (partial blocks, the short last block)
 *   read back as the model says, through any number of frozen layers;
 *   the zero map never calls a block with data a hole;
 *   a layer reopened from its store without a flush holds, per block,
 *   either what it held at the last flush or what it holds now;
 *   a clone of a clone shares the frozen layer and the two diverge;
 *   the export refuses writes when read-only and quiesces writes in flight.
 */
import test from 'ava';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LayeredImage, WriteLayer } from '../src/timetravel/layers';
import { openStores, type TimeTravelStores } from '../src/timetravel/store';
import type { ImageSource } from '../src/timetravel/point-image';
import { ViewExport } from '../src/timetravel/view-export';
import type { WriteFlags, ZeroFlags } from '../src/nbd';

const BS = 4096;
const NO_FLAGS: WriteFlags = { fua: false };
const NO_ZERO_FLAGS: ZeroFlags = { fua: false, noHole: false, fastZero: false };
/** 24 blocks and a short last one (volumes are multiples of 512, not of the block). */
const SIZE = 24 * BS + 1536;

/** The point in history below the layers: fixed bytes; blocks 4..7 are a hole. */
class BaseImage implements ImageSource {
  readonly size = SIZE;
  readonly blockSize = BS;
  readonly bytes = Buffer.alloc(SIZE);
  reads = 0;
  constructor() {
    for (let i = 0; i < SIZE; i++) this.bytes[i] = (i * 7 + (i >> 12)) & 0xff;
    this.bytes.fill(0, 4 * BS, 8 * BS);
  }
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.reads++;
    const out = into && into.length === length ? into : Buffer.alloc(length);
    this.bytes.copy(out, 0, offset, offset + length);
    return out;
  }
  async zeroMap(first: number, count: number): Promise<Uint8Array> {
    const m = new Uint8Array(count);
    for (let i = 0; i < count; i++) m[i] = first + i >= 4 && first + i < 8 ? 1 : 0;
    return m;
  }
}

function tempStores(t: { teardown(fn: () => unknown): void }): TimeTravelStores {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-layers-'));
  const stores = openStores(dir);
  t.teardown(async () => {
    await stores.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return stores;
}

async function newLayer(stores: TimeTravelStores): Promise<WriteLayer> {
  const rec = await stores.views.newLayer(SIZE, BS);
  await stores.views.put({ layers: [rec] });
  return WriteLayer.open(stores.views, rec);
}

/** Freezes the top layer (as a clone of a clone does) and returns the layer list with a fresh top. */
async function freezeTop(stores: TimeTravelStores, layers: WriteLayer[]): Promise<WriteLayer[]> {
  const top = layers[layers.length - 1]!;
  await top.flush();
  const frozen = { ...top.record, frozen: true };
  await stores.views.put({ layers: [frozen] });
  top.close();
  return [...layers.slice(0, -1), WriteLayer.open(stores.views, frozen), await newLayer(stores)];
}

type Op =
  | { k: 'write'; offset: number; length: number; fill: number }
  | { k: 'zero'; offset: number; length: number }
  | { k: 'flush' }
  | { k: 'freeze' };

const span = fc
  .tuple(fc.integer({ min: 0, max: SIZE / 512 - 1 }), fc.integer({ min: 1, max: 40 }))
  .map(([s, n]) => ({ offset: s * 512, length: Math.min(n * 512, SIZE - s * 512) }));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(span, fc.integer({ min: 1, max: 255 })).map(([s, fill]) => ({ k: 'write' as const, ...s, fill })) },
  { weight: 3, arbitrary: span.map((s) => ({ k: 'zero' as const, ...s })) },
  { weight: 1, arbitrary: fc.constant({ k: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'freeze' as const }) },
);

function payload(op: { offset: number; length: number; fill: number }): Buffer {
  const b = Buffer.alloc(op.length);
  for (let i = 0; i < b.length; i++) b[i] = (op.fill + ((op.offset + i) >> 9)) & 0xff || 1;
  return b;
}

test('writes, zeroes and trims read back as the model says, through frozen layers; the zero map tells the truth', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 30 }), async (ops) => {
      const stores = tempStores(t);
      const base = new BaseImage();
      const model = Buffer.from(base.bytes);
      let layers = [await newLayer(stores)];
      let img = new LayeredImage(base, layers, false);
      for (const op of ops) {
        if (op.k === 'write') {
          const data = payload(op);
          await img.write(op.offset, data, op.length);
          data.copy(model, op.offset);
        } else if (op.k === 'zero') {
          await img.write(op.offset, null, op.length);
          model.fill(0, op.offset, op.offset + op.length);
        } else if (op.k === 'flush') {
          await img.flush();
        } else {
          layers = await freezeTop(stores, layers);
          img = new LayeredImage(base, layers, false);
        }
      }
      const whole = await img.read(0, SIZE);
      if (!whole.equals(model)) {
        const at = whole.findIndex((b, i) => b !== model[i]);
        throw new Error(`byte ${at} (block ${Math.floor(at / BS)}) reads ${whole[at]}, model ${model[at]}`);
      }
      // Unaligned reads across layer boundaries too.
      for (const [o, l] of [
        [100, 3 * BS],
        [SIZE - 2000, 2000],
        [BS - 1, 2],
      ] as const) {
        if (!(await img.read(o, l)).equals(model.subarray(o, o + l))) throw new Error(`read ${o}+${l} differs`);
      }
      const nblocks = Math.ceil(SIZE / BS);
      const map = await img.zeroMap(0, nblocks);
      for (let b = 0; b < nblocks; b++) {
        const blk = model.subarray(b * BS, Math.min(SIZE, (b + 1) * BS));
        if (map[b] === 1 && blk.some((x) => x !== 0)) throw new Error(`block ${b} called a hole but holds data`);
      }
      for (const l of layers) l.close();
    }),
    { numRuns: 60 },
  );
  t.pass();
});

test('a trimmed whole block becomes a hole in the layer, over a base that had data', async (t) => {
  const stores = tempStores(t);
  const base = new BaseImage();
  const top = await newLayer(stores);
  const img = new LayeredImage(base, [top], false);
  await img.write(BS, null, 2 * BS); // blocks 1 and 2, whole
  const map = await img.zeroMap(0, 4);
  t.deepEqual([...map], [0, 1, 1, 0]);
  t.true((await img.read(BS, 2 * BS)).equals(Buffer.alloc(2 * BS)));
  // A partial write into a base block keeps the rest of the block from the base.
  await img.write(3 * BS + 10, Buffer.from('xyz'), 3);
  const blk = await img.read(3 * BS, BS);
  const want = Buffer.from(base.bytes.subarray(3 * BS, 4 * BS));
  want.write('xyz', 10);
  t.true(blk.equals(want));
  top.close();
});

test('reopened without a flush, each block holds what it held at the last flush or what it holds now', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        opArb.filter((o) => o.k === 'write' || o.k === 'zero'),
        { minLength: 1, maxLength: 12 },
      ),
      fc.array(
        opArb.filter((o) => o.k === 'write' || o.k === 'zero'),
        { minLength: 1, maxLength: 12 },
      ),
      async (before, after) => {
        const stores = tempStores(t);
        const base = new BaseImage();
        const top = await newLayer(stores);
        const img = new LayeredImage(base, [top], false);
        const apply = async (ops: Op[]) => {
          for (const op of ops) {
            if (op.k === 'write') await img.write(op.offset, payload(op), op.length);
            else if (op.k === 'zero') await img.write(op.offset, null, op.length);
          }
        };
        await apply(before);
        await img.flush();
        const flushed = await img.read(0, SIZE);
        await apply(after);
        const now = await img.read(0, SIZE);
        // "Crash": the process dies; the layer is opened again from its store.
        const again = WriteLayer.open(stores.views, stores.views.layer(top.id)!);
        const reopened = await new LayeredImage(base, [again], false).read(0, SIZE);
        for (let b = 0; b * BS < SIZE; b++) {
          const r = [b * BS, Math.min(SIZE, (b + 1) * BS)] as const;
          const got = reopened.subarray(...r);
          if (!got.equals(flushed.subarray(...r)) && !got.equals(now.subarray(...r)))
            throw new Error(`block ${b} after reopen is neither its flushed nor its current content`);
        }
        top.close();
        again.close();
      },
    ),
    { numRuns: 40 },
  );
  t.pass();
});

test('a clone of a clone shares the frozen layer; parent and child diverge without copying', async (t) => {
  const stores = tempStores(t);
  const base = new BaseImage();
  const first = await newLayer(stores);
  const parent0 = new LayeredImage(base, [first], false);
  await parent0.write(0, Buffer.alloc(BS, 0xaa), BS);
  await parent0.flush();
  // Freeze: both get the frozen layer plus a fresh top of their own.
  const [frozen, parentTop] = await freezeTop(stores, [first]);
  const childTop = await newLayer(stores);
  const parent = new LayeredImage(base, [frozen!, parentTop!], false);
  const child = new LayeredImage(base, [frozen!, childTop], false);
  t.true(frozen!.record.frozen);
  await parent.write(0, Buffer.alloc(BS, 0xbb), BS);
  await child.write(BS, Buffer.alloc(BS, 0xcc), BS);
  t.is((await parent.read(0, 1))[0], 0xbb);
  t.is((await child.read(0, 1))[0], 0xaa, 'the child sees the frozen layer, not the parent’s new write');
  t.is((await parent.read(BS, 1))[0], base.bytes[BS], 'the parent does not see the child’s write');
  t.is((await child.read(BS, 1))[0], 0xcc);
  t.is(fs.statSync(childTop.record.file).blocks * 512 <= 2 * BS, true, 'the child layer holds only its own block');
  const ro = new LayeredImage(base, [frozen!], true);
  await t.throwsAsync(ro.write(0, Buffer.alloc(BS), BS), { message: /read-only/ });
  for (const l of [frozen!, parentTop!, childTop]) l.close();
});

test('a view export refuses writes when read-only, and quiesces writes in flight before a swap', async (t) => {
  const stores = tempStores(t);
  const base = new BaseImage();
  const ro = new ViewExport(base, null);
  t.true(ro.readOnly);
  t.false(ro.capabilities.flush);
  await t.throwsAsync(ro.write(0, Buffer.alloc(512), NO_FLAGS), { code: 'EPERM' });
  await t.throwsAsync(ro.trim(0, 512, NO_FLAGS), { code: 'EPERM' });
  await t.throwsAsync(ro.zero(0, 512, NO_ZERO_FLAGS), { code: 'EPERM' });
  await ro.flush(); // a flush on a read-only export is not an error
  t.true((await ro.read(0, 4096)).equals(base.bytes.subarray(0, 4096)));

  const top = await newLayer(stores);
  const img = new LayeredImage(base, [top], false);
  const rw = new ViewExport(img, img);
  t.false(rw.readOnly);
  await t.throwsAsync(rw.zero(0, BS, { ...NO_ZERO_FLAGS, fastZero: true }), { code: 'ENOTSUP' });
  await rw.write(0, Buffer.alloc(BS, 1), { fua: true });
  t.deepEqual(stores.views.layerBlocks(top.id), [0], 'FUA committed the block');

  // Writes issued during quiesced() wait until it is done; those before it finish first.
  const order: string[] = [];
  const early = rw.write(BS, Buffer.alloc(BS, 2), NO_FLAGS);
  const q = rw.quiesced(async () => {
    order.push(top.has(1) ? 'early write done, quiesced' : 'quiesced before the early write was done');
    await new Promise((r) => setTimeout(r, 50));
    order.push('swap');
    const top2 = await newLayer(stores);
    const img2 = new LayeredImage(base, [top, top2], false);
    rw.swap(img2, img2);
  });
  const late = rw.write(2 * BS, Buffer.alloc(BS, 3), NO_FLAGS).then(() => order.push('late write'));
  await Promise.all([early, q, late]);
  t.deepEqual(order, ['early write done, quiesced', 'swap', 'late write']);
  const all = await rw.read(0, 3 * BS);
  t.is(all[0], 1);
  t.is(all[BS], 2);
  t.is(all[2 * BS], 3);
  const extents = await rw.blockStatus(4 * BS, 4 * BS);
  t.true(
    extents.every((e) => e.flags !== 0),
    'the base hole shows as a hole',
  );
});
