"""MPC of the SX cascade: organic and scrub flow to hold Tb purity and Dy recovery.

Model: the reduced cascade of ``estimation_cascade`` — per KPI a first-order lag (mean response
time τ of the linearised full cascade) toward the steady state g(θ̂, u), linearised in the two
MVs at the current steady state (refreshed as θ̂ or the inputs move):

    y = [Tb purity %, Dy recovery %],   u = [organic flow, scrub flow] (L/h; SX.ORG.FLOW_SP,
    SX.SCRUB.FLOW_SP)
    y_{k+1} = e·y_k + (1 − e)·(g₀ + G (u_k − u₀)),   e = exp(−Δ/τ)

Objective: stay near the current design flows (``flow_weight``) with small moves, subject to
soft lower limits purity ≥ min + margin and recovery ≥ min + margin. The estimator's θ̂ (Kex
factor, feed Dy and Tb) carries feed changes and extractant degradation into g₀ and G.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from pydantic import Field

from pilot_config.base import L_PER_H, StrictModel
from twin.signals import Sample

from .estimation import EstimateResult
from .estimation_cascade import INPUT_TAGS, MVS, THETA, CascadeModel
from .mpc import LinearModel, MpcResult, MpcSpec, QpSolver, log_transition, result

OUTPUTS = ("tb_purity_pct", "dy_recovery_pct")


class CascadeMpcConfig(StrictModel):
    step_s: float = Field(600.0, gt=0, le=7200, description="prediction step")
    horizon: int = Field(24, ge=2, le=200, description="prediction steps")
    deadline_s: float = Field(0.05, gt=0, le=60, description="linearise + solve budget per tick")
    tb_purity_min_pct: float = Field(99.5, ge=50, le=100)
    dy_recovery_min_pct: float = Field(98.0, ge=50, le=100)
    margin_pct: float = Field(0.05, ge=0, le=5, description="held above the minima")
    flow_weight: float = Field(1e-3, ge=0, le=1e9, description="per (L/h)² away from the reference flows")
    move_weight: float = Field(1e-2, ge=0, le=1e9, description="per (L/h)² of move")
    min_fraction_of_design: float = Field(0.3, gt=0, le=1)
    max_fraction_of_design: float = Field(3.0, ge=1, le=20)


class CascadeMpc:
    def __init__(self, model: CascadeModel, tags, config: CascadeMpcConfig | None = None):
        self.cfg = c = config or CascadeMpcConfig()
        self._state: str | None = None  # 'solved' | 'held': log transitions only
        self._qp = QpSolver()  # kept across ticks: updated and warm-started
        self.model = model
        self.mv_names = tuple(INPUT_TAGS[n] for n in MVS)
        by_name = {t.name: t for t in tags}
        ii = model.map.ii
        design = np.array([model.u_nominal[ii[n]] / L_PER_H for n in MVS])
        self.u_ref = design
        lo = np.array([by_name[n].low if n in by_name else 0.0 for n in self.mv_names])
        hi = np.array([by_name[n].high if n in by_name else np.inf for n in self.mv_names])
        self.u_min = np.maximum(lo, c.min_fraction_of_design * design)
        self.u_max = np.minimum(hi, c.max_fraction_of_design * design)
        self.rates = np.array([(by_name[n].max_rate_per_s if n in by_name else None) or np.inf
                               for n in self.mv_names])

    def linearise(self, estimate: EstimateResult, u: np.ndarray) -> LinearModel:
        """``u``: the cascade's SI input vector with the MVs in effect."""
        m = self.model
        theta = np.array([estimate.x[n] for n in THETA])
        lin = m.linear(theta, u)
        g0 = m.steady(theta, u, lin)[:2]
        y_now = np.array([estimate.x[n] for n in OUTPUTS])
        gl = lin["G"][:2, 3:] * L_PER_H  # per L/h
        u0 = np.array([u[m.map.ii[n]] / L_PER_H for n in MVS])
        e = np.exp(-self.cfg.step_s / lin["tau"][:2])
        return LinearModel(np.diag(e), (1 - e)[:, None] * gl, (1 - e) * (g0 - y_now - gl @ u0),
                           np.eye(2), np.zeros((2, 2)), y_now, self.cfg.step_s)

    def spec(self, control_period_s: float) -> MpcSpec:
        c = self.cfg
        return MpcSpec(
            horizon=c.horizon, u_min=self.u_min, u_max=self.u_max,
            du_first=np.minimum(self.rates * control_period_s, self.u_max - self.u_min),
            du_max=np.minimum(self.rates * c.step_s, self.u_max - self.u_min),
            y_ref=np.full(2, np.nan), w_y=np.zeros(2), w_du=np.full(2, c.move_weight),
            w_u=np.full(2, c.flow_weight), u_ref=self.u_ref,
            y_min=np.array([c.tb_purity_min_pct, c.dy_recovery_min_pct]) + c.margin_pct,
            y_max=np.full(2, np.inf), rho_lin=1e3, rho_quad=1e4)

    def step(self, estimate: EstimateResult, snapshot: Mapping[str, Sample], t: float, *,
             control_period_s: float = 60.0, applied: Mapping[str, float] | None = None) -> MpcResult:
        started = time.perf_counter()
        u = self.model.inputs(snapshot, applied or {})
        u_prev = np.array([u[self.model.map.ii[n]] / L_PER_H for n in MVS])
        try:
            lin = self.linearise(estimate, u)
            sol = self._qp.solve(lin, self.spec(control_period_s), u_prev, deadline_s=self.cfg.deadline_s,
                                 started=started)
        except (np.linalg.LinAlgError, ValueError, KeyError, RuntimeError) as exc:
            sol = {"status": f"linearisation failed: {exc}"}
        res = result(t, "extraction", self.mv_names, OUTPUTS, sol, u_prev, started, self.cfg.deadline_s)
        self._state = log_transition("extraction", self._state, res)
        return res
