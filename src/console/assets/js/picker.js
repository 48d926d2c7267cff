// The point picker: a point typed (a time, @seq:N, @txn:N, "10 minutes
// ago", latest, a marker name) or clicked on the timeline is resolved as
// `rewind point` resolves it; then a snapshot or a writable clone is made
// there (with its NBD URI and the nbdinfo and qemu command lines), a marker
// placed, or production restored after a confirmation that says what goes
// offline, with its progress.
import { api, ApiError, enc, streamed } from './api.js';
import { copyLine, h, kv, modal, put } from './dom.js';
import { bytes, duration, int, iso } from './format.js';

/**
 * @param {HTMLElement} el
 * @param {string} volume
 * @param {{ onResolved: (info: any) => void, onChanged: () => void }} hooks
 */
export function makePicker(el, volume, hooks) {
  const input = /** @type {HTMLInputElement} */ (
    h('input', {
      type: 'text',
      id: 'point-input',
      class: 'grow',
      placeholder: '@seq:N, @txn:N, ISO time, "10 minutes ago", latest, or a marker',
    })
  );
  const result = h('div', { id: 'point-result' });
  const nameInput = /** @type {HTMLInputElement} */ (
    h('input', { type: 'text', id: 'view-name', class: 'grow', placeholder: 'name: optional for a snapshot or clone, needed for a marker' })
  );
  const actions = h(
    'div',
    { id: 'point-actions', hidden: true },
    h('div', { class: 'row' }, nameInput),
    h(
      'div',
      { class: 'row' },
      h('button', { type: 'button', id: 'do-snapshot', onclick: () => void makeView('snapshots') }, 'Snapshot'),
      h('button', { type: 'button', id: 'do-clone', class: 'primary', onclick: () => void makeView('clones') }, 'Clone (writable)'),
      h('button', { type: 'button', id: 'do-mark', onclick: () => void mark() }, 'Place marker'),
      h('button', { type: 'button', id: 'do-restore', class: 'danger', onclick: () => void restore() }, 'Restore…'),
    ),
  );
  const output = h('div', { id: 'point-output' });
  /** @type {any} */
  let current = null;
  /** @type {Promise<any> | null} */
  let health = null;

  const form = h('form', { class: 'row', id: 'point-form' }, input, h('button', { type: 'submit' }, 'Resolve'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void pick(input.value.trim());
  });
  put(el, h('h2', null, 'Point'), form, h('p', { class: 'muted small' }, 'Click the timeline, or type a point.'), result, actions, output);

  const busy = (/** @type {boolean} */ on) => actions.querySelectorAll('button').forEach((b) => (b.disabled = on));

  /** @param {string} at @param {string} [nearest] */
  async function pick(at, nearest) {
    if (!at) return;
    input.value = at;
    put(result, h('p', { class: 'muted' }, 'Resolving…'));
    actions.hidden = true;
    try {
      const info = await api('POST', `/v1/volumes/${enc(volume)}/resolve`, nearest ? { at, nearest } : { at });
      current = info;
      showPoint(info);
      actions.hidden = false;
      hooks.onResolved(info);
    } catch (e) {
      current = null;
      const msg = String(/** @type {Error} */ (e).message);
      const gap = /nearest valid points?/.test(msg);
      put(
        result,
        h('p', { class: 'error', id: 'point-error' }, msg),
        gap
          ? h(
              'div',
              { class: 'row' },
              h('button', { type: 'button', onclick: () => void pick(at, 'before') }, 'Use the nearest point before'),
              h('button', { type: 'button', onclick: () => void pick(at, 'after') }, 'Use the nearest point after'),
            )
          : null,
      );
    }
  }

  /** @param {any} info */
  function showPoint(info) {
    put(
      result,
      h('p', { id: 'point-description' }, info.description),
      kv([
        ['point', h('code', { id: 'point-seq' }, `@seq:${info.seq}`)],
        ['time', iso(info.time)],
        ['transaction', info.pending ? `T_${info.txn} (journaled, not yet applied)` : `T_${info.txn}`],
        ['write', `${info.write.kind} ${bytes(info.write.length)} at offset ${int(info.write.offset)} of ${info.write.volume}`],
      ]),
      info.substituted ? h('p', { class: 'note' }, info.substituted.note) : null,
    );
  }

  async function nbd() {
    health ??= api('GET', '/v1/health');
    return (await health).nbd;
  }

  /** @param {'snapshots' | 'clones'} kind */
  async function makeView(kind) {
    if (!current) return;
    busy(true);
    put(output, h('p', { class: 'muted' }, kind === 'clones' ? 'Creating the clone…' : 'Creating the snapshot…'));
    try {
      const body = /** @type {Record<string, unknown>} */ ({ at: `@seq:${current.seq}` });
      if (nameInput.value.trim()) body.name = nameInput.value.trim();
      const view = await api('POST', `/v1/volumes/${enc(volume)}/${kind}`, body);
      await showView(view);
      hooks.onChanged();
    } catch (e) {
      put(output, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    } finally {
      busy(false);
    }
  }

  /** @param {any} view */
  async function showView(view) {
    const n = await nbd();
    const tcp = n.tcp ? `nbd://${n.tcp}/${enc(view.name)}` : null;
    const unix = n.unix ? `nbd+unix:///${enc(view.name)}?socket=${n.unix}` : null;
    const uri = tcp ?? unix ?? '';
    const ro = view.readOnly ? ',readonly=on' : '';
    const what = view.kind === 'clone' ? (view.readOnly ? 'Read-only clone' : 'Writable clone') : 'Snapshot';
    put(
      output,
      h('h3', null, `${what} `, h('span', { id: 'view-created' }, view.name), ` at @seq:${view.point.seq}`),
      h('p', { class: 'muted small' }, view.point.description),
      h('div', null, 'NBD URI'),
      copyLine(uri, 'view-uri'),
      tcp && unix ? copyLine(unix, 'view-uri-unix') : null,
      h('div', null, 'Inspect it'),
      copyLine(`nbdinfo ${uri}`, 'cmd-nbdinfo'),
      copyLine(`qemu-img info ${uri}`, 'cmd-qemu-img'),
      h('div', null, 'Boot it, or copy it out'),
      copyLine(`qemu-system-x86_64 -m 2G -drive file=${uri},format=raw,if=virtio${ro}`, 'cmd-qemu'),
      copyLine(`qemu-img convert -p -O qcow2 ${uri} ${view.name}.qcow2`, 'cmd-convert'),
      h('div', null, 'Remove it when done'),
      copyLine(`rewind ${view.kind === 'snapshot' ? 'snapshot' : 'clone'} rm ${view.name}`),
    );
  }

  async function mark() {
    if (!current) return;
    const name = nameInput.value.trim();
    if (!name) {
      put(output, h('p', { class: 'error' }, 'Type a name for the marker first.'));
      nameInput.focus();
      return;
    }
    busy(true);
    try {
      const m = await api('POST', `/v1/markers/${enc(volume)}`, { name, at: `@seq:${current.seq}` });
      put(output, h('p', null, 'Marker ', h('strong', null, m.name), ` placed at @seq:${m.seq} (${m.kind}).`));
      hooks.onChanged();
    } catch (e) {
      put(output, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    } finally {
      busy(false);
    }
  }

  async function restore() {
    if (!current) return;
    const point = current;
    /** @type {any} */
    let vol = null;
    /** @type {any[]} */
    let views = [];
    try {
      vol = await api('GET', `/v1/volumes/${enc(volume)}`);
      views = (await api('GET', `/v1/views?volume=${enc(volume)}`)).views;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
    }
    const force = /** @type {HTMLInputElement} */ (h('input', { type: 'checkbox', id: 'restore-force' }));
    const answer = await modal({
      title: `Restore ${volume}?`,
      body: [
        h('p', null, 'Production of ', h('strong', null, volume), ` goes back to @seq:${point.seq} (${iso(point.time)}):`),
        h('p', { class: 'muted small' }, point.description),
        h(
          'ul',
          null,
          h(
            'li',
            null,
            h('strong', null, `${volume} goes offline`),
            ` while the restore runs: its ${vol ? int(vol.connections) : 'NBD'} connected client${vol?.connections === 1 ? ' is' : 's are'} disconnected now, and new connections are refused until it has finished.`,
          ),
          h(
            'li',
            null,
            'Only blocks that differ from the point are rewritten. The restore is journaled as its own transaction: it can be undone (the undo point is shown at the end).',
          ),
          views.length
            ? h(
                'li',
                null,
                `${views.length} snapshot or clone of ${volume} exist (${views.map((v) => v.name).join(', ')}): they keep their own point, but the restore refuses unless forced.`,
              )
            : null,
        ),
        views.length ? h('label', null, force, 'Force: restore although snapshots or clones exist') : null,
      ],
      buttons: [
        { label: 'Cancel', value: 'cancel' },
        { label: `Restore and take ${volume} offline`, value: 'go', kind: 'danger' },
      ],
    });
    if (answer !== 'go') return;
    const bar = h('div');
    const phase = h('span', { class: 'small muted' }, 'starting…');
    put(
      output,
      h('h3', null, `Restoring ${volume} to @seq:${point.seq}`),
      h('div', { class: 'progress', id: 'restore-progress' }, bar),
      phase,
    );
    busy(true);
    try {
      const body = /** @type {Record<string, unknown>} */ ({ to: `@seq:${point.seq}` });
      if (force.checked) body.force = true;
      const r = await streamed(`/v1/volumes/${enc(volume)}/restore`, body, (p) => {
        bar.style.width = `${p.total ? Math.round((100 * p.done) / p.total) : 0}%`;
        phase.textContent = `${p.phase}: ${int(p.done)} / ${int(p.total)}`;
      });
      bar.style.width = '100%';
      put(
        output,
        h('h3', { id: 'restore-done' }, `${volume} restored to @seq:${r.point.seq}`),
        kv([
          ['blocks rewritten', `${int(r.blocksWritten)} of ${int(r.blocksChanged)} changed since the point`],
          ['bytes written', bytes(r.bytesWritten)],
          ['took', duration(r.durationMs / 1000)],
          ['undo', r.undo ? h('code', null, r.undo) : 'nothing to undo'],
        ]),
        r.undo ? h('button', { type: 'button', onclick: () => void pick(r.undo) }, 'Pick the undo point') : null,
      );
      hooks.onChanged();
    } catch (e) {
      put(output, h('p', { class: 'error' }, `Restore failed: ${String(/** @type {Error} */ (e).message)}`));
    } finally {
      busy(false);
    }
  }

  return {
    pick,
    get current() {
      return current;
    },
  };
}
