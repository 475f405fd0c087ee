"""Read-only views of pipelines for the dashboard (contract section 10):

- `GET /v1/sessions/{sid}/pipeline` -> `{"name", "version", "yaml_text", "tree"}`: the session's
  pipeline file and its step tree as the file nests it (nested pipelines and parallel groups),
  so a client can draw a run's steps before any event arrives. Each node is `{"id",
  "full_id" (the dotted id used by events and `step_states`), "kind": "step" | "pipeline" |
  "group", "use"?, "parallel"?, "children"?}`.
- `GET /v1/examples` -> `{"examples": [{"name", "yaml_text"}]}`: the bundled example pipelines,
  so a session can be created from one in the browser (`runwire examples` on the CLI).
"""

from __future__ import annotations

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from pipeline.composite import Pipeline
from pipeline.examples import example_names, example_text
from pipeline.group import StepGroup
from pipeline.step import PipelineStep, Step
from service.http.codec import json_response
from service.http.openapi import OperationTable
from service.http.state import service_state
from service.runtime.sources import session_entry

__all__ = ["Example", "ExampleList", "PipelineView", "StepNode", "step_tree", "table"]


class StepNode(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One item of a pipeline: a registered step, a nested pipeline or a step group."""

    id: str
    full_id: str
    kind: str  # "step" | "pipeline" | "group"
    use: str | None = None
    parallel: bool | None = None
    children: list[StepNode] | None = None


class PipelineView(msgspec.Struct, kw_only=True):
    name: str
    version: str
    yaml_text: str
    tree: list[StepNode]


class Example(msgspec.Struct, kw_only=True):
    name: str
    yaml_text: str


class ExampleList(msgspec.Struct, kw_only=True):
    examples: list[Example]


def step_tree(
    steps: list[PipelineStep] | tuple[PipelineStep, ...], prefix: str = ""
) -> list[StepNode]:
    """The nesting of `steps` with dotted ids under `prefix`."""
    nodes = []
    for step in steps:
        full_id = f"{prefix}{step.id}"
        if isinstance(step, StepGroup):
            nodes.append(
                StepNode(
                    id=step.id,
                    full_id=full_id,
                    kind="group",
                    parallel=step.parallel,
                    children=step_tree(step.steps, full_id + "."),
                )
            )
        elif isinstance(step, Pipeline):
            nodes.append(
                StepNode(
                    id=step.id,
                    full_id=full_id,
                    kind="pipeline",
                    children=step_tree(step.steps, full_id + "."),
                )
            )
        else:
            use = step.name if isinstance(step, Step) else type(step).__name__
            nodes.append(StepNode(id=step.id, full_id=full_id, kind="step", use=use))
    return nodes


table = OperationTable("pipelines")


@table.route(
    "GET",
    "/sessions/{sid}/pipeline",
    response=PipelineView,
    errors=("SESSION_NOT_FOUND",),
    path_descriptions={"sid": "session id"},
)
async def session_pipeline(request: Request) -> Response:
    """The session's pipeline file and its step tree (nested pipelines and groups)."""
    entry = session_entry(service_state(request.app).runtime.scheduler, request.path_params["sid"])
    spec = entry.spec
    return json_response(
        PipelineView(
            name=spec.name,
            version=spec.version,
            yaml_text=entry.pipeline_text,
            tree=step_tree(spec.pipeline.steps),
        )
    )


def _examples() -> ExampleList:
    return ExampleList(
        examples=[Example(name=n, yaml_text=example_text(n)) for n in example_names()]
    )


@table.route("GET", "/examples", response=ExampleList)
async def list_examples(request: Request) -> Response:
    """The bundled example pipelines with their YAML (`runwire examples`)."""
    return json_response(await anyio.to_thread.run_sync(_examples))
