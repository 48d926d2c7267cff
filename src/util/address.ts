/**
 * Parsing of listen/connect addresses given on the command line.
 */

export interface HostPort {
  host: string;
  port: number;
}

export class AddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AddressError';
  }
}

function parsePort(text: string, whole: string): number {
  if (!/^\d{1,5}$/.test(text)) throw new AddressError(`invalid port in "${whole}": expected a number 0-65535`);
  const port = Number(text);
  if (port > 65535) throw new AddressError(`invalid port in "${whole}": expected a number 0-65535`);
  return port;
}

/**
 * "127.0.0.1:10809", "[::1]:10809", "localhost:10809", ":10809" or "10809"
 * (host defaults to `defaultHost`).
 */
export function parseHostPort(text: string, defaultHost = '127.0.0.1'): HostPort {
  const s = text.trim();
  if (/^\d+$/.test(s)) return { host: defaultHost, port: parsePort(s, text) };
  const v6 = /^\[([0-9a-fA-F:.%a-zA-Z]+)\]:(\d+)$/.exec(s);
  if (v6) return { host: v6[1]!, port: parsePort(v6[2]!, text) };
  const i = s.lastIndexOf(':');
  if (i < 0) throw new AddressError(`invalid address "${text}": expected HOST:PORT`);
  const host = s.slice(0, i);
  if (host.includes(':')) throw new AddressError(`invalid address "${text}": write IPv6 addresses as [ADDR]:PORT`);
  if (host !== '' && !/^[A-Za-z0-9.-]+$/.test(host)) throw new AddressError(`invalid host in "${text}"`);
  return { host: host || defaultHost, port: parsePort(s.slice(i + 1), text) };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}
