/**
 * A container's life as a file: created durably under a temporary name,
 * renamed to its sealed name, found again by listing a directory. Names are
 * in format.ts (containerFileName).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from '../util/fsync-dir';
import { ContainerKind, containerFileName } from './format';
import { fdatasyncFd, openFd, writeAllSync } from './io';

async function exists(p: string): Promise<boolean> {
  return fs.promises.access(p).then(
    () => true,
    () => false,
  );
}

function refuse(p: string): never {
  throw Object.assign(new Error(`container ${p} already exists`), { code: 'EEXIST', path: p });
}

/**
 * Create container n's file with its header durable, open for writing.
 * AILFC: <dir>/active-<n>.lfc, written under active-<n>.lfc.init and linked
 * into place, so an active file always has a complete header. BILFC:
 * <dir>/bilfc-<n>.lfc.tmp (renamed at seal). Refuses (EEXIST) to overwrite
 * an existing file, including a sealed one with the same n.
 */
export async function createContainerFile(
  dir: string,
  kind: ContainerKind,
  n: number,
  header: Buffer,
): Promise<{ path: string; fd: number }> {
  if (kind === ContainerKind.AILFC) {
    const final = path.join(dir, containerFileName('active', n));
    const sealed = path.join(dir, containerFileName('ailfc', n));
    if (await exists(sealed)) refuse(sealed);
    if (await exists(final)) refuse(final);
    const tmp = `${final}.init`;
    await fs.promises.rm(tmp, { force: true });
    const fd = await openFd(tmp, 'wx');
    try {
      writeAllSync(fd, header, 0);
      await fdatasyncFd(fd);
      await fs.promises.link(tmp, final);
    } catch (err) {
      fs.closeSync(fd);
      await fs.promises.rm(tmp, { force: true });
      throw err;
    }
    await fs.promises.unlink(tmp);
    await fsyncDir(dir);
    return { path: final, fd };
  }
  const sealedPath = path.join(dir, containerFileName('bilfc', n));
  if (await exists(sealedPath)) refuse(sealedPath);
  const tmpPath = `${sealedPath}.tmp`;
  const fd = await openFd(tmpPath, 'wx');
  try {
    writeAllSync(fd, header, 0);
    await fdatasyncFd(fd);
    await fsyncDir(dir);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return { path: tmpPath, fd };
}

/**
 * A container written under `<final>.tmp` (retention's merged files, whose
 * names are chosen by the caller): header durable, open for writing.
 * A leftover tmp file of an earlier attempt is replaced.
 */
export async function createContainerFileAt(final: string, header: Buffer): Promise<{ path: string; fd: number }> {
  if (await exists(final)) refuse(final);
  const tmp = `${final}.tmp`;
  await fs.promises.rm(tmp, { force: true });
  const fd = await openFd(tmp, 'wx');
  try {
    writeAllSync(fd, header, 0);
    await fdatasyncFd(fd);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return { path: tmp, fd };
}

/**
 * A sealed container (footer durable) takes its final name: active-<n> →
 * ailfc-<n>, bilfc-<n>.lfc.tmp → bilfc-<n>.lfc, or `final` when given; the
 * directory is fsynced. Returns the final path.
 */
export async function renameSealed(file: string, kind: ContainerKind, n: number, final?: string): Promise<string> {
  const dir = path.dirname(file);
  final ??= path.join(dir, containerFileName(kind === ContainerKind.AILFC ? 'ailfc' : 'bilfc', n));
  if (final === file) return final;
  if (await exists(final)) refuse(final);
  await fs.promises.rename(file, final);
  await fsyncDir(dir);
  return final;
}

const NAME_RE = /^(active|ailfc|bilfc)-(\d{1,20})\.lfc(\.tmp|\.init)?$/;

/**
 * Containers in a directory, sorted by n: kind 'active' | 'ailfc' | 'bilfc'
 * | 'bilfc-tmp', plus 'partial' for an active-<n>.lfc.init left by a crash
 * during create() (it holds no records and may be deleted).
 */
export async function listContainers(dir: string): Promise<Array<{ kind: string; n: number; path: string }>> {
  const names = await fs.promises.readdir(dir);
  const out: Array<{ kind: string; n: number; path: string }> = [];
  for (const name of names) {
    const m = NAME_RE.exec(name);
    if (!m) continue;
    const n = Number(m[2]);
    if (!Number.isSafeInteger(n)) continue;
    let kind: string = m[1];
    if (m[3] === '.tmp') {
      if (kind !== 'bilfc') continue;
      kind = 'bilfc-tmp';
    } else if (m[3] === '.init') {
      if (kind !== 'active') continue;
      kind = 'partial';
    }
    out.push({ kind, n, path: path.join(dir, name) });
  }
  const order: Record<string, number> = { partial: 0, active: 1, ailfc: 2, 'bilfc-tmp': 3, bilfc: 4 };
  out.sort((a, b) => a.n - b.n || order[a.kind] - order[b.kind]);
  return out;
}
