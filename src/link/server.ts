/**
 * The manager side of the link (`rewind serve --role manager`): accepts
 * intercepts over TCP (optionally or necessarily TLS), authenticates them,
 * receives sealed AILFCs into a spool and feeds them to the group's
 * BackupManager; acknowledges each commit.
 *
 *   DATA_DIR/groups/G/link-group.json    the group as the intercept described it
 *   DATA_DIR/groups/G/spool/ailfc-N.lfc.part   a container being received
 *   DATA_DIR/groups/G/spool/ailfc-N.lfc        received, verified, not yet committed
 *   DATA_DIR/groups/G/spool/tags.json          super-transaction tags received
 *   DATA_DIR/groups/G/manager/                 the BackupManager (replicas, history, index)
 *
 * A container is written to .part, fdatasync'ed, verified as a whole
 * (every record CRC and the footer's body CRC, which must match the footer
 * the intercept announced), renamed (dir fsync'ed), and only then
 * submitted: a partial or damaged transfer is never applied. A .part whose
 * size and body CRC match a new PUT is resumed from its end. The manager
 * applies strictly in containerId order whatever order they arrive in, and
 * answers a resend of a committed container from its catalog.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { BackupManager } from '../manager/backup-manager';
import { type TransactionRecord } from '../manager/types';
import { checkTlsSettings, upgradeToTls, type TlsSettings } from '../tls';
import { UserError } from '../util/errors';
import type { JournalPosition, JournalRecordInfo } from '../journal/group-journal';
import {
  HANDSHAKE_TIMEOUT_MS,
  LinkProtocolError,
  MsgType,
  type GroupMsg,
  type InterceptStatusMsg,
  type PositionMsg,
  type PositionReqMsg,
  type SuperTag,
} from './protocol';
import { type Logger } from '../util/logger';
import { writeFileAtomic } from '../util/atomic-file';
import { JSON_FORMATS, jsonFormat } from '../util/format-version';
import { hashFile, HASH_CHUNK } from '../util/hash';
import { Conn } from './conn';
import type { ConnHost, GroupHost, LinkConn, LinkServerOptions } from './group-host';

export type { LinkServerOptions } from './group-host';

export interface ManagerGroupStatus {
  group: string;
  groupId: number;
  link: {
    state: 'up' | 'down';
    peer: string | null;
    since: string;
    bytesReceived: number;
    containersReceived: number;
    refused: number;
    lastError: string | null;
  };
  appliedSeq: number;
  appliedContainer: number;
  transactions: number;
  /** Containers received (or being received) not yet committed. */
  queued: number;
  /** Seconds between the intercept's last write and the last applied one (both intercept clock): the recovery point achieved. */
  lagSeconds: number;
  lagWrites: number;
  intercept: InterceptStatusMsg | null;
  blocked: { n: number; error: string } | null;
}

const GROUP_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class LinkServer implements ConnHost {
  private readonly groups = new Map<string, GroupHost>();
  private readonly opening = new Map<string, Promise<GroupHost>>();
  private server: net.Server | null = null;
  private readonly conns = new Set<LinkConn>();
  private refusedTotal = 0;
  private closed = false;

  constructor(readonly opts: LinkServerOptions) {
    if (!opts.secret && !(opts.tls.mode === 'require' && opts.tls.verifyClient)) {
      throw new Error(
        'the manager link needs a shared secret (--link-secret-file) or required TLS with client certificates (--link-tls require --link-tls-verify-client)',
      );
    }
  }

  get log(): Logger {
    return this.opts.logger;
  }

  /** Rotated certificates, for intercepts that connect from now on (the mode stays). */
  setTls(settings: TlsSettings): void {
    if (settings.mode !== this.opts.tls.mode) throw new Error('the link TLS mode cannot change without a restart');
    checkTlsSettings(settings);
    this.opts.tls = settings;
  }

  /** Opens every group this manager already holds (history stays available while no intercept is connected). */
  async start(): Promise<void> {
    const gdir = path.join(this.opts.dataDir, 'groups');
    await fs.promises.mkdir(gdir, { recursive: true, mode: 0o700 });
    for (const name of await fs.promises.readdir(gdir)) {
      const metaFile = path.join(gdir, name, 'link-group.json');
      let meta: GroupMsg & { format?: unknown };
      try {
        meta = JSON.parse(await fs.promises.readFile(metaFile, 'utf8')) as GroupMsg & { format?: unknown };
      } catch {
        continue;
      }
      jsonFormat(meta, 'the group description', metaFile, JSON_FORMATS.linkGroup);
      delete meta.format;
      await this.openGroup(meta);
    }
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = net.createServer((s) => this.accept(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address() as net.AddressInfo;
    this.log.info(
      { host: a.address, port: a.port, tls: this.opts.tls.mode, auth: this.opts.secret ? 'secret' : 'certificate' },
      'manager link listening',
    );
    return { host: a.address, port: a.port };
  }

  private accept(raw: net.Socket): void {
    const peer = `${raw.remoteAddress}:${raw.remotePort}`;
    raw.setNoDelay(true);
    raw.on('error', () => undefined);
    const mode = this.opts.tls.mode;
    const refuse = (why: string) => {
      this.refusedTotal++;
      this.log.warn({ peer, reason: why }, 'link peer refused');
      raw.destroy();
    };
    if (mode === 'off') {
      new Conn(this, raw, peer, false);
      return;
    }
    const upgrade = () =>
      upgradeToTls(raw, this.opts.tls, HANDSHAKE_TIMEOUT_MS).then(
        (u) => new Conn(this, u.socket, peer, true, u.certSubject ?? null),
        (err: Error) => refuse(err.message),
      );
    if (mode === 'require') {
      // A plaintext peer's first bytes are not a TLS ClientHello: the handshake fails and it is refused.
      void upgrade();
      return;
    }
    // "on": TLS if the first byte is a TLS handshake record (0x16), plaintext otherwise.
    const timer = setTimeout(() => refuse('no data before the handshake timeout'), HANDSHAKE_TIMEOUT_MS);
    raw.once('data', (chunk: Buffer) => {
      clearTimeout(timer);
      raw.pause();
      raw.unshift(chunk);
      if (chunk[0] === 0x16) void upgrade();
      else new Conn(this, raw, peer, false);
    });
  }

  private readonly upListeners: Array<(g: GroupHost) => void> = [];
  private readonly statusListeners: Array<(g: GroupHost) => void> = [];

  /** Called when a group's intercept connects (e.g. to resume restores it interrupted). */
  onConnected(cb: (g: GroupHost) => void): void {
    this.upListeners.push(cb);
  }

  /** Called on each status report of an intercept. */
  onStatus(cb: (g: GroupHost) => void): void {
    this.statusListeners.push(cb);
  }

  connected(g: GroupHost): void {
    for (const cb of this.upListeners) cb(g);
  }

  statusReceived(g: GroupHost): void {
    for (const cb of this.statusListeners) cb(g);
  }

  noteRefused(peer: string, why: string, g?: GroupHost): void {
    this.refusedTotal++;
    if (g) g.refused++;
    this.log.warn({ peer, reason: why }, 'link peer refused');
  }

  register(c: LinkConn): void {
    this.conns.add(c);
  }

  unregister(c: LinkConn): void {
    this.conns.delete(c);
    for (const g of this.groups.values()) {
      if (g.conn === c) {
        g.conn = null;
        g.since = Date.now();
        for (const w of g.waiters.values()) w.reject(new Error('the intercept disconnected'));
        g.waiters.clear();
        this.log.warn({ group: g.name }, 'intercept link down');
      }
    }
  }

  /** Opens (creating) the group's BackupManager and records its description. */
  async openGroup(meta: GroupMsg): Promise<GroupHost> {
    if (!GROUP_NAME_RE.test(meta.group)) throw new LinkProtocolError(`bad group name ${JSON.stringify(meta.group)}`);
    const existing = this.groups.get(meta.group);
    if (existing) {
      if (existing.groupId !== meta.groupId)
        throw new LinkProtocolError(`group ${meta.group} has id ${existing.groupId} here, not ${meta.groupId}`);
      for (const v of meta.volumes) await existing.manager.addVolume(v);
      if (JSON.stringify(existing.meta) !== JSON.stringify(meta)) {
        existing.meta = meta;
        await writeFileAtomic(path.join(existing.dir, 'link-group.json'), groupFile(meta));
      }
      return existing;
    }
    let p = this.opening.get(meta.group);
    if (!p) {
      p = this.doOpenGroup(meta).finally(() => this.opening.delete(meta.group));
      this.opening.set(meta.group, p);
    }
    return p;
  }

  private async doOpenGroup(meta: GroupMsg): Promise<GroupHost> {
    const dir = path.join(this.opts.dataDir, 'groups', meta.group);
    const spool = path.join(dir, 'spool');
    await fs.promises.mkdir(spool, { recursive: true, mode: 0o700 });
    await writeFileAtomic(path.join(dir, 'link-group.json'), groupFile(meta));
    const tags = await readTags(path.join(spool, 'tags.json'));
    const manager = await BackupManager.open(path.join(dir, 'manager'), {
      groupId: meta.groupId,
      blockSize: meta.blockSize,
      volumes: meta.volumes,
      logger: this.log,
      superTagOf: (n) => tags.get(n),
    });
    const g: GroupHost = {
      name: meta.group,
      groupId: meta.groupId,
      meta,
      dir,
      spool,
      manager,
      tags,
      conn: null,
      since: Date.now(),
      bytesReceived: 0,
      containersReceived: 0,
      refused: 0,
      lastError: null,
      intercept: null,
      inSpool: new Set(),
      waiters: new Map(),
    };
    this.groups.set(meta.group, g);
    this.log.info(
      { group: meta.group, groupId: meta.groupId, volumes: meta.volumes.length, applied: manager.status().lastContainer },
      'group opened',
    );
    return g;
  }

  async saveTag(g: GroupHost, n: number, tag: SuperTag): Promise<void> {
    const cur = g.tags.get(n);
    if (cur && cur.id === tag.id && cur.last === tag.last && cur.fromSeq === tag.fromSeq && cur.fromTime === tag.fromTime) return;
    g.tags.set(n, tag);
    // Tags of committed transactions live in their records: keep only the rest.
    const applied = g.manager.status().lastContainer;
    for (const k of g.tags.keys()) if (k <= applied && k !== n) g.tags.delete(k);
    await writeFileAtomic(
      path.join(g.spool, 'tags.json'),
      JSON.stringify({ format: JSON_FORMATS.spool, tags: Object.fromEntries(g.tags) }),
    );
  }

  // --- queries for the control API --------------------------------------------

  /** Every group's backup manager (the scrub's groups). */
  managers(): Array<{ group: string; manager: BackupManager }> {
    return [...this.groups.values()].map((g) => ({ group: g.name, manager: g.manager }));
  }

  groupNames(): string[] {
    return [...this.groups.keys()].sort();
  }

  /** The group and volume id of a volume name (or of a group name: its first volume). */
  find(name: string): { g: GroupHost; volumeId: number; size: number; volume: string } {
    for (const g of this.groups.values()) {
      const v = g.meta.volumes.find((x) => x.name === name);
      if (v) return { g, volumeId: v.volumeId, size: v.size, volume: v.name };
    }
    const g = this.groups.get(name);
    if (g && g.meta.volumes.length) {
      const v = g.meta.volumes[0]!;
      return { g, volumeId: v.volumeId, size: v.size, volume: v.name };
    }
    throw new UserError('not-found', `no replicated volume or group named "${name}" on this manager`);
  }

  volumes(): Array<{ name: string; group: string; volumeId: number; size: number; replica: string }> {
    const out: Array<{ name: string; group: string; volumeId: number; size: number; replica: string }> = [];
    for (const g of this.groups.values()) {
      for (const v of g.meta.volumes)
        out.push({ name: v.name, group: g.name, volumeId: v.volumeId, size: v.size, replica: g.manager.replicaPath(v.volumeId) });
    }
    return out;
  }

  groupStatus(g: GroupHost): ManagerGroupStatus {
    const ms = g.manager.status();
    const ic = g.intercept;
    const lagWrites = ic ? Math.max(0, ic.lastAppendedSeq - ms.lastSeq) : 0;
    return {
      group: g.name,
      groupId: g.groupId,
      link: {
        state: g.conn ? 'up' : 'down',
        peer: g.conn?.peer ?? null,
        since: new Date(g.since).toISOString(),
        bytesReceived: g.bytesReceived,
        containersReceived: g.containersReceived,
        refused: g.refused,
        lastError: g.lastError,
      },
      appliedSeq: ms.lastSeq,
      appliedContainer: ms.lastContainer,
      transactions: ms.transactions,
      queued: ms.queued + (ms.applying !== null ? 1 : 0) + (g.conn ? g.conn.transferCount() : 0),
      lagSeconds: lagWrites > 0 && ic ? Math.max(0, (ic.lastAppendedTime - (ms.lastTime || ic.lastAppendedTime)) / 1000) : 0,
      lagWrites,
      intercept: ic,
      blocked: ms.blocked,
    };
  }

  status(): { refused: number; groups: ManagerGroupStatus[] } {
    return { refused: this.refusedTotal, groups: [...this.groups.values()].map((g) => this.groupStatus(g)) };
  }

  /** Ask the intercept of g to seal and wait for its commits (time travel at "latest"). */
  async catchUp(g: GroupHost, timeoutMs = 60_000): Promise<void> {
    const c = g.conn;
    if (!c)
      throw new UserError(
        'conflict',
        `the intercept of group ${g.name} is not connected: cannot catch up (points already applied still work)`,
      );
    await c.request(g, MsgType.CATCHUP_REQ, {}, MsgType.CATCHUP_DONE, timeoutMs);
  }

  /**
   * The intercept's journal position as of now (a round trip: it answers
   * after every frame sent before, with the writes it has acknowledged), and
   * with `find` the uncommitted write a seq or time names.
   */
  async position(
    g: GroupHost,
    find?: PositionReqMsg['find'],
    timeoutMs = 10_000,
  ): Promise<{ position: JournalPosition; found: JournalRecordInfo | null }> {
    const c = g.conn;
    if (!c) throw new UserError('conflict', `the intercept of group ${g.name} is not connected: cannot ask it for its current write`);
    const r = (await c.request(g, MsgType.POSITION_REQ, find ? { find } : {}, MsgType.POSITION, timeoutMs)) as PositionMsg;
    if (r.error || !r.position)
      throw new UserError('conflict', `the intercept of group ${g.name} could not say where its journal stands: ${r.error ?? 'no answer'}`);
    return { position: r.position, found: r.found ?? null };
  }

  /**
   * Compare the replica of a volume with production: the intercept quiesces
   * the volume, catches up, and sends SHA-256 checksums of production per
   * 1 MiB while it stays quiesced; the manager hashes its replica meanwhile.
   */
  async verify(name: string, opts: { full?: boolean } = {}): Promise<ManagerVerifyReport> {
    const { g, volumeId, size, volume } = this.find(name);
    const c = g.conn;
    if (!c) throw new UserError('conflict', `the intercept of group ${g.name} is not connected: verify needs production checksums from it`);
    const id = `verify-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    let replicaDone: Promise<{ sha: string; hashes: Buffer }> | null = null;
    const result = (await c.request(g, MsgType.VERIFY_REQ, { id, volumeId }, MsgType.VERIFY_RESULT, 600_000, id, (f) => {
      if (f.type === MsgType.VERIFY_READY && !replicaDone) {
        replicaDone = hashFile(g.manager.replicaPath(volumeId), size);
        replicaDone.catch(() => undefined);
      }
    })) as { id: string; sha256: string; chunk: number; hashes: string; appliedSeq: number; error?: string };
    if (result.error) throw new UserError('conflict', `the intercept could not verify ${volume}: ${result.error}`);
    if (!replicaDone) replicaDone = hashFile(g.manager.replicaPath(volumeId), size);
    const rep = await (replicaDone as Promise<{ sha: string; hashes: Buffer }>);
    const prod = Buffer.from(result.hashes, 'base64');
    let first: number | null = null;
    for (let i = 0; i * 32 < Math.max(prod.length, rep.hashes.length); i++) {
      if (!prod.subarray(i * 32, i * 32 + 32).equals(rep.hashes.subarray(i * 32, i * 32 + 32))) {
        first = i * HASH_CHUNK;
        break;
      }
    }
    const containers = await g.manager.verifyHistory(opts);
    const equal = first === null && result.sha256 === rep.sha;
    return {
      volume,
      equal,
      productionSha256: result.sha256,
      replicaSha256: rep.sha,
      firstDifference: first,
      firstDifferenceGranularity: HASH_CHUNK,
      bytesCompared: size,
      appliedSeq: g.manager.status().lastSeq,
      containers,
      ok: equal && containers.every((x) => x.ok),
      method: 'production SHA-256 per 1 MiB computed by the intercept (quiesced, caught up), replica hashed by the manager',
    };
  }

  /** Stop taking connections and containers (the first step of a shutdown). */
  async stopLink(): Promise<void> {
    this.closed = true;
    const s = this.server;
    this.server = null;
    for (const c of [...this.conns]) c.destroy('manager shutting down');
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  async close(): Promise<void> {
    await this.stopLink();
    for (const g of this.groups.values()) await g.manager.close().catch(() => undefined);
    this.groups.clear();
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

export interface ManagerVerifyReport {
  volume: string;
  equal: boolean;
  productionSha256: string;
  replicaSha256: string;
  firstDifference: number | null;
  firstDifferenceGranularity: number;
  bytesCompared: number;
  appliedSeq: number;
  containers: Array<{ n: number; kind: string; ok: boolean; offset?: number; problem?: string }>;
  ok: boolean;
  method: string;
}

export type { TransactionRecord };

/** link-group.json: the group as described, with its format version. */
function groupFile(meta: GroupMsg): string {
  return JSON.stringify({ format: JSON_FORMATS.linkGroup, ...meta });
}

/** Super-transaction tags of containers not committed yet (version 1 files were the bare map). */
async function readTags(file: string): Promise<Map<number, SuperTag>> {
  const tags = new Map<number, SuperTag>();
  let raw: { format?: unknown; tags?: Record<string, SuperTag> } & Record<string, unknown>;
  try {
    raw = JSON.parse(await fs.promises.readFile(file, 'utf8')) as typeof raw;
  } catch {
    return tags; // none yet
  }
  jsonFormat(raw, 'the super-transaction tags', file, JSON_FORMATS.spool);
  const map = raw.format !== undefined ? (raw.tags ?? {}) : (raw as Record<string, SuperTag>);
  for (const [k, t] of Object.entries(map)) if (Number.isSafeInteger(Number(k))) tags.set(Number(k), t);
  return tags;
}
