/**
 * nbd-server-ts: an NBD server library with no knowledge of what it serves,
 * and the only door into it: code outside src/nbd imports from here.
 *
 *   export.ts        the interface an export implements (NbdExport, ExportProvider)
 *   server.ts        listeners, connection limits, close and drain
 *   connection.ts    one client: socket, flow control, life cycle
 *   handshake.ts     options, up to a negotiated session
 *   transmission.ts  requests and replies
 *   receiver.ts      the ordered byte stream; inbuf.ts its queue
 *   limits.ts        limits, logger, counters; protocol.ts the constants
 *   client.ts        a small client (tests, tools)
 * TLS comes from the sibling library src/tls.
 */
export * from './export';
export * as protocol from './protocol';
export { NbdServer } from './server';
export type { NbdServerOptions } from './server';
export { DEFAULT_LIMITS, silentLogger, type ConnectionStats, type NbdLogger, type ServerLimits } from './limits';
export { NbdClient, NbdClientError } from './client';
export { upgradeToTls, checkTlsSettings, formatSubject, TLS_MODES, type TlsMode, type TlsSettings } from '../tls';
