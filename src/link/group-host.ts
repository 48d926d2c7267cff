/**
 * What the manager side of the link keeps per consistency group
 * (GroupHost), and what a connection (conn.ts) needs of the server that
 * owns it (ConnHost): shared by server.ts and conn.ts so neither imports
 * the other's class.
 */
import type { BackupManager } from '../manager/backup-manager';
import type { Logger } from '../util/logger';
import type { TlsSettings } from '../tls';
import type { Frame, GroupMsg, InterceptStatusMsg, MsgType, SuperTag } from './protocol';

/** A connection as the server uses it. */
export interface LinkConn {
  readonly peer: string;
  transferCount(): number;
  /** Refuse a container (resend: the intercept may send it again). */
  nack(id: number, message: string, resend: boolean): void;
  send(type: MsgType, body: unknown): void;
  destroy(why: string): void;
  /** Sends `type` and waits for the answer frame carrying the same id. */
  request(
    g: GroupHost,
    type: MsgType,
    body: Record<string, unknown>,
    answer: MsgType,
    timeoutMs: number,
    id?: string,
    onFrame?: (f: Frame) => void,
  ): Promise<unknown>;
  /** Writes ready-made frames and waits for the answer frame carrying `id`. */
  requestFrames(g: GroupHost, id: string, frames: Buffer[], timeoutMs: number): Promise<unknown>;
}

export interface GroupHost {
  name: string;
  groupId: number;
  meta: GroupMsg;
  dir: string;
  spool: string;
  manager: BackupManager;
  tags: Map<number, SuperTag>;
  conn: LinkConn | null;
  since: number;
  bytesReceived: number;
  containersReceived: number;
  refused: number;
  lastError: string | null;
  intercept: InterceptStatusMsg | null;
  inSpool: Set<number>;
  waiters: Map<string, { resolve(v: unknown): void; reject(e: Error): void; onFrame?: (f: Frame) => void }>;
}

export interface LinkServerOptions {
  dataDir: string;
  /** Shared secret; null when only TLS client certificates authenticate. */
  secret: Buffer | null;
  tls: TlsSettings;
  logger: Logger;
}

/** What a connection needs of its server. */
export interface ConnHost {
  readonly opts: LinkServerOptions;
  readonly log: Logger;
  register(c: LinkConn): void;
  unregister(c: LinkConn): void;
  noteRefused(peer: string, why: string, g?: GroupHost): void;
  openGroup(meta: GroupMsg): Promise<GroupHost>;
  saveTag(g: GroupHost, n: number, tag: SuperTag): Promise<void>;
  /** The group's intercept is connected (GROUP_OK sent), and each STATUS it sends. */
  connected(g: GroupHost): void;
  statusReceived(g: GroupHost): void;
}
