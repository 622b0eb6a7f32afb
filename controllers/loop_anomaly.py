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

An id the loop cannot evaluate keeps its condition (the manager freezes external alarms absent
from ``conditions``); ``unknown_ids`` lists them so the caller can say so once.
Estimate thresholds are hysteretic (``deadband`` as a fraction of the threshold), so an estimate
wandering about its limit cannot chatter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import Field

from pilot_config.base import StrictModel
from pilot_config.control import AlarmsConfig
from twin.signals import Quality, Snapshot

from .anomaly import PredictedAlarm

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


class AnomalyChecks:
    """External-alarm conditions from the snapshot and this tick's published estimates."""

    def __init__(self, alarms: AlarmsConfig, config: AnomalyConfig | None = None,
                 feed_ratio_design: float | None = None):
        self.cfg = c = config or AnomalyConfig()
        self.feed_ratio_design = feed_ratio_design
        limits = {a.tag: a for a in alarms.limit}
        self.predicted: dict[str, tuple[str, PredictedAlarm]] = {}
        self.estimate: dict[str, tuple[str, str, float]] = {}  # id -> (est tag, sense, threshold)
        self.unknown_ids: list[str] = []
        self._cond: dict[str, bool] = {}
        self._last_t: dict[str, float] = {}
        self.ids = {ext.id for ext in alarms.external}
        for ext in alarms.external:
            aid = ext.id
            if self._predicted(aid, ext.tag, limits.get(ext.tag)):
                continue
            if aid == "SX.FEED.RATIO" and feed_ratio_design:
                continue
            for rx, est, field, sense in _EST_RULES:
                m = rx.match(aid)
                if m:
                    self.estimate[aid] = (est.format(**m.groupdict()), sense, getattr(c, field))
                    break
            else:
                self.unknown_ids.append(aid)

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

    def step(self, snapshot: Snapshot, t: float, published: Mapping[str, float]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for aid, (tag, pred) in self.predicted.items():
            s = snapshot.get(tag)
            if s is None or s.quality == Quality.BAD or s.source_time <= self._last_t.get(tag, -1e300):
                continue
            self._last_t[tag] = s.source_time
            out[aid] = pred.update(s.source_time, s.value).alarm
        for aid, (est, sense, threshold) in self.estimate.items():
            if est in published:
                out[aid] = self._hysteresis(aid, published[est], sense, threshold)
        ratio = published.get("SX.FEED.DY_TB.EST")
        if "SX.FEED.RATIO" in self.ids and self.feed_ratio_design and ratio is not None:
            dev = abs(ratio / self.feed_ratio_design - 1.0)
            out["SX.FEED.RATIO"] = self._hysteresis("SX.FEED.RATIO", dev, "high", self.cfg.feed_ratio_rel)
        return out
