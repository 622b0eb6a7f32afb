"""Join unit models by signal name and advance them together, one synchronisation step at a time.

Co-simulation with exact mass transfer between units: within a step [t, t+dt] every input is
held constant; units are advanced in flow order. A unit's outlet ``o`` is integrated inside the
unit into states ``cum_<o>_volume``, ``cum_<o>_<sp>`` and ``cum_<o>_H``; after the upstream
unit has been advanced, the downstream unit receives over the *same* step the average stream

    Q = ΔV/dt,   c_sp = Δn_sp/ΔV,   c_H = Δn_H/ΔV

so that what leaves one unit is exactly what enters the next (Q·c·dt = Δn): element balances
close to the solvers' tolerance, whatever the step.

Each block keeps its integrator across steps (``twin.rosenbrock``: ROS34PW2, a Rosenbrock-W
method whose W and factorisation are reused while the inputs hold; RODAS3 for a unit with its
own structured solve, ``tableau_for``) at the block's rtol, loosened to ``SYNC_RTOL`` where it
is tighter. ``Flowsheet(solver="scipy")`` steps every block with ``twin.integrate.advance``
instead (scipy's BDF/LSODA at the block's own tolerances): the reference the Rosenbrock path is
checked against (``tests/test_solvers.py``: KPIs within 0.01 pp; over a plant day of the shipped
line the largest difference was 0.0011 pp, a cell's current efficiency, purities within 2e-5 pp).

Signals are addressed as ``<block>.<output>`` or ``<block>.<input>`` (SI units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pilot_config.base import SPECIES

from .integrate import advance
from .rosenbrock import Rosenbrock, tableau_for
from .unit import Unit, index_map

#: rtol of the kept integrators where a block asks for less (the cascade's 1e-7 of the BDF path)
SYNC_RTOL = 1e-5
SOLVERS = ("rosenbrock", "scipy")


@dataclass
class Block:
    """One unit instance inside the flowsheet: the model, its parameters and its live state."""

    name: str
    unit: Unit
    p: Any
    x: np.ndarray
    u: np.ndarray = field(default=None)  # type: ignore[assignment]
    y: np.ndarray = field(default=None)  # type: ignore[assignment]
    rtol: float = 1e-7
    atol: float = 1e-10

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=float)
        if self.u is None:
            self.u = np.zeros(len(self.unit.input_names))
        self.state_index = index_map(self.unit.state_names)
        self.input_index = index_map(self.unit.input_names)
        self.output_index = index_map(self.unit.output_names)
        self.outlets = tuple(
            n[len("cum_") : -len("_volume")]
            for n in self.unit.state_names
            if n.startswith("cum_") and n.endswith("_volume")
        )
        self.stepper = Rosenbrock(self.unit, tableau_for(self.unit), rtol=max(self.rtol, SYNC_RTOL),
                                  atol=self.atol)
        self.refresh()

    def advance(self, t0: float, t1: float, solver: str = "rosenbrock") -> None:
        """Move the state from t0 to t1 with the inputs held."""
        if solver == "scipy":
            self.x = advance(self.unit, t0, t1, self.x, self.u, self.p, rtol=self.rtol, atol=self.atol,
                             first_step=t1 - t0)
            return
        if self.stepper.unit is not self.unit:  # a malfunction wrapped (or unwrapped) the model
            self.stepper.unit = self.unit
            self.stepper.forget()
        self.x = self.stepper.advance(t0, t1, self.x, self.u, self.p)

    def refresh(self, t: float = 0.0) -> None:
        self.y = self.unit.outputs(t, self.x, self.u, self.p)

    def set_input(self, name: str, value: float) -> None:
        self.u[self.input_index[name]] = value

    def cumulative(self, outlet: str, species: tuple[str, ...]) -> np.ndarray:
        """[volume, n_sp..., n_H] integrated so far through ``outlet``."""
        names = (f"cum_{outlet}_volume", *(f"cum_{outlet}_{s}" for s in species), f"cum_{outlet}_H")
        return np.array([self.x[self.state_index[n]] if n in self.state_index else 0.0 for n in names])


@dataclass(frozen=True)
class Connection:
    """Stream from ``src`` block's outlet into ``dst`` block's inputs ``<prefix>_flow/_<sp>/_H``."""

    src: str
    outlet: str
    dst: str
    prefix: str


class Flowsheet:
    def __init__(self, blocks: list[Block], connections: list[Connection], species=SPECIES,
                 solver: str = "rosenbrock"):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
        self.solver = solver
        self.blocks = {b.name: b for b in blocks}
        self.order = [b.name for b in blocks]
        self.species = species
        self.connections = connections
        self._into: dict[str, list[Connection]] = {}
        for c in connections:
            for end, port in ((c.src, c.outlet), (c.dst, None)):
                if end not in self.blocks:
                    raise ValueError(f"connection {c}: no block named {end!r}")
            if c.outlet not in self.blocks[c.src].outlets:
                raise ValueError(f"connection {c}: block {c.src!r} has no outlet {c.outlet!r}")
            if self.order.index(c.src) >= self.order.index(c.dst):
                raise ValueError(f"connection {c}: blocks must be listed in flow order")
            self._into.setdefault(c.dst, []).append(c)
        self.t = 0.0
        self.t_of = dict.fromkeys(self.order, 0.0)  # each block's own time (``step(names=...)``)

    # -- signals -------------------------------------------------------------------------
    def signal_names(self) -> list[str]:
        out = []
        for b in self.blocks.values():
            out += [f"{b.name}.{n}" for n in b.unit.output_names]
            out += [f"{b.name}.{n}" for n in b.unit.input_names]
        return out

    def resolve(self, signal: str, prefer_input: bool = False) -> tuple[Block, str, int]:
        """signal -> (block, 'y' | 'u', index); where a unit has an input and an output of the
        same name, the output (what the plant does) wins unless ``prefer_input``."""
        head, _, rest = signal.partition(".")
        block = self.blocks.get(head)
        if block is not None:
            order = (("u", block.input_index), ("y", block.output_index))
            for kind, index in order if prefer_input else order[::-1]:
                if rest in index:
                    return block, kind, index[rest]
        raise KeyError(signal)

    def get(self, signal: str) -> float:
        block, kind, i = self.resolve(signal)
        return float(block.y[i] if kind == "y" else block.u[i])

    # -- time ----------------------------------------------------------------------------
    def joined(self) -> tuple[str, ...]:
        """The blocks joined by streams, in flow order (they must step together)."""
        ends = {c.src for c in self.connections} | {c.dst for c in self.connections}
        return tuple(n for n in self.order if n in ends)

    def step(self, dt: float, names: tuple[str, ...] | None = None) -> None:
        """Advance every block (or only ``names``, each from its own time) by ``dt``. Blocks
        joined by a stream must step together: their exchange is exact only over a common step."""
        if names is None:
            self._step(self.order, self.t, dt)
            self.t += dt
            self.t_of = dict.fromkeys(self.order, self.t)
            return
        inside = set(names)
        for c in self.connections:
            if (c.src in inside) != (c.dst in inside):
                raise ValueError(f"connection {c.src}.{c.outlet} -> {c.dst}: both blocks must step together")
        t0 = {self.t_of[n] for n in names}
        if len(t0) > 1:
            raise ValueError(f"blocks {', '.join(names)} are not at one time: {sorted(t0)}")
        start = t0.pop() if t0 else self.t
        self._step([n for n in self.order if n in inside], start, dt)
        for n in names:
            self.t_of[n] = start + dt
        self.t = max(self.t_of.values())

    def _step(self, order, t0: float, dt: float) -> None:
        t1 = t0 + dt
        before: dict[tuple[str, str], np.ndarray] = {}
        for name in order:
            block = self.blocks[name]
            for c in self._into.get(name, ()):
                delta = self.blocks[c.src].cumulative(c.outlet, self.species) - before[(c.src, c.outlet)]
                vol = delta[0]
                conc = delta[1:] / vol if vol > 1e-15 else np.zeros(len(delta) - 1)
                block.set_input(f"{c.prefix}_flow", vol / dt)
                for sp, value in zip((*self.species, "H"), conc):
                    key = f"{c.prefix}_{sp}"
                    if key in block.input_index:
                        block.set_input(key, value)
            for outlet in block.outlets:
                before[(name, outlet)] = block.cumulative(outlet, self.species)
            if block.x.size:
                block.advance(t0, t1, self.solver)
            block.refresh(t1)

    def inventory(self) -> np.ndarray:
        """mol of each species held in all blocks."""
        total = np.zeros(len(self.species))
        for b in self.blocks.values():
            inv = getattr(b.unit, "inventory", None)
            if inv is not None:
                total += inv(b.x, b.p)
        return total
