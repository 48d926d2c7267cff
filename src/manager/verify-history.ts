/**
 * Verification of a group's stored history (`rewind verify`, and a scrub
 * with `full`): containers' checksums and framing, and committed ones
 * against the catalog. Files checked since they were written are not read
 * again unless `full`; the record of them is the index meta "verified".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { verifyContainer } from '../lfc';
import type { ManagerCatalog } from './catalog';
import type { ContainerFileInfo } from './types';

/** history/ailfc-N.lfc, or ailfc-N.mA.lfc when retention merged T_A..T_N into T_N. */
const HISTORY_RE = /^(ailfc|bilfc)-(\d{16})(?:\.m\d{16})?\.lfc$/;

/** A history file whose content verifyHistory() checked, as it was then. */
interface VerifiedFile {
  size: number;
  bodyCrc: number;
}

export interface HistoryCheck {
  n: number;
  kind: 'ailfc' | 'bilfc';
  ok: boolean;
  offset?: number;
  problem?: string;
}

/**
 * Checks stored containers in history/ (checksums, framing) and, for
 * committed transactions, against the size and body CRC in the catalog;
 * a committed transaction whose file is missing is reported too.
 *
 * A container whose content was checked once since it was written is not
 * read again (its size is still compared), so verify stays fast as
 * history grows: `full` re-reads everything (what a scrub does). The
 * record of checked files lives in the index meta ("verified").
 */
export async function verifyHistory(catalog: ManagerCatalog, historyDir: string, opts: { full?: boolean } = {}): Promise<HistoryCheck[]> {
  const out: HistoryCheck[] = [];
  const seen = new Set<string>();
  const verified = new Map(Object.entries(catalog.metaValue<Record<string, VerifiedFile>>('verified') ?? {}));
  const names = (await fs.promises.readdir(historyDir)).filter((f) => HISTORY_RE.test(f)).sort();
  for (const name of names) {
    const m = HISTORY_RE.exec(name)!;
    const kind = m[1] as 'ailfc' | 'bilfc';
    const n = Number(m[2]);
    seen.add(name);
    const file = path.join(historyDir, name);
    const size = (await fs.promises.stat(file)).size;
    const rec = catalog.transaction(n);
    const want = rec?.[kind];
    const before = verified.get(name);
    if (
      !opts.full &&
      before &&
      before.size === size &&
      (!want || (want.file === name && want.size === size && want.bodyCrc === before.bodyCrc))
    ) {
      out.push({ n, kind, ok: true });
      continue;
    }
    verified.delete(name);
    const c = await checkStored(n, kind, file, size, want);
    // Only committed containers are remembered: an uncommitted one may still change.
    if (c.ok && want) verified.set(name, { size, bodyCrc: want.bodyCrc });
    out.push(c);
  }
  for (const name of [...verified.keys()]) if (!seen.has(name)) verified.delete(name);
  await catalog.putMetaValue('verified', Object.fromEntries(verified));
  for (const rec of catalog.transactions()) {
    for (const kind of ['ailfc', 'bilfc'] as const) {
      if (!seen.has(rec[kind].file)) out.push({ n: rec.n, kind, ok: false, problem: `${rec[kind].file} is missing` });
    }
  }
  out.sort((a, b) => a.n - b.n || (a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : 0));
  return out;
}

/**
 * Reads one stored container whole: its checksums and framing, and, when
 * the catalog has a record of it (`want`), its name, size and body CRC.
 */
export async function checkStored(
  n: number,
  kind: 'ailfc' | 'bilfc',
  file: string,
  size: number,
  want: ContainerFileInfo | undefined,
): Promise<HistoryCheck> {
  const v = await verifyContainer(file);
  if (!v.ok) return { n, kind, ok: false, offset: v.offset, problem: v.problem };
  if (want && (want.file !== path.basename(file) || want.size !== size || want.bodyCrc !== v.footer.bodyCrc)) {
    return {
      n,
      kind,
      ok: false,
      offset: -1,
      problem: `differs from the catalog: ${size} bytes, body CRC ${v.footer.bodyCrc}; catalog has ${want.size} bytes, CRC ${want.bodyCrc}`,
    };
  }
  return { n, kind, ok: true };
}
