"""Carousel estimator: loading front and adsorbent capacity of every column.

Public API (stable; the loop composes it)::

    CarouselEstimator(line_cfg, config: CarouselEstimatorConfig | None = None, *, start="design")
        .step(snapshot, applied, t) -> CarouselEstimate        # an EstimateResult + .shadow
        .fork() -> CarouselEstimator                            # independent copy (what-if runs)
    ShadowCarousel(name, p)                                     # the twin's column model, Dy+Tb only
    shadow_params(line_cfg, n_cells) -> AdsorptionParams
    forecast(model, p, x, u, horizon_s, limit, blocks_s, deadline=None, rtol=3e-3, atol=1e-5)
        -> Forecast

Shadow model. The twin's ``AdsorptionCarousel`` (same equations, same RODAS3 solver, see
``twin.adsorption``) restricted to the two species that load (Dy, Tb; the other six hold < 1 %
of the sites at the feed) and ``n_cells`` = 20 (effective Péclet 2N = 40 against 80: the
breakthrough of the shipped column comes ~1 % earlier). Per tick it is advanced over
[t_prev, t] with the roles and the feed flow the snapshot at t shows (ADS.COLk.ROLE, ADS.FEED.FLOW;
``applied['ADS.FEED.FLOW_SP']`` if the sensor is BAD), the feed composition of the config and
capacity factors θ_k (q_max,k = θ_k·q_max). Offline roles are not simulated: a column entering
elution (1 M acid: K ÷ 10⁶) is reset to clean adsorbent; wash/regenerate/standby carry no flow.

Capacity θ_k: nothing about θ_k is observable before the front reaches the column outlet (the
failed EKF of the previous session). After every reset the estimator records the column's
inlet (flow, Dy, Tb; the feed when lead, the shadow's lead outlet when lag). When an outlet
sample (ADS.COLk.OUT.Dy/Tb, at its *sample* time) or the shadow's own prediction shows
breakthrough (C/C0 ≥ ``fit_threshold``), θ_k is fitted by re-simulation — a 1-D search:

    θ̂_k = argmin_θ Σ_s Σ_{Dy,Tb} ((c_sim(t_s; θ) − c_meas,s)/σ_s)²,

evaluated for a grid of candidates at once (the candidates are parallel columns of one
``ShadowCarousel``, all fed the recorded inlet over ``fit_block_s`` blocks), refined once on a
finer grid around the best, then a parabola in ln θ. The variance of ln θ̂ is 2/SSE''. The
fitted column's *state* at t is taken from the re-simulation (no linear shift of a sharp front);
if it is now the lead, the lag behind it is re-simulated with the corrected inlet too.
Fits run only on new informative samples and at most every ``fit_interval_s`` per column, so
ordinary ticks cost one shadow step (~1 ms).
Samples: BAD → dropped; UNCERTAIN → σ·√``uncertain_variance_factor``; a sample already seen
(same source time) is skipped. σ = the tag's noise_sd ⊕ ``model_sd_fraction``·c_feed.

Time to breakthrough: a copy of the shadow is run ahead (roles and feed held, blocks of
``forecast_block_s``) until the lag outlet Dy+Tb C/C0 reaches ADS.BT_LIMIT_SP; the crossing is
interpolated within the block. Re-forecast every ``forecast_period_s``, on a role change, a
feed-flow change > 2 % and after a fit; in between the crossing time is carried. Beyond ``forecast_horizon_s`` the
horizon is published.

Published: ``ADS.COLk.LOADING.EST`` (%, HREE sites used of the column's capacity θ_k·q_max, the
twin's ``colk.loading_fraction``), ``ADS.COLk.CAPACITY.EST`` (θ_k), ``ADS.LAG.TIME_TO_BT.EST`` (s).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from pilot_config.base import (
    HREE,
    MOL_PER_L,
    MOLAR_MASS_G_PER_MOL,
    SPECIES,
    StrictModel,
)
from twin import adsorption as ads
from twin.integrate import advance
from twin.signals import Quality, Sample

from .estimation import EstimateResult

L_PER_H = 1e-3 / 3600.0
LOADING_ROLES = (ads.ROLE_LEAD, ads.ROLE_LAG)


class CarouselEstimatorConfig(StrictModel):
    n_cells: int = Field(20, ge=4, le=200, description="cells per column of the shadow model")
    rtol: float = Field(1e-3, gt=0, le=0.1, description="shadow integration tolerance")
    fit_threshold: float = Field(0.005, gt=0, le=0.5, description="outlet C/C0 that triggers a fit")
    fit_interval_s: float = Field(900.0, ge=0, le=86400, description="min time between fits of a column")
    fit_block_s: float = Field(300.0, gt=0, le=7200, description="inlet blocks near the sample window")
    fit_coarse_block_s: float = Field(3600.0, gt=0, le=86400, description="inlet blocks before it")
    fit_fine_window_s: float = Field(3 * 3600.0, gt=0, le=86400, description="window of fine blocks before now")
    fit_upper: float = Field(0.9, gt=0, le=1, description="no more fits once the outlet C/C0 exceeds this")
    max_fits: int = Field(3, ge=1, le=1000, description="fits per loading cycle of a column")
    fit_shrinks: int = Field(1, ge=0, le=10, description="bracket-shrinking rounds before the final one")
    fit_candidates: int = Field(6, ge=3, le=25, description="candidates per grid round")
    capacity_bounds: tuple[float, float] = Field((0.05, 1.5), description="search range of θ")
    prior_ln_capacity_sd: float = Field(1.0, gt=0, le=10, description="sd of ln θ before a fit (weak prior)")
    model_sd_fraction: float = Field(0.01, ge=0, le=1, description="model error, fraction of c_feed")
    uncertain_variance_factor: float = Field(10.0, ge=1, le=1e6, description="R multiplier, UNCERTAIN")
    fit_atol: float = Field(1e-6, gt=0, le=1e-2, description="re-simulation absolute tolerance (mol/m3)")
    forecast_rtol: float = Field(3e-3, gt=0, le=0.1, description="forecast integration tolerance")
    forecast_atol: float = Field(1e-5, gt=0, le=1e-2, description="forecast absolute tolerance (mol/m3)")
    forecast_period_s: float = Field(4 * 3600.0, gt=0, le=86400,
                                     description="re-forecast period (also on role, flow, limit changes and fits)")
    forecast_horizon_s: float = Field(16 * 3600.0, gt=0, le=7 * 86400, description="forecast horizon")
    forecast_block_s: float = Field(1800.0, gt=0, le=86400, description="forecast block far from the limit")
    forecast_fine_block_s: float = Field(300.0, gt=0, le=86400, description="block once C/C0 > limit/10")
    history_s: float = Field(7200.0, gt=0, le=86400, description="kept shadow outlet history")


# -- the shadow model -----------------------------------------------------------------------
class ShadowCarousel(ads.AdsorptionCarousel):
    """The twin's ``AdsorptionCarousel`` over the HREE only (with ``shadow_params``)."""

    def __init__(self, name: str, p: ads.AdsorptionParams, species: tuple[str, ...] = HREE):
        super().__init__(name, p, species)


def shadow_params(line_cfg, n_cells: int, n_columns: int | None = None,
                  capacity: np.ndarray | None = None) -> ads.AdsorptionParams:
    """The twin's carousel parameters on ``n_cells`` cells, HREE only; ``n_columns`` parallel
    columns (the fit's candidates) with ``capacity`` factors if given."""
    cfg = line_cfg.adsorption
    col = cfg.column.model_copy(update={"n_cells": max(n_cells, 10)})
    p = ads.params_from_config(cfg.model_copy(update={"column": col}))
    idx = [SPECIES.index(s) for s in HREE]
    n = n_columns or p.n_columns
    cap = np.ones(n) if capacity is None else np.asarray(capacity, dtype=float)
    return dataclasses.replace(
        p, n_cells=n_cells, n_columns=n, q_max=p.q_max[idx], log_k_ref=p.log_k_ref[idx],
        proton_exponent=p.proton_exponent[idx], k_ldf=p.k_ldf[idx], capacity_factor=cap,
        dispersion_factor=np.ones(n), dp_factor=np.ones(n))


def feed_of(line_cfg) -> tuple[np.ndarray, float]:
    """Feed Dy, Tb (mol/m3) and H+ (mol/m3) from the config."""
    f = line_cfg.feed
    return (np.array([f.composition_mg_per_L[s] / MOLAR_MASS_G_PER_MOL[s] for s in HREE]),
            f.acidity_mol_per_L * MOL_PER_L)


@dataclass(frozen=True)
class Forecast:
    t_cross: float | None  # s after the start when the lag C/C0 reaches the limit (None: not within)
    times: tuple[float, ...]  # block ends, s after the start
    breakthrough: tuple[float, ...]  # lag C/C0 at the block ends
    completed: bool  # False: stopped by the deadline


def forecast(model: ShadowCarousel, p, x: np.ndarray, u: np.ndarray, horizon_s: float, limit: float,
             blocks_s: tuple[float, float], deadline: float | None = None, rtol: float = 3e-3,
             atol: float = 1e-5) -> Forecast:
    """Run the shadow ahead with ``u`` held until the lag C/C0 reaches ``limit`` or the horizon,
    in blocks of ``blocks_s[0]``, ``blocks_s[1]`` once C/C0 > limit/10 (the crossing is
    interpolated in a short block); ``deadline`` (perf_counter) stops it (``completed=False``)."""
    i_bt = model.output_index["lag_breakthrough"]
    bt0 = float(model.outputs(0.0, x, u, p)[i_bt])
    times, bts, t = [0.0], [bt0], 0.0
    if bt0 >= limit:
        return Forecast(0.0, tuple(times), tuple(bts), True)
    while t < horizon_s - 1e-9:
        if deadline is not None and time.perf_counter() > deadline:
            return Forecast(None, tuple(times), tuple(bts), False)
        t1 = min(t + (blocks_s[1] if bts[-1] > 0.1 * limit else blocks_s[0]), horizon_s)
        x = advance(model, t, t1, x, u, p, rtol=rtol, atol=atol)
        bt = float(model.outputs(t1, x, u, p)[i_bt])
        times.append(t1)
        bts.append(bt)
        if bt >= limit:
            w = (limit - bts[-2]) / max(bt - bts[-2], 1e-12)
            return Forecast(t + w * (t1 - t), tuple(times), tuple(bts), True)
        t = t1
    return Forecast(None, tuple(times), tuple(bts), True)


@dataclass(frozen=True)
class ShadowState:
    """What the MPC needs from the estimator: the shadow's state and the carousel's status."""

    x: np.ndarray
    capacity: tuple[float, ...]
    roles: tuple[int, ...]
    feed_flow_L_per_h: float
    ready_in_s: tuple[float, ...]  # per column: 0 standby, remaining offline time, inf in service
    limit: float  # switch limit C/C0 in effect
    n_cells: int  # of the shadow model the state belongs to


@dataclass(frozen=True)
class CarouselEstimate(EstimateResult):
    shadow: ShadowState | None = None


@dataclass
class _Segment:
    """One column's loading since its last reset: inlet per tick and outlet samples."""

    t0: float
    ticks: list = dataclasses.field(default_factory=list)  # (t0, t1, Q m3/s, c_in (nc,))
    samples: dict = dataclasses.field(default_factory=dict)  # source time -> {species: (value, sd)}
    last_fit: float = -np.inf
    n_fits: int = 0


class CarouselEstimator:
    """Shadow carousel + capacity fits + time-to-breakthrough forecast (module docstring)."""

    unit = "adsorption"

    def __init__(self, line_cfg, config: CarouselEstimatorConfig | None = None, *, start: str = "design"):
        self.cfg = c = config or CarouselEstimatorConfig()
        self.line_cfg = line_cfg
        self.n = n = line_cfg.adsorption.n_columns
        self.p = shadow_params(line_cfg, c.n_cells)
        self.model = ShadowCarousel(self.unit, self.p)
        self._fmodel = ShadowCarousel(self.unit, self.p)  # forecasts keep their own step size
        self.c_feed, self.h_feed = feed_of(line_cfg)
        self.c_feed_mg = self.c_feed * np.array([MOLAR_MASS_G_PER_MOL[s] for s in HREE])
        self.u = self.model.design_inputs(self.p, line_cfg.feed.flow_L_per_h * L_PER_H, self.c_feed, self.h_feed)
        loading = "lead_saturated" if start == "design" else "fresh"
        self.x = self.model.initial_state(self.p, loading, self.c_feed, self.h_feed)
        self.theta = np.ones(n)
        self.theta_var = np.full(n, c.prior_ln_capacity_sd ** 2)
        self.roles = tuple(int(r) for r in self.u[:n])
        self.role_since = [0.0] * n
        self.segments: list[_Segment | None] = [
            None if (k == 0 and start == "design") else _Segment(0.0) for k in range(n)]
        self.t: float | None = None
        self.feed_flow = line_cfg.feed.flow_L_per_h
        self.limit = line_cfg.adsorption.breakthrough_limit_fraction
        self._seen: dict[str, float] = {}
        self._outlets: deque = deque()  # (t, c_out (n, 2) mg/L)
        self._fc: tuple[float, Forecast] | None = None
        self._fc_flow = self.feed_flow
        self._pending: set[int] = set()
        by_name = {tg.name: tg for tg in line_cfg.tags}
        self._sd = {f"ADS.COL{k}.OUT.{s}": (by_name[f"ADS.COL{k}.OUT.{s}"].noise_sd or 0.0)
                    if f"ADS.COL{k}.OUT.{s}" in by_name else 0.1 for k in range(1, n + 1) for s in HREE}
        self.fit_log: list[dict] = []  # (t, column, θ̂, sd, n samples, seconds): for docs and tests

    def fork(self) -> CarouselEstimator:
        """An independent copy (for what-if runs; ``copy.deepcopy`` would share the solver's owner)."""
        new = CarouselEstimator(self.line_cfg, self.cfg)
        for name in ("x", "u", "theta", "theta_var"):
            setattr(new, name, getattr(self, name).copy())
        new.p, new.roles, new.role_since = self.p, self.roles, list(self.role_since)
        new.segments = copy.deepcopy(self.segments)
        new.t, new.feed_flow, new.limit, new._fc, new._fc_flow = self.t, self.feed_flow, self.limit, self._fc, self._fc_flow
        new._seen, new._outlets, new._pending = dict(self._seen), deque(self._outlets), set(self._pending)
        new.fit_log = list(self.fit_log)
        return new

    # -- inputs --------------------------------------------------------------------------
    def _read_roles(self, snapshot: Mapping[str, Sample]) -> tuple[int, ...]:
        out = []
        for k in range(1, self.n + 1):
            s = snapshot.get(f"ADS.COL{k}.ROLE")
            ok = s is not None and s.quality != Quality.BAD and np.isfinite(s.value)
            out.append(round(s.value) if ok else self.roles[k - 1])
        return tuple(out)

    def _read_flow(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> float:
        s = snapshot.get("ADS.FEED.FLOW")
        if s is not None and s.quality != Quality.BAD and np.isfinite(s.value):
            return max(float(s.value), 0.0)
        return float(applied.get("ADS.FEED.FLOW_SP", self.feed_flow))

    def _read_limit(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> float:
        if "ADS.BT_LIMIT_SP" in applied:
            return float(applied["ADS.BT_LIMIT_SP"]) / 100.0
        s = snapshot.get("ADS.BT_LIMIT_SP")
        if s is not None and s.quality != Quality.BAD and np.isfinite(s.value):
            return float(s.value) / 100.0
        return self.limit

    def _apply_roles(self, roles: tuple[int, ...], t_change: float) -> bool:
        """Take the observed roles; True if the loading (lead/lag) roles changed."""
        loading_before = self.u[:self.n].copy()
        liq, sol, _ = self.model.split(self.x)
        for k, (old, new) in enumerate(zip(self.roles, roles)):
            if old == new:
                continue
            self.role_since[k] = t_change
            if new == ads.ROLE_ELUTE:  # 1 M acid strips the bed: clean from here on
                liq[k], sol[k] = 0.0, 0.0
                liq[k, :, -1] = self.p.regen_H
                self.segments[k] = _Segment(t_change)
        self.roles = roles
        self.u[:self.n] = [r if r in LOADING_ROLES else ads.ROLE_STANDBY for r in roles]
        return bool(np.any(self.u[:self.n] != loading_before))

    # -- one tick ------------------------------------------------------------------------
    def step(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float], t: float) -> CarouselEstimate:
        applied = applied or {}
        if self.t is None:  # the role clock and the segments start at the first tick (any epoch)
            self.role_since = [t] * self.n
            for seg in self.segments:
                if seg is not None:
                    seg.t0 = t
        t_prev = self.t if self.t is not None else t
        changed = self._apply_roles(self._read_roles(snapshot), t_prev)
        self.feed_flow = self._read_flow(snapshot, applied)
        limit = self._read_limit(snapshot, applied)
        if limit != self.limit:
            self.limit, changed = limit, True
        self.u[self.model.input_index["feed_flow"]] = self.feed_flow * L_PER_H
        if t > t_prev:
            self._advance(t_prev, t)
        self.t = t
        self._outlets.append((t, self._outlet_mg()))
        while self._outlets and self._outlets[0][0] < t - self.cfg.history_s:
            self._outlets.popleft()
        used, dropped, innov, nis = self._samples(snapshot)
        fitted = self._fits(t)
        moved = abs(self.feed_flow - self._fc_flow) > 0.02 * max(self._fc_flow, 1.0)
        if changed or fitted or moved or self._fc is None or t - self._fc[0] >= self.cfg.forecast_period_s:
            self._fc_flow = self.feed_flow
            c = self.cfg
            self._fc = (t, forecast(self._fmodel, self.p, self.x.copy(), self.u.copy(), c.forecast_horizon_s,
                                    self.limit, (c.forecast_block_s, c.forecast_fine_block_s),
                                    rtol=c.forecast_rtol, atol=c.forecast_atol))
        return self._result(t, used, dropped, innov, nis)

    def _advance(self, t0: float, t1: float) -> None:
        liq, _, _ = self.model.split(self.x)
        q = self.feed_flow * L_PER_H
        feed = np.append(self.c_feed, self.h_feed)
        for k, r in enumerate(self.roles):
            seg = self.segments[k]
            if r not in LOADING_ROLES or seg is None:
                continue
            if r == ads.ROLE_LAG and ads.ROLE_LEAD in self.roles:
                c_in = liq[self.roles.index(ads.ROLE_LEAD), -1, :].copy()
            else:
                c_in = feed
            seg.ticks.append((t0, t1, q, c_in))
        self.x = advance(self.model, t0, t1, self.x, self.u, self.p, rtol=self.cfg.rtol, atol=1e-8)

    def _outlet_mg(self) -> np.ndarray:
        liq, _, _ = self.model.split(self.x)
        return liq[:, -1, :2] * self.c_feed_mg / self.c_feed

    def _predicted_at(self, ts: float) -> np.ndarray | None:
        h = self._outlets
        if not h or ts < h[0][0] - 1e-9:
            return None
        times = np.array([e[0] for e in h])
        i = int(np.searchsorted(times, ts))
        if i >= len(h):
            return h[-1][1]
        if i == 0 or times[i] == ts:
            return h[i][1]
        w = (ts - times[i - 1]) / (times[i] - times[i - 1])
        return (1 - w) * h[i - 1][1] + w * h[i][1]

    # -- analyser samples ------------------------------------------------------------------
    def _samples(self, snapshot: Mapping[str, Sample]):
        used, dropped, innov, nis = [], {}, {}, {}
        uf = self.cfg.uncertain_variance_factor
        for k in range(self.n):
            seg = self.segments[k]
            for j, sp in enumerate(HREE):
                tag = f"ADS.COL{k + 1}.OUT.{sp}"
                s = snapshot.get(tag)
                if s is None or s.source_time <= self._seen.get(tag, -np.inf):
                    continue
                self._seen[tag] = s.source_time
                if s.quality == Quality.BAD:
                    dropped[tag] = "bad quality"
                    continue
                if not np.isfinite(s.value):
                    dropped[tag] = "not finite"
                    continue
                pred = self._predicted_at(s.source_time)
                if pred is None:
                    dropped[tag] = "sample time older than the estimator's history"
                    continue
                sd = float(np.hypot(self._sd[tag], self.cfg.model_sd_fraction * self.c_feed_mg[j]))
                if s.quality == Quality.UNCERTAIN:
                    sd *= np.sqrt(uf)
                nu = float(s.value) - float(pred[k, j])
                used.append(tag)
                innov[tag], nis[tag] = nu, (nu / sd) ** 2
                if seg is None or not seg.ticks or s.source_time < seg.ticks[0][0]:
                    continue  # not loading since a known (clean) state: nothing to fit
                seg.samples.setdefault(s.source_time, {})[j] = (float(s.value), sd)
                floor = max(self.cfg.fit_threshold * self.c_feed_mg[j], 4.0 * self._sd[tag])
                seen = max(float(s.value), float(pred[k, j])) >= floor
                fresh = float(s.value) <= self.cfg.fit_upper * self.c_feed_mg[j]
                if seen and fresh and self.roles[k] in LOADING_ROLES and seg.n_fits < self.cfg.max_fits:
                    self._pending.add(k)
        return tuple(used), dropped, innov, nis

    # -- capacity fit by re-simulation ----------------------------------------------------
    def _fits(self, t: float) -> bool:
        done = False
        for k in sorted(self._pending):
            seg = self.segments[k]
            if seg is None or t - seg.last_fit < self.cfg.fit_interval_s:
                continue
            self._pending.discard(k)
            started = time.perf_counter()
            theta, var, col_state = self._fit(seg, float(self.theta[k]), float(self.theta_var[k]))
            if col_state is not None:
                liq, sol, _ = self.model.split(self.x)
                liq[k], sol[k] = col_state[:2]
                self._rerun_lag_behind(k, *col_state[2:])
            done = done or abs(np.log(theta / self.theta[k])) > 0.02
            self.theta[k], self.theta_var[k] = theta, var
            self.p = dataclasses.replace(self.p, capacity_factor=self.theta.copy())
            seg.last_fit, seg.n_fits = t, seg.n_fits + 1
            self.fit_log.append({"t": t, "column": k + 1, "capacity": theta, "sd": float(np.sqrt(var)),
                                 "samples": len(seg.samples), "seconds": time.perf_counter() - started})
        return done

    def _rerun_lag_behind(self, k: int, times: np.ndarray, outlet: np.ndarray) -> None:
        """Column k (now lead) was re-simulated: give the lag behind it the corrected inlet over
        the ticks it was fed by k, and re-simulate the lag too (else it keeps the inflow the old
        shadow of k let through, e.g. on the ticks between a switch and the fit of the new lead)."""
        if self.roles[k] != ads.ROLE_LEAD or ads.ROLE_LAG not in self.roles:
            return
        j = self.roles.index(ads.ROLE_LAG)
        seg, since = self.segments[j], self.role_since[j]
        if seg is None or not seg.ticks:
            return
        seg.ticks = [(t0, t1, q, c if t0 < since else np.array([np.interp(t0, times, outlet[:, i])
                                                                   for i in range(outlet.shape[1])]))
                     for t0, t1, q, c in seg.ticks]
        _, liq_j, sol_j, _ = self._simulate(seg, np.array([self.theta[j]]), self._blocks(seg), np.zeros(0))
        liq, sol, _ = self.model.split(self.x)
        liq[j], sol[j] = liq_j[0], sol_j[0]

    def _blocks(self, seg: _Segment) -> list[tuple[float, float, float, np.ndarray]]:
        """The recorded inlet merged into blocks of ≤ fit_block_s (flux-weighted composition)."""
        out, cur = [], None
        fine_from = seg.ticks[-1][1] - self.cfg.fit_fine_window_s
        for t0, t1, q, c in seg.ticks:
            size = self.cfg.fit_block_s if t1 > fine_from else self.cfg.fit_coarse_block_s
            if cur is not None and (abs(t0 - cur[1]) > 1e-6 or t1 - cur[0] > size):
                out.append(cur)
                cur = None
            if cur is None:
                cur = [t0, t1, 0.0, np.zeros_like(c), 0.0]
            dt = t1 - t0
            cur[1] = t1
            cur[2] += q * dt
            cur[3] = cur[3] + q * dt * c
            cur[4] += dt
        if cur is not None:
            out.append(cur)
        return [(b0, b1, vq / dur, (cq / vq) if vq > 0 else cq, ) for b0, b1, vq, cq, dur in out]

    def _simulate(self, seg: _Segment, thetas: np.ndarray, blocks, ts: np.ndarray):
        """Columns with capacities ``thetas`` fed the recorded inlet from clean: outlet (mg/L) at
        the sample times ``ts`` (m, cands, 2) and the final liquid and solid states."""
        m = len(thetas)
        p = shadow_params(self.line_cfg, self.cfg.n_cells, m, thetas)
        model = ShadowCarousel("fit", p)
        x = model.initial_state(p)
        u = model.design_inputs(p, 0.0, self.c_feed, self.h_feed, roles=[ads.ROLE_LEAD] * m)
        i_q, feed = model.input_index["feed_flow"], model._feed
        liq, _, _ = model.split(x)
        times, outs = [blocks[0][0]], [liq[:, -1, :].copy()]
        for b0, b1, q, c in blocks:
            u[i_q], u[feed] = m * q, c
            x = advance(model, b0, b1, x, u, p, rtol=self.cfg.rtol, atol=self.cfg.fit_atol)
            liq, _, _ = model.split(x)
            times.append(b1)
            outs.append(liq[:, -1, :].copy())
        outs = np.array(outs)  # (blocks+1, m, Dy Tb H) mol/m3
        mg = outs[..., :2] * self.c_feed_mg / self.c_feed
        sim = np.stack([np.stack([np.interp(ts, times, mg[:, i, j]) for j in range(2)], axis=-1)
                        for i in range(m)], axis=1)
        liq, sol, _ = model.split(x)
        return sim, liq.copy(), sol.copy(), (np.array(times), outs)

    def _fit(self, seg: _Segment, theta0: float, var0: float):
        blocks = self._blocks(seg)
        ts = np.array(sorted(seg.samples))
        z = np.full((len(ts), 2), np.nan)
        sd = np.ones((len(ts), 2))
        for i, tsi in enumerate(ts):
            for j, (v, s) in seg.samples[tsi].items():
                z[i, j], sd[i, j] = v, s

        lo, hi = self.cfg.capacity_bounds
        grid = np.geomspace(max(lo, theta0 / 6.0), min(hi, theta0 * 1.5), self.cfg.fit_candidates)
        widened, shrunk = False, 0
        while shrunk < self.cfg.fit_shrinks:  # bracket the sign change of the weighted residual, shrink, repeat
            sim, _, _, _ = self._simulate(seg, grid, blocks, ts)
            r = np.where(np.isnan(z[:, None, :]), 0.0, (sim - z[:, None, :]) / sd[:, None, :] ** 2)
            g = r.sum(axis=(0, 2))  # > 0: breaks through too early (θ too small); falls with θ
            early = np.flatnonzero(g > 0)
            if early.size and early[-1] < len(grid) - 1:
                i = int(early[-1])
                grid, shrunk = np.geomspace(grid[i], grid[i + 1], self.cfg.fit_candidates), shrunk + 1
                continue
            if not widened and shrunk == 0:  # outside the first guess: search the whole range
                grid, widened = np.geomspace(lo, hi, self.cfg.fit_candidates), True
                continue
            sse = np.nansum(((sim - z[:, None, :]) / sd[:, None, :]) ** 2, axis=(0, 2))
            if np.ptp(sse) < 1.0:  # no candidate fits better than another: keep θ̂
                return theta0, var0, None
            i = 0 if early.size == 0 else len(grid) - 2  # at a bound of the range
            grid = np.geomspace(grid[i], grid[i + 1], self.cfg.fit_candidates)
            break
        sim, _, _, _ = self._simulate(seg, grid, blocks, ts)
        r = np.where(np.isnan(z[:, None, :]), 0.0, (sim - z[:, None, :]) / sd[:, None, :] ** 2)
        g = r.sum(axis=(0, 2))
        sse = np.nansum(((sim - z[:, None, :]) / sd[:, None, :]) ** 2, axis=(0, 2))
        lg = np.log(grid)
        j = int(np.clip(np.searchsorted(-g, 0.0), 1, len(grid) - 1))  # g falls: first g ≤ 0
        w = g[j - 1] / (g[j - 1] - g[j]) if g[j - 1] != g[j] else 0.5
        theta = float(np.exp(lg[j - 1] + np.clip(w, 0.0, 1.0) * (lg[j] - lg[j - 1])))
        a = np.polyfit(lg - lg.mean(), sse, 2)[0]
        var_log = 1.0 / a if a > 0 else (lg[-1] - lg[0]) ** 2
        _, liq, sol, (times, outs) = self._simulate(seg, np.array([theta]), blocks, ts)
        return theta, theta ** 2 * min(var_log, 1.0), (liq[0], sol[0], times, outs[:, 0, :])

    # -- result ----------------------------------------------------------------------------
    def ready_in(self, t: float) -> tuple[float, ...]:
        """Per column: 0 standby, the remaining offline time, inf while in service."""
        phases = (ads.ROLE_WASH, ads.ROLE_ELUTE, ads.ROLE_REGENERATE)
        secs = self.p.phase_seconds
        out = []
        for k, r in enumerate(self.roles):
            if r == ads.ROLE_STANDBY:
                out.append(0.0)
            elif r in phases:
                i = phases.index(r)
                out.append(max(secs[i] - (t - self.role_since[k]), 0.0) + sum(secs[i + 1:]))
            else:
                out.append(float("inf"))
        return tuple(out)

    def time_to_breakthrough(self, t: float) -> float:
        t_made, fc = self._fc
        if fc.t_cross is None:
            return self.cfg.forecast_horizon_s
        return max(t_made + fc.t_cross - t, 0.0)

    def _result(self, t, used, dropped, innov, nis) -> CarouselEstimate:
        y = self.model.outputs(t, self.x, self.u, self.p)
        oi = self.model.output_index
        x, cov, pub, derived = {}, {}, {}, {}
        ready = self.ready_in(t)
        for k in range(1, self.n + 1):
            load = float(y[oi[f"col{k}.loading_fraction"]])
            x[f"col{k}.capacity"], cov[f"col{k}.capacity"] = float(self.theta[k - 1]), float(self.theta_var[k - 1])
            x[f"col{k}.loading"] = load
            x[f"col{k}.front"] = float(y[oi[f"col{k}.front_position"]])
            derived[f"col{k}.ready_in_s"] = ready[k - 1]
            for j, sp in enumerate(HREE):
                derived[f"col{k}.outlet.{sp}_mg_per_L"] = float(y[oi[f"col{k}.outlet.{sp}"]] * self.c_feed_mg[j]
                                                              / self.c_feed[j])
            pub[f"ADS.COL{k}.LOADING.EST"] = 100.0 * load
            pub[f"ADS.COL{k}.CAPACITY.EST"] = float(self.theta[k - 1])
        ttb = self.time_to_breakthrough(t)
        derived["lag_breakthrough"] = float(y[oi["lag_breakthrough"]])
        derived["standby_ready_in_s"] = min(ready)
        pub["ADS.LAG.TIME_TO_BT.EST"] = ttb
        shadow = ShadowState(self.x.copy(), tuple(map(float, self.theta)), self.roles, self.feed_flow,
                             ready, self.limit, self.p.n_cells)
        return CarouselEstimate(t, self.unit, x, cov, innov, nis, used, dropped, derived, pub, shadow)
