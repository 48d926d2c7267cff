/**
 * GroupJournal recovery, deterministically: the states a crash can leave in
 * the journal directory, and what start-up must do with each.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ContainerWriter, listContainers, verifyContainer } from '../src/lfc';
import { ContainerKind, RecordKind, containerFileName } from '../src/lfc';
import { GroupJournal, type CommitInfo, type ManagerLink, type SealedContainerRef } from '../src/journal/group-journal';

const silent = { info() {}, warn() {}, error() {}, debug() {} };

function recordingLink(): { link: ManagerLink; submitted: SealedContainerRef[] } {
  const submitted: SealedContainerRef[] = [];
  return {
    submitted,
    link: {
      submit: async (ref): Promise<CommitInfo> => {
        submitted.push(ref);
        return new Promise(() => {}); // never commits: the files stay for inspection
      },
    },
  };
}

async function writeContainer(dir: string, n: number, firstSeq: number, count: number): Promise<ContainerWriter> {
  const w = await ContainerWriter.create(dir, ContainerKind.AILFC, { groupId: 1, containerId: n, blockSize: 4096 });
  for (let i = 0; i < count; i++) {
    await w.append(
      { kind: RecordKind.Write, volumeId: 1, seq: firstSeq + i, time: Date.now(), offset: i * 4096, length: 4096 },
      Buffer.alloc(4096, i + 1),
    );
  }
  return w;
}

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'gj-'));
}

test('a container sealed but not yet renamed is renamed, not sealed a second time', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const w = await writeContainer(dir, 1, 1, 5);
  const sealed = await w.seal();
  // Put it back under its active name, as if the crash came before the rename.
  fs.renameSync(sealed.path, path.join(dir, containerFileName('active', 1)));
  const { link, submitted } = recordingLink();
  const j = await GroupJournal.open({ dir, groupId: 1, link, committedContainer: 0, committedSeq: 0, logger: silent, sealAgeMs: 0 });
  t.teardown(() => j.close());
  t.is(submitted.length, 1);
  t.is(submitted[0]!.containerId, 1);
  const v = await verifyContainer(submitted[0]!.path);
  t.true(v.ok, JSON.stringify(v));
  t.is(j.status().nextSeq, 6, 'sequence continues after the recovered records');
});

test('an empty spare left by a crash does not leave a gap in container numbers', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const active = await writeContainer(dir, 3, 10, 4); // records: will be sealed at start-up
  await active.close();
  const spare = await writeContainer(dir, 4, 0, 0); // the pre-created spare, empty
  await spare.close();
  const { link, submitted } = recordingLink();
  const j = await GroupJournal.open({ dir, groupId: 1, link, committedContainer: 2, committedSeq: 9, logger: silent, sealAgeMs: 0 });
  t.deepEqual(
    submitted.map((s) => s.containerId),
    [3],
  );
  t.is(j.status().active!.containerId, 4, 'the next container takes the id right after the last one with records');
  const seq = j.reserve();
  t.is(seq, 14);
  await j.append(seq, RecordKind.Write, 1, 0, 512, Buffer.alloc(512, 9));
  const r = await j.seal('command');
  t.is(r!.containerId, 4);
  t.deepEqual(
    submitted.map((s) => s.containerId),
    [3, 4],
  );
  await j.close();
  const left = (await listContainers(dir)).map((c) => `${c.kind}-${c.n}`);
  t.deepEqual(left.sort(), ['ailfc-3', 'ailfc-4']);
});

test('catchUp waits for the containers sealed before it, not for ones sealed while writes go on', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A manager that commits a container only when the test says so.
  const release = new Map<number, () => void>();
  const link: ManagerLink = {
    submit: (ref) =>
      new Promise<CommitInfo>((resolve) => {
        release.set(ref.containerId, () =>
          resolve({
            groupId: 1,
            containerId: ref.containerId,
            firstSeq: ref.footer.firstSeq,
            lastSeq: ref.footer.lastSeq,
            firstTime: ref.footer.firstTime,
            lastTime: ref.footer.lastTime,
            blocks: ref.footer.recordCount,
            bytesApplied: ref.footer.payloadBytes,
          }),
        );
      }),
  };
  const j = await GroupJournal.open({ dir, groupId: 1, link, committedContainer: 0, committedSeq: 0, logger: silent, sealAgeMs: 0 });
  t.teardown(() => j.close());
  const write = async (): Promise<void> => {
    const seq = j.reserve();
    await j.append(seq, RecordKind.Write, 1, 0, 512, Buffer.alloc(512, seq));
  };
  await write();
  await j.seal('command'); // container 1
  await write();
  let caughtUp = false;
  const c = j.catchUp().then((r) => {
    caughtUp = true;
    return r;
  }); // seals container 2
  // Once container 2 is handed over, the next write lands in container 3
  // (a fixed sleep here raced catchUp's seal on a loaded machine).
  for (let i = 0; i < 6000 && !release.has(2); i++) await new Promise((r) => setTimeout(r, 10));
  // Writes go on and more containers are sealed while catchUp waits.
  await write();
  await j.seal('age'); // container 3
  // Handing a sealed container to the link is asynchronous: wait for it, not for a fixed time.
  for (let i = 0; i < 6000 && release.size < 3; i++) await new Promise((r) => setTimeout(r, 10));
  t.deepEqual([...release.keys()].sort(), [1, 2, 3]);
  release.get(1)!();
  await new Promise((r) => setTimeout(r, 20));
  t.false(caughtUp, 'container 2 is not committed yet');
  release.get(2)!();
  const last = await Promise.race([c, new Promise<null>((r) => setTimeout(() => r(null), 2000))]);
  t.true(caughtUp, 'catchUp returned although container 3 is still pending');
  t.is(last?.containerId, 2);
  t.deepEqual(j.status().sealedPending, [3]);
  release.get(3)!();
});

/** A link whose commits the test releases one by one. */
function heldLink(): { link: ManagerLink; submitted: SealedContainerRef[]; commitNext(): void } {
  const submitted: SealedContainerRef[] = [];
  const waiting: Array<() => void> = [];
  return {
    submitted,
    commitNext: () => waiting.shift()?.(),
    link: {
      submit: (ref): Promise<CommitInfo> => {
        submitted.push(ref);
        const f = ref.footer;
        return new Promise((resolve) =>
          waiting.push(() =>
            resolve({
              groupId: 1,
              containerId: ref.containerId,
              firstSeq: f.firstSeq,
              lastSeq: f.lastSeq,
              firstTime: f.firstTime,
              lastTime: f.lastTime,
              blocks: 0,
              bytesApplied: 0,
            }),
          ),
        );
      },
    },
  };
}

async function until(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!ok()) throw new Error(`timed out waiting for ${what}`);
}

async function appendWrites(j: GroupJournal, n: number, size: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const seq = j.reserve();
    await j.append(seq, RecordKind.Write, 1, (seq % 64) * size, size, Buffer.alloc(size, seq & 0xff));
  }
}

test.serial(
  'link pool: containers seal at the pool size and wait for room; only a full active container with no room degrades',
  async (t) => {
    const dir = tmp();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const { link, submitted, commitNext } = heldLink();
    const POOL = 1024 * 1024;
    const j = await GroupJournal.open({
      dir,
      groupId: 1,
      link,
      committedContainer: 0,
      committedSeq: 0,
      logger: silent,
      sealAgeMs: 0,
      poolBytes: POOL,
    });
    t.teardown(() => j.close());
    const REC = 64 * 1024;
    // 1.5 MiB with nothing committed: the first container seals at the pool size
    // (the 16th record would not fit; it still goes in while the seal switches containers)...
    await appendWrites(j, 16, REC);
    await until('the first seal', () => submitted.length === 1);
    t.is(submitted[0]!.footer.recordCount, 16);
    // ... and the second holds the rest.
    await appendWrites(j, 8, REC);
    await new Promise((r) => setTimeout(r, 50));
    t.is(submitted.length, 1, 'one container sealed');
    t.is(j.status().degraded, null, 'a burst under twice the pool does not degrade');
    // A command seal is not held back; an age seal would be (no room: 1 MiB pending).
    // Filling the active container too, with the first still pending: now it degrades.
    await appendWrites(j, 10, REC);
    await new Promise((r) => setTimeout(r, 50));
    const deg = j.status().degraded;
    t.truthy(deg, 'the active container is full and the pool has no room');
    t.is(deg!.kind, 'pool');
    t.true(typeof deg!.fromTime === 'number');
    const pos = j.position();
    t.deepEqual(pos.open && { fromSeq: pos.open.fromSeq, state: pos.open.state }, { fromSeq: deg!.fromSeq, state: 'degraded' });
    commitNext();
    commitNext();
  },
);

test.serial('link pool: an age seal waits while the pool is full and happens on the commit that makes room', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { link, submitted, commitNext } = heldLink();
  const POOL = 1024 * 1024;
  const j = await GroupJournal.open({
    dir,
    groupId: 1,
    link,
    committedContainer: 0,
    committedSeq: 0,
    logger: silent,
    sealAgeMs: 100,
    poolBytes: POOL,
  });
  t.teardown(() => j.close());
  await appendWrites(j, 16, 64 * 1024); // one full container (sealed) ...
  await until('the first seal', () => submitted.length === 1);
  await appendWrites(j, 4, 64 * 1024); // ... and a partial one, due for its age seal after 100 ms
  await new Promise((r) => setTimeout(r, 400));
  t.is(submitted.length, 1, 'the age seal of the partial container waits: no room');
  commitNext();
  await new Promise((r) => setTimeout(r, 200));
  await until('the deferred seal', () => submitted.length === 2);
  t.is(submitted[1]!.footer.recordCount, 4, 'sealed once the first commit made room');
  t.is(j.status().degraded, null);
  commitNext();
});

test('findPending names uncommitted writes by seq and by time without sealing; position() is the last write', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { link, submitted } = heldLink();
  const j = await GroupJournal.open({ dir, groupId: 1, link, committedContainer: 0, committedSeq: 0, logger: silent, sealAgeMs: 0 });
  t.teardown(() => j.close());
  await appendWrites(j, 5, 4096);
  await j.seal('test');
  const mid = Date.now();
  await new Promise((r) => setTimeout(r, 5));
  await appendWrites(j, 5, 4096);
  t.is(submitted.length, 1);
  t.is(j.position().seq, 10);
  const before = j.status().active!.records;
  t.is((await j.findPending({ seq: 10 }))!.seq, 10, 'latest: the last record');
  t.is((await j.findPending({ seq: 7 }))!.containerId, j.status().active!.containerId, 'in the active container');
  t.is((await j.findPending({ seq: 3 }))!.containerId, 1, 'in a sealed container waiting for the manager');
  t.is((await j.findPending({ ms: mid }))!.seq, 5, 'the last write at or before a time');
  t.is(await j.findPending({ ms: 0 }), null, 'older than every uncommitted write');
  t.is(j.status().active!.records, before, 'nothing was sealed');
  t.is(submitted.length, 1);
});
