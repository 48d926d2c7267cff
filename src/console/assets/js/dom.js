// DOM building for the console. Every piece of data goes in as text
// (Node.append of a string, setAttribute, textContent): never as markup,
// so volume, marker and file names cannot inject anything.

/**
 * Creates an element: h('a', { href: '#/', class: 'x', onclick: fn }, 'text', child).
 * @param {string} tag
 * @param {Record<string, unknown> | null} [props]
 * @param {...unknown} children strings (as text), nodes, arrays of them; null/false are skipped
 * @returns {HTMLElement}
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = String(v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), /** @type {EventListener} */ (v));
    else if (k === 'value') /** @type {HTMLInputElement} */ (el).value = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

/** @param {Node} el @param {unknown[]} children */
function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. @param {Element} el @param {...unknown} children */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A small badge. @param {string} text @param {string} [kind] */
export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}` }, text);
}

/** A read-only line with a Copy button. @param {string} text @param {string} [testid] */
export function copyLine(text, testid) {
  const pre = h('pre', { 'data-testid': testid ?? null }, text);
  const btn = h('button', { class: 'small', type: 'button' }, 'Copy');
  btn.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      btn.textContent = 'Copied';
    } catch {
      // No clipboard (plain http on another host): select the text for Ctrl+C.
      const range = document.createRange();
      range.selectNodeContents(pre);
      const sel = window.getSelection();
      sel?.removeAllRanges();
      sel?.addRange(range);
      btn.textContent = 'Selected';
    }
    setTimeout(() => (btn.textContent = 'Copy'), 1500);
  });
  return h('div', { class: 'copyline' }, pre, btn);
}

/** A definition list from [label, value] pairs (values as text or nodes). @param {Array<[string, unknown]>} pairs */
export function kv(pairs) {
  return h(
    'dl',
    { class: 'kv' },
    pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== '').map(([k, v]) => [h('dt', null, k), h('dd', null, v)]),
  );
}

/**
 * A modal dialog; resolves with the button's value (null for Cancel or Escape).
 * @param {{ title: string, body: unknown[], buttons: Array<{ label: string, value: string, kind?: string }> }} o
 * @returns {Promise<string | null>}
 */
export function modal(o) {
  return new Promise((resolve) => {
    const close = (/** @type {string | null} */ v) => {
      back.remove();
      document.removeEventListener('keydown', onKey);
      resolve(v);
    };
    const onKey = (/** @type {KeyboardEvent} */ e) => {
      if (e.key === 'Escape') close(null);
    };
    const buttons = o.buttons.map((b) => h('button', { type: 'button', class: b.kind ?? '', onclick: () => close(b.value) }, b.label));
    const back = h(
      'div',
      { class: 'modal-back', role: 'dialog', 'aria-modal': 'true' },
      h('div', { class: 'modal' }, h('h2', null, o.title), ...o.body, h('div', { class: 'row' }, h('span', { class: 'grow' }), ...buttons)),
    );
    document.addEventListener('keydown', onKey);
    document.body.appendChild(back);
    buttons[buttons.length - 1]?.focus();
  });
}
