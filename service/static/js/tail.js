// The live event tail: the newest MAX_EVENTS events in memory (for filtering and tests), the
// newest MAX_ROWS matching the filters in the DOM. Both bounded whatever the event rate.

import { el, localTime } from "./format.js";


const MAX_EVENTS = 5000;
const MAX_ROWS = 200;
const TRIM_SLACK = 500;

export class EventTail {
  constructor({ list, typeSelect, runInput, sessionBox, count, currentSession }) {
    this.list = list;
    this.typeSelect = typeSelect;
    this.runInput = runInput;
    this.sessionBox = sessionBox;
    this.count = count;
    this.currentSession = currentSession;
    this.events = []; // ring: oldest first, at most MAX_EVENTS
    this.fresh = []; // added since the last render (bounded by MAX_ROWS)
    this.rebuild = true;
    this.total = 0;
    this.types = new Set();
    for (const input of [typeSelect, runInput, sessionBox]) {
      input.addEventListener("input", () => { this.rebuild = true; this.render(); });
    }
  }

  add(ev) {
    this.total += 1;
    this.events.push(ev);
    // Trimmed in slices, not per event: at most MAX_EVENTS + TRIM_SLACK kept.
    if (this.events.length > MAX_EVENTS + TRIM_SLACK) this.events.splice(0, this.events.length - MAX_EVENTS);
    this.fresh.push(ev);
    if (this.fresh.length > MAX_ROWS) this.fresh.shift();
    if (!this.types.has(ev.type)) {
      this.types.add(ev.type);
      this.typeSelect.append(el("option", { value: ev.type }, ev.type));
    }
  }

  all() {
    return this.events;
  }

  matches(ev) {
    const type = this.typeSelect.value;
    const run = this.runInput.value.trim();
    const sid = this.sessionBox.checked ? this.currentSession() : null;
    return (!type || ev.type === type) && (!run || (ev.runid || "").includes(run)) && (!sid || ev.sessionid === sid);
  }

  // One text node per row (columns padded, monospace): far cheaper to lay out than a grid of
  // spans when a burst replaces a hundred rows at a time.
  row(ev) {
    const d = ev.data || {};
    const detail = d.step ? `${d.step}${d.status ? " " + d.status : ""}${typeof d.fraction === "number" ? " " + Math.round(d.fraction * 100) + "%" : ""}`
      : d.status || d.state || "";
    const text = `${localTime(ev.time).padEnd(11)} ${String(ev.sessionid).padEnd(12)} ${ev.type.padEnd(21)} ${ev.runid ? ev.runid + " " : ""}${detail}`;
    const li = document.createElement("li");
    li.dataset.type = ev.type;
    li.textContent = text;
    return li;
  }

  render() {
    let rows;
    if (this.rebuild) {
      this.rebuild = false;
      const picked = [];
      for (let i = this.events.length - 1; i >= 0 && picked.length < MAX_ROWS; i--) {
        if (this.matches(this.events[i])) picked.push(this.events[i]);
      }
      rows = picked.map((ev) => this.row(ev));
      this.list.replaceChildren(...rows);
    } else if (this.fresh.length) {
      const frag = document.createDocumentFragment();
      for (let i = this.fresh.length - 1; i >= 0; i--) {
        if (this.matches(this.fresh[i])) frag.append(this.row(this.fresh[i]));
      }
      this.list.prepend(frag);
      while (this.list.childElementCount > MAX_ROWS) this.list.lastElementChild.remove();
    }
    this.fresh = [];
    this.count.textContent = `${this.total} received, newest first (${this.list.childElementCount} shown)`;
  }
}
