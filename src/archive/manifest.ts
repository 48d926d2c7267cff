/**
 * Manifests: one per archived point, self-describing (seed 003 L256-L268):
 * what was archived (group, seq, time, marker and quiesce result), how
 * (scheme, leaf size, fan-out, compression, encryption) and, per volume,
 * its size and root handle. With the pool config and the packs (whose
 * trailing indexes list every chunk) a point can be read, and the pool's
 * index rebuilt, from the backend alone.
 *
 * Stored as "points/NAME.point", written once with an exclusive atomic
 * put: the point exists exactly when its manifest does. The file is a JSON
 * envelope { format, poolId, name, encrypted, body, sha256 } whose body is
 * the point's JSON text (sha256 is of that text, so a flipped byte is
 * caught), or, in an encrypted pool, that text sealed with AES-256-GCM
 * (aad: pool id and name) in base64.
 */
import { createHash } from 'node:crypto';
import { seal, unseal } from './crypto';
import { ArchiveError, ArchiveFormatError } from './errors';
import { parseHandle, type SchemeName } from './handle';
import { checkFanout, checkLeafSize, shapeOf } from './tree';

export const MANIFEST_FORMAT = 'rewind-archive-manifest/1';
const MAX_MANIFEST = 16 * 1024 * 1024;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@:+=-]{0,199}$/;

/** How consistent the image is: from the marker's quiesce hooks (src/timetravel). */
export interface QuiesceInfo {
  /** 'crash' (no hooks) or 'application' (hooks ran). */
  kind: 'crash' | 'application';
  /** False if a hook failed (the point is then only crash-consistent). */
  ok: boolean;
  detail?: string;
}

/** What the archiver counted for one volume (the incremental-cost evidence). */
export interface VolumeStats {
  /** Leaves read from the source, and their bytes. */
  leavesRead: number;
  bytesRead: number;
  /** Bytes of leaf data hashed (zero leaves are detected, not hashed). */
  bytesHashed: number;
  leavesZero: number;
  /** Read and hashed but equal to the predecessor's leaf at the same offset. */
  leavesSameAsBase: number;
  /** Found elsewhere in the pool by the global index. */
  leavesDedup: number;
  leavesStored: number;
  /** Chunk bytes written to packs (leaves and nodes, after compression). */
  bytesStored: number;
  nodesStored: number;
  /** Subtrees taken from the predecessor by handle, never read. */
  subtreesReused: number;
}

export interface VolumeManifest {
  volume: string;
  size: number;
  /** Hex handle of the root. */
  root: string;
  height: number;
  leaves: number;
  stats: VolumeStats;
}

export interface PointManifest {
  name: string;
  poolId: string;
  /** When the archive committed (ms since the epoch). */
  created: number;
  group: string | null;
  /** The journal sequence number the point is at, shared by a group's volumes. */
  seq: number | null;
  /** Time of the point (its last write), ms since the epoch. */
  time: number | null;
  marker: string | null;
  quiesce: QuiesceInfo | null;
  /** The point this one was built from (temporal dedup), if any. */
  predecessor: string | null;
  scheme: SchemeName;
  leafSize: number;
  fanout: number;
  compression: string;
  encrypted: boolean;
  volumes: VolumeManifest[];
  meta: Record<string, string | number | boolean | null>;
}

export function checkPointName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new ArchiveError(
      'EINVAL',
      `invalid archive point name ${JSON.stringify(name)}: letters, digits and . _ @ : + = - (up to 200, not starting with a symbol)`,
    );
  }
}

export function manifestKey(name: string): string {
  return `points/${name}.point`;
}

export function nameOfManifestKey(key: string): string | null {
  const m = /^points\/(.+)\.point$/.exec(key);
  return m && NAME_RE.test(m[1]!) ? m[1]! : null;
}

function aad(poolId: string, name: string): Buffer {
  return Buffer.from(`${poolId}/${name}`, 'utf8');
}

export function encodeManifest(p: PointManifest, key: Buffer | null): Buffer {
  const text = JSON.stringify(p);
  const body = key ? seal(key, Buffer.from(text, 'utf8'), aad(p.poolId, p.name)).toString('base64') : text;
  const env = {
    format: MANIFEST_FORMAT,
    poolId: p.poolId,
    name: p.name,
    encrypted: key !== null,
    body,
    sha256: createHash('sha256').update(body).digest('hex'),
  };
  return Buffer.from(`${JSON.stringify(env, null, 1)}\n`, 'utf8');
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isNat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isStrOrNull = (v: unknown): boolean => v === null || typeof v === 'string';
const isNatOrNull = (v: unknown): boolean => v === null || (typeof v === 'number' && Number.isFinite(v));

/** Parses and validates a manifest file. Throws ArchiveFormatError (EKEYREJECTED if sealed under another key). */
export function decodeManifest(buf: Buffer, poolId: string, key: Buffer | null): PointManifest {
  if (buf.length > MAX_MANIFEST) throw new ArchiveFormatError(`manifest of ${buf.length} bytes is too large`);
  let env: unknown;
  try {
    env = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new ArchiveFormatError(`manifest is not JSON: ${(err as Error).message}`);
  }
  if (
    !isObj(env) ||
    env.format !== MANIFEST_FORMAT ||
    typeof env.body !== 'string' ||
    typeof env.name !== 'string' ||
    typeof env.sha256 !== 'string'
  ) {
    throw new ArchiveFormatError('not a rewind archive manifest');
  }
  if (env.poolId !== poolId) throw new ArchiveFormatError(`manifest of pool ${String(env.poolId)}, not ${poolId}`);
  if (createHash('sha256').update(env.body).digest('hex') !== env.sha256)
    throw new ArchiveFormatError(`manifest ${env.name}: checksum mismatch`);
  let text = env.body;
  if (env.encrypted === true) {
    if (!key) throw new ArchiveError('EKEYREJECTED', `manifest ${env.name} is encrypted and no key was given`);
    const open = unseal(key, Buffer.from(env.body, 'base64'), aad(poolId, env.name));
    if (!open) throw new ArchiveFormatError(`manifest ${env.name}: authentication failed`);
    text = open.toString('utf8');
  } else if (env.encrypted !== false || key) {
    throw new ArchiveFormatError(`manifest ${env.name}: encryption flag does not match the pool`);
  }
  let p: unknown;
  try {
    p = JSON.parse(text);
  } catch (err) {
    throw new ArchiveFormatError(`manifest ${env.name}: body is not JSON: ${(err as Error).message}`);
  }
  return checkManifest(p, env.name, poolId);
}

function checkManifest(p: unknown, name: string, poolId: string): PointManifest {
  const bad = (what: string): never => {
    throw new ArchiveFormatError(`manifest ${name}: ${what}`);
  };
  if (!isObj(p)) return bad('not an object');
  if (p.name !== name || p.poolId !== poolId) bad('name or pool does not match its envelope');
  if (
    !isNat(p.created) ||
    !isStrOrNull(p.group) ||
    !isNatOrNull(p.seq) ||
    !isNatOrNull(p.time) ||
    !isStrOrNull(p.marker) ||
    !isStrOrNull(p.predecessor)
  )
    bad('bad point fields');
  if (
    p.quiesce !== null &&
    !(isObj(p.quiesce) && (p.quiesce.kind === 'crash' || p.quiesce.kind === 'application') && typeof p.quiesce.ok === 'boolean')
  )
    bad('bad quiesce');
  if (p.scheme !== 'sha256' && p.scheme !== 'hmac-sha256') bad('unknown scheme');
  if (typeof p.compression !== 'string' || typeof p.encrypted !== 'boolean' || !isObj(p.meta)) bad('bad format fields');
  try {
    checkLeafSize(p.leafSize as number);
    checkFanout(p.fanout as number);
  } catch (err) {
    bad((err as Error).message);
  }
  if (!Array.isArray(p.volumes) || p.volumes.length === 0 || p.volumes.length > 4096) return bad('bad volume list');
  const seen = new Set<string>();
  for (const v of p.volumes as unknown[]) {
    if (!isObj(v) || typeof v.volume !== 'string' || seen.has(v.volume) || !isNat(v.size) || typeof v.root !== 'string' || !isObj(v.stats))
      return bad('bad volume entry');
    seen.add(v.volume);
    const s = shapeOf(v.size, p.leafSize as number, p.fanout as number);
    if (v.height !== s.height || v.leaves !== s.leaves) bad(`volume ${v.volume}: tree shape does not match its size`);
    try {
      parseHandle(v.root);
    } catch (err) {
      bad(`volume ${v.volume}: ${(err as Error).message}`);
    }
  }
  return p as unknown as PointManifest;
}
