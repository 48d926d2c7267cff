/**
 * What a server bounds (per connection and per handshake), its logger, and
 * the counters every connection adds to. Defaults and the reasons for them
 * are in README.md ("Security and limits").
 */
export interface ServerLimits {
  /** Connections served at once; further ones are closed at accept. */
  maxConnections: number;
  /** Requests in flight per connection before reading pauses. */
  maxInflightPerConnection: number;
  /** Bytes of request payloads and read results in flight, plus unread replies, before reading pauses. */
  maxBufferedBytesPerConnection: number;
  /** The handshake must finish within this time. */
  handshakeTimeoutMs: number;
  /** Largest option payload accepted during the handshake. */
  maxOptionLength: number;
  /** A client that leaves replies unread this long while over the output limit is disconnected. */
  writeStallTimeoutMs: number;
  /** Largest WRITE payload discarded (and refused) rather than ending the connection. */
  maxDiscardPayload: number;
  /** Options one handshake may send; past it the connection is closed (a client must choose an export). */
  maxOptions: number;
  /** Bytes of payloads, results, unread replies and pooled buffers all connections together hold (budget.ts); 0: no budget. */
  memoryBudget: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxConnections: 256,
  maxInflightPerConnection: 64,
  maxBufferedBytesPerConnection: 64 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  maxOptionLength: 64 * 1024,
  writeStallTimeoutMs: 60_000,
  maxDiscardPayload: 256 * 1024 * 1024,
  maxOptions: 16384,
  memoryBudget: 1024 * 1024 * 1024,
};

export interface NbdLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const silentLogger: NbdLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

export interface ConnectionStats {
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  /** Connections closed for not finishing the handshake in time. */
  handshakeTimeouts: number;
  /** Connections closed for leaving replies unread past the stall timeout. */
  stallDisconnects: number;
}
