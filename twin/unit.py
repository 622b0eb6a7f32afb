"""The contract every unit model of the twin fulfils.

A unit model is a *pure* description of dynamics in the style of python-control:

    dx/dt = f(t, x, u, p)        (derivatives)
    y     = g(t, x, u, p)        (outputs)

- ``x``, ``u``, ``y`` are 1-D float arrays whose entries are named by ``state_names``,
  ``input_names`` and ``output_names``; names are mapped to indices once, at build time.
- ``p`` is the unit's *numeric* parameter object (a frozen dataclass of floats / arrays built
  from its pydantic config by ``params_from_config``). Passing it at call time lets faults and
  malfunctions change a parameter (``dataclasses.replace``) without rebuilding the unit.
- SI units inside (see ``pilot_config.base``).
- Mass bookkeeping: a unit that holds species reports ``inventory(x, p)`` in mol per species
  (in the order of the line's ``species``, the config's list; ``SPECIES`` by default), and
  integrates each outlet stream into states named ``cum_<outlet>_<species>`` (mol) so that what
  leaves one unit over a step is exactly what the next unit receives. Inlets are
  zero-order-held over a step, so inflow is ``Q·c·dt``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Unit(Protocol):
    name: str
    state_names: tuple[str, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: Any) -> np.ndarray: ...

    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: Any) -> np.ndarray: ...


def index_map(names: tuple[str, ...]) -> dict[str, int]:
    """Name -> array index, checked for duplicates (built once per unit)."""
    out = {n: i for i, n in enumerate(names)}
    if len(out) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate signal names: {dupes}")
    return out


def named(names: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    """Array -> {name: float}; for edges (logging, tests), never for the hot path."""
    return {n: float(v) for n, v in zip(names, values, strict=True)}
