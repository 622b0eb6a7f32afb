"""What-if from now: the running loop's estimate of the plant forked into twins, run ahead.

``fork_state(tick, snapshot, modes)`` takes what the loop holds at a tick: every unit's estimate
(x̂ and the diagonal of P, ``TickResult.estimates``), the writable tags' values in the snapshot and
the loops' modes. ``run_whatif(config, state, request)`` builds one twin per case
(``twin.plant.TwinPlant`` from the config) set to that estimate, beside a ``ControlLoop`` whose
estimators start from it, and runs each for ``request.horizon_s`` with the loop in the chosen modes:
the base case (nothing changed) and every proposed case (setpoints written at the fork, loop modes,
malfunctions, MPC weights). Pure: no I/O, no clock; results are plain values (JSON-able).

Estimate → twin (what each estimator knows, nothing more):

| unit | estimate | twin |
|---|---|---|
| ``cell<k>`` | n_salt, n_cath, T, s_ae, f_CE | the cell's states; η_max × f_CE |
| ``cascade`` | θ = ln f_kex, ln f_Dy, ln f_Tb | kex_factor × e^θ₀; stage profile = the steady state x_ss(θ̂, u) of the full cascade (``SteadyMap``); a feed swing r − 1, r = e^(θ₁ − θ₂) (the Dy/Tb ratio) |
| ``carousel`` | capacity θ_k | capacity_factor_k = θ̂_k (the loading front starts from the design carousel) |
| ``TANK.LEVEL`` (measured) | level % | tank volume, at the design composition |

Stated uncertainty: the estimator's own forecast covariance with no measurements,
P ← Φ P Φᵀ + Q(Δt) per control period from P̂ at the fork (``DelayedEkf`` models), mapped to each
KPI by its gradient, σ_KPI = √(g P gᵀ). The MPC's linearisation (``SteadyMap``'s gains G at θ̂)
gives the steady KPI change ΔKPI = G_u Δu a case's cascade setpoint changes should bring.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from pilot_config.base import L_PER_H, StrictModel
from twin.malfunctions import Malfunction, inject
from twin.signals import Quality

from .estimation import DelayedEkf, fd_jacobian
from .estimation_cascade import INPUT_TAGS, MVS
from .loop import CASCADE_MARGIN_PCT, ControlLoop
from .mpc_cascade import CascadeMpcConfig
from .mpc_cell import CellMpcConfig

__all__ = ["ForkState", "WhatIfCase", "WhatIfRequest", "fork_state", "kpis", "run_whatif"]
Mode = Literal["manual", "advisory", "auto"]
KPI_UNITS = {"SX.TB_PURITY": "%", "SX.DY_RECOVERY": "%", "CE": "%", "SALT_TB": "wt%"}
FEED_SWING_MIN = 0.01  # a Dy/Tb ratio estimate within 1 % of design leaves the feed as designed


class WhatIfCase(StrictModel):
    """One proposed change, applied at the fork."""

    name: str = Field("change", min_length=1, max_length=64)
    changes: dict[str, float] = Field(default_factory=dict, description="tag -> value written at the fork")
    modes: dict[str, Mode] = Field(default_factory=dict, description="loop -> mode for this case")
    malfunctions: list[Malfunction] = Field(default_factory=list, description="onset_s from the fork")
    cascade_mpc: dict[str, float] = Field(default_factory=dict, description="CascadeMpcConfig fields")
    cell_mpc: dict[str, float] = Field(default_factory=dict, description="CellMpcConfig fields")


class WhatIfRequest(StrictModel):
    """The base case (nothing changed) and ``cases``, each run for ``horizon_s`` from the fork."""

    horizon_s: float = Field(4 * 3600.0, gt=0, le=7 * 86400, description="plant seconds")
    mode: Mode | None = Field(None, description="every loop in this mode; None: the live loop's modes")
    cases: list[WhatIfCase] = Field(default_factory=list, max_length=8)
    seed: int = Field(1, ge=0)


@dataclass(frozen=True)
class ForkState:
    """What the running loop holds at one tick (plain values: sent to a worker process)."""

    t: float  # plant time of the tick (the live loop's clock)
    estimates: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]]  # unit -> (x̂, diag P)
    setpoints: Mapping[str, float]  # writable tags -> value in the snapshot
    measured: Mapping[str, float]  # the other tags the fork reads (TANK.LEVEL)
    modes: Mapping[str, str]
    alarms: tuple[str, ...] = ()  # ids of the alarms standing live at the fork


def fork_state(tick, snapshot, modes: Mapping[str, str], writable) -> ForkState:
    """The fork of a ``TickResult`` and its snapshot; ``writable``: the writable tag names."""
    def value(tag):
        s = snapshot.get(tag)
        return float(s.value) if s is not None and math.isfinite(s.value) else None

    sp = {t: v for t in writable if (v := value(t)) is not None}
    measured = {t: v for t in ("TANK.LEVEL",) if (v := value(t)) is not None}
    est = {u: (dict(e.x), dict(e.cov_diag)) for u, e in tick.estimates.items()}
    standing = tuple(a.alarm_id for a in tick.active_alarms)
    return ForkState(float(tick.t), est, sp, measured, dict(modes), standing)


def kpis(plant) -> dict[str, float]:
    """The line's KPIs from the twin's signals: Tb purity (%), Dy recovery to the strip liquor (%),
    and per cell the current efficiency (%) and the salt's Tb content (wt%)."""
    s = plant.signal
    q_s, q_r = s("extraction.strip.flow"), s("extraction.raffinate.flow")
    s_dy, r_dy = s("extraction.strip.Dy"), s("extraction.raffinate.Dy")
    out = {"SX.TB_PURITY": 100.0 * s("extraction.tb_purity"),
           "SX.DY_RECOVERY": 100.0 * q_s * s_dy / max(q_s * s_dy + q_r * r_dy, 1e-30)}
    for cell in plant.line.cells:
        out[f"{cell.upper()}.CE"] = 100.0 * s(f"{cell}.current_efficiency")
        out[f"{cell.upper()}.SALT_TB"] = 100.0 * s(f"{cell}.salt_tb_fraction")
    return out


def kpi_unit(name: str) -> str:
    return KPI_UNITS.get(name, KPI_UNITS.get(name.rsplit(".", 1)[-1], ""))


# -- the fork ----------------------------------------------------------------------------------
def _seed_estimators(loop: ControlLoop, state: ForkState) -> None:
    """Every estimator of ``loop`` starts from the live estimate (x̂, P̂)."""
    for u in loop.units:
        if u.name not in state.estimates:
            continue
        x, cov = state.estimates[u.name]
        if isinstance(u.ekf, DelayedEkf):
            names = u.ekf.model.state_names
            u.ekf.x = np.array([x[n] for n in names], dtype=float)
            u.ekf.p = np.diag([max(cov[n], 0.0) for n in names])
        elif hasattr(u.ekf, "theta"):  # the carousel: capacities only
            n = len(u.ekf.theta)
            u.ekf.theta = np.array([x.get(f"col{k + 1}.capacity", 1.0) for k in range(n)])
            u.ekf.p = dataclasses.replace(u.ekf.p, capacity_factor=u.ekf.theta.copy())


def _apply_cells(plant, state: ForkState) -> None:
    for cell in plant.line.cells:
        if cell not in state.estimates:
            continue
        x, _ = state.estimates[cell]
        blk = plant.flowsheet.blocks[cell]
        for name in ("salt_Tb", "cathode_Tb", "temperature", "anode_effect"):
            blk.x[blk.state_index[name]] = x[name]
        blk.p = dataclasses.replace(blk.p, eta_max=blk.p.eta_max * x["ce_factor"])
        blk.refresh(plant.t)


def _apply_cascade(plant, loop: ControlLoop, state: ForkState) -> list[str]:
    """Kex factor, stage profile and feed ratio of the cascade estimate; returns notes."""
    unit = next((u for u in loop.units if u.name == "cascade"), None)
    if unit is None or "cascade" not in state.estimates:
        return []
    model = unit.ekf.model
    theta = unit.ekf.x[:3].copy()
    u = model.inputs(plant.snapshot(), {})
    model.lin = model.map.solve(theta, u)
    blk = plant.flowsheet.blocks[plant.line.extraction]
    m = model.map.m
    blk.x[:m] = _lagged_theta(model, unit.ekf, u)["x"][:m]
    model.map.x = model.lin["x"].copy()  # the MPC's Newton warm start: the steady state at θ̂
    blk.p = dataclasses.replace(blk.p, kex_factor=blk.p.kex_factor * math.exp(theta[0]))
    blk.refresh(plant.t)
    ratio = math.exp(theta[1] - theta[2])
    if abs(ratio - 1.0) > FEED_SWING_MIN:
        inject(plant, Malfunction(kind="feed_swing", target="cascade", severity=ratio - 1.0))
        return [f"cascade feed Dy/Tb ratio x {ratio:.3f} (estimated)"]
    return []


def _lagged_theta(model, ekf: DelayedEkf, u: np.ndarray, iterations: int = 4) -> dict:
    """The steady state whose KPIs are the estimated KPIs ŷ now (the cascade lags behind
    g(θ̂, u)): Gauss-Newton on the full steady map from θ̂,
    θ ← θ + argmin_δ ‖W (G_θ(θ) δ − (ŷ − g(θ, u)))‖, W = 1/σ̂ of each KPI state."""
    k = slice(3, 3 + len(model.lin["y"]))  # the KPI states
    y_hat, sd = ekf.x[k], np.sqrt(np.maximum(np.diag(ekf.p)[k], 1e-12))
    w = 1.0 / sd
    lin = model.lin
    for _ in range(iterations):
        r = w * (y_hat - lin["y"])
        delta, *_ = np.linalg.lstsq(w[:, None] * lin["G"][:, :3], r, rcond=None)
        if np.max(np.abs(delta)) < 1e-3:
            break
        lin = model.map.solve(lin["theta"] + np.clip(delta, -0.5, 0.5), u)
    return lin


def _apply_carousel_and_tank(plant, state: ForkState) -> None:
    if "carousel" in state.estimates:
        x, _ = state.estimates["carousel"]
        blk = plant.flowsheet.blocks[plant.line.adsorption]
        cap = np.array([x.get(f"col{k + 1}.capacity", 1.0) for k in range(plant.line.n_columns)])
        blk.p = dataclasses.replace(blk.p, capacity_factor=cap)
    level = state.measured.get("TANK.LEVEL")
    if level is not None:
        blk = plant.flowsheet.blocks[plant.line.tank]
        n = (len(blk.x) - 1) // 2
        v0, v = blk.x[0], max(level, 0.0) / 100.0 * blk.p.capacity_m3
        blk.x[1:1 + n] *= v / max(v0, 1e-12)
        blk.x[0] = v
        blk.refresh(plant.t)


def _loop_for(config, case: WhatIfCase, modes: Mapping[str, str]) -> ControlLoop:
    cascade = CascadeMpcConfig(**{"margin_pct": CASCADE_MARGIN_PCT, **case.cascade_mpc})
    cell = CellMpcConfig(**case.cell_mpc)
    loop = ControlLoop(config, target="twin", session="standalone", modes={**modes, **case.modes},
                       mpc_deadline_s=None, timing_points=False, cascade_mpc=cascade, cell_mpc=cell)
    return loop


def build_fork(config, state: ForkState, case: WhatIfCase, modes: Mapping[str, str], seed: int = 1):
    """(twin, loop, notes): a twin set to the estimate, the setpoints of the fork and the case's
    changes written, its malfunctions injected (onset from the fork), and a loop seeded with the
    estimate. Raises ValueError naming the tag for a change the twin refuses."""
    from twin.ledger import Ledger
    from twin.plant import TwinPlant

    plant = TwinPlant(config, seed=seed, start="design")
    loop = _loop_for(config, case, modes)
    _seed_estimators(loop, state)
    plant.write({k: v for k, v in state.setpoints.items() if k not in case.changes})
    refused = plant.write(dict(case.changes)).refused
    if refused:
        tag, why = next(iter(refused.items()))
        raise ValueError(f"case {case.name!r}: change {tag}: {why}")
    plant.tags.scan(plant.t)  # the PLC face shows the written setpoints
    _apply_cells(plant, state)
    notes = _apply_cascade(plant, loop, state)
    _apply_carousel_and_tank(plant, state)
    plant.tags.scan(plant.t)  # and the forked states
    plant.ledger = Ledger(plant.line, plant.salt)  # balances from the forked inventory
    for m in case.malfunctions:
        inject(plant, m)
    return plant, loop, notes


def _simulate(plant, loop: ControlLoop, horizon_s: float) -> dict:
    """Run the loop beside the twin; per tick the KPIs and the active alarms."""
    times, series, active, raised = [], {}, [], []
    n = max(1, math.ceil(horizon_s / loop.period - 1e-9))
    reported: set[str] = set()  # tags with a good sample in the fork (an analyser has none at first)
    for k in range(n + 1):
        snap = plant.snapshot()
        reported |= {tag for tag, s in snap.items() if s.quality == Quality.GOOD}
        tick = loop.step(snap, plant.t)
        loop.refused(plant.write(tick.writes))
        times.append(plant.t)
        for name, v in kpis(plant).items():
            series.setdefault(name, []).append(v)
        starting = {a.alarm_id for a in tick.active_alarms if _bad_pv_tag(a.alarm_id) not in (None, *reported)}
        active.append(len(tick.active_alarms) - len(starting))
        raised += [{"t_s": e.t, "id": e.alarm_id, "priority": e.priority} for e in tick.raised
                   if e.alarm_id not in starting]
        if k < n:
            plant.advance(loop.period)
    balance = max(abs(v) for v in plant.mass_balance().values())
    return {"times_s": times, "kpis": series, "active_alarms": active, "alarms_raised": raised,
            "balance_error": balance}


def _bad_pv_tag(alarm_id: str) -> str | None:
    """The tag of a bad-PV alarm (``<TAG>.BADPV``), else None: in a fork such an alarm stands for the
    analysers' first results not being in yet, until the tag has reported once."""
    return alarm_id[: -len(".BADPV")] if alarm_id.endswith(".BADPV") else None


def linear_change(loop: ControlLoop, state: ForkState, case: WhatIfCase) -> dict[str, float]:
    """The steady KPI change the cascade MPC's linearisation predicts for the case's cascade
    setpoint changes: ΔKPI = G_u Δu (G at θ̂; {} when the case changes no cascade setpoint)."""
    unit = next((u for u in loop.units if u.name == "cascade"), None)
    du = {n: case.changes[INPUT_TAGS[n]] - state.setpoints.get(INPUT_TAGS[n], math.nan)
          for n in MVS if INPUT_TAGS[n] in case.changes}
    if unit is None or not du or not all(math.isfinite(v) for v in du.values()):
        return {}
    g = unit.ekf.model.lin["G"][:, 3:]
    dy = g @ np.array([du.get(n, 0.0) * L_PER_H for n in MVS])
    return {"SX.TB_PURITY": float(dy[0]), "SX.DY_RECOVERY": float(dy[1])}


def uncertainty(loop: ControlLoop, plant, horizon_s: float) -> dict[str, list[float]]:
    """σ of each KPI over the horizon from the estimators' forecast covariance (no measurements)."""
    snap = plant.snapshot()
    n = max(1, math.ceil(horizon_s / loop.period - 1e-9))
    out: dict[str, list[float]] = {}
    for u in loop.units:
        if not isinstance(u.ekf, DelayedEkf):
            continue
        m = copy.deepcopy(u.ekf.model)
        x, p = u.ekf.x.copy(), u.ekf.p.copy()
        uu = m.inputs(snap, {})
        grads = _kpi_gradients(m, u.name)
        for k in range(n + 1):
            for name, g in grads.items():
                gx = g(x, uu)
                out.setdefault(name, []).append(float(math.sqrt(max(gx @ p @ gx, 0.0))))
            if k < n:
                x_next, phi = m.predict(x, uu, loop.period)
                p = phi @ p @ phi.T + m.process_noise(x, loop.period)
                x = x_next
    return out


def _kpi_gradients(model, unit: str) -> dict:
    """KPI name -> g(x, u) = ∂KPI/∂x of the estimator's model."""
    if unit == "cascade":
        e = np.eye(len(model.state_names))
        return {"SX.TB_PURITY": lambda x, u: e[3], "SX.DY_RECOVERY": lambda x, u: e[4]}
    tp = model.tp

    def grad(key: str, scale: float):
        return lambda x, u: fd_jacobian(lambda z: np.array([scale * model.derived(z, u)[key]]), x)[0]
    return {f"{tp}.CE": grad("current_efficiency", 100.0), f"{tp}.SALT_TB": grad("salt_tb_wt_pct", 1.0)}


def run_case(config, state: ForkState, case: WhatIfCase, modes: Mapping[str, str], horizon_s: float,
             seed: int = 1, with_sigma: bool = False) -> dict:
    """One case from the fork: its trajectories, alarms and (``with_sigma``) the stated uncertainty."""
    plant, loop, notes = build_fork(config, state, case, modes, seed)
    lin = linear_change(loop, state, case)
    sigma = uncertainty(loop, plant, horizon_s) if with_sigma else {}
    out = _simulate(plant, loop, horizon_s)
    out["new_alarms"] = [a for a in out["alarms_raised"] if a["id"] not in state.alarms]
    return {"name": case.name, "changes": dict(case.changes), "modes": {**modes, **case.modes},
            "malfunctions": [m.model_dump() for m in case.malfunctions], "notes": notes, "linear": lin,
            "sigma": sigma, **out}


def run_whatif(config, state: ForkState, request: WhatIfRequest | Mapping) -> dict:
    """The base case and every proposed case from the fork (see the module docstring)."""
    req = request if isinstance(request, WhatIfRequest) else WhatIfRequest.model_validate(request)
    modes = dict(state.modes)
    if req.mode is not None:
        modes = {loop: req.mode for loop in modes}
    cases = [run_case(config, state, WhatIfCase(name="base"), modes, req.horizon_s, req.seed, with_sigma=True)]
    cases += [run_case(config, state, c, modes, req.horizon_s, req.seed) for c in req.cases]
    names = list(cases[0]["kpis"])
    return {"t_fork": state.t, "horizon_s": req.horizon_s, "period_s": config.control.guard.control_period_s,
            "kpis": names, "units": {n: kpi_unit(n) for n in names},
            "estimate": _estimated_kpis(state), "cases": cases}


def _estimated_kpis(state: ForkState) -> dict[str, float]:
    """The estimators' own KPI estimates at the fork."""
    out = {}
    if "cascade" in state.estimates:
        x = state.estimates["cascade"][0]
        out.update({"SX.TB_PURITY": x["tb_purity_pct"], "SX.DY_RECOVERY": x["dy_recovery_pct"]})
    return out
