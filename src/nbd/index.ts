/**
 * nbd-server-ts: an NBD server library with no knowledge of what it serves.
 * See export.ts for the interface an export implements and server.ts for
 * the server.
 */
export * from './export';
export * as protocol from './protocol';
export { NbdServer } from './server';
export type { NbdServerOptions, ServerLimits, NbdLogger } from './server';
export { upgradeToTls, checkTlsSettings, formatSubject, TLS_MODES, type TlsMode, type TlsSettings } from './tls';
