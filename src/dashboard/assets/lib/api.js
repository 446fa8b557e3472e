// The REST API from the browser: JSON in and out, errors as ApiError from the server's
// `{"error": {code, message, details}}` body, and the API token — asked for once, when a
// route answers 401 (or taken from the `#token=` address `orchestrator start` prints), and
// kept in sessionStorage for the rest of the session.

const TOKEN_KEY = "orchestrator.apiToken";

/** An error answer of the API (or a network failure: status 0, code `network`). */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** The token kept for this session, or null. */
export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/**
 * Takes a token from the address (`/#token=...`, the address `orchestrator start` prints
 * for a token it generated): kept as the dialog keeps one, then taken out of the address bar
 * and history so it is neither bookmarked nor shared. True when there was one.
 */
export function takeTokenFromAddress() {
  const match = /^#token=([^&]*)/.exec(location.hash);
  if (!match) return false;
  let token = "";
  try {
    token = decodeURIComponent(match[1]).trim();
  } catch {
    /* not an escape sequence: no token */
  }
  history.replaceState(null, "", location.pathname + location.search);
  if (token) setToken(token);
  return Boolean(token);
}

/** Keeps (or with null, forgets) the token for this session. */
export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lasts until the page is left */
  }
  tokenListeners.forEach((fn) => fn(token));
}

const tokenListeners = new Set();
/** Calls `fn(token)` whenever the token changes; returns the unsubscriber. */
export function onTokenChange(fn) {
  tokenListeners.add(fn);
  return () => tokenListeners.delete(fn);
}

let asking = null;
/**
 * Asks for the token with the page's dialog (once at a time: concurrent callers share the
 * answer). Resolves to the token, or null when the person cancels.
 */
export function askToken(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  if (!dialog || typeof dialog.showModal !== "function") return Promise.resolve(null);
  asking = new Promise((resolve) => {
    input.value = "";
    error.hidden = !reason;
    error.textContent = reason || "";
    dialog.addEventListener(
      "close",
      () => {
        asking = null;
        const token = dialog.returnValue === "ok" ? input.value.trim() : "";
        if (token) setToken(token);
        resolve(token || null);
      },
      { once: true },
    );
    dialog.showModal();
    input.focus();
  });
  return asking;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  const e = body && body.error;
  if (e) return new ApiError(response.status, e.code, e.message, e.details || {});
  return new ApiError(response.status, `http_${response.status}`, `${response.status} ${response.statusText}`);
}

/**
 * One request. options: {body (sent as JSON), signal, as: "json" | "text" | "response"}.
 * A 401 asks for the token and retries once with it.
 */
export async function request(method, path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: options.as === "text" ? "text/plain" : "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    // Every request that changes something says JSON, even without a body: the server
    // refuses others (a page of another site cannot send this header without asking first).
    if (method !== "GET" && method !== "HEAD") headers["Content-Type"] = "application/json";
    if (options.body !== undefined) body = JSON.stringify(options.body);
    let response;
    try {
      response = await fetch(path, { method, headers, body, signal: options.signal });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "network", `cannot reach the server (${method} ${path}): ${err.message || err}`);
    }
    if (response.status === 401 && attempt === 0) {
      const problem = await errorFrom(response);
      // A token given meanwhile (the dialog another request opened): try with it.
      const now = getToken();
      if (now && now !== token) continue;
      const given = await askToken(token ? "That token was refused: " + problem.message : problem.message);
      if (given) continue;
      throw problem;
    }
    if (!response.ok) throw await errorFrom(response);
    if (options.as === "response") return response;
    if (options.as === "text") return response.text();
    if (response.status === 204) return null;
    return response.json();
  }
}

/** GET JSON. */
export const get = (path, options) => request("GET", path, options);
/** GET text (a step's log). */
export const getText = (path, options) => request("GET", path, { ...options, as: "text" });
/** POST JSON (body optional). */
export const post = (path, body, options) => request("POST", path, { ...options, body });
/** DELETE. */
export const del = (path, options) => request("DELETE", path, options);

/** A query string from an object, leaving out empty values: qs({a: 1, b: ""}) === "?a=1". */
export function qs(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") search.set(k, v);
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Path segment escaping: `/api/runs/${seg(id)}`. */
export const seg = encodeURIComponent;
