import * as fs from 'node:fs';
import * as path from 'node:path';

let cached: string | undefined;

/** The package version, read from package.json (found by walking up from this file). */
export function rewindVersion(): string {
  if (cached !== undefined) return cached;
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'package.json');
    try {
      const pkg = JSON.parse(fs.readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'rewind' && typeof pkg.version === 'string') {
        cached = pkg.version;
        return cached;
      }
    } catch {
      // keep walking up
    }
    dir = path.dirname(dir);
  }
  cached = '0.0.0-unknown';
  return cached;
}
