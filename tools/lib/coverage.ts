/**
 * In-process code coverage from V8 (the inspector's precise block
 * coverage), for the fuzz tools: which share of the lines of chosen
 * compiled modules ran. A line counts as covered when its first
 * non-blank character lies in a range V8 executed at least once.
 */
import * as fs from 'node:fs';
import * as inspector from 'node:inspector';
import { fileURLToPath } from 'node:url';

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface ScriptCoverage {
  url: string;
  functions: Array<{ ranges: Range[] }>;
}

export interface FileCoverage {
  file: string;
  lines: number;
  covered: number;
  percent: number;
}

export class Coverage {
  private readonly session = new inspector.Session();

  private post<T>(method: string, params: object = {}): Promise<T> {
    return new Promise((resolve, reject) => this.session.post(method, params, (err, res) => (err ? reject(err) : resolve(res as T))));
  }

  async start(): Promise<void> {
    this.session.connect();
    await this.post('Profiler.enable');
    await this.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  }

  /** Line coverage of the loaded scripts whose path ends with one of `suffixes`. */
  async take(suffixes: string[]): Promise<FileCoverage[]> {
    const { result } = await this.post<{ result: ScriptCoverage[] }>('Profiler.takePreciseCoverage');
    const out: FileCoverage[] = [];
    for (const sc of result) {
      const file = sc.url.startsWith('file:') ? fileURLToPath(sc.url) : sc.url;
      if (!suffixes.some((s) => file.endsWith(s))) continue;
      const src = fs.readFileSync(file, 'utf8');
      const counts = new Int32Array(src.length).fill(-1);
      // Outer ranges come first; inner ones override them.
      for (const fn of sc.functions) {
        for (const r of fn.ranges) counts.fill(r.count, r.startOffset, Math.min(r.endOffset, src.length));
      }
      let lines = 0;
      let covered = 0;
      let pos = 0;
      for (const line of src.split('\n')) {
        const i = line.search(/\S/);
        const trimmed = line.trim();
        const code =
          i >= 0 &&
          !trimmed.startsWith('//') &&
          !trimmed.startsWith('*') &&
          !trimmed.startsWith('/*') &&
          trimmed !== '}' &&
          trimmed !== '};';
        if (code) {
          lines++;
          if (counts[pos + i]! > 0) covered++;
        }
        pos += line.length + 1;
      }
      out.push({ file, lines, covered, percent: lines ? (100 * covered) / lines : 0 });
    }
    return out;
  }

  async stop(): Promise<void> {
    await this.post('Profiler.stopPreciseCoverage').catch(() => undefined);
    this.session.disconnect();
  }
}
