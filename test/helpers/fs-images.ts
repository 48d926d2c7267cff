/**
 * Real ext2/3/4 images for the filesystem reader's tests, made by the
 * e2fsprogs tools (mkfs.ext* -d populates from a directory without
 * mounting, debugfs -w sets what -d cannot, e2fsck -fD builds hashed
 * directories) inside sfdisk-made MBR and GPT tables; and sleuthkit's view
 * of them (fls, icat, istat), the oracle.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pattern, rng } from './random';

export function tempDir(prefix = 'rewind-fs-'): { dir: string; cleanup(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Throws (never skips) when a tool is missing: tests that need it then fail loudly. */
export function requireTools(...names: string[]): void {
  const missing = names.filter(
    (n) => spawnSync('sh', ['-c', `command -v ${n} || test -x /usr/sbin/${n} || test -x /sbin/${n}`]).status !== 0,
  );
  if (missing.length) throw new Error(`required tools missing: ${missing.join(', ')} (run tools/install-system-deps.sh)`);
}

function run(cmd: string, args: string[], opts: { input?: string } = {}): Buffer {
  const env = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };
  return execFileSync(cmd, args, {
    env,
    maxBuffer: 1 << 30,
    stdio: ['pipe', 'pipe', 'pipe'],
    ...(opts.input !== undefined ? { input: opts.input } : {}),
  });
}

const isRoot = process.getuid?.() === 0;

/** Names that must survive as bytes: UTF-8, invalid UTF-8, control characters, backslash, pipe. */
export const ODD_NAMES: Buffer[] = [
  Buffer.from('ünïcödé-日本語-🙂'),
  Buffer.from([0x62, 0x61, 0x64, 0xff, 0xfe, 0x2e, 0x74, 0x78, 0x74]), // "bad\xff\xfe.txt"
  Buffer.from([0x63, 0x74, 0x6c, 0x01, 0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x09, 0x7f]), // "ctl\x01\x1b[31m\t\x7f"
  Buffer.from([0xc3, 0x28, 0x61]), // an invalid two-byte sequence
  Buffer.from('back\\slash | pipe  space'),
  Buffer.from('x'.repeat(255)),
];

export interface TreeOptions {
  seed: number;
  /** Files in /many (hashed directory after e2fsck -fD); default 0. */
  many?: number;
  /** Random files in /blobs; default 40. */
  blobs?: number;
  /** Write a block past this offset of /sparse-far (indirect triple on 1 KiB blocks needs > 64.3 MiB). */
  farOffset?: number;
  /** Data islands in /fragmented (forces extent-tree depth >= 1). */
  islands?: number;
  /** Devices, sockets, owners (root only). */
  special?: boolean;
  /** A 3 MiB /big.bin (double indirect on 1 KiB blocks); default true. */
  big?: boolean;
}

/** A source tree with every kind of file the reader has to handle. Returns its directory. */
export function buildTree(root: string, o: TreeOptions): string {
  const r = rng(o.seed);
  const w = (rel: string | Buffer, data: Buffer | string): void =>
    fs.writeFileSync(Buffer.concat([Buffer.from(root + '/'), Buffer.from(rel)]), data);
  fs.mkdirSync(root, { recursive: true });
  w('small.txt', 'hello, rewind\n');
  w('empty', '');
  let deep = 'deep';
  for (let i = 0; i < 12; i++) deep += `/level${i}`;
  fs.mkdirSync(path.join(root, deep), { recursive: true });
  w(`${deep}/bottom.txt`, 'bottom\n');
  fs.mkdirSync(path.join(root, 'blobs'));
  for (let i = 0; i < (o.blobs ?? 40); i++) {
    const size = i % 7 === 0 ? 0 : Math.floor(r() * (i % 3 === 0 ? 300_000 : 9_000));
    w(`blobs/f${i}`, pattern(size, o.seed * 1000 + i));
  }
  if (o.big !== false) w('big.bin', pattern(3 * 1024 * 1024 + 123, o.seed + 1)); // double indirect on 1 KiB blocks
  // Holes: leading, middle and trailing.
  const sp = fs.openSync(path.join(root, 'sparse.bin'), 'w');
  fs.writeSync(sp, pattern(5000, o.seed + 2), 0, 5000, 300_000);
  fs.writeSync(sp, pattern(10_000, o.seed + 3), 0, 10_000, 2_000_000);
  fs.ftruncateSync(sp, 6_000_000);
  fs.closeSync(sp);
  if (o.farOffset) {
    const fd = fs.openSync(path.join(root, 'sparse-far.bin'), 'w');
    fs.writeSync(fd, pattern(4096, o.seed + 4), 0, 4096, o.farOffset);
    fs.closeSync(fd);
  }
  if (o.islands) {
    const fd = fs.openSync(path.join(root, 'fragmented.bin'), 'w');
    for (let i = 0; i < o.islands; i++) fs.writeSync(fd, pattern(1024, o.seed + 5 + i), 0, 1024, i * 8192);
    fs.closeSync(fd);
  }
  fs.mkdirSync(path.join(root, 'links'));
  fs.symlinkSync('../small.txt', path.join(root, 'links/fast'));
  fs.symlinkSync('../' + 'long-target-'.repeat(20) + 'end', path.join(root, 'links/slow'));
  fs.symlinkSync('/deep/level0', path.join(root, 'links/absolute-dir'));
  fs.symlinkSync('nowhere', path.join(root, 'links/dangling'));
  fs.linkSync(path.join(root, 'small.txt'), path.join(root, 'links/hard'));
  fs.mkdirSync(path.join(root, 'odd'));
  ODD_NAMES.forEach((n, i) => w(Buffer.concat([Buffer.from('odd/'), n]), `odd name ${i}\n`));
  execFileSync('mkfifo', [path.join(root, 'fifo')]);
  if (o.many) {
    fs.mkdirSync(path.join(root, 'many'));
    for (let i = 0; i < o.many; i++) w(`many/entry-with-a-longer-name-${i.toString().padStart(6, '0')}`, i % 50 === 0 ? `${i}\n` : '');
  }
  fs.chmodSync(path.join(root, 'small.txt'), 0o4755);
  fs.mkdirSync(path.join(root, 'tmp'), { mode: 0o1777 });
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.chmodSync(path.join(root, 'empty'), 0o000);
  if (o.special !== false && isRoot) {
    run('mknod', [path.join(root, 'null'), 'c', '1', '3']);
    run('mknod', [path.join(root, 'disk'), 'b', '259', '70000']); // minor > 255: the new encoding
    run('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path.join(root, 'sock'))})`]);
    fs.chownSync(path.join(root, 'blobs/f1'), 1000, 1000);
    fs.chownSync(path.join(root, 'blobs/f2'), 100_000, 4_000_000_000); // 32-bit ids
  }
  // Distinct times, all after 1970 and before 2038 (sleuthkit prints them as unsigned 32-bit).
  for (const [rel, t] of [
    ['small.txt', 1_000_000_000],
    ...(o.big !== false ? ([['big.bin', 1_500_000_000]] as const) : []),
    ['blobs', 1_234_567_890],
  ] as const) {
    fs.utimesSync(path.join(root, rel), t - 1000, t);
  }
  return root;
}

export interface MkfsOptions {
  kind: 'ext2' | 'ext3' | 'ext4';
  blockSize: 1024 | 4096;
  /** -O list, e.g. "^flex_bg,^64bit". */
  features?: string;
  inodeSize?: number;
  sizeMiB: number;
  /** Hash the directories (e2fsck -fD) after populating. */
  htree?: boolean;
}

/** mkfs.KIND -d SRC into a new image file. */
export function makeFs(file: string, src: string, o: MkfsOptions): void {
  fs.rmSync(file, { force: true });
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, o.sizeMiB * 1024 * 1024);
  const args = ['-q', '-F', '-b', String(o.blockSize), '-d', src];
  if (o.features) args.push('-O', o.features);
  if (o.inodeSize) args.push('-I', String(o.inodeSize));
  run(`mkfs.${o.kind}`, [...args, file]);
  if (o.htree) {
    const r = spawnSync('e2fsck', ['-fyD', file], { env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } });
    if (r.status !== null && r.status > 2) throw new Error(`e2fsck -fyD failed (${r.status}): ${r.stderr}`);
  }
}

/** debugfs -w requests, e.g. "set_inode_field /small.txt mtime_extra 0x12345678". */
export function debugfs(file: string, requests: string[], write = true): string {
  return run('debugfs', [...(write ? ['-w'] : []), '-f', '-', file], { input: requests.join('\n') + '\n' }).toString();
}

export interface SfdiskPartition {
  /** Linux partition number (from the device node's name). */
  index: number;
  offset: number;
  size: number;
  /** "83", "5"; or a GPT type GUID. */
  type: string;
  uuid?: string;
  name?: string;
}

/** A disk of `sizeMiB` with a table made by sfdisk from `script`; its partitions as sfdisk reads them back. */
export function makeDisk(file: string, sizeMiB: number, script: string): { id: string; partitions: SfdiskPartition[] } {
  fs.rmSync(file, { force: true });
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, sizeMiB * 1024 * 1024);
  run('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], { input: script });
  const dump = JSON.parse(run('sfdisk', ['--json', file]).toString()) as {
    partitiontable: { id: string; partitions: { node: string; start: number; size: number; type: string; uuid?: string; name?: string }[] };
  };
  return {
    id: dump.partitiontable.id,
    partitions: dump.partitiontable.partitions.map((p) => ({
      index: Number(/(\d+)$/.exec(p.node)![1]),
      offset: p.start * 512,
      size: p.size * 512,
      type: p.type,
      ...(p.uuid !== undefined ? { uuid: p.uuid } : {}),
      ...(p.name !== undefined ? { name: p.name } : {}),
    })),
  };
}

/** Copy a filesystem image into the disk at `offset` (as dd conv=notrunc would). */
export function writeInto(disk: string, offset: number, image: string): void {
  const fd = fs.openSync(disk, 'r+');
  try {
    const data = fs.readFileSync(image);
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

export interface FlsEntry {
  /** The path as fls prints it: bytes, with control characters as "^". */
  path: Buffer;
  ino: number;
  /** Type letter of the inode: r d l c b p h (socket). */
  metaType: string;
  perm: number; // permission bits incl. setuid/setgid/sticky
  uid: number;
  gid: number;
  size: number;
  atime: number;
  mtime: number;
  ctime: number;
  crtime: number;
  /** For symlinks sleuthkit resolves: the target it prints after " -> ". */
  linkTarget?: Buffer;
}

function parsePerm(s: string): number {
  let m = 0;
  const bit = (i: number, ch: string, v: number): void => {
    if (s[i] === ch) m |= v;
  };
  ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x'].forEach((ch, i) => bit(i, ch, 1 << (8 - i)));
  if (s[2] === 's') m |= 0o4100;
  if (s[2] === 'S') m |= 0o4000;
  if (s[5] === 's') m |= 0o2010;
  if (s[5] === 'S') m |= 0o2000;
  if (s[8] === 't') m |= 0o1001;
  if (s[8] === 'T') m |= 0o1000;
  return m;
}

/** `fls -r -p -m /` of the filesystem at byte `offset`, without deleted and virtual entries. */
export function fls(image: string, offset = 0): FlsEntry[] {
  const out = run('fls', ['-r', '-p', '-m', '/', '-o', String(offset / 512), image]);
  const entries: FlsEntry[] = [];
  let start = 0;
  while (start < out.length) {
    let end = out.indexOf(0x0a, start);
    if (end < 0) end = out.length;
    const line = out.subarray(start, end);
    start = end + 1;
    if (line.length === 0) continue;
    // MD5|name|inode|mode|uid|gid|size|atime|mtime|ctime|crtime: the name may hold "|", so split around it.
    const first = line.indexOf(0x7c);
    const tail: string[] = [];
    let cut = line.length;
    for (let k = 0; k < 9; k++) {
      const p = line.lastIndexOf(0x7c, cut - 1);
      tail.unshift(line.subarray(p + 1, cut).toString('latin1'));
      cut = p;
    }
    let name = line.subarray(first + 1, cut);
    const [ino, mode, uid, gid, size, atime, mtime, ctime, crtime] = tail as [
      string,
      string,
      string,
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    if (mode.startsWith('V/') || name.includes(Buffer.from(' (deleted'))) continue;
    const e: FlsEntry = {
      path: name,
      ino: Number(ino.split('-')[0]),
      metaType: mode[2]!,
      perm: parsePerm(mode.slice(3)),
      uid: Number(uid),
      gid: Number(gid),
      size: Number(size),
      atime: Number(atime),
      mtime: Number(mtime),
      ctime: Number(ctime),
      crtime: Number(crtime),
    };
    const arrow = name.indexOf(Buffer.from(' -> '));
    if (e.metaType === 'l' && arrow >= 0) {
      e.linkTarget = name.subarray(arrow + 4);
      e.path = name = name.subarray(0, arrow);
    }
    entries.push(e);
  }
  return entries;
}

/** sha256 (hex) of `icat` of an inode. */
export function icatSha256(image: string, ino: number, offset = 0): string {
  return crypto
    .createHash('sha256')
    .update(run('icat', ['-o', String(offset / 512), image, String(ino)]))
    .digest('hex');
}

/** `istat` times with nanoseconds: { "File Modified": "2026-11-29 17:29:23.076354974", ... }. */
export function istatTimes(image: string, ino: number, offset = 0): Record<string, string> {
  const text = run('istat', ['-o', String(offset / 512), image, String(ino)]).toString();
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/^(Accessed|File Modified|Inode Modified|File Created):\s+(\S+ \S+) \(UTC\)$/gm)) out[m[1]!] = m[2]!;
  return out;
}

/** How sleuthkit prints a name: control bytes become "^". */
export function flsName(bytes: Buffer): Buffer {
  return Buffer.from(bytes.map((b) => (b < 0x20 ? 0x5e : b)));
}

/** A file's block map as debugfs `stat` prints it: data blocks by logical block, and tree/indirect blocks. */
export function debugfsBlocks(image: string, file: string): { data: Map<number, number>; meta: number[] } {
  const text = debugfs(image, [`stat "${file}"`], false);
  const list = /\n(?:EXTENTS|BLOCKS):\n([\s\S]*?)(?:\nTOTAL|\n*$)/.exec(text)?.[1] ?? '';
  const data = new Map<number, number>();
  const meta: number[] = [];
  for (const m of list.matchAll(/\(([^)]+)\):(\d+)(?:-(\d+))?/g)) {
    const [, label, first, last] = m as unknown as [string, string, string, string | undefined];
    const lr = /^(\d+)(?:-(\d+))?$/.exec(label);
    if (!lr) {
      meta.push(Number(first)); // ETBn, IND, DIND, TIND
      continue;
    }
    const l0 = Number(lr[1]);
    const n = Number(last ?? first) - Number(first) + 1;
    for (let k = 0; k < n; k++) data.set(l0 + k, Number(first) + k);
  }
  return { data, meta };
}

/** Where debugfs `imap` says an inode is: [block, byte offset]. */
export function debugfsImap(image: string, ino: number): [number, number] {
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(debugfs(image, [`imap <${ino}>`], false))!;
  return [Number(m[1]), parseInt(m[2]!, 16)];
}
