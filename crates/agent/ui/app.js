// The shell: navigation (hash routes), the theme, the token prompt, the error banner, and the
// live state every page reads (members and this node's checks, kept current from the event
// stream: no polling).

import { h, fill } from './dom.js';
import * as api from './api.js';
import { PAGES } from './pages.js';

/** Shared state the pages read; `changed(kind)` tells the current page. */
export const store = {
  members: null,
  info: null,
  localChecks: null,
  events: [],
  live: false,
  listeners: new Set(),
  changed(kind) {
    this.listeners.forEach((f) => f(kind));
  },
};

const view = document.getElementById('view');
const banner = document.getElementById('banner');
const liveEl = document.getElementById('live');

// ---- errors: shown, never swallowed ----

/** Show a message in the banner (kind: error or info); answers the element. */
export function showMessage(text, kind = 'error', key = text) {
  for (const old of banner.children) if (old.dataset.key === key) old.remove();
  const el = h('div.message', { class: kind, dataset: { key }, role: kind === 'error' ? 'alert' : 'status' },
    h('span', text),
    h('button.close', { type: 'button', 'aria-label': 'Dismiss this message', onclick: () => el.remove() }, '×'));
  banner.append(el);
  return el;
}

export function clearMessage(key) {
  for (const old of banner.children) if (old.dataset.key === key) old.remove();
}

api.onFailure((err) => {
  if (err.status === 0) showMessage(`Agent unreachable: ${err.message}. Is it running? Retrying when you act again.`, 'error', 'unreachable');
  else if (err.status === 401) askToken(err.message);
  else if (err.status === 403) showMessage(`Refused by the agent: ${err.message}`, 'error', 'forbidden');
});

// ---- the token prompt ----

const dialog = document.getElementById('token-dialog');
const tokenInput = document.getElementById('token-input');
const tokenWhy = document.getElementById('token-why');

async function askToken(why) {
  let where = '';
  try {
    const auth = await (await fetch('/agent/auth', { cache: 'no-store' })).json();
    where = ` It is in ${auth.token_file} on the agent's host (readable by root, or the user running the agent).`;
  } catch (_) { /* the message alone */ }
  fill(tokenWhy, `The agent answered 401: ${why}.${where}`);
  showMessage(`Not authorized (401): ${why}`, 'error', 'unauthorized');
  if (!dialog.open) dialog.showModal();
  tokenInput.focus();
}

function saveToken() {
  api.setToken(tokenInput.value.trim());
  tokenInput.value = '';
  dialog.close();
  clearMessage('unauthorized');
  restartLive();
  loadCommon().then(route);
}

document.getElementById('token-save').addEventListener('click', saveToken);
tokenInput.addEventListener('keydown', (e) => { if (e.key === 'Enter') saveToken(); });
document.getElementById('token-cancel').addEventListener('click', () => dialog.close());
document.getElementById('token-button').addEventListener('click', () => {
  fill(tokenWhy, api.token() ? 'A token is set for this tab. Enter another one, or leave empty to forget it.' : 'Enter the API token (the agent writes it to api.token in its data directory).');
  dialog.showModal();
  tokenInput.focus();
});

// ---- theme: the system's choice, or the one picked here ----

const themeButton = document.getElementById('theme');
function applyTheme(t) {
  if (t) document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
  const dark = t ? t === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
  themeButton.setAttribute('aria-pressed', String(dark));
  themeButton.textContent = dark ? '☾ Dark' : '☀ Light';
}
applyTheme(localStorage.getItem('opsbro.theme'));
themeButton.addEventListener('click', () => {
  const dark = themeButton.getAttribute('aria-pressed') === 'true';
  const next = dark ? 'light' : 'dark';
  localStorage.setItem('opsbro.theme', next);
  applyTheme(next);
  store.changed('theme');
});

// ---- live state ----

export async function loadMembers() {
  store.members = await api.get('/agent/members');
  store.changed('members');
}

export async function loadLocalChecks() {
  store.localChecks = await api.get('/monitoring/state');
  store.changed('checks');
}

async function loadCommon() {
  const results = await Promise.allSettled([
    api.get('/agent/info').then((i) => {
      store.info = i;
      fill(document.getElementById('agent-name'), i.display_name || i.name);
      document.title = `${i.display_name || i.name} · opsbro`;
    }),
    loadMembers(),
    loadLocalChecks(),
  ]);
  if (results.every((r) => r.status === 'fulfilled')) clearMessage('unreachable');
}

let reloadTimer = null;
/** Coalesce bursts of events into one reload. */
function reloadSoon(what) {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => {
    if (what.members) loadMembers().catch(() => {});
    if (what.checks) loadLocalChecks().catch(() => {});
  }, 150);
}

function onEvent(channel, frame) {
  if (channel === 'hello') return;
  if (channel === 'lagged') {
    reloadSoon({ members: true, checks: true });
    return;
  }
  store.events.unshift(frame);
  if (store.events.length > 500) store.events.length = 500;
  const p = frame.payload || {};
  if (channel === 'node' && store.members) {
    const m = store.members.find((x) => x.uuid === p.uuid || x.name === p.name);
    if (m) m.state = p.state;
    store.changed('members');
    // New members, groups and checks come with the full list.
    reloadSoon({ members: true });
  } else if (channel === 'check') {
    const checks = store.localChecks && store.localChecks.checks;
    const c = checks && checks.find((x) => x.name === p.name);
    if (c) Object.assign(c, { state: p.state, state_id: p.state_id, output: p.output, long_output: p.long_output });
    store.changed('checks');
    reloadSoon({ checks: true, members: true });
  } else if (channel === 'group' || channel === 'service') {
    reloadSoon({ members: true });
  }
  store.changed('event');
}

let stopLive = null;
function restartLive() {
  if (stopLive) stopLive();
  stopLive = api.follow(onEvent, (connected, err) => {
    store.live = connected;
    liveEl.dataset.state = connected ? 'on' : 'off';
    fill(liveEl, connected ? '● live' : '○ offline');
    liveEl.title = connected ? 'Following the agent\'s event stream' : `Not following events: ${err ? err.message : ''}`;
    if (connected) {
      clearMessage('stream');
      clearMessage('unreachable');
      // What changed while disconnected.
      reloadSoon({ members: true, checks: true });
    } else if (err && err.status !== 401) {
      showMessage(`Live updates stopped: ${err.message}`, 'error', 'stream');
    }
  });
}

// A browser opens at most 6 HTTP/1.1 connections to one host, for all its tabs together: a
// hidden tab (or a page kept in the back-forward cache) gives its stream back, and picks up
// what changed when it is shown again.
function pause() {
  if (stopLive) stopLive();
  stopLive = null;
}
document.addEventListener('visibilitychange', () => {
  if (document.hidden) pause();
  else if (!stopLive) restartLive();
});
window.addEventListener('pagehide', pause);
window.addEventListener('pageshow', (e) => { if (e.persisted && !stopLive) restartLive(); });

// ---- routing ----

let current = null;
function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const [name, ...rest] = hash.split('/');
  const page = PAGES[name || 'overview'] || PAGES.overview;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === (name || 'overview')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (current && current.destroy) current.destroy();
  if (current && current.listener) store.listeners.delete(current.listener);
  current = page(rest.join('/'), { store, showMessage, clearMessage, loadMembers, loadLocalChecks });
  if (current.update) {
    current.listener = (kind) => current.update(kind);
    store.listeners.add(current.listener);
  }
  fill(view, current.el);
  const heading = view.querySelector('h1');
  if (heading && document.activeElement === document.body) heading.focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);
route();
loadCommon();
restartLive();
