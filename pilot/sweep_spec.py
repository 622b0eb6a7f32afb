"""The sweep file of ``pilot sweep``: which scenarios to run, each a small, hashable task.

A sweep file (YAML) names a plant config and one design over dotted paths into it::

    config: pilot_line.yaml        # relative to the sweep file; default: the shipped line
    until: 1h                      # plant time per scenario (the CLI's --until overrides)
    control: auto                  # off | advisory | auto (the CLI's --control overrides)
    grid:                          # every combination (full factorial) ...
      extraction.organic_flow_L_per_h: [30, 33, 36]
      control: [off, auto]         # the loop mode is a factor like any field
    lhs:                           # ... or a Latin hypercube (scipy.stats.qmc.LatinHypercube)
      samples: 8
      seed: 1
      fields: {extraction.organic_flow_L_per_h: [30, 36]}   # [low, high], uniform
    scenarios:                     # ... or a list, each with its own overrides
      - {name: base}
      - {name: fouled, set: {feed.flow_L_per_h: 260}, malfunctions: [{kind: adsorbent_fouling,
         target: col1, severity: 0.5}]}
    malfunctions: []               # twin.malfunctions specs applied to every scenario

Each override is validated by applying it to the config and validating the whole config with
pydantic: a wrong path or value is one line naming the sweep file, the field and what is allowed.
A ``Scenario`` holds only the config text and the overrides (no model objects): the twin and loop
are built from it on the worker, and ``Scenario.key`` (SHA-256 of those inputs) names its result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pilot_config import default_config_path
from pilot_config.plant import PilotLineConfig
from twin.malfunctions import Malfunction

from .durations import parse_duration

MODES = ("off", "advisory", "auto")


def _mode(value):
    """YAML 1.1 reads a bare ``off`` as False: the loop mode ``off``."""
    return "off" if value is False else value


class SweepError(ValueError):
    """A sweep file's problem, as one line: file, field, what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lhs(_Strict):
    samples: int = Field(ge=2, le=10_000)
    seed: int = Field(0, ge=0)
    fields: dict[str, tuple[float, float]] = Field(min_length=1)


class ListedScenario(_Strict):
    name: str = Field(min_length=1, max_length=80)
    set: dict[str, Any] = {}
    control: Literal["off", "advisory", "auto"] | None = None
    malfunctions: list[Malfunction] = []

    _off = field_validator("control", mode="before")(_mode)


class SweepFile(_Strict):
    config: str | None = None
    until: str = "1h"
    control: Literal["off", "advisory", "auto"] = "auto"
    seed: int | None = Field(None, ge=0)
    grid: dict[str, list[Any]] | None = None
    lhs: Lhs | None = None
    scenarios: list[ListedScenario] | None = None
    malfunctions: list[Malfunction] = []

    _off = field_validator("control", mode="before")(_mode)

    @model_validator(mode="after")
    def _one_design(self) -> "SweepFile":
        given = [k for k in ("grid", "lhs", "scenarios") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, lhs, scenarios (got {', '.join(given) or 'none'})")
        return self


class Scenario(BaseModel):
    """One run's inputs: everything the worker needs, nothing built."""

    model_config = ConfigDict(frozen=True)
    name: str
    config_text: str
    overrides: dict[str, Any]
    until_s: float
    control: str
    seed: int | None = None
    malfunctions: tuple[dict, ...] = ()

    @property
    def key(self) -> str:
        blob = json.dumps([self.config_text, self.overrides, self.until_s, self.control, self.seed,
                           list(self.malfunctions)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def inputs(self) -> dict[str, Any]:
        """The scenario's varied inputs, as table columns."""
        return {**self.overrides, "control": self.control,
                "malfunctions": ";".join(f"{m['kind']}@{m['target']}" for m in self.malfunctions)}


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of the config mapping with each ``a.b.0.c: value`` set; KeyError names the bad part."""
    data = json.loads(json.dumps(data))
    for path, value in overrides.items():
        node, parts = data, path.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise KeyError(f"{'.'.join(parts[:i]) or 'the config'} is a list of {len(node)}: "
                                   f"use an index 0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the config"
                allowed = ", ".join(sorted(node)) if isinstance(node, dict) else "nothing (not a section)"
                raise KeyError(f"no field {part!r} in {where}; allowed: {allowed}")
            if last:
                node[part] = value
            else:
                node = node[part]
    return data


def config_value(config_text: str, path: str) -> Any:
    """The value at a dotted path of the config (with its defaults): what a scenario leaves as is."""
    node: Any = build_config(config_text, {}).model_dump()
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def build_config(config_text: str, overrides: dict[str, Any]) -> PilotLineConfig:
    """The plant config of a scenario (on the worker: from the text and the overrides)."""
    return PilotLineConfig.model_validate(apply_overrides(yaml.safe_load(config_text), overrides))


def _check(file: str, config_text: str, where: str, overrides: dict[str, Any]) -> None:
    try:
        build_config(config_text, overrides)
    except KeyError as exc:
        raise SweepError(f"{file}: {where}: {exc.args[0]}") from None
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"])
        raise SweepError(f"{file}: {where}: {field} = {e.get('input')!r}: {e['msg']}") from None


def _design(spec: SweepFile) -> list[tuple[str, dict[str, Any], str | None, list[Malfunction]]]:
    if spec.grid:
        keys = list(spec.grid)
        out = []
        for values in itertools.product(*spec.grid.values()):
            point = dict(zip(keys, values))
            mode = _mode(point.pop("control", None))
            name = ", ".join(f"{k}={_mode(v) if k == 'control' else v}" for k, v in zip(keys, values))
            out.append((name, point, mode, []))
        return out
    if spec.lhs:
        from scipy.stats import qmc

        keys = list(spec.lhs.fields)
        lo = [spec.lhs.fields[k][0] for k in keys]
        hi = [spec.lhs.fields[k][1] for k in keys]
        unit = qmc.LatinHypercube(d=len(keys), seed=spec.lhs.seed).random(spec.lhs.samples)
        pts = qmc.scale(unit, lo, hi) if len(keys) else unit
        return [(f"lhs{i}", {k: float(v) for k, v in zip(keys, row)}, None, []) for i, row in enumerate(pts)]
    return [(s.name, dict(s.set), s.control, list(s.malfunctions)) for s in spec.scenarios]


def load_sweep(path: Path, *, until: str | None = None, control: str | None = None) -> list[Scenario]:
    """Read and check a sweep file; every scenario's config validated. Raises SweepError."""
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = SweepFile.model_validate(raw if raw is not None else {})
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{file}: cannot read: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"]) or "the top level"
        raise SweepError(f"{file}: {field}: {e['msg'].removeprefix('Value error, ')}") from None
    if control is not None and control not in MODES:
        raise SweepError(f"--control must be off, advisory or auto (got {control!r})")
    cfg_path = (path.parent / spec.config) if spec.config else default_config_path()
    try:
        config_text = cfg_path.read_text(encoding="utf-8")
        until_s = parse_duration(until or spec.until)
    except OSError as exc:
        raise SweepError(f"{file}: config: cannot read {cfg_path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SweepError(f"{file}: until: {exc}") from None
    out = []
    for name, point, mode, faults in _design(spec):
        mode = control or mode or spec.control
        if mode not in MODES:
            raise SweepError(f"{file}: scenario {name!r}: control must be off, advisory or auto (got {mode!r})")
        _check(file, config_text, f"scenario {name!r}", point)
        out.append(Scenario(name=name, config_text=config_text, overrides=point, until_s=until_s, control=mode,
                            seed=spec.seed,
                            malfunctions=tuple(m.model_dump() for m in [*spec.malfunctions, *faults])))
    return out
