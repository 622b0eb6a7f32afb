"""The cascade's Tb product to the cells: lumped salt preparation and the TbCl3 store.

Salt preparation (oxalate precipitation, calcination, chlorination) is one first-order hold-up
n_h (mol Tb) fed at ṅ_in, the Tb of the cascade's Tb product stream over the step:

    dn_h/dt = ṅ_in − n_h/τ,    to the store  Y·n_h/τ,    lost  (1 − Y)·n_h/τ

with Y the product of the three step yields. ṅ_in is held over a synchronisation step, so the
step is solved exactly:  n_h(t+Δt) = n_h(t)·e^(−Δt/τ) + ṅ_in·τ·(1 − e^(−Δt/τ)); what leaves the
hold-up over the step is n_h(t) + ṅ_in·Δt − n_h(t+Δt) (mass conserved to round-off).

The store holds two pools, Tb from the cascade and Tb of the initial (bought-in) stock, well
mixed: a draw D takes each pool pro rata. The cells' make-up asks for ṅ_req,k per cell; the
store grants  g = min(1, n_store/(Σ ṅ_req,k·Δt))  of every request. An empty store stops the
make-up, and says so (an event); below ``low_store_TbCl3_kg`` it reports low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .electrolysis import M_TBCL3


@dataclass(frozen=True)
class SaltPrepParams:
    tau: float  # s
    yield_: float
    holdup0: float  # mol Tb
    stock0: float  # mol Tb
    low: float  # mol Tb


def params_from_config(cfg) -> SaltPrepParams:
    return SaltPrepParams(tau=cfg.residence_time_h * 3600.0, yield_=cfg.overall_yield,
                          holdup0=cfg.initial_holdup_TbCl3_kg / M_TBCL3,
                          stock0=cfg.initial_store_TbCl3_kg / M_TBCL3, low=cfg.low_store_TbCl3_kg / M_TBCL3)


def holdup_step(n_h: float, rate_in: float, dt: float, tau: float) -> tuple[float, float]:
    """(hold-up after the step, mol that left the hold-up over it), exact for constant ṅ_in."""
    decay = math.exp(-dt / tau)
    n_new = n_h * decay + rate_in * tau * (1.0 - decay)
    return n_new, n_h + rate_in * dt - n_new


@dataclass
class SaltRoute:
    """Live state of the route: hold-up, store pools and what passed (mol Tb)."""

    p: SaltPrepParams
    holdup: float = 0.0
    store_cascade: float = 0.0
    store_stock: float = 0.0
    into_store: float = 0.0  # from salt preparation
    lost: float = 0.0  # salt-preparation losses
    drawn_cascade: float = 0.0
    drawn_stock: float = 0.0
    draw_rate: float = 0.0  # mol/s granted over the last step
    state: str = "ok"  # ok | low | empty

    def __post_init__(self) -> None:
        self.holdup, self.store_stock = self.p.holdup0, self.p.stock0
        self._asked: dict[str, float] = {}
        self._given: dict[str, float] = {}

    @property
    def store(self) -> float:
        return self.store_cascade + self.store_stock

    def feed(self, tb_mol: float, dt: float) -> None:
        """Advance salt preparation over a step that received ``tb_mol`` of product Tb."""
        self.holdup, out = holdup_step(self.holdup, tb_mol / dt, dt, self.p.tau)
        good = self.p.yield_ * out
        self.store_cascade += good
        self.into_store += good
        self.lost += out - good

    def grant(self, requested_mol: float) -> float:
        """Fraction of the requested draw the store can give; books the draw pro rata."""
        if requested_mol <= 0.0:
            return 1.0
        g = min(1.0, self.store / requested_mol)
        draw = g * requested_mol
        share = self.store_cascade / self.store if self.store > 0 else 0.0
        self.store_cascade -= share * draw
        self.store_stock -= (1.0 - share) * draw
        self.store_cascade, self.store_stock = max(self.store_cascade, 0.0), max(self.store_stock, 0.0)
        self.drawn_cascade += share * draw
        self.drawn_stock += (1.0 - share) * draw
        return g

    def supply(self, blocks, cells, dt: float) -> str | None:
        """Limit the cells' ``salt_feed_rate`` over the coming step to what the store holds.

        What the make-up sequence last wrote is the request; the cell's input becomes the granted
        rate. Returns the new store status when it changed (``low`` / ``empty`` / ``ok``)."""
        for name in cells:
            u = blocks[name].u[blocks[name].input_index["salt_feed_rate"]]
            if u != self._given.get(name):
                self._asked[name] = float(u)
        asked = sum(self._asked[n] for n in cells) * dt
        g = self.grant(asked)
        for name in cells:
            self._given[name] = g * self._asked[name]
            blocks[name].set_input("salt_feed_rate", self._given[name])
        self.draw_rate = g * asked / dt
        new = self.status()
        changed, self.state = new != self.state, new
        return new if changed else None

    def rates(self) -> tuple[float, float]:
        """(requested, granted) make-up of all cells over the last step, mol/s."""
        return sum(self._asked.values()), sum(self._given.values())

    def status(self) -> str:
        return "empty" if self.store <= 1e-12 else "low" if self.store < self.p.low else "ok"

    def days_left(self) -> float | None:
        return self.store / self.draw_rate / 86400.0 if self.draw_rate > 0 else None
