/**
 * Which certificates the daemon reloads without a restart (cert-reload.ts
 * does the watching): the NBD server's, the manager link listener's (manager
 * role) and the link client's (intercept role).
 */
import type { NbdServer } from '../nbd';
import type { LinkServer } from '../link/server';
import type { Protection } from '../daemon/protection';
import { readLinkTlsClient } from '../link/client';
import { readTlsFiles } from '../tls';
import { CertReloader, describeCertificate, type CertificateInfo } from '../daemon/cert-reload';
import type { Logger } from '../util/logger';
import type { TlsFiles, TlsSettings } from '../tls';
import type { NbdSettings } from '../daemon/nbd-settings';

export interface CertificateUsers {
  nbd: NbdServer;
  nbdSettings: NbdSettings | undefined;
  /** The manager role's link listener, its TLS settings and their files. */
  link: { server: LinkServer; tls: TlsSettings; files: TlsFiles | null | undefined } | null;
  /** The intercept role's links (Protection.remoteTlsFiles). */
  protection: Protection;
}

function describe(pem: unknown): CertificateInfo | null {
  if (!Buffer.isBuffer(pem)) return null;
  try {
    return describeCertificate(pem);
  } catch {
    return null;
  }
}

export function watchCertificates(parts: CertificateUsers, logger: Logger): CertReloader {
  const reloader = new CertReloader(logger);
  const settings = parts.nbdSettings;
  const nbdFiles = settings?.tlsFiles;
  if (settings && nbdFiles && settings.tls.mode !== 'off') {
    let current = settings.tls;
    reloader.add(
      {
        what: 'NBD TLS',
        files: [nbdFiles.cert, nbdFiles.key, ...(nbdFiles.ca ? [nbdFiles.ca] : [])],
        reload: () => {
          const next = readTlsFiles(current, nbdFiles);
          parts.nbd.setTls(next);
          current = next;
          return describe(next.credentials?.cert);
        },
      },
      describe(current.credentials?.cert),
    );
  }
  const ml = parts.link;
  if (ml?.files && ml.tls.mode !== 'off') {
    const files = ml.files;
    const linkServer = ml.server;
    reloader.add(
      {
        what: 'manager link TLS',
        files: [files.cert, files.key, ...(files.ca ? [files.ca] : [])],
        reload: () => {
          const next = readTlsFiles(linkServer.opts.tls, files);
          linkServer.setTls(next);
          return describe(next.credentials?.cert);
        },
      },
      describe(ml.tls.credentials?.cert),
    );
  }
  const lf = parts.protection.remoteTlsFiles;
  if (lf) {
    const first = readLinkTlsClient(lf);
    reloader.add(
      {
        what: 'link client TLS',
        files: [lf.ca, ...(lf.cert ? [lf.cert] : []), ...(lf.key ? [lf.key] : [])],
        reload: () => {
          const next = readLinkTlsClient(lf);
          parts.protection.setRemoteTls(next);
          return describe(next.cert ?? next.ca);
        },
      },
      describe(first.cert ?? first.ca),
    );
  }
  return reloader;
}
