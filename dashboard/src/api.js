// The dashboard's only way to the broker: the management HTTP API (RabbitMQ 3.10's paths and
// JSON shapes), authenticated with HTTP basic auth. Credentials live in sessionStorage, so
// they last as long as the browser tab and never reach disk.

const AUTH_KEY = "warren.dashboard.auth";
const USER_KEY = "warren.dashboard.user";

// The API is served from the same origin as the pages; a dev server proxies it.
const BASE = "api";

export class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

export function credentials() {
  return sessionStorage.getItem(AUTH_KEY);
}

export function userName() {
  return sessionStorage.getItem(USER_KEY) || "";
}

export function logout() {
  sessionStorage.removeItem(AUTH_KEY);
  sessionStorage.removeItem(USER_KEY);
}

function basic(user, password) {
  // btoa only takes Latin-1, so encode the UTF-8 bytes first.
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let latin1 = "";
  for (const b of bytes) latin1 += String.fromCharCode(b);
  return "Basic " + btoa(latin1);
}

// Checks the credentials against /api/whoami and keeps them only when the broker accepts them.
export async function login(user, password) {
  const auth = basic(user, password);
  const me = await request("GET", "/whoami", undefined, auth);
  sessionStorage.setItem(AUTH_KEY, auth);
  sessionStorage.setItem(USER_KEY, me.name || user);
  return me;
}

// Percent-encodes one path segment the way the API expects (the default vhost "/" is "%2F").
export function seg(s) {
  return encodeURIComponent(s);
}

// Builds a path from segments: path("queues", vhost, name) -> "/queues/%2F/name".
export function path(...parts) {
  return "/" + parts.map(seg).join("/");
}

export async function request(method, p, body, auth = credentials(), extra = {}) {
  // Some endpoints (RabbitMQ's purge, for one) answer only text/plain and refuse a request
  // that accepts nothing else with 406, so other types are accepted at a lower weight.
  const headers = { Accept: "application/json, */*;q=0.1", ...extra };
  if (auth) headers.Authorization = auth;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  // credentials "omit" keeps the browser from showing its own login prompt on a 401: the
  // Authorization header above is set by hand and is sent regardless.
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(BASE + p, init);
  } catch (e) {
    throw new ApiError(0, `cannot reach the broker (${e.message})`);
  }
  const text = await resp.text();
  if (!resp.ok) {
    let reason = resp.statusText || `HTTP ${resp.status}`;
    try {
      const j = JSON.parse(text);
      reason = j.reason || j.error || reason;
    } catch {
      // Not JSON: keep the status text.
    }
    if (resp.status === 401 && auth === credentials()) {
      logout();
      window.dispatchEvent(new Event("warren-unauthorized"));
    }
    throw new ApiError(resp.status, reason);
  }
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export const get = (p) => request("GET", p);
export const put = (p, body = {}) => request("PUT", p, body);
export const post = (p, body = {}) => request("POST", p, body);
export const del = (p, headers) => request("DELETE", p, undefined, credentials(), headers);

// Downloads a file from the API (basic auth needs a header, so a plain link cannot do it) and
// hands it to the browser as a download.
export async function download(p, fileName) {
  let resp;
  try {
    resp = await fetch(BASE + p, {
      headers: { Authorization: credentials() || "" },
      credentials: "omit",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, `cannot reach the broker (${e.message})`);
  }
  if (!resp.ok) throw new ApiError(resp.status, resp.statusText || `HTTP ${resp.status}`);
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = fileName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
