/** Where the daemon's NBD server listens, and the URIs a client dials for an export. */

export interface NbdEndpoints {
  tcp?: { host: string; port: number };
  unix?: string;
}

export function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The host a client should dial for a listener bound to `host`. */
function dialHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

export function nbdUris(endpoints: NbdEndpoints, name: string): { tcp: string | null; unix: string | null } {
  const tcp = endpoints.tcp ? `nbd://${hostPort(dialHost(endpoints.tcp.host), endpoints.tcp.port)}/${name}` : null;
  const unix = endpoints.unix ? `nbd+unix:///${name}?socket=${endpoints.unix.split('/').map(encodeURIComponent).join('/')}` : null;
  return { tcp, unix };
}
