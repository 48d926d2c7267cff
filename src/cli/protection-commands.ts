/** Client commands for protected volumes: status VOL, seal, log, verify. */
import type { VolumeProtectionStatus, VerifyReport } from '../daemon/protection';
import { formatSize } from '../util/size';
import { damageText } from './scrub-commands';
import { CliError, EXIT, makeClient, table, type GlobalOptions } from './common';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

const at = (name: string, what: string) => `/v1/volumes/${encodeURIComponent(name)}/${what}`;

export async function volumeStatus(name: string, o: GlobalOptions & { json?: boolean }): Promise<void> {
  const s = await makeClient(o).request<VolumeProtectionStatus>('GET', at(name, 'status'));
  if (o.json) return print(JSON.stringify(s, null, 2));
  print(`volume ${s.volume} (group ${s.group}, volume id ${s.volumeId}): ${s.state}`);
  if (s.degraded) print(`  degraded since ${s.degraded.since}: ${s.degraded.reason}`);
  print(`  last write      seq ${s.lastSeq}`);
  print(`  applied         seq ${s.appliedSeq} (transaction ${s.appliedContainer}; ${s.transactions} transactions)`);
  print(`  lag             ${s.lag.writes} writes, ${formatSize(s.lag.bytes)}, ${s.lag.seconds.toFixed(1)} s`);
  if (s.active) print(`  active AILFC    #${s.active.containerId}: ${s.active.records} records, ${formatSize(s.active.bytes)}`);
  print(`  sealed, queued  ${s.sealedPending.length ? s.sealedPending.map((n) => `#${n}`).join(' ') : 'none'}`);
  print(`  dirty regions   ${s.dirtyRegions} x ${formatSize(s.regionSize)}`);
  if (s.lastError) print(`  last error      ${s.lastError}`);
  const x = s as VolumeProtectionStatus & {
    role?: string;
    link?: Record<string, unknown> & {
      state: string;
      bytesSent?: number;
      bytesReceived?: number;
      queued?: number;
      poolBytes?: number | null;
      poolLimit?: number | null;
    };
    resync?: { state?: string; regionsLeft?: number; superTransaction?: unknown } | null;
  };
  if (x.link) {
    const l = x.link;
    const bytes = l.bytesSent ?? l.bytesReceived ?? 0;
    print(
      `  link            ${l.state}${l.manager ? ` to ${l.manager}` : l.peer ? ` from ${l.peer}` : ''} since ${l.since}; ${formatSize(bytes)} ${l.bytesSent !== undefined ? 'sent' : 'received'}; ` +
        `${l.queued ?? 0} containers queued` +
        (l.poolLimit ? `; pool ${formatSize(l.poolBytes ?? 0)} of ${formatSize(l.poolLimit)}` : ''),
    );
  }
  if (x.resync) print(`  resync          ${JSON.stringify(x.resync)}`);
  if (s.scrub) {
    const l = s.scrub.last;
    print(
      `  scrub           ${l ? `${l.state} ${l.finished}: ${l.containersChecked} containers, ${l.replicaBlocksChecked} replica blocks checked` : 'never'}; ` +
        `${s.scrub.damage.length ? `${s.scrub.damage.length} DAMAGED` : 'no damage known'}`,
    );
    for (const d of s.scrub.damage) print(`    DAMAGED ${damageText(d)}`);
  }
  if (s.io) {
    const e = s.io.errors;
    const total = e.read + e.write + e.trim + e.zero + e.flush;
    print(
      `  production I/O  ${s.io.state}; errors: ${total} (read ${e.read}, write ${e.write}, trim ${e.trim}, zero ${e.zero}, flush ${e.flush}); ` +
        `${s.io.errorRecords} error records` +
        (s.io.recapturePending ? `; ${s.io.recapturePending} ranges awaiting re-capture` : ''),
    );
    if (s.io.lastError) {
      const le = s.io.lastError;
      print(`  last I/O error  ${le.time} ${le.op} ${le.offset}+${le.length}: ${le.code} ${le.message}`);
    }
  }
}

export async function seal(name: string, o: GlobalOptions & { json?: boolean }): Promise<void> {
  const r = await makeClient(o, { waitsForManager: true }).request<{
    containerId: number | null;
    commit: { lastSeq: number; blocks: number } | null;
  }>('POST', at(name, 'seal'));
  if (o.json) return print(JSON.stringify(r, null, 2));
  if (r.containerId === null) return print(`nothing to seal: the active AILFC of ${name} is empty`);
  print(
    `sealed AILFC #${r.containerId}` +
      (r.commit ? `; committed up to seq ${r.commit.lastSeq} (${r.commit.blocks} blocks)` : '; not committed (see rewind status)'),
  );
}

interface TxnView {
  n: number;
  firstSeq: number;
  lastSeq: number;
  firstTime: number;
  lastTime: number;
  blocks: number;
  ailfc?: { size?: number };
}

export async function log(name: string, o: GlobalOptions & { json?: boolean; limit?: string }): Promise<void> {
  const q = o.limit ? `?limit=${encodeURIComponent(o.limit)}` : '';
  const r = await makeClient(o).request<{ transactions: TxnView[] }>('GET', at(name, 'log') + q);
  if (o.json) return print(JSON.stringify(r.transactions, null, 2));
  if (r.transactions.length === 0) return print(`no transactions yet for ${name}`);
  const iso = (t: number) => (t ? new Date(t).toISOString() : '-');
  print(
    table(
      ['TXN', 'SEQ', 'FIRST WRITE', 'LAST WRITE', 'BLOCKS', 'AILFC'],
      r.transactions.map((t) => [
        String(t.n),
        `${t.firstSeq}-${t.lastSeq}`,
        iso(t.firstTime),
        iso(t.lastTime),
        String(t.blocks),
        t.ailfc?.size !== undefined ? formatSize(t.ailfc.size) : '-',
      ]),
    ),
  );
}

export async function verify(name: string, o: GlobalOptions & { json?: boolean; full?: boolean }): Promise<void> {
  const r = await makeClient(o, { waitsForManager: true }).request<VerifyReport>('POST', at(name, 'verify') + (o.full ? '?full=1' : ''));
  if (o.json) print(JSON.stringify(r, null, 2));
  else {
    print(`production ${r.productionSha256}`);
    print(`replica    ${r.replicaSha256}`);
    print(
      r.equal
        ? `equal (${formatSize(r.bytesCompared)} compared, applied up to seq ${r.appliedSeq})`
        : `DIFFERENT: first difference at byte ${r.firstDifference}`,
    );
    const bad = r.containers.filter((c) => !c.ok);
    print(`containers checked: ${r.containers.length}, bad: ${bad.length}`);
    for (const c of bad) print(`  ${c.kind} #${c.n}: ${c.problem} at offset ${c.offset}`);
  }
  if (!r.ok) throw new CliError(`verify failed for ${name}`, EXIT.FAILURE);
}
