// Small DOM helpers: elements are built with createElement and textContent only (never
// innerHTML), so nothing the cluster says can become markup or script.

/** h('tag.class#id', {attr: value, onclick: fn}, ...children) */
export function h(spec, attrs, ...children) {
  // 'tag.class#id.class': the id ends at the next dot.
  const [tagAndClasses, idAndClasses = ''] = spec.split('#');
  const [id, ...idClasses] = idAndClasses.split('.');
  const [tag, ...tagClasses] = tagAndClasses.split('.');
  const classes = tagClasses.concat(idClasses);
  const el = document.createElement(tag || 'div');
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className += (el.className ? ' ' : '') + v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace everything inside `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** "3 s ago", "5 min ago"... from ms since the epoch. */
export function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function time(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

/** A state badge: the word is always there (colour is never the only cue). */
export function badge(state) {
  const s = String(state || 'unknown').toLowerCase();
  return h('span.badge', { class: `st-${s.replace(/[^a-z-]/g, '')}` }, s);
}

/** Order of badness for sorting problems first. */
export const SEVERITY = { critical: 0, dead: 0, error: 0, warning: 1, suspect: 1, unknown: 2,
  pending: 3, left: 3, ok: 4, alive: 4, passing: 4, compliant: 4 };

export function severity(state) {
  const s = SEVERITY[String(state).toLowerCase()];
  return s === undefined ? 2 : s;
}

/** Bytes as text, JSON, or hex. */
export function decodeBase64(b64) {
  const bin = atob(b64 || '');
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

export function hexdump(bytes) {
  const lines = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const row = bytes.slice(off, off + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${off.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}
