"""Client command groups of the `runwire` CLI: `session`, `events`, `runs` (contract section 6).

Only the standard library is imported at module level, so `runwire session --help` stays fast;
httpx and the client come in inside each command. Every command accepts `--json` (print the
JSON body as received) and `--url` / `--token` either right after the group name or after the
command. Errors are raised as `CliError` (one line, non-zero exit); see docs/cli.md for the
exit statuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.cli.errors import EXIT_INTERRUPTED, EXIT_RUN_INTERRUPTED, CliError
from service.contract.statuses import FINAL_RUN_STATUSES, RunStatus
from streaming import events as ev

if TYPE_CHECKING:
    from service.cli.api_client import RunwireClient

Handler = Callable[[argparse.Namespace, "RunwireClient"], int]

# Exit statuses of `events tail --run` and `--wait`, by the run's final status; a failed run
# exits with its error code's `pipeline.exitcodes.ExitCode` value, as `runwire run` would.
RUN_EXIT: dict[str, int] = {
    RunStatus.SUCCEEDED: 0,
    RunStatus.CANCELLED: 5,
    RunStatus.INTERRUPTED: EXIT_RUN_INTERRUPTED,
}
FAILED_DEFAULT_EXIT = 4  # ExitCode.STEP_FAILED, for a failed run without a known code
FINAL_STATUSES = FINAL_RUN_STATUSES  # the contract's, not a copy
TERMINAL_TYPES = ev.TERMINAL_RUN_TYPES


# --- plumbing ---------------------------------------------------------------------------------


def command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Wrap a handler: build the client (lazily importing httpx) and close it afterwards.

    A broken pipe (`runwire runs list | head`) is `service.cli.main`'s to map, as for every
    other command.
    """

    def run(args: argparse.Namespace) -> int:
        from service.cli.api_client import RunwireClient

        with RunwireClient(getattr(args, "url", None), getattr(args, "token", None)) as c:
            return handler(args, c)

    run.__doc__ = handler.__doc__
    return run


def emit(args: argparse.Namespace, body: Any, human: Callable[[Any], str]) -> int:
    if args.json:
        if body is not None:
            print(json.dumps(body, indent=2))
    else:
        print(human(body))
    return 0


def path_seg(value: str) -> str:
    from service.cli.api_client import seg

    return seg(value)


def key_value(text: str) -> tuple[str, Any]:
    """`k=v` for `--option`: the value as JSON when it parses (numbers, booleans), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def client_path(text: str) -> str:
    """A LOCATION argument: relative paths are made absolute against this shell's directory.

    The server resolves locations on its own file system, against its own working directory,
    so `set-source s sample frames/x.h5` would otherwise name a different file than the user
    sees. Absolute paths pass unchanged (they are what a remote server needs anyway).
    """
    return os.path.abspath(os.path.expanduser(text))


def _connection(parser: argparse.ArgumentParser, *, inner: bool) -> None:
    # Inner (per-command) copies default to SUPPRESS so they never overwrite a value given
    # right after the group name.
    default = argparse.SUPPRESS if inner else None
    parser.add_argument(
        "--url", default=default, help="server URL (env RUNWIRE_URL, default http://127.0.0.1:8000)"
    )
    parser.add_argument("--token", default=default, help="bearer token (env RUNWIRE_TOKEN)")
    # `--json` too may come right after the group name (`runwire session --json list`).
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if inner else False,
        help="print the JSON body (for scripts)",
    )


def leaf(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help_text: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    _connection(parser, inner=True)
    parser.set_defaults(func=command(handler))
    return parser


def group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    _connection(parser, inner=False)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


# --- following a run --------------------------------------------------------------------------


def run_exit_code(run: dict[str, Any]) -> int:
    """The exit status for a finished run (0 only for `succeeded`)."""
    status = run.get("status")
    if status == "failed":
        from pipeline.exitcodes import ExitCode

        error = run.get("error")
        code = str(error.get("code")) if isinstance(error, dict) else ""
        known = code in ExitCode.__members__ and code != ExitCode.OK.name
        return int(ExitCode[code]) if known else FAILED_DEFAULT_EXIT
    return RUN_EXIT.get(str(status), 1)


def fetch_run(client: RunwireClient, run_id: str) -> dict[str, Any]:
    """The run from the live API, else from the retained runs (its session may be gone)."""
    try:
        run: dict[str, Any] = client.get(f"/runs/{path_seg(run_id)}")
    except CliError:
        run = client.get(f"/retained-runs/{path_seg(run_id)}")
    return run


def follow_run(
    client: RunwireClient,
    run_id: str,
    on_event: Callable[[dict[str, Any]], None],
    *,
    since: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Pass every event of `run_id` to `on_event` until its terminal event; the final run.

    If the final run cannot be fetched afterwards, its status comes from the terminal event.
    `quiet` leaves reconnections unreported (they are retried all the same).
    """
    from service.cli.api_client import EventStream

    def finished() -> bool:
        return fetch_run(client, run_id).get("status") in FINAL_STATUSES

    stream: EventStream = client.events(
        f"/runs/{path_seg(run_id)}/events",
        since=since or "0",
        on_reconnect=_ignore_reconnect if quiet else report_reconnect,
        give_up=finished,
    )
    terminal: dict[str, Any] | None = None
    for event in stream:
        on_event(event)
        if event.get("type") in TERMINAL_TYPES and event.get("runid") == run_id:
            terminal = event
            break
    try:
        return fetch_run(client, run_id)
    except CliError:
        if terminal is None:
            raise
        data = terminal.get("data")
        status = {ev.RUN_CANCELLED: "cancelled", ev.RUN_INTERRUPTED: "interrupted"}.get(
            str(terminal.get("type")), data.get("status") if isinstance(data, dict) else None
        )
        return {"run_id": run_id, "status": status}


def report_reconnect(reason: str, delay: float) -> None:
    print(f"runwire: connection lost ({reason}); reconnecting in {delay:.1f} s", file=sys.stderr)


def _ignore_reconnect(reason: str, delay: float) -> None:
    pass


def wait_for(args: argparse.Namespace, client: RunwireClient, answer: dict[str, Any]) -> int:
    """`--wait`: stream the run's events (human form) and exit by its final status.

    With `--quiet` nothing goes to stdout; a run that did not succeed gets one line on stderr
    (`error: run R failed: ...`), and the exit status says how it ended either way.
    """
    from service.cli.format import EventPrinter, run_detail, run_outcome

    quiet = bool(getattr(args, "quiet", False))
    printer = EventPrinter(sys.stdout, tty=sys.stdout.isatty())
    quiet_events = quiet or args.json
    try:
        run = follow_run(
            client,
            str(answer["run_id"]),
            (lambda e: None) if quiet_events else printer.print,
            quiet=quiet,
        )
    except KeyboardInterrupt:
        printer.close()
        return EXIT_INTERRUPTED
    printer.close()
    status = run_exit_code(run)
    if not quiet:
        emit(args, run, run_detail)
    elif status != 0:
        print(f"error: {run_outcome(run)}", file=sys.stderr)
    return status


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """`-q/--quiet` for commands that submit a run: print nothing but errors."""
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing but errors (with --wait: the exit status tells the outcome)",
    )


def emit_submitted(args: argparse.Namespace, answer: Any, human: Callable[[Any], str]) -> int:
    """The 202 answer of a submit, unless `--quiet`."""
    if getattr(args, "quiet", False):
        return 0
    return emit(args, answer, human)


# --- events -----------------------------------------------------------------------------------


def _events_tail(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import EventPrinter

    printer = EventPrinter(sys.stdout, tty=sys.stdout.isatty(), as_json=args.json)
    try:
        if args.run:
            run = follow_run(client, args.run, printer.print, since=args.since)
            printer.close()
            return run_exit_code(run)
        params: dict[str, str] = {}
        if len(args.sessions) == 1:
            path = f"/sessions/{path_seg(args.sessions[0])}/events"
        else:
            path = "/events"
            if args.sessions:
                params["sessions"] = ",".join(args.sessions)
        for event in client.events(
            path, since=args.since, params=params, on_reconnect=report_reconnect
        ):
            printer.print(event)
    except KeyboardInterrupt:
        printer.close()
        return EXIT_INTERRUPTED if args.run else 0
    printer.close()  # pragma: no cover - a session stream is followed until Ctrl-C
    return 0  # pragma: no cover


def _add_events(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = group(subparsers, "events", "Follow live events.")
    p = leaf(
        sub,
        "tail",
        _events_tail,
        "Print events as they happen, resuming after dropped connections.",
    )
    p.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions (default: all)")
    p.add_argument(
        "--run",
        metavar="RUN",
        help="only this run, from its start; exit at its end with its outcome",
    )
    p.add_argument("--since", metavar="ID", help="replay events after this id (0: all retained)")


# --- runs (retained) --------------------------------------------------------------------------


def _runs_list(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import runs_table

    body = client.get(
        "/retained-runs",
        session_id=args.session,
        status=args.status,
        limit=args.limit,
        before=args.before,
    )
    return emit(args, body, lambda b: runs_table(b.get("runs") or []))


def _runs_latest(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import run_detail

    return emit(args, client.get("/retained-runs/latest", session_id=args.session), run_detail)


def _runs_show(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import run_detail

    return emit(args, client.get(f"/retained-runs/{path_seg(args.run)}"), run_detail)


def _runs_reports(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import dump_json

    return emit(args, client.get(f"/retained-runs/{path_seg(args.run)}/reports"), dump_json)


def _runs_manifest(args: argparse.Namespace, client: RunwireClient) -> int:
    from service.cli.format import manifest_table

    body = client.get(f"/retained-runs/{path_seg(args.run)}/artifact-manifest")
    return emit(args, body, manifest_table)


def _runs_download(args: argparse.Namespace, client: RunwireClient) -> int:
    from urllib.parse import quote

    path = f"/retained-runs/{path_seg(args.run)}/artifacts/{quote(args.path, safe='/')}"
    if args.output == "-":
        size = client.download(path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    target = args.output or os.path.basename(args.path.rstrip("/")) or "artifact"
    if not args.force and os.path.lexists(target):
        # Checked before anything is fetched, and again at the rename below.
        raise CliError(f"{target} exists; pass --force to overwrite it")
    partial = target + ".part"  # a cut download never looks complete
    try:
        with open(partial, "wb") as handle:
            size = client.download(path, handle)
        if args.force:
            os.replace(partial, target)
        else:
            _link_new(partial, target)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    body = {"run_id": args.run, "path": args.path, "file": target, "size": size}
    return emit(args, body, lambda b: f"wrote {b['file']} ({b['size']} bytes)")


def _link_new(partial: str, target: str) -> None:
    """Give `partial` the name `target` only if nothing has that name yet (atomically: a file
    created meanwhile by someone else is never replaced)."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise CliError(f"{target} exists; pass --force to overwrite it") from None
    except OSError:  # a file system without hard links: the check above has to do
        if os.path.lexists(target):
            raise CliError(f"{target} exists; pass --force to overwrite it") from None
        os.replace(partial, target)


def _add_runs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = group(subparsers, "runs", "Retained runs (kept on disk, also after restarts).")
    p = leaf(sub, "list", _runs_list, "List retained runs, newest first.")
    p.add_argument("--session", help="only this session's runs")
    p.add_argument("--status", help="only runs with this status")
    p.add_argument("--limit", type=int, help="at most this many")
    p.add_argument("--before", metavar="RUN", help="runs older than this one (paging)")
    p = leaf(sub, "latest", _runs_latest, "Show the newest retained run.")
    p.add_argument("--session", help="of this session")
    for name, handler, text in (
        ("show", _runs_show, "Show a retained run's summary."),
        ("reports", _runs_reports, "Show a retained run's report files."),
        ("manifest", _runs_manifest, "List a retained run's artifacts with checksums."),
    ):
        leaf(sub, name, handler, text).add_argument("run", metavar="RUN")
    p = leaf(sub, "download", _runs_download, "Download one artifact of a retained run.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("path", metavar="PATH", help="artifact path as listed by `runs manifest`")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (`-`: stdout)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite FILE if it exists")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `events` and `runs` command groups (`session` is `service.cli.session`'s,
    which builds on the helpers here: the import goes that way only)."""
    _add_events(subparsers)
    _add_runs(subparsers)
