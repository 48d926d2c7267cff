/**
 * base:allocation is truthful on every kind of export (issue 18): for a
 * plain volume, a protected volume, a snapshot, a clone (with writes of its
 * own) and a diff export, random writes, trims and write-zeroes (aligned
 * and not, some of them writing zero bytes as data), with seals between
 * them. For each export the whole block status is asked over NBD and every
 * extent flagged NBD_STATE_ZERO is read back: it must read as zeroes. The
 * images also equal the model, so a lie cannot hide behind a wrong read.
 */
import test from 'ava';
import fc from 'fast-check';
import { NbdClient } from '../src/nbd/client';
import { STATE_ZERO } from '../src/nbd/export';
import { startDaemon } from './helpers/daemon';
import { apiOk as api, cliOk as cli, readWhole } from './helpers/live';
import { pattern } from './helpers/nbd-fixtures';

const SIZE = 2 * 1024 * 1024;

type Op = { kind: 'write' | 'zeros' | 'trim' | 'zero'; offset: number; length: number; seed: number };

function apply(img: Buffer, op: Op): void {
  if (op.kind === 'write') pattern(op.length, op.seed).copy(img, op.offset);
  else img.fill(0, op.offset, op.offset + op.length);
}

async function run(c: NbdClient, op: Op): Promise<void> {
  if (op.kind === 'write') await c.write(op.offset, pattern(op.length, op.seed));
  else if (op.kind === 'zeros') await c.write(op.offset, Buffer.alloc(op.length));
  else if (op.kind === 'trim') await c.trim(op.offset, op.length);
  else await c.zero(op.offset, op.length);
}

/** Every ZERO extent of the export reads as zeroes; returns the extents checked (and the image). */
async function checkExport(port: number, name: string, want: Buffer): Promise<string | null> {
  const c = await NbdClient.connect({ port, exportName: name });
  try {
    const img = await readWhole(c, SIZE);
    if (!img.equals(want)) return `${name} does not read as the model`;
    let pos = 0;
    while (pos < SIZE) {
      const ext = await c.blockStatus(pos, SIZE - pos);
      if (!ext.length) return `${name}: empty block status at ${pos}`;
      for (const e of ext) {
        const len = Math.min(e.length, SIZE - pos);
        if (e.flags & STATE_ZERO) {
          const got = await c.read(pos, len);
          const bad = got.findIndex((b) => b !== 0);
          if (bad >= 0) return `${name}: block status says ZERO over ${pos}+${len}, but byte ${pos + bad} reads ${got[bad]}`;
        }
        pos += len;
        if (pos >= SIZE) break;
      }
    }
    return null;
  } finally {
    c.destroy();
  }
}

test.serial(
  'property: block status never reports ZERO over non-zero bytes (volume, protected volume, snapshot, clone, diff export)',
  async (t) => {
    const d = await startDaemon();
    t.teardown(() => d.cleanup());
    const opArb = fc.record({
      kind: fc.constantFrom<Op['kind']>('write', 'write', 'write', 'zeros', 'trim', 'zero'),
      offset: fc.oneof(
        fc.integer({ min: 0, max: SIZE / 4096 - 1 }).map((b) => b * 4096),
        fc.integer({ min: 0, max: SIZE - 1 }),
      ),
      length: fc.oneof(fc.constantFrom(4096, 65536, 131072), fc.integer({ min: 1, max: 200_000 })),
      seed: fc.integer({ min: 0, max: 1 << 30 }),
    });
    const caseArb = fc.record({
      ops: fc.array(fc.tuple(opArb, fc.boolean()), { minLength: 4, maxLength: 30 }),
      at: fc.tuple(
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
      ),
      cloneOps: fc.array(opArb, { minLength: 0, maxLength: 5 }),
    });
    let round = 0;
    const out = await fc.check(
      fc.asyncProperty(caseArb, async ({ ops: raw, at, cloneOps }) => {
        const r = round++;
        const plain = `bp${r}`;
        const prot = `bq${r}`;
        await cli(d, ['volume', 'create', plain, '--size', '2M']);
        await cli(d, ['volume', 'create', prot, '--size', '2M', '--protected']);
        const cp = await NbdClient.connect({ port: d.nbdPort, exportName: plain });
        const cq = await NbdClient.connect({ port: d.nbdPort, exportName: prot });
        try {
          const model = Buffer.alloc(SIZE);
          const images: Buffer[] = [Buffer.from(model)]; // images[seq]
          for (const [o, seal] of raw) {
            const op = { ...o, length: Math.min(o.length, SIZE - o.offset) };
            if (op.length <= 0) continue;
            await run(cp, op);
            await run(cq, op);
            apply(model, op);
            images.push(Buffer.from(model));
            if (seal) await api(d, 'POST', `/v1/volumes/${prot}/seal`);
          }
          await cq.flush();
          const n = images.length - 1;
          const pick = (x: number) => 1 + Math.min(n - 1, Math.floor(x * n));
          const sSnap = pick(at[0]);
          const [a, b] = [pick(at[1]), pick(at[2])].sort((x, y) => x - y) as [number, number];
          await api(d, 'POST', `/v1/volumes/${prot}/snapshots`, { at: `@seq:${sSnap}`, name: `${prot}-s` });
          await api(d, 'POST', `/v1/volumes/${prot}/clones`, { at: `@seq:${b}`, name: `${prot}-c` });
          const cloneModel = Buffer.from(images[b]!);
          const cc = await NbdClient.connect({ port: d.nbdPort, exportName: `${prot}-c` });
          for (const o of cloneOps) {
            const op = { ...o, length: Math.min(o.length, SIZE - o.offset) };
            if (op.length <= 0) continue;
            await run(cc, op);
            apply(cloneModel, op);
          }
          await cc.flush();
          cc.destroy();
          const exports: Array<[string, Buffer]> = [
            [plain, model],
            [prot, model],
            [`${prot}-s`, images[sSnap]!],
            [`${prot}-c`, cloneModel],
          ];
          if (a < b) {
            await api(d, 'POST', `/v1/volumes/${prot}/diff`, { from: `@seq:${a}`, to: `@seq:${b}`, name: `${prot}-d` });
            exports.push([`${prot}-d`, images[b]!]);
          }
          for (const [name, want] of exports) {
            const why = await checkExport(d.nbdPort, name, want);
            if (why) throw new Error(why);
          }
          for (const [name] of exports.slice(2)) await api(d, 'DELETE', `/v1/views/${name}`);
          return true;
        } finally {
          cp.destroy();
          cq.destroy();
        }
      }),
      { numRuns: 8, seed: Number(process.env.FC_SEED ?? Date.now() % 100000), endOnFailure: true },
    );
    if (out.failed)
      t.fail(
        `${(out.errorInstance as Error | null)?.message ?? 'failed'} (FC_SEED=${out.seed}, counterexample ${fc.stringify(out.counterexample)})`,
      );
    else t.pass();
  },
);
