/**
 * The resync cursor: a super transaction's resync interrupted by a second
 * overflow of the LFC pool resumes from where it stood, re-reading before
 * that point only the regions written while journaling was off again; it
 * does not start over. In process, with a real backup manager behind a
 * link the test opens and closes, so the counts are exact.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GroupJournal, type CommitInfo, type ManagerLink, type SealedContainerRef } from '../src/journal/group-journal';
import { ProtectedVolume } from '../src/journal/protected-volume';
import { StateMap } from '../src/journal/state-map';
import { ResyncController } from '../src/link/resync';
import { BackupManager } from '../src/manager/backup-manager';
import { MemoryExport } from '../src/storage/memory-export';

const silent = { info() {}, warn() {}, error() {}, debug() {} } as never;
const KiB = 1024;
const MiB = 1024 * KiB;
const REGION = 64 * KiB;
const REGIONS = 96;
const SIZE = REGIONS * REGION;

/** A link to a local manager that only passes containers on while it is up. */
class GatedLink implements ManagerLink {
  private up = true;
  private waiting: Array<() => void> = [];
  /** Goes down by itself when the first container of a super transaction comes (a cable cut mid-resync, at a known point). */
  downOnSuper = false;
  constructor(private readonly manager: BackupManager) {}
  submit(ref: SealedContainerRef): Promise<CommitInfo> {
    const go = (): Promise<CommitInfo> => this.manager.submit(ref);
    if (ref.superTransaction && this.downOnSuper) {
      this.downOnSuper = false;
      this.up = false;
    }
    if (this.up) return go();
    return new Promise<void>((r) => this.waiting.push(r)).then(go);
  }
  down(): void {
    this.up = false;
  }
  open(): void {
    this.up = true;
    for (const w of this.waiting.splice(0)) w();
  }
}

let debugState: (() => string) | null = null;

async function until(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${debugState?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function fill(tag: number, len = REGION): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 8) b.writeUInt32LE((tag * 2654435761 + i) >>> 0, i);
  return b;
}

test('a resync interrupted by another pool overflow resumes from its cursor: it re-reads only what remains and what changed meanwhile', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rw-resync-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const manager = await BackupManager.open(path.join(dir, 'manager'), {
    groupId: 1,
    volumes: [{ volumeId: 1, name: 'v', size: SIZE }],
    logger: silent,
  });
  const link = new GatedLink(manager);
  const journal = await GroupJournal.open({
    dir: path.join(dir, 'journal'),
    groupId: 1,
    link,
    committedContainer: 0,
    committedSeq: 0,
    logger: silent,
    poolBytes: 4 * MiB,
    sealAgeMs: 0,
  });
  const production = new MemoryExport(SIZE);
  const stateMap = await StateMap.open(path.join(dir, 'statemap'), { volumeSize: SIZE, regionSize: REGION });
  journal.addStateMap(1, stateMap);
  const pv = new ProtectedVolume('v', 1, production, journal, stateMap);
  const resync = new ResyncController(journal, () => [pv], silent);
  debugState = () => JSON.stringify({ resync: resync.status(), journal: journal.status() });
  t.teardown(async () => {
    resync.close();
    await journal.close();
    await manager.close();
    await stateMap.close();
  });

  // The link goes down and every region is written: the 4 MiB pool overflows, the group degrades.
  link.down();
  for (let r = 0; !journal.isDegraded && r < 20 * REGIONS; r++) await pv.write((r % REGIONS) * REGION, fill(r), { fua: false });
  t.true(journal.isDegraded, 'the pool overflowed');
  // Degraded: only the state map tracks these.
  for (let r = 0; r < REGIONS; r++) await pv.write(r * REGION, fill(500 + r), { fua: false });
  t.is(stateMap.dirtyCount(), REGIONS);

  // The link comes back: the pool drains and the resync starts. The link goes down again when the resync's first container is sealed.
  link.downOnSuper = true;
  resync.start();
  link.open();
  await until('the resync to make progress', () => resync.status().lastRunBytes >= 2 * MiB && journal.pendingCount > 0);
  // The resync waits for room in the pool (never overflowing it itself); host writes fill it: degraded again.
  let w = 0;
  while (!journal.isDegraded) await pv.write(((w++ % 2) * 3 + 2) * REGION, fill(1000 + w), { fua: false });
  const pass1 = resync.status().lastRunBytes;
  const cursor = journal.superTransaction!.cursor!;
  t.truthy(cursor, 'the run records how far its resync got');
  t.true(cursor.offset >= 2 * MiB && cursor.offset < SIZE, `cursor at ${cursor.offset}`);
  // super.json keeps it: a restart resumes from it too.
  const saved = JSON.parse(fs.readFileSync(path.join(dir, 'journal', 'super.json'), 'utf8'));
  t.deepEqual(saved.run.cursor, cursor);
  // While degraded: regions 2 and 5 (before the cursor) and the last two (after it) change, unjournaled.
  const changedBefore = [2, 5];
  for (const r of [...changedBefore, REGIONS - 2, REGIONS - 1]) await pv.write(r * REGION, fill(2000 + r), { fua: false });

  // Back again: the run resumes. What it must re-read: the two regions before the cursor, and everything from the cursor on.
  const expected = changedBefore.length * REGION + (SIZE - cursor.offset);
  const runsBefore = resync.status().runs;
  link.open();
  await until('the super transaction to end', () => resync.status().runs > runsBefore && !journal.superTransaction && !journal.isDegraded);
  const pass2 = resync.status().lastRunBytes;
  t.log(`pass 1 re-read ${pass1} bytes before the interruption (cursor at ${cursor.offset}); pass 2 re-read ${pass2} bytes of ${SIZE}`);
  t.is(pass2, expected, 'the second pass re-read only what remained plus what changed meanwhile');
  t.true(pass2 < SIZE, 'it did not start over');

  // The replica equals production.
  await journal.catchUp();
  const replica = fs.readFileSync(manager.replicaPath(1));
  const prod = await production.read(0, SIZE);
  t.true(replica.equals(prod), 'replica = production');
  t.is(journal.status().superRun, null);
  t.false(fs.existsSync(path.join(dir, 'journal', 'super.json')), 'nothing left open');
});
