"""Plant description: pydantic models of the pilot line and the shipped YAML files."""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from .loader import ConfigError, ConfigIssue, issues_from_validation, read_yaml

_HERE = Path(__file__).resolve().parent


def default_config_path() -> Path:
    """The shipped default line (new extractant, emulsion-flow contactor)."""
    return _HERE / "pilot_line.yaml"


def conventional_config_path() -> Path:
    """The same line with the conventional extractant and mixer-settlers."""
    return _HERE / "pilot_line_conventional.yaml"


def load_config(path: Path | str | None = None):
    """Read and validate a plant YAML file; raises ConfigError listing every problem."""
    from .plant import PilotLineConfig

    return load_yaml(Path(path) if path is not None else default_config_path(), PilotLineConfig)


def load_yaml(path: Path, model):
    """Read ``path`` and validate it as ``model`` (a pydantic model class, or a ``TypeAdapter``
    for anything else, e.g. a list of models); raises ConfigError listing every problem with
    file, line, YAML path, value and what is allowed."""
    data, lines = read_yaml(path)
    if isinstance(model, TypeAdapter):
        validate = model.validate_python
    else:
        if not isinstance(data, dict):
            raise ConfigError([ConfigIssue(str(path), "", 1, "", "the top level must be a mapping of sections")])
        validate = model.model_validate
    try:
        return validate(data)
    except ValidationError as exc:
        raise ConfigError(issues_from_validation(exc, str(path), lines)) from None


def config_schema() -> dict:
    from .plant import PilotLineConfig

    return PilotLineConfig.model_json_schema()


__all__ = [
    "ConfigError",
    "ConfigIssue",
    "config_schema",
    "conventional_config_path",
    "default_config_path",
    "load_config",
    "load_yaml",
]
