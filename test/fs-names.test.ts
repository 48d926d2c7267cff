/**
 * File names are bytes: the printable form keeps valid UTF-8, escapes
 * everything else, and gives back the same bytes.
 */
import test from 'ava';
import fc from 'fast-check';
import { escapeName, unescapeName } from '../src/fs';

test('escapeName: examples', (t) => {
  t.is(escapeName(Buffer.from('plain name.txt')), 'plain name.txt');
  t.is(escapeName(Buffer.from('ünïcödé-日本語-🙂')), 'ünïcödé-日本語-🙂');
  t.is(escapeName(Buffer.from([0x62, 0x61, 0x64, 0xff, 0xfe])), 'bad\\xff\\xfe');
  t.is(escapeName(Buffer.from('ctl\x01\x1b[31m\t\x7f')), 'ctl\\x01\\x1b[31m\\x09\\x7f');
  t.is(escapeName(Buffer.from('a\\b')), 'a\\\\b');
  t.is(escapeName(Buffer.from([0xc2, 0x85])), '\\xc2\\x85', 'C1 controls are escaped');
  t.is(escapeName(Buffer.from([0xc0, 0xaf])), '\\xc0\\xaf', 'overlong forms are not UTF-8');
  t.is(escapeName(Buffer.from([0xed, 0xa0, 0x80])), '\\xed\\xa0\\x80', 'surrogates are not UTF-8');
});

test('escapeName: printable, and unescapeName gives the bytes back', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.string({ unit: 'grapheme', maxLength: 40 }), (bytes, text) => {
      for (const b of [Buffer.from(bytes), Buffer.from(text, 'utf8')]) {
        const s = escapeName(b);
        // eslint-disable-next-line no-control-regex -- the test looks for control characters
        if (/[\u0000-\u001f\u007f-\u009f]/.test(s)) return false;
        if (!unescapeName(s).equals(b)) return false;
      }
      return true;
    }),
    { numRuns: 2000 },
  );
  t.pass();
});
