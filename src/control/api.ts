/**
 * Types shared by the control API server and its client (JSON over HTTP).
 *
 *   GET    /v1/health                    -> Health
 *   GET    /v1/volumes                   -> { volumes: VolumeView[] }
 *   GET    /v1/volumes/NAME              -> VolumeView
 *   POST   /v1/volumes                   CreateVolumeBody -> 201 VolumeView
 *   DELETE /v1/volumes/NAME[?keepData=1] -> DeleteResult
 *   GET    /v1/metrics                   -> Prometheus text format
 *   POST   /v1/certificates/reload       -> { certificates: CertStatus[] } (422 if a reload failed)
 *
 * Errors: 4xx/5xx with { error: "message" }.
 */
import type { CertStatus } from '../daemon/cert-reload';

export const API_PREFIX = '/v1';

export { MAX_BODY_BYTES } from '../util/http';

export interface Health {
  ok: true;
  version: string;
  pid: number;
  uptimeSeconds: number;
  dataDir: string;
  nbd: { tcp: string | null; unix: string | null };
  volumes: number;
  connections: number;
  /** Volumes still in crash recovery after an unclean stop (offline until done). */
  recovering: string[];
  /** TLS certificates in use: subject, fingerprint, expiry, reloads and the last reload error. */
  certificates: CertStatus[];
}

export interface VolumeView {
  name: string;
  size: number;
  /** Bytes allocated on disk; null for block devices. */
  allocatedBytes: number | null;
  readOnly: boolean;
  kind: 'file' | 'device';
  path: string;
  /** True if the image was supplied with `path` (never deleted by rewind). */
  external: boolean;
  created: string;
  description: string;
  /** NBD connections currently using the volume. */
  connections: number;
  /** True for the volume served as the default export "". */
  isDefaultExport: boolean;
  uris: { tcp: string | null; unix: string | null };
  /** Protected (journaled) volumes: their consistency group and volume id. */
  protection: { group: string; volumeId: number } | null;
  /** Why the volume's export is offline (a production restore), or null. */
  offline: string | null;
  /** Access control list (allow entries); empty: everyone. */
  allow: string[];
}

export interface CreateVolumeBody {
  name: string;
  /** "1G", "512M", "4096" or a number of bytes; optional with `path`. */
  size?: string | number;
  readOnly?: boolean;
  /** Absolute path of an existing image file or block device to serve. */
  path?: string;
  description?: string;
  /** Journal every write. */
  protected?: boolean;
  /** Consistency group to join (implies protected). */
  group?: string;
  /** Access control list: "addr:CIDR", "uid:N", "gid:N", "cert:CN=NAME", "any"; absent: everyone. */
  allow?: string[];
}

export interface DeleteResult {
  deleted: string;
  disconnected: number;
  dataDeleted: boolean;
  path: string;
}

export interface ErrorBody {
  error: string;
}
