/** The file catalog's verbs on the command line: catalog, files, restore-file, changed-files. */
import type { Command } from 'commander';
import { catalog, changedFiles, files } from './file-commands';
import { restoreFile } from './restore-file';

const pointHelp = 'a point: @seq:N, @txn:N, an ISO time, "10 minutes ago", latest, or a marker';
const pathHelp = 'a path inside the filesystem ("/etc/fstab"); bytes that are not UTF-8 as \\xHH, a backslash as \\\\';

export function registerFileCommands(program: Command): void {
  program
    .command('catalog')
    .description(
      "the catalog of files inside a protected volume: list the cataloged points and jobs, build one (--at), or export/import a point's catalog as a blob. Markers are cataloged as they are placed",
    )
    .argument('<volume>', 'a protected volume')
    .option('--at <point>', `catalog this point (${pointHelp}); waits for the build unless --no-wait`)
    .option('--no-wait', 'queue the build in the background (throttled) and return')
    .option('--full', 'walk the whole filesystem even where an incremental build could run')
    .option('--export <file>', 'write the catalog of --at (default: the newest cataloged point) to FILE, a self-contained blob')
    .option('--import <file>', 'add the point in a catalog blob to the catalog')
    .option('--force', 'with --export: overwrite FILE')
    .option('--no-progress', 'no progress line')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await catalog(v, cmd.optsWithGlobals());
    });
  program
    .command('files')
    .description(
      'list a directory at a point, or search below it (--name, --newer, --recursive); --versions PATH: every cataloged point where the file changed. A point not cataloged yet is cataloged first',
    )
    .argument('<volume>', 'a protected volume')
    .argument('[path]', `${pathHelp}; default /`)
    .option('--at <point>', `${pointHelp} (default: the newest cataloged point)`)
    .option('--name <glob>', 'only names matching (* ? [...]), searched below PATH')
    .option('--newer <time>', 'only files modified after TIME (ISO time or seconds since the epoch), searched below PATH')
    .option('-r, --recursive', 'everything below PATH')
    .option('--partition <n>', 'only this partition (0: a disk without a table)')
    .option('--versions [path]', 'the points where PATH changed (size, mtime, marker), from the catalog')
    .option('--no-progress', 'no progress line')
    .option('--json', 'print JSON')
    .action(async (v: string, p: string | undefined, _o: unknown, cmd: Command) => {
      await files(v, p, cmd.optsWithGlobals());
    });
  program
    .command('restore-file')
    .description(
      'restore a file, or a directory recursively, from a point, reading only its blocks; mode, times and (as root) owner are kept. Never writes to production: --out writes here, --into writes into a writable clone',
    )
    .argument('<volume>', 'a protected volume')
    .argument('<path>', pathHelp)
    .requiredOption('--at <point>', pointHelp)
    .option('--out <file>', 'where to write it (refused if it exists, or if a write would leave it, unless --force)')
    .option('--into <clone>', 'write it at the same path into the ext filesystem of this writable clone (needs nbdfuse and e2fsprogs here)')
    .option('--partition <n>', 'the partition holding PATH, when the image has several filesystems')
    .option('--force', 'overwrite what exists; allow writes through symlinks that leave --out')
    .option('--no-progress', 'no progress line')
    .option('--json', 'print JSON')
    .action(async (v: string, p: string, _o: unknown, cmd: Command) => {
      await restoreFile(v, p, cmd.optsWithGlobals());
    });
  program
    .command('changed-files')
    .description(
      'the files that changed between two points, from the block history between them (the --from point is cataloged first if it is not)',
    )
    .argument('<volume>', 'a protected volume')
    .option('--from <point>', `required: ${pointHelp}`)
    .option('--to <point>', `required: ${pointHelp}`)
    .option('--partition <n>', 'only this partition')
    .option('--no-progress', 'no progress line')
    .option('--json', 'print JSON')
    .action(async (v: string, _o: unknown, cmd: Command) => {
      await changedFiles(v, cmd.optsWithGlobals());
    });
}
