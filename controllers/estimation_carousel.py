"""Carousel estimator: loading front and adsorbent capacity of every column.

Public API (stable; the loop composes it)::

    CarouselEstimator(line_cfg, config: CarouselEstimatorConfig | None = None, *, start="design",
                      executor=None, apply="inline")
        .step(snapshot, applied, t) -> CarouselEstimate        # an EstimateResult + .shadow
        .fork() -> CarouselEstimator                            # independent copy (what-if runs)
        .cancel()                                               # drop the jobs not yet started
    ShadowCarousel, shadow_params, feed_of, forecast, Forecast  # from ``controllers.carousel_refit``

Shadow model. The twin's ``AdsorptionCarousel`` (same equations, same RODAS3 solver, see
``twin.adsorption``) restricted to the two species that load (Dy, Tb; the shipped line's other
six hold < 1 % of the sites at the feed, and the shadow holds for a line whose added species are
held as weakly) and ``n_cells`` = 20 (effective Péclet 2N = 40 against 80: the breakthrough
of the shipped column comes ~1 % earlier). Per tick it is advanced over
[t_prev, t] with the roles and the feed flow the snapshot at t shows (ADS.COLk.ROLE, ADS.FEED.FLOW;
``applied['ADS.FEED.FLOW_SP']`` if the sensor is BAD), the feed composition of the config and
capacity factors θ_k (q_max,k = θ_k·q_max). Offline roles are not simulated: a column entering
elution (1 M acid: K ÷ 10⁶) is reset to clean adsorbent; wash/regenerate/standby carry no flow.

Capacity θ_k: nothing about θ_k is observable before the front reaches the column outlet (the
failed EKF of the previous design). After every reset the estimator records the column's
inlet (flow, Dy, Tb; the feed when lead, the shadow's lead outlet when lag). When an outlet
sample (ADS.COLk.OUT.Dy/Tb, at its *sample* time) or the shadow's own prediction shows
breakthrough (C/C0 ≥ ``fit_threshold``), θ_k is fitted by re-simulation (``carousel_refit.fit``):

    θ̂_k = root of Σ_s Σ_{Dy,Tb} (c_sim(t_s; θ) − c_meas,s)/σ_s² = 0,

the candidates simulated at once as parallel columns of one ``ShadowCarousel`` fed the recorded
inlet. The fitted column's *state* is taken from the re-simulation (no linear shift of a sharp
front); if it is the lead, the lag behind it is re-simulated with the corrected inlet too.
Fits run only on new informative samples and at most every ``fit_interval_s`` per column, so
ordinary ticks cost one shadow step (~1 ms).
Samples: BAD → dropped; UNCERTAIN → σ·√``uncertain_variance_factor``; a sample already seen
(same source time) is skipped. σ = the tag's noise_sd ⊕ ``model_sd_fraction``·c_feed.

Time to breakthrough: a copy of the shadow is run ahead (roles and feed held, blocks of
``forecast_block_s``) until the lag outlet Dy+Tb C/C0 reaches ADS.BT_LIMIT_SP; the crossing is
interpolated within the block. Re-forecast every ``forecast_period_s``, on a role change, a
feed-flow change > 2 % and after a fit; in between the crossing time is carried. Beyond
``forecast_horizon_s`` the horizon is published.

Slow work (fits 0.2–2 s, forecasts 0.1–1 s) is a job of values (``carousel_refit.refit``,
``run_forecast``) submitted at the tick where it is due to ``executor`` (a
``concurrent.futures`` executor; None: run at once on the caller's thread), and applied by
``apply``:

- ``"inline"``: in the same tick (the job runs at once; the tick waits for it);
- ``"next_tick"``: at the start of the next tick, waiting for it if it has not finished: the same
  snapshots give the same estimates whatever the machine (virtual-clock runs, training replays);
- ``"worker"``: at the first tick after it finished; the tick never waits (live).

A fit is computed from the data up to its submission time t_s and gives the column's state at
t_s; when it is applied at t_a the shadow is re-advanced from that state over the ticks between
(their recorded inputs and role resets, one shadow step each), so the front lands where the
new capacity puts it at t_a. A forecast made from the state at t_s counts its crossing from
t_s. Until a job lands the previous θ̂ and crossing are carried. ``derived`` says which time
each is from: ``forecast_from_s``, ``col<k>.capacity_from_s`` (NaN: none yet / the prior).

Published: ``ADS.COLk.LOADING.EST`` (%, HREE sites used of the column's capacity θ_k·q_max, the
twin's ``colk.loading_fraction``), ``ADS.COLk.CAPACITY.EST`` (θ_k), ``ADS.LAG.TIME_TO_BT.EST`` (s;
not published before the first forecast has landed).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pilot_config.base import HREE, MOLAR_MASS_G_PER_MOL
from twin import adsorption as ads
from twin.integrate import advance
from twin.signals import Quality, Sample

from .carousel_refit import (
    CarouselEstimatorConfig,
    FitContext,
    FitJob,
    FitResult,
    Forecast,
    LagJob,
    ShadowCarousel,
    feed_of,
    forecast,
    refit,
    run_forecast,
    shadow_params,
)
from .carousel_worker import Apply, Job, JobQueue
from .estimation import EstimateResult

__all__ = ["L_PER_H", "LOADING_ROLES", "CarouselEstimate", "CarouselEstimator", "CarouselEstimatorConfig",
           "Forecast", "ShadowCarousel", "ShadowState", "feed_of", "forecast", "shadow_params"]
log = logging.getLogger(__name__)
L_PER_H = 1e-3 / 3600.0
LOADING_ROLES = (ads.ROLE_LEAD, ads.ROLE_LAG)


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

    def __init__(self, line_cfg, config: CarouselEstimatorConfig | None = None, *, start: str = "design",
                 executor=None, apply: Apply = "inline"):
        self.cfg = c = config or CarouselEstimatorConfig()
        self.line_cfg = line_cfg
        self.n = n = line_cfg.adsorption.n_columns
        self.p = shadow_params(line_cfg, c.n_cells)
        self.model = ShadowCarousel(self.unit, self.p)
        self._fmodel = ShadowCarousel(self.unit, self.p)  # forecasts keep their own step size
        self.c_feed, self.h_feed = feed_of(line_cfg)
        self.c_feed_mg = self.c_feed * np.array([MOLAR_MASS_G_PER_MOL[s] for s in HREE])
        self._ctx = FitContext(self.p, c, self.c_feed, self.h_feed, self.c_feed_mg)
        self.u = self.model.design_inputs(self.p, line_cfg.feed.flow_L_per_h * L_PER_H, self.c_feed, self.h_feed)
        loading = "lead_saturated" if start == "design" else "fresh"
        self.x = self.model.initial_state(self.p, loading, self.c_feed, self.h_feed)
        self.theta = np.ones(n)
        self.theta_var = np.full(n, c.prior_ln_capacity_sd ** 2)
        self.theta_from = np.full(n, np.nan)  # the time each θ̂ is fitted from (NaN: the prior)
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
        self._fc_event = False  # a forecast is due once the one in flight has landed
        self._pending: set[int] = set()
        self.jobs = JobQueue(executor, apply)
        by_name = {tg.name: tg for tg in line_cfg.tags}
        self._sd = {f"ADS.COL{k}.OUT.{s}": (by_name[f"ADS.COL{k}.OUT.{s}"].noise_sd or 0.0)
                    if f"ADS.COL{k}.OUT.{s}" in by_name else 0.1 for k in range(1, n + 1) for s in HREE}
        self.fit_log: list[dict] = []  # t (data), applied, column, capacity, sd, samples, seconds
        self.forecast_log: list[dict] = []  # t (data), applied, t_cross, seconds

    def fork(self) -> CarouselEstimator:
        """An independent copy (for what-if runs; ``copy.deepcopy`` would share the solver's owner).
        Jobs in flight are inherited (the fork applies them at its next tick, waiting for them);
        its own jobs run at once on the caller's thread."""
        new = CarouselEstimator(self.line_cfg, self.cfg, apply="inline" if self.jobs.apply == "inline" else "next_tick")
        for name in ("x", "u", "theta", "theta_var", "theta_from"):
            setattr(new, name, getattr(self, name).copy())
        new.p, new.roles, new.role_since = self.p, self.roles, list(self.role_since)
        memo: dict = {}
        new.segments = copy.deepcopy(self.segments, memo)
        new.t, new.feed_flow, new.limit, new._fc, new._fc_flow = self.t, self.feed_flow, self.limit, self._fc, self._fc_flow
        new._seen, new._outlets, new._pending = dict(self._seen), deque(self._outlets), set(self._pending)
        new._fc_event = self._fc_event
        new.jobs.jobs = [dataclasses.replace(j, x=None if j.x is None else j.x.copy(), log=list(j.log),
                                             lag_seg=memo.get(id(j.lag_seg))) for j in self.jobs.jobs]
        new.fit_log, new.forecast_log = list(self.fit_log), list(self.forecast_log)
        return new

    def cancel(self) -> None:
        """Cancel the jobs not yet started and forget every job in flight (the loop shuts down)."""
        self.jobs.cancel()

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

    def _apply_roles(self, roles: tuple[int, ...], t_change: float) -> tuple[bool, tuple[int, ...]]:
        """Take the observed roles: (the loading (lead/lag) roles changed, the columns reset)."""
        loading_before = self.u[:self.n].copy()
        resets = []
        for k, (old, new) in enumerate(zip(self.roles, roles)):
            if old == new:
                continue
            self.role_since[k] = t_change
            if new == ads.ROLE_ELUTE:  # 1 M acid strips the bed: clean from here on
                self._clean(self.x, k)
                self.segments[k] = _Segment(t_change)
                resets.append(k)
        self.roles = roles
        self.u[:self.n] = [r if r in LOADING_ROLES else ads.ROLE_STANDBY for r in roles]
        return bool(np.any(self.u[:self.n] != loading_before)), tuple(resets)

    def _clean(self, x: np.ndarray, k: int) -> None:
        """Column k of ``x`` (in place) as the elution leaves it: no metal, the regenerant's acid."""
        liq, sol, _ = self.model.split(x)
        liq[k], sol[k] = 0.0, 0.0
        liq[k, :, -1] = self.p.regen_H

    # -- one tick ------------------------------------------------------------------------
    def step(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float], t: float) -> CarouselEstimate:
        applied = applied or {}
        if self.t is None:  # the role clock and the segments start at the first tick (any epoch)
            self.role_since = [t] * self.n
            for seg in self.segments:
                if seg is not None:
                    seg.t0 = t
        self._collect(t)
        t_prev = self.t if self.t is not None else t
        changed, resets = self._apply_roles(self._read_roles(snapshot), t_prev)
        self.feed_flow = self._read_flow(snapshot, applied)
        limit = self._read_limit(snapshot, applied)
        if limit != self.limit:
            self.limit, changed = limit, True
        self.u[self.model.input_index["feed_flow"]] = self.feed_flow * L_PER_H
        if t > t_prev:
            self._advance(t_prev, t)
        for job in self.jobs.jobs:
            if job.kind == "fit":
                job.log.append((resets, t_prev, t, self.u.copy()))
        self.t = t
        self._outlets.append((t, self._outlet_mg()))
        while self._outlets and self._outlets[0][0] < t - self.cfg.history_s:
            self._outlets.popleft()
        used, dropped, innov, nis = self._samples(snapshot)
        self._fits(t)
        moved = abs(self.feed_flow - self._fc_flow) > 0.02 * max(self._fc_flow, 1.0)
        self._forecast(t, changed or moved)
        return self._result(t, used, dropped, innov, nis)

    # -- jobs ------------------------------------------------------------------------------
    def _submit(self, job: Job, fn, *args) -> None:
        self.jobs.submit(job, fn, *args)
        if self.jobs.apply == "inline":
            self._collect(self.t, wait=True)

    def _collect(self, t: float, wait: bool | None = None) -> None:
        """Apply the finished jobs (``wait``: every job; None: as ``apply`` says), in order."""
        for job, res in self.jobs.finished(self.jobs.apply != "worker" if wait is None else wait):
            if job.kind == "fit":
                self._apply_fit(job, res, t)
            else:
                self._fc = (job.t, res[0])
                self.forecast_log.append({"t": job.t, "applied": t, "t_cross": res[0].t_cross, "seconds": res[1]})

    def _fits(self, t: float) -> None:
        """Submit the due fits, one in flight at a time (the others stay pending)."""
        while not self.jobs.busy("fit"):
            due = [k for k in sorted(self._pending) if self.segments[k] is not None
                   and t - self.segments[k].last_fit >= self.cfg.fit_interval_s]
            if not due:
                return
            k = due[0]
            self._pending.discard(k)
            seg = self.segments[k]
            seg.last_fit, seg.n_fits = t, seg.n_fits + 1
            lag, lag_seg = self._lag_job(k)
            job = FitJob(k, t, tuple(seg.ticks), {ts: dict(v) for ts, v in seg.samples.items()},
                         float(self.theta[k]), float(self.theta_var[k]), lag)
            self._submit(Job("fit", t, None, self.x.copy(), [], lag_seg, len(lag.ticks) if lag else 0),
                         refit, self._ctx, job)

    def _lag_job(self, k: int) -> tuple[LagJob | None, _Segment | None]:
        """The lag fed by column k if k is the lead (re-simulated with the corrected inlet: else it
        keeps what the old shadow of k let through, e.g. between a switch and the fit of the new lead)."""
        if self.roles[k] != ads.ROLE_LEAD or ads.ROLE_LAG not in self.roles:
            return None, None
        j = self.roles.index(ads.ROLE_LAG)
        seg = self.segments[j]
        if seg is None or not seg.ticks:
            return None, None
        return LagJob(j, tuple(seg.ticks), self.role_since[j], float(self.theta[j])), seg

    def _apply_fit(self, job: Job, res: FitResult, t: float) -> None:
        k = res.column
        moved = abs(np.log(res.theta / self.theta[k])) > 0.02
        self.theta[k], self.theta_var[k], self.theta_from[k] = res.theta, res.var, res.t
        self.p = dataclasses.replace(self.p, capacity_factor=self.theta.copy())
        if res.state is not None:
            liq, sol, _ = self.model.split(job.x)
            liq[k], sol[k] = res.state
            if res.lag_state is not None and job.lag_seg is not None:
                j = next((i for i, s in enumerate(self.segments) if s is job.lag_seg), None)
                if j is not None:
                    liq[j], sol[j] = res.lag_state
                    job.lag_seg.ticks[:job.lag_n] = list(res.lag_ticks)
            self.x = self._catch_up(job.x, job.log)
        self._fc_event = self._fc_event or moved
        self.fit_log.append({"t": res.t, "applied": t, "column": k + 1, "capacity": res.theta,
                             "sd": float(np.sqrt(res.var)), "samples": res.samples, "seconds": res.seconds})

    def _catch_up(self, x: np.ndarray, ticks: list) -> np.ndarray:
        """``x`` advanced over the ticks recorded since it was taken (their role resets and inputs).
        Consecutive ticks with the same inputs and no reset are one interval of the integrator (a
        fit applied 300 ticks after its data: a few steps, not 300), so the state agrees with the
        tick-by-tick shadow within its tolerance (``rtol``)."""
        span = None  # (t0, t1, u) of the interval not yet integrated
        for resets, t0, t1, u in ticks:
            if span is not None and (resets or t0 != span[1] or not np.array_equal(u, span[2])):
                x = advance(self.model, *span[:2], x, span[2], self.p, rtol=self.cfg.rtol, atol=1e-8)
                span = None
            for k in resets:
                self._clean(x, k)
            if t1 > t0:
                span = (t0, t1, u) if span is None else (span[0], t1, u)
        if span is not None:
            x = advance(self.model, *span[:2], x, span[2], self.p, rtol=self.cfg.rtol, atol=1e-8)
        return x

    def _forecast(self, t: float, event: bool) -> None:
        """Submit a forecast on an event (roles, limit, flow, a fit), periodically, or the first."""
        self._fc_event = self._fc_event or event
        if self.jobs.busy("forecast"):
            return
        if not (self._fc_event or self._fc is None or t - self._fc[0] >= self.cfg.forecast_period_s):
            return
        self._fc_event, self._fc_flow, c = False, self.feed_flow, self.cfg
        local = self.jobs.local
        self._submit(Job("forecast", t), run_forecast, self.p, self.x.copy(), self.u.copy(),
                     c.forecast_horizon_s, self.limit, (c.forecast_block_s, c.forecast_fine_block_s),
                     c.forecast_rtol, c.forecast_atol, self._fmodel if local else None)

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
        """Seconds from t to the forecast crossing (NaN before the first forecast has landed)."""
        if self._fc is None:
            return float("nan")
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
            derived[f"col{k}.capacity_from_s"] = float(self.theta_from[k - 1])
            for j, sp in enumerate(HREE):
                derived[f"col{k}.outlet.{sp}_mg_per_L"] = float(y[oi[f"col{k}.outlet.{sp}"]] * self.c_feed_mg[j]
                                                              / self.c_feed[j])
            pub[f"ADS.COL{k}.LOADING.EST"] = 100.0 * load
            pub[f"ADS.COL{k}.CAPACITY.EST"] = float(self.theta[k - 1])
        ttb = self.time_to_breakthrough(t)
        derived["lag_breakthrough"] = float(y[oi["lag_breakthrough"]])
        derived["standby_ready_in_s"] = min(ready)
        derived["forecast_from_s"] = float("nan") if self._fc is None else float(self._fc[0])
        if math.isfinite(ttb):  # no forecast yet: nothing published (a historian cannot store NaN)
            pub["ADS.LAG.TIME_TO_BT.EST"] = ttb
        shadow = ShadowState(self.x.copy(), tuple(map(float, self.theta)), self.roles, self.feed_flow,
                             ready, self.limit, self.p.n_cells)
        return CarouselEstimate(t, self.unit, x, cov, innov, nis, used, dropped, derived, pub, shadow)
