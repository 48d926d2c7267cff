/**
 * The one rule for small state files (util/atomic-file.ts): write a tmp
 * file, fsync it, rename it over the file, fsync the directory. Checked by
 * the order of the calls, and by killing a process with SIGKILL while it
 * rewrites link-state.json as fast as it can: the file always parses, with
 * a value the process had finished writing.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFileAtomicSync, type AtomicIo } from '../src/util/atomic-file';

test('the tmp file is fsynced before the rename, and the directory after it', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rw-atomic-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const calls: string[] = [];
  const names = new Map<number, string>();
  const io: AtomicIo = {
    openSync: (p, flags, mode) => {
      const fd = fs.openSync(p, flags, mode);
      names.set(fd, path.basename(p) || p);
      calls.push(`open ${path.basename(p)}`);
      return fd;
    },
    writeSync: (fd, data, off, len, pos) => {
      calls.push(`write ${names.get(fd)}`);
      return fs.writeSync(fd, data, off, len, pos);
    },
    fsyncSync: (fd) => {
      calls.push(`fsync ${names.get(fd)}`);
      fs.fsyncSync(fd);
    },
    closeSync: (fd) => {
      calls.push(`close ${names.get(fd)}`);
      fs.closeSync(fd);
    },
    renameSync: (a, b) => {
      calls.push(`rename ${path.basename(a)} ${path.basename(b)}`);
      fs.renameSync(a, b);
    },
  };
  const file = path.join(dir, 'link-state.json');
  writeFileAtomicSync(file, '{"committedContainer":7}', { io });
  const d = path.basename(dir);
  t.deepEqual(calls, [
    'open link-state.json.tmp',
    'write link-state.json.tmp',
    'fsync link-state.json.tmp',
    'close link-state.json.tmp',
    'rename link-state.json.tmp link-state.json',
    `open ${d}`,
    `fsync ${d}`,
    `close ${d}`,
  ]);
  t.is(fs.readFileSync(file, 'utf8'), '{"committedContainer":7}');
  t.false(fs.existsSync(`${file}.tmp`));
});

test('kill -9 while link-state.json is rewritten in a loop: it always parses, with a value that was written whole', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rw-atomic-kill-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'link-state.json');
  const mod = path.join(__dirname, '..', 'src', 'util', 'atomic-file.js');
  // Each value is padded to a different length, so a torn write could not parse.
  const script = `
    const { writeFileAtomicSync } = require(${JSON.stringify(mod)});
    let n = 0;
    for (;;) {
      n++;
      writeFileAtomicSync(${JSON.stringify(file)}, JSON.stringify({ committedContainer: n, pad: 'x'.repeat(n % 5000) }));
      if (n === 1) process.stdout.write('started\\n');
    }`;
  for (let round = 0; round < 10; round++) {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r) => child.stdout!.once('data', () => r()));
    await new Promise((r) => setTimeout(r, 20 + Math.random() * 200));
    child.kill('SIGKILL');
    await new Promise<void>((r) => child.once('close', () => r()));
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as { committedContainer: number; pad: string };
    t.true(v.committedContainer >= 1);
    t.is(v.pad.length, v.committedContainer % 5000, `round ${round}: the file holds one whole write`);
  }
});
