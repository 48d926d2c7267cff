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
import { verifyContainer } from '../lfc';
import { containerFileName, type Footer } from '../lfc';
import { BackupManager } from '../manager/backup-manager';
import { CorruptContainerError, type CommitInfo, type TransactionRecord } from '../manager/types';
import { upgradeToTls, type TlsSettings } from '../tls';
import { fsyncDir } from '../util/fsync-dir';
import { UserError } from '../util/errors';
import type { JournalPosition, JournalRecordInfo } from '../journal/group-journal';
import {
  DEAD_AFTER_MS,
  blockDigests,
  FrameReader,
  HANDSHAKE_TIMEOUT_MS,
  LINK_MAGIC,
  LINK_VERSION,
  LinkProtocolError,
  MsgType,
  REPLICA_HASH_MAX_RANGE,
  type ReplicaHashesMsg,
  type ReplicaHashesReq,
  PING_INTERVAL_MS,
  clientMac,
  encodeJson,
  isNonce,
  macEquals,
  nonce,
  parseData,
  parseJson,
  serverMac,
  type Frame,
  type GroupMsg,
  type InterceptStatusMsg,
  type NackMsg,
  type PositionMsg,
  type PositionReqMsg,
  type PutMsg,
  type SuperTag,
} from './protocol';
import { type Logger } from '../util/logger';
import { writeFileAtomic } from '../util/atomic-file';
import { hashFile, HASH_CHUNK } from '../util/hash';

export interface LinkServerOptions {
  dataDir: string;
  /** Shared secret; null when only TLS client certificates authenticate. */
  secret: Buffer | null;
  tls: TlsSettings;
  logger: Logger;
}

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

interface Transfer {
  id: number;
  msg: PutMsg;
  part: string;
  fh: fs.promises.FileHandle;
  next: number;
  chain: Promise<void>;
  queuedBytes: number;
  failed: string | null;
}

interface GroupHost {
  name: string;
  groupId: number;
  meta: GroupMsg;
  dir: string;
  spool: string;
  manager: BackupManager;
  tags: Map<number, SuperTag>;
  conn: Conn | null;
  since: number;
  bytesReceived: number;
  containersReceived: number;
  refused: number;
  lastError: string | null;
  intercept: InterceptStatusMsg | null;
  inSpool: Set<number>;
  waiters: Map<string, { resolve(v: unknown): void; reject(e: Error): void; onFrame?: (f: Frame) => void }>;
}

const GROUP_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class LinkServer {
  private readonly groups = new Map<string, GroupHost>();
  private readonly opening = new Map<string, Promise<GroupHost>>();
  private server: net.Server | null = null;
  private readonly conns = new Set<Conn>();
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

  /** Opens every group this manager already holds (history stays available while no intercept is connected). */
  async start(): Promise<void> {
    const gdir = path.join(this.opts.dataDir, 'groups');
    await fs.promises.mkdir(gdir, { recursive: true, mode: 0o700 });
    for (const name of await fs.promises.readdir(gdir)) {
      const metaFile = path.join(gdir, name, 'link-group.json');
      let meta: GroupMsg;
      try {
        meta = JSON.parse(await fs.promises.readFile(metaFile, 'utf8')) as GroupMsg;
      } catch {
        continue;
      }
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

  noteRefused(peer: string, why: string, g?: GroupHost): void {
    this.refusedTotal++;
    if (g) g.refused++;
    this.log.warn({ peer, reason: why }, 'link peer refused');
  }

  register(c: Conn): void {
    this.conns.add(c);
  }

  unregister(c: Conn): void {
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
        await writeFileAtomic(path.join(existing.dir, 'link-group.json'), JSON.stringify(meta));
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
    await writeFileAtomic(path.join(dir, 'link-group.json'), JSON.stringify(meta));
    const tags = new Map<number, SuperTag>();
    try {
      const raw = JSON.parse(await fs.promises.readFile(path.join(spool, 'tags.json'), 'utf8')) as Record<string, SuperTag>;
      for (const [k, v] of Object.entries(raw)) tags.set(Number(k), v);
    } catch {
      /* none yet */
    }
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
    await writeFileAtomic(path.join(g.spool, 'tags.json'), JSON.stringify(Object.fromEntries(g.tags)));
  }

  // --- queries for the control API --------------------------------------------

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

/** One intercept connection. */
class Conn {
  private readonly reader = new FrameReader();
  private state: 'hello' | 'auth' | 'group' | 'ready' | 'closed' = 'hello';
  private readonly serverNonce = nonce();
  private group: GroupHost | null = null;
  private readonly transfers = new Map<number, Transfer>();
  private lastHeard = Date.now();
  private readonly timer: NodeJS.Timeout;
  private paused = false;

  constructor(
    private readonly srv: LinkServer,
    private readonly sock: net.Socket,
    readonly peer: string,
    private readonly tlsUp: boolean,
    private readonly certSubject: string | null = null,
  ) {
    srv.register(this);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('close', () => this.onClose());
    sock.on('error', (e) => this.srv.log.debug({ peer, err: e.message }, 'link socket error'));
    sock.resume();
    this.send(MsgType.HELLO, { magic: LINK_MAGIC, version: LINK_VERSION, nonce: this.serverNonce });
    const started = Date.now();
    this.timer = setInterval(() => {
      if (this.state !== 'ready' && Date.now() - started > HANDSHAKE_TIMEOUT_MS) return this.refuse('handshake timed out');
      if (this.state === 'ready') {
        if (Date.now() - this.lastHeard > DEAD_AFTER_MS) return this.destroy(`no frame for ${DEAD_AFTER_MS} ms`);
        this.send(MsgType.PING, { t: Date.now() });
      }
    }, PING_INTERVAL_MS);
    this.timer.unref?.();
  }

  transferCount(): number {
    return this.transfers.size;
  }

  send(type: MsgType, body: unknown): void {
    if (this.state === 'closed') return;
    this.sock.write(encodeJson(type, body));
  }

  destroy(why: string): void {
    if (this.state === 'closed') return;
    this.srv.log.info({ peer: this.peer, group: this.group?.name, reason: why }, 'link connection closed');
    this.sock.destroy();
    this.onClose();
  }

  private refuse(why: string): void {
    if (this.state === 'closed') return;
    this.srv.noteRefused(this.peer, why, this.group ?? undefined);
    if (this.group) this.group.lastError = why;
    try {
      this.sock.write(encodeJson(MsgType.ERROR, { message: why }));
    } catch {
      /* gone */
    }
    this.sock.end();
    setTimeout(() => this.sock.destroy(), 200).unref?.();
    this.onClose();
  }

  private onClose(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearInterval(this.timer);
    for (const t of this.transfers.values()) void t.chain.then(() => t.fh.close()).catch(() => undefined);
    this.transfers.clear();
    this.srv.unregister(this);
  }

  private onData(d: Buffer): void {
    if (this.state === 'closed') return;
    this.lastHeard = Date.now();
    let frames: Frame[];
    try {
      frames = this.reader.push(d);
    } catch (err) {
      return this.refuse((err as Error).message);
    }
    for (const f of frames) {
      if ((this.state as string) === 'closed') return;
      try {
        this.handle(f);
      } catch (err) {
        return this.refuse(err instanceof LinkProtocolError ? err.message : `error: ${(err as Error).message}`);
      }
    }
  }

  private handle(f: Frame): void {
    switch (this.state) {
      case 'hello': {
        if (f.type !== MsgType.AUTH) throw new LinkProtocolError(`expected AUTH, got frame type ${f.type}`);
        const m = parseJson<{ nonce?: unknown; mac?: unknown; magic?: unknown; version?: unknown }>(f);
        if (m.magic !== LINK_MAGIC || m.version !== LINK_VERSION)
          throw new LinkProtocolError('not a rewind link peer (bad magic or version)');
        if (!isNonce(m.nonce)) throw new LinkProtocolError('bad client nonce');
        const secret = this.srv.opts.secret;
        if (secret) {
          if (!macEquals(m.mac, clientMac(secret, this.serverNonce, m.nonce)))
            throw new LinkProtocolError('authentication failed (wrong shared secret)');
          this.send(MsgType.AUTH_OK, { mac: serverMac(secret, m.nonce, this.serverNonce) });
        } else {
          if (!this.tlsUp || !this.certSubject) throw new LinkProtocolError('authentication failed (no verified client certificate)');
          this.send(MsgType.AUTH_OK, { mac: null });
        }
        this.state = 'group';
        return;
      }
      case 'group': {
        if (f.type !== MsgType.GROUP) throw new LinkProtocolError(`expected GROUP, got frame type ${f.type}`);
        const m = parseJson<GroupMsg>(f);
        if (typeof m.group !== 'string' || !Number.isInteger(m.groupId) || !Number.isInteger(m.blockSize) || !Array.isArray(m.volumes)) {
          throw new LinkProtocolError('malformed GROUP');
        }
        for (const v of m.volumes) {
          if (!v || !Number.isInteger(v.volumeId) || typeof v.name !== 'string' || !Number.isSafeInteger(v.size))
            throw new LinkProtocolError('malformed volume in GROUP');
        }
        this.state = 'auth'; // waiting for the group to open
        this.srv.openGroup(m).then(
          (g) => {
            if (this.state === 'closed') return;
            if (g.conn && g.conn !== this) g.conn.destroy('a newer connection of the same group took over');
            g.conn = this;
            g.since = Date.now();
            g.lastError = null;
            this.group = g;
            this.state = 'ready';
            const st = g.manager.status();
            this.send(MsgType.GROUP_OK, { committedContainer: st.lastContainer, committedSeq: st.lastSeq, committedTime: st.lastTime });
            this.srv.log.info({ group: g.name, peer: this.peer, tls: this.tlsUp, applied: st.lastContainer }, 'intercept link up');
          },
          (err: Error) => this.refuse(`cannot open group: ${err.message}`),
        );
        return;
      }
      case 'auth':
        throw new LinkProtocolError(`unexpected frame type ${f.type} before GROUP_OK`);
      case 'ready':
        return this.handleReady(f);
    }
  }

  private handleReady(f: Frame): void {
    const g = this.group!;
    switch (f.type) {
      case MsgType.PING:
        this.send(MsgType.PONG, {});
        return;
      case MsgType.PONG:
        return;
      case MsgType.STATUS:
        g.intercept = parseJson<InterceptStatusMsg>(f);
        return;
      case MsgType.PUT:
        void this.onPut(parseJson<PutMsg>(f)).catch((err) => this.destroy(`PUT failed: ${(err as Error).message}`));
        return;
      case MsgType.DATA:
        return this.onDataFrame(f);
      case MsgType.END: {
        const m = parseJson<{ containerId: number }>(f);
        void this.onEnd(m.containerId).catch((err) => this.destroy(`END failed: ${(err as Error).message}`));
        return;
      }
      case MsgType.REPLICA_HASHES_REQ: {
        const m = parseJson<ReplicaHashesReq>(f);
        void this.onReplicaHashes(g, m);
        return;
      }
      case MsgType.VERIFY_READY:
      case MsgType.VERIFY_RESULT:
      case MsgType.CATCHUP_DONE:
      case MsgType.POSITION: {
        const m = parseJson<{ id?: string }>(f);
        const w = g.waiters.get(String(m.id));
        if (!w) return;
        w.onFrame?.(f);
        if (f.type === MsgType.VERIFY_READY) return;
        g.waiters.delete(String(m.id));
        w.resolve(m);
        return;
      }
      case MsgType.ERROR:
        g.lastError = parseJson<{ message?: string }>(f).message ?? 'error';
        this.srv.log.warn({ group: g.name, err: g.lastError }, 'intercept reported an error');
        return;
      default:
        throw new LinkProtocolError(`unexpected frame type ${f.type}`);
    }
  }

  /** The intercept recovers from a crash: digests of the replica's blocks over a range it marks dirty. */
  private async onReplicaHashes(g: GroupHost, m: ReplicaHashesReq): Promise<void> {
    const answer = (body: ReplicaHashesMsg) => this.send(MsgType.REPLICA_HASHES, body);
    const id = String(m.id);
    const vol = g.meta.volumes.find((v) => v.volumeId === m.volumeId);
    const ints = [m.offset, m.length, m.blockSize].every((x) => Number.isSafeInteger(x) && x >= 0);
    if (!vol || !ints || m.blockSize < 512 || m.length > REPLICA_HASH_MAX_RANGE || m.offset + m.length > vol.size) {
      return answer({ id, error: 'bad replica hash request' });
    }
    try {
      const buf = Buffer.alloc(m.length);
      const fh = await fs.promises.open(g.manager.replicaPath(m.volumeId), 'r');
      try {
        let done = 0;
        while (done < m.length) {
          const { bytesRead } = await fh.read(buf, done, m.length - done, m.offset + done);
          if (bytesRead === 0) break; // past the end of a short replica: zeroes
          done += bytesRead;
        }
      } finally {
        await fh.close();
      }
      answer({ id, hashes: blockDigests(buf, m.blockSize).toString('base64') });
    } catch (err) {
      answer({ id, error: (err as Error).message });
    }
  }

  /** Sends `type` and waits for the answer frame carrying the same id. */
  request(
    g: GroupHost,
    type: MsgType,
    body: Record<string, unknown>,
    _answer: MsgType,
    timeoutMs: number,
    id?: string,
    onFrame?: (f: Frame) => void,
  ): Promise<unknown> {
    const key = id ?? `req-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        g.waiters.delete(key);
        reject(new UserError('conflict', `the intercept did not answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      const w = {
        onFrame,
        resolve: (v: unknown) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      g.waiters.set(key, w);
      this.send(type, { ...body, id: key });
    });
  }

  private nack(id: number, message: string, resend: boolean): void {
    const g = this.group!;
    g.lastError = `container ${id}: ${message}`;
    this.srv.log.warn({ group: g.name, container: id, err: message, resend }, 'container transfer refused');
    const m: NackMsg = { containerId: id, message, resend };
    this.send(MsgType.NACK, m);
  }

  private async onPut(m: PutMsg): Promise<void> {
    const g = this.group!;
    const id = m.containerId;
    if (
      !Number.isSafeInteger(id) ||
      id < 1 ||
      !Number.isSafeInteger(m.size) ||
      m.size < 128 ||
      !m.footer ||
      typeof m.footer.bodyCrc !== 'number'
    ) {
      throw new LinkProtocolError('malformed PUT');
    }
    if (m.superTransaction) {
      const t = m.superTransaction;
      if (
        !Number.isSafeInteger(t.id) ||
        !Number.isSafeInteger(t.fromSeq) ||
        typeof t.last !== 'boolean' ||
        (t.fromTime !== undefined && !Number.isFinite(t.fromTime))
      ) {
        throw new LinkProtocolError('malformed super-transaction tag');
      }
      await this.srv.saveTag(g, id, {
        id: t.id,
        fromSeq: t.fromSeq,
        ...(t.fromTime !== undefined ? { fromTime: t.fromTime } : {}),
        last: t.last,
      });
    }
    const old = this.transfers.get(id);
    if (old) {
      this.transfers.delete(id);
      await old.chain.catch(() => undefined);
      await old.fh.close().catch(() => undefined);
    }
    const applied = g.manager.status().lastContainer;
    const final = path.join(g.spool, containerFileName('ailfc', id));
    if (id <= applied) {
      this.send(MsgType.PUT_READY, { containerId: id, offset: -1 });
      this.submit(id, final, m.footer, m.superTransaction);
      return;
    }
    // Already received whole (e.g. before a manager restart): verify it again and submit.
    if (await exists(final)) {
      const v = await verifyContainer(final);
      if (v.ok && v.footer.bodyCrc === m.footer.bodyCrc && v.footer.recordCount === m.footer.recordCount) {
        this.send(MsgType.PUT_READY, { containerId: id, offset: -1 });
        this.submit(id, final, m.footer, m.superTransaction);
        return;
      }
      await fs.promises.rm(final, { force: true });
    }
    const part = `${final}.part`;
    const metaFile = `${final}.part.json`;
    let offset = 0;
    try {
      const meta = JSON.parse(await fs.promises.readFile(metaFile, 'utf8')) as { size: number; bodyCrc: number };
      const st = await fs.promises.stat(part);
      if (meta.size === m.size && meta.bodyCrc === m.footer.bodyCrc && st.size <= m.size) offset = st.size;
    } catch {
      offset = 0;
    }
    if (offset === 0) await writeFileAtomic(metaFile, JSON.stringify({ size: m.size, bodyCrc: m.footer.bodyCrc }));
    const fh = await fs.promises.open(part, offset === 0 ? 'w' : 'r+', 0o600);
    if (offset === 0) await fh.truncate(0);
    if (this.state === 'closed') {
      await fh.close();
      return;
    }
    this.transfers.set(id, { id, msg: m, part, fh, next: offset, chain: Promise.resolve(), queuedBytes: 0, failed: null });
    if (offset > 0) this.srv.log.info({ group: g.name, container: id, offset }, 'resuming a partial transfer');
    this.send(MsgType.PUT_READY, { containerId: id, offset });
  }

  private onDataFrame(f: Frame): void {
    const g = this.group!;
    const { containerId, offset, data } = parseData(f);
    const t = this.transfers.get(containerId);
    if (!t || t.failed) return; // a transfer we gave up on: the intercept re-sends after the NACK
    if (offset !== t.next || offset + data.length > t.msg.size) {
      t.failed = `DATA at ${offset}, expected ${t.next}`;
      return;
    }
    t.next += data.length;
    g.bytesReceived += data.length;
    t.queuedBytes += data.length;
    t.chain = t.chain.then(async () => {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await t.fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
      t.queuedBytes -= data.length;
      if (this.paused && t.queuedBytes < 16 << 20) {
        this.paused = false;
        this.sock.resume();
      }
    });
    t.chain.catch((err) => (t.failed = `spool write failed: ${(err as Error).message}`));
    if (t.queuedBytes > 64 << 20 && !this.paused) {
      // The spool disk is slower than the link: push back through TCP.
      this.paused = true;
      this.sock.pause();
    }
  }

  private async onEnd(id: number): Promise<void> {
    const g = this.group!;
    const t = this.transfers.get(id);
    if (!t) return;
    this.transfers.delete(id);
    await t.chain.catch(() => undefined);
    try {
      if (t.failed) throw new Error(t.failed);
      if (t.next !== t.msg.size) throw new Error(`received ${t.next} of ${t.msg.size} bytes`);
      await t.fh.sync();
    } catch (err) {
      await t.fh.close().catch(() => undefined);
      await fs.promises.rm(t.part, { force: true });
      return this.nack(id, (err as Error).message, true);
    }
    await t.fh.close();
    const v = await verifyContainer(t.part);
    if (!v.ok || v.footer.bodyCrc !== t.msg.footer.bodyCrc || v.footer.recordCount !== t.msg.footer.recordCount) {
      await fs.promises.rm(t.part, { force: true });
      const why = v.ok
        ? `footer mismatch (body CRC ${v.footer.bodyCrc}, announced ${t.msg.footer.bodyCrc})`
        : `checksum failure at offset ${v.offset}: ${v.problem}`;
      return this.nack(id, `transfer damaged, not applied: ${why}`, true);
    }
    const final = t.part.slice(0, -'.part'.length);
    await fs.promises.rename(t.part, final);
    await fsyncDir(g.spool);
    await fs.promises.rm(`${final}.part.json`, { force: true });
    g.containersReceived++;
    this.submit(id, final, v.footer, t.msg.superTransaction);
  }

  private submit(id: number, file: string, footer: Footer, tag: SuperTag | undefined): void {
    const g = this.group!;
    const ref = { groupId: g.groupId, containerId: id, path: file, footer, ...(tag ? { superTransaction: tag } : {}) };
    g.inSpool.add(id);
    g.manager.submit(ref).then(
      async (c: CommitInfo) => {
        g.inSpool.delete(id);
        await fs.promises.rm(file, { force: true });
        // Ack on whatever connection the group has now (the intercept may have reconnected).
        g.conn?.send(MsgType.COMMIT, c);
      },
      (err: Error) => {
        g.inSpool.delete(id);
        const resend = err instanceof CorruptContainerError;
        g.conn?.nack(id, err.message, resend);
      },
    );
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.promises.access(p);
    return true;
  } catch {
    return false;
  }
}

export type { TransactionRecord };
