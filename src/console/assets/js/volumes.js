// Volumes and groups: size, protection state, lag, connections, retention,
// replication (two-role mode) and the archive where its API answers;
// snapshots and clones with their NBD URIs. Live updates refresh the lag.
import { api, ApiError } from './api.js';
import { badge, h, kv, put } from './dom.js';
import { bytes, duration, int, iso } from './format.js';

/** @param {any} v */
export function stateBadge(v) {
  if (v.offline) return badge('offline', 'bad');
  const s = v.status ?? v.protection;
  if (!v.protection && !s) return badge('unprotected');
  if (!s) return badge('protected', 'info');
  if (s.state === 'normal') return badge('normal', 'ok');
  if (s.state === 'degraded') return badge('degraded', 'bad');
  if (s.state === 'resync') return badge('resyncing', 'warn');
  return badge(String(s.state), 'warn');
}

/** @param {any} s */
function lagCell(s) {
  if (!s) return '-';
  const l = s.lag;
  if (!l || (!l.writes && !l.bytes)) return h('span', { class: 'muted' }, 'caught up');
  return `${duration(l.seconds)} · ${bytes(l.bytes)} · ${int(l.writes)} writes`;
}

/** @param {HTMLElement} root @param {any} ctx */
export function render(root, ctx) {
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  put(root, h('h1', null, 'Volumes and groups'), body);
  /** @type {any} */
  let ov = null;
  /** @type {any} */
  let archive = null;
  let loading = false;
  let lastJobs = -1;

  const load = async () => {
    if (loading) return;
    loading = true;
    try {
      ov = await api('GET', '/v1/console/overview');
      lastJobs = ov.jobs.version;
      draw();
      const first = ov.volumes.find((/** @type {any} */ v) => v.protection);
      if (first && archive === null) {
        // The archive API (another part of Rewind) may not exist: show it only if it answers.
        archive = await api('GET', `/v1/volumes/${encodeURIComponent(first.name)}/archive`).catch((/** @type {unknown} */ e) =>
          e instanceof ApiError ? false : null,
        );
        if (archive) draw();
      }
    } catch (e) {
      put(body, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    } finally {
      loading = false;
    }
  };

  const draw = () => {
    if (!ov) return;
    const vrows = ov.volumes.map((/** @type {any} */ v) => {
      const s = v.status;
      const href = v.protection ? `#/volume/${encodeURIComponent(v.name)}` : null;
      return h(
        'tr',
        { class: href ? 'clickable' : null, 'data-volume': v.name, onclick: href ? () => (location.hash = href) : null },
        h(
          'td',
          null,
          href ? h('a', { href, class: 'volname' }, v.name) : h('span', { class: 'volname' }, v.name),
          v.description ? h('div', { class: 'muted small desc' }, v.description) : null,
        ),
        h('td', { class: 'num' }, bytes(v.size)),
        h('td', { class: 'num' }, v.allocatedBytes === null ? '-' : bytes(v.allocatedBytes)),
        h(
          'td',
          null,
          stateBadge(v),
          v.offline ? h('div', { class: 'muted small' }, v.offline) : null,
          s?.lastError ? h('div', { class: 'error small' }, s.lastError) : null,
        ),
        h('td', null, lagCell(s)),
        h('td', { class: 'num' }, s ? int(s.dirtyRegions) : '-'),
        h('td', { class: 'num' }, s ? int(s.transactions) : '-'),
        h('td', { class: 'num' }, int(v.connections)),
        h('td', null, v.protection ? (v.retention ?? h('span', { class: 'muted' }, 'keep all')) : '-'),
        h('td', null, v.protection ? v.protection.group : '-'),
        h('td', { class: 'num' }, int(v.views)),
      );
    });
    const grows = ov.groups.map((/** @type {any} */ g) =>
      h(
        'tr',
        null,
        h('td', null, g.name),
        h('td', null, g.volumes.join(', ')),
        h('td', null, stateBadge({ status: { state: g.state } })),
        h('td', null, g.retention ?? h('span', { class: 'muted' }, 'keep all')),
        h('td', null, replication(g.replication)),
      ),
    );
    const views = ov.views.map((/** @type {any} */ x) =>
      h(
        'tr',
        null,
        h('td', null, x.name),
        h('td', null, badge(x.kind, x.readOnly ? '' : 'info'), x.readOnly ? '' : ' writable'),
        h('td', null, x.volume),
        h('td', null, `@seq:${x.point.seq}`, h('div', { class: 'muted small' }, iso(x.point.time))),
        h('td', null, x.uris.tcp ?? x.uris.unix ?? '-'),
      ),
    );
    put(
      body,
      h(
        'p',
        { class: 'muted small' },
        `rewind ${ov.version} · role ${ov.role} · NBD ${ov.nbd.tcp ?? ov.nbd.unix ?? 'off'} · jobs running: ${ov.jobs.running}`,
      ),
      h(
        'div',
        { class: 'card' },
        h('h2', null, 'Volumes'),
        ov.volumes.length
          ? h(
              'table',
              { id: 'volumes' },
              h(
                'thead',
                null,
                h(
                  'tr',
                  null,
                  [
                    'Name',
                    'Size',
                    'Allocated',
                    'State',
                    'Lag',
                    'Dirty regions',
                    'Transactions',
                    'Connections',
                    'Retention',
                    'Group',
                    'Views',
                  ].map((t, i) => h('th', { class: i === 1 || i === 2 || (i >= 5 && i <= 7) || i === 10 ? 'num' : null }, t)),
                ),
              ),
              h('tbody', null, vrows),
            )
          : h('p', { class: 'muted' }, 'No volumes.'),
      ),
      grows.length ? tableCard('Consistency groups', ['Group', 'Volumes', 'State', 'Retention', 'Replication'], grows) : null,
      views.length ? tableCard('Snapshots and clones', ['Name', 'Kind', 'Volume', 'Point', 'NBD URI'], views) : null,
      archive
        ? h(
            'div',
            { class: 'card' },
            h('h2', null, 'Archive'),
            kv(
              Object.entries(archive)
                .filter(([, v]) => typeof v !== 'object')
                .map(([k, v]) => [k, String(v)]),
            ),
          )
        : null,
    );
  };

  void load();
  return {
    /** @param {any} s */
    onLive(s) {
      if (!ov) return;
      for (const lv of s.volumes) {
        const v = ov.volumes.find((/** @type {any} */ x) => x.name === lv.name);
        if (!v) {
          void load();
          return;
        }
        v.connections = lv.connections;
        v.offline = lv.offline;
        if (v.status && lv.protection) Object.assign(v.status, lv.protection);
      }
      if (s.volumes.length !== ov.volumes.length || s.jobs.version !== lastJobs) void load();
      else draw();
    },
  };
}

/** @param {any} link */
/** A card with a title and a table of these column headers over these rows. */
function tableCard(title, headers, rows) {
  return h(
    'div',
    { class: 'card' },
    h('h2', null, title),
    h(
      'table',
      null,
      h(
        'thead',
        null,
        h(
          'tr',
          null,
          headers.map((t) => h('th', null, t)),
        ),
      ),
      h('tbody', null, rows),
    ),
  );
}

function replication(link) {
  if (!link) return h('span', { class: 'muted' }, 'single process');
  const up = link.state === 'up' || link.connected === true;
  return h(
    'span',
    null,
    badge(`link ${link.state ?? (up ? 'up' : 'down')}`, up ? 'ok' : 'bad'),
    link.manager ? h('div', { class: 'muted small' }, `manager ${link.manager}`) : null,
    typeof link.queued === 'number'
      ? h('div', { class: 'muted small' }, `${link.queued} containers queued, ${bytes(link.bytesSent ?? 0)} sent`)
      : null,
    link.lastError ? h('div', { class: 'error small' }, String(link.lastError)) : null,
  );
}
