/**
 * Partition tables as sfdisk writes them (MBR with logical partitions,
 * GPT), the backup GPT when the primary is damaged, a filesystem with no
 * table, and other filesystems named by their signatures and refused with
 * a clear "not supported yet".
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FsError, listPartitions, memoryImage, openFilesystem, openImageFile, type FsImage } from '../src/fs';
import { buildTree, requireTools, makeDisk, makeFs, tempDir, writeInto } from './helpers/fs-images';
import { compareWithSleuthkit } from './helpers/fs-oracle';

const TOOLS = ['sfdisk', 'fls', 'icat', 'mkfs.ext4', 'mkswap'];
const MiB = 1024 * 1024;

async function withFile<T>(file: string, fn: (img: FsImage) => Promise<T>): Promise<T> {
  const img = await openImageFile(file);
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}

/** Boot sectors and superblocks of filesystems we only name. */
function signature(kind: string, size: number): Buffer {
  const b = Buffer.alloc(size);
  switch (kind) {
    case 'xfs':
      b.write('XFSB', 0, 'latin1');
      break;
    case 'luks':
      Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 1]).copy(b, 0);
      break;
    case 'ntfs':
      b[0] = 0xeb;
      b.write('NTFS    ', 3, 'latin1');
      b.writeUInt16LE(512, 11);
      b[510] = 0x55;
      b[511] = 0xaa;
      break;
    case 'vfat':
      b[0] = 0xeb;
      b.write('MSDOS5.0', 3, 'latin1');
      b.writeUInt16LE(512, 11);
      b.write('FAT32   ', 0x52, 'latin1');
      b[510] = 0x55;
      b[511] = 0xaa;
      break;
    case 'btrfs':
      b.write('_BHRfS_M', 0x10040, 'latin1');
      break;
    case 'lvm2':
      b.write('LABELONE', 512, 'latin1');
      b.write('LVM2 001', 512 + 24, 'latin1');
      break;
  }
  return b;
}

test('MBR with primary, extended and logical partitions, as sfdisk made it', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  t.teardown(tmp.cleanup);
  const disk = path.join(tmp.dir, 'disk.img');
  const table = makeDisk(
    disk,
    128,
    'label: dos\nstart=2048, size=40960, type=83\nsize=40960, type=83\ntype=5\nsize=30720, type=83\nsize=30720, type=82\n',
  );
  const src = buildTree(path.join(tmp.dir, 'src'), { seed: 21, blobs: 10 });
  const kinds = { 1: ['ext4', 4096], 2: ['ext2', 1024], 5: ['ext3', 1024] } as const;
  for (const [idx, [kind, blockSize]] of Object.entries(kinds)) {
    const p = table.partitions.find((x) => x.index === Number(idx))!;
    const img = path.join(tmp.dir, `p${idx}.img`);
    makeFs(img, src, { kind, blockSize, sizeMiB: p.size / MiB });
    writeInto(disk, p.offset, img);
  }
  const swap = path.join(tmp.dir, 'swap.img');
  fs.writeFileSync(swap, Buffer.alloc(8 * MiB));
  const { execFileSync } = await import('node:child_process');
  execFileSync('mkswap', [swap], { stdio: 'ignore', env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
  writeInto(disk, table.partitions.find((x) => x.index === 6)!.offset, swap);

  await withFile(disk, async (img) => {
    const got = await listPartitions(img);
    t.is(got.scheme, 'mbr');
    t.is(`0x${got.diskId}`, table.id);
    t.deepEqual(got.warnings, []);
    const expected = table.partitions.filter((p) => p.type !== '5');
    t.deepEqual(
      got.partitions.map((p) => [p.index, p.offset, p.size, p.type, p.kind]),
      expected.map((p) => [p.index, p.offset, p.size, `0x${p.type.padStart(2, '0')}`, p.index <= 4 ? 'primary' : 'logical']),
    );
    t.deepEqual(
      got.partitions.map((p) => p.content?.type),
      ['ext4', 'ext2', 'ext3', 'swap'],
    );
    for (const p of got.partitions.slice(0, 3)) {
      const efs = await openFilesystem(img, p);
      t.is(efs.where, `partition ${p.index} (${p.content!.type})`);
      const r = await compareWithSleuthkit(t, efs, disk, { offset: p.offset, src, icatSample: 4 });
      t.true(r.entries > 40);
    }
    const err = await t.throwsAsync(openFilesystem(img, got.partitions[3]!), { instanceOf: FsError });
    t.is(err!.code, 'UNSUPPORTED');
    t.is(err!.message, 'partition 6 (swap): filesystem: swap is not supported yet');
  });
});

test('GPT as sfdisk made it, and the backup GPT when the primary is damaged', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  t.teardown(tmp.cleanup);
  const disk = path.join(tmp.dir, 'disk.img');
  const table = makeDisk(
    disk,
    96,
    'label: gpt\nsize=24MiB, name="root"\nsize=16MiB, name="data"\nsize=8MiB, name="x"\nsize=8MiB, name="l"\nsize=8MiB, name="n"\n',
  );
  const src = buildTree(path.join(tmp.dir, 'src'), { seed: 22, blobs: 10, special: false });
  const p1 = table.partitions[0]!;
  const p2 = table.partitions[1]!;
  makeFs(path.join(tmp.dir, 'p1.img'), src, { kind: 'ext4', blockSize: 4096, sizeMiB: 24 });
  makeFs(path.join(tmp.dir, 'p2.img'), src, { kind: 'ext4', blockSize: 1024, sizeMiB: 16, features: '^64bit,^flex_bg' });
  writeInto(disk, p1.offset, path.join(tmp.dir, 'p1.img'));
  writeInto(disk, p2.offset, path.join(tmp.dir, 'p2.img'));
  const fd = fs.openSync(disk, 'r+');
  for (const [i, kind] of [
    [2, 'xfs'],
    [3, 'luks'],
    [4, 'ntfs'],
  ] as const)
    fs.writeSync(fd, signature(kind, 8192), 0, 8192, table.partitions[i]!.offset);
  fs.closeSync(fd);

  const expectTable = async (img: FsImage): Promise<void> => {
    const got = await listPartitions(img);
    t.is(got.scheme, 'gpt');
    t.is(got.diskId, table.id.toLowerCase());
    t.deepEqual(
      got.partitions.map((p) => [p.index, p.offset, p.size, p.type, p.uuid, p.name, p.content?.type]),
      table.partitions.map((p, i) => [
        p.index,
        p.offset,
        p.size,
        p.type.toLowerCase(),
        p.uuid!.toLowerCase(),
        p.name,
        ['ext4', 'ext4', 'xfs', 'luks', 'ntfs'][i],
      ]),
    );
  };
  const image = fs.readFileSync(disk);
  await expectTable(memoryImage(image));
  await withFile(disk, async (img) => {
    const parts = (await listPartitions(img)).partitions;
    for (const p of parts.slice(0, 2))
      await compareWithSleuthkit(t, await openFilesystem(img, p), disk, { offset: p.offset, src, icatSample: 4 });
    for (const [p, kind] of [
      [parts[2]!, 'xfs'],
      [parts[3]!, 'luks'],
      [parts[4]!, 'ntfs'],
    ] as const) {
      await t.throwsAsync(openFilesystem(img, p), {
        instanceOf: FsError,
        message: `partition ${p.index} (${kind}): filesystem: ${kind} is not supported yet`,
      });
    }
  });

  // Damage the primary header, then its entry array: the backup at the disk's end takes over.
  for (const [offset, what] of [
    [512 + 40, 'header CRC mismatch'],
    [1024 + 100, 'entry array CRC mismatch'],
  ] as const) {
    const bad = Buffer.from(image);
    bad[offset]! ^= 0xff;
    await expectTable(memoryImage(bad));
    const w = (await listPartitions(memoryImage(bad))).warnings;
    t.is(w.length, 1);
    t.regex(w[0]!, new RegExp(`${what}: using the backup GPT`));
  }
  // Both damaged: an error naming both.
  const both = Buffer.from(image);
  both[512 + 40]! ^= 0xff;
  both[both.length - 512 + 40]! ^= 0xff;
  const err = await t.throwsAsync(listPartitions(memoryImage(both)), { instanceOf: FsError });
  t.is(err!.code, 'CORRUPT');
  t.regex(
    err!.message,
    /^GPT: primary and backup headers: GPT primary header: header CRC mismatch; GPT backup header: header CRC mismatch$/,
  );
});

test('a filesystem with no table is the whole disk; other signatures are named', async (t) => {
  for (const kind of ['xfs', 'luks', 'ntfs', 'vfat', 'btrfs', 'lvm2']) {
    const img = memoryImage(signature(kind, 1 * MiB));
    const table = await listPartitions(img);
    t.is(table.scheme, 'none', kind);
    t.deepEqual(
      table.partitions.map((p) => [p.index, p.offset, p.size, p.label, p.content?.type, p.content?.supported]),
      [[0, 0, MiB, 'whole disk', kind, false]],
    );
    await t.throwsAsync(openFilesystem(img), {
      instanceOf: FsError,
      message: `whole disk (${kind}): filesystem: ${kind} is not supported yet`,
    });
  }
  const zeros = memoryImage(Buffer.alloc(MiB));
  t.is((await listPartitions(zeros)).partitions[0]!.content?.type, 'unknown');
  await t.throwsAsync(openFilesystem(zeros), { instanceOf: FsError, message: 'whole disk: filesystem: no known filesystem signature' });
});

test('a whole-disk ext4 image opens without a table', async (t) => {
  requireTools(...TOOLS);
  const tmp = tempDir();
  t.teardown(tmp.cleanup);
  const src = buildTree(path.join(tmp.dir, 'src'), { seed: 23, blobs: 5, special: false });
  const image = path.join(tmp.dir, 'fs.img');
  makeFs(image, src, { kind: 'ext4', blockSize: 4096, sizeMiB: 16 });
  await withFile(image, async (img) => {
    const table = await listPartitions(img);
    t.is(table.scheme, 'none');
    t.is(table.partitions[0]!.content?.type, 'ext4');
    const efs = await openFilesystem(img, table.partitions[0]);
    t.is(efs.where, 'whole disk (ext4)');
    t.is(table.partitions[0]!.content?.uuid ?? '', efs.superblock.uuid);
  });
});

test('hostile MBRs: a looping EBR chain, partitions past the disk, logicals outside their container', async (t) => {
  const disk = Buffer.alloc(4 * MiB);
  const entry = (sector: Buffer, slot: number, type: number, first: number, count: number): void => {
    const o = 446 + 16 * slot;
    sector[o + 4] = type;
    sector.writeUInt32LE(first, o + 8);
    sector.writeUInt32LE(count, o + 12);
  };
  const mbr = disk.subarray(0, 512);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  entry(mbr, 0, 0x83, 2048, 2048);
  entry(mbr, 1, 0x83, 6000, 100_000); // past the 8192-sector disk
  entry(mbr, 2, 0x05, 4096, 4096);
  const ebr1 = disk.subarray(4096 * 512, 4097 * 512);
  ebr1[510] = 0x55;
  ebr1[511] = 0xaa;
  entry(ebr1, 0, 0x83, 64, 512); // logical 5
  entry(ebr1, 1, 0x05, 1024, 1024); // next EBR at 4096 + 1024
  const ebr2 = disk.subarray((4096 + 1024) * 512, (4096 + 1025) * 512);
  ebr2[510] = 0x55;
  ebr2[511] = 0xaa;
  entry(ebr2, 0, 0x83, 64, 100_000); // outside the extended partition
  entry(ebr2, 1, 0x05, 0, 1024); // links back to the first EBR: a loop
  const table = await listPartitions(memoryImage(disk), { probe: false });
  t.deepEqual(
    table.partitions.map((p) => [p.index, p.offset / 512, p.size / 512]),
    [
      [1, 2048, 2048],
      [5, 4096 + 64, 512],
    ],
  );
  t.is(table.warnings.length, 3, table.warnings.join('\n'));
  t.regex(table.warnings.join('\n'), /MBR partition 2: sectors 6000\.\.105999 run past the disk/);
  t.regex(table.warnings.join('\n'), /outside its extended partition; skipped/);
  t.regex(table.warnings.join('\n'), /EBR chain loops back to sector 4096; stopped/);
});
