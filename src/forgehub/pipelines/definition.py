"""A pipeline definition: parameters and named steps, as a YAML file or a Python object.

.. code-block:: yaml

    name: digits
    params: {epochs: 3}
    steps:
      prepare:
        function: forgehub.demo.digits:prepare_split
        outputs: [train, test]
      train:
        train: digits
        inputs: {dataset: steps.prepare.train}
        args: {epochs: "${params.epochs}"}
      evaluate:
        function: forgehub.demo.digits:evaluate
        inputs: {weights: steps.train, data: steps.prepare.test}

A step is a module training (``train: MODULE``), a batch prediction (``predict: MODULE``), a
command (``command: [argv]``) or a Python function (``function: package.module:name``). Its
inputs are artifacts (``sha256:…``, ``NAME[:TAG]``), another step's output (``steps.NAME``, or
``steps.NAME.OUTPUT`` for one of its named ``outputs``: sub-folders of what it wrote) or a
parameter (``params.NAME``). ``${params.NAME}`` in an argument or a command word is replaced by
the parameter (keeping its type when it is the whole value). Each step may name its own
``compute``, ``storage`` and ``resources``; otherwise the run's choices apply.

:func:`check` validates the whole definition before anything runs (names, references, cycles)
and says which step and field is wrong; :mod:`forgehub.pipelines.runs` checks what needs the
server (modules, artifacts, connections, resources).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgehub.compute import Resources
from forgehub.errors import Invalid

NAME = r"^[a-z][a-z0-9_-]{0,62}$"
PARAM = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")
KINDS = ("train", "predict", "command", "function")


class DefinitionError(Invalid):
    """An invalid definition (422); ``errors`` lists each problem as ``{"loc": [...], "msg":
    ...}``, where ``loc`` names the step and the field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        super().__init__(message, errors=errors)


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str | None = Field(default=None, description="Train this module.")
    predict: str | None = Field(default=None, description="Batch-predict with this module.")
    command: list[str] | None = Field(default=None, description="Run this argv.")
    function: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Call package.module:function(inputs, output_dir, **args).",
    )
    version: str | None = Field(default=None, description="Catalogue version of the module.")
    source: str | None = Field(default=None, description="git+URL@ref, pip:… or wheel:….")
    args: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(
        default_factory=list, description="Named outputs: the sub-folders it writes."
    )
    output: str | None = Field(default=None, description="Name to tag its output with.")
    after: list[str] = Field(default_factory=list, description="Steps to wait for (no data).")
    compute: str | None = None
    storage: str | None = None
    resources: Resources | None = None
    labels: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a step is exactly one of {', '.join(KINDS)} (got {given or 'none'})")
        for name in self.outputs:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"output name {name!r}: lower-case letters, digits, '_', '-'")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def module(self) -> str | None:
        return self.train or self.predict


class Definition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    compute: str | None = Field(default=None, description="Default compute of every step.")
    storage: str | None = Field(default=None, description="Default storage of every step.")
    steps: dict[str, Step] = Field(min_length=1)


def load(text: str | bytes | dict[str, Any]) -> Definition:
    """Parse and check a definition (YAML text, or the dict it holds)."""
    if isinstance(text, dict):
        doc = text
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DefinitionError([{"loc": ["file"], "msg": f"not valid YAML: {exc}"}]) from None
    if not isinstance(doc, dict):
        raise DefinitionError([{"loc": ["file"], "msg": "a pipeline is a mapping (name, steps)"}])
    try:
        d = Definition.model_validate(doc)
    except ValidationError as exc:
        raise DefinitionError(
            [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        ) from None
    check(d)
    return d


def ref(value: str) -> tuple[str, str, str | None] | None:
    """``steps.NAME[.OUTPUT]`` → ("step", NAME, OUTPUT); ``params.NAME`` → ("param", NAME,
    None); anything else is an artifact reference (None)."""
    parts = value.split(".")
    if parts[0] == "steps" and len(parts) in (2, 3):
        return "step", parts[1], parts[2] if len(parts) == 3 else None
    if parts[0] == "params" and len(parts) == 2:
        return "param", parts[1], None
    return None


def upstream(step: Step) -> set[str]:
    """The steps this one waits for: those it reads, and those it is ``after``."""
    out = set(step.after)
    for value in step.inputs.values():
        r = ref(value)
        if r is not None and r[0] == "step":
            out.add(r[1])
    return out


def check(d: Definition) -> None:
    """Names, references, parameters and the graph; raises :class:`DefinitionError`."""
    errors: list[dict[str, Any]] = []
    for name, step in d.steps.items():
        loc = ["steps", name]
        if not re.fullmatch(NAME, name):
            errors.append(
                {"loc": loc, "msg": "a step name is lower-case letters, digits, '_', '-'"}
            )
        for field, value in step.inputs.items():
            r = ref(value)
            if r is None:
                continue
            kind, target, output = r
            if kind == "param" and target not in d.params:
                errors.append({"loc": [*loc, "inputs", field], "msg": f"no parameter {target!r}"})
            elif kind == "step" and target not in d.steps:
                errors.append({"loc": [*loc, "inputs", field], "msg": f"no step {target!r}"})
            elif kind == "step" and output is not None and output not in d.steps[target].outputs:
                errors.append(
                    {
                        "loc": [*loc, "inputs", field],
                        "msg": f"step {target!r} declares no output {output!r} "
                        f"(its outputs: {', '.join(d.steps[target].outputs) or 'none'})",
                    }
                )
        for other in step.after:
            if other not in d.steps:
                errors.append({"loc": [*loc, "after"], "msg": f"no step {other!r}"})
        for where, text in _texts(step):
            for p in PARAM.findall(text):
                if p not in d.params:
                    errors.append({"loc": [*loc, *where], "msg": f"no parameter {p!r}"})
    if not errors:
        cycle = _cycle(d)
        if cycle:
            errors.append(
                {"loc": ["steps", cycle[0]], "msg": "a cycle: " + " → ".join([*cycle, cycle[0]])}
            )
    if errors:
        raise DefinitionError(errors)


def _texts(step: Step) -> list[tuple[list[Any], str]]:
    out: list[tuple[list[Any], str]] = []

    def walk(value: Any, where: list[Any]) -> None:
        if isinstance(value, str):
            out.append((where, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, [*where, k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, [*where, i])

    walk(step.args, ["args"])
    walk(step.command or [], ["command"])
    return out


def _cycle(d: Definition) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for up in sorted(upstream(d.steps[name])):
            if state.get(up) == 1:
                return path[path.index(up) :]
            if up not in state:
                found = visit(up)
                if found:
                    return found
        state[name] = 2
        path.pop()
        return None

    for name in sorted(d.steps):
        if name not in state:
            found = visit(name)
            if found:
                return list(reversed(found))
    return None


def order(d: Definition) -> list[str]:
    """The steps in an order where each comes after what it waits for."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for up in sorted(upstream(d.steps[name])):
            visit(up)
        done.append(name)

    for name in d.steps:
        visit(name)
    return done


def substitute(value: Any, params: dict[str, Any]) -> Any:
    """``${params.NAME}`` replaced: the parameter itself when it is the whole string."""
    if isinstance(value, str):
        whole = PARAM.fullmatch(value)
        if whole:
            return params[whole.group(1)]
        return PARAM.sub(lambda m: str(params[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params) for v in value]
    return value
