"""Human output of the CLI client: tables for lists, detail blocks, one line per event.

Pure functions from the API's JSON bodies to text (standard library only, so importing this
costs nothing at start-up). Every field is read defensively with `.get`, so output degrades to
`-` rather than failing when a server omits an optional field.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from streaming import events as ev

EMPTY = "-"


def mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (for optional nested objects)."""
    return value if isinstance(value, dict) else {}


def dump_json(obj: Any) -> str:
    """The `--json` form: the body exactly as received, indented."""
    return json.dumps(obj, indent=2, sort_keys=False)


def text(value: Any) -> str:
    """One cell: `-` for missing, lists comma-joined, everything on one line."""
    if value is None or value == "" or value == [] or value == {}:
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return " ".join(str(value).split())


def duration(seconds: Any) -> str:
    """`0.012s`, `4.5s`, `2m03s`, `1h02m`; `-` for missing."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return EMPTY
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def timestamp(value: Any) -> str:
    """An RFC 3339 UTC time as `YYYY-MM-DD HH:MM:SS` (UTC), for tables."""
    if not isinstance(value, str) or "T" not in value:
        return text(value)
    date, _, clock = value.partition("T")
    return f"{date} {clock[:8]}"


def clock(value: Any) -> str:
    """The time of day with milliseconds (`HH:MM:SS.mmm`, UTC), for event lines."""
    if not isinstance(value, str) or "T" not in value:
        return text(value)
    part = value.partition("T")[2].rstrip("Z")
    for sep in ("+", "-"):
        part = part.split(sep)[0]
    return part[:12]


ELLIPSIS = "\u2026"
MIN_SHRUNK = 8  # a truncated column keeps at least this many characters (or its header's)


def terminal_width() -> int | None:
    """The terminal's width in columns when stdout is one (`COLUMNS` overrides), else None:
    piped or redirected output is never truncated, so scripts and `grep` see every cell."""
    try:
        if not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return None
    return shutil.get_terminal_size((80, 24)).columns


def clip(cell: str, width: int) -> str:
    """`cell` cut to `width` characters, the last one an ellipsis when anything was cut."""
    if len(cell) <= width:
        return cell
    return cell[: max(0, width - 1)] + ELLIPSIS if width > 0 else ""


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    shrink: Sequence[str] = (),
    width: int | None = None,
) -> str:
    """Columns as wide as their widest cell, two spaces apart; the last column is not padded.

    With `width` (the terminal's), columns named in `shrink` (free text such as errors,
    never ids) give up characters, widest first, until the table fits; their cut cells end
    in an ellipsis. Other columns are never cut, so a table of ids may still be wider.
    """
    cells = [[str(h) for h in headers]] + [[text(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if width is not None:
        _fit(headers, widths, shrink, width)
    lines = []
    for row in cells:
        clipped = [clip(c, w) for c, w in zip(row, widths, strict=True)]
        padded = [c.ljust(w) for c, w in zip(clipped[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, clipped[-1]]).rstrip())
    return "\n".join(lines)


def _fit(headers: Sequence[str], widths: list[int], shrink: Sequence[str], width: int) -> None:
    """Narrow the `shrink` columns of `widths` in place until the row fits in `width`."""
    floors = {
        i: min(widths[i], max(MIN_SHRUNK, len(h))) for i, h in enumerate(headers) if h in shrink
    }
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        room = {i: widths[i] - floor for i, floor in floors.items() if widths[i] > floor}
        if not room:
            return
        widest = max(room, key=lambda i: widths[i])
        others = [widths[i] for i in room if i != widest]
        # Down to the next widest shrinkable column (or as far as needed), one step at a time.
        step = min(excess, room[widest], max(1, widths[widest] - max(others, default=0)))
        widths[widest] -= step
        excess -= step


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`key:  value` lines, keys aligned."""
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {text(v)}" for k, v in pairs)


# --- sessions ---------------------------------------------------------------------------------


def _pipeline(session: Mapping[str, Any]) -> str:
    info = session.get("pipeline") or {}
    if not isinstance(info, dict) or not info.get("name"):
        return EMPTY
    return f"{info['name']} {info.get('version') or ''}".strip()


def _last_status(session: Mapping[str, Any]) -> Any:
    last = session.get("last_run")
    return last.get("status") if isinstance(last, dict) else None


def sessions_table(sessions: Sequence[Mapping[str, Any]]) -> str:
    if not sessions:
        return "no sessions"
    return table(
        ("SESSION", "STATE", "PIPELINE", "ACTIVE RUN", "QUEUED", "LAST RUN", "UPDATED (UTC)"),
        (
            (
                s.get("session_id"),
                s.get("state"),
                _pipeline(s),
                s.get("active_run_id"),
                len(s.get("queued_run_ids") or []),
                _last_status(s),
                timestamp(s.get("updated_utc")),
            )
            for s in sessions
        ),
        shrink=("PIPELINE",),
        width=terminal_width(),
    )


def _sources_block(title: str, sources: Any) -> str:
    if not isinstance(sources, dict) or not sources:
        return f"{title}: {EMPTY}"
    rows = (
        (ref, spec.get("type"), spec.get("location"), spec.get("options"))
        for ref, spec in sorted(sources.items())
        if isinstance(spec, dict)
    )
    columns = terminal_width()
    body = table(
        ("REF", "TYPE", "LOCATION", "OPTIONS"),
        rows,
        shrink=("LOCATION", "OPTIONS"),
        width=None if columns is None else columns - 2,  # indented by two
    )
    return f"{title}:\n" + "\n".join("  " + line for line in body.splitlines())


def session_detail(session: Mapping[str, Any]) -> str:
    last = mapping(session.get("last_run"))
    head = fields(
        [
            ("session", session.get("session_id")),
            ("name", session.get("name")),
            ("state", session.get("state")),
            ("pipeline", _pipeline(session)),
            ("profile", session.get("source_profile")),
            ("required sources", session.get("required_source_refs")),
            ("active run", session.get("active_run_id")),
            ("queued runs", session.get("queued_run_ids")),
            (
                "last run",
                f"{last.get('run_id')} {last.get('status')} {duration(last.get('elapsed_s'))}"
                if last
                else None,
            ),
            ("created", timestamp(session.get("created_utc"))),
            ("updated", timestamp(session.get("updated_utc"))),
        ]
    )
    return "\n".join(
        [
            head,
            _sources_block("sources", session.get("sources")),
            _sources_block("sinks", session.get("sinks")),
        ]
    )


def templates_table(templates: Sequence[Mapping[str, Any]]) -> str:
    if not templates:
        return "no source templates"

    def refs(t: Mapping[str, Any], *keys: str) -> Any:
        for key in keys:
            if key in t:
                return t[key]
        return None

    return table(
        ("PROFILE", "REQUIRED", "OPTIONAL", "DESCRIPTION"),
        (
            (
                refs(t, "name", "profile", "id"),
                refs(t, "required", "required_source_refs", "required_sources"),
                refs(t, "optional", "optional_source_refs", "optional_sources"),
                refs(t, "description", "title"),
            )
            for t in templates
        ),
        shrink=("DESCRIPTION",),
        width=terminal_width(),
    )


# --- runs -------------------------------------------------------------------------------------


def _run_error(run: Mapping[str, Any]) -> str:
    error = run.get("error")
    if not isinstance(error, dict):
        return EMPTY
    where = f" in {error['failed_step']}" if error.get("failed_step") else ""
    return text(f"{error.get('code')}{where}: {error.get('message')}")


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return "no runs"
    return table(
        ("RUN", "SESSION", "STATUS", "MODE", "QUEUED (UTC)", "ELAPSED", "ERROR"),
        (
            (
                r.get("run_id"),
                r.get("session_id"),
                r.get("status"),
                r.get("effective_mode") or r.get("mode"),
                timestamp(r.get("queued_utc")),
                duration(r.get("elapsed_s")),
                _run_error(r),
            )
            for r in runs
        ),
        shrink=("ERROR",),
        width=terminal_width(),
    )


def run_outcome(run: Mapping[str, Any]) -> str:
    """One line on how a run ended: `run R failed: CODE in STEP: message`, `run R cancelled`."""
    line = f"run {text(run.get('run_id'))} {text(run.get('status'))}"
    if run.get("status") == "failed":
        line += f": {_run_error(run)}"
    return line


def run_detail(run: Mapping[str, Any]) -> str:
    head = fields(
        [
            ("run", run.get("run_id")),
            ("session", run.get("session_id")),
            ("name", run.get("run_name")),
            ("status", run.get("status")),
            ("mode", f"{text(run.get('mode'))} -> {text(run.get('effective_mode'))}"),
            ("queued", timestamp(run.get("queued_utc"))),
            ("started", timestamp(run.get("started_utc"))),
            ("finished", timestamp(run.get("finished_utc"))),
            ("elapsed", duration(run.get("elapsed_s"))),
            ("dirty steps", run.get("dirty_steps")),
            ("skipped steps", run.get("skipped_steps")),
            ("fallback", run.get("fallback_reason")),
            ("recovered from", run.get("recovered_from_run_id")),
            ("retry of", run.get("retry_of")),
            ("error", _run_error(run)),
            ("artifacts", run.get("artifacts")),
        ]
    )
    states = run.get("step_states")
    if not isinstance(states, dict) or not states:
        return head
    columns = terminal_width()
    steps = table(
        ("STEP", "STATUS", "DURATION", "ERROR"),
        (
            (sid, st.get("status"), duration(st.get("duration_s")), st.get("error"))
            for sid, st in states.items()
            if isinstance(st, dict)
        ),
        shrink=("ERROR",),
        width=None if columns is None else columns - 2,  # indented by two
    )
    return head + "\nsteps:\n" + "\n".join("  " + line for line in steps.splitlines())


def submitted(answer: Mapping[str, Any]) -> str:
    """The 202 answer to process/retry/sample: `queued run R (position N)`."""
    position = answer.get("position")
    where = f" (position {position})" if position is not None else ""
    return f"{answer.get('status', 'queued')} run {answer.get('run_id')}{where}"


def dry_run_text(plan: Mapping[str, Any]) -> str:
    reasons = mapping(plan.get("reasons"))
    lines = [
        fields(
            [
                ("effective mode", plan.get("effective_mode")),
                ("can process", bool(plan.get("can_process"))),
                ("missing sources", plan.get("missing_required_sources")),
                ("skipped steps", plan.get("skipped_steps")),
            ]
        )
    ]
    dirty = plan.get("dirty_steps") or []
    if dirty:
        lines.append("dirty steps:")
        lines.extend(f"  {step}  ({text(reasons.get(step))})" for step in dirty)
    else:
        lines.append("dirty steps: -")
    lines.extend(f"warning: {text(w)}" for w in plan.get("warnings") or [])
    return "\n".join(lines)


def last_error_text(answer: Mapping[str, Any]) -> str:
    def describe(error: Any) -> Any:
        if isinstance(error, dict):
            parts = [error.get("run_id"), error.get("code"), error.get("failed_step")]
            head = " ".join(str(p) for p in parts if p)
            return f"{head}: {error.get('message')}" if error.get("message") else head or error
        return error

    failed = answer.get("latest_failed_run")
    return fields(
        [
            ("session", answer.get("session_id")),
            ("state", answer.get("state")),
            ("active run", answer.get("active_run_id")),
            ("current error", describe(answer.get("current_error"))),
            ("latest error", describe(answer.get("latest_error"))),
            (
                "latest failed run",
                failed.get("run_id") if isinstance(failed, dict) else failed,
            ),
            ("updated", timestamp(answer.get("updated_utc"))),
        ]
    )


def manifest_table(manifest: Mapping[str, Any]) -> str:
    artifacts = manifest.get("artifacts")
    if artifacts is None:
        return f"no manifest ({manifest.get('compatibility') or 'older run'})"
    if not artifacts:
        return "no artifacts"
    return table(
        ("PATH", "SIZE", "MEDIA TYPE", "SHA256"),
        ((a.get("path"), a.get("size"), a.get("media_type"), a.get("sha256")) for a in artifacts),
        shrink=("MEDIA TYPE",),
        width=terminal_width(),
    )


# --- events -----------------------------------------------------------------------------------


def _event_status(event_type: str, data: Mapping[str, Any]) -> Any:
    if event_type == ev.STEP_PROGRESS:
        fraction = data.get("fraction")
        pct = f"{fraction * 100:.0f}%" if isinstance(fraction, int | float) else None
        return " ".join(p for p in (pct, data.get("message")) if p) or None
    if event_type == ev.SESSION_STATE_CHANGED:
        return data.get("state") or data.get("to")
    if event_type == ev.STREAM_GAP:
        return f"gap: requested {data.get('requested')}, oldest {data.get('oldest_available')}"
    return data.get("status")


def event_cells(event: Mapping[str, Any]) -> list[str]:
    """The columns of an event's line: time, session, run, type, step, status, duration."""
    data = mapping(event.get("data"))
    event_type = str(event.get("type", ""))
    return [
        clock(event.get("time")),
        text(event.get("sessionid")),
        text(event.get("runid")),
        text(event_type),
        text(data.get("step")),
        text(_event_status(event_type, data)),
        duration(data.get("duration_s", data.get("elapsed_s"))),
    ]


def event_line(event: Mapping[str, Any], widths: list[int] | None = None) -> str:
    """One line per event (`event_cells`), columns two spaces apart.

    `widths`, when given, is the running width of each column: it grows to the widest cell
    seen so far and pads by it, so a stream's lines line up without fixed widths that would
    leave walls of spaces or misalign long ids.
    """
    cells = event_cells(event)
    if widths is None:
        widths = [0] * len(cells)
    for i, cell in enumerate(cells):
        widths[i] = max(widths[i], len(cell))
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def progress_bar(fraction: float, width: int) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:3.0f}%"


class EventPrinter:
    """Writes events to `out`, one line each (`event_line`), or NDJSON with `as_json`.

    On a terminal (`tty=True`) `step.progress` events with a `fraction` redraw one status line
    with a bar instead of adding a line each; the next other event replaces that status line.
    Off a terminal every event is a plain line, so logs and pipes get everything.
    """

    def __init__(self, out: TextIO, *, tty: bool = False, as_json: bool = False) -> None:
        self.out = out
        self.tty = tty and not as_json
        self.as_json = as_json
        self._status_shown = False
        self._widths: list[int] = [0] * 7  # running column widths (`event_line`)

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[K")
            self._status_shown = False

    def print(self, event: Mapping[str, Any]) -> None:
        if self.as_json:
            self.out.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.out.flush()
            return
        data = mapping(event.get("data"))
        fraction = data.get("fraction")
        if self.tty and event.get("type") == ev.STEP_PROGRESS and isinstance(fraction, int | float):
            columns = shutil.get_terminal_size((80, 24)).columns
            label = f"{text(event.get('runid'))} {text(data.get('step'))}"
            message = text(data.get("message")) if data.get("message") else ""
            line = f"{label} {progress_bar(float(fraction), 30)} {message}".rstrip()
            self.out.write("\r\x1b[K" + line[: max(10, columns - 1)])
            self._status_shown = True
        else:
            self._clear_status()
            self.out.write(event_line(event, self._widths) + "\n")
        self.out.flush()

    def close(self) -> None:
        """Leave the terminal on a fresh line."""
        if self._status_shown:
            self.out.write("\n")
            self._status_shown = False
        self.out.flush()
