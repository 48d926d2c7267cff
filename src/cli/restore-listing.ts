/** What restore-file restores: the file at PATH, or everything below the directory at PATH (parents first). */
import { ApiError, type ControlClient } from '../control/client';
import type { FileInfo, PointRecord } from '../file-catalog/service';
import { unescapeName } from '../fs/names';
import type { GlobalOptions } from './common';
import { ensureCataloged, vol } from './file-commands';

type Opts = GlobalOptions & { json?: boolean; progress?: boolean; at?: string; partition?: string };

const q = (p: Record<string, string | undefined>): string => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(p)) if (v !== undefined) s.set(k, v);
  return `?${s.toString()}`;
};

export interface Listing {
  point: PointRecord;
  /** The restored path itself (a file) or everything under it (a directory), parents first. */
  root: FileInfo | null;
  entries: FileInfo[];
}

/** What PATH is at the point (cataloging the point first if needed). */
export async function listForRestore(c: ControlClient, volume: string, pathArg: string, o: Opts): Promise<Listing> {
  const list = (
    extra: Record<string, string | undefined>,
    at: string | undefined,
  ): Promise<{ point: PointRecord; entries: FileInfo[]; next: string | null }> =>
    c.request('GET', vol(volume, `files${q({ at, path: pathArg, partition: o.partition, ...extra })}`));
  let first;
  try {
    first = await list({}, o.at);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409 && /cataloged/.test(err.message))) throw err;
    await ensureCataloged(c, volume, o.at, o);
    first = await list({}, o.at);
  }
  const at = `@seq:${first.point.seq}`;
  const want = unescapeName(normalize(pathArg));
  const only = first.entries.length === 1 ? first.entries[0]! : null;
  const self = only && Buffer.from(only.pathRaw, 'base64').equals(want) ? only : null;
  if (self && self.type !== 'dir') return { point: first.point, root: self, entries: [] };
  const entries: FileInfo[] = [];
  let next: string | null = null;
  do {
    const page = await list({ recursive: '1', ...(next ? { cursor: next } : {}) }, at);
    entries.push(...page.entries);
    next = page.next;
  } while (next);
  return { point: first.point, root: null, entries };
}

export function normalize(p: string): string {
  return p.replace(/\/+$/, '') || '/';
}
