/**
 * Test-only fault injection into the backing store (production images).
 *
 * Enabled only when the environment variable REWIND_TEST_FAULTS names a
 * control file; otherwise nothing is wrapped and this module costs nothing.
 * The daemon logs a warning at start-up when it is enabled.
 *
 * The control file is JSON, re-read whenever it changes (a stat per I/O,
 * so a test that rewrites it sees the new rules on the very next request):
 *
 *   { "rules": [
 *       { "op": "write", "error": "EIO" },                    every write fails
 *       { "op": "read", "error": "EIO", "offset": 0, "length": 4096 },   reads touching [0, 4096)
 *       { "op": "write", "error": "ENOSPC", "short": true },  writes store their first half, then fail
 *       { "op": "any", "error": "EIO", "path": "/volumes/v1/", "count": 3 }   3 times, images under that path
 *   ] }
 *
 * op: read | write | trim | zero | flush | any ("write" also matches trim
 * and zero when "writes" is given instead); error: an errno name; path: a
 * substring of the image path; offset/length: the requests touching that
 * range; count: how many times the rule fires while the file is unchanged.
 * An empty file, "{}" or a missing file means no faults.
 */
import * as fs from 'node:fs';
import type { ExportCapabilities, Extent, ReadChunk, WriteFlags, ZeroFlags } from '../nbd';
import type { ImageBackend, ImageExport } from '../storage/image';

export const FAULTS_ENV = 'REWIND_TEST_FAULTS';

export type FaultOp = 'read' | 'write' | 'trim' | 'zero' | 'flush' | 'writes' | 'any';

export interface FaultRule {
  op: FaultOp;
  error: string;
  path?: string;
  offset?: number;
  length?: number;
  count?: number;
  /** Writes only: store the first half of the data, then fail. */
  short?: boolean;
}

const OPS = new Set<FaultOp>(['read', 'write', 'trim', 'zero', 'flush', 'writes', 'any']);

/** Reads and caches the control file; counts what it injected. */
export class FaultController {
  private rules: FaultRule[] = [];
  private fired: number[] = [];
  private stamp = '';
  /** Faults injected so far, by op. */
  readonly injected: Record<string, number> = {};

  constructor(readonly file: string) {}

  private refresh(): void {
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(this.file);
    } catch {
      st = null;
    }
    const stamp = st ? `${st.mtimeMs}:${st.size}:${st.ino}` : 'none';
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    this.rules = [];
    this.fired = [];
    if (!st) return;
    let text = '';
    try {
      text = fs.readFileSync(this.file, 'utf8').trim();
    } catch {
      return;
    }
    if (!text) return;
    try {
      const parsed = JSON.parse(text) as { rules?: unknown };
      const rules = Array.isArray(parsed.rules) ? parsed.rules : [];
      for (const r of rules as FaultRule[]) {
        if (r && OPS.has(r.op) && typeof r.error === 'string') this.rules.push(r);
      }
    } catch {
      // A half-written file: no rules until it is complete.
      this.stamp = '';
    }
    this.fired = this.rules.map(() => 0);
  }

  /** The rule that fires for this request, if any (and counts it). */
  match(op: Exclude<FaultOp, 'writes' | 'any'>, imagePath: string, offset: number, length: number): FaultRule | null {
    this.refresh();
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i]!;
      const opOk = r.op === op || r.op === 'any' || (r.op === 'writes' && (op === 'write' || op === 'trim' || op === 'zero'));
      if (!opOk) continue;
      if (r.path !== undefined && !imagePath.includes(r.path)) continue;
      if (r.offset !== undefined && op !== 'flush') {
        const end = r.length !== undefined ? r.offset + r.length : Infinity;
        if (offset + length <= r.offset || offset >= end) continue;
      }
      if (r.count !== undefined && this.fired[i]! >= r.count) continue;
      this.fired[i]!++;
      this.injected[op] = (this.injected[op] ?? 0) + 1;
      return r;
    }
    return null;
  }
}

function fault(rule: FaultRule, op: string, imagePath: string): Error {
  return Object.assign(new Error(`injected ${rule.error} on ${op} of ${imagePath}`), { code: rule.error, syscall: op });
}

/** Wraps an image so the controller's rules fail chosen requests. */
export class FaultInjectingExport implements ImageExport {
  constructor(
    readonly inner: ImageExport,
    private readonly imagePath: string,
    private readonly ctl: FaultController,
  ) {}

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get capabilities(): ExportCapabilities {
    return this.inner.capabilities;
  }
  get blockSize() {
    return this.inner.blockSize;
  }

  private check(op: 'read' | 'write' | 'trim' | 'zero' | 'flush', offset: number, length: number): FaultRule | null {
    return this.ctl.match(op, this.imagePath, offset, length);
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const r = this.check('read', offset, length);
    if (r) throw fault(r, 'read', this.imagePath);
    return this.inner.read(offset, length, into);
  }

  get readSparse(): ((offset: number, length: number, into?: Buffer) => Promise<ReadChunk[]>) | undefined {
    const inner = this.inner;
    if (!inner.readSparse) return undefined;
    return async (offset, length, into) => {
      const r = this.check('read', offset, length);
      if (r) throw fault(r, 'read', this.imagePath);
      return inner.readSparse!(offset, length, into);
    };
  }

  async write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    const r = this.check('write', offset, data.length);
    if (r) {
      if (r.short && data.length > 1) {
        const half = Math.max(1, Math.floor(data.length / 2 / 512) * 512) || 1;
        await this.inner.write(offset, data.subarray(0, Math.min(half, data.length - 1)), flags);
      }
      throw fault(r, r.short ? 'short write' : 'write', this.imagePath);
    }
    return this.inner.write(offset, data, flags);
  }

  async trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    const r = this.check('trim', offset, length);
    if (r) throw fault(r, 'trim', this.imagePath);
    return this.inner.trim(offset, length, flags);
  }

  async zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    const r = this.check('zero', offset, length);
    if (r) throw fault(r, 'zero', this.imagePath);
    return this.inner.zero(offset, length, flags);
  }

  async flush(): Promise<void> {
    const r = this.check('flush', 0, 0);
    if (r) throw fault(r, 'flush', this.imagePath);
    return this.inner.flush();
  }

  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length);
  }

  close(): Promise<void> | void {
    return this.inner.close();
  }
}

let controller: FaultController | null | undefined;

/** The process's fault controller, or null when REWIND_TEST_FAULTS is not set. */
export function faultController(): FaultController | null {
  if (controller === undefined) {
    const file = process.env[FAULTS_ENV];
    controller = file ? new FaultController(file) : null;
  }
  return controller;
}

/** `image` wrapped for fault injection when it is enabled, else `image` itself. */
export function withFaults<T extends ImageExport>(image: T, imagePath: string): T | FaultInjectingExport {
  const ctl = faultController();
  return ctl ? new FaultInjectingExport(image, imagePath, ctl) : image;
}

/** A backend whose images are wrapped for fault injection (when enabled). */
export function faultInjectingBackend(inner: ImageBackend): ImageBackend {
  if (!faultController()) return inner;
  return {
    create: (p, size) => inner.create(p, size),
    open: async (p, opts) => withFaults(await inner.open(p, opts), p),
  };
}
