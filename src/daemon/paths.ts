/**
 * Where a daemon keeps its things. Everything lives in one data directory:
 *
 *   <data-dir>/catalog/          LMDB volume catalog
 *   <data-dir>/volumes/NAME/image.raw   images the daemon created
 *   <data-dir>/nbd.sock          NBD over a Unix socket
 *   <data-dir>/control.sock      control API (mode 0600, owner only)
 *   <data-dir>/control.token     bearer token for the TCP control API (0600)
 *   <data-dir>/rewind.pid        pid of the running daemon
 *   <data-dir>/rewind.lock       lock record of the running daemon
 *   <data-dir>/rewind.log        log file, when --log-file is given without a path
 */
import * as os from 'node:os';
import * as path from 'node:path';

export interface DataDirLayout {
  dataDir: string;
  catalogDir: string;
  volumesDir: string;
  nbdSocket: string;
  controlSocket: string;
  tokenFile: string;
  pidFile: string;
  lockFile: string;
  logFile: string;
}

/**
 * The data directory used when --data-dir is not given: $REWIND_DATA_DIR,
 * else $XDG_DATA_HOME/rewind, else ~/.local/share/rewind.
 */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REWIND_DATA_DIR) return path.resolve(env.REWIND_DATA_DIR);
  if (env.XDG_DATA_HOME && path.isAbsolute(env.XDG_DATA_HOME)) {
    return path.join(env.XDG_DATA_HOME, 'rewind');
  }
  return path.join(os.homedir(), '.local', 'share', 'rewind');
}

export function dataDirLayout(dataDir: string): DataDirLayout {
  const dir = path.resolve(dataDir);
  return {
    dataDir: dir,
    catalogDir: path.join(dir, 'catalog'),
    volumesDir: path.join(dir, 'volumes'),
    nbdSocket: path.join(dir, 'nbd.sock'),
    controlSocket: path.join(dir, 'control.sock'),
    tokenFile: path.join(dir, 'control.token'),
    pidFile: path.join(dir, 'rewind.pid'),
    lockFile: path.join(dir, 'rewind.lock'),
    logFile: path.join(dir, 'rewind.log'),
  };
}

/** Directory and image path of a volume the daemon creates itself. */
export function managedImagePath(layout: DataDirLayout, name: string): { dir: string; image: string } {
  const dir = path.join(layout.volumesDir, name);
  return { dir, image: path.join(dir, 'image.raw') };
}
