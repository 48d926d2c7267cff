/**
 * Volumes as the daemon sees them: the catalog records, and the
 * ExportProvider that hands their images to the NBD server.
 *
 * Each connection opens its own FileExport; FileExport shares one fd per
 * image among them (reference-counted, closed only after in-flight I/O), and
 * keeps no per-connection cache, so multi-conn holds. Deleting a volume
 * removes it from the catalog first (no new client can open it), then has
 * the NBD server drop and drain its clients, and only then deletes the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ClientInfo, ExportListing, ExportProvider, OpenedExport } from '../nbd';
import {
  Catalog,
  DEFAULT_GROUP_SETTINGS,
  DuplicateVolumeError,
  validateVolumeName,
  type VolumeKind,
  type VolumeRecord,
} from '../catalog/catalog';
import type { Protection } from './protection';
import type { TimeTravel } from '../timetravel/service';
import { AclError, aclAllows, effectiveAcl, parseAcl } from '../access/acl';
import { checkVolumeSize, parseVolumeSize, SizeError } from '../util/size';
import { UserError } from '../util/errors';
import { managedImagePath, type DataDirLayout } from './paths';
import type { Logger } from '../util/logger';
import type { ImageBackend } from '../storage/image';

/** Volume name served as the default export "". */
export const DEFAULT_VOLUME = 'default';

export interface CreateVolumeRequest {
  name: unknown;
  size?: unknown;
  readOnly?: unknown;
  path?: unknown;
  description?: unknown;
  /** Journal every write (a protected volume). */
  protected?: unknown;
  /** Consistency group to join (implies protected); default: a group of its own. */
  group?: unknown;
  /** Access control list: entry strings (src/access/acl.ts); absent = everyone. */
  allow?: unknown;
}

export interface VolumeInfo extends VolumeRecord {
  /** Bytes allocated on disk (st_blocks * 512); null for block devices. */
  allocatedBytes: number | null;
}

/** How long an NBD open of a recovering volume waits before it is refused (inside the 10 s handshake). */
const RECOVERY_OPEN_WAIT_MS = 8000;

export class VolumeManager implements ExportProvider {
  /** Serialises create and delete. */
  private mutex: Promise<unknown> = Promise.resolve();
  /** Snapshots and clones, served under their own names. */
  private timeTravel: TimeTravel | null = null;
  /** Volumes taken offline (a production restore): name -> reason. */
  private readonly offline = new Map<string, string>();
  /** Offline for a crash recovery (a subset of offline). */
  private readonly recovering = new Set<string>();
  private readonly onlineWaiters: Array<() => void> = [];

  constructor(
    private readonly catalog: Catalog,
    private readonly layout: DataDirLayout,
    private readonly backend: ImageBackend,
    private readonly logger: Logger,
    private readonly protection: Protection | null = null,
  ) {}

  // ---- ExportProvider -------------------------------------------------

  list(_client: ClientInfo): ExportListing[] {
    const out = this.catalog.list().map((v) => ({ name: v.name, description: describe(v) }));
    for (const v of this.timeTravel?.views.exportEntries() ?? []) out.push({ name: v.name, description: v.description });
    return out;
  }

  /** ACL check (asked by the NBD server before LIST entries and opens). */
  authorize(name: string, client: ClientInfo): boolean {
    const n = name === '' ? DEFAULT_VOLUME : name;
    const record = this.catalog.get(n);
    if (record) return aclAllows(record.allow, client);
    // A snapshot, clone or surfaced marker answers to its own list, else its source volume's.
    const v = this.timeTravel?.views.exportEntry(n);
    return v ? aclAllows(effectiveAcl(v.allow, this.catalog.get(v.volume)?.allow), client) : true;
  }

  async open(name: string, client: ClientInfo): Promise<OpenedExport | null> {
    const volumeName = name === '' ? DEFAULT_VOLUME : name;
    const record = this.catalog.get(volumeName);
    if (!record) {
      const v = this.timeTravel?.views.exportEntry(volumeName);
      if (!v || !this.authorize(volumeName, client)) return null;
      const exp = await this.timeTravel!.views.openExport(volumeName);
      if (!exp) return null;
      this.logger.debug({ view: volumeName, conn: client.id }, 'view opened');
      return { name: volumeName, description: v.description, export: exp };
    }
    if (!aclAllows(record.allow, client)) return null;
    // A short crash recovery is invisible to clients: their open waits for it (within the handshake).
    if (this.recovering.has(volumeName)) await this.onlineOrTimeout(volumeName, RECOVERY_OPEN_WAIT_MS);
    if (this.offline.has(volumeName)) {
      this.logger.info(
        { volume: volumeName, conn: client.id, reason: this.offline.get(volumeName) },
        'refused a client: the volume is offline',
      );
      return null;
    }
    if (record.protection) {
      const pv = this.protection?.volume(volumeName);
      if (!pv) return null;
      return { name: volumeName, description: describe(record), export: pv };
    }
    const image = await this.backend.open(record.path, { readOnly: record.readOnly });
    // Deleted while we were opening it?
    if (this.catalog.get(volumeName)?.created !== record.created) {
      await image.close();
      return null;
    }
    this.logger.debug({ volume: volumeName, conn: client.id }, 'volume opened');
    return { name: volumeName, description: describe(record), export: image };
  }

  // ---- time travel ----------------------------------------------------

  attachTimeTravel(tt: TimeTravel): void {
    this.timeTravel = tt;
  }

  private readonly removedListeners: Array<(name: string) => Promise<void>> = [];

  /** Told after a protected volume is deleted (the file catalog drops its index). */
  onProtectedRemoved(fn: (name: string) => Promise<void>): void {
    this.removedListeners.push(fn);
  }

  /** Takes a volume's export offline (reason) or back online (null). `recovering`: a crash recovery, which opens wait for. */
  setOffline(name: string, reason: string | null, opts: { recovering?: boolean } = {}): void {
    if (reason === null) this.offline.delete(name);
    else this.offline.set(name, reason);
    if (reason !== null && opts.recovering) this.recovering.add(name);
    else this.recovering.delete(name);
    if (reason === null || !opts.recovering) for (const w of this.onlineWaiters.splice(0)) w();
  }

  /** Volumes whose crash recovery is still running (health reports them). */
  recoveringVolumes(): string[] {
    return [...this.recovering];
  }

  private onlineOrTimeout(name: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        const i = this.onlineWaiters.indexOf(check);
        if (i >= 0) this.onlineWaiters.splice(i, 1);
        resolve();
      };
      const check = (): void => {
        if (this.recovering.has(name)) this.onlineWaiters.push(check);
        else done();
      };
      const timer = setTimeout(done, ms);
      timer.unref?.();
      this.onlineWaiters.push(check);
    });
  }

  offlineReason(name: string): string | null {
    return this.offline.get(name) ?? null;
  }

  // ---- catalog operations ---------------------------------------------

  get(name: string): VolumeRecord | undefined {
    return this.catalog.get(name);
  }

  listRecords(): VolumeRecord[] {
    return this.catalog.list();
  }

  async info(record: VolumeRecord): Promise<VolumeInfo> {
    let allocatedBytes: number | null = null;
    if (record.kind === 'file') {
      try {
        const st = await fs.promises.stat(record.path);
        allocatedBytes = st.blocks * 512;
      } catch {
        allocatedBytes = null;
      }
    }
    return { ...record, allocatedBytes };
  }

  /** Creates a volume (and its sparse image unless `path` names an existing one). */
  create(req: CreateVolumeRequest): Promise<VolumeRecord> {
    return this.serialised(() => this.doCreate(req));
  }

  /**
   * Deletes a volume. Once it has left the catalog (so no new client can
   * open it), `disconnect` drops the clients using it and `drained` resolves
   * when their in-flight requests are done; then the image is deleted.
   * Returns the record and how many clients were disconnected.
   */
  remove(
    name: string,
    opts: { keepData: boolean; disconnect: (name: string) => number; drained: (name: string) => Promise<void> },
  ): Promise<{ record: VolumeRecord; disconnected: number; dataDeleted: boolean }> {
    return this.serialised(async () => {
      const nameError = validateVolumeName(name);
      if (nameError) throw new UserError('invalid', nameError);
      const record = this.catalog.get(name);
      if (!record) throw new UserError('not-found', `no volume named "${name}"`);
      const views = this.timeTravel?.views.exportEntries().filter((v) => v.volume === name) ?? [];
      if (views.length) {
        throw new UserError(
          'conflict',
          `volume "${name}" has snapshots or clones (${views.map((v) => v.name).join(', ')}); delete them first`,
        );
      }
      await this.catalog.remove(name);
      const disconnected = opts.disconnect(name);
      await opts.drained(name);
      if (record.protection) {
        await this.protection?.detach(record);
        // Its markers, schedule and any restore intent go with it (and the group's markers with the group).
        const groupGone = !this.catalog.getGroup(record.protection.group);
        await this.timeTravel?.volumeRemoved(name, record.protection.group, groupGone);
        for (const fn of this.removedListeners) {
          await fn(name).catch((err: unknown) =>
            this.logger.warn({ volume: name, err: (err as Error).message }, 'volume removal listener failed'),
          );
        }
      }
      let dataDeleted = false;
      if (!opts.keepData && !record.external) {
        const { dir, image } = managedImagePath(this.layout, name);
        if (record.path === image) {
          await fs.promises.rm(dir, { recursive: true, force: true });
          dataDeleted = true;
        }
      }
      this.logger.info({ volume: name, disconnected, dataDeleted }, 'volume deleted');
      return { record, disconnected, dataDeleted };
    });
  }

  /** Creates the default volume on first start (see serve). */
  async ensureDefaultVolume(size: number): Promise<VolumeRecord | null> {
    if (this.catalog.getMeta<boolean>('defaultVolumeCreated')) return null;
    if (this.catalog.count() > 0) {
      await this.catalog.setMeta('defaultVolumeCreated', true);
      return null;
    }
    const record = await this.create({ name: DEFAULT_VOLUME, size });
    await this.catalog.setMeta('defaultVolumeCreated', true);
    return record;
  }

  private serialised<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn, fn);
    this.mutex = run.catch(() => undefined);
    return run;
  }

  private async doCreate(req: CreateVolumeRequest): Promise<VolumeRecord> {
    const nameError = validateVolumeName(req.name);
    if (nameError) throw new UserError('invalid', nameError);
    const name = req.name as string;
    if (req.readOnly !== undefined && typeof req.readOnly !== 'boolean') {
      throw new UserError('invalid', 'readOnly must be true or false');
    }
    const readOnly = req.readOnly === true;
    if (req.description !== undefined && typeof req.description !== 'string') {
      throw new UserError('invalid', 'description must be a string');
    }
    if (this.catalog.get(name)) throw new UserError('conflict', `volume "${name}" already exists`);
    if (this.timeTravel?.views.has(name)) throw new UserError('conflict', `a snapshot or clone named "${name}" already exists`);
    if (req.protected !== undefined && typeof req.protected !== 'boolean') {
      throw new UserError('invalid', 'protected must be true or false');
    }
    let group: string | null = null;
    if (req.group !== undefined && req.group !== null) {
      const groupError = validateVolumeName(req.group);
      if (groupError) throw new UserError('invalid', groupError.replace(/volume name/g, 'group name'));
      group = req.group as string;
    }
    const protect = req.protected === true || group !== null;
    if (protect && !this.protection) throw new UserError('invalid', 'this daemon does not run protection');
    if (protect && readOnly) throw new UserError('invalid', 'a read-only volume cannot be protected (it takes no writes)');

    let size: number | undefined;
    if (req.size !== undefined && req.size !== null) {
      if (typeof req.size !== 'string' && typeof req.size !== 'number') {
        throw new UserError('invalid', 'size must be a string such as "1G" or a number of bytes');
      }
      try {
        size = parseVolumeSize(req.size);
      } catch (err) {
        if (err instanceof SizeError) throw new UserError('invalid', err.message);
        throw err;
      }
    }

    const description = typeof req.description === 'string' ? req.description : '';
    let allow: string[] | undefined;
    try {
      allow = parseAcl(req.allow);
    } catch (err) {
      if (err instanceof AclError) throw new UserError('invalid', err.message);
      throw err;
    }
    let record: VolumeRecord;
    let createdImage: { dir: string } | null = null;
    if (req.path !== undefined && req.path !== null) {
      record = await this.externalRecord(name, req.path, size, readOnly, description);
    } else {
      if (size === undefined) throw new UserError('invalid', 'size is required (e.g. "1G") unless path is given');
      const { dir, image } = managedImagePath(this.layout, name);
      if (await exists(image)) {
        throw new UserError(
          'conflict',
          `an image for "${name}" already exists at ${image} (kept from a deleted volume?); ` +
            `remove it, or create the volume with path=${image} to reuse it`,
        );
      }
      await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
      createdImage = { dir };
      try {
        await this.backend.create(image, size);
      } catch (err) {
        await fs.promises.rm(dir, { recursive: true, force: true });
        throw new Error(`cannot create image ${image}: ${(err as Error).message}`, { cause: err });
      }
      record = {
        name,
        size,
        path: image,
        kind: 'file',
        readOnly,
        external: false,
        created: new Date().toISOString(),
        description,
      };
    }
    if (allow) record.allow = allow;
    try {
      if (protect) {
        const groupName = group ?? name;
        const existing = this.catalog.getGroup(groupName);
        record = (await this.catalog.addProtected(record, groupName, existing ?? DEFAULT_GROUP_SETTINGS)).record;
      } else {
        await this.catalog.add(record);
      }
    } catch (err) {
      if (createdImage) await fs.promises.rm(createdImage.dir, { recursive: true, force: true });
      if (err instanceof DuplicateVolumeError) throw new UserError('conflict', err.message);
      throw err;
    }
    if (record.protection) {
      try {
        await this.protection!.attach(record);
      } catch (err) {
        await this.catalog.remove(name);
        if (createdImage) await fs.promises.rm(createdImage.dir, { recursive: true, force: true });
        throw new Error(`cannot start protection for "${name}": ${(err as Error).message}`, { cause: err });
      }
    }
    this.logger.info({ volume: name, size: record.size, path: record.path, kind: record.kind, readOnly }, 'volume created');
    return record;
  }

  private async externalRecord(
    name: string,
    rawPath: unknown,
    size: number | undefined,
    readOnly: boolean,
    description: string,
  ): Promise<VolumeRecord> {
    if (typeof rawPath !== 'string' || rawPath === '') throw new UserError('invalid', 'path must be a non-empty string');
    if (!path.isAbsolute(rawPath)) throw new UserError('invalid', `path must be absolute: ${rawPath}`);
    const file = path.normalize(rawPath);
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new UserError('invalid', `path does not exist: ${file}`);
      throw new UserError('invalid', `cannot use ${file}: ${(err as Error).message}`);
    }
    let kind: VolumeKind;
    if (st.isFile()) kind = 'file';
    else if (st.isBlockDevice()) kind = 'device';
    else throw new UserError('invalid', `path is not a regular file or a block device: ${file}`);
    const user = this.catalog.list().find((v) => v.path === file);
    if (user) throw new UserError('conflict', `${file} is already used by volume "${user.name}"`);

    // Open it as the daemon will, to check access and learn a device's size.
    let actual: number;
    try {
      const image = await this.backend.open(file, { readOnly });
      actual = image.size;
      await image.close();
    } catch (err) {
      throw new UserError('invalid', `cannot open ${file}${readOnly ? '' : ' for writing'}: ${(err as Error).message}`);
    }
    if (size !== undefined && size !== actual) {
      throw new UserError(
        'invalid',
        `size ${size} does not match the size of ${file} (${actual} bytes); omit size to use the ${kind}'s size`,
      );
    }
    try {
      checkVolumeSize(actual, `of ${file}`);
    } catch (err) {
      throw new UserError('invalid', (err as Error).message);
    }
    return {
      name,
      size: actual,
      path: file,
      kind,
      readOnly,
      external: true,
      created: new Date().toISOString(),
      description,
    };
  }
}

export function describe(v: VolumeRecord): string {
  return v.description ? `rewind volume ${v.name}: ${v.description}` : `rewind volume ${v.name}`;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.promises.lstat(p);
    return true;
  } catch {
    return false;
  }
}
