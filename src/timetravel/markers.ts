/**
 * Markers (pseudosnapshots, seed 000 L142–L204): named points that copy
 * nothing. A marker is one small LMDB record (group, name, seq, time, kind)
 * in DATA_DIR/timetravel/index; it pins its point in the backup manager so
 * retention keeps it readable until the marker is deleted or expires.
 *
 *   kind  application-consistent  the quiesce pre-hook succeeded before the
 *                                 point was taken
 *         crash-consistent        no hook, or the hook failed or timed out
 *                                 (the reason is recorded)
 *
 * Schedules (policies, seed 003 L230–L294) place markers automatically:
 * rules "every 15m, 09:00–17:00, mon–fri, keep 7d". When several rules are
 * due at once one marker is placed, kept as long as the longest of them.
 */
import { spawn } from 'node:child_process';
import { UserError } from '../util/errors';

export type MarkerKind = 'crash-consistent' | 'application-consistent';

export interface MarkerRecord {
  name: string;
  group: string;
  /** The volume it was placed on, or null when placed on the whole group. */
  volume: string | null;
  seq: number;
  /** ms since the epoch: when the marker was placed. */
  time: number;
  kind: MarkerKind;
  /** Why it is crash-consistent although hooks were given. */
  reason: string | null;
  /** ms since the epoch after which it may be deleted (null: kept until deleted). */
  retainUntil: number | null;
  /** Placed by a schedule rule (its index) rather than by hand. */
  auto: boolean;
  hooks: { pre: HookResult | null; post: HookResult | null };
}

export interface HookResult {
  command: string;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  ms: number;
  /** Last lines of its output. */
  output: string;
}

/** Runs a shell command with a timeout; a hook that hangs is killed (its whole process group). */
export function runHook(command: string, timeoutMs: number, env: Record<string, string> = {}): Promise<HookResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, ...env } });
    let out = '';
    const keep = (b: Buffer): void => {
      out = (out + b.toString('utf8')).slice(-4000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, timeoutMs);
    const done = (exitCode: number | null, signal: string | null): void => {
      clearTimeout(timer);
      resolve({ command, exitCode, signal, timedOut, ms: Date.now() - t0, output: out.trim().split('\n').slice(-10).join('\n') });
    };
    child.on('error', (err) => {
      out += String(err.message);
      done(null, null);
    });
    child.on('close', (code, signal) => done(code, signal));
  });
}

// ---- schedules -----------------------------------------------------------

export interface ScheduleRule {
  /** Seconds between markers. */
  every: number;
  /** Hours of operation, local time, [from, to) in minutes since midnight; null = all day. */
  hours: { from: number; to: number } | null;
  /** Days of the week it applies (0 = Sunday); null = every day. */
  days: number[] | null;
  /** Seconds to keep each marker; null = until deleted. */
  keep: number | null;
  /** Quiesce hooks for the markers it places. */
  pre: string | null;
  post: string | null;
  timeout: number;
  /** Also archive each marker it places into the archive pool (archive=yes). Absent in rules saved before. */
  archive?: boolean;
}

export interface Schedule {
  volume: string;
  rules: ScheduleRule[];
  /** Last automatic marker time per rule index (ms). */
  last: Record<string, number>;
}

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

/** "30s", "15m", "2h", "7d", "1w" -> seconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d|w)$/i.exec(text.trim());
  if (!m) throw new UserError('invalid', `${what}: "${text}" is not a duration (e.g. 30s, 15m, 2h, 7d, 1w)`);
  const mult = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2]!.toLowerCase() as 's']!;
  const v = Number(m[1]) * mult;
  if (!(v > 0)) throw new UserError('invalid', `${what}: "${text}" must be positive`);
  return v;
}

function parseClock(t: string, rule: string): number {
  const m = /^(\d{1,2})(?::(\d{2}))?$/.exec(t);
  if (!m || Number(m[1]) > 24 || Number(m[2] ?? 0) > 59)
    throw new UserError('invalid', `rule "${rule}": bad time of day "${t}" (use HH or HH:MM)`);
  return Number(m[1]) * 60 + Number(m[2] ?? 0);
}

/**
 * Parses a schedule rule: comma-separated key=value pairs,
 *   every=15m [hours=09:00-17:00] [days=mon-fri|sat,sun] [keep=7d]
 *   [pre='CMD'] [post='CMD'] [timeout=30s]
 */
export function parseRule(text: string): ScheduleRule {
  const rule: ScheduleRule = { every: 0, hours: null, days: null, keep: null, pre: null, post: null, timeout: 30 };
  const parts = text.match(/(?:[^,'"]+|'[^']*'|"[^"]*")+/g) ?? [];
  for (const raw of parts) {
    const p = raw.trim();
    if (!p) continue;
    const eq = p.indexOf('=');
    if (eq < 0) throw new UserError('invalid', `rule "${text}": "${p}" is not key=value`);
    const key = p.slice(0, eq).trim().toLowerCase();
    const value = p
      .slice(eq + 1)
      .trim()
      .replace(/^'(.*)'$|^"(.*)"$/, '$1$2');
    switch (key) {
      case 'every':
        rule.every = parseDuration(value, `rule "${text}": every`);
        if (rule.every < 1) throw new UserError('invalid', `rule "${text}": every must be at least 1s`);
        break;
      case 'hours': {
        const m = /^([\d:]+)-([\d:]+)$/.exec(value);
        if (!m) throw new UserError('invalid', `rule "${text}": hours must look like 09:00-17:00`);
        rule.hours = { from: parseClock(m[1]!, text), to: parseClock(m[2]!, text) };
        break;
      }
      case 'days': {
        const set = new Set<number>();
        for (const d of value.toLowerCase().split(/[,;]/)) {
          const r = /^([a-z]{3})(?:-([a-z]{3}))?$/.exec(d.trim());
          const a = r ? DAYS.indexOf(r[1]!) : -1;
          const z = r ? (r[2] ? DAYS.indexOf(r[2]) : a) : -1;
          if (a < 0 || z < 0) throw new UserError('invalid', `rule "${text}": bad days "${d}" (use mon-fri or sat,sun)`);
          for (let i = a; ; i = (i + 1) % 7) {
            set.add(i);
            if (i === z) break;
          }
        }
        rule.days = [...set].sort();
        break;
      }
      case 'keep':
        rule.keep = parseDuration(value, `rule "${text}": keep`);
        break;
      case 'pre':
        rule.pre = value;
        break;
      case 'post':
        rule.post = value;
        break;
      case 'timeout':
        rule.timeout = parseDuration(value, `rule "${text}": timeout`);
        break;
      case 'archive':
        if (!/^(yes|no|true|false)$/i.test(value)) throw new UserError('invalid', `rule "${text}": archive must be yes or no`);
        rule.archive = /^(yes|true)$/i.test(value);
        break;
      default:
        throw new UserError('invalid', `rule "${text}": unknown key "${key}" (every, hours, days, keep, pre, post, timeout, archive)`);
    }
  }
  if (!rule.every) throw new UserError('invalid', `rule "${text}": every=DURATION is required`);
  return rule;
}

/** Does the rule apply at this moment (its days and hours of operation)? */
export function ruleApplies(r: ScheduleRule, now: Date): boolean {
  if (r.days && !r.days.includes(now.getDay())) return false;
  if (r.hours) {
    const m = now.getHours() * 60 + now.getMinutes();
    const { from, to } = r.hours;
    if (from <= to ? m < from || m >= to : m < from && m >= to) return false;
  }
  return true;
}

/** Which rules are due now (applicable, and their interval has passed since their last marker). */
export function dueRules(s: Schedule, now: number): number[] {
  const out: number[] = [];
  s.rules.forEach((r, i) => {
    if (!ruleApplies(r, new Date(now))) return;
    const last = s.last[String(i)] ?? 0;
    if (now - last >= r.every * 1000) out.push(i);
  });
  return out;
}

export function describeRule(r: ScheduleRule): string {
  const parts = [`every ${fmtDuration(r.every)}`];
  if (r.hours) parts.push(`${clock(r.hours.from)}-${clock(r.hours.to)}`);
  if (r.days) parts.push(r.days.map((d) => DAYS[d]).join(','));
  parts.push(r.keep ? `keep ${fmtDuration(r.keep)}` : 'keep until deleted');
  if (r.pre) parts.push(`pre '${r.pre}'`);
  if (r.post) parts.push(`post '${r.post}'`);
  return parts.join(', ');
}

function clock(m: number): string {
  return `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
}

export function fmtDuration(s: number): string {
  for (const [u, v] of [
    ['w', 604800],
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
  ] as const)
    if (s % v === 0) return `${s / v}${u}`;
  return `${s}s`;
}
