/**
 * Production restore in the two-role mode: the manager, which holds the
 * history, runs time travel's restore (timetravel/restore.ts) as in the
 * single process; its RestoreTarget is the intercept's production, over
 * the link. The intercept writes what it is sent through its
 * ProtectedVolume (restoreWrite, restoreZero), so the restore is journaled
 * like any write and is itself a point a second restore undoes.
 *
 *   RESTORE_REQ {id, op: "begin", volumeId}   hold the volume (recorded in groups/G/restore-hold.json,
 *                                             so a restarted intercept keeps it offline), disconnect its
 *                                             clients, flush
 *   RESTORE_REQ {id, op: "hashes", volumeId, offset, length <= 64 MiB, blockSize}
 *                                             digests of production's blocks (blockDigests): only blocks
 *                                             that differ from the point are sent
 *   RESTORE_DATA u32 n, JSON {id, volumeId, offset, length, zero}, then the bytes (none for zero)
 *   RESTORE_REQ {id, op: "flush" | "end", volumeId}   end: flush, release the hold, back online
 *   RESTORE_ANSWER {id, error?, hashes?}      to each of them
 *
 * Crash safety: the manager stores the restore's intent before anything is
 * written and runs it again (after a restart of either side, when the
 * intercept is connected) until it ends; each run rewrites whatever still
 * differs, so the writes are idempotent. The intercept keeps a held volume
 * offline across its own restarts until the manager ends the restore, and
 * reports what it holds (STATUS restoreHeld) so a manager with no intent
 * left for it releases it.
 */
import * as fs from 'node:fs';
import { writeFileAtomicSync } from '../util/atomic-file';
import { JSON_FORMATS, jsonFormat } from '../util/format-version';
import type { GroupHost } from './group-host';
import { LinkProtocolError, MsgType, REPLICA_HASH_MAX_RANGE, parseJson, type Frame } from './protocol';

export interface RestoreReqMsg {
  id: string;
  op: 'begin' | 'hashes' | 'flush' | 'end';
  volumeId: number;
  offset?: number;
  length?: number;
  blockSize?: number;
}

export interface RestoreDataHeader {
  id: string;
  volumeId: number;
  offset: number;
  length: number;
  zero: boolean;
}

export interface RestoreAnswerMsg {
  id: string;
  error?: string;
  /** op "hashes": base64 of REPLICA_HASH_BYTES per block. */
  hashes?: string;
}

/** A RESTORE_DATA frame, as buffers to write back to back (the payload is not copied). */
export function encodeRestoreData(h: RestoreDataHeader, data: Buffer | null): Buffer[] {
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const head = Buffer.allocUnsafe(9);
  head.writeUInt32BE(1 + 4 + json.length + (data?.length ?? 0), 0);
  head[4] = MsgType.RESTORE_DATA;
  head.writeUInt32BE(json.length, 5);
  return data ? [head, json, data] : [head, json];
}

export function parseRestoreData(f: Frame): { header: RestoreDataHeader; data: Buffer } {
  if (f.body.length < 4) throw new LinkProtocolError('short RESTORE_DATA frame');
  const n = f.body.readUInt32BE(0);
  if (4 + n > f.body.length) throw new LinkProtocolError('RESTORE_DATA header runs past the frame');
  let header: RestoreDataHeader;
  try {
    header = JSON.parse(f.body.toString('utf8', 4, 4 + n)) as RestoreDataHeader;
  } catch (err) {
    throw new LinkProtocolError(`malformed RESTORE_DATA header: ${(err as Error).message}`);
  }
  const data = f.body.subarray(4 + n);
  const ok =
    typeof header?.id === 'string' &&
    [header.volumeId, header.offset, header.length].every((x) => Number.isSafeInteger(x) && x >= 0) &&
    (header.zero ? data.length === 0 : data.length === header.length);
  if (!ok) throw new LinkProtocolError('malformed RESTORE_DATA header');
  return { header, data };
}

/** What the intercept does for a restore its manager runs (daemon/protection.ts implements it). */
export interface RestoreHooks {
  begin(volumeId: number): Promise<void>;
  hashes(volumeId: number, offset: number, length: number, blockSize: number): Promise<Buffer>;
  write(volumeId: number, offset: number, data: Buffer): Promise<void>;
  zero(volumeId: number, offset: number, length: number): Promise<void>;
  flush(volumeId: number): Promise<void>;
  end(volumeId: number): Promise<void>;
}

/** Intercept side: carries out one RESTORE_REQ or RESTORE_DATA and answers it. */
export function answerRestore(f: Frame, hooks: RestoreHooks | undefined, answer: (m: RestoreAnswerMsg) => void): void {
  let id: string;
  let run: () => Promise<RestoreAnswerMsg>;
  if (f.type === MsgType.RESTORE_DATA) {
    const { header: h, data } = parseRestoreData(f);
    id = h.id;
    run = async () => {
      await (h.zero ? hooks!.zero(h.volumeId, h.offset, h.length) : hooks!.write(h.volumeId, h.offset, data));
      return { id };
    };
  } else {
    const m = parseJson<RestoreReqMsg>(f);
    id = String(m.id);
    if (!Number.isSafeInteger(m.volumeId)) throw new LinkProtocolError('malformed RESTORE_REQ');
    run = async () => {
      switch (m.op) {
        case 'begin':
          await hooks!.begin(m.volumeId);
          return { id };
        case 'hashes': {
          const ints = [m.offset, m.length, m.blockSize].every((x) => Number.isSafeInteger(x) && (x as number) >= 0);
          if (!ints || m.blockSize! < 512 || m.length! > REPLICA_HASH_MAX_RANGE) throw new Error('bad hashes request');
          return { id, hashes: (await hooks!.hashes(m.volumeId, m.offset!, m.length!, m.blockSize!)).toString('base64') };
        }
        case 'flush':
          await hooks!.flush(m.volumeId);
          return { id };
        case 'end':
          await hooks!.end(m.volumeId);
          return { id };
        default:
          throw new Error(`unknown restore step ${JSON.stringify(m.op)}`);
      }
    };
  }
  if (!hooks) return answer({ id, error: 'this intercept cannot be restored by its manager' });
  run().then(answer, (err: Error) => answer({ id, error: err.message }));
}

/** Manager side: the intercept's production of one volume, over its group's connection. */
export class RemoteProduction {
  private static next = 1;

  constructor(
    private readonly g: GroupHost,
    readonly volumeId: number,
    private readonly timeoutMs = 600_000,
  ) {}

  private conn() {
    const c = this.g.conn;
    if (!c) throw new Error(`the intercept of group ${this.g.name} is not connected: the restore goes on when it is`);
    return c;
  }

  private async step(op: RestoreReqMsg['op'], extra: Partial<RestoreReqMsg> = {}): Promise<RestoreAnswerMsg> {
    const id = `restore-${RemoteProduction.next++}`;
    const a = (await this.conn().request(
      this.g,
      MsgType.RESTORE_REQ,
      { op, volumeId: this.volumeId, ...extra },
      MsgType.RESTORE_ANSWER,
      this.timeoutMs,
      id,
    )) as RestoreAnswerMsg;
    if (a.error) throw new Error(`the intercept could not ${op === 'hashes' ? 'read production' : `${op} the restore`}: ${a.error}`);
    return a;
  }

  begin(): Promise<unknown> {
    return this.step('begin');
  }

  end(): Promise<unknown> {
    return this.step('end');
  }

  flush(): Promise<unknown> {
    return this.step('flush');
  }

  async hashes(offset: number, length: number, blockSize: number): Promise<Buffer> {
    const a = await this.step('hashes', { offset, length, blockSize });
    return Buffer.from(a.hashes ?? '', 'base64');
  }

  async write(offset: number, data: Buffer | null, length: number): Promise<void> {
    const id = `restore-${RemoteProduction.next++}`;
    const frames = encodeRestoreData({ id, volumeId: this.volumeId, offset, length, zero: data === null }, data);
    const a = (await this.conn().requestFrames(this.g, id, frames, this.timeoutMs)) as RestoreAnswerMsg;
    if (a.error) throw new Error(`the intercept could not write the restore at ${offset}: ${a.error}`);
  }
}

/** groups/G/restore-hold.json on the intercept: volumes a restore run by the manager holds offline. */
export class RestoreHolds {
  private held = new Map<number, { name: string; since: string }>();

  constructor(private readonly file: string) {
    let raw: string;
    try {
      raw = fs.readFileSync(file, 'utf8');
    } catch {
      return;
    }
    const v = JSON.parse(raw) as { format?: unknown; volumes?: Record<string, { name: string; since: string }> };
    jsonFormat(v, 'the restore holds', file, JSON_FORMATS.restoreHold);
    for (const [k, h] of Object.entries(v.volumes ?? {})) this.held.set(Number(k), h);
  }

  names(): string[] {
    return [...this.held.values()].map((h) => h.name);
  }

  ids(): number[] {
    return [...this.held.keys()];
  }

  has(volumeId: number): boolean {
    return this.held.has(volumeId);
  }

  /** Recorded durably before the volume is touched. */
  hold(volumeId: number, name: string): void {
    if (this.held.has(volumeId)) return;
    this.held.set(volumeId, { name, since: new Date().toISOString() });
    this.save();
  }

  release(volumeId: number): void {
    if (!this.held.delete(volumeId)) return;
    this.save();
  }

  private save(): void {
    if (this.held.size === 0) {
      fs.rmSync(this.file, { force: true });
      return;
    }
    writeFileAtomicSync(this.file, JSON.stringify({ format: JSON_FORMATS.restoreHold, volumes: Object.fromEntries(this.held) }));
  }
}
