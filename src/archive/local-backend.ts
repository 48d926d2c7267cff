/**
 * The local-directory backend: each key is a file under `root`. Writes go
 * to a temporary file that is fsynced, renamed into place (linked, for an
 * exclusive put), and the directory fsynced, so an object is whole or
 * absent after a crash. Reads keep a few descriptors open because packs
 * are read many times in small ranges.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from '../util/fsync-dir';
import type { ArchiveBackend, BackendObject, PutOptions } from './backend';

const TMP_PREFIX = '.tmp-';

export class LocalBackend implements ArchiveBackend {
  readonly description: string;
  private readonly fds = new Map<string, Fd>();
  private readonly maxFds = 64;
  /** Directories known to exist and to be durable in their parent. */
  private readonly dirs = new Set<string>();

  constructor(readonly root: string) {
    this.description = `local directory ${root}`;
    fs.mkdirSync(root, { recursive: true });
  }

  private file(key: string): string {
    if (key === '' || key.startsWith('/') || key.split('/').some((p) => p === '' || p === '.' || p === '..' || p.startsWith(TMP_PREFIX))) {
      throw Object.assign(new Error(`invalid backend key "${key}"`), { code: 'EINVAL' });
    }
    return path.join(this.root, ...key.split('/'));
  }

  /** Creates the directories of `file` and makes each new one durable. */
  private async ensureDir(dir: string): Promise<void> {
    if (this.dirs.has(dir)) return;
    const missing: string[] = [];
    for (let d = dir; d.length > this.root.length && !fs.existsSync(d); d = path.dirname(d)) missing.push(d);
    await fs.promises.mkdir(dir, { recursive: true });
    for (const d of missing) await fsyncDir(path.dirname(d));
    this.dirs.add(dir);
  }

  async put(key: string, body: Buffer | { file: string }, opts: PutOptions = {}): Promise<void> {
    const dest = this.file(key);
    const dir = path.dirname(dest);
    await this.ensureDir(dir);
    const tmp = path.join(dir, `${TMP_PREFIX}${crypto.randomBytes(8).toString('hex')}`);
    try {
      if (Buffer.isBuffer(body)) {
        const fh = await fs.promises.open(tmp, 'wx', 0o600);
        try {
          await fh.writeFile(body);
          await fh.sync();
        } finally {
          await fh.close();
        }
      } else {
        await moveIn(body.file, tmp);
      }
      if (opts.exclusive) {
        await fs.promises.link(tmp, dest); // EEXIST if taken: atomic
        await fs.promises.unlink(tmp);
      } else {
        this.forgetFd(key);
        await fs.promises.rename(tmp, dest);
      }
    } catch (err) {
      await fs.promises.rm(tmp, { force: true });
      throw err;
    }
    await fsyncDir(dir);
  }

  async get(key: string, range?: { offset: number; length: number }): Promise<Buffer> {
    return this.withFd(key, async (fh) => {
      if (range) return readAt(fh, range.offset, range.length);
      return readAt(fh, 0, (await fh.stat()).size);
    });
  }

  async size(key: string): Promise<number | null> {
    try {
      return (await fs.promises.stat(this.file(key))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async list(prefix: string): Promise<BackendObject[]> {
    const out: BackendObject[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let names: fs.Dirent[];
      try {
        names = await fs.promises.readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return;
        throw err;
      }
      for (const d of names) {
        if (d.name.startsWith('.')) continue;
        const key = rel === '' ? d.name : `${rel}/${d.name}`;
        if (d.isDirectory()) {
          if (prefix.startsWith(`${key}/`) || key.startsWith(prefix) || `${key}/`.startsWith(prefix))
            await walk(path.join(dir, d.name), key);
        } else if (d.isFile() && key.startsWith(prefix)) {
          const st = await fs.promises.stat(path.join(dir, d.name)).catch(() => null);
          if (st) out.push({ key, size: st.size });
        }
      }
    };
    await walk(this.root, '');
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    const f = this.file(key);
    this.forgetFd(key);
    try {
      await fs.promises.unlink(f);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    await fsyncDir(path.dirname(f));
  }

  /** Removes temporary files a crash left behind (not part of the interface). */
  async cleanup(): Promise<number> {
    let n = 0;
    const walk = async (dir: string): Promise<void> => {
      for (const d of await fs.promises.readdir(dir, { withFileTypes: true }).catch(() => [] as fs.Dirent[])) {
        const p = path.join(dir, d.name);
        if (d.isDirectory()) await walk(p);
        else if (d.name.startsWith(TMP_PREFIX)) {
          await fs.promises.rm(p, { force: true });
          n++;
        }
      }
    };
    await walk(this.root);
    return n;
  }

  async close(): Promise<void> {
    const all = [...this.fds.values()];
    this.fds.clear();
    for (const e of all) await (await e.p.catch(() => null))?.close().catch(() => undefined);
  }

  /** Runs `fn` on a cached descriptor that stays open until it returns. */
  private async withFd<T>(key: string, fn: (fh: fs.promises.FileHandle) => Promise<T>): Promise<T> {
    let e = this.fds.get(key);
    if (e) {
      this.fds.delete(key); // most recently used goes last
      this.fds.set(key, e);
    } else {
      const fresh: Fd = { p: fs.promises.open(this.file(key), 'r'), refs: 0, doomed: false };
      fresh.p.catch(() => {
        if (this.fds.get(key) === fresh) this.fds.delete(key);
      });
      this.fds.set(key, fresh);
      e = fresh;
      this.evict();
    }
    e.refs++;
    try {
      return await fn(await e.p);
    } finally {
      e.refs--;
      if (e.doomed && e.refs === 0) closeFd(e);
    }
  }

  private evict(): void {
    for (const [key, e] of this.fds) {
      if (this.fds.size <= this.maxFds) return;
      if (e.refs === 0) this.forgetFd(key);
    }
  }

  private forgetFd(key: string): void {
    const e = this.fds.get(key);
    if (!e) return;
    this.fds.delete(key);
    e.doomed = true;
    if (e.refs === 0) closeFd(e);
  }
}

interface Fd {
  p: Promise<fs.promises.FileHandle>;
  refs: number;
  doomed: boolean;
}

function closeFd(e: Fd): void {
  e.p.then((fh) => fh.close()).catch(() => undefined);
}

async function readAt(fh: fs.promises.FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done === length ? buf : buf.subarray(0, done);
}

/** Moves a staged file in (rename; a copy across file systems), durably. */
async function moveIn(src: string, dest: string): Promise<void> {
  const fh = await fs.promises.open(src, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.promises.rename(src, dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await fs.promises.copyFile(src, dest);
    const out = await fs.promises.open(dest, 'r+');
    try {
      await out.sync();
    } finally {
      await out.close();
    }
    await fs.promises.unlink(src);
  }
}
