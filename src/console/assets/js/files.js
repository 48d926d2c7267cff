// Files at a point (where the file catalog exists; the nav shows this page
// only when its API answers): browse a point's tree, see a file's versions
// across time, download one file. Entries carry path, name, ino, type,
// size, mode, uid, gid, mtime; every name is shown as text.
import { api, blob, enc } from './api.js';
import { h, kv, put } from './dom.js';
import { bytes, int, iso } from './format.js';

/** @param {any} r @param {string[]} keys */
function listOf(r, keys) {
  if (Array.isArray(r)) return r;
  for (const k of keys) if (r && Array.isArray(r[k])) return r[k];
  return [];
}

/** @param {unknown} t */
const isDir = (t) => /^d(ir(ectory)?)?$/i.test(String(t ?? ''));

/** @param {unknown} v seconds or ms since the epoch, or an ISO time */
function when(v) {
  if (typeof v === 'number') return iso(v < 1e11 ? v * 1000 : v);
  return v ? iso(String(v)) : '-';
}

/** 0o100644 -> "-rw-r--r--". @param {unknown} mode @param {unknown} type */
function perms(mode, type) {
  if (typeof mode !== 'number') return String(mode ?? '-');
  const t = isDir(type) ? 'd' : /^(l|symlink|link)$/i.test(String(type)) ? 'l' : '-';
  let s = t;
  for (let i = 8; i >= 0; i--) s += mode & (1 << i) ? 'rwx'[(8 - i) % 3] : '-';
  return s;
}

/** @param {string} dir @param {string} name */
const join = (dir, name) => (dir.endsWith('/') ? `${dir}${name}` : `${dir}/${name}`);

/** @param {HTMLElement} root @param {string} volume @param {any} ctx */
export function render(root, volume, ctx) {
  const at = /** @type {HTMLInputElement} */ (h('input', { type: 'text', id: 'files-at', value: ctx.picked.get(volume) ?? 'latest' }));
  const status = h('div', { id: 'catalog-status' });
  const crumbs = h('div', { class: 'crumbs', id: 'files-crumbs' });
  const listing = h('div', { id: 'files-list' });
  const versions = h('div', { id: 'files-versions' });
  const form = h('form', { class: 'row' }, h('label', null, 'At', at), h('button', { type: 'submit', class: 'primary' }, 'Browse'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void browse('/');
  });
  put(
    root,
    h('h1', null, `Files of ${volume}`),
    h('div', { class: 'card' }, form, status),
    h(
      'div',
      { class: 'split' },
      h('div', { class: 'card' }, crumbs, listing),
      h('div', { class: 'card' }, h('h2', null, 'Versions'), versions),
    ),
  );
  put(versions, h('p', { class: 'muted' }, "Choose a file's Versions to see it across time."));
  const base = `/v1/volumes/${enc(volume)}`;

  api('GET', `${base}/catalog`).then(
    (c) =>
      put(
        status,
        h(
          'details',
          null,
          h('summary', { class: 'muted small' }, 'File catalog'),
          kv(
            Object.entries(c ?? {})
              .filter(([, v]) => typeof v !== 'object')
              .map(([k, v]) => [k, String(v)]),
          ),
        ),
      ),
    (e) => put(status, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message))),
  );

  /** @param {string} path */
  async function browse(path) {
    const point = at.value.trim() || 'latest';
    put(crumbs, ...crumbsOf(path));
    put(listing, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const r = await api('GET', `${base}/files?at=${enc(point)}&path=${enc(path)}`);
      const entries = listOf(r, ['entries', 'files', 'children']).slice();
      entries.sort((a, b) => Number(isDir(b.type)) - Number(isDir(a.type)) || String(a.name).localeCompare(String(b.name)));
      const rows = entries.map((/** @type {any} */ e) => {
        const p = e.path ?? join(path, e.name);
        const name = isDir(e.type)
          ? h(
              'a',
              { href: '#', class: 'file-name', onclick: (/** @type {Event} */ ev) => (ev.preventDefault(), void browse(p)) },
              `${e.name}/`,
            )
          : h('span', { class: 'file-name' }, e.name);
        return h(
          'tr',
          { 'data-path': p },
          h('td', null, name),
          h('td', { class: 'num' }, isDir(e.type) ? '' : bytes(e.size)),
          h('td', { class: 'mono' }, perms(e.mode, e.type)),
          h('td', { class: 'num' }, `${e.uid ?? '-'}:${e.gid ?? '-'}`),
          h('td', null, when(e.mtime)),
          h('td', { class: 'num muted small' }, e.ino === undefined ? '' : `ino ${e.ino}`),
          h(
            'td',
            null,
            isDir(e.type) ? null : h('button', { type: 'button', class: 'small', onclick: () => void showVersions(p) }, 'Versions'),
            ' ',
            isDir(e.type)
              ? null
              : h('button', { type: 'button', class: 'small', onclick: () => void download(point, p, e.name) }, 'Download'),
          ),
        );
      });
      put(
        listing,
        r && r.point ? h('p', { class: 'muted small' }, `at @seq:${r.point.seq} (${iso(r.point.time)})`) : null,
        rows.length
          ? h(
              'table',
              { id: 'files-table' },
              h(
                'thead',
                null,
                h(
                  'tr',
                  null,
                  ['Name', 'Size', 'Mode', 'Owner', 'Modified', '', ''].map((x) => h('th', null, x)),
                ),
              ),
              h('tbody', null, rows),
            )
          : h('p', { class: 'muted' }, 'Empty directory.'),
      );
    } catch (e) {
      put(listing, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    }
  }

  /** @param {string} path */
  function crumbsOf(path) {
    const parts = path.split('/').filter(Boolean);
    const out = [h('a', { href: '#', onclick: (/** @type {Event} */ e) => (e.preventDefault(), void browse('/')) }, '/')];
    parts.forEach((part, i) => {
      const p = `/${parts.slice(0, i + 1).join('/')}`;
      out.push(
        h('a', { href: '#', onclick: (/** @type {Event} */ e) => (e.preventDefault(), void browse(p)) }, part),
        h('span', { class: 'muted' }, '/'),
      );
    });
    return out;
  }

  /** @param {string} path */
  async function showVersions(path) {
    put(versions, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const r = await api('GET', `${base}/files/versions?path=${enc(path)}`);
      const list = listOf(r, ['versions']);
      const rows = list.map((/** @type {any} */ v) => {
        const point = v.at ?? (v.seq !== undefined ? `@seq:${v.seq}` : v.point?.seq !== undefined ? `@seq:${v.point.seq}` : null);
        return h(
          'tr',
          null,
          h('td', null, point ?? '-', h('div', { class: 'muted small' }, when(v.time ?? v.point?.time))),
          h('td', { class: 'num' }, bytes(v.size)),
          h('td', null, when(v.mtime)),
          h(
            'td',
            null,
            point
              ? h(
                  'button',
                  { type: 'button', class: 'small', onclick: () => void download(point, path, path.split('/').pop() ?? 'file') },
                  'Download',
                )
              : null,
          ),
        );
      });
      put(
        versions,
        h('p', { class: 'file-name' }, path),
        rows.length
          ? h(
              'table',
              { id: 'versions-table' },
              h(
                'thead',
                null,
                h(
                  'tr',
                  null,
                  ['Point', 'Size', 'Modified', ''].map((x) => h('th', null, x)),
                ),
              ),
              h('tbody', null, rows),
            )
          : h('p', { class: 'muted' }, 'No versions.'),
        h('p', { class: 'muted small' }, `${int(rows.length)} versions`),
      );
    } catch (e) {
      put(versions, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    }
  }

  /** Downloads through fetch (the token is a header, so a plain link cannot carry it). @param {string} point @param {string} path @param {string} name */
  async function download(point, path, name) {
    try {
      const { blob: b } = await blob(`${base}/files/content?at=${enc(point)}&path=${enc(path)}`);
      const url = URL.createObjectURL(b);
      const a = h('a', { href: url, download: name.replace(/[/\\]/g, '_') || 'file' });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      put(versions, h('p', { class: 'error' }, `Download failed: ${String(/** @type {Error} */ (e).message)}`));
    }
  }

  void browse('/');
  return {};
}
