"""Load a plant YAML file into a validated ``PilotLineConfig``, or explain every error at once.

Each error names the file, the YAML path (``extraction.stages.scrub``), the line, the value given
and what is allowed, so a config author can fix them all in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    path: str
    line: int | None
    value: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        shown = f" (got {self.value})" if self.value else ""
        return f"{where}: {self.path or '<top>'}: {self.message}{shown}"


class ConfigError(ValueError):
    """A config file could not be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _line_index(node: yaml.Node, path: tuple = ()) -> Iterator[tuple[tuple, int]]:
    """Walk a composed YAML tree, yielding (path, 1-based line) for every mapping key / item."""
    yield path, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            yield (*path, key), key_node.start_mark.line + 1
            yield from _line_index(value_node, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _line_index(item, (*path, i))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML, returning (data, {path: line}); syntax errors become a ConfigError."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(name, "", None, "", "file not found")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(name, "", None, "", f"cannot read: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(name, "", line, "", f"invalid YAML: {problem}")]) from None
    lines = dict(_line_index(node)) if node is not None else {}
    return data, lines


def issues_from_validation(
    exc: ValidationError, file: str, lines: dict[tuple, int]
) -> list[ConfigIssue]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic adds the union tag to the location of discriminated unions; keep YAML keys only
        yaml_loc = tuple(p for p in loc if (*loc[: loc.index(p)], p) in lines or isinstance(p, int))
        line = None
        for k in range(len(loc), -1, -1):
            if loc[:k] in lines:
                line = lines[loc[:k]]
                break
        value = "" if err["type"] == "missing" else _short(err.get("input"))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `pilot config schema` lists the allowed ones)"
        path = ".".join(str(p) for p in (yaml_loc or loc))
        out.append(ConfigIssue(file, path, line, value, msg))
    return out
