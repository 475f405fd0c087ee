"""Retained runs: the run history rebuilt from run directories (contract sections 4 and 7).

There is no index file that could get out of step with the disk: every call scans
`<runs_dir>/<session_id>/<run_id>/`. Parsed `summary.json` files are cached, keyed by path and
validated by `(mtime_ns, size)`, so a listing costs one `scandir` per session plus one `stat`
per run. The history works after a restart and for sessions that were deleted.

A run directory without `summary.json` (a run queued or still running, or one a crash cut
short before recovery wrote its summary) is listed all the same, with a summary made from its
`run-request.json` if there is one: status `running` when its `events.ndjson` has any event,
else `queued`, and `queued_utc` from the request (or the request file's, else the directory's,
mtime). So the listing always equals the run directories on disk.

All methods do blocking file I/O: call them from a worker thread (`anyio.to_thread`). They are
safe to call from several threads at once. Returned summaries are shared with the cache: treat
them as read-only.

Artifact downloads are contained strictly (`artifact_file`): the requested path must be a
plain relative path, and its real path (symlinks resolved) must be a regular file inside the
run's real `artifacts/` directory. Anything else is NOT_FOUND, so a probe learns nothing.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from pipeline.rundir import ARTIFACTS, EVENTS, MANIFEST, REQUEST, SUMMARY
from pipeline.rundir import media_type as media_type_for  # what an artifact is served as
from service.contract.errors import ServiceError
from service.contract.records import RunRecord, RunStatus

REPORT_FILES = {"summary": SUMMARY, "request": REQUEST, "events": EVENTS}

# Run and session ids as the service makes and accepts them; anything else cannot name a run
# directory, so it is NOT_FOUND before the file system is touched (`service.storage.history` too).
DIR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_LIMIT = 500
MAX_ARTIFACT_PATH = 1024  # characters in a requested artifact path
MAX_NAME = 255  # characters in one path segment (the usual file-system limit)
# Characters never found in an artifact path we write; their presence means a probe. `%` is
# refused because the server already decoded the URL once: a `%` left over is a double
# encoding (`%252e%252e` -> `%2e%2e`), and decoding again would defeat containment.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\%:]")

_decode_json = msgspec.json.Decoder().decode


def _run_not_found(run_id: str) -> ServiceError:
    return ServiceError("RUN_NOT_FOUND", f"no retained run {run_id[:128]!r}")


def _artifact_not_found() -> ServiceError:
    return ServiceError("NOT_FOUND", "no such artifact")


def _iso_from_mtime(mtime: float) -> str:
    return (
        datetime.fromtimestamp(mtime, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is missing, unreadable or not JSON."""
    try:
        return _decode_json(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


@dataclass(frozen=True)
class _Entry:
    run_dir: Path
    summary: dict[str, Any]
    finished: bool  # has a summary.json

    @property
    def sort_key(self) -> tuple[str, str]:
        return (str(self.summary.get("queued_utc") or ""), self.run_dir.name)


class RetainedRuns:
    """Retained runs under `runs_dir` (see the module docstring for semantics and policies)."""

    def __init__(self, runs_dir: Path | str) -> None:
        self.runs_dir = Path(runs_dir)
        self._lock = threading.Lock()
        # summary.json path -> ((mtime_ns, size), parsed summary); bounded by the number of
        # run directories, and entries of vanished directories are dropped on each full scan.
        self._cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}

    # -- scanning ---------------------------------------------------------------------------

    def _session_dirs(self, session_id: str | None) -> list[Path]:
        if session_id is not None:
            session_dir = self.runs_dir / session_id
            if not DIR_ID.fullmatch(session_id) or session_dir.is_symlink():
                return []
            return [session_dir]
        try:
            with os.scandir(self.runs_dir) as it:
                return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def _entry(self, run_dir: Path) -> _Entry | None:
        summary_path = run_dir / SUMMARY
        try:
            st = summary_path.stat()
        except OSError:
            return self._pending_entry(run_dir)
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(summary_path)
        if cached is not None and cached[0] == key:
            return _Entry(run_dir, cached[1], True)
        summary = _read_json(summary_path)
        if not isinstance(summary, dict):
            return self._pending_entry(run_dir)
        with self._lock:
            self._cache[summary_path] = (key, summary)
        return _Entry(run_dir, summary, True)

    def _pending_entry(self, run_dir: Path) -> _Entry | None:
        request_path = run_dir / REQUEST
        try:
            mtime = request_path.stat().st_mtime
        except OSError:
            try:  # created, nothing written in it yet (or a crash came first): still listed
                mtime = run_dir.stat().st_mtime
            except OSError:
                return None  # removed meanwhile
        request = _read_json(request_path)
        request = request if isinstance(request, dict) else {}
        try:
            started = (run_dir / EVENTS).stat().st_size > 0
        except OSError:
            started = False
        record = RunRecord(
            run_id=run_dir.name,
            session_id=run_dir.parent.name,
            run_name=_str_or_none(request.get("run_name")),
            mode=str(request.get("mode") or "auto"),
            status=RunStatus.RUNNING if started else RunStatus.QUEUED,
            queued_utc=str(request.get("queued_utc") or _iso_from_mtime(mtime)),
        )
        return _Entry(run_dir, msgspec.to_builtins(record), False)

    def _scan(self, session_id: str | None) -> list[_Entry]:
        entries: list[_Entry] = []
        for session_dir in self._session_dirs(session_id):
            try:
                with os.scandir(session_dir) as it:
                    run_dirs = [
                        Path(e.path)
                        for e in it
                        if e.is_dir(follow_symlinks=False) and DIR_ID.fullmatch(e.name)
                    ]
            except OSError:
                continue
            for run_dir in run_dirs:
                entry = self._entry(run_dir)
                if entry is not None:
                    entries.append(entry)
        if session_id is None:
            self._forget_missing({e.run_dir / SUMMARY for e in entries if e.finished})
        entries.sort(key=lambda e: e.sort_key, reverse=True)
        return entries

    def _forget_missing(self, present: set[Path]) -> None:
        with self._lock:
            for path in [p for p in self._cache if p not in present]:
                del self._cache[path]

    def _find(self, run_id: str) -> _Entry:
        if not isinstance(run_id, str) or not DIR_ID.fullmatch(run_id):
            raise _run_not_found(str(run_id))
        for session_dir in self._session_dirs(None):
            run_dir = session_dir / run_id
            if run_dir.is_dir() and not run_dir.is_symlink():
                entry = self._entry(run_dir)
                if entry is not None:
                    return entry
        raise _run_not_found(run_id)

    def unfinished(self) -> list[tuple[str, str]]:
        """`(session_id, run_id)` of every run directory without a `summary.json`, oldest
        first. For restart recovery: a directory whose run the store does not know was made
        for a submit that a crash cut short before its commit (the run directory and the
        store row are written in parallel); it needs a summary (`interrupted`) like any other
        run that will never finish."""
        return [
            (e.run_dir.parent.name, e.run_dir.name)
            for e in reversed(self._scan(None))
            if not e.finished
        ]

    # -- queries ----------------------------------------------------------------------------

    def list(
        self,
        session_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run summaries, newest first (by `queued_utc`, then run id).

        `before` (a run id) pages: only runs older than that one are returned; an unknown
        `before` is RUN_NOT_FOUND. `limit` is clamped to 1..500.
        """
        limit = max(1, min(int(limit), MAX_LIMIT))
        entries = self._scan(session_id)
        if before is not None:
            anchor = self._find(before).sort_key
            entries = [e for e in entries if e.sort_key < anchor]
        if status is not None:
            entries = [e for e in entries if e.summary.get("status") == status]
        return [e.summary for e in entries[:limit]]

    def latest(self, session_id: str | None = None) -> dict[str, Any]:
        """The newest run's summary (of one session, or of all); RUN_NOT_FOUND if none."""
        runs = self.list(session_id=session_id, limit=1)
        if not runs:
            raise ServiceError("RUN_NOT_FOUND", "no retained runs")
        return runs[0]

    def get(self, run_id: str) -> dict[str, Any]:
        """The run's summary (`summary.json`, or one made from its request while pending)."""
        return self._find(run_id).summary

    def run_dir(self, run_id: str) -> Path:
        """The run's directory (RUN_NOT_FOUND if there is none)."""
        return self._find(run_id).run_dir

    def reports(self, run_id: str) -> dict[str, Any]:
        """Where the run's summary, request and event log are: relative path, size and the URL
        serving each (`/v1/retained-runs/<id>/reports/<name>`); a missing file is null."""
        entry = self._find(run_id)
        files: dict[str, Any] = {}
        for key, name in REPORT_FILES.items():
            try:
                size = (entry.run_dir / name).stat().st_size
            except OSError:
                files[key] = None
                continue
            files[key] = {
                "path": name,
                "size": size,
                "url": f"/v1/retained-runs/{run_id}/reports/{name}",
            }
        return {
            "run_id": run_id,
            "session_id": entry.run_dir.parent.name,
            "status": entry.summary.get("status"),
            **files,
        }

    def report_file(self, run_id: str, name: str) -> Path:
        """One of the run's report files by name (`summary.json`, `run-request.json`,
        `events.ndjson`); NOT_FOUND for any other name or a missing file."""
        if name not in REPORT_FILES.values():
            raise _artifact_not_found()
        path = self._find(run_id).run_dir / name
        if path.is_symlink() or not path.is_file():
            raise _artifact_not_found()
        return path

    def manifest(self, run_id: str) -> dict[str, Any]:
        """`{"artifacts": [{path, size, sha256, media_type}]}`, or for a run written before
        manifests existed (or whose manifest is unreadable) `{"artifacts": None,
        "compatibility": "no-manifest"}`."""
        entry = self._find(run_id)
        data = _read_json(entry.run_dir / MANIFEST)
        items = data.get("artifacts") if isinstance(data, dict) else data
        if not isinstance(items, list):
            return {"artifacts": None, "compatibility": "no-manifest"}
        artifacts = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                continue
            artifacts.append(
                {
                    "path": item["path"],
                    "size": item.get("size"),
                    "sha256": item.get("sha256"),
                    "media_type": item.get("media_type") or media_type_for(item["path"]),
                }
            )
        return {"artifacts": artifacts}

    def artifact_file(self, run_id: str, raw_path: str) -> Path:
        """The real path of artifact `raw_path` (relative to the run's `artifacts/`).

        NOT_FOUND (never another error) unless `raw_path` is a plain relative path — no empty,
        `.` or `..` segments, no backslash, `%`, `:`, control characters or NUL, at most 1024
        characters and 255 per segment — and its real path is a regular file inside the
        run's real `artifacts/` directory, which must itself be inside the run directory.
        """
        if not _plain_relative_path(raw_path):
            raise _artifact_not_found()
        run_dir = self._find(run_id).run_dir
        try:
            runs_real = self.runs_dir.resolve(strict=True)
            run_real = run_dir.resolve(strict=True)
            artifacts_real = (run_dir / ARTIFACTS).resolve(strict=True)
            target = (artifacts_real / raw_path).resolve(strict=True)
            is_file = target.is_file()
        except (OSError, RuntimeError, ValueError):  # missing, too long, loops, bad bytes
            raise _artifact_not_found() from None
        contained = (
            run_real.is_relative_to(runs_real)
            and artifacts_real.is_relative_to(run_real)
            and target.is_relative_to(artifacts_real)
            and target != artifacts_real
        )
        if not contained or not is_file:
            raise _artifact_not_found()
        return target


def _plain_relative_path(raw_path: object) -> bool:
    if not isinstance(raw_path, str) or not raw_path or len(raw_path) > MAX_ARTIFACT_PATH:
        return False
    if raw_path.startswith("/") or _FORBIDDEN.search(raw_path):
        return False
    try:
        raw_path.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable URL bytes
        return False
    return all(seg not in ("", ".", "..") and len(seg) <= MAX_NAME for seg in raw_path.split("/"))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
