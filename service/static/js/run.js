// The live run: the step tree as the pipeline file nests it, each step's state, progress bar,
// duration, dirty/skipped marking and error, updated from events.
//
// `run.started` lists the steps the planner *expects* to be dirty; with early cutoff some of
// them end up skipped, so a step's mark is settled by its own `step.finished` and, at the end,
// by `run.finished`'s actual dirty and skipped lists.

import { api } from "./api.js";
import { badge, duration, el } from "./format.js";

const FINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

export class RunView {
  constructor({ tree, summary, error, links, openFile }) {
    this.treeEl = tree;
    this.summaryEl = summary;
    this.errorEl = error;
    this.linksEl = links;
    this.openFile = openFile;
    this.reset();
  }

  reset() {
    this.sid = null;
    this.tree = [];
    this.rows = new Map(); // full id -> {row, bar, state, dur, err}
    this.curveWriters = new Set();
    this.clearRun(null);
    this.treeEl.replaceChildren();
    this.linksEl.replaceChildren();
  }

  clearRun(runId) {
    this.runId = runId;
    this.run = { status: runId ? "queued" : null, elapsed: null, error: null, mode: null };
    this.steps = new Map(); // full id -> {status, fraction, duration, error, planned}
    this.changed = new Set(this.rows.keys());
    this.linksFor = null;
    this.loading = null;
  }

  async loadTree(sid) {
    this.sid = sid;
    const view = await api("GET", `/sessions/${encodeURIComponent(sid)}/pipeline`);
    if (this.sid !== sid) return;
    this.tree = view.tree;
    this.rows = new Map();
    this.curveWriters = new Set();
    this.treeEl.replaceChildren(...view.tree.map((n) => this.buildNode(n)));
    this.changed = new Set(this.rows.keys());
    this.render();
  }

  // True when no run is shown or the shown one is over.
  settled() {
    return !this.runId || FINAL.has(this.run.status);
  }

  // Whether step `id` writes the NXcanSAS file the I(q) plot reads.
  writesCurve(id) {
    return this.curveWriters.has(id);
  }

  buildNode(node) {
    if (node.use === "write.nxcansas") this.curveWriters.add(node.full_id);
    const bar = el("progress", { max: "1", value: "0", "aria-label": `${node.full_id} progress` });
    const state = el("span", { class: "state" }, badge("pending"));
    const dur = el("span", { class: "dur" });
    const kind = node.kind === "group" ? (node.parallel ? "parallel group" : "group") : node.kind === "pipeline" ? "pipeline" : node.use;
    const name = el("span", { class: "name", title: node.full_id }, node.id, " ", el("span", { class: "group-label" }, kind || ""));
    const err = el("div", { class: "step-error", hidden: true });
    const row = el("div", { class: "step", dataset: { step: node.full_id } }, name, state, bar, dur, err);
    this.rows.set(node.full_id, { row, bar, state, dur, err });
    const item = el("li", {}, row);
    if (node.children) item.append(el("ul", {}, ...node.children.map((c) => this.buildNode(c))));
    return item;
  }

  step(id) {
    let s = this.steps.get(id);
    if (!s) {
      s = { status: "pending", fraction: 0, duration: null, error: null, planned: false };
      this.steps.set(id, s);
    }
    this.changed.add(id);
    return s;
  }

  // Show run `runId` (fetching its record), unless it is already shown.
  async ensureRun(runId) {
    if (!runId || runId === this.runId) return;
    this.clearRun(runId);
    await this.loadRecord(runId);
  }

  // A new run of this session was announced: show it live from its first event.
  follow(runId) {
    if (runId === this.runId) return;
    this.clearRun(runId);
    this.loadRecord(runId);
  }

  reload() {
    if (this.runId) this.loadRecord(this.runId);
  }

  async loadRecord(runId) {
    let record;
    try {
      record = await api("GET", `/runs/${encodeURIComponent(runId)}`);
    } catch {
      try { record = await api("GET", `/retained-runs/${encodeURIComponent(runId)}`); } catch { return; }
    }
    if (this.runId !== runId || !record) return;
    // Events that arrived meanwhile are newer than anything the record says; keep them.
    if (!FINAL.has(this.run.status) || FINAL.has(record.status)) this.run.status = record.status;
    this.run.elapsed = record.elapsed_s;
    this.run.mode = record.effective_mode || record.mode;
    this.run.error = record.error;
    const dirty = new Set(record.dirty_steps || []);
    for (const id of dirty) this.step(id).planned = true;
    for (const [id, st] of Object.entries(record.step_states || {})) {
      const s = this.step(id);
      if (s.status === "pending" || s.status === "running") {
        s.status = st.status;
        s.duration = st.duration_s;
        s.error = st.error || null;
        if (FINAL.has(st.status) || st.status === "skipped") s.fraction = 1;
      }
    }
    if (FINAL.has(record.status)) this.settle(record.dirty_steps, record.skipped_steps);
    this.changed.add("*");
    this.render();
  }

  // One event; true when it concerned the shown run.
  apply(ev) {
    if (!ev.runid || ev.runid !== this.runId) return false;
    const d = ev.data || {};
    switch (ev.type) {
      case "run.queued":
        if (!this.run.status) this.run.status = "queued";
        break;
      case "run.started":
        this.run.status = "running";
        this.run.mode = d.effective_mode || d.mode;
        for (const id of d.dirty_steps || []) this.step(id).planned = true;
        break;
      case "step.started": {
        const s = this.step(d.step);
        s.status = "running";
        break;
      }
      case "step.progress": {
        const s = this.step(d.step);
        if (typeof d.fraction === "number") s.fraction = d.fraction;
        break;
      }
      case "step.finished": {
        const s = this.step(d.step);
        s.status = d.status;
        s.duration = d.duration_s;
        s.error = d.error || null;
        s.fraction = 1;
        if (d.status === "skipped") s.planned = false;
        break;
      }
      case "run.finished":
        this.run.status = d.status;
        this.run.elapsed = d.elapsed_s;
        this.settle(d.dirty_steps, d.skipped_steps);
        this.reloadErrorSoon();
        break;
      case "run.cancelled":
        this.run.status = "cancelled";
        break;
      case "run.interrupted":
        this.run.status = "interrupted";
        break;
      default:
        return false;
    }
    this.changed.add("*");
    return true;
  }

  settle(dirtySteps, skippedSteps) {
    const dirty = new Set(dirtySteps || []);
    for (const id of skippedSteps || []) {
      const s = this.step(id);
      s.planned = false;
      if (s.status === "pending") { s.status = "skipped"; s.fraction = 1; }
    }
    for (const id of dirty) this.step(id).planned = true;
  }

  reloadErrorSoon() {
    if (this.run.status === "failed") this.loadRecord(this.runId);
  }

  render() {
    if (!this.changed.size) return;
    const changed = this.changed;
    this.changed = new Set();
    for (const id of changed) {
      const r = this.rows.get(id);
      if (!r) continue;
      const s = this.steps.get(id) || { status: "pending", fraction: 0, duration: null, error: null, planned: false };
      r.state.replaceChildren(badge(s.status));
      r.bar.value = s.fraction || 0;
      r.dur.textContent = duration(s.duration);
      r.row.classList.toggle("dirty", !!s.planned && s.status !== "skipped");
      r.row.classList.toggle("skipped", s.status === "skipped");
      r.row.classList.toggle("failed", s.status === "failed");
      r.row.dataset.status = s.status;
      r.err.hidden = !s.error;
      r.err.textContent = s.error || "";
    }
    if (!changed.has("*")) return;
    const run = this.run;
    if (!this.runId) {
      this.summaryEl.textContent = "No run yet: set a sample and process it.";
      this.errorEl.textContent = "";
      return;
    }
    this.summaryEl.replaceChildren(badge(run.status), ` ${this.runId}`,
      run.mode ? ` · ${run.mode}` : "", run.elapsed != null ? ` · ${duration(run.elapsed)}` : "");
    this.summaryEl.dataset.status = run.status || "";
    const e = run.error;
    this.errorEl.textContent = e ? `${e.code}: ${e.message}${e.failed_step ? ` (step ${e.failed_step})` : ""}` : "";
    if (FINAL.has(run.status) && this.linksFor !== this.runId) {
      this.linksFor = this.runId;
      this.loadLinks(this.runId);
    }
  }

  async loadLinks(runId) {
    const rid = encodeURIComponent(runId);
    let reports = null;
    let manifest = null;
    try { reports = await api("GET", `/retained-runs/${rid}/reports`); } catch { /* not retained */ }
    try { manifest = await api("GET", `/retained-runs/${rid}/artifact-manifest`); } catch { /* none */ }
    if (this.runId !== runId) return;
    const link = (label, path) => el("button", { type: "button", onclick: () => this.openFile(path) }, label);
    const parts = [];
    if (reports) {
      for (const key of ["summary", "request", "events"]) {
        const f = reports[key];
        if (f) parts.push(link(`${key} (${f.path})`, f.url.replace(/^\/v1/, "")));
      }
    }
    for (const a of (manifest && manifest.artifacts) || []) {
      parts.push(link(a.path, `/retained-runs/${rid}/artifacts/${a.path.split("/").map(encodeURIComponent).join("/")}`));
    }
    this.linksEl.replaceChildren(...(parts.length ? [el("span", { class: "summary" }, "Reports and artifacts: "), ...parts] : []));
  }

  snapshot() {
    const steps = {};
    for (const [id, s] of this.steps) steps[id] = { status: s.status, planned: s.planned, error: s.error };
    return { runId: this.runId, status: this.run.status, steps, tree: [...this.rows.keys()] };
  }
}
