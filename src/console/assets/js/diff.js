// Diff between two points of a volume: the extents writes between them
// touched (from the history index alone, nothing is read), their total
// size, and where they lie in the volume.
import { api, enc } from './api.js';
import { h, kv, put } from './dom.js';
import { bytes, int, iso } from './format.js';

const SHOWN = 1000;

/** @param {HTMLElement} root @param {string} volume @param {any} ctx */
export function render(root, volume, ctx) {
  const from = /** @type {HTMLInputElement} */ (
    h('input', { type: 'text', id: 'diff-from', value: ctx.picked.get(volume) ?? '', placeholder: 'from: a point' })
  );
  const to = /** @type {HTMLInputElement} */ (h('input', { type: 'text', id: 'diff-to', value: 'latest', placeholder: 'to: a point' }));
  const out = h('div', { id: 'diff-result' });
  const form = h(
    'form',
    { class: 'row' },
    h('label', null, 'From', from),
    h('label', null, 'To', to),
    h('button', { type: 'submit', class: 'primary' }, 'Compare'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void run();
  });
  put(
    root,
    h('h1', null, `Diff of ${volume}`),
    h(
      'div',
      { class: 'card' },
      form,
      h(
        'p',
        { class: 'muted small' },
        'Points as anywhere else: @seq:N, @txn:N, a time, a marker, latest. The extents come from the history index; nothing is read.',
      ),
      out,
    ),
  );

  async function run() {
    put(out, h('p', { class: 'muted' }, 'Comparing…'));
    try {
      const [d, vol] = await Promise.all([
        api('POST', `/v1/volumes/${enc(volume)}/diff`, { from: from.value.trim(), to: to.value.trim() }),
        api('GET', `/v1/volumes/${enc(volume)}`),
      ]);
      const map = /** @type {HTMLCanvasElement} */ (h('canvas', { class: 'extentmap', id: 'extent-map', width: '1200', height: '26' }));
      drawMap(map, d.extents, vol.size);
      const rows = d.extents
        .slice(0, SHOWN)
        .map((/** @type {{ offset: number, length: number }} */ x) =>
          h(
            'tr',
            null,
            h('td', { class: 'num' }, int(x.offset)),
            h('td', { class: 'num' }, int(x.length)),
            h('td', { class: 'num' }, bytes(x.length)),
            h('td', { class: 'num' }, int(x.offset + x.length)),
          ),
        );
      put(
        out,
        kv([
          ['from', `@seq:${d.from.seq} (${iso(d.from.time)}): ${d.from.description}`],
          ['to', `@seq:${d.to.seq} (${iso(d.to.time)}): ${d.to.description}`],
          ['changed', h('strong', { id: 'diff-bytes' }, `${bytes(d.changedBytes)} in ${int(d.extents.length)} extents`)],
          ['block size', bytes(d.blockSize)],
        ]),
        h('h3', null, `Where (volume of ${bytes(vol.size)})`),
        map,
        h('h3', null, 'Extents'),
        d.extents.length
          ? h(
              'div',
              { class: 'scroll' },
              h(
                'table',
                { id: 'diff-extents' },
                h(
                  'thead',
                  null,
                  h(
                    'tr',
                    null,
                    ['Offset', 'Length', '', 'End'].map((x) => h('th', { class: 'num' }, x)),
                  ),
                ),
                h('tbody', null, rows),
              ),
            )
          : h('p', { class: 'muted' }, 'Nothing changed between the two points.'),
        d.extents.length > SHOWN
          ? h(
              'p',
              { class: 'muted small' },
              `… and ${int(d.extents.length - SHOWN)} more (rewind diff ${volume} --from … --to … --json lists them all).`,
            )
          : null,
      );
    } catch (e) {
      put(out, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    }
  }

  if (from.value) void run();
  return {};
}

/** @param {HTMLCanvasElement} c @param {Array<{ offset: number, length: number }>} extents @param {number} size */
function drawMap(c, extents, size) {
  const g = c.getContext('2d');
  if (!g || size <= 0) return;
  g.fillStyle = '#c0392b';
  for (const x of extents) {
    const a = (x.offset / size) * c.width;
    g.fillRect(a, 0, Math.max(1, (x.length / size) * c.width), c.height);
  }
}
