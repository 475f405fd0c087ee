"""Pipeline files (YAML or JSON, contract section 2): parse, validate everything, build.

Validation happens before anything runs and reports every problem at once, each with its
location (`steps[2].inputs.b`, `steps[3].steps[0].params.n_bins`), in one `PipelineFileError`:
structure and types, unknown step names, params (decoded with msgspec into the step's `Params`
Struct; unknown fields rejected), unknown input/output names and missing inputs, duplicate ids,
a key required but never provided (optional inputs excepted, and keys `<ref>.*` of optional
sources), a key used before it is provided (this is how a cycle shows up in an ordered file),
a key provided twice, overlapping provides inside a parallel group, and a `source` param naming a
source not declared under `sources:`.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from . import steps as _builtin_steps  # noqa: F401 - importing it fills the registry
from .composite import Pipeline, PipelineSpec
from .errors import PipelineFileError, Problem
from .group import StepGroup
from .plugins import load_plugins
from .step import REGISTRY, PipelineStep, Step

__all__ = ["PipelineSpec", "load_pipeline_file", "load_pipeline_text"]

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
_TOP_KEYS = {"name", "version", "description", "sources", "steps"}
_LEAF_KEYS = {"id", "use", "params", "inputs", "outputs", "idempotent", "continue_on_error",
              "version", "description"}  # fmt: skip
_NESTED_KEYS = {"id", "steps", "parallel", "max_workers", "idempotent", "continue_on_error",
                "version", "description"}  # fmt: skip
_MSGSPEC_PATH = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)

# Steps of installed distributions (entry points `runwire.steps`) validate like built-ins.
load_plugins()


@dataclass
class _Item:
    """One validated item of a `steps:` list, before the step objects are built."""

    path: str
    id: str
    kind: str  # leaf | pipeline | group | unknown (a leaf whose `use` names no step)
    step: Step | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    outputs: dict[str, str] = field(default_factory=dict)
    children: list[_Item] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def load_pipeline_file(path: str | Path) -> PipelineSpec:
    """Load and validate a pipeline file. Raises `PipelineFileError` (also for an unreadable
    file) listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineFileError([Problem("", f"cannot read {path}: {exc}")]) from exc
    return load_pipeline_text(text, filename=str(path))


def load_pipeline_text(text: str, *, filename: str = "<pipeline>") -> PipelineSpec:
    """Parse and validate pipeline text (YAML, or JSON). Raises `PipelineFileError`."""
    doc = _parse(text, filename)
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise PipelineFileError(
            [Problem("", "a pipeline file must be a mapping with name and steps")]
        )
    for key in sorted(set(doc) - _TOP_KEYS, key=str):
        problems.append(
            Problem(str(key), f"unknown key (expected one of {', '.join(sorted(_TOP_KEYS))})")
        )
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(Problem("name", "required: a non-empty string"))
        name = "pipeline"
    version = _version(doc.get("version", "0.0.0"), "version", problems) or "0.0.0"
    sources = _sources(doc.get("sources"), problems)
    steps = doc.get("steps")
    items: list[_Item] = []
    if not isinstance(steps, list) or not steps:
        problems.append(Problem("steps", "required: a non-empty list of steps"))
    else:
        items = _items(steps, "steps", sources, problems)
        _check_flow(items, sources, problems)
    if problems:
        raise PipelineFileError(problems)
    root = Pipeline(name, [_build(item) for item in items], version=version, name=name)
    return PipelineSpec(name=name, version=version, pipeline=root, sources=sources, text=text)


def _parse(text: str, filename: str) -> Any:
    if filename.endswith(".json") or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if filename.endswith(".json"):
                raise PipelineFileError(
                    [Problem(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}")]
                ) from exc
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise PipelineFileError([Problem(where, f"invalid YAML in {filename}: {reason}")]) from exc


def _version(value: Any, path: str, problems: list[Problem]) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    problems.append(Problem(path, f'must be a string, got {value!r} (quote it: "1.0")'))
    return None


def _sources(value: Any, problems: list[Problem]) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(Problem("sources", "must be a mapping ref -> {required: true|false}"))
        return {}
    out: dict[str, bool] = {}
    for ref, options in value.items():
        path = f"sources.{ref}"
        if not isinstance(ref, str) or not _ID.match(ref):
            problems.append(Problem(path, "a source ref is letters, digits, '_' or '-'"))
            continue
        if options is None:
            options = {}
        if not isinstance(options, dict):
            problems.append(Problem(path, "must be a mapping like {required: true}"))
            continue
        for key in options:
            if key not in ("required", "description"):
                problems.append(Problem(f"{path}.{key}", "unknown key (expected required)"))
        required = options.get("required", True)
        if not isinstance(required, bool):
            problems.append(Problem(f"{path}.required", "must be true or false"))
            required = True
        out[ref] = required
    return out


def _items(
    steps: list[Any], where: str, sources: dict[str, bool], problems: list[Problem]
) -> list[_Item]:
    items: list[_Item] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(steps):
        path = f"{where}[{index}]"
        if not isinstance(raw, dict):
            problems.append(Problem(path, "a step must be a mapping with id and use (or steps)"))
            continue
        step_id = raw.get("id")
        if not isinstance(step_id, str) or not _ID.match(step_id):
            problems.append(
                Problem(f"{path}.id", f"required: letters, digits, '_' or '-' (got {step_id!r})")
            )
            step_id = f"#{index}"
        elif step_id in seen:
            problems.append(
                Problem(f"{path}.id", f"duplicate step id {step_id!r} (also {seen[step_id]})")
            )
        else:
            seen[step_id] = path
        if "use" in raw and "steps" in raw:
            problems.append(
                Problem(
                    path, "a step has either use (a step) or steps (a nested pipeline), not both"
                )
            )
        elif "use" in raw:
            items.append(_leaf(raw, path, step_id, sources, problems))
        elif "steps" in raw:
            items.append(_nested(raw, path, step_id, sources, problems))
        else:
            problems.append(
                Problem(path, "a step needs use (a registered step) or steps (a nested pipeline)")
            )
    return items


def _common(raw: dict[str, Any], path: str, problems: list[Problem]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("idempotent", "continue_on_error"):
        if key in raw:
            if isinstance(raw[key], bool):
                options[key] = raw[key]
            else:
                problems.append(Problem(f"{path}.{key}", "must be true or false"))
    if "version" in raw:
        version = _version(raw["version"], f"{path}.version", problems)
        if version is not None:
            options["version"] = version
    return options


def _leaf(
    raw: dict[str, Any], path: str, step_id: str, sources: dict[str, bool], problems: list[Problem]
) -> _Item:
    for key in sorted(set(raw) - _LEAF_KEYS, key=str):
        problems.append(
            Problem(
                f"{path}.{key}", f"unknown key (expected one of {', '.join(sorted(_LEAF_KEYS))})"
            )
        )
    options = _common(raw, path, problems)
    use = raw.get("use")
    cls = REGISTRY.get(use) if isinstance(use, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(use), list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else " (`runwire steps` lists them)"
        problems.append(Problem(f"{path}.use", f"unknown step {use!r}{hint}"))
        # Still check its params' shape and follow its inputs and outputs through the flow, so
        # the problems around it are reported too and its consumers are not falsely flagged
        # "never provided".
        if raw.get("params") is not None and not isinstance(raw.get("params"), dict):
            problems.append(Problem(f"{path}.params", "must be a mapping of parameters"))
        inputs = _mapping(raw.get("inputs"), f"{path}.inputs", None, "input", str(use), problems)
        outputs = _mapping(
            raw.get("outputs"), f"{path}.outputs", None, "output", str(use), problems
        )
        # Whether its inputs are optional is unknown: only misordering is reported for them.
        return _Item(path, step_id, "unknown", inputs=inputs, optional=frozenset(inputs),
                     outputs=outputs, options=options)  # fmt: skip
    known_inputs = (*cls.input_names, *cls.optional_inputs)
    inputs = _mapping(
        raw.get("inputs"), f"{path}.inputs", known_inputs, "input", cls.name, problems
    )
    raw_inputs = raw.get("inputs") or {}
    for name in cls.input_names:
        # An input mapped to a bad key was reported above; only a truly absent one is "missing".
        if isinstance(raw_inputs, dict) and name not in raw_inputs:
            # One problem per input, each at its own path: `steps[3].inputs.a`, `.inputs.b`.
            problems.append(
                Problem(f"{path}.inputs.{name}", f"missing input {name!r} of step {cls.name!r}")
            )
    outputs = _mapping(
        raw.get("outputs"), f"{path}.outputs", cls.output_names, "output", cls.name, problems
    )
    params = _params(cls, raw.get("params"), f"{path}.params", sources, problems)
    item = _Item(path, step_id, "leaf", inputs=inputs, optional=frozenset(cls.optional_inputs),
                 outputs=outputs, options=options)  # fmt: skip
    if params is not None:
        try:
            item.step = cls(step_id, params, inputs, outputs, **options)
        except Exception as exc:  # a step's own constructor check
            problems.append(Problem(path, f"invalid step: {exc}"))
    return item


def _mapping(
    value: Any,
    path: str,
    known: tuple[str, ...] | None,
    what: str,
    step_name: str,
    problems: list[Problem],
) -> dict[str, str]:
    """`value` as name -> context key; `known` None accepts any name (an unknown step's)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(Problem(path, f"must be a mapping {what} name -> context key"))
        return {}
    out: dict[str, str] = {}
    for name, key in value.items():
        if known is not None and name not in known:
            listed = ", ".join(known) or "none"
            problems.append(
                Problem(
                    f"{path}.{name}",
                    f"unknown {what} {name!r} of step {step_name!r} ({what}s: {listed})",
                )
            )
        elif not isinstance(key, str) or not key:
            problems.append(Problem(f"{path}.{name}", "must be a context key (a non-empty string)"))
        else:
            out[name] = key
    return out


def _params(
    cls: type[Step], value: Any, path: str, sources: dict[str, bool], problems: list[Problem]
) -> msgspec.Struct | None:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(Problem(path, "must be a mapping of parameters"))
        return None
    fields = {f.encode_name for f in msgspec.structs.fields(cls.Params)}
    unknown = [k for k in value if k not in fields]
    for key in unknown:
        listed = ", ".join(sorted(fields)) or "none"
        problems.append(
            Problem(
                f"{path}.{key}", f"unknown parameter of step {cls.name!r} (parameters: {listed})"
            )
        )
    if (
        "source" in fields
        and isinstance(value.get("source"), str)
        and value["source"] not in sources
    ):
        declared = ", ".join(sorted(sources)) or "none"
        problems.append(
            Problem(
                f"{path}.source",
                f"source {value['source']!r} is not declared under sources: (declared: {declared})",
            )
        )
    # Each parameter is checked on its own first: converting the whole Struct stops at the
    # first bad field, and that would hide the others.
    bad = False
    for f in msgspec.structs.fields(cls.Params):
        if f.encode_name not in value:
            if f.required:
                problems.append(
                    Problem(f"{path}.{f.encode_name}", f"required parameter of step {cls.name!r}")
                )
                bad = True
            continue
        try:
            msgspec.convert(value[f.encode_name], f.type)
        except msgspec.ValidationError as exc:
            _validation_problem(exc, f"{path}.{f.encode_name}", problems)
            bad = True
    if unknown or bad:
        return None
    try:
        return msgspec.convert(value, cls.Params)
    except msgspec.ValidationError as exc:  # a check across fields (the Struct's __post_init__)
        _validation_problem(exc, path, problems)
        return None


def _validation_problem(exc: msgspec.ValidationError, path: str, problems: list[Problem]) -> None:
    """A msgspec error as a Problem; its `$...` location is appended to `path`."""
    match = _MSGSPEC_PATH.match(str(exc))
    if match:
        problems.append(Problem(path + match.group(2), match.group(1)))
    else:
        problems.append(Problem(path, str(exc)))


def _nested(
    raw: dict[str, Any], path: str, step_id: str, sources: dict[str, bool], problems: list[Problem]
) -> _Item:
    for key in sorted(set(raw) - _NESTED_KEYS, key=str):
        problems.append(
            Problem(
                f"{path}.{key}",
                f"unknown key for a nested pipeline (expected one of {', '.join(sorted(_NESTED_KEYS))})",
            )
        )
    options = _common(raw, path, problems)
    parallel = raw.get("parallel", False)
    if not isinstance(parallel, bool):
        problems.append(Problem(f"{path}.parallel", "must be true or false"))
        parallel = False
    workers = raw.get("max_workers")
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            problems.append(Problem(f"{path}.max_workers", "must be a positive integer"))
        else:
            options["max_workers"] = workers
    steps = raw.get("steps")
    kind = "group" if "parallel" in raw or "max_workers" in raw else "pipeline"
    item = _Item(path, step_id, kind, options=options)
    item.options["parallel"] = parallel
    if not isinstance(steps, list) or not steps:
        problems.append(Problem(f"{path}.steps", "must be a non-empty list of steps"))
    else:
        item.children = _items(steps, f"{path}.steps", sources, problems)
    return item


def _check_flow(items: list[_Item], sources: dict[str, bool], problems: list[Problem]) -> None:
    """Every required key is provided earlier, once; parallel siblings do not feed each other."""
    everywhere: dict[str, str] = {}
    _all_provides(items, everywhere)
    optional_refs = {ref for ref, required in sources.items() if not required}
    _flow(items, {}, everywhere, optional_refs, problems, group_siblings={})


def _all_provides(items: list[_Item], out: dict[str, str]) -> None:
    for item in items:
        for name, key in item.outputs.items():
            out.setdefault(key, f"{item.path}.outputs.{name}")
        _all_provides(item.children, out)


def _flow(
    items: list[_Item],
    available: dict[str, str],
    everywhere: dict[str, str],
    optional_refs: set[str],
    problems: list[Problem],
    group_siblings: dict[str, str],
) -> None:
    for item in items:
        if item.kind in ("leaf", "unknown"):
            for name, key in item.inputs.items():
                if key in available:
                    continue
                where = f"{item.path}.inputs.{name}"
                if key in group_siblings:
                    problems.append(
                        Problem(
                            where,
                            f"key {key!r} is provided by {group_siblings[key]}, which runs concurrently in the same parallel group",
                        )
                    )
                elif key in everywhere:
                    problems.append(
                        Problem(
                            where,
                            f"key {key!r} is used before it is provided (by {everywhere[key]}): a cycle or a misordering",
                        )
                    )
                elif name in item.optional or key.split(".", 1)[0] in optional_refs:
                    continue
                else:
                    problems.append(Problem(where, f"key {key!r} is required but never provided"))
            for name, key in item.outputs.items():
                if key in available:
                    problems.append(
                        Problem(
                            f"{item.path}.outputs.{name}",
                            f"key {key!r} is already provided by {available[key]}",
                        )
                    )
                else:
                    available[key] = f"{item.path}.outputs.{name}"
        elif item.kind == "group" and item.options.get("parallel"):
            before = dict(available)
            merged: dict[str, str] = {}
            sibling_keys: dict[str, str] = {}
            _all_provides(item.children, sibling_keys)
            for child in item.children:
                own: dict[str, str] = {}
                _all_provides([child], own)
                others = {k: v for k, v in sibling_keys.items() if k not in own}
                scope = dict(before)
                _flow(
                    [child],
                    scope,
                    everywhere,
                    optional_refs,
                    problems,
                    {**group_siblings, **others},
                )
                for key, where in scope.items():
                    if key in before:
                        continue
                    if key in merged:
                        problems.append(
                            Problem(
                                child.path,
                                f"key {key!r} is also provided by {merged[key]} in the same parallel group (overlapping provides)",
                            )
                        )
                    else:
                        merged[key] = where
            available.update(merged)
        else:
            _flow(item.children, available, everywhere, optional_refs, problems, group_siblings)


def _build(item: _Item) -> PipelineStep:
    if item.kind == "leaf":
        assert item.step is not None
        return item.step
    kids = [_build(child) for child in item.children]
    common = {k: v for k, v in item.options.items() if k in ("idempotent", "continue_on_error")}
    if item.kind == "group":
        return StepGroup(
            item.id, kids, parallel=item.options["parallel"],
            max_workers=item.options.get("max_workers"), version=item.options.get("version", "0"), **common,
        )  # fmt: skip
    return Pipeline(item.id, kids, version=item.options.get("version", "0.0.0"), **common)
