/**
 * Damage a scrub found in a group's stored data, and the rule that follows
 * from it: a read that needs damaged data fails with EIO naming it, never
 * returns wrong bytes; reads that do not need it go on.
 *
 *   container  a history file (AILFC_n or BILFC_n) that failed its
 *              checksums, or differs from the catalog: every read from it
 *              refuses. With `blocks`, only those blocks of a BILFC are
 *              bad (their before-image was read from a damaged replica
 *              block when T_n was applied).
 *   replica    a block of the replicated image that differs from what its
 *              last transaction's BILFC and AILFC say it must hold: the
 *              points that read it from the replica (those after its last
 *              change) refuse it; earlier points read their BILFCs.
 *
 * Marks live in the index meta "damage" (so they survive a restart) and
 * are cleared by a later scrub that finds the data good again, or when
 * retention removed the file.
 */
import * as path from 'node:path';
import type { ManagerCatalog } from './catalog';

export interface DamageMark {
  kind: 'container' | 'replica';
  /** container: history file name; replica: the replica's file name. */
  file: string;
  /** container: the transaction and which of its files. */
  n?: number;
  container?: 'ailfc' | 'bilfc';
  /** container: where the check failed (-1: the file as a whole). */
  offset?: number;
  /** replica (and block-level container marks): the volume and its blocks. */
  volumeId?: number;
  blocks?: number[];
  problem: string;
  /** ISO time it was found. */
  found: string;
}

/** A read that needs damaged data: errno EIO, with the damaged thing named. */
export class DamagedError extends Error {
  readonly code = 'EIO';
  constructor(message: string) {
    super(message);
    this.name = 'DamagedError';
  }
}

export class DamageRegistry {
  private marks: DamageMark[];
  /** file name -> whole-file mark, or the bad blocks "volumeId:block" of a block-level one. */
  private byFile = new Map<string, { mark: DamageMark; blocks: Set<string> | null }>();
  /** volumeId -> bad replica blocks. */
  private replica = new Map<number, Map<number, DamageMark>>();

  constructor(private readonly catalog: ManagerCatalog) {
    this.marks = catalog.metaValue<DamageMark[]>('damage') ?? [];
    this.index();
  }

  /** No damage known: readers skip every check. */
  get empty(): boolean {
    return this.marks.length === 0;
  }

  list(): DamageMark[] {
    return this.marks.map((m) => ({ ...m }));
  }

  /** Replaces the marks (the result of a scrub, or of a change) and persists them. */
  async set(marks: DamageMark[]): Promise<void> {
    this.marks = marks;
    this.index();
    await this.catalog.putMetaValue('damage', marks.length ? marks : undefined);
  }

  async add(marks: DamageMark[]): Promise<void> {
    if (marks.length) await this.set([...this.marks, ...marks]);
  }

  /** The mark that makes a whole history file unreadable, if any. */
  fileMark(file: string): DamageMark | undefined {
    const e = this.byFile.get(path.basename(file));
    return e && e.blocks === null ? e.mark : undefined;
  }

  /** Throws DamagedError if reading `block` of `volumeId` from history file `file` needs damaged data. */
  checkFile(file: string, volumeId: number, block: number): void {
    const e = this.byFile.get(path.basename(file));
    if (!e) return;
    if (e.blocks === null || e.blocks.has(`${volumeId}:${block}`)) throw damaged(e.mark, file, volumeId, block);
  }

  /** Throws DamagedError if replica block `block` of `volumeId` is damaged. */
  checkReplica(file: string, volumeId: number, block: number): void {
    const m = this.replica.get(volumeId)?.get(block);
    if (m) throw damaged(m, file, volumeId, block);
  }

  /** Damaged replica blocks of a volume among [start, start+count). */
  replicaBlocks(volumeId: number, start: number, count: number): number[] {
    const bad = this.replica.get(volumeId);
    if (!bad) return [];
    const out: number[] = [];
    for (const b of bad.keys()) if (b >= start && b < start + count) out.push(b);
    return out.sort((x, y) => x - y);
  }

  private index(): void {
    this.byFile = new Map();
    this.replica = new Map();
    for (const m of this.marks) {
      if (m.kind === 'replica') {
        let per = this.replica.get(m.volumeId!);
        if (!per) this.replica.set(m.volumeId!, (per = new Map()));
        for (const b of m.blocks ?? []) per.set(b, m);
        continue;
      }
      const cur = this.byFile.get(m.file);
      if (!m.blocks) this.byFile.set(m.file, { mark: m, blocks: null });
      else if (!cur || cur.blocks) {
        const blocks = cur?.blocks ?? new Set<string>();
        for (const b of m.blocks) blocks.add(`${m.volumeId}:${b}`);
        this.byFile.set(m.file, { mark: cur?.mark ?? m, blocks });
      }
    }
  }
}

function damaged(m: DamageMark, file: string, volumeId: number, block: number): DamagedError {
  const where =
    m.kind === 'replica'
      ? `the replica of volume ${volumeId} (${file}) is damaged at block ${block}`
      : `${m.container ? `${m.container.toUpperCase()}_${m.n} (${file})` : file} is damaged${m.blocks ? ` at block ${block} of volume ${volumeId}` : ''}`;
  return new DamagedError(`${where}: ${m.problem} (found by a scrub at ${m.found}); points that need it cannot be read`);
}

/**
 * T_n is about to be committed over replica blocks a scrub marked damaged:
 * its BILFC copied their bad content as before-images, so those blocks of
 * BILFC_n are marked too (the replica marks stay until a scrub finds the
 * blocks good again).
 */
export function inheritedMarks(
  damage: DamageRegistry,
  n: number,
  runs: Array<{ volumeId: number; start: number; count: number }>,
  bilfcFile: string,
): DamageMark[] {
  if (damage.empty) return [];
  const out: DamageMark[] = [];
  for (const r of runs) {
    const blocks = damage.replicaBlocks(r.volumeId, r.start, r.count);
    if (blocks.length)
      out.push({
        kind: 'container',
        file: path.basename(bilfcFile),
        n,
        container: 'bilfc',
        volumeId: r.volumeId,
        blocks,
        problem: 'its before-images of these blocks were read from damaged replica blocks',
        found: new Date().toISOString(),
      });
  }
  return out;
}

/**
 * The end of a scrub pass (scrub.ts): marks this pass re-examined and found good again,
 * and marks of files no transaction references any more, are dropped.
 * Block-level BILFC marks (inherited from a damaged replica block when
 * T_n was applied) cannot be re-examined and stay while their file does.
 */
export async function reconcileMarks(
  damage: DamageRegistry,
  live: Set<string>,
  examined: Set<string>,
  found: DamageMark[],
): Promise<number> {
  const keep: DamageMark[] = [];
  let cleared = 0;
  for (const m of damage.list()) {
    if (found.some((f) => sameMark(f, m))) {
      keep.push(m);
      continue;
    }
    if (m.kind === 'container') {
      if (live.has(m.file) && (m.blocks !== undefined || !examined.has(m.file))) keep.push(m);
      else cleared++;
      continue;
    }
    const blocks = (m.blocks ?? []).filter((b) => !examined.has(`replica:${m.volumeId}:${b}`));
    cleared += (m.blocks?.length ?? 0) - blocks.length;
    if (blocks.length) keep.push({ ...m, blocks });
  }
  await damage.set(dedupe(keep));
  return cleared;
}

function sameMark(a: DamageMark, b: DamageMark): boolean {
  return a.kind === b.kind && a.file === b.file && a.problem === b.problem && a.found === b.found;
}

/** One mark per container file and per replica block (the newest finding wins). */
function dedupe(marks: DamageMark[]): DamageMark[] {
  const out: DamageMark[] = [];
  const seenFile = new Set<string>();
  const seenBlock = new Set<string>();
  for (const m of [...marks].reverse()) {
    if (m.kind === 'container' && !m.blocks) {
      if (seenFile.has(m.file)) continue;
      seenFile.add(m.file);
      out.push(m);
    } else if (m.kind === 'replica') {
      const blocks = (m.blocks ?? []).filter((b) => !seenBlock.has(`${m.volumeId}:${b}`));
      for (const b of blocks) seenBlock.add(`${m.volumeId}:${b}`);
      if (blocks.length) out.push({ ...m, blocks });
    } else out.push(m);
  }
  return out.reverse();
}
