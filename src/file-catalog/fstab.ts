/**
 * Mount points from the image's own /etc/fstab (seed 004's third tier: the
 * original mount point of what a snapshot imaged). A filesystem is matched
 * by UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/disk/by-* links, or a
 * device name whose trailing number is the partition (/dev/sda2,
 * /dev/vda1, /dev/nvme0n1p3; no number: the whole disk).
 */
import type { ExtFilesystem } from '../fs';
import type { FsContext } from './types';

export interface FstabLine {
  spec: string;
  mountPoint: string;
  type: string;
}

/** fstab's octal escapes (\040 for a space). */
function unoctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseFstab(text: string): FstabLine[] {
  const out: FstabLine[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    const f = line.split(/\s+/);
    if (f.length < 2) continue;
    out.push({ spec: unoctal(f[0]!), mountPoint: unoctal(f[1]!), type: f[2] ?? '' });
  }
  return out;
}

function matches(spec: string, c: FsContext): boolean {
  const eq = (a: string | undefined, b: string): boolean => a !== undefined && a.toLowerCase() === b.toLowerCase();
  let m = /^(UUID|LABEL|PARTUUID|PARTLABEL)=["']?(.*?)["']?$/.exec(spec);
  if (m) {
    const v = m[2]!;
    if (m[1] === 'UUID') return eq(c.uuid, v);
    if (m[1] === 'LABEL') return c.fsLabel === v;
    if (m[1] === 'PARTUUID') return eq(c.partitionUuid, v);
    return false; // PARTLABEL: GPT names are not kept in the context
  }
  m = /^\/dev\/disk\/by-(uuid|label|partuuid)\/(.+)$/.exec(spec);
  if (m) return matches(`${m[1]!.toUpperCase()}=${m[2]}`, c);
  m = /^\/dev\/(?:[shv]d[a-z]+|xvd[a-z]+|nvme\d+n\d+p?|mmcblk\d+p?)(\d*)$/.exec(spec);
  if (m) return m[1] === '' ? c.partition === 0 : Number(m[1]) === c.partition;
  return false;
}

/** Sets mountPoint on each context an fstab line names (the first fstab found wins per filesystem). */
export function applyFstab(lines: FstabLine[], contexts: FsContext[]): void {
  for (const c of contexts) {
    if (c.mountPoint !== null) continue;
    const hit = lines.find((l) => l.mountPoint.startsWith('/') && matches(l.spec, c));
    if (hit) c.mountPoint = hit.mountPoint;
  }
}

/** /etc/fstab of a filesystem, if it has one (at most 64 KiB are read). */
export async function readFstab(fs: ExtFilesystem): Promise<FstabLine[] | null> {
  let ino: number;
  try {
    ino = await fs.lookup('/etc/fstab', { follow: true });
  } catch {
    return null;
  }
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of fs.readFile(ino, { length: 64 * 1024 })) {
    parts.push(Buffer.from(c));
    n += c.length;
    if (n >= 64 * 1024) break;
  }
  return parseFstab(Buffer.concat(parts).toString('utf8'));
}
