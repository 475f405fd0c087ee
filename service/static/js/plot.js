// I(q) of a session: the newest run's curve with its Idev band, up to MAX_EARLIER earlier runs
// overlaid (newest strongest), log-log axes, units from the NXcanSAS file. The one chart
// library is uPlot (vendored, see docs/ui.md).

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { api } from "./api.js";
import { el } from "./format.js";

const MAX_EARLIER = 10;
const MAX_TIMINGS = 100;
const NEWEST = "#0b62c4";

// Log axes cannot show values <= 0 (e.g. after background subtraction): they become gaps.
const positive = (values) => values.map((v) => (v !== null && v > 0 ? v : null));

export class CurvePlot {
  constructor({ container, note }) {
    this.container = container;
    this.note = note;
    this.sid = null;
    this.curves = []; // newest first
    this.chart = null;
    this.pending = null; // {run_id, t0} until the chart has drawn that run
    this.timings = []; // ms from run.finished received to the plot drawn (bounded)
    this.draws = 0;
    this.generation = 0;
    this.prefetched = null; // {runId, sid, curve: Promise}
    this.resizeObserver = new ResizeObserver(() => {
      if (this.chart) this.chart.setSize(this.size());
    });
    this.resizeObserver.observe(container);
  }

  size() {
    const width = Math.max(260, this.container.clientWidth || 600);
    return { width, height: Math.round(Math.min(420, Math.max(240, width * 0.6))) };
  }

  async showSession(sid) {
    this.sid = sid;
    this.curves = [];
    const generation = ++this.generation;
    this.draw();
    let runs = [];
    try {
      const page = await api("GET", `/retained-runs?session_id=${encodeURIComponent(sid)}&status=succeeded&limit=${MAX_EARLIER + 1}`);
      runs = page.runs;
    } catch { return; }
    const curves = await Promise.all(runs.map((r) => this.fetchCurve(r.run_id)));
    if (generation !== this.generation) return;
    const known = new Set(this.curves.map((c) => c.run_id));
    // Curves that arrived live meanwhile are newer: keep them first.
    this.curves = [...this.curves, ...curves.filter((c) => c && !known.has(c.run_id))].slice(0, MAX_EARLIER + 1);
    this.draw();
  }

  reloadSoon() {
    if (this.sid) this.showSession(this.sid);
  }

  async fetchCurve(runId) {
    try {
      return await api("GET", `/retained-runs/${encodeURIComponent(runId)}/curve`);
    } catch {
      return null; // a run without a curve (diagnostic pipeline): nothing to draw
    }
  }

  // Start reading a run's curve before its run.finished arrives (its writer step succeeded), so
  // that run.finished only has to draw. At most one prefetch is kept.
  prefetch(runId) {
    this.prefetched = { runId, sid: this.sid, curve: this.fetchCurve(runId) };
  }

  async runFinished(runId, t0) {
    const sid = this.sid;
    const early = this.prefetched && this.prefetched.runId === runId && this.prefetched.sid === sid ? this.prefetched.curve : null;
    this.prefetched = null;
    const curve = (early && (await early)) || (await this.fetchCurve(runId));
    if (!curve || sid !== this.sid || this.curves.some((c) => c.run_id === runId)) return;
    this.curves = [curve, ...this.curves].slice(0, MAX_EARLIER + 1);
    this.pending = { run_id: runId, t0 };
    this.draw();
  }

  draw() {
    if (this.chart) {
      this.chart.destroy();
      this.chart = null;
    }
    if (!this.curves.length) {
      this.note.textContent = "No curve yet: a succeeded run writing NXcanSAS draws one here.";
      this.container.replaceChildren();
      return;
    }
    const newest = this.curves[0];
    const lo = newest.I.map((v, i) => (v === null || !newest.Idev || newest.Idev[i] === null ? null : v - newest.Idev[i]));
    const hi = newest.I.map((v, i) => (v === null || !newest.Idev || newest.Idev[i] === null ? null : v + newest.Idev[i]));
    const tables = [[newest.q, positive(newest.I), positive(lo), positive(hi)]];
    for (const c of this.curves.slice(1)) tables.push([c.q, positive(c.I)]);
    // One shared q axis; NULL_RETAIN (1) keeps a curve's own gaps apart from "no point here".
    const data = uPlot.join(tables, tables.map((t) => t.slice(1).map(() => 1)));
    const series = [
      { label: `q (${newest.q_unit || "?"})` },
      { label: `${newest.run_id} (newest)`, stroke: NEWEST, width: 2, spanGaps: true },
      { label: "I − Idev", stroke: "rgba(11,98,196,0.25)", width: 1, spanGaps: true },
      { label: "I + Idev", stroke: "rgba(11,98,196,0.25)", width: 1, spanGaps: true },
    ];
    this.curves.slice(1).forEach((c, i) => {
      const alpha = Math.max(0.12, 0.6 - i * 0.05);
      series.push({ label: c.run_id, stroke: `rgba(90,100,115,${alpha.toFixed(2)})`, width: 1, spanGaps: true });
    });
    const opts = {
      ...this.size(),
      title: newest.title || undefined,
      scales: { x: { time: false, distr: 3, log: 10 }, y: { distr: 3, log: 10 } },
      axes: [
        { label: `q (${newest.q_unit || "?"})` },
        { label: `I (${newest.i_unit || "?"})`, size: 70 },
      ],
      series,
      bands: [{ series: [3, 2], fill: "rgba(11,98,196,0.15)" }],
      legend: { show: true, live: false },
      hooks: { draw: [() => this.drawn()] },
    };
    this.container.replaceChildren();
    this.chart = new uPlot(opts, data, this.container);
    this.note.replaceChildren(el("span", {},
      `${newest.q.length} points · newest ${newest.run_id}` +
      (this.curves.length > 1 ? ` · ${this.curves.length - 1} earlier run(s) overlaid` : "")));
  }

  drawn() {
    this.draws += 1;
    if (this.pending && this.curves[0] && this.curves[0].run_id === this.pending.run_id) {
      this.timings.push(performance.now() - this.pending.t0);
      if (this.timings.length > MAX_TIMINGS) this.timings.shift();
      this.pending = null;
    }
  }

  // What the chart holds (its data, not pixels): for tests and the benchmark.
  snapshot() {
    const data = this.chart ? this.chart.data : [[]];
    const points = this.curves.map((c, i) => {
      const column = data[i === 0 ? 1 : i + 3] || [];
      return column.filter((v) => v !== undefined).length;
    });
    return {
      runs: this.curves.map((c) => c.run_id),
      curvePoints: this.curves.map((c) => c.q.length),
      chartPoints: points,
      xLength: data[0].length,
      series: this.chart ? this.chart.series.length : 0,
      units: this.curves[0] ? [this.curves[0].q_unit, this.curves[0].i_unit] : null,
      timings: this.timings.slice(),
      draws: this.draws,
    };
  }
}
