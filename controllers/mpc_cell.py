"""MPC of one electrolysis cell: current, salt feed and heater from the twin's cell model.

Model: the cell's equations (``twin.electrolysis`` via ``estimation_cell.CellModel``) linearised
at the EKF estimate (including its current-efficiency factor) over the reduced state
(salt Tb n_s, temperature T); the cathode Tb and the anode-effect state are held.

    MVs  u = [current A, salt feed g Tb/h, heater kW]        (tags ``<P>.CURRENT_SP``,
          ``<P>.SALT_FEED_SP``, ``<P>.HEATER_SP``; the last two are proposed actuator tags)
    CVs  y = [salt Tb wt% → target ± band,  temperature degC → setpoint, window ∓ margin,
              g = i_a − α·i_crit (A/cm2) ≤ 0]       (anode current density below α of critical)

The current is drawn toward its configured setpoint (production); the salt feed is free, so
salt content is held mainly by the feed and, where that saturates, by the current.
Limits come from the tags (low/high, max_rate_per_s) and the cell config (max current,
feeder capacity, heater power).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from pydantic import Field, field_validator

from pilot_config.base import ZERO_CELSIUS_K, StrictModel
from twin import electrolysis as elec
from twin.signals import Sample

from .estimation import EstimateResult, fd_jacobian
from .estimation_cell import G_PER_H_PER_MOL_S, CellModel
from .mpc import LinearModel, MpcResult, MpcSpec, QpSolver, log_transition, result, zoh

_Y = {n: i for i, n in enumerate(elec.OUTPUT_NAMES)}
OUTPUTS = ("salt_tb_wt_pct", "temperature_C", "anode_excess_A_per_cm2")


class CellMpcConfig(StrictModel):
    step_s: float = Field(600.0, gt=0, le=7200, description="prediction step")
    horizon: int = Field(18, ge=2, le=200, description="prediction steps")
    deadline_s: float = Field(0.05, gt=0, le=60, description="linearise + solve budget per tick")
    salt_band_wt_pct: float = Field(0.3, gt=0, le=5, description="soft band around the salt target")
    anode_margin_fraction: float = Field(0.85, gt=0, le=1, description="α: i_a ≤ α·i_crit")
    temperature_margin_C: float = Field(20.0, ge=0, le=200, description="inside the config window")
    salt_weight: float = Field(400.0, ge=0, le=1e9, description="per (wt%)²")
    temperature_weight: float = Field(0.01, ge=0, le=1e9, description="per degC²")
    current_weight: float = Field(2.5e-3, ge=0, le=1e9, description="per A² away from the current setpoint")
    move_weights: tuple[float, float, float] = Field(
        (1e-3, 1e-3, 1e-2), description="per unit² of Δu: current A, salt feed g/h, heater kW")

    @field_validator("move_weights")
    @classmethod
    def _non_negative(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not 0 <= w <= 1e9 for w in v):
            raise ValueError(f"move_weights must lie in [0, 1e9], got {v}")
        return v


class CellMpc:
    def __init__(self, cell_cfg, tags, config: CellMpcConfig | None = None, tag_prefix: str | None = None):
        self.cfg = config or CellMpcConfig()
        self._state: str | None = None  # 'solved' | 'held': log transitions only
        self._qp = QpSolver()  # kept across ticks: updated and warm-started
        self.cell_cfg = cell_cfg
        self.model = CellModel(cell_cfg.name, elec.params_from_config(cell_cfg), tag_prefix)
        tp = self.tp = self.model.tp
        self.mv_names = (f"{tp}.CURRENT_SP", f"{tp}.SALT_FEED_SP", f"{tp}.HEATER_SP")
        by_name = {t.name: t for t in tags}
        cur = by_name.get(f"{tp}.CURRENT_SP")
        i_hi = min(cell_cfg.max_current_A, cur.high if cur else np.inf)
        feed_hi = cell_cfg.salt_feed.max_rate_TbCl3_kg_per_h * elec.M_TB / elec.M_TBCL3 * 1e6  # g Tb/h
        self.u_min = np.array([max(cur.low if cur else 0.0, 0.0), 0.0, 0.0])
        self.u_max = np.array([i_hi, feed_hi, self.model.p.heater_max * 1e-3])
        rate = cur.max_rate_per_s if cur and cur.max_rate_per_s else np.inf
        self.rates = np.array([rate, np.inf, np.inf])  # per second

    def u_now(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> np.ndarray:
        """MVs in effect: ``applied`` (by MV name) or else what the snapshot shows."""
        u = self.model.inputs(snapshot, applied)
        return np.array([applied.get(self.mv_names[0], u[0]),
                         applied.get(self.mv_names[1], u[2] * G_PER_H_PER_MOL_S),
                         applied.get(self.mv_names[2], u[1] * 1e-3)])

    def _si(self, u: np.ndarray) -> np.ndarray:
        """MVs (A, g/h, kW) -> the twin's cell inputs (A, W, mol/s, K)."""
        return np.array([u[0], u[2] * 1e3, u[1] / G_PER_H_PER_MOL_S, self.model.p.t_amb])

    def linearise(self, z_hat: np.ndarray, u0: np.ndarray) -> LinearModel:
        m, alpha = self.model, self.cfg.anode_margin_fraction

        def z_of(x2):
            z = z_hat.copy()
            z[0], z[2] = x2
            return z

        def f(v):
            return m.rates(z_of(v[:2]), self._si(v[2:]))[[0, 2]]

        def g(v):
            y = m.cell.outputs(0.0, m.full(z_of(v[:2])), self._si(v[2:]), m.params(float(z_hat[4])))
            excess = (y[_Y["anode_current_density"]] - alpha * y[_Y["critical_current_density"]]) * 1e-4
            return np.array([100.0 * y[_Y["salt_tb_fraction"]], y[_Y["temperature"]] - ZERO_CELSIUS_K, excess])

        v0 = np.concatenate([z_hat[[0, 2]], u0])
        jf, jg = fd_jacobian(f, v0), fd_jacobian(g, v0)
        a, b = jf[:, :2], jf[:, 2:]
        ad, bd, cd = zoh(a, b, f(v0) - b @ u0, self.cfg.step_s)
        cy, dy = jg[:, :2], jg[:, 2:]
        return LinearModel(ad, bd, cd, cy, dy, g(v0) - dy @ u0, self.cfg.step_s)

    def spec(self, snapshot: Mapping[str, Sample], control_period_s: float) -> MpcSpec:
        c, cc = self.cfg, self.cell_cfg
        sp = snapshot.get(f"{self.tp}.SALT_TB_SP")
        salt_target = sp.value if sp is not None else 100.0 * elec.cell_terms(
            self.model.cell.initial_state(self.model.p), np.zeros(4), self.model.p).w_salt
        tsp = snapshot.get(f"{self.tp}.TEMP_SP")
        t_target = tsp.value if tsp is not None else cc.temperature_setpoint_C
        return MpcSpec(
            horizon=c.horizon, u_min=self.u_min, u_max=self.u_max,
            du_first=np.minimum(self.rates * control_period_s, self.u_max - self.u_min),
            du_max=np.minimum(self.rates * c.step_s, self.u_max - self.u_min),
            y_ref=np.array([salt_target, t_target, np.nan]),
            w_y=np.array([c.salt_weight, c.temperature_weight, 0.0]),
            w_du=np.array(c.move_weights), w_u=np.array([c.current_weight, 0.0, 0.0]),
            u_ref=np.array([cc.current_setpoint_A, 0.0, 0.0]),
            y_min=np.array([salt_target - c.salt_band_wt_pct, cc.temperature_min_C + c.temperature_margin_C,
                            -np.inf]),
            y_max=np.array([salt_target + c.salt_band_wt_pct, cc.temperature_max_C - c.temperature_margin_C,
                            0.0]))

    def step(self, estimate: EstimateResult, snapshot: Mapping[str, Sample], t: float, *,
             control_period_s: float = 60.0, applied: Mapping[str, float] | None = None) -> MpcResult:
        started = time.perf_counter()
        u_prev = self.u_now(snapshot, applied or {})
        try:
            z_hat = np.array([estimate.x[n] for n in self.model.state_names])
            lin = self.linearise(z_hat, np.clip(u_prev, self.u_min, self.u_max))
            sol = self._qp.solve(lin, self.spec(snapshot, control_period_s), u_prev,
                                 deadline_s=self.cfg.deadline_s, started=started)
        except (np.linalg.LinAlgError, ValueError, KeyError) as exc:
            sol = {"status": f"linearisation failed: {exc}"}
        res = result(t, self.model.unit, self.mv_names, OUTPUTS, sol, u_prev, started, self.cfg.deadline_s)
        self._state = log_transition(self.model.unit, self._state, res)
        return res
