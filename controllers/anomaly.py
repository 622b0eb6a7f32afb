"""Model-based anomaly detectors and predicted alarms. Every result is a frozen dataclass.

Innovation chi-square (a filter's consistency test): for innovation ν (m) and its covariance S,

    NIS = νᵀ S⁻¹ ν  ~  χ²_m under H0;  alarm when NIS > χ²_m(1 − α)      (α: false-alarm probability)

Two-sided tabular CUSUM (Page 1954; Montgomery, *Statistical Quality Control*, §9.1), on
z = (x − μ₀)/σ with slack k and decision interval h (both in σ):

    S⁺ₙ = max(0, S⁺ₙ₋₁ + zₙ − k),   S⁻ₙ = max(0, S⁻ₙ₋₁ − zₙ − k),   alarm when S± > h

k = δ/2 is optimal for a shift of δσ; the defaults k = 0.25, h = 10 target δ = 0.5σ. Siegmund's
approximation gives the average run length ARL₀ ≈ 1,000 samples between false alarms (two-sided,
i.e. a false-alarm rate ≈ 1e-3 per sample) and ARL₁ ≈ 37 samples to detect a 0.5σ step.
The detector resets both sums after an alarm (``reset_on_alarm``) or on ``reset()``.

Stuck / frozen sensor: over a window of n samples the sensor's standard deviation is below
``floor_fraction · noise_sd`` (a live transmitter always shows its noise) while the process moves:
the reference (a model prediction, estimate, or a redundant measurement) spans more than
``min_reference_span``. The moving condition avoids flagging a steady, quiet process.

Mass balance residual over an interval (mol or kg, any consistent unit):

    r = Σin − Σout − Δinventory,   σ_r = √(σ_in² + σ_out² + σ_Δ²),   alarm when |r| > z_limit·σ_r
    and |r| > rel_tolerance·max(Σin, Σout)

Predicted alarm: least-squares line v = a + b·t through the last ``window_s`` of samples; the time
until v reaches the limit is (limit − v̂(t_now))/b when b points towards the limit (0 when past it,
inf when moving away or flat). The alarm fires when that time is below ``horizon_s``.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import chi2

__all__ = [
    "ChiSquareResult",
    "CrossingPrediction",
    "Cusum",
    "CusumResult",
    "MassBalanceResult",
    "PredictedAlarm",
    "PredictedAlarmResult",
    "StuckResult",
    "StuckSensorDetector",
    "chi_square_test",
    "mass_balance_check",
    "predict_crossing",
]


@dataclass(frozen=True, slots=True)
class ChiSquareResult:
    nis: float
    dof: int
    threshold: float
    p_value: float
    alarm: bool


def chi_square_test(innovation, covariance, alpha: float = 1e-3) -> ChiSquareResult:
    """NIS test of an innovation vector against its covariance (symmetric positive definite)."""
    nu = np.atleast_1d(np.asarray(innovation, dtype=float))
    s = np.atleast_2d(np.asarray(covariance, dtype=float))
    if s.shape != (nu.size, nu.size):
        raise ValueError(f"covariance shape {s.shape} does not match innovation length {nu.size}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    try:
        c = np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        raise ValueError("innovation covariance is not positive definite") from None
    w = np.linalg.solve(c, nu)
    nis = float(w @ w)
    thr = _chi2_quantile(1.0 - alpha, nu.size)
    return ChiSquareResult(nis, nu.size, thr, float(chi2.sf(nis, nu.size)), nis > thr)


@functools.lru_cache(maxsize=256)
def _chi2_quantile(p: float, dof: int) -> float:
    return float(chi2.ppf(p, dof))


@dataclass(frozen=True, slots=True)
class CusumResult:
    s_high: float
    s_low: float
    alarm: bool
    direction: int  # +1 upward shift, -1 downward, 0 none
    samples_since_reset: int


class Cusum:
    """Two-sided CUSUM drift detector on a signal with in-control mean ``target`` and SD ``sigma``."""

    def __init__(self, target: float, sigma: float, k_sigma: float = 0.25, h_sigma: float = 10.0,
                 reset_on_alarm: bool = True):
        if not sigma > 0 or not k_sigma >= 0 or not h_sigma > 0:
            raise ValueError(f"need sigma > 0, k_sigma >= 0, h_sigma > 0; got {sigma}, {k_sigma}, {h_sigma}")
        self.target, self.sigma, self.k, self.h = target, sigma, k_sigma, h_sigma
        self.reset_on_alarm = reset_on_alarm
        self.reset()

    def reset(self, target: float | None = None) -> None:
        if target is not None:
            self.target = target
        self.s_high = self.s_low = 0.0
        self.n = 0

    def update(self, x: float) -> CusumResult:
        z = (x - self.target) / self.sigma
        self.s_high = max(0.0, self.s_high + z - self.k)
        self.s_low = max(0.0, self.s_low - z - self.k)
        self.n += 1
        direction = 1 if self.s_high > self.h else (-1 if self.s_low > self.h else 0)
        out = CusumResult(self.s_high, self.s_low, direction != 0, direction, self.n)
        if direction and self.reset_on_alarm:
            self.reset()
        return out


@dataclass(frozen=True, slots=True)
class StuckResult:
    stuck: bool
    sd: float
    reference_span: float
    n: int


class StuckSensorDetector:
    """Flags a sensor whose noise vanished while the process (``reference``) moved."""

    def __init__(self, noise_sd: float, window: int, min_reference_span: float, floor_fraction: float = 0.1):
        if not noise_sd > 0 or window < 3 or not min_reference_span > 0 or not 0 < floor_fraction < 1:
            raise ValueError("need noise_sd > 0, window >= 3, min_reference_span > 0, 0 < floor_fraction < 1")
        self.floor = floor_fraction * noise_sd
        self.min_span = min_reference_span
        self._x: deque[float] = deque(maxlen=window)
        self._r: deque[float] = deque(maxlen=window)

    def update(self, value: float, reference: float) -> StuckResult:
        self._x.append(value)
        self._r.append(reference)
        n = len(self._x)
        if n < (self._x.maxlen or 0):
            return StuckResult(False, math.nan, math.nan, n)
        sd = float(np.std(np.fromiter(self._x, float), ddof=1))
        r = np.fromiter(self._r, float)
        span = float(r.max() - r.min())
        return StuckResult(sd < self.floor and span > self.min_span, sd, span, n)


@dataclass(frozen=True, slots=True)
class MassBalanceResult:
    residual: float
    sd: float
    z: float
    relative: float
    alarm: bool


def mass_balance_check(total_in: float, total_out: float, accumulation: float, *, sd_in: float,
                       sd_out: float, sd_accumulation: float, z_limit: float = 4.0,
                       rel_tolerance: float = 0.0) -> MassBalanceResult:
    """Residual of in − out − accumulation over one interval, tested against its propagated SD."""
    r = total_in - total_out - accumulation
    sd = math.sqrt(sd_in**2 + sd_out**2 + sd_accumulation**2)
    scale = max(abs(total_in), abs(total_out))
    rel = abs(r) / scale if scale > 0 else math.inf if r else 0.0
    z = abs(r) / sd if sd > 0 else (math.inf if r else 0.0)
    return MassBalanceResult(r, sd, z, rel, z > z_limit and rel > rel_tolerance)


@dataclass(frozen=True, slots=True)
class CrossingPrediction:
    time_to_limit_s: float
    slope_per_s: float
    value_now: float
    crossed: bool


def predict_crossing(t, v, limit: float, direction: Literal["rising", "falling"]) -> CrossingPrediction:
    """Time until a least-squares line through (t, v) reaches ``limit`` from the last time in ``t``."""
    if direction not in ("rising", "falling"):
        raise ValueError(f"direction must be 'rising' or 'falling'; got {direction!r}")
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    if t.size < 2 or t.size != v.size:
        raise ValueError("need at least two (t, v) pairs of equal length")
    tm = t - t[-1]
    b, a = np.polyfit(tm, v, 1)
    now = float(a)
    sign = 1.0 if direction == "rising" else -1.0
    if sign * (now - limit) >= 0:
        return CrossingPrediction(0.0, float(b), now, True)
    if sign * b <= 0:
        return CrossingPrediction(math.inf, float(b), now, False)
    return CrossingPrediction(float((limit - now) / b), float(b), now, False)


@dataclass(frozen=True, slots=True)
class PredictedAlarmResult:
    alarm: bool
    prediction: CrossingPrediction | None


class PredictedAlarm:
    """Streaming predicted alarm: fires when the extrapolated crossing is within ``horizon_s``."""

    def __init__(self, limit: float, direction: Literal["rising", "falling"], window_s: float,
                 horizon_s: float, min_points: int = 5):
        if not window_s > 0 or not horizon_s > 0 or min_points < 2:
            raise ValueError("need window_s > 0, horizon_s > 0, min_points >= 2")
        self.limit, self.direction = limit, direction
        self.window_s, self.horizon_s, self.min_points = window_s, horizon_s, min_points
        self._t: deque[float] = deque()
        self._v: deque[float] = deque()

    def update(self, t: float, value: float) -> PredictedAlarmResult:
        if self._t and t <= self._t[-1]:
            return self._evaluate()  # the same sample re-read (analysers): nothing new
        self._t.append(t)
        self._v.append(value)
        while self._t and self._t[0] < t - self.window_s:
            self._t.popleft()
            self._v.popleft()
        return self._evaluate()

    def _evaluate(self) -> PredictedAlarmResult:
        if len(self._t) < self.min_points:
            return PredictedAlarmResult(False, None)
        p = predict_crossing(list(self._t), list(self._v), self.limit, self.direction)
        return PredictedAlarmResult(p.time_to_limit_s <= self.horizon_s, p)
