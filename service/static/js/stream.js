// The page's one event stream: GET /v1/events (every session) read with fetch() and a streaming
// body reader, so the token goes in an Authorization header (EventSource cannot send one) and
// Last-Event-ID is ours to send. Frames are parsed here (id:/event:/data:, blank line ends one).
//
// Resume: after a dropped connection, a server restart or an overflow close, it reconnects with
// Last-Event-ID = the last id it delivered. Nothing is delivered twice: seq is strictly
// increasing on a stream, so an event whose seq is not above the last one is dropped. A
// `stream.gap` (history lost) is always delivered; the page refetches its state on it.

import { authHeaders } from "./api.js";

const MAX_LINE = 4 * 1024 * 1024; // a frame line longer than this is a broken stream
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;

export class EventStream {
  // onEvent(envelope), onState(state, detail) with state connecting|live|reconnecting|unauthorized,
  // onOpen(resumed: boolean) once each connection is established.
  constructor({ onEvent, onState, onOpen, onUnauthorized }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.onOpen = onOpen;
    this.onUnauthorized = onUnauthorized;
    this.lastId = null;
    this.lastSeq = -1;
    this.epoch = null;
    this.duplicates = 0;
    this.connections = 0;
    this.controller = null;
    this.stopped = false;
    this.failures = 0;
  }

  start() {
    this.stopped = false;
    this.loop();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  // Drop the current connection (for tests and after a token change); the loop reconnects.
  reconnect() {
    if (this.controller) this.controller.abort();
  }

  async loop() {
    while (!this.stopped) {
      this.onState(this.connections === 0 ? "connecting" : "reconnecting");
      let delivered = false;
      try {
        delivered = await this.connectOnce();
      } catch (err) {
        if (err && err.name === "Unauthorized") {
          this.onState("unauthorized");
          await this.onUnauthorized();
          continue;
        }
      }
      if (this.stopped) return;
      this.failures = delivered ? 0 : this.failures + 1;
      const wait = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.failures, 5));
      this.onState("reconnecting", wait);
      await new Promise((resolve) => setTimeout(resolve, wait * (0.75 + Math.random() * 0.5)));
    }
  }

  async connectOnce() {
    this.controller = new AbortController();
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    const response = await fetch("/v1/events", { headers, signal: this.controller.signal, cache: "no-store" });
    if (response.status === 401) {
      const err = new Error("unauthorized");
      err.name = "Unauthorized";
      throw err;
    }
    if (!response.ok || !response.body) return false;
    const resumed = this.connections > 0;
    this.connections += 1;
    this.onState("live");
    this.onOpen(resumed);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let frame = { id: null, event: null, data: [] };
    let delivered = false;
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        break; // aborted or connection lost
      }
      if (chunk.done) break;
      buffer += chunk.value;
      let start = 0;
      for (;;) {
        const nl = buffer.indexOf("\n", start);
        if (nl < 0) break;
        let line = buffer.slice(start, nl);
        start = nl + 1;
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (frame.data.length) delivered = this.dispatch(frame) || delivered;
          frame = { id: null, event: null, data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "id") frame.id = value;
        else if (field === "event") frame.event = value;
        else if (field === "data") frame.data.push(value);
      }
      buffer = buffer.slice(start);
      if (buffer.length > MAX_LINE) break;
    }
    return delivered;
  }

  dispatch(frame) {
    let envelope;
    try {
      envelope = JSON.parse(frame.data.join("\n"));
    } catch {
      return false;
    }
    const seq = Number(envelope.seq);
    const epoch = String(envelope.id || frame.id || "").split("-")[0];
    if (envelope.type === "stream.gap") {
      // What follows is complete from here on; ids restart from the gap's own id.
      this.lastSeq = seq;
      this.epoch = epoch;
      this.lastId = frame.id || envelope.id;
      this.onEvent(envelope);
      return true;
    }
    if (this.epoch === epoch && seq <= this.lastSeq) {
      this.duplicates += 1;
      return false;
    }
    this.epoch = epoch;
    this.lastSeq = seq;
    this.lastId = frame.id || envelope.id;
    this.onEvent(envelope);
    return true;
  }
}
