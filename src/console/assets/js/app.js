// The console's entry point: the token form, hash routing between pages,
// and live updates fanned out to the page on screen.
import { api, ApiError, liveEvents, setUnauthorizedHandler, token } from './api.js';
import { h, put } from './dom.js';
import * as volumesPage from './volumes.js';
import * as timelinePage from './timeline.js';
import * as diffPage from './diff.js';
import * as filesPage from './files.js';
import * as jobsPage from './jobs.js';

const main = /** @type {HTMLElement} */ (document.getElementById('main'));
const nav = /** @type {HTMLElement} */ (document.getElementById('nav'));
const liveEl = /** @type {HTMLElement} */ (document.getElementById('live'));
const logout = /** @type {HTMLButtonElement} */ (document.getElementById('logout'));

/** @typedef {{ destroy?: () => void, onLive?: (s: any) => void }} Page */

/** What pages share: the last live state, points picked per volume, which optional APIs answer. */
export const ctx = {
  /** @type {any} */ live: null,
  /** @type {Map<string, string>} */ picked: new Map(),
  /** @type {Map<string, Promise<boolean>>} */ filesProbe: new Map(),
  /** Does the file catalog API answer for this volume? Absent routes answer 404 "no such endpoint". @param {string} volume */
  filesAvailable(volume) {
    let p = this.filesProbe.get(volume);
    if (!p) {
      p = api('GET', `/v1/volumes/${encodeURIComponent(volume)}/catalog`).then(
        () => true,
        (/** @type {unknown} */ e) =>
          !(e instanceof ApiError && (e.status === 405 || (e.status === 404 && /^no such endpoint/.test(e.message)))),
      );
      this.filesProbe.set(volume, p);
    }
    return p;
  },
};

/** @type {Page | null} */
let page = null;
/** @type {(() => void) | null} */
let stopLive = null;

function showLogin(/** @type {string} */ message) {
  stopLive?.();
  stopLive = null;
  page?.destroy?.();
  page = null;
  logout.hidden = true;
  put(nav);
  liveEl.textContent = '';
  const input = /** @type {HTMLInputElement} */ (
    h('input', { type: 'password', id: 'token', class: 'wide', autocomplete: 'off', placeholder: 'bearer token' })
  );
  const err = h('p', { class: 'error', role: 'alert' }, message);
  const form = h(
    'form',
    { class: 'card login', id: 'login' },
    h('h1', null, 'Rewind console'),
    h('p', null, 'Enter the control token of this daemon: the contents of ', h('code', null, 'DATA_DIR/control.token'), '.'),
    h('p', { class: 'muted small' }, 'It is kept in this tab only (sessionStorage) and sent as an Authorization header with each request.'),
    h('div', { class: 'row' }, input, h('button', { class: 'primary', type: 'submit' }, 'Open')),
    err,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    token.set(input.value.trim());
    try {
      await api('GET', '/v1/health');
      start();
    } catch (x) {
      token.clear();
      put(err, x instanceof ApiError && x.status === 401 ? 'That token is not right (401).' : String(/** @type {Error} */ (x).message));
    }
  });
  put(main, form);
  input.focus();
}

function start() {
  logout.hidden = false;
  if (!stopLive)
    stopLive = liveEvents(
      (s) => {
        ctx.live = s;
        page?.onLive?.(s);
      },
      (up) => {
        liveEl.textContent = up ? '● live' : '○ reconnecting';
        liveEl.classList.toggle('down', !up);
      },
    );
  route();
}

/** The query of the route (#/volume/NAME?from=T&to=T). */
function query() {
  const i = location.hash.indexOf('?');
  return new URLSearchParams(i >= 0 ? location.hash.slice(i + 1) : '');
}

/** @returns {string[]} */
function parts() {
  try {
    return location.hash
      .replace(/^#\/?/, '')
      .replace(/\?.*$/, '')
      .split('/')
      .filter((s) => s !== '')
      .map(decodeURIComponent);
  } catch {
    return [];
  }
}

function navLinks(/** @type {string[]} */ p) {
  const link = (/** @type {string} */ href, /** @type {string} */ text, /** @type {boolean} */ active) =>
    h('a', { href, class: active ? 'active' : null }, text);
  const items = [link('#/', 'Volumes', p.length === 0 || p[0] === 'volumes'), link('#/jobs', 'Jobs', p[0] === 'jobs')];
  if (p[0] === 'volume' && p[1] !== undefined) {
    const base = `#/volume/${encodeURIComponent(p[1])}`;
    items.push(h('span', { class: 'muted' }, '|'), link(base, 'Timeline', p.length === 2), link(`${base}/diff`, 'Diff', p[2] === 'diff'));
    const files = link(`${base}/files`, 'Files', p[2] === 'files');
    files.hidden = true;
    files.id = 'nav-files';
    items.push(files);
    void ctx.filesAvailable(p[1]).then((ok) => (files.hidden = !ok));
  }
  put(nav, ...items);
}

function route() {
  if (!token.get()) return showLogin('');
  const p = parts();
  page?.destroy?.();
  page = null;
  navLinks(p);
  const root = h('div');
  put(main, root);
  if (p[0] === 'volume' && p[1] !== undefined) {
    if (p[2] === 'diff') page = diffPage.render(root, p[1], ctx);
    else if (p[2] === 'files') page = filesPage.render(root, p[1], ctx);
    else page = timelinePage.render(root, p[1], ctx, query());
  } else if (p[0] === 'jobs') page = jobsPage.render(root, ctx);
  else page = volumesPage.render(root, ctx);
  if (ctx.live) page?.onLive?.(ctx.live);
}

setUnauthorizedHandler(() => {
  token.clear();
  showLogin('The daemon refused the token (401): enter it again.');
});
logout.addEventListener('click', () => {
  token.clear();
  showLogin('');
});
window.addEventListener('hashchange', () => {
  if (token.get()) route();
});

// A link may carry the token in its fragment (#token=...): take it and drop it from the address bar.
const m = /^#token=([^&]+)/.exec(location.hash);
if (m) {
  token.set(decodeURIComponent(m[1] ?? ''));
  history.replaceState(null, '', `${location.pathname}#/`);
}
if (token.get()) start();
else showLogin('');
