/**
 * The link's frame reader under arbitrary splits of the byte stream: every
 * frame comes out once, in order, with its own body; bad lengths and types
 * are refused wherever the split falls.
 */
import test from 'ava';
import fc from 'fast-check';
import {
  encodeDataHeader,
  encodeJson,
  FrameReader,
  type Frame,
  LinkProtocolError,
  MsgType,
  parseData,
  parseJson,
} from '../src/link/protocol';
import { encodeRestoreData, parseRestoreData } from '../src/link/remote-restore';

test('frame reader: JSON and DATA frames split anywhere come out once, in order, intact', (t) => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({ kind: fc.constant('json' as const), n: fc.nat(1000), text: fc.string({ maxLength: 200 }) }),
          fc.record({ kind: fc.constant('data' as const), id: fc.nat(1 << 20), offset: fc.nat(1 << 30), len: fc.nat(200_000) }),
        ),
        { minLength: 1, maxLength: 30 },
      ),
      fc.array(fc.integer({ min: 1, max: 300_000 }), { minLength: 1, maxLength: 40 }),
      (frames, splits) => {
        const wire = Buffer.concat(
          frames.map((f, k) =>
            f.kind === 'json'
              ? encodeJson(MsgType.STATUS, { n: f.n, text: f.text, k })
              : Buffer.concat([encodeDataHeader(f.id, f.offset, f.len), Buffer.alloc(f.len, k & 0xff)]),
          ),
        );
        const reader = new FrameReader();
        const out: Frame[] = [];
        let pos = 0;
        let s = 0;
        while (pos < wire.length) {
          const n = Math.min(splits[s++ % splits.length]!, wire.length - pos);
          out.push(...reader.push(Buffer.from(wire.subarray(pos, pos + n))));
          pos += n;
        }
        if (out.length !== frames.length) return false;
        return frames.every((f, k) => {
          const g = out[k]!;
          if (f.kind === 'json') {
            const m = parseJson<{ n: number; text: string; k: number }>(g);
            return g.type === MsgType.STATUS && m.n === f.n && m.text === f.text && m.k === k;
          }
          const d = parseData(g);
          return g.type === MsgType.DATA && d.containerId === f.id && d.offset === f.offset && d.data.equals(Buffer.alloc(f.len, k & 0xff));
        });
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

test('frame reader: a bad length or type is refused, however the bytes arrive', (t) => {
  for (const bad of [Buffer.from([0, 0, 0, 0, 1]), Buffer.from([0xff, 0, 0, 0, 9]), Buffer.from([0, 0, 0, 5, 200])]) {
    const reader = new FrameReader();
    t.throws(
      () => {
        for (const b of bad) reader.push(Buffer.from([b]));
      },
      { instanceOf: LinkProtocolError },
    );
  }
});

test('RESTORE_DATA: header and bytes come through the frame reader intact; malformed ones are refused', (t) => {
  const data = Buffer.alloc(8192, 0x5a);
  const wire = Buffer.concat([
    ...encodeRestoreData({ id: 'restore-1', volumeId: 2, offset: 4096, length: data.length, zero: false }, data),
    ...encodeRestoreData({ id: 'restore-2', volumeId: 2, offset: 65536, length: 1 << 20, zero: true }, null),
  ]);
  const frames = new FrameReader().push(wire);
  t.is(frames.length, 2);
  const a = parseRestoreData(frames[0]!);
  t.deepEqual(a.header, { id: 'restore-1', volumeId: 2, offset: 4096, length: 8192, zero: false });
  t.true(a.data.equals(data));
  const b = parseRestoreData(frames[1]!);
  t.is(b.header.zero, true);
  t.is(b.data.length, 0);
  // The bytes must match the header's length; a header must be JSON and fit the frame.
  const short = encodeRestoreData({ id: 'x', volumeId: 1, offset: 0, length: 4096, zero: false }, Buffer.alloc(100));
  t.throws(() => parseRestoreData(new FrameReader().push(Buffer.concat(short))[0]!), { instanceOf: LinkProtocolError });
  const body = Buffer.alloc(8);
  body.writeUInt32BE(100, 0);
  t.throws(() => parseRestoreData({ type: MsgType.RESTORE_DATA, body }), { instanceOf: LinkProtocolError });
  const notJson = Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('{{{')]);
  t.throws(() => parseRestoreData({ type: MsgType.RESTORE_DATA, body: notJson }), { instanceOf: LinkProtocolError });
});
