"""The `runwire session` command group (contract section 6): sessions, their sources and
sinks, submitting, inspecting, cancelling and retrying runs.

Standard library only at module level (see `service.cli.client_commands`); each command imports the
HTTP client and the formatters when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.cli.client_commands import (
    Handler,
    add_quiet,
    client_path,
    emit,
    emit_submitted,
    group,
    key_value,
    leaf,
    path_seg,
    wait_for,
)
from service.cli.errors import CliError

if TYPE_CHECKING:
    from service.cli.api_client import RunwireClient


def _session_list(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import sessions_table

    body = client.get("/sessions")
    return emit(args, body, lambda b: sessions_table(b.get("sessions") or []))


def _pipeline_body(args: argparse.Namespace) -> dict[str, str]:
    if getattr(args, "package", None) is not None:  # an installed pipeline package's pipeline
        return {"package": args.package}
    if args.pipeline is not None:
        try:
            with open(args.pipeline, encoding="utf-8") as handle:
                return {"yaml_text": handle.read()}
        except OSError as exc:
            raise CliError(f"cannot read {args.pipeline}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise CliError(f"cannot read {args.pipeline}: not UTF-8 text ({exc.reason})") from exc
    if args.example is not None:
        import importlib

        try:
            examples: Any = importlib.import_module("pipeline.examples")
        except ImportError as exc:
            raise CliError("the bundled examples are not installed here") from exc
        try:
            return {"yaml_text": examples.example_text(args.example)}
        except (KeyError, ValueError, FileNotFoundError) as exc:
            raise CliError(f"no example pipeline {args.example!r}") from exc
    return {"path": args.server_path}


def _session_create(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import session_detail

    body: dict[str, Any] = {"pipeline": _pipeline_body(args)}
    if args.session_id:
        body["session_id"] = args.session_id
    if args.name:
        body["name"] = args.name
    if args.profile:
        body["source_profile"] = args.profile
    if args.no_auto_fallback:
        body["auto_fallback"] = False
    created = client.post("/sessions", body)
    return emit(
        args, created, lambda s: f"created session {s.get('session_id')!r}\n" + session_detail(s)
    )


def _session_show(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import session_detail

    return emit(args, client.get(f"/sessions/{path_seg(args.session)}"), session_detail)


def _session_delete(args: argparse.Namespace, client: RunwireClient) -> int:
    body = client.delete(f"/sessions/{path_seg(args.session)}")
    return emit(args, body, lambda _b: f"deleted session {args.session!r}")


def _session_templates(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import templates_table

    body = client.get("/source-templates")
    return emit(args, body, lambda b: templates_table(b.get("templates") or []))


def _describe_session_or(what: str) -> Callable[[Any], str]:
    def human(body: Any) -> str:
        from service.cli.format import session_detail

        if isinstance(body, dict) and "session_id" in body and "state" in body:
            return f"{what}\n{session_detail(body)}"
        return what

    return human


def _set_ref(kind: str) -> Handler:
    def handler(args: argparse.Namespace, client: RunwireClient) -> int:
        spec: dict[str, Any] = {"ref": args.ref, "type": args.type, "location": args.location}
        if args.option:
            spec["options"] = dict(args.option)
        body = client.post(f"/sessions/{path_seg(args.session)}/{kind}/patch", spec)
        noun = kind.rstrip("s")
        return emit(args, body, _describe_session_or(f"{noun} {args.ref!r} set"))

    handler.__doc__ = f"Set one {kind[:-1]} of a session."
    return handler


def _delete_ref(kind: str) -> Handler:
    def handler(args: argparse.Namespace, client: RunwireClient) -> int:
        body = client.delete(f"/sessions/{path_seg(args.session)}/{kind}/{path_seg(args.ref)}")
        noun = kind.rstrip("s")
        return emit(args, body, _describe_session_or(f"{noun} {args.ref!r} deleted"))

    return handler


def _session_set_sample(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import submitted

    body: dict[str, Any] = {"location": args.location, "process": bool(args.process or args.wait)}
    if args.type:
        body["type"] = args.type
    if args.option:
        body["options"] = dict(args.option)
    key = args.idempotency_key if body["process"] else None
    headers = {"Idempotency-Key": key} if key else None
    answer = client.post(f"/sessions/{path_seg(args.session)}/sample", body, headers=headers)
    if isinstance(answer, dict) and "run_id" in answer:
        if args.wait:
            return wait_for(args, client, answer)
        return emit_submitted(args, answer, submitted)
    return emit_submitted(args, answer, _describe_session_or(f"sample set to {args.location}"))


def _process_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"mode": args.mode}
    if args.changed:
        body["changed_sources"] = list(args.changed)
    if getattr(args, "run_name", None):
        body["run_name"] = args.run_name
    if getattr(args, "coalesce", False):
        body["coalesce"] = True
    return body


def _session_process(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import submitted

    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    answer = client.post(
        f"/sessions/{path_seg(args.session)}/process", _process_body(args), headers=headers
    )
    if args.wait:
        return wait_for(args, client, answer)
    return emit_submitted(args, answer, submitted)


def _session_dry_run(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import dry_run_text

    plan = client.post(f"/sessions/{path_seg(args.session)}/process/dry-run", _process_body(args))
    return emit(args, plan, dry_run_text)


def _session_reset(args: argparse.Namespace, client: RunwireClient) -> int:
    body = client.post(f"/sessions/{path_seg(args.session)}/reset", {"mode": args.mode})
    return emit(args, body, _describe_session_or(f"session {args.session!r} reset ({args.mode})"))


def _session_runs(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import runs_table

    params: dict[str, Any] = {"limit": args.limit}
    if args.before:
        params["before"] = args.before
    body = client.get(f"/sessions/{path_seg(args.session)}/runs", **params)

    def text(b: dict[str, Any]) -> str:
        table = runs_table(b.get("runs") or [])
        if b.get("next_before"):
            table += f"\n(older runs: --before {b['next_before']})"
        return table

    return emit(args, body, text)


def _session_last_error(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import last_error_text

    body = client.get(f"/sessions/{path_seg(args.session)}/errors/latest")
    return emit(args, body, last_error_text)


def _session_cancel(args: argparse.Namespace, client: RunwireClient) -> int:
    body = client.post(f"/runs/{path_seg(args.run)}/cancel")

    def human(b: Any) -> str:
        status = b.get("status") if isinstance(b, dict) else None
        return f"cancel requested for run {args.run}" + (f" ({status})" if status else "")

    return emit(args, body, human)


def _session_retry(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import submitted

    answer = client.post(f"/runs/{path_seg(args.run)}/retry")
    if args.wait:
        return wait_for(args, client, answer)
    return emit_submitted(args, answer, lambda a: f"{submitted(a)}, retry of {args.run}")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `session` command group (listed in `service.cli.main.COMMAND_MODULES`)."""
    sub = group(subparsers, "session", "Manage sessions on a runwire server.")
    leaf(sub, "list", _session_list, "List sessions.")

    p = leaf(sub, "create", _session_create, "Create a session running a pipeline.")
    p.add_argument("session_id", nargs="?", metavar="SESSION", help="id (default: the server's)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pipeline", metavar="FILE", help="pipeline file (YAML/JSON) read here")
    which.add_argument("--example", metavar="NAME", help="a bundled example pipeline (saxs)")
    which.add_argument("--server-path", metavar="PATH", help="pipeline file on the server host")
    which.add_argument(
        "--package",
        metavar="NAME",
        help="an installed pipeline package's pipeline (NAME[@VERSION])",
    )
    p.add_argument("--name", help="display name")
    p.add_argument("--profile", help="source profile (see `session templates`)")
    p.add_argument(
        "--no-auto-fallback",
        action="store_true",
        help="do not follow a failed partial run with a full one",
    )

    for name, handler, text in (
        ("show", _session_show, "Show a session."),
        ("delete", _session_delete, "Delete a session (cancels its runs; retained runs stay)."),
        ("last-error", _session_last_error, "Show a session's latest error."),
    ):
        leaf(sub, name, handler, text).add_argument("session", metavar="SESSION")
    p = leaf(sub, "runs", _session_runs, "List a session's runs, newest first, a page at a time.")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--limit", type=int, default=100, help="runs per page (1..1000, default 100)")
    p.add_argument("--before", metavar="RUN", help="only runs older than this run (paging)")
    leaf(sub, "templates", _session_templates, "List the built-in source profiles.")

    for kind, default_type in (("sources", "hdf5"), ("sinks", "hdf5")):
        noun = kind[:-1]
        p = leaf(sub, f"set-{noun}", _set_ref(kind), f"Set (add or replace) one {noun}.")
        p.add_argument("session", metavar="SESSION")
        p.add_argument("ref", metavar="REF")
        p.add_argument("location", metavar="LOCATION", type=client_path)
        p.add_argument("--type", default=default_type, help=f"default {default_type}")
        p.add_argument("--option", action="append", type=key_value, metavar="KEY=VALUE")
        p = leaf(sub, f"delete-{noun}", _delete_ref(kind), f"Delete one {noun}.")
        p.add_argument("session", metavar="SESSION")
        p.add_argument("ref", metavar="REF")

    p = leaf(sub, "set-sample", _session_set_sample, "Set the `sample` source (and process).")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("location", metavar="LOCATION", type=client_path)
    p.add_argument("--type", help="source type (server default: hdf5)")
    p.add_argument("--option", action="append", type=key_value, metavar="KEY=VALUE")
    p.add_argument("--process", action="store_true", help="also submit a run")
    p.add_argument("--wait", action="store_true", help="submit a run and wait for its end")
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="with --process/--wait: a repeated submit with this key returns the first run",
    )
    add_quiet(p)

    for name, handler, text in (
        ("process", _session_process, "Submit a run."),
        ("dry-run", _session_dry_run, "Show what a run would do, and why."),
    ):
        p = leaf(sub, name, handler, text)
        p.add_argument("session", metavar="SESSION")
        p.add_argument("--mode", choices=("auto", "partial", "full"), default="auto")
        p.add_argument(
            "--changed",
            action="append",
            metavar="REF",
            help="treat this source as changed (repeatable)",
        )
    process = sub.choices["process"]
    process.add_argument("--run-name", help="a name for the run")
    process.add_argument(
        "--coalesce", action="store_true", help="merge into the session's queued run, if any"
    )
    process.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a repeated submit with this key returns the first run",
    )
    process.add_argument(
        "--wait", action="store_true", help="follow the run; exit status by its outcome"
    )
    add_quiet(process)

    p = leaf(sub, "reset", _session_reset, "Reset a session's error state and caches.")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--mode", choices=("partial", "full"), default="partial")

    p = leaf(sub, "cancel", _session_cancel, "Cancel a queued or running run.")
    p.add_argument("run", metavar="RUN")
    p = leaf(sub, "retry", _session_retry, "Retry a failed, cancelled or interrupted run.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--wait", action="store_true", help="follow the new run")
    add_quiet(p)
