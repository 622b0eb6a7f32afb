"""The carousel estimator's slow work, as pure functions of values: the shadow model, the
time-to-breakthrough forecast and the capacity fit by re-simulation.

Public API::

    CarouselEstimatorConfig                                     # the estimator's settings (defaults shipped)
    ShadowCarousel(name, p)                                     # the twin's column model, Dy+Tb only
    shadow_params(line_cfg, n_cells, n_columns=None, capacity=None) -> AdsorptionParams
    feed_of(line_cfg) -> (c_feed Dy, Tb mol/m3, H+ mol/m3)
    forecast(model, p, x, u, horizon_s, limit, blocks_s, deadline=None, rtol=3e-3, atol=1e-5) -> Forecast
    FitContext(p, cfg, c_feed, h_feed, c_feed_mg)               # what every fit needs (small, picklable)
    FitJob(column, t, ticks, samples, theta0, var0, lag)        # one column's loading since its reset
    refit(ctx, job) -> FitResult                                # the worker's entry point
    run_forecast(p, x, u, horizon_s, limit, blocks_s, rtol, atol, model=None) -> (Forecast, seconds)

Everything here takes and returns values (arrays, frozen dataclasses) and holds no state between
calls, so the estimator can run it on its own thread, in a worker thread or in a worker process
(``controllers.estimation_carousel``: submitted at the tick where it is due, applied later).

Fit (see ``controllers.estimation_carousel`` for when it runs): the root of the weighted residual

    g(θ) = Σ_s Σ_{Dy,Tb} (c_sim(t_s; θ) − c_s)/σ_s² = 0        (g falls with θ: a larger bed breaks later)

bracketed on a log grid of ``fit_candidates`` capacities simulated at once as parallel lead
columns of one ``ShadowCarousel`` fed the recorded inlet (blocks of ``fit_block_s`` over the last
``fit_fine_window_s``, ``fit_coarse_block_s`` before), shrunk ``fit_shrinks`` times, the root
interpolated linearly in ln θ; var(ln θ̂) = 1/a of a parabola a·(ln θ)² + … fitted to the misfit
Σ((c_sim − c)/σ)² of the last round. The fitted column's state at the job's time is one more
re-simulation at θ̂; a lag fed by it is re-simulated with the corrected inlet.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from pilot_config.base import (
    HREE,
    MOL_PER_L,
    MOLAR_MASS_G_PER_MOL,
    StrictModel,
)
from twin import adsorption as ads
from twin.integrate import advance


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
    p = ads.params_from_config(cfg.model_copy(update={"column": col}), line_cfg.species)
    idx = [line_cfg.species.index(s) for s in HREE]
    p = dataclasses.replace(p, n_cells=n_cells, q_max=p.q_max[idx], log_k_ref=p.log_k_ref[idx],
                            proton_exponent=p.proton_exponent[idx], k_ldf=p.k_ldf[idx])
    return with_columns(p, np.ones(n_columns or p.n_columns) if capacity is None else capacity)


def with_columns(p: ads.AdsorptionParams, capacity) -> ads.AdsorptionParams:
    """``p`` on ``len(capacity)`` identical columns with these capacity factors."""
    cap = np.asarray(capacity, dtype=float)
    n = len(cap)
    return dataclasses.replace(p, n_columns=n, capacity_factor=cap, dispersion_factor=np.ones(n),
                               dp_factor=np.ones(n))


def feed_of(line_cfg) -> tuple[np.ndarray, float]:
    """Feed Dy, Tb (mol/m3) and H+ (mol/m3) from the config."""
    f = line_cfg.feed
    return (np.array([f.composition_mg_per_L[s] / MOLAR_MASS_G_PER_MOL[s] for s in HREE]),
            f.acidity_mol_per_L * MOL_PER_L)


# -- time to breakthrough ---------------------------------------------------------------------
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


def run_forecast(p, x, u, horizon_s, limit, blocks_s, rtol, atol, model=None) -> tuple[Forecast, float]:
    """``forecast`` as a job: (result, seconds). ``model`` None: a new one (in a worker process)."""
    started = time.perf_counter()
    fc = forecast(model or ShadowCarousel("forecast", p), p, x, u, horizon_s, limit, blocks_s,
                  rtol=rtol, atol=atol)
    return fc, time.perf_counter() - started


# -- capacity fit ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FitContext:
    """What every fit needs: the shadow's parameters, the estimator's config and the feed."""

    p: ads.AdsorptionParams
    cfg: CarouselEstimatorConfig
    c_feed: np.ndarray  # Dy, Tb mol/m3
    h_feed: float  # mol/m3
    c_feed_mg: np.ndarray  # Dy, Tb mg/L


@dataclass(frozen=True)
class LagJob:
    """The lag fed by the fitted (lead) column: its inlet since its reset, re-simulated too."""

    column: int
    ticks: tuple  # (t0, t1, Q m3/s, c_in)
    since: float  # when it became the lag (its inlet before is the feed)
    theta: float


@dataclass(frozen=True)
class FitJob:
    column: int
    t: float  # the estimator's time the data are from
    ticks: tuple  # (t0, t1, Q m3/s, c_in (Dy, Tb, H)) per tick since the column's reset
    samples: dict  # sample time -> {species index: (value mg/L, sd)}
    theta0: float
    var0: float
    lag: LagJob | None = None


@dataclass(frozen=True)
class FitResult:
    column: int
    t: float
    theta: float
    var: float
    state: tuple[np.ndarray, np.ndarray] | None  # (liquid, solid) of the column at t; None: not moved
    lag_state: tuple[np.ndarray, np.ndarray] | None
    lag_ticks: tuple | None  # the lag's inlet ticks with the corrected lead outlet
    samples: int
    seconds: float


def refit(ctx: FitContext, job: FitJob) -> FitResult:
    """Fit θ of ``job.column``, its state at ``job.t`` and the lag behind it (module docstring)."""
    started = time.perf_counter()
    theta, var, state = fit(ctx, job.ticks, job.samples, job.theta0, job.var0)
    lag_state = lag_ticks = None
    if state is not None and job.lag is not None and job.lag.ticks:
        times, outlet = state[2], state[3]
        lag_ticks = tuple((t0, t1, q, c if t0 < job.lag.since else np.array(
            [np.interp(t0, times, outlet[:, i]) for i in range(outlet.shape[1])]))
            for t0, t1, q, c in job.lag.ticks)
        _, liq, sol, _ = simulate(ctx, np.array([job.lag.theta]), blocks(lag_ticks, ctx.cfg), np.zeros(0))
        lag_state = (liq[0], sol[0])
    return FitResult(job.column, job.t, theta, var, None if state is None else state[:2], lag_state, lag_ticks,
                     len(job.samples), time.perf_counter() - started)


def blocks(ticks, cfg) -> list[tuple[float, float, float, np.ndarray]]:
    """The recorded inlet merged into blocks of ≤ fit_block_s (flux-weighted composition)."""
    out, cur = [], None
    fine_from = ticks[-1][1] - cfg.fit_fine_window_s
    for t0, t1, q, c in ticks:
        size = cfg.fit_block_s if t1 > fine_from else cfg.fit_coarse_block_s
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
    return [(b0, b1, vq / dur, (cq / vq) if vq > 0 else cq) for b0, b1, vq, cq, dur in out]


def simulate(ctx: FitContext, thetas: np.ndarray, blocks_in, ts: np.ndarray):
    """Columns with capacities ``thetas`` fed the recorded inlet from clean: outlet (mg/L) at
    the sample times ``ts`` (m, cands, 2), the final liquid and solid states, (block times,
    outlets mol/m3)."""
    m = len(thetas)
    p = with_columns(ctx.p, thetas)
    model = ShadowCarousel("fit", p)
    x = model.initial_state(p)
    u = model.design_inputs(p, 0.0, ctx.c_feed, ctx.h_feed, roles=[ads.ROLE_LEAD] * m)
    i_q, feed = model.input_index["feed_flow"], model._feed
    liq, _, _ = model.split(x)
    times, outs = [blocks_in[0][0]], [liq[:, -1, :].copy()]
    for b0, b1, q, c in blocks_in:
        u[i_q], u[feed] = m * q, c
        x = advance(model, b0, b1, x, u, p, rtol=ctx.cfg.rtol, atol=ctx.cfg.fit_atol)
        liq, _, _ = model.split(x)
        times.append(b1)
        outs.append(liq[:, -1, :].copy())
    outs = np.array(outs)  # (blocks+1, m, Dy Tb H) mol/m3
    mg = outs[..., :2] * ctx.c_feed_mg / ctx.c_feed
    sim = np.stack([np.stack([np.interp(ts, times, mg[:, i, j]) for j in range(2)], axis=-1)
                    for i in range(m)], axis=1)
    liq, sol, _ = model.split(x)
    return sim, liq.copy(), sol.copy(), (np.array(times), outs)


def _residuals(ctx, grid, blk, ts, z, sd):
    """(g, sse) per candidate: the weighted residual sum and the misfit."""
    sim, _, _, _ = simulate(ctx, grid, blk, ts)
    r = np.where(np.isnan(z[:, None, :]), 0.0, (sim - z[:, None, :]) / sd[:, None, :] ** 2)
    sse = np.nansum(((sim - z[:, None, :]) / sd[:, None, :]) ** 2, axis=(0, 2))
    return r.sum(axis=(0, 2)), sse


def _bracket(ctx, blk, ts, z, sd, theta0: float) -> np.ndarray | None:
    """The final grid around the sign change of g (None: no candidate fits better than another)."""
    cfg = ctx.cfg
    lo, hi = cfg.capacity_bounds
    grid = np.geomspace(max(lo, theta0 / 6.0), min(hi, theta0 * 1.5), cfg.fit_candidates)
    widened, shrunk = False, 0
    while shrunk < cfg.fit_shrinks:  # bracket the sign change of the weighted residual, shrink, repeat
        g, sse = _residuals(ctx, grid, blk, ts, z, sd)  # g > 0: breaks through too early (θ too small)
        early = np.flatnonzero(g > 0)
        if early.size and early[-1] < len(grid) - 1:
            i = int(early[-1])
            grid, shrunk = np.geomspace(grid[i], grid[i + 1], cfg.fit_candidates), shrunk + 1
            continue
        if not widened and shrunk == 0:  # outside the first guess: search the whole range
            grid, widened = np.geomspace(lo, hi, cfg.fit_candidates), True
            continue
        if np.ptp(sse) < 1.0:
            return None
        i = 0 if early.size == 0 else len(grid) - 2  # at a bound of the range
        return np.geomspace(grid[i], grid[i + 1], cfg.fit_candidates)
    return grid


def fit(ctx: FitContext, ticks, samples: dict, theta0: float, var0: float):
    """(θ̂, var θ̂, (liquid, solid, block times, outlets) at the end or None: θ kept)."""
    blk = blocks(ticks, ctx.cfg)
    ts = np.array(sorted(samples))
    z = np.full((len(ts), 2), np.nan)
    sd = np.ones((len(ts), 2))
    for i, tsi in enumerate(ts):
        for j, (v, s) in samples[tsi].items():
            z[i, j], sd[i, j] = v, s
    grid = _bracket(ctx, blk, ts, z, sd, theta0)
    if grid is None:
        return theta0, var0, None
    g, sse = _residuals(ctx, grid, blk, ts, z, sd)
    lg = np.log(grid)
    j = int(np.clip(np.searchsorted(-g, 0.0), 1, len(grid) - 1))  # g falls: first g ≤ 0
    w = g[j - 1] / (g[j - 1] - g[j]) if g[j - 1] != g[j] else 0.5
    theta = float(np.exp(lg[j - 1] + np.clip(w, 0.0, 1.0) * (lg[j] - lg[j - 1])))
    a = np.polyfit(lg - lg.mean(), sse, 2)[0]
    var_log = 1.0 / a if a > 0 else (lg[-1] - lg[0]) ** 2
    _, liq, sol, (times, outs) = simulate(ctx, np.array([theta]), blk, ts)
    return theta, theta ** 2 * min(var_log, 1.0), (liq[0], sol[0], times, outs[:, 0, :])

