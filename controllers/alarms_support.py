"""Records of the alarm system (frozen) and the flood / chattering bookkeeping.

Benchmarks (ISA-18.2-2016 §16 / EEMUA 191 ed. 3, per operator position):
- average alarm rate: ~6 per hour (~1 per 10 min) very likely acceptable, ~12 per hour (~2 per 10 min)
  maximum manageable;
- alarm flood: more than 10 alarms (annunciated activations) in 10 minutes; the share of time in
  flood should stay below ~1 %;
- chattering alarm: 3 or more activations of the same alarm within 1 minute (should be zero).
Activations are transitions into "unacknowledged-active" (from normal, from
returned-to-normal-unacknowledged, or on leaving shelving / suppression with the condition present).
Shelved and suppressed alarms are not annunciated, so they do not count.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass


class AlarmState(str, enum.Enum):
    """ISA-18.2 alarm states (A normal, B unack, C ack, D RTN unack, E shelved, G out of service)."""

    NORMAL = "normal"
    UNACK_ACTIVE = "unacknowledged-active"
    ACK_ACTIVE = "acknowledged-active"
    RTN_UNACK = "returned-to-normal-unacknowledged"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"


class Priority(enum.IntEnum):
    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4


#: states shown on the alarm summary (annunciated)
SUMMARY_STATES = frozenset({AlarmState.UNACK_ACTIVE, AlarmState.ACK_ACTIVE, AlarmState.RTN_UNACK})


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One alarm state transition (the alarm journal holds every one)."""

    t: float
    tag: str
    alarm_id: str
    from_state: AlarmState
    to_state: AlarmState
    value: float
    priority: Priority
    operator: str | None = None
    note: str = ""


_KIND_WORDS = {"HH": "high-high", "HI": "high", "LO": "low", "LL": "low-low", "BADPV": "bad measurement",
               "DISCRETE": "on"}
LIMIT_KINDS = frozenset({"HH", "HI", "LO", "LL"})


def alarm_descriptions(cfg, tags: Mapping, defs, extra=()) -> dict[str, str]:
    """Alarm id -> the operator's description: the config's, else the tag's description (or
    name) and what the alarm means (``high-high``, ``bad measurement``, ...)."""
    given = {f"{a.tag}.{k}": a.description for a in cfg.limit for k in LIMIT_KINDS}
    given.update({f"{d.tag}.{d.name}": d.description for d in cfg.discrete})
    given.update({e.id: e.description for e in [*cfg.external, *extra]})
    out = {}
    for d in defs:
        tag = tags.get(d.tag)
        what = tag.description if tag is not None and tag.description else d.tag
        out[d.alarm_id] = given.get(d.alarm_id) or f"{what} {_KIND_WORDS.get(d.kind, 'alarm')}"
    return out


@dataclass(frozen=True, slots=True)
class SavedAlarm:
    """What survives a restart of one alarm: its state, debounced condition, time of its last
    activation and shelving expiry (plant s; NaN when none)."""

    alarm_id: str
    state: AlarmState
    condition: bool
    since: float
    shelved_until: float


@dataclass(frozen=True)
class SavedAlarms:
    """The state of every alarm of a manager (``AlarmManager.saved_state`` / ``restore``)."""

    alarms: tuple[SavedAlarm, ...]
    out_of_service: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    alarm_id: str
    tag: str
    kind: str
    state: AlarmState
    priority: Priority
    value: float
    since: float
    unit: str
    position: str


@dataclass(frozen=True)
class AlarmMetrics:
    """Flood and chattering metrics at time ``t`` (per operator position where named)."""

    t: float
    rate_per_window: Mapping[str, int]
    peak_per_window: Mapping[str, int]
    flooded: tuple[str, ...]
    time_in_flood_s: Mapping[str, float]
    chattering: tuple[str, ...]
    chattered: tuple[str, ...]
    total_activations: int
    active: int
    unacknowledged: int
    shelved: int
    suppressed: int

    def fraction_in_flood(self, position: str, elapsed_s: float) -> float:
        return self.time_in_flood_s[position] / elapsed_s if elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class AlarmStepResult:
    t: float
    transitions: tuple[JournalEntry, ...]
    active: tuple[ActiveAlarm, ...]
    metrics: AlarmMetrics


class FloodTracker:
    """Sliding-window activation counts per position and chattering per alarm."""

    def __init__(self, positions: list[str], flood_window_s: float, flood_threshold: int,
                 chatter_window_s: float, chatter_count: int):
        self.positions = positions
        self.flood_window_s = flood_window_s
        self.flood_threshold = flood_threshold
        self.chatter_window_s = chatter_window_s
        self.chatter_count = chatter_count
        self._recent: dict[str, deque[float]] = {p: deque() for p in positions}
        self._per_alarm: dict[str, deque[float]] = {}
        self._peak = dict.fromkeys(positions, 0)
        self._flood_time = dict.fromkeys(positions, 0.0)
        self._flooded: set[str] = set()
        self._chattered: set[str] = set()
        self._last_t = -math.inf
        self.total = 0

    def activation(self, alarm_id: str, position: str, t: float) -> None:
        self.total += 1
        self._recent[position].append(t)
        times = self._per_alarm.setdefault(alarm_id, deque(maxlen=self.chatter_count))
        times.append(t)
        if len(times) == self.chatter_count and t - times[0] <= self.chatter_window_s:
            self._chattered.add(alarm_id)

    def _flood_overlap(self, q: deque[float], t0: float, t1: float) -> float:
        """Time in (t0, t1] during which the activations up to t0 still count > threshold: exact,
        since the count only falls between activations."""
        before = [x for x in q if x <= t0]
        if len(before) <= self.flood_threshold:
            return 0.0
        end = before[-(self.flood_threshold + 1)] + self.flood_window_s
        return max(0.0, min(t1, end) - t0)

    def metrics(self, t: float, counts: Mapping[str, int]) -> AlarmMetrics:
        if math.isfinite(self._last_t) and t > self._last_t:
            for p, q in self._recent.items():
                self._flood_time[p] += self._flood_overlap(q, self._last_t, t)
        self._last_t = t
        rate = {}
        for p, q in self._recent.items():
            while q and q[0] <= t - self.flood_window_s:
                q.popleft()
            rate[p] = len(q)
            self._peak[p] = max(self._peak[p], len(q))
        self._flooded = {p for p, n in rate.items() if n > self.flood_threshold}
        chattering = tuple(sorted(
            a for a, q in self._per_alarm.items()
            if len(q) == self.chatter_count and t - q[0] <= self.chatter_window_s))
        return AlarmMetrics(
            t=t, rate_per_window=rate, peak_per_window=dict(self._peak),
            flooded=tuple(sorted(self._flooded)), time_in_flood_s=dict(self._flood_time),
            chattering=chattering, chattered=tuple(sorted(self._chattered)),
            total_activations=self.total, active=counts["active"], unacknowledged=counts["unack"],
            shelved=counts["shelved"], suppressed=counts["suppressed"])
