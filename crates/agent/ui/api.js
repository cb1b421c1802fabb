// Talking to the agent: the token (kept in sessionStorage, sent as a bearer header, never in a
// URL), JSON requests whose failures carry the agent's own message, and the event stream.

const TOKEN_KEY = 'opsbro.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A failed request: `status` 0 means the agent could not be reached at all. */
export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** Listeners told about every failure (the app shows them). */
const failureListeners = [];
export function onFailure(fn) {
  failureListeners.push(fn);
}

/** fetch() the agent; answers the Response, throws ApiError with the agent's message. */
export async function request(path, opts = {}) {
  let res;
  try {
    res = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers), cache: 'no-store' }));
  } catch (e) {
    const err = new ApiError(0, `the agent is unreachable (${e.message || e})`, path);
    failureListeners.forEach((f) => f(err));
    throw err;
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && body.error) message = body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    const err = new ApiError(res.status, message, path);
    failureListeners.forEach((f) => f(err));
    throw err;
  }
  return res;
}

export async function get(path) {
  return (await request(path)).json();
}

/**
 * Like get(), with the store's versions kept as strings: they are 64-bit numbers (a hybrid
 * clock) that a JavaScript number would round, and a rounded version fails every CAS.
 */
export async function getExact(path) {
  const text = await (await request(path)).text();
  // Inside JSON strings a quote is escaped, so this only matches the real fields.
  return JSON.parse(text.replace(/"(modify_index|create_index)":(\d+)/g, '"$1":"$2"'));
}

export async function send(method, path, body) {
  const res = await request(path, { method, body });
  const text = await res.text();
  return text ? JSON.parse(text.replace(/"(modify_index|create_index)":(\d+)/g, '"$1":"$2"')) : null;
}

/**
 * Follow `/ui/events` (Server-Sent Events read through fetch() so the token goes in a header).
 * `onEvent(channel, frame)`; `onStatus(connected, why)`. Reconnects with a growing delay; answers
 * a function that stops it.
 */
export function follow(onEvent, onStatus) {
  let stopped = false;
  let controller = null;
  let delay = 500;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const res = await fetch('/ui/events', { headers: headers({ Accept: 'text/event-stream' }), signal: controller.signal, cache: 'no-store' });
        if (!res.ok) {
          let why = `${res.status}`;
          try { why = (await res.json()).error || why; } catch (_) { /* keep the status */ }
          const err = new ApiError(res.status, why, '/ui/events');
          onStatus(false, err);
          if (res.status === 401) failureListeners.forEach((f) => f(err));
        } else {
          delay = 500;
          onStatus(true, null);
          await readEvents(res.body, onEvent);
          if (!stopped) onStatus(false, new ApiError(0, 'the event stream ended (agent stopped?)', '/ui/events'));
        }
      } catch (e) {
        if (stopped) return;
        onStatus(false, new ApiError(0, `the agent is unreachable (${e.message || e})`, '/ui/events'));
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  run();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      if (!data.length) continue; // a keepalive comment
      try {
        onEvent(event, JSON.parse(data.join('\n')));
      } catch (e) {
        console.error('bad event', e);
      }
    }
  }
}
