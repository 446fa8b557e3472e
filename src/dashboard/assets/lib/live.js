// One /ws connection for the whole dashboard, reconnecting with backoff, fanned out to the
// pages by event type. The token, when the server wants one, goes as `?token=` (a browser
// cannot set headers on a WebSocket). Events a client must ask for by name (`run_log`) are
// asked for while some page wants them. After a `lagged` notice or a reconnect, listeners
// of `resync` are told to refetch: events were missed.

import { getToken, askToken, onTokenChange } from "./api.js";

const listeners = new Map(); // type -> Set<fn>
const stateListeners = new Set();
const wanted = new Map(); // opt-in kind -> count of pages wanting it
let socket = null;
let state = "idle";
let backoff = 500;
let timer = null;
let pingTimer = null;
let everConnected = false;
let started = false;

function setState(next, detail) {
  state = next;
  stateListeners.forEach((fn) => fn(next, detail));
}

function dispatch(type, payload, message) {
  for (const key of [type, "*"]) {
    for (const fn of listeners.get(key) || []) {
      try {
        fn(payload, message);
      } catch (err) {
        console.error(`a listener of ${type} failed`, err);
      }
    }
  }
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function syncSubscription() {
  // No subscription: every kind but the opt-in ones. `subscribe` with no list adds them all.
  const anyWanted = [...wanted.values()].some((n) => n > 0);
  if (anyWanted) send({ type: "subscribe", events: [] });
  else send({ type: "unsubscribe", events: ["run_log"] });
}

function url() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = getToken();
  return `${scheme}//${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`;
}

async function needsToken() {
  // A browser does not see why a handshake failed; a plain GET tells: 401 wants the token.
  try {
    const headers = {};
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch("/ws", { headers });
    return response.status === 401;
  } catch {
    return false;
  }
}

function connect() {
  clearTimeout(timer);
  setState(everConnected ? "reconnecting" : "connecting");
  let opened = false;
  const ws = new WebSocket(url());
  socket = ws;
  ws.addEventListener("open", () => {
    opened = true;
    backoff = 500;
    if ([...wanted.values()].some((n) => n > 0)) syncSubscription();
    clearInterval(pingTimer);
    pingTimer = setInterval(() => send({ type: "ping" }), 25000);
  });
  ws.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "connected") {
      setState("live");
      if (everConnected) dispatch("resync", { reason: "reconnected" }, message);
      everConnected = true;
      return;
    }
    if (message.type === "lagged") {
      dispatch("resync", { reason: "lagged", missed: message.payload?.missed }, message);
      return;
    }
    if (message.type === "pong" || message.type === "subscribed") return;
    dispatch(message.type, message.payload, message);
  });
  ws.addEventListener("close", async () => {
    if (socket !== ws) return;
    socket = null;
    clearInterval(pingTimer);
    if (!opened && (await needsToken())) {
      // A token given in the dialog reconnects (onTokenChange); cancelled, the header's
      // button asks again.
      setState("needs-token");
      askToken("Live updates need the API token.");
      return;
    }
    setState("reconnecting");
    timer = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 15000);
  });
}

/** Opens the connection (once). */
export function start() {
  if (started) return;
  started = true;
  onTokenChange(() => reconnect());
  connect();
}

/** Reconnects now (the header's "Enter API token" button, after a token was given). */
export function reconnect() {
  const old = socket;
  socket = null;
  if (old) old.close();
  connect();
}

/**
 * Calls `fn(payload, message)` for each event of `type` (`"*"`: every event; `"resync"`:
 * after missed events). Returns the unsubscriber.
 */
export function on(type, fn) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(fn);
  return () => listeners.get(type)?.delete(fn);
}

/** Asks the server for an opt-in kind (`run_log`) until the returned function is called. */
export function want(kind) {
  const before = [...wanted.values()].some((n) => n > 0);
  wanted.set(kind, (wanted.get(kind) || 0) + 1);
  if (!before) syncSubscription();
  let released = false;
  return () => {
    if (released) return;
    released = true;
    wanted.set(kind, wanted.get(kind) - 1);
    if (![...wanted.values()].some((n) => n > 0)) syncSubscription();
  };
}

/** The connection's state: connecting, live, reconnecting, needs-token. */
export function connectionState() {
  return state;
}

/** Calls `fn(state)` on every change of the connection's state; returns the unsubscriber. */
export function onState(fn) {
  stateListeners.add(fn);
  fn(state);
  return () => stateListeners.delete(fn);
}
