/**
 * What the two phases of a connection (handshake.ts, transmission.ts) use
 * of the connection that owns the socket (connection.ts): writing,
 * buffers, flow control and the moves from one phase to the next.
 */
import type { ClientInfo, ExportProvider, MetaContext, OpenedExport } from './export';
import type { Receiver } from './receiver';
import type { ConnectionStats, NbdLogger, ServerLimits } from './limits';
import type { TlsSettings, TlsUpgrade } from '../tls';
import type { MemoryBudget } from './budget';

export interface Hooks {
  provider: ExportProvider;
  limits: ServerLimits;
  logger: NbdLogger;
  tls: TlsSettings;
  stats: ConnectionStats;
  /** Shared by every connection of a server (absent: per-connection limits only). */
  budget?: MemoryBudget;
}

/** A broken protocol rule: the connection is closed (after any reply already sent). */
export class ProtocolViolation extends Error {}

/** A meta context SET selected: its id, name, and (opened at first use in transmission) its handle. */
export interface ChosenContext {
  id: number;
  name: string;
  ctx?: Promise<MetaContext | null>;
}

/** What the handshake negotiated, handed to transmission. */
export interface Session {
  opened: OpenedExport;
  /** Transmission flags sent to the client. */
  flags: number;
  structured: boolean;
  /** Block status is allowed (a context was selected for this export). */
  metaSelected: boolean;
  metaChosen: ChosenContext[];
}

export interface Wire {
  readonly info: ClientInfo;
  readonly hooks: Hooks;
  readonly rx: Receiver;
  /** The socket is gone: replies are dropped. */
  readonly destroyed: boolean;
  /** Bytes of replies the client has not read yet. */
  readonly writableLength: number;
  /** Still negotiating options (nothing else has ended the handshake). */
  readonly inHandshake: boolean;
  /** In transmission, not closing. */
  readonly inTransmission: boolean;
  send(buf: Buffer): void;
  /** Batch the writes of this tick into one writev. */
  cork(): void;
  /** Send the last piece of a reply; lend `into` back to the pool once it is out. */
  sendLast(buf: Buffer, into: Buffer | undefined): void;
  log(level: keyof NbdLogger, obj: object, msg: string): void;
  violation(e: unknown): void;
  /** Parse again (an option finished, a payload arrived). */
  resume(): void;
  borrow(length: number): Buffer | undefined;
  giveBack(b: Buffer | undefined): void;
  /**
   * Reserve `bytes` for the request at the head of the input (its payload or
   * result) from the server's budget. false: not now; parsing stops and
   * resumes by itself when memory is given back.
   */
  admit(bytes: number): boolean;
  /**
   * The reserved request is about to be dispatched: its bytes move to the
   * requests in flight (track) or, if it is refused, are gone. Reported
   * with the next flow update, so the move is never counted twice.
   */
  unreserve(bytes: number): void;
  /** Count a request in flight until `p` settles (flow control). */
  track(bytes: number, p: Promise<void>): void;
  /** OPT_ABORT. */
  abort(): void;
  /** The transport can be upgraded to TLS (a TCP or Unix socket; not stdio pipes). */
  readonly canStartTls: boolean;
  /** STARTTLS: upgrade the socket in place; null when the connection ended meanwhile. */
  startTls(): Promise<TlsUpgrade | null>;
  enterTransmission(session: Session): void;
  /** NBD_CMD_DISC (or a server shutdown): no more requests; close once those in flight are answered. */
  softDisconnect(): void;
}
