"""Configuration of the alarm system and of the write guard (``control:`` in the plant YAML).

Alarm limits, deadbands and engineered write limits are in the *engineering units of the tag*
they apply to (the tag's ``unit``): hence the ``_eng`` suffix. Times are seconds. Priorities
follow ISA-18.2 / EEMUA 191 practice: 1 critical, 2 high, 3 medium, 4 low.

``ControlConfig.check_tags(tags)`` cross-checks every tag name against the line's tag list
(called from ``PilotLineConfig``'s validator), so a typo fails when the file is loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel
from .tags import Tag

Priority = int  # 1 critical .. 4 low
LoopMode = Literal["manual", "advisory", "auto"]
_TAG_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"
_MAX_DELAY_S = 3600.0


class LimitAlarmConfig(StrictModel):
    """HH / H / L / LL limit alarms on one analog tag (give at least one limit)."""

    tag: str = Field(pattern=_TAG_PATTERN)
    hh_eng: float | None = Field(None, ge=-1e9, le=1e9, description="high-high limit, tag units")
    h_eng: float | None = Field(None, ge=-1e9, le=1e9, description="high limit, tag units")
    l_eng: float | None = Field(None, ge=-1e9, le=1e9, description="low limit, tag units")
    ll_eng: float | None = Field(None, ge=-1e9, le=1e9, description="low-low limit, tag units")
    deadband_eng: float = Field(0.0, ge=0, le=1e9, description="clear only this far back inside the limit")
    on_delay_s: float = Field(0.0, ge=0, le=_MAX_DELAY_S, description="condition must hold this long to raise")
    off_delay_s: float = Field(0.0, ge=0, le=_MAX_DELAY_S, description="condition must be gone this long to clear")
    hh_priority: Priority = Field(1, ge=1, le=4)
    h_priority: Priority = Field(3, ge=1, le=4)
    l_priority: Priority = Field(3, ge=1, le=4)
    ll_priority: Priority = Field(1, ge=1, le=4)
    unit: str | None = Field(None, min_length=1, description="plant unit (default: first part of the tag's signal)")
    description: str = ""

    @model_validator(mode="after")
    def _order(self) -> LimitAlarmConfig:
        given = [(n, v) for n, v in (("ll_eng", self.ll_eng), ("l_eng", self.l_eng),
                                     ("h_eng", self.h_eng), ("hh_eng", self.hh_eng)) if v is not None]
        if not given:
            raise ValueError(f"limit alarm on {self.tag}: give at least one of hh_eng, h_eng, l_eng, ll_eng")
        for (n1, v1), (n2, v2) in itertools.pairwise(given):
            if not v1 < v2:
                raise ValueError(f"limit alarm on {self.tag}: needs {n1} ({v1}) < {n2} ({v2})")
        return self


class DiscreteAlarmConfig(StrictModel):
    """An alarm on a status tag: active while the value equals ``active_value`` (within 0.5)."""

    tag: str = Field(pattern=_TAG_PATTERN)
    active_value: float = Field(1.0, ge=-1e9, le=1e9)
    priority: Priority = Field(2, ge=1, le=4)
    on_delay_s: float = Field(0.0, ge=0, le=_MAX_DELAY_S)
    off_delay_s: float = Field(0.0, ge=0, le=_MAX_DELAY_S)
    name: str = Field("ON", pattern=r"^[A-Z0-9_]+$", description="alarm id suffix: <TAG>.<name>")
    unit: str | None = Field(None, min_length=1)
    description: str = ""


class ExternalAlarmConfig(StrictModel):
    """An alarm whose condition is computed elsewhere (anomaly detector, predicted alarm) and
    handed to ``AlarmManager.step(..., conditions={id: bool})``."""

    id: str = Field(pattern=_TAG_PATTERN, description="alarm id, e.g. CELL1.TEMP.PRED_LO")
    tag: str = Field(pattern=_TAG_PATTERN, description="tag whose value is journalled with it")
    priority: Priority = Field(3, ge=1, le=4)
    on_delay_s: float = Field(0.0, ge=0, le=_MAX_DELAY_S)
    off_delay_s: float = Field(0.0, ge=0, le=_MAX_DELAY_S)
    unit: str | None = Field(None, min_length=1)
    description: str = ""


class OperatorPositionConfig(StrictModel):
    """An operator console and the plant units whose alarms it receives (empty: all others)."""

    name: str = Field(min_length=1, max_length=64)
    units: list[str] = Field(default_factory=list, max_length=64)


class AlarmsConfig(StrictModel):
    limit: list[LimitAlarmConfig] = Field(default_factory=list, max_length=1000)
    discrete: list[DiscreteAlarmConfig] = Field(default_factory=list, max_length=1000)
    external: list[ExternalAlarmConfig] = Field(default_factory=list, max_length=1000)
    bad_pv_priority: Priority = Field(3, ge=1, le=4, description="diagnostic alarm <TAG>.BADPV")
    positions: list[OperatorPositionConfig] = Field(
        default_factory=lambda: [OperatorPositionConfig(name="console")], min_length=1, max_length=16)
    max_shelve_s: float = Field(8 * 3600.0, gt=0, le=7 * 86400.0, description="longest shelving allowed")
    flood_window_s: float = Field(600.0, gt=0, le=86400.0, description="EEMUA 191: 10 minutes")
    flood_threshold_per_window: int = Field(10, ge=1, le=10000, description="EEMUA 191: >10 per 10 min is a flood")
    chattering_window_s: float = Field(60.0, gt=0, le=3600.0, description="ISA-18.2: 1 minute")
    chattering_activations: int = Field(3, ge=2, le=100, description="ISA-18.2: >=3 activations in the window")

    @model_validator(mode="after")
    def _unique(self) -> AlarmsConfig:
        tags = [a.tag for a in self.limit]
        dupes = sorted({t for t in tags if tags.count(t) > 1})
        if dupes:
            raise ValueError(f"one limit-alarm entry per tag; repeated: {dupes}")
        names = [p.name for p in self.positions]
        if len(set(names)) != len(names):
            raise ValueError(f"operator position names must be unique: {names}")
        return self


class GuardLimitConfig(StrictModel):
    """Engineered write limits tighter than the tag's range (tag units)."""

    tag: str = Field(pattern=_TAG_PATTERN)
    low_eng: float | None = Field(None, ge=-1e9, le=1e9)
    high_eng: float | None = Field(None, ge=-1e9, le=1e9)
    max_rate_eng_per_s: float | None = Field(None, gt=0, le=1e9, description="tighter than the tag's max_rate_per_s")

    @model_validator(mode="after")
    def _order(self) -> GuardLimitConfig:
        if self.low_eng is not None and self.high_eng is not None and not self.low_eng < self.high_eng:
            raise ValueError(
                f"guard limit on {self.tag}: low_eng ({self.low_eng}) must be < high_eng ({self.high_eng})")
        return self


class GuardLoopConfig(StrictModel):
    """A control loop: the setpoints it writes, the inputs it needs fresh and good, its mode."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", max_length=64)
    writes: list[str] = Field(min_length=1, max_length=64)
    inputs: list[str] = Field(default_factory=list, max_length=256)
    mode: LoopMode = "advisory"


class GuardConfig(StrictModel):
    control_period_s: float = Field(60.0, gt=0, le=3600.0, description="period of the control tick")
    stale_periods: float = Field(3.0, ge=1, le=1000, description="an input older than this many periods holds its loop")
    default_mode: LoopMode = Field("manual", description="mode of writable tags not in any loop")
    loops: list[GuardLoopConfig] = Field(default_factory=list, max_length=64)
    limits: list[GuardLimitConfig] = Field(default_factory=list, max_length=1000)
    watchdog_tag: str | None = Field(None, pattern=_TAG_PATTERN, description="written 0/1 alternately every tick")

    @model_validator(mode="after")
    def _unique(self) -> GuardConfig:
        owner: dict[str, str] = {}
        for loop in self.loops:
            for tag in loop.writes:
                if tag in owner:
                    raise ValueError(f"tag {tag} is written by two loops: {owner[tag]} and {loop.name}")
                owner[tag] = loop.name
        names = [lp.name for lp in self.loops]
        if len(set(names)) != len(names):
            raise ValueError(f"loop names must be unique: {names}")
        return self


class ControlConfig(StrictModel):
    alarms: AlarmsConfig = AlarmsConfig()
    guard: GuardConfig = GuardConfig()

    def check_tags(self, tags: Sequence[Tag]) -> None:
        """Raise ValueError naming every unknown or misused tag."""
        by_name = {t.name: t for t in tags}
        problems: list[str] = []
        a, g = self.alarms, self.guard
        for where, name in ([("alarms.limit", x.tag) for x in a.limit]
                            + [("alarms.discrete", x.tag) for x in a.discrete]
                            + [("alarms.external", x.tag) for x in a.external]
                            + [("guard.limits", x.tag) for x in g.limits]
                            + [(f"guard.loops.{lp.name}.inputs", n) for lp in g.loops for n in lp.inputs]):
            if name not in by_name:
                problems.append(f"{where}: unknown tag {name}")
        writes = [(f"guard.loops.{lp.name}.writes", n) for lp in g.loops for n in lp.writes]
        if g.watchdog_tag is not None:
            writes.append(("guard.watchdog_tag", g.watchdog_tag))
        for where, name in writes:
            if name not in by_name:
                problems.append(f"{where}: unknown tag {name}")
            elif not by_name[name].writable:
                problems.append(f"{where}: tag {name} is read-only ({by_name[name].kind})")
        if problems:
            raise ValueError("; ".join(problems))
