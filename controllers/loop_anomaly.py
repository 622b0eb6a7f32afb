"""Conditions of the line's external alarms, computed each tick by the control loop.

The alarm manager annunciates an external alarm (``control.alarms.external`` in the YAML) from a
boolean the caller hands in. The loop computes those booleans here, by alarm id:

| id | condition | default |
|---|---|---|
| ``<TAG>.PRED_LO`` / ``<TAG>.PRED_HI`` / ``<TAG>.PRED`` | least-squares line through the last ``predict_window_s`` of fresh ``<TAG>`` samples reaches the tag's L (``PRED_LO``) or H (``PRED_HI``, ``PRED``) alarm limit within ``predict_horizon_s`` (``anomaly.PredictedAlarm``) | 30 min / 30 min |
| ``<CELL>.CE.LO`` | estimated current efficiency ``<CELL>.CE.EST`` below ``ce_low_pct`` (clears ``deadband`` above) | 70 % (design ≈ 84 %) |
| ``SX.KEX.LO`` | estimated extractant activity ``SX.KEX.EST`` (factor on Kex) below ``kex_low`` | 0.9 |
| ``SX.FEED.RATIO`` | estimated feed Dy/Tb ratio ``SX.FEED.DY_TB.EST`` off its design value by more than ``feed_ratio_rel`` | ±15 % |
| ``ADS.COL<k>.CAPACITY.LO`` | carousel estimator's capacity factor of column k below ``capacity_low`` (when the carousel estimator publishes ``ADS.COL<k>.CAPACITY.EST``) | 0.8 |
| ``<TAG>.STUCK`` | frozen transmitter: the SD of the last ``stuck_window`` fresh samples of ``<TAG>`` below ``stuck_floor`` × its configured ``noise_sd`` (a live transmitter always shows its noise; the plant clock moving is the reference of ``anomaly.StuckSensorDetector``) | 10 samples, 0.1 |
| ``<TAG>.INNOV`` | estimator inconsistency: the sum of the NIS of the last ``innov_window`` samples of ``<TAG>`` the estimator screened exceeds the χ² quantile of that many degrees of freedom at ``1 − innov_alpha`` (``anomaly.chi_square_test`` on the stacked normalised innovations) | 10, 1e-3 |
| ``<CIRCUIT>.BALANCE`` | closed circuit (in − out = 0, e.g. the organic solvent loop) whose inventory sensor is the alarm's ``tag``: the accumulation Δ over ``balance_window_s`` (means of the first and last ``balance_avg`` fresh samples) tested by ``anomaly.mass_balance_check(0, 0, Δ)`` with σ_Δ = noise_sd·√(2/balance_avg); alarm beyond ``balance_z`` σ | 30 min, 5, 6σ |
| ``<TAG>.DRIFT`` | slow bias between sensor and model: two-sided CUSUM (``anomaly.Cusum``, target 0, σ 1) on the normalised innovations z = sign(ν)·√NIS of ``<TAG>``; latched until the CUSUM of the opposite sign fires or ``drift_clear_samples`` pass without an alarm | k 0.25, h 10 |

An id the loop cannot evaluate keeps its condition (the manager freezes external alarms absent
from ``conditions``); ``unknown_ids`` lists them so the caller can say so once.
Estimate thresholds are hysteretic (``deadband`` as a fraction of the threshold), so an estimate
wandering about its limit cannot chatter.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field

from pilot_config.base import StrictModel
from pilot_config.control import AlarmsConfig
from twin.signals import Quality, Sample, Snapshot

from .anomaly import (
    Cusum,
    PredictedAlarm,
    StuckSensorDetector,
    chi_square_test,
    mass_balance_check,
)

_EST_RULES = (
    (re.compile(r"^(?P<p>CELL\d+)\.CE\.LO$"), "{p}.CE.EST", "ce_low_pct", "low"),
    (re.compile(r"^SX\.KEX\.LO$"), "SX.KEX.EST", "kex_low", "low"),
    (re.compile(r"^(?P<p>ADS\.COL\d+)\.CAPACITY\.LO$"), "{p}.CAPACITY.EST", "capacity_low", "low"),
)


class AnomalyConfig(StrictModel):
    predict_window_s: float = Field(1800.0, gt=0, le=86400, description="fit window of predicted alarms")
    predict_horizon_s: float = Field(1800.0, gt=0, le=86400, description="alarm when the limit is this close")
    ce_low_pct: float = Field(70.0, gt=0, le=100, description="current efficiency estimate, %")
    kex_low: float = Field(0.9, gt=0, le=2, description="extractant activity factor estimate")
    feed_ratio_rel: float = Field(0.15, gt=0, le=10, description="relative deviation of the feed Dy/Tb ratio")
    capacity_low: float = Field(0.8, gt=0, le=2, description="adsorbent capacity factor estimate")
    deadband: float = Field(0.03, ge=0, le=1, description="hysteresis, fraction of the threshold")
    stuck_window: int = Field(10, ge=3, le=1000, description="fresh samples a frozen transmitter must repeat")
    stuck_floor: float = Field(0.1, gt=0, lt=1, description="SD floor, fraction of the tag's noise_sd")
    innov_window: int = Field(10, ge=1, le=1000, description="samples stacked in the NIS test")
    innov_alpha: float = Field(1e-3, gt=0, lt=0.5, description="false-alarm probability of the NIS test")
    cusum_k: float = Field(0.25, ge=0, le=5, description="CUSUM slack, in sigma")
    cusum_h: float = Field(10.0, gt=0, le=100, description="CUSUM decision interval, in sigma")
    drift_clear_samples: int = Field(60, ge=1, le=100000, description="samples without a CUSUM alarm that clear DRIFT")
    balance_window_s: float = Field(1800.0, gt=0, le=86400, description="interval of the BALANCE residual")
    balance_avg: int = Field(5, ge=1, le=1000, description="samples averaged at each end of the interval")
    balance_z: float = Field(6.0, gt=0, le=100, description="BALANCE alarm threshold, in sigma of the residual")


class AnomalyChecks:
    """External-alarm conditions from the snapshot and this tick's published estimates."""

    def __init__(self, alarms: AlarmsConfig, config: AnomalyConfig | None = None,
                 feed_ratio_design: float | None = None, tags: Sequence = ()):
        self.cfg = c = config or AnomalyConfig()
        noise = {tg.name: float(getattr(tg, "noise_sd", 0.0) or 0.0) for tg in tags}
        self.stuck: dict[str, tuple[str, StuckSensorDetector]] = {}
        self.innov: dict[str, tuple[str, deque]] = {}
        self.drift: dict[str, tuple[str, Cusum, list]] = {}  # id -> (tag, CUSUM, [latched, quiet samples])
        self.balance: dict[str, tuple[str, float, deque]] = {}  # id -> (tag, noise_sd, (t, value) samples)
        self.feed_ratio_design = feed_ratio_design
        limits = {a.tag: a for a in alarms.limit}
        self.predicted: dict[str, tuple[str, PredictedAlarm]] = {}
        self.estimate: dict[str, tuple[str, str, float]] = {}  # id -> (est tag, sense, threshold)
        self.unknown_ids: list[str] = []
        self._cond: dict[str, bool] = {}
        self._last_t: dict[str, float] = {}  # rule id -> source time of the last sample it used
        self.ids = {ext.id for ext in alarms.external}
        for ext in alarms.external:
            aid = ext.id
            if self._predicted(aid, ext.tag, limits.get(ext.tag)):
                continue
            if aid == "SX.FEED.RATIO" and feed_ratio_design:
                continue
            if self._signal_rule(aid, noise, ext.tag):
                continue
            for rx, est, field, sense in _EST_RULES:
                m = rx.match(aid)
                if m:
                    self.estimate[aid] = (est.format(**m.groupdict()), sense, getattr(c, field))
                    break
            else:
                self.unknown_ids.append(aid)

    def _signal_rule(self, aid: str, noise: Mapping[str, float], ext_tag: str) -> bool:
        c = self.cfg
        tag, _, kind = aid.rpartition(".")
        if kind == "BALANCE":
            tag = ext_tag  # <CIRCUIT>.BALANCE watches the alarm's tag, the circuit's inventory
        if kind == "STUCK" and noise.get(tag, 0.0) > 0:
            self.stuck[aid] = (tag, StuckSensorDetector(noise[tag], c.stuck_window, 1e-9, c.stuck_floor))
        elif kind == "INNOV":
            self.innov[aid] = (tag, deque(maxlen=c.innov_window))
        elif kind == "BALANCE" and noise.get(tag, 0.0) > 0:
            self.balance[aid] = (tag, noise[tag], deque())
        elif kind == "DRIFT":
            self.drift[aid] = (tag, Cusum(0.0, 1.0, c.cusum_k, c.cusum_h), [False, 0])
        else:
            return False
        return True

    def _fresh(self, snapshot: Snapshot, aid: str, tag: str) -> Sample | None:
        """``tag``'s sample if it is usable (not BAD) and newer than the last one rule ``aid`` saw."""
        s = snapshot.get(tag)
        if s is None or s.quality == Quality.BAD or s.source_time <= self._last_t.get(aid, -math.inf):
            return None
        self._last_t[aid] = s.source_time
        return s

    def _signals(self, snapshot: Snapshot, nis: Mapping[str, float], nu: Mapping[str, float],
                 out: dict[str, bool]) -> None:
        for aid, (tag, det) in self.stuck.items():
            if (s := self._fresh(snapshot, aid, tag)) is not None:
                out[aid] = det.update(float(s.value), s.source_time).stuck
        for aid, (tag, window) in self.innov.items():
            if tag in nis and math.isfinite(nis[tag]):
                window.append(math.sqrt(max(nis[tag], 0.0)))
                if len(window) == window.maxlen:
                    z = np.fromiter(window, float)
                    out[aid] = chi_square_test(z, np.eye(z.size), self.cfg.innov_alpha).alarm
        for aid, (tag, sd, samples) in self.balance.items():
            if (s := self._fresh(snapshot, aid, tag)) is not None:
                out[aid] = self._balance(samples, s.source_time, float(s.value), sd)
        for aid, (tag, cusum, state) in self.drift.items():
            if tag in nis and math.isfinite(nis[tag]) and tag in nu:
                z = math.copysign(math.sqrt(max(nis[tag], 0.0)), nu[tag])
                res = cusum.update(z)
                if res.alarm:
                    state[0], state[1] = True, 0
                else:
                    state[1] += 1
                    if state[1] >= self.cfg.drift_clear_samples:
                        state[0] = False
                out[aid] = state[0]

    def _balance(self, samples: deque, t: float, value: float, noise_sd: float) -> bool:
        """Closed circuit: in = out = 0, so the inventory's change over the window is the residual."""
        c = self.cfg
        samples.append((t, value))
        while samples and samples[0][0] < t - c.balance_window_s - 1e-9:
            samples.popleft()
        k = c.balance_avg
        if len(samples) < 2 * k or samples[-1][0] - samples[0][0] < 0.9 * c.balance_window_s:
            return False
        values = [v for _, v in samples]
        accumulation = (sum(values[-k:]) - sum(values[:k])) / k
        return mass_balance_check(0.0, 0.0, accumulation, sd_in=0.0, sd_out=0.0,
                                  sd_accumulation=noise_sd * math.sqrt(2.0 / k), z_limit=c.balance_z).alarm

    def _predicted(self, aid: str, tag: str, lim) -> bool:
        if lim is None:
            return False
        if aid.endswith(".PRED_LO") and lim.l_eng is not None:
            limit, direction = lim.l_eng, "falling"
        elif aid.endswith((".PRED_HI", ".PRED")) and lim.h_eng is not None:
            limit, direction = lim.h_eng, "rising"
        else:
            return False
        self.predicted[aid] = (tag, PredictedAlarm(limit, direction, self.cfg.predict_window_s,
                                                   self.cfg.predict_horizon_s))
        return True

    def _hysteresis(self, aid: str, value: float, sense: str, threshold: float) -> bool:
        was = self._cond.get(aid, False)
        band = self.cfg.deadband * abs(threshold)
        if sense == "low":
            now = value < threshold + (band if was else 0.0)
        else:
            now = value > threshold - (band if was else 0.0)
        self._cond[aid] = now
        return now

    def step(self, snapshot: Snapshot, t: float, published: Mapping[str, float],
             nis: Mapping[str, float] | None = None, innovations: Mapping[str, float] | None = None
             ) -> dict[str, bool]:
        """Conditions by alarm id. ``nis`` / ``innovations``: tag -> NIS and ν of the samples the
        estimators screened this tick (the INNOV and DRIFT rules)."""
        out: dict[str, bool] = {}
        self._signals(snapshot, nis or {}, innovations or {}, out)
        for aid, (tag, pred) in self.predicted.items():
            if (s := self._fresh(snapshot, aid, tag)) is not None:
                out[aid] = pred.update(s.source_time, s.value).alarm
        for aid, (est, sense, threshold) in self.estimate.items():
            if est in published:
                out[aid] = self._hysteresis(aid, published[est], sense, threshold)
        ratio = published.get("SX.FEED.DY_TB.EST")
        if "SX.FEED.RATIO" in self.ids and self.feed_ratio_design and ratio is not None:
            dev = abs(ratio / self.feed_ratio_design - 1.0)
            out["SX.FEED.RATIO"] = self._hysteresis("SX.FEED.RATIO", dev, "high", self.cfg.feed_ratio_rel)
        return out
