// The pages. Each is `(argument, ctx) => {el, update(kind)?, destroy()?}`; `ctx.store` holds the
// live state (members, this node's checks, events).

import { h, fill, ago, time, badge, severity, decodeBase64, hexdump } from './dom.js';
import * as api from './api.js';

const STATES = ['alive', 'suspect', 'dead', 'left'];

function loading() {
  return h('p.muted', { role: 'status' }, 'Loading…');
}

function failed(err) {
  return h('p.failure', { role: 'alert' }, `Could not load: ${err.message}${err.status ? ` (HTTP ${err.status})` : ''}`);
}

function checkSummary(checks) {
  const counts = {};
  for (const c of checks || []) counts[c.state] = (counts[c.state] || 0) + 1;
  const order = ['critical', 'warning', 'unknown', 'pending', 'ok'];
  const parts = order.filter((s) => counts[s]).map((s) => h('span.count', { class: `st-${s}`, title: `${counts[s]} ${s}` }, `${counts[s]} ${s}`));
  return parts.length ? parts : h('span.muted', 'no checks');
}

function nodeLink(name) {
  return h('a', { href: `#/node/${encodeURIComponent(name)}` }, name);
}

// ---------------------------------------------------------------- overview

function overview(_arg, { store }) {
  let filterState = '';
  let search = '';
  let marked = false;
  const counts = h('div.counts', { role: 'group', 'aria-label': 'Filter by state' });
  const searchBox = h('input#member-search', { type: 'search', placeholder: 'name, group, address, zone…', autocomplete: 'off',
    oninput: (e) => { search = e.target.value.trim().toLowerCase(); render(); } });
  const body = h('div.zones', loading());
  const el = h('section',
    h('h1', { tabindex: '-1' }, 'Cluster'),
    h('div.toolbar', counts, h('label.search', h('span', 'Search'), searchBox)),
    body);

  function render() {
    const members = store.members;
    if (!members) return;
    const byState = {};
    for (const m of members) byState[m.state] = (byState[m.state] || 0) + 1;
    fill(counts,
      h('button.chip', { type: 'button', 'aria-pressed': String(filterState === ''), onclick: () => { filterState = ''; render(); } }, `all ${members.length}`),
      STATES.map((s) => h('button.chip', { type: 'button', class: `st-${s}`, 'aria-pressed': String(filterState === s), dataset: { state: s },
        onclick: () => { filterState = filterState === s ? '' : s; render(); } }, `${s} ${byState[s] || 0}`)));
    const shown = members.filter((m) => (!filterState || m.state === filterState) && (!search
      || [m.name, m.display_name, m.addr, m.zone, ...m.groups].some((t) => String(t).toLowerCase().includes(search))));
    const zones = new Map();
    for (const m of shown) {
      if (!zones.has(m.zone)) zones.set(m.zone, []);
      zones.get(m.zone).push(m);
    }
    const frag = document.createDocumentFragment();
    for (const [zone, list] of [...zones].sort((a, b) => a[0].localeCompare(b[0]))) {
      list.sort((a, b) => severity(a.state) - severity(b.state) || a.name.localeCompare(b.name));
      const rows = list.map((m) => h('tr.member', { dataset: { name: m.name, state: m.state } },
        h('td', badge(m.state)),
        h('th', { scope: 'row' }, nodeLink(m.name), m.is_self ? h('span.tag', 'this agent') : null,
          m.maintenance ? h('span.tag.st-warning', { title: m.maintenance }, 'maintenance') : null),
        h('td.mono', m.addr),
        h('td', m.groups.map((g) => h('span.group', g))),
        h('td', checkSummary(m.checks)),
        h('td.muted', m.version)));
      frag.append(h('section.zone',
        h('h2', `Zone ${zone || '(none)'} `, h('span.muted', `${list.length} member${list.length === 1 ? '' : 's'}`)),
        h('div.scroll', h('table.members',
          h('thead', h('tr', ['State', 'Name', 'Address', 'Groups', 'Checks', 'Version'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', rows)))));
    }
    if (!shown.length) frag.append(h('p.muted', members.length ? 'No member matches.' : 'No members known yet.'));
    fill(body, frag);
    if (!marked && shown.length) {
      marked = true;
      performance.mark('overview-rendered');
      document.body.dataset.overviewRendered = String(shown.length);
    }
  }
  render();
  return { el, update: (kind) => { if (kind === 'members') render(); } };
}

// ---------------------------------------------------------------- one node

function checksTable(checks, detailed) {
  if (!checks.length) return h('p.muted', 'No active checks.');
  const sorted = [...checks].sort((a, b) => severity(a.state) - severity(b.state) || a.name.localeCompare(b.name));
  return h('div.scroll', h('table.checks',
    h('thead', h('tr', ['State', 'Check', detailed ? 'Output' : null, detailed ? 'Last run' : null].filter(Boolean).map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', sorted.map((c) => h('tr.check', { dataset: { name: c.name, state: c.state } },
      h('td', badge(c.state)),
      h('th', { scope: 'row' }, c.display_name || c.name, h('div.muted.small', c.name)),
      detailed ? h('td', h('pre.output', [c.output, c.long_output].filter(Boolean).join('\n') || c.error || '')) : null,
      detailed ? h('td.muted', ago(c.last_run_ms)) : null)))));
}

/** Flatten a collector's data into `a.b.c = value` rows. */
function flatten(value, prefix, out) {
  if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else out.push([prefix, value]);
  return out;
}

function node(name, { store }) {
  const head = h('div');
  const checksBox = h('div', loading());
  const servicesBox = h('div');
  const collectorsBox = h('div');
  const metricsBox = h('div');
  const el = h('section',
    h('h1', { tabindex: '-1' }, 'Node ', h('span.mono', name)),
    head,
    h('h2', 'Checks'), checksBox,
    h('h2', 'Services'), servicesBox,
    h('h2', 'Collectors'), collectorsBox,
    h('h2', 'Metrics'), metricsBox);

  let isSelf = false;
  function renderHead() {
    const m = store.members && store.members.find((x) => x.name === name || x.uuid === name);
    if (!store.members) return fill(head, loading());
    if (!m) return fill(head, h('p.failure', { role: 'alert' }, `No member named ${name} is known to this agent.`));
    isSelf = m.is_self;
    fill(head, h('dl.facts',
      h('dt', 'State'), h('dd', badge(m.state)),
      h('dt', 'Display name'), h('dd', m.display_name),
      h('dt', 'Address'), h('dd.mono', m.addr),
      h('dt', 'Zone'), h('dd', m.zone),
      h('dt', 'Groups'), h('dd', m.groups.length ? m.groups.map((g) => h('span.group', g)) : h('span.muted', 'none')),
      h('dt', 'Version'), h('dd', m.version),
      h('dt', 'UUID'), h('dd.mono.small', m.uuid),
      m.maintenance ? [h('dt', 'Maintenance'), h('dd', m.maintenance)] : null));
    fill(servicesBox, m.services.length ? h('ul.plain', m.services.map((s) => h('li', badge(s.state), ' ', s.name, s.port ? h('span.muted', ` :${s.port}`) : null,
      s.maintenance ? h('span.tag.st-warning', 'maintenance') : null))) : h('p.muted', 'No services.'));
    if (!isSelf) {
      fill(collectorsBox, h('p.muted', 'Collector values and metrics are kept by each node: open this node\'s own UI to see them.'));
      fill(metricsBox);
    }
  }

  async function loadChecks() {
    try {
      const nc = await api.get(`/monitoring/state/${encodeURIComponent(name)}`);
      fill(checksBox, checksTable(nc.checks, nc.is_self), nc.is_self ? null : h('p.muted.small', 'States as this node gossips them; outputs are on its own agent.'));
    } catch (e) { fill(checksBox, failed(e)); }
  }

  async function loadSelfDetails() {
    if (!isSelf) return;
    try {
      const collectors = await api.get('/collectors');
      fill(collectorsBox, Object.entries(collectors).map(([cname, c]) => {
        const rows = flatten(c.data, '', []).slice(0, 200);
        return h('details.collector', h('summary', badge(c.state), ' ', cname, h('span.muted', ` ${ago(c.last_run_ms)}`)),
          c.message ? h('p.muted', c.message) : null,
          rows.length ? h('table.kv', h('tbody', rows.map(([k, v]) => h('tr', h('th', { scope: 'row' }, k), h('td.mono', String(v)))))) : h('p.muted', 'No values.'));
      }));
    } catch (e) { fill(collectorsBox, failed(e)); }
    try {
      const leaves = await findLeaves('', 4);
      if (!leaves.length) fill(metricsBox, h('p.muted', 'No series stored yet (statsd, graphite or collectors feed them).'));
      else fill(metricsBox, h('div.charts', leaves.map((t) => chartBox(t, '-1h'))));
    } catch (e) { fill(metricsBox, failed(e)); }
  }

  renderHead();
  loadChecks();
  loadSelfDetails();
  return {
    el,
    update: (kind) => {
      if (kind === 'members') {
        const was = isSelf;
        renderHead();
        if (!was && isSelf) loadSelfDetails();
      }
      if (kind === 'checks' && isSelf) loadChecks();
    },
  };
}

/** Up to `n` series under `path`, breadth first. */
async function findLeaves(path, n) {
  const out = [];
  const queue = [path];
  while (queue.length && out.length < n) {
    const p = queue.shift();
    const nodes = await api.get(`/metrics/find?query=${encodeURIComponent(p ? `${p}.*` : '*')}`);
    for (const x of nodes) {
      if (x.leaf) out.push(x.id);
      else queue.push(x.id);
      if (out.length >= n) break;
    }
  }
  return out;
}

// ---------------------------------------------------------------- charts (uPlot)

const RANGES = [['-15min', '15 min'], ['-1h', '1 hour'], ['-6h', '6 hours'], ['-1d', '1 day'], ['-7d', '7 days']];
const PALETTE = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed', '#0891b2'];

/** A chart of `target` over `from`..now, drawn with uPlot. */
function chartBox(target, from) {
  const box = h('figure.chart', { dataset: { target } }, h('figcaption.mono', target), loading());
  drawChart(box, target, from);
  return box;
}

export async function drawChart(box, target, from) {
  let series;
  try {
    series = await api.get(`/render?format=json&target=${encodeURIComponent(target)}&from=${encodeURIComponent(from)}`);
  } catch (e) {
    fill(box, h('figcaption.mono', target), failed(e));
    return;
  }
  const stamps = new Set();
  for (const s of series) for (const [, t] of s.datapoints) stamps.add(t);
  const xs = [...stamps].sort((a, b) => a - b);
  const index = new Map(xs.map((t, i) => [t, i]));
  const data = [xs];
  let points = 0;
  for (const s of series) {
    const ys = new Array(xs.length).fill(null);
    for (const [v, t] of s.datapoints) {
      ys[index.get(t)] = v;
      if (v !== null) points++;
    }
    data.push(ys);
  }
  const plot = h('div.plot');
  fill(box, h('figcaption.mono', target), plot);
  box.dataset.points = String(points);
  if (!series.length || !points) {
    plot.append(h('p.muted', series.length ? 'No points in this range yet.' : 'No series match this target.'));
    return;
  }
  const dark = document.documentElement.dataset.theme === 'dark'
    || (!document.documentElement.dataset.theme && matchMedia('(prefers-color-scheme: dark)').matches);
  const axisColor = dark ? '#cbd5e1' : '#334155';
  const grid = { stroke: dark ? '#334155' : '#e2e8f0', width: 1 };
  const width = Math.max(280, (box.clientWidth || 600) - 8);
  const opts = {
    width,
    height: 220,
    series: [{}, ...series.map((s, i) => ({ label: s.target, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true, points: { show: points < 60 } }))],
    axes: [{ stroke: axisColor, grid }, { stroke: axisColor, grid }],
    legend: { show: series.length <= 6 },
  };
  // uPlot is loaded as a classic script (its minified build) before the modules.
  const chart = new window.uPlot(opts, data, plot);
  (window.opsbroCharts = window.opsbroCharts || []).push(chart);
}

function metrics(arg) {
  const start = arg || '';
  const tree = h('ul.tree', { role: 'tree', 'aria-label': 'Series' });
  const targetInput = h('input#target', { type: 'text', value: start, placeholder: 'stats.counters.*.count', autocomplete: 'off' });
  const range = h('select#range', RANGES.map(([v, l]) => h('option', { value: v, selected: v === '-1h' }, l)));
  const out = h('div.charts');
  function draw() {
    const t = targetInput.value.trim();
    if (!t) return;
    history.replaceState(null, '', `#/metrics/${encodeURIComponent(t)}`);
    const box = h('figure.chart', { dataset: { target: t } }, h('figcaption.mono', t), loading());
    fill(out, box);
    drawChart(box, t, range.value);
  }
  async function expand(li, path) {
    const sub = h('ul', { role: 'group' }, h('li.muted', 'Loading…'));
    li.append(sub);
    try {
      const nodes = await api.get(`/metrics/find?query=${encodeURIComponent(path ? `${path}.*` : '*')}`);
      fill(sub, nodes.length ? nodes.map(item) : h('li.muted', 'No series yet.'));
    } catch (e) { fill(sub, h('li', failed(e))); }
  }
  function item(n) {
    const li = h('li', { role: 'treeitem' });
    if (n.leaf) {
      li.append(h('button.link', { type: 'button', onclick: () => { targetInput.value = n.id; draw(); } }, n.text));
    } else {
      let open = false;
      const b = h('button.link.branch', { type: 'button', 'aria-expanded': 'false', onclick: () => {
        open = !open;
        b.setAttribute('aria-expanded', String(open));
        if (open) expand(li, n.id); else li.querySelector('ul')?.remove();
      } }, n.text);
      li.append(b);
    }
    return li;
  }
  const rootLi = h('li');
  tree.append(rootLi);
  expand(rootLi, '');
  const el = h('section',
    h('h1', { tabindex: '-1' }, 'Metrics'),
    h('div.split',
      h('nav.treebox', { 'aria-label': 'Series tree' }, tree),
      h('div',
        h('div.toolbar',
          h('label', h('span', 'Target'), targetInput),
          h('label', h('span', 'Range'), range),
          h('button#draw', { type: 'button', onclick: draw }, 'Draw')),
        h('p.muted.small', 'Any graphite target: a path with wildcards, or functions like sumSeries(stats.counters.*.count).'),
        out)));
  targetInput.addEventListener('keydown', (e) => { if (e.key === 'Enter') draw(); });
  range.addEventListener('change', draw);
  if (start) setTimeout(draw);
  return { el, update: (kind) => { if (kind === 'theme' && targetInput.value) draw(); } };
}

// ---------------------------------------------------------------- checks everywhere

function checks(_arg, { store }) {
  let problemsOnly = false;
  const body = h('div', loading());
  const toggle = h('input#problems-only', { type: 'checkbox', onchange: (e) => { problemsOnly = e.target.checked; render(); } });
  const el = h('section',
    h('h1', { tabindex: '-1' }, 'Checks'),
    h('div.toolbar', h('label.inline', toggle, ' Problems only')),
    body);
  function render() {
    if (!store.members) return;
    const local = store.localChecks ? new Map(store.localChecks.checks.map((c) => [c.name, c])) : new Map();
    const rows = [];
    for (const m of store.members) {
      for (const c of m.checks || []) {
        const full = m.is_self ? local.get(c.name) : null;
        rows.push({ node: m.name, nodeState: m.state, name: c.name, state: full ? full.state : c.state, output: full ? full.output : '' });
      }
    }
    if (store.localChecks) {
      const self = store.members.find((m) => m.is_self);
      for (const c of store.localChecks.checks) {
        if (self && !rows.some((r) => r.node === self.name && r.name === c.name)) {
          rows.push({ node: self.name, nodeState: self.state, name: c.name, state: c.state, output: c.output });
        }
      }
    }
    const shown = rows.filter((r) => !problemsOnly || severity(r.state) < 3)
      .sort((a, b) => severity(a.state) - severity(b.state) || a.node.localeCompare(b.node) || a.name.localeCompare(b.name));
    const counts = {};
    for (const r of rows) counts[r.state] = (counts[r.state] || 0) + 1;
    fill(body,
      h('p', Object.entries(counts).sort((a, b) => severity(a[0]) - severity(b[0])).map(([s, n]) => h('span.count', { class: `st-${s}` }, `${n} ${s}`))),
      shown.length ? h('div.scroll', h('table.checks',
        h('thead', h('tr', ['State', 'Node', 'Check', 'Output'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', shown.map((r) => h('tr.check', { dataset: { node: r.node, name: r.name, state: r.state } },
          h('td', badge(r.state)), h('td', nodeLink(r.node)), h('th', { scope: 'row' }, r.name), h('td', h('span.output', r.output))))))) : h('p.muted', problemsOnly ? 'No problems.' : 'No checks.'));
  }
  render();
  return { el, update: (kind) => { if (kind === 'members' || kind === 'checks') render(); } };
}

// ---------------------------------------------------------------- KV

function kv(prefix, { showMessage, clearMessage }) {
  const list = h('div', loading());
  const viewer = h('div.kv-viewer');
  const el = h('section',
    h('h1', { tabindex: '-1' }, 'Key/value store'),
    h('nav.crumbs', { 'aria-label': 'Prefix' }, crumbs(prefix)),
    h('div.split', h('div', list, newKeyForm()), viewer));

  function crumbs(p) {
    const parts = p.split('/').filter(Boolean);
    const out = [h('a', { href: '#/kv/' }, 'root')];
    let acc = '';
    for (const part of parts) {
      acc += `${part}/`;
      out.push(' / ', h('a', { href: `#/kv/${encodeURIComponent(acc)}` }, part));
    }
    return out;
  }

  function keyUrl(key) {
    return `/kv/${key.split('/').map(encodeURIComponent).join('/')}`;
  }

  async function load() {
    let entries;
    try {
      entries = await api.get(`/kv/?prefix=${encodeURIComponent(prefix)}`);
    } catch (e) {
      fill(list, failed(e));
      return;
    }
    const folders = new Set();
    const keys = [];
    for (const e of entries) {
      const rest = e.key.slice(prefix.length);
      const slash = rest.indexOf('/');
      if (slash >= 0) folders.add(rest.slice(0, slash + 1));
      else keys.push(e);
    }
    fill(list, h('ul.plain.keys',
      [...folders].sort().map((f) => h('li', h('a.folder', { href: `#/kv/${encodeURIComponent(prefix + f)}` }, `▸ ${f}`))),
      keys.map((e) => h('li', h('button.link.key', { type: 'button', dataset: { key: e.key }, onclick: () => show(e.key) }, e.key.slice(prefix.length))))),
    !entries.length ? h('p.muted', 'No keys under this prefix.') : null);
  }

  async function show(key) {
    let entry;
    try {
      entry = await api.getExact(keyUrl(key));
    } catch (e) {
      fill(viewer, failed(e));
      return;
    }
    const bytes = decodeBase64(entry.value);
    let text = null;
    try { text = new TextDecoder('utf-8', { fatal: true }).decode(bytes); } catch (_) { /* binary */ }
    let json = null;
    if (text !== null) { try { json = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ } }
    const pre = h('pre.value');
    const modes = h('div.tabs', { role: 'group', 'aria-label': 'View as' });
    function view(mode) {
      fill(pre, mode === 'hex' ? hexdump(bytes) : mode === 'json' ? json : text);
      for (const b of modes.children) b.setAttribute('aria-pressed', String(b.dataset.mode === mode));
    }
    fill(modes, [['text', text !== null], ['json', json !== null], ['hex', true]].map(([m, ok]) =>
      h('button.chip', { type: 'button', dataset: { mode: m }, disabled: !ok, onclick: () => view(m) }, m)));
    const editor = h('textarea#kv-value', { rows: 6, 'aria-label': `New value of ${key}` });
    editor.value = text !== null ? text : '';
    const status = h('p.muted', { role: 'status' });
    const confirmBox = h('div');
    fill(viewer,
      h('h2.mono', key),
      h('p.muted.small', `version ${entry.modify_index}, created at ${entry.create_index}${entry.expires_ms ? `, expires ${time(entry.expires_ms)}` : ''}`),
      modes, pre,
      h('h3', 'Edit'),
      editor,
      h('div.toolbar',
        h('button#kv-save', { type: 'button', onclick: async () => {
          try {
            const w = await api.send('PUT', `${keyUrl(key)}?cas=${entry.modify_index}`, editor.value);
            clearMessage('kv');
            fill(status, `Saved: version ${w.modify_index}.`);
            show(key);
          } catch (e) { kvFailure(e, key); }
        } }, 'Save (only if unchanged since loaded)'),
        h('button#kv-delete.danger', { type: 'button', onclick: () => {
          fill(confirmBox, h('div.confirm', { role: 'alertdialog', 'aria-label': 'Confirm delete' },
            h('p', `Delete ${key}? This cannot be undone.`),
            h('button#kv-delete-confirm.danger', { type: 'button', onclick: async () => {
              try {
                await api.send('DELETE', `${keyUrl(key)}?cas=${entry.modify_index}`);
                clearMessage('kv');
                fill(viewer, h('p', { role: 'status' }, `Deleted ${key}.`));
                load();
              } catch (e) { kvFailure(e, key); }
            } }, 'Delete'),
            ' ',
            h('button', { type: 'button', onclick: () => fill(confirmBox) }, 'Cancel')));
          confirmBox.querySelector('button').focus();
        } }, 'Delete…')),
      confirmBox, status);
    view(json !== null ? 'json' : text !== null ? 'text' : 'hex');
  }

  function kvFailure(e, key) {
    const why = e.status === 409
      ? `Not saved: ${key} was changed by someone else since it was loaded (CAS mismatch: ${e.message}). Reload the key to see the new value.`
      : e.status === 503
        ? `Not saved: the store could not reach enough replicas (503: ${e.message}). Try again when the cluster is healthy.`
        : `Not saved: ${e.message}${e.status ? ` (HTTP ${e.status})` : ''}`;
    showMessage(why, 'error', 'kv');
  }

  function newKeyForm() {
    const keyIn = h('input#kv-new-key', { type: 'text', value: prefix, autocomplete: 'off' });
    const valIn = h('textarea#kv-new-value', { rows: 3 });
    return h('div.card',
      h('h2', 'New key'),
      h('label', h('span', 'Key'), keyIn),
      h('label', h('span', 'Value'), valIn),
      h('button#kv-create', { type: 'button', onclick: async () => {
        const key = keyIn.value.trim();
        if (!key || key.endsWith('/')) { showMessage('Give a key name (not ending with /).', 'error', 'kv'); return; }
        try {
          // cas=0: only if the key does not exist yet.
          await api.send('PUT', `${keyUrl(key)}?cas=0`, valIn.value);
          clearMessage('kv');
          showMessage(`Created ${key}.`, 'info', 'kv');
          load();
          show(key);
        } catch (e) { kvFailure(e, key); }
      } }, 'Create'));
  }

  load();
  return { el };
}

// ---------------------------------------------------------------- generators and compliance

function diffView(diff) {
  return h('pre.diff', diff.split('\n').map((line) => h('span', { class: line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : '' }, `${line}\n`)));
}

function generators() {
  const gens = h('div', loading());
  const comp = h('div', loading());
  const el = h('section', h('h1', { tabindex: '-1' }, 'Generators and compliance'), h('h2', 'Generators'), gens, h('h2', 'Compliance'), comp);
  api.get('/generators/state').then((list) => fill(gens, list.length ? list.sort((a, b) => severity(a.state) - severity(b.state)).map((g) =>
    h('details.card', { open: g.state === 'error' },
      h('summary', badge(g.state), ' ', g.name, h('span.muted.mono', ` → ${g.path}`)),
      h('p.muted.small', `${g.runs} renders, ${g.writes} writes; last run ${ago(g.last_run_ms)}, last change ${ago(g.last_change_ms)}`),
      g.message ? h('p', g.message) : null,
      g.diff ? [h('h3', 'Last change'), diffView(g.diff)] : null,
      g.command_output ? [h('h3', 'Command output'), h('pre.output', g.command_output)] : null)) : h('p.muted', 'No generators.')))
    .catch((e) => fill(gens, failed(e)));
  api.get('/compliance/state').then((list) => fill(comp, list.length ? list.sort((a, b) => severity(a.state) - severity(b.state)).map((c) =>
    h('details.card', { open: /error|fail/i.test(c.state) },
      h('summary', badge(c.state), ' ', c.display_name || c.name, h('span.muted', ` ${c.mode}`)),
      h('p.muted.small', `${c.name}; last run ${ago(c.last_run_ms)}, every ${c.interval_secs} s; was ${c.old_state}`),
      h('table.kv', h('tbody', c.rules.map((r) => h('tr', h('td', badge(r.state)), h('th', { scope: 'row' }, r.name, h('div.muted.small', r.kind)),
        h('td', h('pre.output', r.infos.map((i) => `${i.state}: ${i.text}`).join('\n')))))))))
    : h('p.muted', 'No compliance objects.')))
    .catch((e) => fill(comp, failed(e)));
  return { el };
}

// ---------------------------------------------------------------- live events

function describe(channel, p) {
  switch (channel) {
    case 'node': return `${p.name} ${p.old_state} → ${p.state}`;
    case 'check': return `${p.name} ${p.old_state} → ${p.state}: ${p.output}`;
    case 'group': return `group ${p.group} ${p.action === 'add' ? 'added' : 'removed'}`;
    case 'kv': return `${p.action} ${p.key} (version ${p.modify_index})`;
    case 'service': return `${p.service} on ${p.node}: ${p.old_state} → ${p.state}`;
    case 'compliance': return `${p.name} ${p.old_state} → ${p.state}`;
    default: return JSON.stringify(p);
  }
}

function events(_arg, { store }) {
  const hidden = new Set();
  const filters = h('div.toolbar', { role: 'group', 'aria-label': 'Channels' });
  const list = h('ol.events', { 'aria-live': 'polite' });
  const liveNote = h('p.muted.small');
  const el = h('section', h('h1', { tabindex: '-1' }, 'Live events'), liveNote, filters, list);
  const channels = ['node', 'check', 'group', 'service', 'kv', 'compliance', 'event', 'exec', 'raft', 'docker'];
  fill(filters, channels.map((c) => h('label.inline', h('input', { type: 'checkbox', checked: true, onchange: (e) => {
    if (e.target.checked) hidden.delete(c); else hidden.add(c);
    render();
  } }), ` ${c}`)));
  function render() {
    fill(liveNote, store.live ? 'Following the agent\'s event stream; newest first. Events since this page opened.' : 'Not connected to the event stream.');
    const shown = store.events.filter((f) => !hidden.has(f.channel)).slice(0, 300);
    fill(list, shown.length ? shown.map((f) => h('li.event', { dataset: { channel: f.channel } },
      h('time.muted.mono', { datetime: new Date(f.time_ms).toISOString() }, new Date(f.time_ms).toLocaleTimeString()),
      h('span.chan', f.channel), h('span', describe(f.channel, f.payload || {})))) : h('li.muted', 'Nothing yet.'));
  }
  render();
  return { el, update: (kind) => { if (kind === 'event' || kind === 'members') render(); } };
}

export const PAGES = { overview, node, checks, kv, metrics, generators, events };
