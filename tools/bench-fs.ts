/**
 * Filesystem reader benchmark (issue 15: choose the engine by measurement):
 *
 *   node dist/tools/bench-fs.js [--files 100000] [--big-mib 100] [--reps 7] [--work DIR]
 *
 * On one ext4 image made by mkfs.ext4 -d (--files small files in
 * directories of 100, plus one --big-mib file), with the image in the page
 * cache, the median (and best) elapsed and CPU time of --reps interleaved
 * rounds of:
 *
 *   walk   every path with its inode's metadata, one mactime-style line per
 *          entry formatted and dropped: `fls -r -m /` and `fls -r -p -m /`
 *          (sleuthkit, > /dev/null); src/fs over a FileHandle (each read a
 *          libuv threadpool hop) and over FileExport (the project's export,
 *          page-cache reads on the main thread), in this warm process and in
 *          a new node process (startup and cold JIT included, as a CLI); a C
 *          program on libext2fs (ext2fs_dir_iterate + ext2fs_read_inode_full,
 *          compiled here if libext2fs-dev is installed), and what it would
 *          add reading through the image interface: one worker round trip
 *          per read call it makes;
 *   read   the big file, bytes dropped: `icat > /dev/null`, src/fs
 *          readFile, libext2fs ext2fs_file_read in 1 MiB reads.
 *
 * The image is kept in --work (default $TMPDIR/rewind-bench-fs) and reused
 * when the parameters match.
 */
import { Command } from 'commander';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { CountingImage, escapeName, openFilesystem, openImageFile, type FsImage, type WalkEntry } from '../src/fs';
import { FileExport } from '../src/storage';

const PATH = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`;

/** The libext2fs side of the comparison: same work as the walk (stat, format a line) and the read. */
const EXT2WALK_C = String.raw`
#include <ext2fs/ext2fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct frame { ext2_ino_t ino; char *path; };
static struct frame *stack; static size_t depth, cap;
static ext2_filsys fs; static unsigned long entries, bytes;
static char line[8192];
static int cb(struct ext2_dir_entry *d, int offset, int blocksize, char *buf, void *priv) {
  const char *parent = priv;
  int len = ext2fs_dirent_name_len(d);
  if (d->inode == 0) return 0;
  if ((len == 1 && d->name[0] == '.') || (len == 2 && d->name[0] == '.' && d->name[1] == '.')) return 0;
  struct ext2_inode_large in;
  if (ext2fs_read_inode_full(fs, d->inode, (struct ext2_inode *)&in, sizeof in)) return 0;
  char *path = malloc(strlen(parent) + len + 2);
  sprintf(path, "%s/%.*s", parent, len, d->name);
  bytes += snprintf(line, sizeof line, "0|%s|%u|%o|%u|%u|%llu|%u|%u|%u|%u\n", path, d->inode, in.i_mode,
    inode_uid(in), inode_gid(in), (unsigned long long)EXT2_I_SIZE(&in), in.i_atime, in.i_mtime, in.i_ctime, in.i_crtime);
  entries++;
  if (LINUX_S_ISDIR(in.i_mode)) {
    if (depth == cap) { cap = cap ? cap * 2 : 64; stack = realloc(stack, cap * sizeof *stack); }
    stack[depth++] = (struct frame){ d->inode, path };
  } else free(path);
  return 0;
}
int main(int argc, char **argv) {
  if (argc < 3) return 2;
  if (ext2fs_open(argv[2], 0, 0, 0, unix_io_manager, &fs)) return 1;
  if (!strcmp(argv[1], "walk")) {
    stack = malloc(64 * sizeof *stack); cap = 64;
    stack[depth++] = (struct frame){ EXT2_ROOT_INO, strdup("") };
    while (depth) { struct frame f = stack[--depth]; ext2fs_dir_iterate(fs, f.ino, 0, NULL, cb, f.path); free(f.path); }
    /* read system calls made (after unix_io_manager's own cache): what a custom io_manager would forward */
    char io[512] = ""; FILE *p = fopen("/proc/self/io", "r"); size_t n = p ? fread(io, 1, sizeof io - 1, p) : 0; io[n] = 0; if (p) fclose(p);
    char *sc = strstr(io, "syscr: ");
    printf("%lu %s\n", entries, sc ? strtok(sc + 7, "\n") : "0");
  } else {
    ext2_file_t file; static char buf[1 << 20]; unsigned int got; unsigned long long total = 0;
    if (ext2fs_file_open(fs, atoi(argv[3]), 0, &file)) return 1;
    do { if (ext2fs_file_read(file, buf, sizeof buf, &got)) return 1; total += got; } while (got > 0);
    ext2fs_file_close(file);
    printf("%llu\n", total);
  }
  ext2fs_close(fs);
  return 0;
}
`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Contender {
  group: 'walk' | 'read';
  name: string;
  /** Returns the CPU milliseconds of a child process it ran (else this process's CPU time is measured). */
  fn: () => Promise<number | unknown> | number | unknown;
  ms: number[];
  cpu: number[];
}

/**
 * Runs every contender once per round, --reps rounds after a warm-up round
 * (page cache, JIT): interleaved, so a busy neighbour on a shared machine
 * slows all of them alike rather than whichever ran at the time. CPU time
 * (user + system) is recorded too: on a loaded machine it is the steadier
 * measure.
 */
async function rounds(contenders: Contender[], reps: number): Promise<void> {
  for (let r = 0; r <= reps; r++) {
    for (const c of contenders) {
      const t0 = performance.now();
      const u0 = process.cpuUsage();
      const child = await c.fn();
      const u = process.cpuUsage(u0);
      if (r === 0) continue;
      c.ms.push(performance.now() - t0);
      c.cpu.push(typeof child === 'number' ? child : (u.user + u.system) / 1000);
    }
  }
}

const GNU_TIME = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : null;

/** Run a command with stdout to /dev/null; its CPU milliseconds (NaN without GNU time). */
function toNull(cmd: string, args: string[]): number {
  const out = fs.openSync('/dev/null', 'w');
  const stats = path.join(os.tmpdir(), `bench-fs-time-${process.pid}`);
  try {
    const [c, a] = GNU_TIME ? [GNU_TIME, ['-f', '%U %S', '-o', stats, cmd, ...args]] : [cmd, args];
    const r = spawnSync(c, a, { stdio: ['ignore', out, 'inherit'], env: { ...process.env, PATH } });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}`);
    if (!GNU_TIME) return NaN;
    const [user, sys] = fs.readFileSync(stats, 'utf8').trim().split(/\s+/).map(Number) as [number, number];
    return (user + sys) * 1000;
  } finally {
    fs.closeSync(out);
  }
}

/** The image: --files small files (0..3 KiB) in directories of 100, two levels deep, and the big file. */
function makeImage(work: string, files: number, bigMiB: number): string {
  const image = path.join(work, `ext4-${files}-${bigMiB}.img`);
  if (fs.existsSync(image)) return image;
  const src = path.join(work, 'src');
  fs.rmSync(src, { recursive: true, force: true });
  const blob = Buffer.alloc(3072);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 2654435761) >>> 24;
  for (let i = 0; i < files; i++) {
    const dir = path.join(src, `d${Math.floor(i / 10000)}`, `d${Math.floor(i / 100)}`);
    if (i % 100 === 0) fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, `file-${i}.dat`), blob.subarray(0, (i * 37) % 3072));
  }
  const big = fs.openSync(path.join(src, 'big.bin'), 'w');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < bigMiB; i++) {
    chunk.fill(i & 0xff);
    chunk.writeUInt32LE(i, 0);
    fs.writeSync(big, chunk);
  }
  fs.closeSync(big);
  const sizeMiB = Math.ceil((files * 8 * 1024) / 2 ** 20 + bigMiB * 1.2 + 256);
  fs.writeFileSync(`${image}.tmp`, '');
  fs.truncateSync(`${image}.tmp`, sizeMiB * 2 ** 20);
  execFileSync('mkfs.ext4', ['-q', '-F', '-N', String(files + 20000), '-d', src, `${image}.tmp`], {
    env: { ...process.env, PATH },
    stdio: 'inherit',
  });
  fs.renameSync(`${image}.tmp`, image);
  fs.rmSync(src, { recursive: true, force: true });
  return image;
}

function line(e: WalkEntry): string {
  const s = e.stat!;
  return `0|${escapeName(e.path)}|${e.ino}|${s.mode.toString(8)}|${s.uid}|${s.gid}|${s.size}|${s.atime.sec}|${s.mtime.sec}|${s.ctime.sec}|${s.crtime?.sec ?? 0}\n`;
}

/** Bytes of formatted lines, kept so the formatting is not optimised away. */
let lineBytes = 0;

async function walkTs(img: FsImage): Promise<number> {
  const efs = await openFilesystem(img);
  let n = 0;
  await efs.walk({
    entry: (e) => {
      n++;
      lineBytes += line(e).length;
    },
  });
  return n;
}

async function readTs(img: FsImage, file: string): Promise<number> {
  const efs = await openFilesystem(img);
  let n = 0;
  for await (const c of efs.readFile(file, { reuseBuffers: true })) n += c.length; // as a restore streams it out
  return n;
}

function compileExt2walk(work: string): string | null {
  if (!fs.existsSync('/usr/include/ext2fs/ext2fs.h')) return null;
  const bin = path.join(work, 'ext2walk');
  fs.writeFileSync(`${bin}.c`, EXT2WALK_C);
  const r = spawnSync('cc', ['-O2', '-o', bin, `${bin}.c`, '-lext2fs', '-lcom_err'], { stdio: 'inherit' });
  return r.status === 0 ? bin : null;
}

/**
 * What libext2fs would pay to read through the image interface: its calls
 * are synchronous, the image's reads are not (a journal lookup, an NBD
 * export), so a custom io_manager would run it in a worker that blocks on
 * each read while the main thread serves it. `count` such 4 KiB reads.
 */
async function workerRoundTrips(exp: FsImage, count: number): Promise<number> {
  const sab = new SharedArrayBuffer(8 + 65536);
  const ctl = new Int32Array(sab, 0, 2);
  const data = new Uint8Array(sab, 8);
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const ctl = new Int32Array(workerData.sab, 0, 2);
    for (let i = 0; i < workerData.count; i++) {
      Atomics.store(ctl, 0, 0);
      parentPort.postMessage((i * 7919) % 4096);
      Atomics.wait(ctl, 0, 0);
    }
    parentPort.postMessage(-1);`;
  const t0 = performance.now();
  const w = new Worker(code, { eval: true, workerData: { sab, count } });
  await new Promise<void>((resolve, reject) => {
    w.on('error', reject);
    w.on('message', (m: number) => {
      if (m < 0) return resolve();
      exp.read(Math.min(exp.size - 4096, m * 4096 * 64), 4096).then((buf) => {
        data.set(buf);
        Atomics.store(ctl, 0, 1);
        Atomics.notify(ctl, 0);
      }, reject);
    });
  });
  const ms = performance.now() - t0;
  await w.terminate();
  return ms;
}

/** --child walk|read IMAGE: one walk or one read in a fresh process, as a CLI would run it. */
async function child(what: string, image: string): Promise<void> {
  const exp = await FileExport.open(image, { readOnly: true });
  if (what === 'walk') await walkTs(exp);
  else if (what === 'read') await readTs(exp, '/big.bin');
  await exp.close();
}

async function main(): Promise<void> {
  const at = process.argv.indexOf('--child');
  if (at >= 0) return child(process.argv[at + 1]!, process.argv[at + 2]!);
  const o = new Command()
    .option('--files <n>', 'small files', '100000')
    .option('--big-mib <n>', 'size of the big file', '100')
    .option('--reps <n>', 'interleaved rounds (median)', '7')
    .option('--work <dir>', 'where the image is kept', path.join(os.tmpdir(), 'rewind-bench-fs'))
    .parse()
    .opts<{ files: string; bigMib: string; reps: string; work: string }>();
  const files = Number(o.files);
  const bigMiB = Number(o.bigMib);
  const reps = Number(o.reps);
  fs.mkdirSync(o.work, { recursive: true });
  console.log(`image: ${files} files + ${bigMiB} MiB file (mkfs.ext4 -d) in ${o.work}`);
  const image = makeImage(o.work, files, bigMiB);
  toNull('cat', [image]);
  const ext2walk = compileExt2walk(o.work);

  const fd = await openImageFile(image);
  const exp = await FileExport.open(image, { readOnly: true });
  const counting = new CountingImage(fd);
  const entries = await walkTs(counting);
  const walkBytes = counting.bytes;
  const walkCalls = counting.calls;
  const bigIno = (await (await openFilesystem(fd)).stat('/big.bin')).ino;

  const me = process.argv[1]!;
  const contenders: Contender[] = [];
  const add = (group: Contender['group'], name: string, fn: Contender['fn']): void =>
    void contenders.push({ group, name, fn, ms: [], cpu: [] });
  add('walk', 'fls -r -m / > /dev/null', () => toNull('fls', ['-r', '-m', '/', image]));
  add('walk', 'fls -r -p -m / > /dev/null', () => toNull('fls', ['-r', '-p', '-m', '/', image]));
  add('walk', 'src/fs, warm process, FileHandle', async () => void (await walkTs(fd)));
  add('walk', 'src/fs, warm process, FileExport', async () => void (await walkTs(exp)));
  add('walk', 'src/fs, new node process, FileExport', () => toNull(process.execPath, [me, '--child', 'walk', image]));
  add('walk', '  of which node starting, loading modules', () => toNull(process.execPath, [me, '--child', 'none', image]));
  let ext2reads = 0;
  if (ext2walk) {
    add('walk', 'libext2fs (C, unix_io_manager)', () => toNull(ext2walk, ['walk', image]));
    ext2reads = Number(execFileSync(ext2walk, ['walk', image]).toString().split(' ')[1]);
    add('walk', `  + ${ext2reads} reads via a worker (io_manager)`, async () => void (await workerRoundTrips(exp, ext2reads)));
  }
  add('read', 'icat > /dev/null', () => toNull('icat', [image, String(bigIno)]));
  add('read', 'src/fs, warm process, FileHandle', async () => void (await readTs(fd, '/big.bin')));
  add('read', 'src/fs, warm process, FileExport', async () => void (await readTs(exp, '/big.bin')));
  add('read', 'src/fs, new node process, FileExport', () => toNull(process.execPath, [me, '--child', 'read', image]));
  if (ext2walk) add('read', 'libext2fs ext2fs_file_read (C)', () => toNull(ext2walk, ['read', image, String(bigIno)]));
  await rounds(contenders, reps);

  const fls = contenders[0]!;
  const icat = contenders.find((c) => c.name.startsWith('icat'))!;
  console.log(
    `\n${entries} entries (${lineBytes} bytes of lines formatted); one walk reads ${(walkBytes / 2 ** 20).toFixed(1)} MiB in ${walkCalls} calls`,
  );
  if (ext2walk)
    console.log(
      `libext2fs's walk makes ${ext2reads} read calls; a libext2fs engine on the image interface would pay the walk plus those round trips`,
    );
  console.log(`median (best) of ${reps} interleaved rounds, elapsed and CPU (user + system):`);
  for (const c of contenders) {
    const m = median(c.ms);
    const cpu = median(c.cpu);
    const ratio =
      c.group === 'walk'
        ? `${(m / median(fls.ms)).toFixed(2)}x fls elapsed, ${(cpu / median(fls.cpu)).toFixed(2)}x fls CPU`
        : `${((bigMiB * 2 ** 20) / 1e6 / (m / 1000)).toFixed(0)} MB/s, ${(median(icat.ms) / m).toFixed(2)}x icat throughput, ${(cpu / median(icat.cpu)).toFixed(2)}x icat CPU`;
    console.log(
      `${c.group} ${c.name.padEnd(40)} ${m.toFixed(0).padStart(6)} ms (${Math.min(...c.ms)
        .toFixed(0)
        .padStart(5)})  cpu ${cpu.toFixed(0).padStart(5)} ms  ${ratio}`,
    );
  }
  await fd.close();
  await exp.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
