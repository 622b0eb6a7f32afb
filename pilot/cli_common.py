"""What every ``pilot`` sub-command shares: the one-red-line failure, the plant config loaded
from the CONFIG argument or ``PILOT_CONFIG``, and the printer of every problem in a YAML file.
The command modules (``cli``, ``cli_run``, ``cli_train``, ...) import from here, never from each
other's entry points."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pilot_config import ConfigError, default_config_path, load_config

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr and exit ``code`` (2: bad input): never a traceback."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def config_path_or_env(path: Optional[Path]) -> Optional[Path]:
    """The CONFIG argument, else PILOT_CONFIG (deployments), else None (the shipped line)."""
    env = os.environ.get("PILOT_CONFIG", "").strip()
    return path if path is not None else (Path(env) if env else None)


def load_or_fail(path: Optional[Path]):
    path = config_path_or_env(path)
    try:
        config = load_config(path)
        from twin.build import check_signals

        check_signals(config, str(path or default_config_path()))
        return config
    except ConfigError as exc:
        fail_issues(exc, "the configuration")


def fail_issues(exc: ConfigError, what: str) -> None:
    """Print every problem of a YAML file (file, line, path, value, what is allowed) and exit 2."""
    n = len(exc.issues)
    err.print(f"[bold red]error:[/] {n} problem{'s' if n > 1 else ''} in {what}:")
    for issue in exc.issues:
        err.print(f"  {issue}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(2) from None
