// The dashboard: hash-routed views (#/ sessions, #/sessions/<sid>[/runs/<rid>]) over one event
// stream. Events update the model at once (cheap, O(1) each); the DOM is rendered at most once
// per animation frame from dirty flags, so a burst of 1,000 events/s costs one render a frame.
// Everything kept is bounded: MAX_EVENTS in memory, MAX_ROWS in the event list, 11 curves.

import { api, ApiError, getToken, onUnauthorized, openFile, setToken } from "./api.js";
import { EventStream } from "./stream.js";
import { badge, duration, el, localDateTime, localTime } from "./format.js";
import { RunView } from "./run.js";
import { CurvePlot } from "./plot.js";
import { EventTail } from "./tail.js";

const $ = (sel) => document.querySelector(sel);
const SESSION_EVENTS = new Set([
  "session.created", "session.updated", "session.deleted", "session.state_changed",
  "sources.changed", "run.queued", "run.started", "run.finished", "run.cancelled", "run.interrupted",
]);
const TERMINAL = new Set(["run.finished", "run.cancelled", "run.interrupted"]);
const REFRESH_MS = 250; // at most one state refetch per this long, whatever the event rate

const state = {
  route: { view: "sessions", sid: null, rid: null },
  sessions: new Map(),
  session: null, // the open session's record
  runs: [], // the open session's runs, newest first
  dirty: new Set(),
};

const tail = new EventTail({
  list: $("#event-list"), typeSelect: $("#filter-type"), runInput: $("#filter-run"),
  sessionBox: $("#filter-session"), count: $("#events-count"),
  currentSession: () => (state.route.view === "session" ? state.route.sid : null),
});
const runView = new RunView({
  tree: $("#step-tree"), summary: $("#run-summary"), error: $("#run-error"), links: $("#run-links"),
  openFile: (path) => openFile(path).catch(flash),
});
const plot = new CurvePlot({ container: $("#plot"), note: $("#plot-note") });

// --- token: asked once, kept for this tab -----------------------------------------------------
let tokenPromise = null;
function askForToken() {
  if (tokenPromise) return tokenPromise;
  const dialog = $("#token-dialog");
  const hadToken = !!getToken();
  setToken(null);
  $("#token-error").textContent = hadToken ? "That token was refused." : "";
  tokenPromise = new Promise((resolve) => {
    const form = $("#token-form");
    const submit = (e) => {
      e.preventDefault();
      const value = $("#token-input").value.trim();
      if (!value) return;
      setToken(value);
      $("#token-input").value = "";
      form.removeEventListener("submit", submit);
      dialog.close();
      tokenPromise = null;
      resolve();
    };
    form.addEventListener("submit", submit);
    if (!dialog.open) dialog.showModal();
    $("#token-input").focus();
  });
  return tokenPromise;
}
onUnauthorized(askForToken);

// --- messages ---------------------------------------------------------------------------------
let flashTimer = null;
function flash(err) {
  const node = $("#flash");
  node.textContent = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  node.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { node.hidden = true; }, 8000);
}

// --- state refetching (debounced) -------------------------------------------------------------
let refreshTimer = null;
let refreshing = false;
function scheduleRefresh() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    if (refreshing) { scheduleRefresh(); return; }
    refreshing = true;
    try { await refreshState(); } catch (err) { if (!(err instanceof TypeError)) flash(err); }
    finally { refreshing = false; }
  }, REFRESH_MS);
}

let landing = location.hash === "" || location.hash === "#";

async function refreshState() {
  const { sessions } = await api("GET", "/sessions");
  state.sessions = new Map(sessions.map((s) => [s.session_id, s]));
  if (landing && (location.hash === "" || location.hash === "#")) {
    // Opened without a route: once there is one session (`runwire serve --demo` creates it a
    // moment after start), show it live. A second session, or any navigation, ends this.
    if (sessions.length === 1) {
      landing = false;
      location.replace(`#/sessions/${encodeURIComponent(sessions[0].session_id)}`);
      return;
    }
    if (sessions.length > 1) landing = false;
  } else {
    landing = false;
  }
  markDirty("sessions");
  if (state.route.view === "session") {
    const sid = state.route.sid;
    const record = state.sessions.get(sid);
    if (!record) { state.session = null; markDirty("session"); return; }
    state.session = record;
    const { runs } = await api("GET", `/sessions/${encodeURIComponent(sid)}/runs`);
    state.runs = runs.slice(0, 50); // newest first, as the API lists them
    markDirty("session");
    await runView.ensureRun(chosenRun());
  }
}

function chosenRun() {
  if (state.route.rid) return state.route.rid;
  const s = state.session;
  if (!s) return null;
  return s.active_run_id || (state.runs[0] && state.runs[0].run_id) || (s.last_run && s.last_run.run_id) || null;
}

// --- events -----------------------------------------------------------------------------------
function onEvent(ev) {
  tail.add(ev);
  markDirty("tail");
  if (ev.type === "stream.gap") { scheduleRefresh(); runView.reload(); plot.reloadSoon(); return; }
  const here = state.route.view === "session" && ev.sessionid === state.route.sid;
  // The session view refetches for its own session's events only (other sessions' runs do
  // not change what it shows), plus sessions appearing or going.
  if (SESSION_EVENTS.has(ev.type) && (state.route.view === "sessions" || here || ev.type === "session.created" || ev.type === "session.deleted")) {
    scheduleRefresh();
  }
  if (!here) return;
  // Following the newest run: switch when one starts, or when one is queued while the shown
  // run is over (a queued run does not take the view from a running one).
  if (!state.route.rid && ev.runid && (ev.type === "run.started" || (ev.type === "run.queued" && runView.settled()))) {
    runView.follow(ev.runid);
  }
  if (runView.apply(ev)) markDirty("run");
  if (ev.type === "step.finished" && ev.data && ev.data.status === "succeeded" && runView.writesCurve(ev.data.step)) {
    plot.prefetch(ev.runid); // the NXcanSAS file is complete once its writer step succeeded
  }
  if (ev.type === "run.finished" && ev.data && ev.data.status === "succeeded") {
    plot.runFinished(ev.runid, performance.now());
  }
  if (TERMINAL.has(ev.type)) markDirty("run");
}

// --- rendering, once per frame ----------------------------------------------------------------
let frameRequested = false;
const TAIL_MS = 100;
let lastTailRender = -Infinity;
let tailTimer = null;
const stats = { frames: 0 };
function markDirty(what) {
  state.dirty.add(what);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(renderFrame);
  }
}

function renderFrame() {
  frameRequested = false;
  stats.frames += 1;
  const dirty = state.dirty;
  state.dirty = new Set();
  if (dirty.has("sessions") && state.route.view === "sessions") renderSessions();
  if (dirty.has("session") && state.route.view === "session") renderSession();
  if (dirty.has("run") && state.route.view === "session") runView.render();
  if (dirty.has("tail")) {
    // Nobody reads 1,000 lines a second: the tail is redrawn at most every TAIL_MS, which keeps
    // layout and paint of a burst small; the next frame after that picks the rest up.
    const now = performance.now();
    if (now - lastTailRender >= TAIL_MS) {
      lastTailRender = now;
      tail.render();
    } else {
      state.dirty.add("tail");
      if (!tailTimer) tailTimer = setTimeout(() => { tailTimer = null; markDirty("tail"); }, TAIL_MS);
    }
  }
}

function renderSessions() {
  const body = $("#sessions-table tbody");
  const rows = [...state.sessions.values()].map((s) => {
    const last = s.last_run;
    return el("tr", {},
      el("td", {}, el("a", { href: `#/sessions/${encodeURIComponent(s.session_id)}` }, s.session_id),
        s.name ? el("span", { class: "summary" }, ` ${s.name}`) : null),
      el("td", {}, `${s.pipeline.name} ${s.pipeline.version}`),
      el("td", {}, badge(s.state)),
      el("td", {}, s.active_run_id || "—"),
      el("td", {}, String(s.queued_run_ids.length)),
      el("td", {}, last ? badge(last.status) : "—", last ? ` ${localTime(last.finished_utc || last.queued_utc)}` : ""),
      el("td", {}, last ? duration(last.elapsed_s) : ""));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "7" }, "No sessions yet: create one below.")));
  body.replaceChildren(...rows);
}

function renderSession() {
  const s = state.session;
  const sid = state.route.sid;
  $("#session-title").textContent = `Session ${sid}`;
  if (!s) {
    $("#session-summary").textContent = "This session does not exist (any more).";
    return;
  }
  const last = s.last_run;
  $("#session-summary").replaceChildren(
    badge(s.state), ` pipeline ${s.pipeline.name} ${s.pipeline.version}`,
    s.active_run_id ? ` · active ${s.active_run_id}` : "",
    ` · ${s.queued_run_ids.length} queued`,
    last ? ` · last run ${last.status} in ${duration(last.elapsed_s)}` : "",
    ` · created ${localDateTime(s.created_utc)}`);
  renderIo(s);
  const select = $("#run-select");
  const chosen = state.route.rid || "";
  const options = [el("option", { value: "" }, "follow the newest run (live)")];
  for (const r of state.runs) {
    options.push(el("option", { value: r.run_id }, `${r.run_id} · ${r.status}${r.queued_utc ? " · " + localTime(r.queued_utc) : ""}`));
  }
  select.replaceChildren(...options);
  select.value = chosen;
}

function renderIo(s) {
  const lists = [];
  for (const kind of ["sources", "sinks"]) {
    const entries = Object.entries(s[kind] || {});
    const rows = entries.map(([ref, io]) => el("tr", {},
      el("td", {}, ref), el("td", {}, io.type), el("td", { class: "loc" }, io.location),
      el("td", {}, el("button", {
        type: "button", class: "danger", "aria-label": `Delete ${kind === "sources" ? "source" : "sink"} ${ref}`,
        onclick: () => act(() => api("DELETE", `/sessions/${encodeURIComponent(s.session_id)}/${kind}/${encodeURIComponent(ref)}`)),
      }, "Delete"))));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4" }, `no ${kind}`)));
    const required = kind === "sources" && s.required_source_refs.length ? ` (required: ${s.required_source_refs.join(", ")})` : "";
    lists.push(el("div", { class: "table-wrap" }, el("table", {},
      el("caption", {}, `${kind === "sources" ? "Sources" : "Sinks"}${required}`),
      el("tbody", {}, ...rows))));
  }
  $("#io-lists").replaceChildren(...lists);
}

async function act(fn) {
  try {
    const result = await fn();
    scheduleRefresh();
    return result;
  } catch (err) {
    flash(err);
    return null;
  }
}

// --- routing ----------------------------------------------------------------------------------
function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "sessions" && parts[1]) return { view: "session", sid: parts[1], rid: parts[3] || null };
  return { view: "sessions", sid: null, rid: null };
}

async function route() {
  const next = parseRoute();
  const sessionChanged = next.sid !== state.route.sid;
  state.route = next;
  $("#view-sessions").hidden = next.view !== "sessions";
  $("#view-session").hidden = next.view !== "session";
  document.title = next.view === "session" ? `${next.sid} · runwire` : "runwire dashboard";
  if (next.view === "session" && sessionChanged) {
    state.session = state.sessions.get(next.sid) || null;
    state.runs = [];
    $("#plan").replaceChildren();
    runView.reset();
    plot.showSession(next.sid);
    try {
      await runView.loadTree(next.sid);
    } catch (err) { flash(err); }
  }
  markDirty("sessions");
  markDirty("session");
  markDirty("tail");
  try { await refreshState(); } catch (err) { flash(err); }
}

// --- forms ------------------------------------------------------------------------------------
async function loadCreateChoices() {
  try {
    const [{ examples }, { templates }] = await Promise.all([api("GET", "/examples"), api("GET", "/source-templates")]);
    const form = $("#create-form");
    form.example.replaceChildren(...examples.map((x) => el("option", { value: x.name }, x.name)));
    form.source_profile.replaceChildren(el("option", { value: "" }, "(none)"),
      ...templates.map((t) => el("option", { value: t.name }, `${t.name}: ${t.description}`)));
    const byName = new Map(examples.map((x) => [x.name, x.yaml_text]));
    const fill = () => { if (form.from.value === "example") form.yaml_text.value = byName.get(form.example.value) || ""; };
    form.example.addEventListener("change", fill);
    form.from.addEventListener("change", fill);
    fill();
  } catch (err) { flash(err); }
}

function wireForms() {
  $("#create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target;
    const body = { pipeline: { yaml_text: f.yaml_text.value } };
    if (f.session_id.value.trim()) body.session_id = f.session_id.value.trim();
    if (f.name.value.trim()) body.name = f.name.value.trim();
    if (f.source_profile.value) body.source_profile = f.source_profile.value;
    const created = await act(() => api("POST", "/sessions", body));
    if (created) location.hash = `#/sessions/${encodeURIComponent(created.session_id)}`;
  });
  const sid = () => encodeURIComponent(state.route.sid);
  $("#sample-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target;
    act(() => api("POST", `/sessions/${sid()}/sample`, { location: f.location.value.trim(), type: f.type.value, process: true }));
  });
  const pf = $("#process-form");
  pf.addEventListener("submit", (e) => {
    e.preventDefault();
    act(() => api("POST", `/sessions/${sid()}/process`, { mode: pf.mode.value }));
  });
  pf.querySelector('[data-action="dry-run"]').addEventListener("click", async () => {
    const plan = await act(() => api("POST", `/sessions/${sid()}/process/dry-run`, { mode: pf.mode.value }));
    if (plan) renderPlan(plan);
  });
  pf.querySelector('[data-action="reset"]').addEventListener("click", () =>
    act(() => api("POST", `/sessions/${sid()}/reset`, { mode: pf.reset_mode.value })));
  pf.querySelector('[data-action="delete"]').addEventListener("click", async () => {
    if (!confirm(`Delete session ${state.route.sid}? Its retained runs stay on disk.`)) return;
    await act(() => api("DELETE", `/sessions/${sid()}`));
    location.hash = "#/";
  });
  $("#io-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target;
    const kind = f.kind.value;
    const item = { ref: f.ref.value.trim(), type: f.type.value, location: f.location.value.trim() };
    const how = e.submitter ? e.submitter.value : "patch";
    act(() => how === "replace"
      ? api("PUT", `/sessions/${sid()}/${kind}`, { [kind]: [item] })
      : api("POST", `/sessions/${sid()}/${kind}/patch`, item));
  });
  $("#run-select").addEventListener("change", (e) => {
    const rid = e.target.value;
    location.hash = rid ? `#/sessions/${sid()}/runs/${encodeURIComponent(rid)}` : `#/sessions/${sid()}`;
  });
  $("#cancel-btn").addEventListener("click", () => {
    if (runView.runId) act(() => api("POST", `/runs/${encodeURIComponent(runView.runId)}/cancel`, {}));
  });
  $("#retry-btn").addEventListener("click", async () => {
    if (!runView.runId) return;
    const r = await act(() => api("POST", `/runs/${encodeURIComponent(runView.runId)}/retry`, {}));
    if (r && state.route.rid) location.hash = `#/sessions/${sid()}/runs/${encodeURIComponent(r.run_id)}`;
  });
}

function renderPlan(plan) {
  const rows = plan.dirty_steps.map((step) => el("tr", {},
    el("td", {}, step), el("td", {}, (plan.reasons[step] || []).join(", "))));
  const parts = [
    el("p", { class: "summary" }, `Plan: ${plan.effective_mode} run, ${plan.dirty_steps.length} dirty, ${plan.skipped_steps.length} skipped`,
      plan.can_process ? "" : " — cannot process yet"),
  ];
  if (plan.missing_required_sources.length) parts.push(el("p", { class: "error" }, `Missing sources: ${plan.missing_required_sources.join(", ")}`));
  for (const w of plan.warnings) parts.push(el("p", { class: "summary" }, `Warning: ${w}`));
  if (rows.length) {
    parts.push(el("div", { class: "table-wrap" }, el("table", { class: "plan-table" },
      el("caption", { class: "sr-only" }, "Dirty steps and why"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Dirty step"), el("th", { scope: "col" }, "Reasons"))),
      el("tbody", {}, ...rows))));
  }
  $("#plan").replaceChildren(...parts);
}

// --- start ------------------------------------------------------------------------------------
const stream = new EventStream({
  onEvent,
  onOpen: (resumed) => { if (!resumed) scheduleRefresh(); },
  onUnauthorized: askForToken,
  onState: (s, wait) => {
    const node = $("#conn");
    node.className = `conn conn-${s}`;
    node.textContent = s === "live" ? "live" : s === "reconnecting" ? `reconnecting${wait ? ` in ${(wait / 1000).toFixed(1)} s` : "…"}`
      : s === "unauthorized" ? "token needed" : "connecting…";
  },
});

// For tests and benchmarks: read-only views of what the page holds (never the token).
window.__runwire = {
  events: () => tail.all().map((e) => ({ id: e.id, seq: e.seq, type: e.type, runid: e.runid || null, sessionid: e.sessionid })),
  stream: () => ({ lastId: stream.lastId, duplicates: stream.duplicates, connections: stream.connections }),
  plot: () => plot.snapshot(),
  run: () => runView.snapshot(),
  frames: () => stats.frames,
  received: () => tail.total,
  domRows: () => $("#event-list").childElementCount,
};

window.addEventListener("hashchange", route);
wireForms();
loadCreateChoices();
route();
stream.start();
