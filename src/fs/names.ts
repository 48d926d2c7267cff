/**
 * File names on Linux filesystems are bytes, not text. The reader keeps
 * them as Buffers; this module gives a printable, reversible form:
 * valid UTF-8 stays as it is, except that backslash becomes `\\`, and any
 * byte that is not part of valid UTF-8, and any control character (C0, DEL,
 * C1), becomes `\xHH` for each of its bytes.
 */

function isControl(cp: number): boolean {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

/** Length of the valid UTF-8 sequence at b[i] (1..4), or 0 if invalid. */
function utf8Length(b: Uint8Array, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  let n: number;
  let min: number;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    min = 0x80;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    min = 0x800;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    min = 0x10000;
  } else return 0;
  if (i + n > b.length) return 0;
  let cp = c & (0xff >> (n + 1));
  for (let k = 1; k < n; k++) {
    const d = b[i + k]!;
    if ((d & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (d & 0x3f);
  }
  // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
  if (cp < min || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return 0;
  return n;
}

const hex = (byte: number): string => '\\x' + byte.toString(16).padStart(2, '0');

/** Printable, reversible form of a name or path (see the module comment). */
export function escapeName(name: Uint8Array): string {
  // Most names are printable ASCII without a backslash: one decode, no per-character work.
  let plain = true;
  for (let i = 0; i < name.length; i++) {
    const c = name[i]!;
    if (c < 0x20 || c >= 0x7f || c === 0x5c) {
      plain = false;
      break;
    }
  }
  if (plain) return Buffer.from(name.buffer, name.byteOffset, name.length).toString('latin1');
  let out = '';
  let i = 0;
  while (i < name.length) {
    const c = name[i]!;
    if (c >= 0x20 && c < 0x7f) {
      out += c === 0x5c ? '\\\\' : String.fromCharCode(c);
      i++;
      continue;
    }
    const n = utf8Length(name, i);
    if (n === 0) {
      out += hex(c);
      i++;
      continue;
    }
    const s = Buffer.from(name.subarray(i, i + n)).toString('utf8');
    if (isControl(s.codePointAt(0)!)) for (let k = 0; k < n; k++) out += hex(name[i + k]!);
    else out += s;
    i += n;
  }
  return out;
}

/** Inverse of escapeName: the bytes a printable name stands for. */
export function unescapeName(text: string): Buffer {
  const parts: Buffer[] = [];
  let plain = '';
  const flush = (): void => {
    if (plain !== '') parts.push(Buffer.from(plain, 'utf8'));
    plain = '';
  };
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch !== '\\') {
      plain += ch;
      continue;
    }
    const next = text[i + 1];
    if (next === '\\') {
      plain += '\\';
      i++;
    } else if (next === 'x' && /^[0-9a-fA-F]{2}$/.test(text.slice(i + 2, i + 4))) {
      flush();
      parts.push(Buffer.from([parseInt(text.slice(i + 2, i + 4), 16)]));
      i += 3;
    } else {
      plain += '\\'; // a lone backslash stands for itself
    }
  }
  flush();
  return Buffer.concat(parts);
}
