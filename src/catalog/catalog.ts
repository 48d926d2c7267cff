/**
 * The volume catalog: which volumes exist, their size and where their data
 * lives. Stored in LMDB at <data-dir>/catalog, so it survives restarts and
 * every change is committed (fsync'd) before the call that made it resolves.
 *
 * Sub-databases:
 *   volumes  name -> VolumeRecord
 *   groups   name -> GroupRecord (consistency groups of protected volumes)
 *   meta     string -> any (e.g. "defaultVolumeCreated", "nextGroupId"; "format": the layout's
 *            version, util/format-version.ts)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { STORE_FORMATS, stampStore } from '../util/format-version';

export type VolumeKind = 'file' | 'device';

export interface VolumeRecord {
  /** Export name; see validateVolumeName. */
  name: string;
  /** Size in bytes (a multiple of 512). */
  size: number;
  /** Absolute path of the raw image (or block device). */
  path: string;
  kind: VolumeKind;
  readOnly: boolean;
  /**
   * True if the image was supplied by the user (POST path): the daemon never
   * deletes it. False for images it created under <data-dir>/volumes/NAME/.
   */
  external: boolean;
  /** ISO 8601 creation time. */
  created: string;
  description: string;
  /** Present for a protected (journaled) volume. */
  protection?: VolumeProtection;
  /** Access control: canonical allow entries (src/access/acl.ts); absent = everyone. */
  allow?: string[];
}

export interface VolumeProtection {
  /** Consistency group name; a volume created without --group is a group of its own name. */
  group: string;
  groupId: number;
  /** Volume id within the group, as recorded in the AILFC records. */
  volumeId: number;
}

/** A consistency group: volumes sharing one sequence and one set of seal boundaries. */
export interface GroupRecord {
  name: string;
  groupId: number;
  /** State-map region size, bytes. */
  regionSize: number;
  /** Before-image and index block size, bytes. */
  blockSize: number;
  /** Seal the active AILFC at this size (bytes) ... */
  sealBytes: number;
  /** ... or this long after its first record (ms). */
  sealAgeMs: number;
  nextVolumeId: number;
  created: string;
}

export type GroupSettings = Pick<GroupRecord, 'regionSize' | 'blockSize' | 'sealBytes' | 'sealAgeMs'>;

export const DEFAULT_GROUP_SETTINGS: GroupSettings = {
  regionSize: 64 * 1024,
  blockSize: 4096,
  sealBytes: 64 * 1024 * 1024,
  sealAgeMs: 2000,
};

export const VOLUME_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** Returns null if `name` is a valid volume name, else why not. */
export function validateVolumeName(name: unknown): string | null {
  if (name === undefined || name === null || name === '') return 'volume name is required';
  if (typeof name !== 'string') return 'volume name must be a string';
  if (name.length > 64) return `invalid volume name "${name.slice(0, 70)}...": at most 64 characters`;
  if (!VOLUME_NAME_RE.test(name)) {
    return `invalid volume name ${JSON.stringify(name)}: use only letters, digits, '.', '_' and '-'`;
  }
  if (name.startsWith('.')) return `invalid volume name "${name}": must not start with '.'`;
  return null;
}

export class DuplicateVolumeError extends Error {
  constructor(readonly volumeName: string) {
    super(`volume "${volumeName}" already exists`);
    this.name = 'DuplicateVolumeError';
  }
}

export class Catalog {
  private closed = false;

  private constructor(
    private readonly root: RootDatabase,
    private readonly volumes: Database<VolumeRecord, string>,
    private readonly groups: Database<GroupRecord, string>,
    private readonly meta: Database<unknown, string>,
    readonly path: string,
  ) {}

  /** Opens (creating if needed) the catalog in <dataDir>/catalog. */
  static open(dataDir: string): Catalog {
    const dbPath = path.join(dataDir, 'catalog');
    const root = open({ path: dbPath, maxDbs: 8 });
    const volumes = root.openDB<VolumeRecord, string>('volumes', {});
    const groups = root.openDB<GroupRecord, string>('groups', {});
    const meta = root.openDB<unknown, string>('meta', {});
    try {
      stampStore(meta, 'the volume catalog', dbPath, STORE_FORMATS.catalog);
    } catch (err) {
      void root.close();
      throw err;
    }
    const c = new Catalog(root, volumes, groups, meta, dbPath);
    c.relocate(dataDir);
    return c;
  }

  /**
   * A data directory moved (restored elsewhere from a backup, or unpacked
   * as a test fixture): images the daemon created are recorded by absolute
   * path. One that is missing where it was recorded but present at its
   * place in this directory is recorded there again.
   */
  private relocate(dataDir: string): void {
    for (const { value: v } of this.volumes.getRange({})) {
      if (v.external || fs.existsSync(v.path)) continue;
      const here = path.join(dataDir, 'volumes', v.name, path.basename(v.path));
      if (here !== v.path && fs.existsSync(here)) this.volumes.putSync(v.name, { ...v, path: here });
    }
  }

  /** All volumes, sorted by name. */
  list(): VolumeRecord[] {
    const out: VolumeRecord[] = [];
    for (const { value } of this.volumes.getRange({})) out.push(value);
    out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return out;
  }

  count(): number {
    return this.volumes.getCount();
  }

  get(name: string): VolumeRecord | undefined {
    return this.volumes.get(name);
  }

  /** Adds a volume; throws DuplicateVolumeError if the name is taken. */
  async add(record: VolumeRecord): Promise<void> {
    const added = await this.volumes.transaction(() => {
      if (this.volumes.get(record.name) !== undefined) return false;
      this.volumes.putSync(record.name, record);
      return true;
    });
    if (!added) throw new DuplicateVolumeError(record.name);
  }

  /**
   * Adds a protected volume to a consistency group (created with `settings`
   * if new) and assigns its volume id, in one transaction. Returns the
   * stored record (with `protection` filled in) and the group.
   */
  async addProtected(
    record: VolumeRecord,
    groupName: string,
    settings: GroupSettings,
  ): Promise<{ record: VolumeRecord; group: GroupRecord }> {
    const out = await this.volumes.transaction(() => {
      if (this.volumes.get(record.name) !== undefined) return null;
      let group = this.groups.get(groupName);
      if (!group) {
        const groupId = (this.meta.get('nextGroupId') as number | undefined) ?? 1;
        this.meta.putSync('nextGroupId', groupId + 1);
        group = { name: groupName, groupId, ...settings, nextVolumeId: 1, created: record.created };
      }
      const volumeId = group.nextVolumeId;
      group = { ...group, nextVolumeId: volumeId + 1 };
      const stored: VolumeRecord = { ...record, protection: { group: groupName, groupId: group.groupId, volumeId } };
      this.groups.putSync(groupName, group);
      this.volumes.putSync(record.name, stored);
      return { record: stored, group };
    });
    if (!out) throw new DuplicateVolumeError(record.name);
    return out;
  }

  getGroup(name: string): GroupRecord | undefined {
    return this.groups.get(name);
  }

  listGroups(): GroupRecord[] {
    const out: GroupRecord[] = [];
    for (const { value } of this.groups.getRange({})) out.push(value);
    return out;
  }

  /** Volumes of a group, by volume id. */
  groupVolumes(name: string): VolumeRecord[] {
    return this.list()
      .filter((v) => v.protection?.group === name)
      .sort((a, b) => a.protection!.volumeId - b.protection!.volumeId);
  }

  async removeGroup(name: string): Promise<void> {
    await this.groups.remove(name);
  }

  /** Removes a volume; resolves false if there was none by that name. */
  async remove(name: string): Promise<boolean> {
    return this.volumes.transaction(() => {
      if (this.volumes.get(name) === undefined) return false;
      this.volumes.removeSync(name);
      return true;
    });
  }

  getMeta<T>(key: string): T | undefined {
    return this.meta.get(key) as T | undefined;
  }

  async setMeta(key: string, value: unknown): Promise<void> {
    await this.meta.put(key, value);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.root.close();
  }
}
