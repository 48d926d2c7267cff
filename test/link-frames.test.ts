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
