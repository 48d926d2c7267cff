/**
 * What the crash campaign does to the volume while the load runs and the
 * kill timer ticks: quiescent cuts (the points later checked against the
 * model, some pinned by markers), seals, fades, reads of a clone, a
 * production restore and link cuts (two-role). Each marks
 * its phase while it runs, so a kill is counted against what it hit.
 */
import { sleep } from '../../../test/helpers/daemon';
import { Violation, checkView, connectRetry, must, readHashes } from './checks';
import type { Load, Region } from './load';
import { differing, type VolumeModel } from './model';
import { VOLUME, apiCall, type Target } from './target';

const V = `/v1/volumes/${VOLUME}`;

export interface Cut {
  seq: number;
  hashes: string[];
  round: number;
  marker?: string;
}

/** State shared by the campaign and its actions. */
export interface World {
  t: Target;
  model: VolumeModel;
  load: Load;
  regions: Region[];
  /** Volume block where the model starts (the libnbd ledger writes before it). */
  base: number;
  cuts: Cut[];
  clone: { name: string; cut: Cut } | null;
  phases: Set<string>;
  killed: boolean;
  round: number;
  /** A restore in flight: what production may be after a kill (before or after it). */
  restoring: { pre: string[]; target: string[] } | null;
  ledgerValid: boolean;
  stats: Record<string, number>;
  actionErrors: string[];
}

function bump(w: World, k: string): void {
  w.stats[k] = (w.stats[k] ?? 0) + 1;
}

async function phase<T>(w: World, name: string, fn: () => Promise<T>): Promise<T> {
  w.phases.add(name);
  try {
    return await fn();
  } finally {
    w.phases.delete(name);
  }
}

/** Pauses the load, takes the point at the current write (optionally a marker there), resumes. */
export async function cut(w: World, marker: boolean): Promise<void> {
  await phase(w, marker ? 'marker' : 'cut', async () => {
    if (!(await w.load.pause())) return;
    try {
      const hashes = w.model.current();
      const s1 = (await must(w.t.interceptSocket, 'GET', `${V}/status`)).lastSeq as number;
      const prev = w.cuts.at(-1);
      if (prev && s1 < prev.seq)
        throw new Violation('seq-strictly-increasing', `the current write went back from seq ${prev.seq} to ${s1}`);
      let seq = s1;
      let name: string | undefined;
      if (marker) {
        name = `m${w.round}-${w.cuts.length}`;
        const r = await apiCall(w.t.managerSocket, 'POST', `/v1/markers/${VOLUME}`, { name });
        if (r.status >= 300) throw new Error(`marker: ${r.status} ${JSON.stringify(r.body)}`);
        const s2 = (await must(w.t.interceptSocket, 'GET', `${V}/status`)).lastSeq as number;
        seq = r.body.seq;
        // Only the libnbd ledger writes meanwhile, outside the model: the marker lies between the two readings.
        if (seq < s1 || seq > s2) throw new Violation('seq-strictly-increasing', `marker ${name} at seq ${seq}, outside ${s1}..${s2}`);
        bump(w, 'markers');
      }
      w.cuts.push({ seq, hashes, round: w.round, ...(name ? { marker: name } : {}) });
      bump(w, 'cuts');
    } finally {
      w.load.resume();
    }
  });
}

export async function seal(w: World): Promise<void> {
  await phase(w, 'seal', async () => {
    const r = await apiCall(w.t.interceptSocket, 'POST', `${V}/seal`, {});
    if (r.status >= 300) throw new Error(`seal: ${r.status} ${JSON.stringify(r.body)}`);
    bump(w, 'seals');
  });
}

export async function fade(w: World): Promise<void> {
  await phase(w, 'fade', async () => {
    const r = await apiCall(w.t.managerSocket, 'POST', `${V}/retention/fade`, {});
    if (r.status >= 300) throw new Error(`fade: ${r.status} ${JSON.stringify(r.body)}`);
    bump(w, 'fades');
  });
}

/** Reads the clone whole while the load runs: it must read its point, whatever else happens. */
export async function readClone(w: World, r: () => number): Promise<void> {
  const cl = w.clone;
  if (!cl) return;
  await phase(w, 'clone-read', async () => {
    // A window of 512 blocks: the whole clone is read after each restart.
    const count = Math.min(512, cl.cut.hashes.length);
    const from = Math.floor(r() * (cl.cut.hashes.length - count + 1));
    await checkView(w.t, cl.name, w.base, cl.cut.hashes, `clone ${cl.name} at seq ${cl.cut.seq} read under load`, { from, count });
    bump(w, 'cloneReads');
  });
}

export async function linkCut(w: World, r: () => number): Promise<void> {
  if (!w.t.linkCut) return;
  await phase(w, 'link-cut', async () => {
    await w.t.linkCut!(true);
    try {
      await sleep(200 + r() * 1500);
    } finally {
      await w.t.linkCut!(false);
    }
    bump(w, 'linkCuts');
  });
}

/**
 * Production restore to a recent cut. The load stops: a restore disconnects
 * clients. Forced: the clone keeps its point. In the two-role mode it is
 * asked of the manager, which sends the blocks to the intercept.
 */
export async function restore(w: World, r: () => number, reconnect: () => Promise<void>): Promise<void> {
  // A cut of this round first when there is none recent (history older may have faded).
  if (!w.cuts.some((c) => c.round >= w.round - 1)) await cut(w, false);
  const recent = w.cuts.filter((c) => c.round >= w.round - 1);
  if (!recent.length) return;
  const target = recent[Math.floor(r() * recent.length)]!;
  await phase(w, 'restore', async () => {
    if (!(await w.load.pause())) return;
    await w.load.close();
    w.ledgerValid = false; // the restore rolls the ledger's blocks back too
    w.restoring = { pre: w.model.current(), target: target.hashes };
    const api = w.t.mode === 'single' ? w.t.interceptSocket : w.t.managerSocket;
    const res = await apiCall(api, 'POST', `${V}/restore`, { to: `@seq:${target.seq}`, force: true }, 600_000);
    if (res.status >= 300) {
      // Cut off by the kill, the restore may still be finished at start-up: the check keeps both states.
      if (!w.killed) {
        w.restoring = null;
        await reconnect();
      }
      throw new Error(`restore to seq ${target.seq}: ${res.status} ${JSON.stringify(res.body)}`);
    }
    const c = await connectRetry(
      () => w.t.connect(),
      180_000,
      () => w.killed,
    );
    try {
      const got = await readHashes(c, w.base, w.model.blocks);
      const d = differing(got, target.hashes);
      if (d.length) throw new Violation('points-byte-exact', `production after a restore to seq ${target.seq}: ${d.length} blocks differ`);
      w.model.adopt(got);
    } finally {
      c.destroy();
    }
    w.restoring = null;
    bump(w, 'restores');
    await reconnect();
  });
}
