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
 *     mark VOL|GROUP NAME [--quiesce-pre CMD --quiesce-post CMD --timeout S --keep D]; markers; unmark
 *     surface VOL MARKER; submerge NAME; schedule VOL [--add RULE]; checkpoint VOL --every N
 *     diff VOL --from A --to B [--export NAME] [--out FILE]; apply-diff FILE IMAGE
 *     bisect VOL --good A --bad B --check CMD [--granularity write|transaction]
 *     catalog VOL [--at P]; files VOL [PATH] [--at P] [--name G] [--newer T] [--versions]
 *     restore-file VOL --at P PATH --out FILE | --into CLONE; changed-files VOL --from A --to B
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
import { applyDiff, bisect, checkpoint, diff, mark, markers, schedule, submerge, surface, unmark } from './history-commands';
import { clone, exportImage, point, restore, snapshot, step, viewList, viewRemove } from './timetravel-commands';
import { CliError, EXIT, type GlobalOptions } from './common';
import { registerRetention } from './retention-commands';
import { registerArchive } from './archive-commands';
import { addArchiveServeOptions } from './archive-options';
import { registerFileCommands } from './file-program';
import { addScrubServeOptions, registerScrub } from './scrub-commands';
import { DEFAULT_LISTEN, serveCommand, type ServeOptions } from './serve';
import { addHardeningServeOptions } from './serve-options';
import { addLinkServeOptions } from './link-options';

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

  addHardeningServeOptions(program.commands.find((c) => c.name() === 'serve')!);
  addLinkServeOptions(program.commands.find((c) => c.name() === 'serve')!);
  addArchiveServeOptions(program.commands.find((c) => c.name() === 'serve')!);
  addScrubServeOptions(program.commands.find((c) => c.name() === 'serve')!);

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
    .option('--allow <spec>', 'allow only matching clients (repeatable): addr:CIDR, uid:N, gid:N, cert:CN=NAME, cert:*, any', collect)
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
    .description('delete a volume (disconnects its clients; deletes its image unless --keep-data or it was given with --path)')
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
    .description(
      'quiesce writes, let the manager catch up (seals the active container), compare production and replica, check containers not checked since they were written',
    )
    .argument('<volume>', 'a protected volume')
    .option('--full', 're-check every stored container, not only those written since the last verify')
    .option('--json', 'print JSON')
    .action(async (vol: string, _o: unknown, cmd: Command) => {
      await verify(vol, cmd.optsWithGlobals());
    });

  const pointHelp = 'a point: @seq:N, @txn:N, an ISO time, "10 minutes ago", latest, or a marker';
  const nearestHelp =
    'where the point has no image (history merged by retention, inside a super transaction, outside retained history), ' +
    'use the nearest valid point before or after it instead of refusing; the output says which point was used';
  // Commands that read the image at a point need the manager to hold it.
  const catchUpNote =
    ' A point past what the backup manager has applied (latest, a recent seq or time) seals the active AILFC and waits for its commit first.';
  program
    .command('point')
    .description(
      'show which write a point names (seq, time, extent). Never seals: a write the manager has not applied yet is read from the journal',
    )
    .argument('<volume>', 'a protected volume')
    .argument('<point>', pointHelp)
    .option('--nearest <side>', `before or after: ${nearestHelp}`)
    .option('--json', 'print JSON')
    .action(async (v: string, at: string, _o: unknown, cmd: Command) => {
      await point(v, at, cmd.optsWithGlobals());
    });

  const snap = program
    .command('snapshot')
    .description('serve a read-only export of a protected volume as it was at a point (copies nothing).' + catchUpNote)
    .argument('<volume>', 'a protected volume')
    .option('--at <point>', `required: ${pointHelp}`)
    .option('--nearest <side>', `before or after: ${nearestHelp}`)
    .option('--name <name>', 'export name (default VOLUME.snap-SEQ)')
    .option('--allow <spec>', "its own access list entry (repeatable; default: the volume's)", collect)
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
    .description('serve a writable clone of a protected volume at a point, or of another clone (copies nothing).' + catchUpNote)
    .argument('<source>', 'a protected volume (with --at) or a clone')
    .option('--at <point>', pointHelp)
    .option('--nearest <side>', `before or after: ${nearestHelp}`)
    .option('--name <name>', 'export name (default SOURCE.clone-SEQ)')
    .option('--read-only', 'a read-only clone (it can step)')
    .option('--allow <spec>', "its own access list entry (repeatable; default: the source's)", collect)
    .option('--json', 'print JSON')
    .action(async (src: string, _o: unknown, cmd: Command) => {
      await clone(src, cmd.optsWithGlobals());
    });
  cl.command('step')
    .description(
      'move a snapshot or an unwritten clone through history by single writes; clients reconnect to see it. --forward and a --to point past what the manager has applied seal the active AILFC and wait for its commit first',
    )
    .argument('<name>')
    .option('--forward <k>', 'K writes later')
    .option('--back <k>', 'K writes earlier')
    .option('--to <point>', pointHelp)
    .option('--nearest <side>', `with --to, before or after: ${nearestHelp}`)
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
    .description('delete a clone and its writes (its clients are disconnected)')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (n: string, _o: unknown, cmd: Command) => {
      await viewRemove(n, cmd.optsWithGlobals());
    });

  program
    .command('restore')
    .description(
      'roll a protected volume back to a point (journaled: it can be undone); its clients are disconnected meanwhile. Seals and waits for the manager to apply every write first. A point with no image is refused, never replaced, unless --nearest says which side',
    )
    .argument('<volume>', 'a protected volume')
    .requiredOption('--to <point>', pointHelp)
    .option('--nearest <side>', `before or after: ${nearestHelp}`)
    .option('--range <offset:len>', 'restore only this byte range (repeatable), e.g. 0:1M', collect)
    .option('--force', 'restore even though snapshots or clones of the volume exist')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await restore(v, cmd.optsWithGlobals());
    });
  program
    .command('export')
    .description('write a sparse raw image of a protected volume at a point (a virtual full backup).' + catchUpNote)
    .argument('<volume>', 'a protected volume')
    .requiredOption('--at <point>', pointHelp)
    .option('--nearest <side>', `before or after: ${nearestHelp}`)
    .requiredOption('--out <file>', 'a new file (written by the daemon)')
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await exportImage(v, cmd.optsWithGlobals());
    });

  program
    .command('mark')
    .description('record a named point (a marker) at the current write, or at a past point with --at; copies nothing')
    .argument('<target>', 'a protected volume or a consistency group')
    .argument('<name>', 'marker name')
    .option('--at <point>', 'name this past point instead (a volume only; crash-consistent, no hooks)')
    .option('--nearest <side>', `with --at, before or after: ${nearestHelp}`)
    .option('--quiesce-pre <cmd>', 'run before the point is taken; success makes it application-consistent')
    .option('--quiesce-post <cmd>', 'run after the point is taken (always)')
    .option('--timeout <s>', 'hook timeout in seconds (a hook that hangs is killed)', '30')
    .option('--keep <duration>', 'delete the marker after this long (e.g. 7d); default: keep')
    .option('--json', 'print JSON')
    .action(async (t: string, n: string, _o: unknown, cmd: Command) => {
      await mark(t, n, cmd.optsWithGlobals());
    });
  program
    .command('markers')
    .description('list markers')
    .argument('<target>', 'a protected volume or a consistency group')
    .option('--name <glob>', 'only names matching (* and ?)')
    .option('--kind <kind>', 'crash-consistent or application-consistent (crash, application)')
    .option('--since <time>', 'placed at or after (ISO time or ms)')
    .option('--until <time>', 'placed at or before')
    .option('--json', 'print JSON')
    .action(async (t: string, _o: unknown, cmd: Command) => {
      await markers(t, cmd.optsWithGlobals());
    });
  program
    .command('unmark')
    .description('delete a marker (its point is no longer pinned)')
    .argument('<target>')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (t: string, n: string, _o: unknown, cmd: Command) => {
      await unmark(t, n, cmd.optsWithGlobals());
    });
  program
    .command('surface')
    .description("expose a marker's point as a read-only export named after the marker")
    .argument('<volume>')
    .argument('<marker>')
    .option('--json', 'print JSON')
    .action(async (v: string, m: string, _o: unknown, cmd: Command) => {
      await surface(v, m, cmd.optsWithGlobals());
    });
  program
    .command('submerge')
    .description('remove a surfaced marker export (the marker stays)')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (n: string, _o: unknown, cmd: Command) => {
      await submerge(n, cmd.optsWithGlobals());
    });
  program
    .command('schedule')
    .description('show or set the schedule of automatic markers (persisted)')
    .argument('<volume>')
    .option(
      '--add <rule>',
      "a rule: 'every=15m,hours=09:00-17:00,days=mon-fri,keep=7d[,pre=CMD,post=CMD,timeout=30s]' (repeatable)",
      collect,
    )
    .option('--clear', 'remove every rule (with --add: replace them)')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await schedule(v, cmd.optsWithGlobals());
    });
  program
    .command('checkpoint')
    .description('place an automatic marker every N seconds (a schedule rule)')
    .argument('<volume>')
    .requiredOption('--every <seconds>', 'interval (seconds, or 15m, 1h ...)')
    .option('--keep <duration>', 'keep each checkpoint this long (e.g. 1d)')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await checkpoint(v, cmd.optsWithGlobals());
    });
  program
    .command('diff')
    .description('the extents a volume changed between two points (from the index).' + catchUpNote)
    .argument('<volume>')
    .option('--from <point>', `required: ${pointHelp}`)
    .option('--to <point>', `required: ${pointHelp}`)
    .option('--nearest <side>', `before or after, for either point: ${nearestHelp}`)
    .option(
      '--export <name>',
      "also serve the image at --to as export NAME whose meta context qemu:dirty-bitmap:NAME marks the changed extents (its base:allocation is the image's own)",
    )
    .option('--out <file>', 'also write a diff file that apply-diff replays onto an image at --from')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await diff(v, cmd.optsWithGlobals());
    });
  program
    .command('apply-diff')
    .description('replay a diff file onto a raw image (or block device) at its --from point')
    .argument('<file>')
    .argument('<image>')
    .option('--json', 'print JSON')
    .action(async (f: string, i: string, _o: unknown, cmd: Command) => {
      await applyDiff(f, i, cmd.optsWithGlobals());
    });
  program
    .command('bisect')
    .description(
      'find the first bad write between two points: CMD runs with REWIND_URI set to a read-only clone; exit 0 good, 125 skip, else bad',
    )
    .argument('<volume>')
    .option('--good <point>', 'a point known good')
    .option('--bad <point>', 'a later point known bad')
    .option('--check <cmd>', 'shell command to judge a point')
    .option('--granularity <g>', 'write or transaction', 'write')
    .option('--nearest <side>', `before or after, for either point: ${nearestHelp}`)
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await bisect(v, cmd.optsWithGlobals());
    });
  registerRetention(program);
  registerArchive(program);
  registerFileCommands(program);
  registerScrub(program);

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
