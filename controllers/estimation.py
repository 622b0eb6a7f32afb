"""State estimation: an extended Kalman filter per unit that uses tag quality and analyser delay.

A unit's estimator pairs a reduced *model* (``EstimationModel``: a few states built from the twin's
own equations, see ``estimation_cell`` and ``estimation_cascade``) with ``DelayedEkf``:

    predict   x⁻ₖ = f(x⁺ₖ₋₁, uₖ₋₁, Δt)          Pⁿ = Φ P Φᵀ + Q·Δt,   Φ = exp(A Δt), A = ∂f_c/∂x
    update    ν = z − h(x⁻),  S = H P Hᵀ + R,  NIS = ν²/S,  K = P Hᵀ / S       (scalar, sequential)
              x⁺ = x⁻ + K ν,  P⁺ = (I − K H) P (I − K H)ᵀ + K R Kᵀ              (Joseph form)

Quality (``twin.signals.Quality``): BAD samples are dropped; UNCERTAIN ones enter with
R·``uncertain_variance_factor``; a sensor sample older than ``stale_after_s`` is dropped.
Outliers: a sample whose NIS exceeds ``gate_chi2`` (χ²₁ quantile; 10.83 = 99.9 %) is gated.
A tag gated ``persistent_gate_count`` times in a row is no outlier but a change of the plant the
model has not followed: its next sample is accepted after scaling the covariance by the fading
factor λ = NIS/gate (a strong-tracking filter step), so the estimate can catch up.

Analyser delay: an analyser reports its value ``delay_s`` after sampling, stamped with the
*sample* time. The filter keeps a history of every tick over ``history_s``: prior and posterior
mean and covariance, Φ, Q, h and H at the prior, and the sensor updates applied with their
linearisation (h(x⁻), H, R).
A delayed sample is applied at the last tick at or before its sample time, and the ticks from
there to now are re-run *linearised about the stored trajectory*:

    x⁻ⱼ' = x⁻ⱼ + Φⱼ (x⁺ⱼ₋₁' − x⁺ⱼ₋₁),   h(x⁻ⱼ') ≈ h(x⁻ⱼ) + H (x⁻ⱼ' − x⁻ⱼ)

which is exact for a linear model and costs only n×n products per stored tick (no model
evaluation), so a 30-minute delay at a 1 s tick re-runs in tens of milliseconds. The stored
trajectory is then replaced by the re-run one, so later delayed samples chain correctly. The
channels of one analyser that arrive together with one sample time share one re-run: each is
gated against that tick's posterior after the ones before it (as one re-run per sample would),
then the ticks after it are re-run once.
``delay_mode="on_arrival"`` gives the naive filter (the sample treated as if taken now) for
comparison.

Conventions: measurements are in the tag's engineering units; ``step(snapshot, inputs, t)``
takes the inputs *applied over the interval that ends at t* (the previous tick's writes); a
missing input is read from the snapshot by the model. Estimates are published as tags named
``<TAG>.EST``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from pydantic import Field
from scipy.linalg import expm

from pilot_config.base import StrictModel
from twin.signals import Quality, Sample

log = logging.getLogger(__name__)


class EstimatorConfig(StrictModel):
    """Tuning shared by the unit estimators (defaults shipped; the lead wires them into the YAML)."""

    gate_chi2: float = Field(10.83, gt=0, le=1000, description="NIS gate, χ²(1) quantile (99.9 %)")
    uncertain_variance_factor: float = Field(10.0, ge=1, le=1e6, description="R multiplier, UNCERTAIN")
    stale_after_s: float = Field(300.0, gt=0, le=86400, description="sensor samples older are dropped")
    history_s: float = Field(7200.0, gt=0, le=172800, description="window for delayed analyser samples")
    persistent_gate_count: int = Field(
        3, ge=1, le=1000, description="after this many gated samples in a row, accept with a fading P")
    delay_mode: Literal["at_sample_time", "on_arrival"] = Field(
        "at_sample_time", description="on_arrival: naive filter, for comparison only")


@dataclass(frozen=True)
class Channel:
    """One measured tag: its index in the model's output vector and its noise sd (eng units)."""

    tag: str
    output: int
    sd: float
    analyser: bool


@dataclass(frozen=True)
class EstimateResult:
    t: float
    unit: str
    x: Mapping[str, float]  # state estimate by name
    cov_diag: Mapping[str, float]  # diagonal of the covariance P, by state name
    innovations: Mapping[str, float]  # tag -> ν of the samples used this tick
    nis: Mapping[str, float]  # tag -> ν²/S (used and gated samples)
    used: tuple[str, ...]
    dropped: Mapping[str, str]  # tag -> why
    derived: Mapping[str, float]  # quantities computed from x̂ (purity, profile, ...)
    published: Mapping[str, float]  # '<TAG>.EST' -> value, engineering units

    @property
    def std(self) -> dict[str, float]:
        """Standard deviation of each state estimate."""
        return {k: float(np.sqrt(max(v, 0.0))) for k, v in self.cov_diag.items()}


class EstimationModel(Protocol):
    """A reduced model the filter runs on (all arrays in the model's own units)."""

    unit: str
    state_names: tuple[str, ...]
    channels: tuple[Channel, ...]

    def inputs(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> np.ndarray: ...

    def predict(self, x: np.ndarray, u: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """(x at t + dt, Φ)."""
        ...

    def process_noise(self, x: np.ndarray, dt: float) -> np.ndarray: ...

    def measure(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h(x) for every channel output, H = ∂h/∂x)."""
        ...

    def after_update(self, x: np.ndarray, snapshot: Mapping[str, Sample]) -> np.ndarray: ...

    def derived(self, x: np.ndarray, u: np.ndarray) -> dict[str, float]: ...

    def published(self, x: np.ndarray, derived: Mapping[str, float]) -> dict[str, float]: ...


def discretise(a: np.ndarray, dt: float) -> np.ndarray:
    """Φ = exp(A·Δt)."""
    return expm(a * dt)


def fd_jacobian(fun, x: np.ndarray, rel: float = 1e-6, floor: float = 1e-9) -> np.ndarray:
    """Forward-difference Jacobian of a vector function (for the small reduced models)."""
    f0 = np.asarray(fun(x), dtype=float)
    jac = np.empty((f0.size, x.size))
    for i in range(x.size):
        h = rel * max(abs(x[i]), floor / rel)
        xp = x.copy()
        xp[i] += h
        jac[:, i] = (np.asarray(fun(xp)) - f0) / h
    return jac


@dataclass
class _Update:
    tag: str
    z: float
    hx: float  # h(x⁻) at the stored prior
    hrow: np.ndarray
    r: float
    delayed: bool


@dataclass
class _Tick:
    t: float
    phi: np.ndarray
    q: np.ndarray
    x_prior: np.ndarray
    p_prior: np.ndarray
    x_post: np.ndarray
    p_post: np.ndarray
    hx: np.ndarray  # h(x_lin) of every model output, for delayed samples of this tick
    hmat: np.ndarray
    x_lin: np.ndarray
    updates: list[_Update] = field(default_factory=list)


def joseph_update(x, p, hrow, nu, r):
    """Scalar Kalman update; returns (x⁺, P⁺, S)."""
    ph = p @ hrow
    s = float(hrow @ ph + r)
    k = ph / s
    x = x + k * nu
    ikh = np.outer(-k, hrow)  # I − k hᵀ
    ikh.flat[::x.size + 1] += 1.0
    p = ikh @ p @ ikh.T + r * np.outer(k, k)
    return x, p, s


class DelayedEkf:
    """EKF on an ``EstimationModel`` with quality screening, χ² gating and delayed analysers."""

    def __init__(self, model: EstimationModel, x0: np.ndarray, p0_diag: np.ndarray,
                 config: EstimatorConfig | None = None):
        self.model = model
        self.cfg = config or EstimatorConfig()
        self.x = np.array(x0, dtype=float)
        self.p = np.diag(np.asarray(p0_diag, dtype=float))
        self.t: float | None = None
        self.history: deque[_Tick] = deque()
        self._last_source: dict[str, float] = {}
        self._gated_run: dict[str, int] = {}

    # -- one tick ------------------------------------------------------------------------
    def step(self, snapshot: Mapping[str, Sample], inputs: Mapping[str, float], t: float) -> EstimateResult:
        m = self.model
        u = m.inputs(snapshot, inputs)
        n = self.x.size
        if self.t is None or t <= self.t:
            phi, q, x_prior, p_prior = np.eye(n), np.zeros((n, n)), self.x.copy(), self.p.copy()
        else:
            x_prior, phi = m.predict(self.x, u, t - self.t)
            q = m.process_noise(self.x, t - self.t)
            p_prior = phi @ self.p @ phi.T + q
        hx, hmat = m.measure(x_prior, u)
        tick = _Tick(t, phi, q, x_prior, p_prior, x_prior.copy(), p_prior.copy(), hx, hmat, x_prior.copy())
        out = _TickReport()
        delayed = []
        for ch in m.channels:
            sample = snapshot.get(ch.tag)
            reason, r = self._screen(ch, sample, t)
            if reason == "":
                continue
            if reason is not None:
                out.dropped[ch.tag] = reason
                continue
            if ch.analyser and self.cfg.delay_mode == "at_sample_time" and sample.source_time < t - 1e-9:
                delayed.append((ch, sample, r))
                continue
            self._apply_now(tick, ch, sample, hx[ch.output], hmat[ch.output], r, out)
        self._append(tick)
        pending = None  # the tick whose delayed updates still await the re-run to now
        for ch, sample, r in delayed:
            pending = self._apply_delayed(ch, sample, r, out, pending)
        if pending is not None:
            self._rerun(pending)
        self.x = m.after_update(self.history[-1].x_post, snapshot)
        self.history[-1].x_post = self.x.copy()
        self.p = self.history[-1].p_post
        self.t = t
        return self._result(t, u, out)

    def _screen(self, ch: Channel, sample: Sample | None, t: float) -> tuple[str | None, float]:
        """(None, R) to use the sample; ("", 0) if it is not new; (reason, 0) to drop it."""
        if sample is None:
            return "missing from the snapshot", 0.0
        if sample.source_time <= self._last_source.get(ch.tag, -np.inf):
            return "", 0.0
        self._last_source[ch.tag] = sample.source_time
        if sample.quality == Quality.BAD:
            return "bad quality", 0.0
        if not np.isfinite(sample.value):
            return "not a finite number", 0.0
        if not ch.analyser and t - sample.source_time > self.cfg.stale_after_s:
            return f"stale ({t - sample.source_time:.0f} s old)", 0.0
        r = ch.sd ** 2
        if sample.quality == Quality.UNCERTAIN:
            r *= self.cfg.uncertain_variance_factor
        return None, r

    def _gate(self, tag: str, nu: float, s: float, out: _TickReport) -> float:
        """0 to gate the sample, else the factor to scale P by before the update (1: normal)."""
        nis = nu * nu / s
        out.nis[tag] = nis
        if nis <= self.cfg.gate_chi2:
            self._gated_run[tag] = 0
            return 1.0
        run = self._gated_run.get(tag, 0) + 1
        self._gated_run[tag] = run
        if run > self.cfg.persistent_gate_count:
            self._gated_run[tag] = 0
            log.info("%s: %s persistently off (NIS %.1f): accepted with fading P", self.model.unit, tag, nis)
            return nis / self.cfg.gate_chi2
        out.dropped[tag] = f"gated: NIS {nis:.1f} > {self.cfg.gate_chi2:g}"
        log.debug("%s: %s gated (NIS %.1f)", self.model.unit, tag, nis)
        return 0.0

    def _apply_now(self, tick: _Tick, ch: Channel, sample: Sample, hx: float, hrow: np.ndarray,
                   r: float, out: _TickReport) -> None:
        nu = sample.value - (hx + hrow @ (tick.x_post - tick.x_prior))
        s = float(hrow @ tick.p_post @ hrow + r)
        fade = self._gate(ch.tag, nu, s, out)
        if not fade:
            return
        tick.p_post = tick.p_post * fade
        tick.x_post, tick.p_post, _ = joseph_update(tick.x_post, tick.p_post, hrow, nu, r)
        tick.updates.append(_Update(ch.tag, sample.value, hx, hrow.copy(), r, False))
        out.used.append(ch.tag)
        out.innovations[ch.tag] = nu

    def _append(self, tick: _Tick) -> None:
        self.history.append(tick)
        while self.history and self.history[0].t < tick.t - self.cfg.history_s:
            self.history.popleft()

    # -- delayed analyser samples ----------------------------------------------------------
    def _apply_delayed(self, ch: Channel, sample: Sample, r: float, out: _TickReport,
                       pending: int | None) -> int | None:
        """Gate ``sample`` against the state at its sample time and add it to that tick's updates.
        Returns the tick the re-run to now must start from (None: nothing to re-run). Samples of
        one tick (an analyser's channels, sampled together) share one re-run: ``pending`` is the
        tick of the previous samples' updates, re-run here first only if this sample is of
        another tick, so each sample still meets the state its predecessors left."""
        ticks = self.history
        j0 = next((j for j in range(len(ticks) - 1, -1, -1) if ticks[j].t <= sample.source_time + 1e-9),
                  None)
        if j0 is None:
            out.dropped[ch.tag] = "sample time older than the estimator's history"
            return pending
        if pending is not None and pending != j0:
            self._rerun(pending)
            pending = None
        tk = ticks[j0]
        hrow = tk.hmat[ch.output]
        hx = float(tk.hx[ch.output] + hrow @ (tk.x_prior - tk.x_lin))  # h at the (re-run) prior
        # innovation against the state *at the sample time*, after that tick's own updates
        x_post, p_post = (tk.x_post, tk.p_post) if pending is None else self._posterior(tk)
        nu = sample.value - (hx + hrow @ (x_post - tk.x_prior))
        s = float(hrow @ p_post @ hrow + r)
        fade = self._gate(ch.tag, nu, s, out)
        if not fade:
            return pending
        if fade != 1.0:
            tk.p_prior = tk.p_prior * fade
        tk.updates.append(_Update(ch.tag, sample.value, hx, hrow.copy(), r, True))
        out.used.append(ch.tag)
        out.innovations[ch.tag] = nu
        return j0

    @staticmethod
    def _posterior(tk: _Tick) -> tuple[np.ndarray, np.ndarray]:
        """The tick's posterior from its stored prior and updates (the first step of ``_rerun``)."""
        x, p = tk.x_prior.copy(), tk.p_prior.copy()
        for up in tk.updates:
            x, p, _ = joseph_update(x, p, up.hrow, up.z - (up.hx + up.hrow @ (x - tk.x_prior)), up.r)
        return x, p

    def _rerun(self, j0: int) -> None:
        """Re-run the filter from tick j0 to now, linearised about the stored trajectory."""
        ticks = self.history
        prev_old = prev_new = None
        p_prev = None
        for j in range(j0, len(ticks)):
            tk = ticks[j]
            if j == j0:
                x_pr, p_pr = tk.x_prior.copy(), tk.p_prior.copy()
            else:
                x_pr = tk.x_prior + tk.phi @ (prev_new - prev_old)
                p_pr = tk.phi @ p_prev @ tk.phi.T + tk.q
            x, p = x_pr.copy(), p_pr.copy()
            for up in tk.updates:
                nu = up.z - (up.hx + up.hrow @ (x - tk.x_prior))
                x, p, _ = joseph_update(x, p, up.hrow, nu, up.r)
                up.hx = float(up.hx + up.hrow @ (x_pr - tk.x_prior))
            prev_old, prev_new, p_prev = tk.x_post, x, p
            tk.x_prior, tk.p_prior, tk.x_post, tk.p_post = x_pr, p_pr, x, p

    # -- result ----------------------------------------------------------------------------
    def _result(self, t: float, u: np.ndarray, out: _TickReport) -> EstimateResult:
        names = self.model.state_names
        derived = self.model.derived(self.x, u)
        return EstimateResult(
            t=t, unit=self.model.unit, x=dict(zip(names, self.x.tolist())),
            cov_diag=dict(zip(names, np.diag(self.p).tolist())), innovations=dict(out.innovations), nis=dict(out.nis),
            used=tuple(out.used), dropped=dict(out.dropped), derived=derived,
            published=self.model.published(self.x, derived))


@dataclass
class _TickReport:
    used: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    innovations: dict[str, float] = field(default_factory=dict)
    nis: dict[str, float] = field(default_factory=dict)
