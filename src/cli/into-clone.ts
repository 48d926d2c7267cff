/**
 * `rewind restore-file VOL --at P PATH --into CLONE`: writes a file (or a
 * directory, recursively) from a point into the ext2/3/4 filesystem inside a
 * writable clone, through the clone's own NBD export; production is never
 * touched. Allocating blocks and inodes, extents, htree directories and
 * metadata checksums inside a live ext4 is what libext2fs does, so the
 * writing is delegated to it: the clone is presented as a file by nbdfuse,
 * its journal is replayed if the point was taken while mounted
 * (`e2fsck -E journal_only`), and debugfs -w (mkdir, write, symlink,
 * set_inode_field) writes the files, their mode, owner and times. The clone
 * must not be mounted by a client meanwhile (two writers corrupt a
 * filesystem); the data is flushed to the clone before this returns.
 *
 * Needs nbdfuse and fusermount3 (libnbd-bin, fuse3) and e2fsprogs where the
 * CLI runs; a missing tool is named in the error.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ControlClient } from '../control/client';
import type { FileInfo } from '../file-catalog/service';
import type { ViewInfo } from '../timetravel/service';
import { formatSize } from '../util/size';
import { CliError, type GlobalOptions } from './common';
import { vol } from './file-commands';
import { listForRestore } from './restore-listing';

type Opts = GlobalOptions & { json?: boolean; at?: string; force?: boolean; partition?: string };

const SBIN = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`;

function need(tool: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { env: { ...process.env, PATH: SBIN } }).status !== 0)
    throw new CliError(`--into needs ${tool} on this host (nbdfuse: libnbd-bin; fusermount3: fuse3; debugfs, e2fsck: e2fsprogs)`);
}

/** A path as debugfs reads it: quoted; names debugfs cannot express are refused. */
function quoted(p: Buffer, what: string): string {
  const s = p.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(p) || p.some((b) => b < 0x20 || b === 0x22 || b === 0x5c || b === 0x7f))
    throw new CliError(
      `${what}: the name holds bytes debugfs cannot be given (quotes, control characters or invalid UTF-8); restore it with --out`,
    );
  return `"${s}"`;
}

function run(cmd: string, args: string[], input?: string): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { env: { ...process.env, PATH: SBIN }, input: input ?? '', maxBuffer: 1 << 26 });
  return { status: r.status, out: `${r.stdout?.toString() ?? ''}${r.stderr?.toString() ?? ''}` };
}

async function fetchTo(c: ControlClient, volume: string, at: string, e: FileInfo, file: string): Promise<void> {
  const res = await c.download(
    'GET',
    vol(volume, `files/content?${new URLSearchParams({ at, pathB64: e.pathRaw, partition: String(e.partition) })}`),
  );
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    for await (const chunk of res) fs.writeSync(fd, chunk as Buffer);
  } finally {
    fs.closeSync(fd);
  }
}

export async function restoreIntoClone(c: ControlClient, volume: string, pathArg: string, clone: string, o: Opts): Promise<void> {
  for (const t of ['nbdfuse', 'fusermount3', 'debugfs', 'e2fsck']) need(t);
  const view = await c.request<ViewInfo>('GET', `/v1/views/${encodeURIComponent(clone)}`);
  if (view.kind !== 'clone' || view.readOnly)
    throw new CliError(`${clone} is a ${view.readOnly ? 'read-only ' : ''}${view.kind}: --into needs a writable clone`);
  const listing = await listForRestore(c, volume, pathArg, o);
  const at = `@seq:${listing.point.seq}`;
  const items = listing.root ? [listing.root] : listing.entries;
  const part = items[0]?.partition ?? Number(o.partition ?? 0);
  const fsCtx = listing.point.filesystems.find((f) => f.partition === part);
  if (!fsCtx) throw new CliError(`partition ${part} is not cataloged at ${at}`);
  const health = await c.health();
  if (!health.nbd.unix && !health.nbd.tcp) throw new CliError('the daemon serves no NBD endpoint to reach the clone');
  const uri = health.nbd.unix
    ? `nbd+unix:///${encodeURIComponent(clone)}?socket=${health.nbd.unix}`
    : `nbd://${health.nbd.tcp}/${encodeURIComponent(clone)}`;

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-into-'));
  const mnt = path.join(tmp, 'mnt');
  fs.mkdirSync(mnt);
  const fuse = spawn('nbdfuse', [mnt, uri], { stdio: 'ignore' });
  let unmounted = false;
  const unmount = (): void => {
    if (unmounted) return;
    unmounted = true;
    run('fusermount3', ['-u', mnt]);
    fuse.kill('SIGTERM');
  };
  try {
    const dev = path.join(mnt, 'nbd');
    for (let i = 0; i < 100 && !fs.existsSync(dev); i++) await new Promise((r) => setTimeout(r, 100));
    if (!fs.existsSync(dev)) throw new CliError(`nbdfuse did not present ${uri}`);
    const spec = `${dev}?offset=${fsCtx.offset}`;
    // A point taken while the filesystem was mounted needs its journal replayed before anything is written.
    const fsck = run('e2fsck', ['-E', 'journal_only', '-p', spec]);
    if (fsck.status !== null && fsck.status > 1)
      throw new CliError(`e2fsck -E journal_only on the clone failed (${fsck.status}): ${fsck.out.trim()}`);
    const destOf = (e: FileInfo): Buffer => Buffer.from(e.pathRaw, 'base64');
    const exists = (p: Buffer): boolean =>
      !/File not found|not found by ext2_lookup/.test(run('debugfs', ['-R', `stat ${quoted(p, p.toString())}`, spec]).out);
    const requests: string[] = [];
    let bytes = 0;
    const skipped: string[] = [];
    const dataDir = path.join(tmp, 'data');
    fs.mkdirSync(dataDir);
    let k = 0;
    for (const e of items) {
      const dest = destOf(e);
      const q = quoted(dest, e.path);
      const present = exists(dest);
      if (present && !o.force && e.type !== 'dir') throw new CliError(`${e.path} exists in ${clone} (--force replaces it)`);
      if (e.type === 'dir') {
        if (!present) requests.push(`mkdir ${q}`);
      } else if (e.type === 'file') {
        const local = path.join(dataDir, String(k++));
        await fetchTo(c, volume, at, e, local);
        bytes += e.size;
        if (present) requests.push(`rm ${q}`);
        requests.push(`write ${local} ${q}`);
      } else if (e.type === 'symlink') {
        if (present) requests.push(`rm ${q}`);
        const target = Buffer.from(e.linkTargetRaw ?? '', 'base64');
        requests.push(`symlink ${q} ${quoted(target, `${e.path} target`)}`);
      } else {
        skipped.push(`${e.path} (${e.type})`);
        continue;
      }
      const typeBits = e.type === 'dir' ? 0o040000 : e.type === 'symlink' ? 0o120000 : 0o100000;
      requests.push(
        `set_inode_field ${q} mode 0${(typeBits | (e.mode & 0o7777)).toString(8)}`,
        `set_inode_field ${q} uid ${e.uid}`,
        `set_inode_field ${q} gid ${e.gid}`,
        `set_inode_field ${q} mtime @${e.times.mtime[0]}`,
        `set_inode_field ${q} atime @${e.times.atime[0]}`,
      );
    }
    const r = run('debugfs', ['-w', '-f', '-', spec], requests.join('\n') + '\n');
    const failures = r.out
      .split('\n')
      .filter((l) => /: (File exists|File not found|Could not|No free space|Ext2 .*error)/i.test(l) || /^write: /.test(l));
    if (r.status !== 0 || failures.length) throw new CliError(`debugfs on the clone: ${failures.join('; ') || r.out.trim()}`);
    const check = run('e2fsck', ['-fn', spec]);
    // Flush what the clone took (FUSE fsync -> NBD FLUSH) before unmounting.
    const fd = fs.openSync(dev, 'r+');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    unmount();
    const result = {
      clone,
      point: at,
      items: items.length - skipped.length,
      bytes,
      skipped,
      fsck: check.status === 0 ? 'clean' : `exit ${check.status}`,
    };
    if (o.json) return void process.stdout.write(JSON.stringify(result) + '\n');
    process.stdout.write(
      `wrote ${result.items} paths (${formatSize(bytes)}) of ${volume} at ${at} into ${clone} (partition ${part}); e2fsck -fn: ${result.fsck}\n`,
    );
    if (skipped.length) process.stdout.write(`  skipped ${skipped.length} special files\n`);
  } finally {
    unmount();
    await new Promise((r) => setTimeout(r, 50));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
