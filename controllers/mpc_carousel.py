"""Carousel decision: feed flow and switch limit so the lag breakthrough never exceeds its limit.

Public API (stable; the loop composes it)::

    CarouselMpc(line_cfg, config: CarouselMpcConfig | None = None)
        .step(estimate: CarouselEstimate, snapshot, t, *, deadline_s=None, applied=None) -> MpcResult
    mv_names = ("ADS.FEED.FLOW_SP" (L/h), "ADS.BT_LIMIT_SP" (%))

Problem. The PLC switches the carousel when the lag outlet Dy+Tb C/C0 reaches ADS.BT_LIMIT_SP
*and* a regenerated column stands by; the offline sequence (wash → elute → regenerate) takes
T_off = 3.3 h. A lag column that breaks through sooner after the previous switch (a fouled
column, θ < ~0.3 at 250 L/h) finds no standby column and its breakthrough runs past the limit
until one is ready. The only handle is the feed flow F (the lag stint lasts ~ its capacity /
(F·c_feed)); throughput should stay as high as possible:

    max F   s.t.  C/C0_lag(t; F) ≤ s·L   for t ≤ t_ready + m,     F_min ≤ F ≤ F_target

with t_ready the time until the first offline column stands by (from the estimator's role
clock), m a margin (``margin_s``), L the breakthrough limit (config ``breakthrough_limit_fraction``)
and s < 1 a safety factor for the model. C/C0_lag(t; F) is the estimator's shadow carousel
(``estimation_carousel``, fitted capacities) run ahead with F held. Breakthrough is monotone in F,
so the problem is 1-D root finding: a first guess from the throughput scaling
F₁ = F_target·t_cross(F_target)/(t_ready + m), then bisection on [F_min, F_target] to
``flow_tolerance_L_per_h``. With a standby column available the constraint cannot bind (the
PLC switches at the limit) and F = F_target. If even F_min breaks through, F_min is proposed and
``predicted['infeasible']`` says so. Why not a QP: the constraint is one sharp, monotone front
whose linearisation is useless a few hours ahead (see docs/estimation_mpc.md); a handful of
forecasts of the nonlinear shadow gives the exact answer.

ADS.BT_LIMIT_SP: the configured limit, clipped to the guard's limits. Switching later would
exceed the spec; switching earlier would regenerate a lag-loaded column sooner without
protecting anything (the offline clock starts at the switch), so the limit is held at the spec:
the lead column is fully loaded when it leaves (the adsorbent used as fully as the spec allows).

Cadence and deadline: solved when the roles or the capacity estimates change, or every
``solve_period_s``; in between the last proposal is repeated (``iterations`` = 0). Each forecast
checks ``deadline_s``; a miss returns a held result (MVs = values in effect) with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from pydantic import Field

from pilot_config.base import StrictModel
from twin import adsorption as ads
from twin.signals import Quality, Sample

from .estimation_carousel import (
    L_PER_H,
    LOADING_ROLES,
    CarouselEstimate,
    ShadowCarousel,
    feed_of,
    forecast,
    shadow_params,
)
from .mpc import MpcResult, log_transition

FLOW, LIMIT = "ADS.FEED.FLOW_SP", "ADS.BT_LIMIT_SP"


class CarouselMpcConfig(StrictModel):
    feed_target_L_per_h: float | None = Field(
        None, gt=0, le=1e4, description="throughput wanted when nothing binds (None: the config's feed flow)")
    margin_s: float = Field(900.0, ge=0, le=86400, description="standby ready this long before the limit")
    safety_fraction: float = Field(0.8, gt=0, le=1, description="plan the lag C/C0 to ≤ this × limit")
    flow_tolerance_L_per_h: float = Field(2.0, gt=0, le=100, description="bisection resolution")
    max_forecasts: int = Field(8, ge=2, le=100, description="forecasts per solve")
    solve_period_s: float = Field(1800.0, gt=0, le=86400, description="re-solve at least this often")
    deadline_s: float = Field(10.0, gt=0, le=3600, description="budget per solve (the carousel's slow cadence)")
    forecast_blocks_s: tuple[float, float] = Field((900.0, 300.0), description="far / near the limit")
    rtol: float = Field(3e-3, gt=0, le=0.1, description="forecast tolerance")
    atol: float = Field(1e-5, gt=0, le=1e-2, description="forecast absolute tolerance (mol/m3)")


def _limits(line_cfg, tag: str) -> tuple[float, float]:
    lo, hi = -np.inf, np.inf
    for t in line_cfg.tags:
        if t.name == tag:
            lo, hi = t.low if t.low is not None else lo, t.high if t.high is not None else hi
    for g in line_cfg.control.guard.limits:
        if g.tag == tag:
            lo = max(lo, g.low_eng) if g.low_eng is not None else lo
            hi = min(hi, g.high_eng) if g.high_eng is not None else hi
    return lo, hi


class CarouselMpc:
    mv_names = (FLOW, LIMIT)
    unit = "adsorption"

    def __init__(self, line_cfg, config: CarouselMpcConfig | None = None):
        self.cfg = c = config or CarouselMpcConfig()
        self.line_cfg = line_cfg
        self.flow_lo, self.flow_hi = _limits(line_cfg, FLOW)
        lim_lo, lim_hi = _limits(line_cfg, LIMIT)
        self.limit_pct = float(np.clip(100.0 * line_cfg.adsorption.breakthrough_limit_fraction, lim_lo, lim_hi))
        target = c.feed_target_L_per_h or line_cfg.feed.flow_L_per_h
        self.target = float(np.clip(target, self.flow_lo, self.flow_hi))
        self.c_feed, self.h_feed = feed_of(line_cfg)
        self._models: dict[int, ShadowCarousel] = {}
        self._last: MpcResult | None = None
        self._key: tuple | None = None
        self._state: str | None = None

    def u_now(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> np.ndarray:
        out = []
        for name, default in ((FLOW, self.target), (LIMIT, self.limit_pct)):
            s = snapshot.get(name)
            seen = s.value if s is not None and s.quality != Quality.BAD and np.isfinite(s.value) else default
            out.append(float(applied.get(name, seen)))
        return np.array(out)

    def step(self, estimate: CarouselEstimate, snapshot: Mapping[str, Sample], t: float, *,
             deadline_s: float | None = None, applied: Mapping[str, float] | None = None) -> MpcResult:
        started = time.perf_counter()
        deadline_s = self.cfg.deadline_s if deadline_s is None else deadline_s
        u_prev = self.u_now(snapshot, applied or {})
        sh = getattr(estimate, "shadow", None)
        if sh is None:
            return self._held(t, u_prev, "no carousel estimate (shadow state missing)", started)
        key = (sh.roles, tuple(round(float(np.log(c)), 2) for c in sh.capacity))
        last = self._last
        if last is not None and not last.held and key == self._key and t - last.t < self.cfg.solve_period_s:
            return MpcResult(t, self.unit, "solved", None, dict(last.mv), last.predicted, last.cost, 0, 0.0,
                             time.perf_counter() - started)
        try:
            res = self._solve(t, sh, u_prev, started, started + deadline_s)
        except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError) as exc:
            res = self._held(t, u_prev, f"forecast failed: {exc}", started)
        if not res.held and res.total_time_s > deadline_s:
            res = self._held(t, u_prev, f"deadline missed: {res.total_time_s * 1e3:.0f} ms > "
                                        f"{deadline_s * 1e3:.0f} ms", started)
        if not res.held:
            self._last, self._key = res, key
        self._state = log_transition(self.unit, self._state, res)
        return res

    def _held(self, t: float, u_prev: np.ndarray, reason: str, started: float) -> MpcResult:
        return MpcResult(t, self.unit, "held", reason, dict(zip(self.mv_names, map(float, u_prev))), {},
                         float("nan"), 0, 0.0, time.perf_counter() - started)

    def _model(self, n_cells: int, theta: tuple[float, ...]):
        if n_cells not in self._models:
            self._models[n_cells] = ShadowCarousel("mpc", shadow_params(self.line_cfg, n_cells))
        p = shadow_params(self.line_cfg, n_cells, len(theta), np.array(theta))
        return self._models[n_cells], p

    def _solve(self, t, sh, u_prev, started, deadline) -> MpcResult:
        c = self.cfg
        ready = min(sh.ready_in_s)
        loading = any(r in LOADING_ROLES for r in sh.roles)
        limit = self.limit_pct / 100.0
        horizon = ready + c.margin_s
        predicted: dict[str, tuple] = {"standby_ready_in_s": (ready,)}
        if ready <= 0.0 or not loading or not np.isfinite(ready):
            return self._done(t, self.target, predicted, 0, started)
        model, p = self._model(sh.n_cells, sh.capacity)
        roles = [r if r in LOADING_ROLES else ads.ROLE_STANDBY for r in sh.roles]
        n_fc, spent = 0, 0.0

        def run(flow):
            nonlocal n_fc, spent
            t0 = time.perf_counter()
            u = model.design_inputs(p, flow * L_PER_H, self.c_feed, self.h_feed, roles=roles)
            fc = forecast(model, p, sh.x.copy(), u, horizon, c.safety_fraction * limit, c.forecast_blocks_s,
                          deadline=deadline, rtol=c.rtol, atol=c.atol)
            n_fc, spent = n_fc + 1, spent + time.perf_counter() - t0
            if not fc.completed:
                raise _Deadline()
            return fc

        try:
            fc = run(self.target)
            best, best_fc = self.target, fc
            if fc.t_cross is not None:
                lo_fc = run(self.flow_lo)
                if lo_fc.t_cross is not None:
                    predicted["infeasible"] = (1.0,)
                    best, best_fc = self.flow_lo, lo_fc
                else:
                    lo, hi = self.flow_lo, self.target
                    guess = float(np.clip(self.target * fc.t_cross / horizon, lo + 1e-6, hi - 1e-6))
                    best, best_fc = lo, lo_fc
                    while hi - lo > c.flow_tolerance_L_per_h and n_fc < c.max_forecasts:
                        f = guess if guess is not None else 0.5 * (lo + hi)
                        guess = None
                        fc_f = run(f)
                        if fc_f.t_cross is None:
                            lo, best, best_fc = f, f, fc_f
                        else:
                            hi = f
        except _Deadline:
            return MpcResult(t, self.unit, "held", f"deadline missed during forecast {n_fc}",
                             dict(zip(self.mv_names, map(float, u_prev))), {}, float("nan"), n_fc, spent,
                             time.perf_counter() - started)
        predicted["time_s"] = best_fc.times
        predicted["lag_breakthrough_pct"] = tuple(100.0 * b for b in best_fc.breakthrough)
        return self._done(t, best, predicted, n_fc, started, spent)

    def _done(self, t, flow, predicted, n_fc, started, spent=0.0) -> MpcResult:
        predicted[FLOW] = (float(flow),)
        predicted[LIMIT] = (self.limit_pct,)
        mv = {FLOW: float(flow), LIMIT: self.limit_pct}
        return MpcResult(t, self.unit, "solved", None, mv, predicted, -float(flow), n_fc, spent,
                         time.perf_counter() - started)


class _Deadline(Exception):
    pass
