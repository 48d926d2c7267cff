/**
 * `rewind restore-file VOL --at P PATH --out FILE|DIR [--force]`: one file,
 * or a directory recursively, from any point, streamed from the daemon
 * (which reads only the file's blocks) and written here with its mode,
 * times and (as root) owner. Paths are bytes end to end: names that are not
 * UTF-8 are written as they were.
 *
 * Refused without --force: an --out that exists, and any write that would
 * leave the --out directory (a symlink already there on the way). Files are
 * opened with O_NOFOLLOW, so a symlink at the target is never written
 * through. Hard links come back as separate files; device nodes, FIFOs and
 * sockets are listed as skipped.
 *
 * `--into CLONE` writes into the filesystem inside a writable clone instead
 * (into-clone.ts), never into the live production volume.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ControlClient } from '../control/client';
import type { FileInfo } from '../file-catalog/service';
import { unescapeName } from '../fs/names';
import { formatSize } from '../util/size';
import { CliError, EXIT, makeClient, type GlobalOptions } from './common';
import { vol } from './file-commands';
import { listForRestore, normalize } from './restore-listing';
import { restoreIntoClone } from './into-clone';

export type Opts = GlobalOptions & {
  json?: boolean;
  progress?: boolean;
  at?: string;
  out?: string;
  into?: string;
  force?: boolean;
  partition?: string;
};

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

const q = (p: Record<string, string | undefined>): string => `?${new URLSearchParams(p as Record<string, string>).toString()}`;

/** Is `target` (bytes) inside `dir`, symlinks resolved for everything that exists? */
function inside(dir: string, target: Buffer): boolean {
  let parent = Buffer.from(path.dirname(target.toString('latin1')), 'latin1');
  while (!fs.existsSync(parent)) parent = Buffer.from(path.dirname(parent.toString('latin1')), 'latin1');
  const real = fs.realpathSync(parent, { encoding: 'buffer' }).toString('latin1');
  const root = fs.realpathSync(dir);
  return real === root || real.startsWith(root.endsWith('/') ? root : `${root}/`);
}

function secs(t: [number, number]): number {
  return t[0] + t[1] / 1e9;
}

async function download(c: ControlClient, volume: string, at: string, e: FileInfo, target: Buffer, force: boolean): Promise<number> {
  const res = await c.download('GET', vol(volume, `files/content${q({ at, pathB64: e.pathRaw, partition: String(e.partition) })}`));
  const flags =
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW | (force ? fs.constants.O_TRUNC : fs.constants.O_EXCL);
  if (force) {
    const st = fs.lstatSync(target, { throwIfNoEntry: false });
    if (st && !st.isFile()) fs.rmSync(target, { recursive: true, force: true }); // a symlink or directory in the way is replaced, never followed
  }
  const fd = fs.openSync(target, flags, 0o600);
  let n = 0;
  try {
    for await (const chunk of res) {
      const b = chunk as Buffer;
      let off = 0;
      while (off < b.length) off += fs.writeSync(fd, b, off, b.length - off);
      n += b.length;
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (n !== e.size) throw new CliError(`${e.path}: got ${n} bytes of ${e.size} (the transfer was cut)`);
  return n;
}

function applyMeta(target: Buffer, e: FileInfo): void {
  const isLink = e.type === 'symlink';
  if (process.getuid?.() === 0) fs.lchownSync(target, e.uid, e.gid);
  if (!isLink) fs.chmodSync(target, e.mode & 0o7777);
  fs.lutimesSync(target, secs(e.times.atime), secs(e.times.mtime));
}

export async function restoreFile(volume: string, pathArg: string, o: Opts): Promise<void> {
  if (!o.at) throw new CliError("required option '--at <point>' not specified", EXIT.USAGE);
  if (!!o.out === !!o.into) throw new CliError('give exactly one of --out FILE and --into CLONE', EXIT.USAGE);
  const c = makeClient(o, { waitsForManager: true });
  if (o.into) return restoreIntoClone(c, volume, pathArg, o.into, o);
  const out = path.resolve(o.out!);
  const outBuf = Buffer.from(out, 'latin1');
  if (fs.lstatSync(out, { throwIfNoEntry: false }) && !o.force) throw new CliError(`${out} already exists (--force overwrites it)`);
  if (!fs.existsSync(path.dirname(out))) throw new CliError(`directory ${path.dirname(out)} does not exist`);
  const listing = await listForRestore(c, volume, pathArg, o);
  const at = `@seq:${listing.point.seq}`;
  const t0 = Date.now();
  if (listing.root) {
    const n = await download(c, volume, at, listing.root, outBuf, o.force === true);
    applyMeta(outBuf, listing.root);
    const r = { file: out, point: at, bytes: n, seconds: (Date.now() - t0) / 1000 };
    if (o.json) return print(JSON.stringify(r));
    return print(`restored ${listing.root.path} of ${volume} at ${at} to ${out} (${formatSize(n)})`);
  }
  // A directory: parents come before their children in the listing (key order).
  fs.mkdirSync(out, { recursive: true, mode: 0o700 });
  const dirs: Array<{ target: Buffer; e: FileInfo }> = [];
  const skipped: string[] = [];
  let bytes = 0;
  let files = 0;
  const prefix = normalize(pathArg) === '/' ? Buffer.from('/') : Buffer.concat([unescapeName(normalize(pathArg)), Buffer.from('/')]);
  for (const e of listing.entries) {
    const raw = Buffer.from(e.pathRaw, 'base64');
    const rel = raw.subarray(raw.subarray(0, prefix.length).equals(prefix) ? prefix.length : raw.lastIndexOf(0x2f) + 1);
    const target = Buffer.concat([outBuf, Buffer.from('/'), rel]);
    if (!inside(out, target) && !o.force)
      throw new CliError(`${e.path}: writing it would leave ${out} (a symlink on the way); --force allows it`);
    switch (e.type) {
      case 'dir': {
        const st = fs.lstatSync(target, { throwIfNoEntry: false });
        if (st && !st.isDirectory()) {
          // A symlink or file where the directory goes: replaced (never followed) with --force.
          if (!o.force) throw new CliError(`${target.toString()} exists and is not a directory (--force replaces it)`);
          fs.rmSync(target, { force: true });
        }
        if (!st?.isDirectory()) fs.mkdirSync(target, { mode: 0o700 });
        dirs.push({ target, e });
        break;
      }
      case 'file':
        bytes += await download(c, volume, at, e, target, o.force === true);
        applyMeta(target, e);
        files++;
        break;
      case 'symlink':
        if (fs.lstatSync(target, { throwIfNoEntry: false })) {
          if (!o.force) throw new CliError(`${target.toString()} already exists (--force overwrites it)`);
          fs.rmSync(target, { recursive: true, force: true });
        }
        fs.symlinkSync(Buffer.from(e.linkTargetRaw ?? '', 'base64'), target);
        applyMeta(target, e);
        break;
      default:
        skipped.push(`${e.path} (${e.type})`);
    }
  }
  // Directories last, deepest first: writing their children changed their times.
  for (const { target, e } of dirs.reverse()) applyMeta(target, e);
  const r = { dir: out, point: at, files, directories: dirs.length, bytes, skipped, seconds: (Date.now() - t0) / 1000 };
  if (o.json) return print(JSON.stringify(r));
  print(`restored ${normalize(pathArg)} of ${volume} at ${at} to ${out}: ${files} files, ${dirs.length} directories, ${formatSize(bytes)}`);
  if (skipped.length)
    print(`  skipped ${skipped.length} special files: ${skipped.slice(0, 5).join(', ')}${skipped.length > 5 ? ', ...' : ''}`);
}
