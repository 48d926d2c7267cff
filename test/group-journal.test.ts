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
  t.deepEqual(submitted.map((s) => s.containerId), [3]);
  t.is(j.status().active!.containerId, 4, 'the next container takes the id right after the last one with records');
  const seq = j.reserve();
  t.is(seq, 14);
  await j.append(seq, RecordKind.Write, 1, 0, 512, Buffer.alloc(512, 9));
  const r = await j.seal('command');
  t.is(r!.containerId, 4);
  t.deepEqual(submitted.map((s) => s.containerId), [3, 4]);
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
  await new Promise((r) => setTimeout(r, 20));
  // Writes go on and more containers are sealed while catchUp waits.
  await write();
  await j.seal('age'); // container 3
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
