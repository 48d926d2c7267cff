/**
 * The server side of TLS on an accepted socket, upgraded in place: used by
 * the NBD library (NBD_OPT_STARTTLS) and by the link between the intercept
 * and the manager. A library of its own, so neither imports the other; it
 * imports nothing from the project.
 *
 * Modes (nbd-protocol.md, "TLS support"):
 * - off:     NOTLS. STARTTLS gets NBD_REP_ERR_POLICY.
 * - on:      SELECTIVETLS with no TLS-only export: the client may upgrade.
 * - require: FORCEDTLS. Every option but STARTTLS and ABORT gets
 *            NBD_REP_ERR_TLS_REQD until TLS is up; EXPORT_NAME closes.
 *
 * The upgrade goes through a (never listening) tls.Server, so Node itself
 * verifies a client certificate against the CA and refuses one that does
 * not verify: a TLSSocket created on its own would accept any certificate.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';

export type TlsMode = 'off' | 'on' | 'require';

export const TLS_MODES: readonly TlsMode[] = ['off', 'on', 'require'];

export interface TlsSettings {
  mode: TlsMode;
  /**
   * Server credentials as for tls.createServer: `key` and `cert` (PEM),
   * and `ca` (PEM) when client certificates are verified. Required unless
   * mode is 'off'.
   */
  credentials?: Pick<tls.TlsOptions, 'key' | 'cert' | 'ca' | 'passphrase' | 'minVersion' | 'ciphers'>;
  /**
   * Ask every client for a certificate and end the handshake unless it
   * verifies against `credentials.ca`.
   */
  verifyClient?: boolean;
}

/** Throws a clear error if the settings cannot work (missing or unusable certificates). */
export function checkTlsSettings(s: TlsSettings): void {
  if (s.mode === 'off') return;
  const c = s.credentials;
  if (!c || !c.key || !c.cert) throw new Error(`TLS mode "${s.mode}" needs a server certificate and key`);
  if (s.verifyClient && !c.ca) throw new Error('verifying client certificates needs a CA certificate');
  // Parses the PEM files now, so a bad file is reported at start-up.
  tls.createSecureContext(c);
}

/** Where a server's PEM files are (the CA only when client certificates are verified or offered). */
export interface TlsFiles {
  cert: string;
  key: string;
  ca: string | null;
}

function readPem(what: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read the TLS ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * `settings` with credentials read afresh from `files`, checked as
 * checkTlsSettings does (certificate and key must be a pair). Throws,
 * naming the files, if they cannot be used.
 */
export function readTlsFiles(settings: TlsSettings, files: TlsFiles): TlsSettings {
  const credentials: NonNullable<TlsSettings['credentials']> = {
    ...settings.credentials,
    cert: readPem('certificate', files.cert),
    key: readPem('key', files.key),
  };
  if (files.ca) credentials.ca = readPem('CA certificate', files.ca);
  const next: TlsSettings = { ...settings, credentials };
  try {
    checkTlsSettings(next);
  } catch (err) {
    throw new Error(
      `TLS certificates (${files.cert}, ${files.key}${files.ca ? `, ${files.ca}` : ''}) are not usable: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return next;
}

/** A verified client certificate: subject and issuer attributes, SHA-256 fingerprint. */
export interface ClientCertificate {
  subject: Record<string, string[]>;
  issuer: Record<string, string[]>;
  fingerprint256: string;
}

export interface TlsUpgrade {
  socket: tls.TLSSocket;
  /** The verified client certificate, when verifyClient asked for one. */
  cert?: ClientCertificate;
  certSubject?: string;
}

/**
 * Runs the server side of a TLS handshake on `raw` (whose plaintext
 * listeners the caller has removed). Resolves with the TLS socket once the
 * handshake (and client-certificate verification) succeeded; rejects, with
 * the sockets destroyed, if it fails, times out or the peer goes away.
 */
export function upgradeToTls(raw: net.Socket, settings: TlsSettings, timeoutMs: number): Promise<TlsUpgrade> {
  const verify = !!settings.verifyClient;
  const server = tls.createServer({
    ...settings.credentials,
    requestCert: verify,
    rejectUnauthorized: verify,
    handshakeTimeout: Math.max(1, timeoutMs),
  });
  return new Promise<TlsUpgrade>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => fail(new Error('TLS handshake timed out')), Math.max(1, timeoutMs));
    timer.unref?.();
    const finish = () => {
      settled = true;
      clearTimeout(timer);
      server.removeAllListeners();
      raw.off('close', onClose);
    };
    const fail = (err: Error, sock?: tls.TLSSocket) => {
      if (settled) return;
      finish();
      sock?.destroy();
      raw.destroy();
      reject(err);
    };
    const onClose = () => fail(new Error('connection closed during the TLS handshake'));
    server.on('secureConnection', (s: tls.TLSSocket) => {
      if (settled) {
        s.destroy();
        return;
      }
      finish();
      const out: TlsUpgrade = { socket: s };
      if (verify && s.authorized) {
        const peer = s.getPeerCertificate();
        if (peer && peer.subject) {
          out.cert = {
            subject: attrs(peer.subject),
            issuer: attrs(peer.issuer),
            fingerprint256: peer.fingerprint256 ?? '',
          };
          out.certSubject = formatSubject(out.cert.subject);
        }
      }
      resolve(out);
    });
    server.on('tlsClientError', (err: Error, s: tls.TLSSocket) => fail(new Error(`TLS handshake failed: ${err.message}`), s));
    raw.on('close', onClose);
    // A client certificate that does not verify: Node destroys the TLS
    // socket without an error event; the raw socket's close reports it.
    server.emit('connection', raw);
  });
}

function attrs(o: unknown): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  if (!o || typeof o !== 'object') return out;
  for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
    if (Array.isArray(v)) out[k] = v.map(String);
    else if (v !== undefined) out[k] = [String(v)];
  }
  return out;
}

/** "CN=alice,O=Acme" (attributes in certificate order). */
export function formatSubject(subject: Record<string, string[]>): string {
  const parts: string[] = [];
  for (const [k, vs] of Object.entries(subject)) for (const v of vs) parts.push(`${k}=${v}`);
  return parts.join(',');
}
