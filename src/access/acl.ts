/**
 * Export access control lists: who may list and open an export.
 *
 * An ACL is a list of allow entries, stored as canonical strings in the
 * volume record (`allow`), so it reads the same in the catalog, the API and
 * the CLI. A client is allowed if any entry matches it; an absent or empty
 * list allows everyone. Entries:
 *
 *   any | *                 everyone
 *   addr:CIDR               TCP clients from that address or network:
 *                           addr:127.0.0.1, addr:10.0.0.0/8, addr:::1, addr:fd00::/8
 *   uid:N                   Unix-socket clients whose process runs as uid N (SO_PEERCRED)
 *   gid:N                   ... whose process runs with primary gid N
 *   cert:ATTR=V[,ATTR=V]    TLS clients whose verified certificate subject has
 *                           every one of these attributes: cert:CN=alice, cert:CN=alice,O=Acme
 *   cert:*                  any TLS client with a verified certificate
 *
 * Clients on the "stdio" transport (rewind serve --stdio over plain pipes)
 * are the operator's own process, which can read the data directory
 * anyway; every ACL admits them.
 *
 * The identity is nbd-server-ts's ClientInfo (address, peer credentials,
 * verified certificate). Snapshots and clones use effectiveAcl() to default
 * to their source's list.
 */
import * as net from 'node:net';
import type { ClientInfo } from '../nbd';

export type AclEntry =
  | { kind: 'any' }
  | { kind: 'addr'; family: 'ipv4' | 'ipv6'; address: string; prefix: number }
  | { kind: 'uid'; id: number }
  | { kind: 'gid'; id: number }
  | { kind: 'cert'; subject: Array<[string, string]> };

/** An ACL as stored: canonical entry strings. Absent or empty: everyone. */
export type Acl = string[];

export class AclError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AclError';
  }
}

const ATTR_RE = /^[A-Za-z][A-Za-z0-9.]*$/;

/** Parses one entry; throws AclError with the accepted forms on bad input. */
export function parseAclEntry(spec: string): AclEntry {
  if (typeof spec !== 'string') throw new AclError('an ACL entry must be a string');
  const s = spec.trim();
  if (s === 'any' || s === '*') return { kind: 'any' };
  const colon = s.indexOf(':');
  const kind = colon > 0 ? s.slice(0, colon).toLowerCase() : '';
  const value = colon > 0 ? s.slice(colon + 1).trim() : '';
  switch (kind) {
    case 'addr':
    case 'ip': {
      const slash = value.lastIndexOf('/');
      let address = slash >= 0 ? value.slice(0, slash) : value;
      if (address.startsWith('[') && address.endsWith(']')) address = address.slice(1, -1);
      const fam = net.isIP(address);
      if (fam === 0) throw new AclError(`ACL entry ${JSON.stringify(spec)}: ${JSON.stringify(address)} is not an IP address`);
      const family = fam === 4 ? 'ipv4' : 'ipv6';
      const max = fam === 4 ? 32 : 128;
      let prefix = max;
      if (slash >= 0) {
        const p = value.slice(slash + 1);
        prefix = /^\d{1,3}$/.test(p) ? Number(p) : NaN;
        if (!(prefix >= 0 && prefix <= max)) throw new AclError(`ACL entry ${JSON.stringify(spec)}: prefix length must be 0..${max}`);
      }
      return { kind: 'addr', family, address: family === 'ipv6' ? address.toLowerCase() : address, prefix };
    }
    case 'uid':
    case 'gid': {
      if (!/^\d{1,10}$/.test(value) || Number(value) > 0xffffffff) {
        throw new AclError(`ACL entry ${JSON.stringify(spec)}: ${kind} must be a number`);
      }
      return { kind, id: Number(value) };
    }
    case 'cert': {
      if (value === '*') return { kind: 'cert', subject: [] };
      const subject: Array<[string, string]> = [];
      for (const part of value.split(',')) {
        const eq = part.indexOf('=');
        const attr = eq > 0 ? part.slice(0, eq).trim() : '';
        const v = eq > 0 ? part.slice(eq + 1).trim() : '';
        if (!ATTR_RE.test(attr) || v === '') {
          throw new AclError(`ACL entry ${JSON.stringify(spec)}: expected cert:ATTR=VALUE[,ATTR=VALUE] (e.g. cert:CN=alice) or cert:*`);
        }
        subject.push([attr, v]);
      }
      return { kind: 'cert', subject };
    }
    default:
      throw new AclError(`ACL entry ${JSON.stringify(spec)}: expected any, addr:CIDR, uid:N, gid:N, cert:ATTR=VALUE[,...] or cert:*`);
  }
}

export function formatAclEntry(e: AclEntry): string {
  switch (e.kind) {
    case 'any':
      return 'any';
    case 'addr':
      return `addr:${e.address}${e.prefix === (e.family === 'ipv4' ? 32 : 128) ? '' : `/${e.prefix}`}`;
    case 'uid':
    case 'gid':
      return `${e.kind}:${e.id}`;
    case 'cert':
      return e.subject.length === 0 ? 'cert:*' : `cert:${e.subject.map(([k, v]) => `${k}=${v}`).join(',')}`;
  }
}

/**
 * Validates user input (undefined, or an array of entry strings) into a
 * canonical ACL: parsed, re-formatted, duplicates removed. Undefined or an
 * empty array gives undefined (no ACL: everyone).
 */
export function parseAcl(input: unknown): Acl | undefined {
  if (input === undefined || input === null) return undefined;
  if (!Array.isArray(input))
    throw new AclError('allow must be a list of ACL entries, e.g. ["addr:127.0.0.1", "uid:1000", "cert:CN=alice"]');
  if (input.length > 256) throw new AclError('an ACL holds at most 256 entries');
  const out: string[] = [];
  for (const spec of input) {
    const canon = formatAclEntry(parseAclEntry(spec as string));
    if (!out.includes(canon)) out.push(canon);
  }
  return out.length ? out : undefined;
}

/** The ACL of a derived export (snapshot, clone): its own if it has one, else its source's. */
export function effectiveAcl(own: Acl | undefined, source: Acl | undefined): Acl | undefined {
  return own && own.length ? own : source && source.length ? source : undefined;
}

const compiled = new Map<string, (c: ClientInfo) => boolean>();

function compile(spec: string): (c: ClientInfo) => boolean {
  let fn = compiled.get(spec);
  if (fn) return fn;
  const e = parseAclEntry(spec);
  switch (e.kind) {
    case 'any':
      fn = () => true;
      break;
    case 'addr': {
      const list = new net.BlockList();
      list.addSubnet(e.address, e.prefix, e.family);
      fn = (c) => {
        const a = normaliseAddress(c.remoteAddress);
        return a !== null && list.check(a.address, a.family);
      };
      break;
    }
    case 'uid':
      fn = (c) => c.peer !== undefined && c.peer.uid === e.id;
      break;
    case 'gid':
      fn = (c) => c.peer !== undefined && c.peer.gid === e.id;
      break;
    case 'cert':
      fn = (c) => {
        if (!c.tls || !c.cert) return false;
        return e.subject.every(([k, v]) => (c.cert!.subject[k] ?? []).includes(v));
      };
      break;
  }
  if (compiled.size > 4096) compiled.clear();
  compiled.set(spec, fn);
  return fn;
}

/** IPv4-mapped IPv6 (::ffff:1.2.3.4) counts as IPv4. */
function normaliseAddress(a: string | undefined): { address: string; family: 'ipv4' | 'ipv6' } | null {
  if (!a) return null;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  if (mapped) return { address: mapped[1]!, family: 'ipv4' };
  const fam = net.isIP(a);
  if (fam === 0) return null;
  return { address: a, family: fam === 4 ? 'ipv4' : 'ipv6' };
}

/** Does the ACL admit this client? */
export function aclAllows(acl: Acl | undefined, client: ClientInfo): boolean {
  if (!acl || acl.length === 0) return true;
  if (client.transport === 'stdio') return true;
  for (const spec of acl) {
    try {
      if (compile(spec)(client)) return true;
    } catch {
      // A stored entry this version cannot parse admits nobody.
    }
  }
  return false;
}
