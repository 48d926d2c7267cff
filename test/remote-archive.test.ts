/**
 * Two-role archive (issue 14): a consistency group whose volumes live on
 * an intercept is archived on the manager at one seq, and each volume of
 * the archived point reads back as it was (needs root, ip; see
 * helpers/remote.ts).
 */
import test from 'ava';
import * as crypto from 'node:crypto';
import { NbdClient } from '../src/nbd/client';
import { caughtUp, startPair, type Pair } from './helpers/remote';

const MiB = 1024 * 1024;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let o = 0; o < len; o += 32) crypto.createHash('sha256').update(`${seed}:${o}`).digest().copy(b, o);
  return b;
}

async function readAll(path: string, name: string, size: number): Promise<Buffer> {
  const c = await NbdClient.connect({ path, exportName: name });
  try {
    return await c.read(0, size);
  } finally {
    c.destroy();
  }
}

async function writeAll(p: Pair, name: string, data: Buffer): Promise<void> {
  const c = await NbdClient.connect({ path: p.i.nbdSocket, exportName: name });
  try {
    await c.write(0, data);
    await c.flush();
  } finally {
    c.destroy();
  }
}

test.serial(
  'two roles: a consistency group is archived on the manager at one seq; its volumes read back from the archived point',
  async (t) => {
    const p = await startPair(t, 'ar');
    const SIZE = 4 * MiB;
    await p.i.cliOk(['volume', 'create', 'x', '--size', '4M', '--group', 'g']);
    await p.i.cliOk(['volume', 'create', 'y', '--size', '4M', '--group', 'g']);
    const x = pattern(SIZE, 1);
    const y = pattern(SIZE, 2);
    await writeAll(p, 'x', x);
    await writeAll(p, 'y', y);
    await caughtUp(p, 'x');
    await caughtUp(p, 'y');

    const r = JSON.parse(await p.m.cliOk(['archive', 'g', '--at', 'latest', '--name', 'gm', '--json'])) as {
      point: { group: string; volumes: Array<{ volume: string }> };
    };
    t.is(r.point.group, 'g');
    t.deepEqual(r.point.volumes.map((v) => v.volume).sort(), ['x', 'y'], 'both volumes of the group, at one seq');

    // Later writes change production, not the archived point.
    await writeAll(p, 'x', pattern(SIZE, 3));
    await caughtUp(p, 'x');
    await p.m.cliOk(['clone', 'x', '--at', 'archive:gm', '--name', 'ax']);
    await p.m.cliOk(['clone', 'y', '--at', 'archive:gm', '--name', 'ay']);
    t.true((await readAll(p.m.nbdSocket, 'ax', SIZE)).equals(x), 'x from the archived point');
    t.true((await readAll(p.m.nbdSocket, 'ay', SIZE)).equals(y), 'y from the archived point');
  },
);
