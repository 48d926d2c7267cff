/** Client commands: volume create/list/rm and status, talking to the control API. */
import type { ScrubStatus } from '../daemon/scrub';
import { scrubStatusText } from './scrub-commands';
import * as path from 'node:path';
import type { CreateVolumeBody, VolumeView } from '../control/api';
import { formatSize } from '../util/size';
import { makeClient, table, type GlobalOptions } from './common';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

function json(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}

export async function volumeCreate(
  name: string,
  o: GlobalOptions & {
    size?: string;
    readOnly?: boolean;
    path?: string;
    description?: string;
    protected?: boolean;
    group?: string;
    allow?: string[];
    json?: boolean;
  },
): Promise<void> {
  const client = makeClient(o);
  const body: CreateVolumeBody = { name };
  if (o.size !== undefined) body.size = o.size;
  if (o.readOnly) body.readOnly = true;
  // The daemon has its own working directory: send an absolute path.
  if (o.path !== undefined) body.path = path.resolve(o.path);
  if (o.description !== undefined) body.description = o.description;
  if (o.protected) body.protected = true;
  if (o.group !== undefined) body.group = o.group;
  if (o.allow !== undefined) body.allow = o.allow;
  const v = await client.createVolume(body);
  if (o.json) return json(v);
  print(
    `created volume ${v.name} (${formatSize(v.size)}${v.readOnly ? ', read-only' : ''}${v.external ? `, ${v.kind} ${v.path}` : ''}` +
      `${v.protection ? `, protected, group ${v.protection.group}` : ''})`,
  );
  for (const uri of [v.uris.tcp, v.uris.unix]) if (uri) print(`  ${uri}`);
  if (v.allow?.length) print(`  allow: ${v.allow.join(' ')}`);
}

export function volumeTable(volumes: VolumeView[]): string {
  // An ALLOW column only when some volume has an access list.
  if (volumes.some((v) => v.allow?.length)) {
    const lines = volumeTable(volumes.map((v) => ({ ...v, allow: [] }))).split('\n');
    const width = Math.max(...lines.map((l) => l.length));
    return lines.map((l, i) => `${l.padEnd(width)}  ${i === 0 ? 'ALLOW' : volumes[i - 1]!.allow?.join(' ') || 'any'}`).join('\n');
  }
  return table(
    ['NAME', 'SIZE', 'ALLOCATED', 'MODE', 'KIND', 'GROUP', 'CONNS', 'URI'],
    volumes.map((v) => [
      v.name,
      formatSize(v.size),
      v.allocatedBytes === null ? '-' : formatSize(v.allocatedBytes),
      v.readOnly ? 'ro' : 'rw',
      v.kind,
      v.protection ? v.protection.group : '-',
      String(v.connections),
      v.uris.tcp ?? v.uris.unix ?? '-',
    ]),
  );
}

export async function volumeList(o: GlobalOptions & { json?: boolean }): Promise<void> {
  const volumes = await makeClient(o).listVolumes();
  if (o.json) return json(volumes);
  if (volumes.length === 0) {
    print('no volumes (create one with `rewind volume create NAME --size 1G`)');
    return;
  }
  print(volumeTable(volumes));
}

export async function volumeRemove(name: string, o: GlobalOptions & { keepData?: boolean; json?: boolean }): Promise<void> {
  const result = await makeClient(o).removeVolume(name, { keepData: o.keepData === true });
  if (o.json) return json(result);
  let msg = `removed volume ${name}`;
  if (result.disconnected > 0) msg += ` (disconnected ${result.disconnected} client${result.disconnected === 1 ? '' : 's'})`;
  print(msg);
  if (!result.dataDeleted) print(`  data kept at ${result.path}`);
}

export async function status(o: GlobalOptions & { json?: boolean }): Promise<void> {
  const client = makeClient(o);
  const h = await client.health();
  if (o.json) return json(h);
  print(`rewind ${h.version} daemon running (pid ${h.pid}, up ${formatUptime(h.uptimeSeconds)})`);
  print(`  control:     ${client.endpoint.display}`);
  print(`  data dir:    ${h.dataDir}`);
  if (h.nbd.tcp) print(`  nbd tcp:     nbd://${h.nbd.tcp}/`);
  if (h.nbd.unix) print(`  nbd unix:    ${h.nbd.unix}`);
  print(`  volumes:     ${h.volumes}`);
  print(`  connections: ${h.connections}`);
  const scrub = await client.request<ScrubStatus>('GET', '/v1/scrub').catch(() => null);
  if (scrub) print(scrubStatusText(scrub));
}

function formatUptime(s: number): string {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  const h = Math.floor(s / 3600);
  if (h < 48) return `${h}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(h / 24)}d${h % 24}h`;
}
