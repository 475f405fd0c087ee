"""Pipeline files: parsing, building, and validation that reports every problem with its path."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from pipeline.composite import Pipeline
from pipeline.errors import PipelineFileError
from pipeline.examples import example_names, example_path, example_text
from pipeline.group import StepGroup
from pipeline.loader import load_pipeline_file, load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import REGISTRY, Step, StepContext, register


class LoaderAdd(Step):
    """Adds a and b (and c if given)."""

    name = "loadertest.add"
    input_names = ("a", "b")
    optional_inputs = ("c",)
    output_names = ("out",)
    version = "3"

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        n_bins: Annotated[int, msgspec.Meta(ge=1)] = 10

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        return {"out": inputs["a"] + inputs["b"] + (inputs["c"] or 0)}


class LoaderConst(Step):
    name = "loadertest.const"
    output_names = ("out",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        value: int = 1
        source: str | None = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, LoaderConst.Params)
        return {"out": self.params.value}


@pytest.fixture(autouse=True)
def test_steps() -> Iterator[None]:
    register(LoaderAdd)
    register(LoaderConst)
    yield
    REGISTRY.pop(LoaderAdd.name)
    REGISTRY.pop(LoaderConst.name)


GOOD = """
name: demo
version: "2.1"
sources:
  sample: {required: true}
  dark: {required: false}
steps:
  - id: one
    use: loadertest.const
    params: {value: 1, source: sample}
    outputs: {out: x}
  - id: reduce
    version: "7"
    steps:
      - id: add
        use: loadertest.add
        params: {n_bins: 5}
        inputs: {a: x, b: x, c: dark.frame}
        outputs: {out: y}
  - id: renders
    parallel: true
    max_workers: 2
    steps:
      - {id: p, use: loadertest.add, inputs: {a: y, b: x}, outputs: {out: p}, continue_on_error: true}
      - {id: q, use: loadertest.add, inputs: {a: y, b: y}, outputs: {out: q}, idempotent: false}
"""


def problems_of(text: str) -> dict[str, str]:
    with pytest.raises(PipelineFileError) as info:
        load_pipeline_text(text)
    return {p.path: p.message for p in info.value.problems}


def test_good_file_builds_the_pipeline() -> None:
    spec = load_pipeline_text(GOOD)
    assert (spec.name, spec.version, spec.text) == ("demo", "2.1", GOOD)
    assert spec.sources == {"sample": True, "dark": False}
    root = spec.pipeline
    assert isinstance(root, Pipeline) and [s.id for s in root.steps] == ["one", "reduce", "renders"]
    reduce, renders = root.steps[1], root.steps[2]
    assert isinstance(reduce, Pipeline) and reduce.version == "7"
    add = reduce.steps[0]
    assert isinstance(add, LoaderAdd) and add.params == LoaderAdd.Params(n_bins=5)
    assert add.version == "3"  # the class's version when the file does not set one
    assert isinstance(renders, StepGroup) and renders.parallel and renders.max_workers == 2
    assert renders.steps[0].continue_on_error and not renders.steps[1].idempotent
    assert root.provides == ("x", "y", "p", "q")
    result = ProcessingRunner(spec).run({})
    assert result.plan.missing_required_sources == ["sample"]


def test_json_file_is_accepted(tmp_path: Path) -> None:
    doc = {"name": "j", "steps": [{"id": "c", "use": "loadertest.const", "outputs": {"out": "x"}}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc, indent=1))
    spec = load_pipeline_file(path)
    assert spec.version == "0.0.0"
    assert ProcessingRunner(spec).run({}).values == {"x": 1}


def test_every_problem_is_reported_at_once_with_its_location() -> None:
    text = """
name: bad
sources: {sample: {required: true}}
steps:
  - id: one
    use: loadertest.const
    params: {value: "one", sorce: sample}
    outputs: {out: x, extra: z}
  - id: one
    use: loadertest.nope
  - id: two
    use: loadertest.add
    inputs: {a: x, d: x}
    outputs: {out: y}
  - id: nested
    steps:
      - id: inner
        use: loadertest.add
        params: {n_bins: 0}
        inputs: {a: later, b: never}
        outputs: {out: w}
  - id: late
    use: loadertest.const
    params: {source: dark}
    outputs: {out: later}
"""
    problems = problems_of(text)
    assert problems.keys() >= {
        "steps[0].params.sorce",  # unknown param
        "steps[0].outputs.extra",  # unknown output name
        "steps[1].id",  # duplicate id
        "steps[1].use",  # unknown step
        "steps[2].inputs.d",  # unknown input name
        "steps[0].params.value",  # a bad type, not hidden by the unknown param beside it
        "steps[2].inputs.b",  # missing required input b
        "steps[3].steps[0].params.n_bins",  # invalid value (msgspec's path)
        "steps[3].steps[0].inputs.a",  # used before provided
        "steps[3].steps[0].inputs.b",  # never provided
        "steps[4].params.source",  # undeclared source
    }
    assert "duplicate" in problems["steps[1].id"]
    assert "'b'" in problems["steps[2].inputs.b"]
    assert "before it is provided" in problems["steps[3].steps[0].inputs.a"]
    assert "never provided" in problems["steps[3].steps[0].inputs.b"]
    assert ">= 1" in problems["steps[3].steps[0].params.n_bins"]
    assert "dark" in problems["steps[4].params.source"]


def test_two_missing_inputs_are_two_problems_each_at_its_path() -> None:
    text = """
name: p
steps:
  - {id: a, use: loadertest.const, outputs: {out: x}}
  - {id: b, use: loadertest.add, outputs: {out: y}}
"""
    problems = problems_of(text)
    assert set(problems) == {"steps[1].inputs.a", "steps[1].inputs.b"}
    assert "missing input 'a'" in problems["steps[1].inputs.a"]
    assert "missing input 'b'" in problems["steps[1].inputs.b"]


def test_every_bad_param_is_reported_not_only_the_first() -> None:
    text = """
name: p
sources: {sample: {}}
steps:
  - {id: a, use: loadertest.const, params: {value: abc, source: 3}, outputs: {out: x}}
  - {id: b, use: loadertest.add, params: {n_bins: 0, colour: red}, inputs: {a: x, b: x}, outputs: {out: y}}
"""
    problems = problems_of(text)
    assert set(problems) == {
        "steps[0].params.value", "steps[0].params.source",
        "steps[1].params.n_bins", "steps[1].params.colour",
    }  # fmt: skip
    assert ">= 1" in problems["steps[1].params.n_bins"]


def test_an_unknown_step_hides_nothing_around_it() -> None:
    # Its outputs still count as provided (no false "never provided" downstream), and a
    # misordered input of it is still reported.
    text = """
name: p
steps:
  - {id: a, use: loadertest.nope, inputs: {x: later}, outputs: {out: x}}
  - {id: b, use: loadertest.add, inputs: {a: x, b: x}, outputs: {out: later}}
  - {id: c, use: loadertest.add, inputs: {a: x}, outputs: {out: z}}
"""
    problems = problems_of(text)
    assert set(problems) == {"steps[0].use", "steps[0].inputs.x", "steps[2].inputs.b"}
    assert "before it is provided" in problems["steps[0].inputs.x"]


def test_invalid_param_type_names_msgspec_path() -> None:
    text = "name: p\nsteps:\n  - {id: c, use: loadertest.const, params: {value: abc}, outputs: {out: x}}\n"
    assert problems_of(text) == {"steps[0].params.value": "Expected `int`, got `str`"}


def test_parallel_group_problems() -> None:
    text = """
name: p
steps:
  - id: g
    parallel: true
    steps:
      - {id: a, use: loadertest.const, outputs: {out: x}}
      - {id: b, use: loadertest.const, outputs: {out: x}}
      - {id: c, use: loadertest.add, inputs: {a: x, b: x}, outputs: {out: y}}
"""
    problems = problems_of(text)
    assert "overlapping provides" in problems["steps[0].steps[1]"]
    assert "concurrently" in problems["steps[0].steps[2].inputs.a"]


def test_key_provided_twice_and_unknown_keys() -> None:
    text = """
name: p
colour: red
steps:
  - {id: a, use: loadertest.const, outputs: {out: x}, retries: 3}
  - {id: b, use: loadertest.const, outputs: {out: x}}
"""
    problems = problems_of(text)
    assert "already provided by steps[0].outputs.out" in problems["steps[1].outputs.out"]
    assert "colour" in problems and "steps[0].retries" in problems


def test_optional_source_keys_and_optional_inputs_need_no_provider() -> None:
    text = """
name: p
sources: {dark: {required: false}}
steps:
  - {id: a, use: loadertest.const, outputs: {out: x}}
  - {id: b, use: loadertest.add, inputs: {a: x, b: dark.frame, c: nowhere}, outputs: {out: y}}
"""
    spec = load_pipeline_text(text)
    assert spec.sources == {"dark": False}


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("name: [unclosed", "line", "invalid YAML"),
        ("- just\n- a list\n", "", "mapping"),
        ("name: p\nversion: 1.0\nsteps: []\n", "version", "quote it"),
        ("steps: [{id: a, use: loadertest.const}]", "name", "required"),
        ("name: p\nsteps: [{id: a}]", "steps[0]", "use"),
        ("name: p\nsteps: [{id: a, use: loadertest.const, steps: []}]", "steps[0]", "not both"),
        ("name: p\nsteps: [{id: a.b, use: loadertest.const}]", "steps[0].id", "letters"),
        (
            "name: p\nsources: {s: {required: maybe}}\nsteps: [{id: a, use: loadertest.const}]",
            "sources.s.required",
            "true or false",
        ),
        ('{"name": "p", "steps": [', "line", "invalid YAML"),
    ],
)
def test_structural_problems(text: str, path: str, fragment: str) -> None:
    problems = problems_of(text)
    if path == "line":  # a syntax error is located by line and column
        path = next(p for p in problems if p.startswith("line "))
    assert path in problems, problems
    assert fragment in problems[path]


def test_unknown_step_suggests_a_close_name() -> None:
    text = "name: p\nsteps: [{id: a, use: loadertest.cnst, outputs: {out: x}}]"
    assert "did you mean 'loadertest.const'" in problems_of(text)["steps[0].use"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineFileError, match="cannot read"):
        load_pipeline_file(tmp_path / "missing.yaml")


def test_bundled_examples_load() -> None:
    assert "saxs" in example_names()
    for name in example_names():
        spec = load_pipeline_file(example_path(name))
        assert spec.text == example_text(name)
    with pytest.raises(KeyError):
        example_path("../saxs")
    saxs = load_pipeline_text(example_text("saxs"))
    assert "geometry" in [s.id for s in saxs.pipeline.steps]
    assert example_text("saxs").count("n_bins") == 1


def test_the_documented_example_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pipeline-format.md").read_text()
    text = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = load_pipeline_text(text)
    assert spec.sources == {"sample": True, "dark": False}
    assert [s.id for s in spec.pipeline.steps] == [
        "sample_frame",
        "dark_frame",
        "corrected",
        "reduce",
        "renders",
    ]
