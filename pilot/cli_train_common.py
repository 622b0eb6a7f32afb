"""What the ``pilot train`` commands share: the config and scenario-folder options, speeds and
durations, and finding a scenario (one red line and exit code 2 for a wrong one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import fail as _fail
from .durations import duration_or_fail

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="plant YAML file (default: the shipped pilot_line.yaml)", show_default=False)]


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        v = float(text.rstrip("x"))
    except ValueError:
        v = -1.0
    if not 0.5 <= v <= 100:
        _fail(f"--speed must be 0.5..100 or max; got {text!r}")
    return v


def _duration(text: str) -> float:
    return duration_or_fail(text, _fail)


ScenarioDirOpt = Annotated[list[Path] | None, typer.Option(
    "--scenario-dir", help="a trainer's own folder of scenarios and trainee scripts, searched before the "
    "shipped ones (repeatable; also PILOT_SCENARIO_DIRS, folders separated by ':')", metavar="DIR",
    show_default=False)]


def _scenario_dirs(extra: list[Path] | None = None) -> list[Path]:
    """The trainer's folders: ``--scenario-dir`` in order, then ``PILOT_SCENARIO_DIRS``."""
    import os

    env = [Path(p) for p in os.environ.get("PILOT_SCENARIO_DIRS", "").split(os.pathsep) if p.strip()]
    for d in extra or []:
        if not d.is_dir():
            _fail(f"--scenario-dir {d}: no such folder")
    for d in env:
        if not d.is_dir():
            _fail(f"PILOT_SCENARIO_DIRS: no such folder {d}")
    return list(extra or []) + env


def _scenario(name: str, dirs: list[Path] | None = None):
    from pilot.training.scenario import load_scenario, scenario_names
    from pilot_config import ConfigError

    from .cli_common import fail_issues

    dirs = _scenario_dirs(dirs)
    try:
        return load_scenario(name, dirs)
    except FileNotFoundError:
        _fail(f"no scenario {name!r}: give a YAML file or one of {', '.join(scenario_names(dirs))}")
    except ConfigError as exc:
        fail_issues(exc, f"scenario {name}")
