/**
 * The rewind command line (bin/rewind requires this file).
 *
 *   rewind [--data-dir DIR] [--control URL] <command>
 *     serve         run the daemon
 *     volume create NAME --size SIZE [--read-only] [--path FILE]
 *     volume list   [--json]
 *     volume rm     NAME [--keep-data]
 *     status        [--json]
 *     snapshot VOL --at POINT [--name N]      (snapshot list|rm)
 *     clone SOURCE [--at POINT] [--name N]    (clone step|list|rm)
 *     restore VOL --to POINT [--range OFF:LEN]... [--force]
 *     export VOL --at POINT --out FILE
 *     point VOL POINT
 *
 * Exit codes: 0 success, 1 failure, 2 bad usage, 3 no daemon reachable.
 */
// Must stay the first import: sets UV_THREADPOOL_SIZE before libuv's pool starts.
import '../util/threadpool';
import { Command, CommanderError, Option } from 'commander';
import { ApiError, DaemonUnreachableError } from '../control/client';
import { rewindVersion } from '../util/version';
import { status, volumeCreate, volumeList, volumeRemove } from './commands';
import { log, seal, verify, volumeStatus } from './protection-commands';
import { clone, exportImage, point, restore, snapshot, step, viewList, viewRemove } from './timetravel-commands';
import { CliError, EXIT, type GlobalOptions } from './common';
import { registerRetention } from './retention-commands';
import { DEFAULT_LISTEN, serveCommand, type ServeOptions } from './serve';

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function buildProgram(): Command {
  const program = new Command('rewind');
  program
    .description('Continuous-data-protection block appliance: virtual disks served over NBD')
    .version(rewindVersion(), '-V, --version')
    .option('--data-dir <dir>', 'data directory (default: $REWIND_DATA_DIR or ~/.local/share/rewind)')
    .option(
      '--control <url>',
      'clients: control API to talk to (unix:/path/control.sock or http://127.0.0.1:PORT; default <data-dir>/control.sock); ' +
        'serve: control socket PATH, or HOST:PORT for an extra TCP listener (repeatable)',
      collect,
    )
    .configureHelp({ showGlobalOptions: true })
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('serve')
    .description('run the rewind daemon (NBD server and control API) in the foreground')
    .option('--listen <host:port>', 'NBD TCP address, or "none"', DEFAULT_LISTEN)
    .option('--socket <path>', 'NBD Unix socket, or "none" (default: <data-dir>/nbd.sock)')
    .option('--default-size <size>', 'size of the "default" volume created on first start', '1G')
    .option('--no-default-volume', 'do not create the "default" volume on first start')
    .addOption(new Option('--log-level <level>', 'log level').default('info').env('REWIND_LOG_LEVEL'))
    .option('--log-file [path]', 'also append logs to a file (default: <data-dir>/rewind.log)')
    .addHelpText(
      'after',
      `
Files in the data directory (created, mode 0700, if missing):
  catalog/                  volume catalog (LMDB)
  volumes/NAME/image.raw    images created by rewind (sparse raw files)
  nbd.sock                  NBD over a Unix socket
  control.sock              control API, mode 0600: only this user can use it
  control.token             bearer token required by TCP control listeners (--control HOST:PORT)
  rewind.pid, rewind.lock   the running daemon; a second daemon on the same directory is refused

On first start, with no volumes, a volume "default" (--default-size) is created;
it is also served as the default export "". Logs are JSON lines on stderr.
SIGTERM/SIGINT shut down cleanly. UV_THREADPOOL_SIZE defaults to 16.`,
    )
    .action(async (_o: unknown, cmd: Command) => {
      const code = await serveCommand(cmd.optsWithGlobals<ServeOptions>());
      process.exit(code);
    });

  const volume = program.command('volume').description('manage volumes');
  volume
    .command('create')
    .description('create a volume (a sparse raw image, or an existing file/block device with --path)')
    .argument('<name>', 'volume name: letters, digits, ".", "_", "-" (1-64, not starting with ".")')
    .option('--size <size>', 'size, e.g. 1G, 512M, 64k, 4096 (binary units; a multiple of 512)')
    .option('--read-only', 'serve the volume read-only')
    .option('--path <file>', 'serve this existing file or block device instead of creating an image')
    .option('--description <text>', 'free-form description')
    .option('--protected', 'journal every write (AILFC, state map, backup manager)')
    .option('--group <name>', 'join this consistency group (implies --protected); default: a group of its own')
    .option('--json', 'print the created volume as JSON')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      await volumeCreate(name, cmd.optsWithGlobals());
    });
  volume
    .command('list')
    .alias('ls')
    .description('list volumes')
    .option('--json', 'print JSON')
    .action(async (_o: unknown, cmd: Command) => {
      await volumeList(cmd.optsWithGlobals());
    });
  volume
    .command('rm')
    .aliases(['remove', 'delete'])
    .description("delete a volume (disconnects its clients; deletes its image unless --keep-data or it was given with --path)")
    .argument('<name>', 'volume name')
    .option('--keep-data', 'keep the image file')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      await volumeRemove(name, cmd.optsWithGlobals());
    });

  program
    .command('status')
    .description('show whether the daemon is running, and where; with VOLUME, its journal and replication state')
    .argument('[volume]', 'a protected volume')
    .option('--json', 'print JSON')
    .action(async (vol: string | undefined, _o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { json?: boolean }>();
      if (vol) await volumeStatus(vol, o);
      else await status(o);
    });
  program
    .command('seal')
    .description("seal the volume's active AILFC now and wait for the backup manager to commit it")
    .argument('<volume>', 'a protected volume')
    .option('--json', 'print JSON')
    .action(async (vol: string, _o: unknown, cmd: Command) => {
      await seal(vol, cmd.optsWithGlobals());
    });
  program
    .command('log')
    .description("list the volume's committed transactions with their seq and time ranges")
    .argument('<volume>', 'a protected volume')
    .option('--limit <n>', 'only the last N transactions')
    .option('--json', 'print JSON')
    .action(async (vol: string, _o: unknown, cmd: Command) => {
      await log(vol, cmd.optsWithGlobals());
    });
  program
    .command('verify')
    .description('quiesce writes, let the manager catch up, compare production and replica, check every container')
    .argument('<volume>', 'a protected volume')
    .option('--json', 'print JSON')
    .action(async (vol: string, _o: unknown, cmd: Command) => {
      await verify(vol, cmd.optsWithGlobals());
    });

  const pointHelp = 'a point: @seq:N, @txn:N, an ISO time, "10 minutes ago", latest, or a marker';
  program
    .command('point')
    .description('show which write a point names (seq, time, extent)')
    .argument('<volume>', 'a protected volume')
    .argument('<point>', pointHelp)
    .option('--json', 'print JSON')
    .action(async (v: string, at: string, _o: unknown, cmd: Command) => {
      await point(v, at, cmd.optsWithGlobals());
    });

  const snap = program
    .command('snapshot')
    .description('serve a read-only export of a protected volume as it was at a point (copies nothing)')
    .argument('<volume>', 'a protected volume')
    .option('--at <point>', `required: ${pointHelp}`)
    .option('--name <name>', 'export name (default VOLUME.snap-SEQ)')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await snapshot(v, cmd.optsWithGlobals());
    });
  snap
    .command('list')
    .description('list snapshots')
    .argument('[volume]', 'only those of this volume')
    .option('--json', 'print JSON')
    .action(async (v: string | undefined, _o: unknown, cmd: Command) => {
      await viewList('snapshot', v, cmd.optsWithGlobals());
    });
  snap
    .command('rm')
    .description('delete a snapshot (its clients are disconnected)')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (n: string, _o: unknown, cmd: Command) => {
      await viewRemove(n, cmd.optsWithGlobals());
    });

  const cl = program
    .command('clone')
    .description('serve a writable clone of a protected volume at a point, or of another clone (copies nothing)')
    .argument('<source>', 'a protected volume (with --at) or a clone')
    .option('--at <point>', pointHelp)
    .option('--name <name>', 'export name (default SOURCE.clone-SEQ)')
    .option('--read-only', 'a read-only clone (it can step)')
    .option('--json', 'print JSON')
    .action(async (src: string, _o: unknown, cmd: Command) => {
      await clone(src, cmd.optsWithGlobals());
    });
  cl.command('step')
    .description('move a snapshot or an unwritten clone through history by single writes; clients reconnect to see it')
    .argument('<name>')
    .option('--forward <k>', 'K writes later')
    .option('--back <k>', 'K writes earlier')
    .option('--to <point>', pointHelp)
    .option('--json', 'print JSON')
    .action(async (n: string, _o: unknown, cmd: Command) => {
      await step(n, cmd.optsWithGlobals());
    });
  cl.command('list')
    .description('list clones')
    .argument('[volume]', 'only those of this volume')
    .option('--json', 'print JSON')
    .action(async (v: string | undefined, _o: unknown, cmd: Command) => {
      await viewList('clone', v, cmd.optsWithGlobals());
    });
  cl.command('rm')
    .description("delete a clone and its writes (its clients are disconnected)")
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (n: string, _o: unknown, cmd: Command) => {
      await viewRemove(n, cmd.optsWithGlobals());
    });

  program
    .command('restore')
    .description('roll a protected volume back to a point (journaled: it can be undone); its clients are disconnected meanwhile')
    .argument('<volume>', 'a protected volume')
    .requiredOption('--to <point>', pointHelp)
    .option('--range <offset:len>', 'restore only this byte range (repeatable), e.g. 0:1M', collect)
    .option('--force', 'restore even though snapshots or clones of the volume exist')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await restore(v, cmd.optsWithGlobals());
    });
  program
    .command('export')
    .description('write a sparse raw image of a protected volume at a point (a virtual full backup)')
    .argument('<volume>', 'a protected volume')
    .requiredOption('--at <point>', pointHelp)
    .requiredOption('--out <file>', 'a new file (written by the daemon)')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await exportImage(v, cmd.optsWithGlobals());
    });

  registerRetention(program);

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.OK;
      if (err.code === 'commander.executeSubCommandAsync') return err.exitCode;
      return EXIT.USAGE;
    }
    if (err instanceof DaemonUnreachableError) {
      process.stderr.write(`rewind: ${err.message}\n`);
      return EXIT.NO_DAEMON;
    }
    if (err instanceof ApiError || err instanceof CliError) {
      process.stderr.write(`rewind: ${err.message}\n`);
      return err instanceof CliError ? err.exitCode : EXIT.FAILURE;
    }
    process.stderr.write(`rewind: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT.FAILURE;
  }
}

if (require.main === module || require.main?.filename.endsWith('/bin/rewind')) {
  // A closed pipe (rewind ... | head) ends the output quietly.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
