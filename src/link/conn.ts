/**
 * One intercept connection on the manager side of the link: the HELLO /
 * AUTH handshake, the group it serves, containers received into the spool
 * (PUT, DATA, END), and the requests the manager sends the intercept
 * (CATCHUP, POSITION, VERIFY, REPLICA_HASHES answered). See server.ts.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { verifyContainer } from '../lfc';
import { containerFileName, type Footer } from '../lfc';
import { CorruptContainerError, type CommitInfo } from '../manager/types';
import { fsyncDir } from '../util/fsync-dir';
import { UserError } from '../util/errors';
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
  type PutMsg,
  type SuperTag,
} from './protocol';
import { writeFileAtomic } from '../util/atomic-file';
import { JSON_FORMATS } from '../util/format-version';
import type { ConnHost, GroupHost, LinkConn } from './group-host';

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

/** One intercept connection. */
export class Conn implements LinkConn {
  private readonly reader = new FrameReader();
  private state: 'hello' | 'auth' | 'group' | 'ready' | 'closed' = 'hello';
  private readonly serverNonce = nonce();
  private group: GroupHost | null = null;
  private readonly transfers = new Map<number, Transfer>();
  private lastHeard = Date.now();
  private readonly timer: NodeJS.Timeout;
  private paused = false;

  constructor(
    private readonly srv: ConnHost,
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
            this.srv.connected(g);
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
        this.srv.statusReceived(g);
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
      case MsgType.POSITION:
      case MsgType.RESTORE_ANSWER: {
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
    return this.awaitAnswer(g, key, timeoutMs, () => this.send(type, { ...body, id: key }), onFrame);
  }

  /** Writes ready-made frames (a RESTORE_DATA) and waits for the answer carrying `id`. */
  requestFrames(g: GroupHost, id: string, frames: Buffer[], timeoutMs: number): Promise<unknown> {
    return this.awaitAnswer(g, id, timeoutMs, () => {
      if (this.state === 'closed') return;
      for (const b of frames) this.sock.write(b);
    });
  }

  private awaitAnswer(g: GroupHost, key: string, timeoutMs: number, send: () => void, onFrame?: (f: Frame) => void): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') return reject(new Error('the intercept disconnected'));
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
      send();
    });
  }

  nack(id: number, message: string, resend: boolean): void {
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
      const meta = JSON.parse(await fs.promises.readFile(metaFile, 'utf8')) as { size: number; bodyCrc: number; format?: unknown };
      const st = await fs.promises.stat(part);
      // A partial transfer of an unknown format is not resumed: it is received again from the start.
      const known = meta.format === undefined || meta.format === JSON_FORMATS.spool;
      if (known && meta.size === m.size && meta.bodyCrc === m.footer.bodyCrc && st.size <= m.size) offset = st.size;
    } catch {
      offset = 0;
    }
    if (offset === 0)
      await writeFileAtomic(metaFile, JSON.stringify({ format: JSON_FORMATS.spool, size: m.size, bodyCrc: m.footer.bodyCrc }));
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
