/**
 * Certificates replaced without a restart. Each TLS user (the NBD server,
 * the manager link's listener, the intercept's link client) registers its
 * files and a reload function that reads them, checks them (certificate
 * and key must match) and installs them for new connections. A reload runs
 * on SIGHUP and when a watched file changes (polled by path, so a rotation
 * by rename is seen too; changes are debounced, since a certificate and its
 * key are rarely written at the same instant).
 *
 * A rotation that is not usable (half written, key and certificate not a
 * pair) is refused: the certificates in use stay, the error is logged and
 * shown in /v1/health, and the next change is tried again. Connections
 * already up keep the session they negotiated.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import type { Logger } from '../util/logger';

export interface CertificateInfo {
  subject: string;
  fingerprint256: string;
  validTo: string;
}

export interface CertSource {
  /** For logs and status: "NBD TLS", "manager link TLS", "link client TLS". */
  what: string;
  files: string[];
  /** Reads and installs the files; throws, changing nothing, if they are not usable. */
  reload(): CertificateInfo | null;
}

export interface CertStatus {
  what: string;
  files: string[];
  certificate: CertificateInfo | null;
  reloads: number;
  failures: number;
  lastReload: string | null;
  lastError: string | null;
}

/** Subject, SHA-256 fingerprint and expiry of the first certificate of a PEM. */
export function describeCertificate(pem: Buffer): CertificateInfo {
  const c = new crypto.X509Certificate(pem);
  return { subject: c.subject.replace(/\n/g, ', '), fingerprint256: c.fingerprint256, validTo: c.validTo };
}

interface Entry {
  src: CertSource;
  status: CertStatus;
  timer: NodeJS.Timeout | null;
}

export class CertReloader {
  private readonly entries: Entry[] = [];
  private closed = false;

  constructor(
    private readonly logger: Logger,
    private readonly opts: { pollMs?: number; debounceMs?: number } = {},
  ) {}

  /** Registers a source (its current certificate is `current`) and watches its files. */
  add(src: CertSource, current: CertificateInfo | null): void {
    const e: Entry = {
      src,
      timer: null,
      status: { what: src.what, files: src.files, certificate: current, reloads: 0, failures: 0, lastReload: null, lastError: null },
    };
    this.entries.push(e);
    const interval = this.opts.pollMs ?? 2000;
    for (const f of src.files) {
      fs.watchFile(f, { interval, persistent: false }, (cur, prev) => {
        if (cur.mtimeMs === prev.mtimeMs && cur.ino === prev.ino && cur.size === prev.size) return;
        this.schedule(e, `${f} changed`);
      });
    }
  }

  /** Reloads every source now (SIGHUP). */
  reloadAll(reason: string): CertStatus[] {
    for (const e of this.entries) this.reload(e, reason);
    return this.status();
  }

  status(): CertStatus[] {
    return this.entries.map((e) => ({ ...e.status }));
  }

  close(): void {
    this.closed = true;
    for (const e of this.entries) {
      if (e.timer) clearTimeout(e.timer);
      for (const f of e.src.files) fs.unwatchFile(f);
    }
  }

  private schedule(e: Entry, reason: string): void {
    if (this.closed) return;
    if (e.timer) clearTimeout(e.timer);
    e.timer = setTimeout(() => {
      e.timer = null;
      this.reload(e, reason);
    }, this.opts.debounceMs ?? 500);
    e.timer.unref?.();
  }

  private reload(e: Entry, reason: string): void {
    if (this.closed) return;
    const st = e.status;
    try {
      const info = e.src.reload();
      st.certificate = info;
      st.reloads++;
      st.lastReload = new Date().toISOString();
      st.lastError = null;
      this.logger.info({ tls: st.what, reason, certificate: info }, 'certificates reloaded');
    } catch (err) {
      st.failures++;
      st.lastError = (err as Error).message;
      this.logger.error(
        { tls: st.what, reason, err: st.lastError },
        'new certificates are not usable; the ones in use stay until the files are fixed',
      );
    }
  }
}
