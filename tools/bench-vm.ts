/**
 * VM test rig benchmark: the guest of vm-images/ on a Rewind volume
 * (unprotected and protected) against the same guest on nbdkit's file plugin.
 *
 *   node dist/tools/bench-vm.js [--size 512M] [--repeat 3] [--mb 128] [--only rewind,rewind-protected,rewind-clone,nbdkit] [--json]
 *
 * rewind-clone: the tree is written to a protected volume, and the guest then
 * boots (and dd's) on a writable clone of it at its latest write.
 *
 * Every guest reaches its disk over NBD TCP on 127.0.0.1. For each target: the guest formats ext4 and writes a file tree (write-tree),
 * then, --repeat times: a boot that only probes the disk (boot), a boot that
 * runs e2fsck and checks every file (verify-tree), and sequential O_DIRECT
 * dd writes and reads of --mb MiB (dd). Reports medians: qemu wall time per
 * boot, the guest's own uptime when init started, and MB/s as the guest
 * measured them, with each target's ratio to nbdkit.
 */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { installSignalHandlers, requireExecutables, runCleanups, runCommand, startServer, type ServerHandle } from './lib';
import { buildGuestImage, REPO_ROOT, runGuest, type GuestDisk, type GuestImage, type GuestResult } from './vm-run';

const BIN = path.join(REPO_ROOT, 'bin', 'rewind');

interface Row {
  target: string;
  bootWallS: number;
  bootGuestS: number;
  verifyWallS: number;
  ddWriteMBps: number;
  ddReadMBps: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function parseSize(s: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(s);
  if (!m) throw new Error(`bad size ${s}`);
  return Number(m[1]) * ({ '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as Record<string, number>)[m[2]!.toLowerCase()]!;
}

async function guest(image: GuestImage, disk: GuestDisk, scenario: string, args: Record<string, string | number>): Promise<GuestResult> {
  const r = await runGuest({ image, disks: [disk], scenario, args, timeoutMs: 600_000 });
  if (r.exitCode !== 0) {
    throw new Error(`${scenario} failed (exit ${r.exitCode}): ${JSON.stringify(r.results)}\n${r.serial.split('\n').slice(-20).join('\n')}`);
  }
  return r;
}

async function measure(
  image: GuestImage,
  target: string,
  disk: GuestDisk,
  o: { repeat: number; mb: number; digest?: string },
): Promise<Row> {
  let digest = o.digest;
  if (!digest) {
    process.stderr.write(`${target}: write-tree\n`);
    const w = await guest(image, disk, 'write-tree', { seed: 1, files: 128 });
    digest = w.results.manifest_sha256!;
  }
  const boot: number[] = [];
  const bootGuest: number[] = [];
  const verify: number[] = [];
  const ddw: number[] = [];
  const ddr: number[] = [];
  for (let i = 0; i < o.repeat; i++) {
    process.stderr.write(`${target}: round ${i + 1}/${o.repeat}\n`);
    const b = await guest(image, disk, 'boot', {});
    boot.push(b.durationMs / 1000);
    bootGuest.push(b.bootSeconds ?? NaN);
    const v = await guest(image, disk, 'verify-tree', { expect: digest });
    verify.push(v.durationMs / 1000);
  }
  // dd overwrites the filesystem: after the boots.
  for (let i = 0; i < o.repeat; i++) {
    ddw.push(Number((await guest(image, disk, 'dd', { mode: 'write', mb: o.mb })).results.mb_per_s));
    ddr.push(Number((await guest(image, disk, 'dd', { mode: 'read', mb: o.mb })).results.mb_per_s));
  }
  return {
    target,
    bootWallS: median(boot),
    bootGuestS: median(bootGuest),
    verifyWallS: median(verify),
    ddWriteMBps: median(ddw),
    ddReadMBps: median(ddr),
  };
}

async function main(): Promise<void> {
  const o = new Command('bench-vm')
    .option('--size <bytes>', 'disk size', '512M')
    .option('--repeat <n>', 'rounds per target (medians are reported)', '3')
    .option('--mb <MiB>', 'dd size', '128')
    .option(
      '--only <targets>',
      'comma-separated: rewind,rewind-protected,rewind-clone,nbdkit',
      'rewind,rewind-protected,rewind-clone,nbdkit',
    )
    .option('--dir <dir>', 'parent of the temporary directory', '/var/tmp')
    .option('--json', 'print JSON')
    .parse()
    .opts<{ size: string; repeat: string; mb: string; only: string; dir: string; json?: boolean }>();
  installSignalHandlers();
  const targets = o.only.split(',');
  if (targets.includes('nbdkit')) requireExecutables(['nbdkit']);
  const size = parseSize(o.size);
  const image = await buildGuestImage({ onLog: (l) => process.stderr.write(`${l}\n`) });
  const tmp = fs.mkdtempSync(path.join(o.dir || os.tmpdir(), 'rewind-bench-vm-'));
  const servers: ServerHandle[] = [];
  const rows: Row[] = [];
  try {
    const dataDir = path.join(tmp, 'data');
    fs.mkdirSync(dataDir);
    const sock = path.join(dataDir, 'nbd.sock');
    if (targets.some((t) => t.startsWith('rewind'))) {
      servers.push(
        await startServer({
          name: 'rewind',
          command: process.execPath,
          args: (port) => [
            BIN,
            'serve',
            '--data-dir',
            dataDir,
            '--listen',
            `127.0.0.1:${port}`,
            '--socket',
            sock,
            '--log-level',
            'warn',
            '--no-default-volume',
          ],
          cwd: REPO_ROOT,
          readyTimeoutMs: 60_000,
          stopTimeoutMs: 30_000,
        }),
      );
    }
    const repeat = Number(o.repeat);
    const mb = Number(o.mb);
    for (const target of targets) {
      let disk: GuestDisk;
      let digest: string | undefined;
      if (target === 'rewind-clone') {
        const rw = (args: string[]) => runCommand(process.execPath, [BIN, '--data-dir', dataDir, ...args]);
        await rw(['volume', 'create', 'clonesrc', '--size', String(size), '--protected']);
        const w = await guest(image, { uri: `nbd://127.0.0.1:${servers[0]!.port}/clonesrc` }, 'write-tree', { seed: 1, files: 128 });
        digest = w.results.manifest_sha256!;
        const c = await rw(['clone', 'clonesrc', '--at', 'latest', '--name', 'vmclone']);
        if (c.code !== 0) throw new Error(`rewind clone: ${c.stderr}`);
        disk = { uri: `nbd://127.0.0.1:${servers[0]!.port}/vmclone` };
      } else if (target === 'rewind' || target === 'rewind-protected') {
        const name = target === 'rewind' ? 'plain' : 'protected';
        await runCommand(process.execPath, [
          BIN,
          '--data-dir',
          dataDir,
          'volume',
          'create',
          name,
          '--size',
          String(size),
          ...(target === 'rewind' ? [] : ['--protected']),
        ]);
        disk = { uri: `nbd://127.0.0.1:${servers[0]!.port}/${name}` };
      } else if (target === 'nbdkit') {
        const file = path.join(tmp, 'nbdkit.img');
        fs.closeSync(fs.openSync(file, 'w'));
        fs.truncateSync(file, size);
        const srv = await startServer({
          name: 'nbdkit',
          command: 'nbdkit',
          args: (port) => ['--foreground', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', file],
        });
        servers.push(srv);
        disk = { uri: `nbd://127.0.0.1:${srv.port}/` };
      } else {
        throw new Error(`unknown target ${target}`);
      }
      rows.push(await measure(image, target, disk, digest ? { repeat, mb, digest } : { repeat, mb }));
    }
  } finally {
    for (const s of servers) await s.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (o.json) {
    process.stdout.write(JSON.stringify({ image: image.manifest.key, rows }, null, 2) + '\n');
    return;
  }
  const ref = rows.find((r) => r.target === 'nbdkit');
  const ratio = (a: number, b: number | undefined) => (b ? ` (${(a / b).toFixed(2)}x)` : '');
  process.stdout.write(`guest: ${image.manifest.kernel.release}, TCG, medians of ${o.repeat}\n`);
  process.stdout.write('target             boot (wall)     init at (guest)  verify-tree (wall)  dd write MB/s      dd read MB/s\n');
  for (const r of rows) {
    process.stdout.write(
      `${r.target.padEnd(18)} ${(r.bootWallS.toFixed(2) + ' s' + ratio(r.bootWallS, ref?.bootWallS)).padEnd(15)} ` +
        `${(r.bootGuestS.toFixed(2) + ' s').padEnd(16)} ${(r.verifyWallS.toFixed(2) + ' s' + ratio(r.verifyWallS, ref?.verifyWallS)).padEnd(19)} ` +
        `${(r.ddWriteMBps.toFixed(1) + ratio(r.ddWriteMBps, ref?.ddWriteMBps)).padEnd(18)} ${r.ddReadMBps.toFixed(1)}${ratio(r.ddReadMBps, ref?.ddReadMBps)}\n`,
    );
  }
}

main().then(
  () => runCleanups().then(() => process.exit(0)),
  (err: unknown) => {
    process.stderr.write(`bench-vm: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    void runCleanups().then(() => process.exit(1));
  },
);
