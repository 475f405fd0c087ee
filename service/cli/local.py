"""Local commands that need no server: `runwire steps`, `runwire examples`, `runwire demo-data`.

Only the standard library is imported at module level (see service/cli/main.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from service.cli.errors import EXIT_USAGE, CliError

_MAX_SIDE = 4096  # pipeline.demodata.MAX_SIDE (not imported here: the CLI starts with stdlib only)


def add_parsers(sub: Any) -> None:
    steps = sub.add_parser("steps", help="list the built-in steps with their inputs and params",
                           description="Documentation of the step registry, generated from the step classes.")  # fmt: skip
    steps.add_argument("names", nargs="*", metavar="NAME", help="only these steps")
    steps.add_argument("--markdown", action="store_true", help="print docs/steps.md (all steps)")
    steps.add_argument("--json", action="store_true", help="print the documentation as JSON")
    steps.set_defaults(func=steps_command)

    examples = sub.add_parser("examples", help="list the bundled example pipelines, or print one")
    examples.add_argument("name", nargs="?", metavar="NAME", help="print this example's YAML")
    examples.add_argument(
        "--json", action="store_true", help='list as JSON: {"examples": [{name, summary}]}'
    )
    examples.set_defaults(func=examples_command)

    demo = sub.add_parser("demo-data", help="write synthetic detector frames for the examples",
                          description="Write sample_0001.h5 ..., background.h5 and dark.h5 into DIR.")  # fmt: skip
    demo.add_argument("directory", metavar="DIR")
    demo.add_argument("--count", type=int, default=3, help="number of sample files (default 3)")
    demo.add_argument(
        "--shape",
        default="1024x1024",
        metavar="HxW",
        help="frame shape, each side at most 4096 (default 1024x1024)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--compression", choices=("none", "gzip", "bslz4"), default="none",
        help="how frames are stored: none, gzip (level 1, row chunks) or bslz4 "
        "(bitshuffle-LZ4, one chunk per frame, uint32, as an Eiger writes it); default none",
    )  # fmt: skip
    demo.set_defaults(func=demo_data_command)


def steps_command(args: argparse.Namespace) -> int:
    import pipeline.steps  # noqa: F401 - registers the built-in steps
    from pipeline.docs import render_steps_markdown, render_steps_text
    from pipeline.step import REGISTRY

    if args.markdown:
        # docs/steps.md documents the built-ins only: plugins are not loaded for it.
        sys.stdout.write(render_steps_markdown())
        return 0
    from pipeline.plugins import load_plugins, plugin_errors

    load_plugins()  # steps of installed distributions (entry points runwire.steps)
    for err in plugin_errors():
        print(f"warning: step plugin {err.name!r} ({err.distribution}) not loaded: {err.message}",
              file=sys.stderr)  # fmt: skip
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        raise CliError(
            f"unknown step(s): {', '.join(unknown)} (`runwire steps` lists them)", EXIT_USAGE
        )
    if args.json:
        import dataclasses
        import json

        from pipeline.docs import step_docs

        docs = [dataclasses.asdict(doc) for doc in step_docs(args.names or None)]
        print(json.dumps({"steps": docs}, indent=2))
        return 0
    sys.stdout.write(render_steps_text(args.names or None))
    return 0


def examples_command(args: argparse.Namespace) -> int:
    from pipeline.examples import example_names, example_text

    names = example_names()
    if args.name is None:
        summaries = {
            name: next(
                (
                    ln.lstrip("# ").strip()
                    for ln in example_text(name).splitlines()
                    if ln.startswith("#")
                ),
                "",
            )
            for name in names
        }
        if args.json:
            import json

            listed = [{"name": name, "summary": text} for name, text in summaries.items()]
            print(json.dumps({"examples": listed}, indent=2))
            return 0
        for name, first in summaries.items():
            print(f"{name}\t{first}" if first else name)
        return 0
    if args.name not in names:
        raise CliError(
            f"no example {args.name!r} (examples: {', '.join(names) or 'none'})", EXIT_USAGE
        )
    sys.stdout.write(example_text(args.name))
    return 0


def parse_shape(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise CliError(f"--shape must look like HxW, e.g. 1024x1024: {text!r}", EXIT_USAGE)
    rows, cols = int(match.group(1)), int(match.group(2))
    if max(rows, cols) > _MAX_SIDE:
        raise CliError(f"--shape sides must be at most {_MAX_SIDE}: {text!r}", EXIT_USAGE)
    return rows, cols


def demo_data_command(args: argparse.Namespace) -> int:
    shape = parse_shape(args.shape)
    if args.count < 1:
        raise CliError("--count must be at least 1", EXIT_USAGE)
    from pipeline.demodata import write_demo_data

    try:
        paths = write_demo_data(args.directory, count=args.count, shape=shape, seed=args.seed,
                                compression=args.compression)  # fmt: skip
    except OSError as exc:
        raise CliError(f"cannot write demo data to {args.directory}: {exc}", 1) from exc
    for path in paths:
        print(path)
    return 0
