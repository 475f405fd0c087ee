// REST calls to /v1 with the tab's token. The token lives in sessionStorage (this tab only) and
// travels only in the Authorization header: never in a URL, never in a log line.

const TOKEN_KEY = "runwire.token";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? `${problem.code}: ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

let askToken = null; // set by main.js: () => Promise<void> resolving once a token was entered

export function onUnauthorized(fn) {
  askToken = fn;
}

// `api("GET", "/sessions")`; state-changing requests always carry a JSON body ({} at least),
// which is what the server's CSRF rule asks for.
export async function api(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }) };
    if (method !== "GET" && method !== "HEAD") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body ?? {});
    }
    const response = await fetch(`/v1${path}`, init);
    if (response.status === 401 && askToken && attempt < 3) {
      await askToken();
      continue;
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

// A file behind the API (reports, artifacts) as a blob URL, so the token is sent as a header.
export async function openFile(path) {
  const response = await fetch(`/v1${path}`, { headers: authHeaders() });
  if (!response.ok) throw new ApiError(response.status, null);
  const url = URL.createObjectURL(await response.blob());
  window.open(url, "_blank", "noopener");
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
