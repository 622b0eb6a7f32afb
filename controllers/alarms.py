"""ISA-18.2 alarm management: limit, discrete, bad-PV and external alarms with their lifecycle.

Condition (per alarm, evaluated vectorised every ``step``), x in the tag's engineering units:

    high (H, HH):   raise when v > lim;          clear when v < lim − deadband
    low  (L, LL):   raise when v < lim;          clear when v > lim + deadband
    discrete:       active while |v − active_value| < 0.5
    bad PV:         active while the tag's sample is BAD or missing  (id ``<TAG>.BADPV``), except
                    while the link to its PLC is down (status BadCommunicationError / BadNotConnected):
                    the PLC's comm-loss alarm stands for all of its tags then
    external:       the boolean handed to ``step(..., conditions={id: bool})``; besides the configured
                    ones the owner may add ``extra_external`` alarms on tags outside the config
                    (the loop's ``PLC.<name>.COMM`` on ``PLC.<name>.LINK``, ``<TAG>.DENIED``): their
                    unit is given, and a unit no operator position receives goes to the first one

A raw condition that differs from the debounced one must persist ``on_delay_s`` (to raise) or
``off_delay_s`` (to clear) before it takes effect. A BAD or missing sample freezes the value-driven
alarms of its tag (no raise, no clear, delays restart) and raises the bad-PV diagnostic instead;
an UNCERTAIN sample still drives them. An external alarm absent from ``conditions`` is frozen.

Lifecycle (ISA-18.2 state diagram; each arrow is a journalled transition):

    normal ──active──▶ unacknowledged-active ──ack──▶ acknowledged-active ──clear──▶ normal
                              │ clear                                   ▲
                              ▼                                         │
                 returned-to-normal-unacknowledged ──ack────────────────┘
                              └──active──▶ unacknowledged-active

Shelving (operator, with an expiry ≤ ``max_shelve_s``) and suppression (all alarms of a plant
unit while it is out of service) take the alarm out of the summary from any state; on expiry /
return to service it goes to normal and, if its condition is present, straight back to
unacknowledged-active (a new activation). Alarm ids: ``<TAG>.HH|HI|LO|LL``, ``<TAG>.<name>``
(discrete, default ``ON``), ``<TAG>.BADPV``, and the configured ids of external alarms.
A tag's plant unit is the first dotted part of its twin signal unless the config names one.
Flood / chattering benchmarks: see ``alarms_support``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pilot_config.control import AlarmsConfig, ExternalAlarmConfig
from pilot_config.tags import Tag
from twin.signals import Quality, Snapshot

from .alarms_support import (
    LIMIT_KINDS,
    SUMMARY_STATES,
    ActiveAlarm,
    AlarmMetrics,
    AlarmState,
    AlarmStepResult,
    FloodTracker,
    JournalEntry,
    Priority,
    SavedAlarm,
    SavedAlarms,
    alarm_descriptions,
)
from .guard import LINK_DOWN_STATUSES

__all__ = [
    "ActiveAlarm",
    "AlarmManager",
    "AlarmMetrics",
    "AlarmState",
    "AlarmStepResult",
    "JournalEntry",
    "Priority",
    "SavedAlarm",
    "SavedAlarms",
]
log = logging.getLogger(__name__)
_S = AlarmState
_VALUE, _BADPV, _EXTERNAL = 0, 1, 2  # how a point's raw condition is computed


@dataclass(frozen=True)
class _Def:
    alarm_id: str
    tag: str
    kind: str  # HH HI LO LL DISCRETE BADPV EXTERNAL
    source: int
    sense: float  # +1 high, -1 low, 0 discrete
    limit: float
    deadband: float
    on_delay: float
    off_delay: float
    priority: Priority
    unit: str


def _definitions(cfg: AlarmsConfig, tags: Mapping[str, Tag]) -> list[_Def]:
    def unit_of(tag: str, given: str | None) -> str:
        return given or tags[tag].plant_unit

    out: list[_Def] = []
    for a in cfg.limit:
        for kind, lim, sense, prio in (("HH", a.hh_eng, 1.0, a.hh_priority), ("HI", a.h_eng, 1.0, a.h_priority),
                                       ("LO", a.l_eng, -1.0, a.l_priority), ("LL", a.ll_eng, -1.0, a.ll_priority)):
            if lim is not None:
                out.append(_Def(f"{a.tag}.{kind}", a.tag, kind, _VALUE, sense, lim, a.deadband_eng,
                                a.on_delay_s, a.off_delay_s, Priority(prio), unit_of(a.tag, a.unit)))
    for d in cfg.discrete:
        out.append(_Def(f"{d.tag}.{d.name}", d.tag, "DISCRETE", _VALUE, 0.0, d.active_value, 0.0,
                        d.on_delay_s, d.off_delay_s, Priority(d.priority), unit_of(d.tag, d.unit)))
    for tag in dict.fromkeys([a.tag for a in cfg.limit] + [d.tag for d in cfg.discrete]):
        out.append(_Def(f"{tag}.BADPV", tag, "BADPV", _BADPV, 0.0, 0.0, 0.0, 0.0, 0.0,
                        Priority(cfg.bad_pv_priority), unit_of(tag, None)))
    for e in cfg.external:
        out.append(_Def(e.id, e.tag, "EXTERNAL", _EXTERNAL, 0.0, 0.0, 0.0, e.on_delay_s, e.off_delay_s,
                        Priority(e.priority), unit_of(e.tag, e.unit)))
    return out


class AlarmManager:
    """All alarms of a line. ``step`` once per control tick; operator actions in between."""

    def __init__(self, config: AlarmsConfig, tags: Sequence[Tag], extra_external: Sequence[ExternalAlarmConfig] = ()):
        by_name = {t.name: t for t in tags}
        unknown = sorted({a.tag for a in [*config.limit, *config.discrete, *config.external]} - set(by_name))
        if unknown:
            raise ValueError(f"alarm config names unknown tags: {unknown}")
        if any(e.unit is None for e in extra_external):
            raise ValueError("an extra external alarm needs its plant unit")
        self.config = config
        self.defs = _definitions(config, by_name) + [
            _Def(e.id, e.tag, "EXTERNAL", _EXTERNAL, 0.0, 0.0, 0.0, e.on_delay_s, e.off_delay_s,
                 Priority(e.priority), str(e.unit)) for e in extra_external]
        self._extra = {e.id for e in extra_external}
        self.descriptions = alarm_descriptions(config, by_name, self.defs, extra_external)
        self.eng_units = {n: t.unit for n, t in by_name.items()}
        ids = [d.alarm_id for d in self.defs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"alarm ids must be unique; repeated: {dupes}")
        self.index = {d.alarm_id: i for i, d in enumerate(self.defs)}
        self.tag_names = list(dict.fromkeys(d.tag for d in self.defs))
        tag_pos = {n: k for k, n in enumerate(self.tag_names)}
        self._tag_idx = np.array([tag_pos[d.tag] for d in self.defs], dtype=int)
        self._source = np.array([d.source for d in self.defs], dtype=int)
        self._sense = np.array([d.sense for d in self.defs])
        self._limit = np.array([d.limit for d in self.defs])
        self._deadband = np.array([d.deadband for d in self.defs])
        self._on_delay = np.array([d.on_delay for d in self.defs])
        self._off_delay = np.array([d.off_delay for d in self.defs])
        n = len(self.defs)
        self._cond = np.zeros(n, dtype=bool)
        self._pending = np.full(n, np.nan)
        self.position = [self._position_of(d.unit, d.alarm_id in self._extra) for d in self.defs]
        self.state = [_S.NORMAL] * n
        self._since = np.full(n, np.nan)
        self._shelved_until = np.full(n, np.nan)
        self._values = np.full(len(self.tag_names), np.nan)
        self.out_of_service: set[str] = set()
        self.journal: list[JournalEntry] = []
        self._pending_entries: list[JournalEntry] = []
        self.flood = FloodTracker([p.name for p in config.positions], config.flood_window_s,
                                  config.flood_threshold_per_window, config.chattering_window_s,
                                  config.chattering_activations)

    def _position_of(self, unit: str, fallback: bool = False) -> str:
        for p in self.config.positions:
            if unit in p.units:
                return p.name
        for p in self.config.positions:
            if not p.units:
                return p.name
        if fallback and self.config.positions:
            return self.config.positions[0].name
        raise ValueError(f"no operator position receives alarms of unit {unit!r}; "
                         "add it to a position's units or add a position with no units")

    # -- evaluation ----------------------------------------------------------------------
    def _read(self, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """(BAD or missing, BAD because the PLC link is down) per tag; the values kept."""
        bad = np.zeros(len(self.tag_names), dtype=bool)
        link = np.zeros(len(self.tag_names), dtype=bool)
        for k, name in enumerate(self.tag_names):
            s = snapshot.get(name)
            if s is None or s.quality == Quality.BAD or not math.isfinite(s.value):
                bad[k] = True
                link[k] = s is not None and s.status in LINK_DOWN_STATUSES
                self._values[k] = np.nan
            else:
                self._values[k] = s.value
        return bad, link

    def _raw(self, bad: np.ndarray, link: np.ndarray, conditions: Mapping[str, bool]) -> np.ndarray:
        v = self._values[self._tag_idx]
        x = np.where(self._sense == 0.0, 0.5 - np.abs(v - self._limit), self._sense * (v - self._limit))
        with np.errstate(invalid="ignore"):
            raw = x > np.where(self._cond, -self._deadband, 0.0)
        bad_pt = bad[self._tag_idx]
        badpv = bad_pt & ~link[self._tag_idx]
        raw = np.where(self._source == _BADPV, badpv, np.where(bad_pt | np.isnan(v), self._cond, raw))
        for alarm_id, c in conditions.items():
            i = self.index.get(alarm_id)
            if i is None or self.defs[i].source != _EXTERNAL:
                raise KeyError(f"{alarm_id!r} is not a configured external alarm")
            raw[i] = bool(c)
        ext = self._source == _EXTERNAL
        given = np.array([d.alarm_id in conditions for d in self.defs]) if conditions else np.zeros_like(ext)
        return np.where(ext & ~given, self._cond, raw)

    def step(self, snapshot: Snapshot, t: float, conditions: Mapping[str, bool] | None = None) -> AlarmStepResult:
        """Evaluate every alarm at time ``t`` and return this tick's transitions (including operator
        actions since the last step), the alarm summary and the metrics."""
        bad, link = self._read(snapshot)
        self._expire_shelving(t)
        raw = self._raw(bad, link, conditions or {})
        differs = raw != self._cond
        self._pending = np.where(differs, np.where(np.isnan(self._pending), t, self._pending), np.nan)
        fire = differs & (t - self._pending >= np.where(raw, self._on_delay, self._off_delay))
        self._cond[fire] = raw[fire]
        self._pending[fire] = np.nan
        for i in np.flatnonzero(fire):
            self._on_condition(int(i), t)
        entries, self._pending_entries = tuple(self._pending_entries), []
        return AlarmStepResult(t, entries, self.active(), self.metrics(t))

    def _on_condition(self, i: int, t: float) -> None:
        s, c = self.state[i], bool(self._cond[i])
        if c and s in (_S.NORMAL, _S.RTN_UNACK):
            self._move(i, _S.UNACK_ACTIVE, t)
        elif not c and s == _S.UNACK_ACTIVE:
            self._move(i, _S.RTN_UNACK, t)
        elif not c and s == _S.ACK_ACTIVE:
            self._move(i, _S.NORMAL, t)

    def _move(self, i: int, to: AlarmState, t: float, operator: str | None = None, note: str = "") -> JournalEntry:
        d = self.defs[i]
        e = JournalEntry(t, d.tag, d.alarm_id, self.state[i], to, float(self._values[self._tag_idx[i]]),
                         d.priority, operator, note)
        self.state[i] = to
        if to == _S.UNACK_ACTIVE:
            self._since[i] = t
            self.flood.activation(d.alarm_id, self.position[i], t)
        self.journal.append(e)
        self._pending_entries.append(e)
        log.debug("alarm %s: %s -> %s at %.1f", d.alarm_id, e.from_state.value, to.value, t)
        return e

    def _release(self, i: int, t: float, operator: str | None, note: str) -> list[JournalEntry]:
        out = [self._move(i, _S.NORMAL, t, operator, note)]
        if self._cond[i]:
            out.append(self._move(i, _S.UNACK_ACTIVE, t, operator, "condition present on release"))
        return out

    def _expire_shelving(self, t: float) -> None:
        for i in np.flatnonzero(self._shelved_until <= t):
            self._shelved_until[i] = np.nan
            if self.state[i] == _S.SHELVED:
                self._release(int(i), t, None, "shelving expired")

    # -- operator actions ----------------------------------------------------------------
    def _i(self, alarm_id: str) -> int:
        try:
            return self.index[alarm_id]
        except KeyError:
            raise KeyError(f"unknown alarm {alarm_id!r}") from None

    def acknowledge(self, alarm_id: str, operator: str, t: float) -> list[JournalEntry]:
        """Acknowledge one alarm; an alarm with nothing to acknowledge is left as it is."""
        i = self._i(alarm_id)
        if self.state[i] == _S.UNACK_ACTIVE:
            return [self._move(i, _S.ACK_ACTIVE, t, operator, "acknowledged")]
        if self.state[i] == _S.RTN_UNACK:
            return [self._move(i, _S.NORMAL, t, operator, "acknowledged")]
        return []

    def acknowledge_all(self, operator: str, t: float, position: str | None = None) -> list[JournalEntry]:
        out: list[JournalEntry] = []
        for d in self.defs:
            if position is None or self.position[self.index[d.alarm_id]] == position:
                out += self.acknowledge(d.alarm_id, operator, t)
        return out

    def shelve(self, alarm_id: str, operator: str, t: float, duration_s: float) -> list[JournalEntry]:
        i = self._i(alarm_id)
        if not 0 < duration_s <= self.config.max_shelve_s:
            raise ValueError(f"shelve duration must be in (0, {self.config.max_shelve_s}] s; got {duration_s}")
        if self.state[i] == _S.SUPPRESSED:
            raise ValueError(f"{alarm_id} is suppressed (unit {self.defs[i].unit} out of service)")
        self._shelved_until[i] = t + duration_s
        if self.state[i] == _S.SHELVED:
            return []
        return [self._move(i, _S.SHELVED, t, operator, f"shelved until t={t + duration_s:g}")]

    def unshelve(self, alarm_id: str, operator: str, t: float) -> list[JournalEntry]:
        i = self._i(alarm_id)
        if self.state[i] != _S.SHELVED:
            return []
        self._shelved_until[i] = np.nan
        return self._release(i, t, operator, "unshelved")

    def set_out_of_service(self, unit: str, out: bool, operator: str, t: float) -> list[JournalEntry]:
        """Suppress (``out=True``) or restore every alarm of a plant unit."""
        units = {d.unit for d in self.defs}
        if unit not in units:
            raise KeyError(f"no alarms for unit {unit!r}; units: {sorted(units)}")
        entries: list[JournalEntry] = []
        for i, d in enumerate(self.defs):
            if d.unit != unit:
                continue
            if out and self.state[i] != _S.SUPPRESSED:
                self._shelved_until[i] = np.nan
                entries.append(self._move(i, _S.SUPPRESSED, t, operator, f"unit {unit} out of service"))
            elif not out and self.state[i] == _S.SUPPRESSED:
                entries += self._release(i, t, operator, f"unit {unit} back in service")
        (self.out_of_service.add if out else self.out_of_service.discard)(unit)
        return entries

    # -- persistence ---------------------------------------------------------------------
    def saved_state(self) -> SavedAlarms:
        """Every alarm's state, condition, activation time and shelving expiry, as a value."""
        rows = tuple(SavedAlarm(d.alarm_id, self.state[i], bool(self._cond[i]), float(self._since[i]),
                                float(self._shelved_until[i])) for i, d in enumerate(self.defs))
        return SavedAlarms(rows, tuple(sorted(self.out_of_service)))

    def restore(self, saved: SavedAlarms) -> list[str]:
        """Take the alarms back as ``saved`` left them (no transition is journalled); alarms the
        config no longer has are skipped. Returns the skipped ids."""
        skipped = []
        for a in saved.alarms:
            i = self.index.get(a.alarm_id)
            if i is None:
                skipped.append(a.alarm_id)
                continue
            self.state[i], self._cond[i] = AlarmState(a.state), a.condition
            self._since[i], self._shelved_until[i], self._pending[i] = a.since, a.shelved_until, np.nan
        units = {d.unit for d in self.defs}
        self.out_of_service = {u for u in saved.out_of_service if u in units}
        if skipped:
            log.warning("restored alarm state names alarms the config no longer has: %s", ", ".join(skipped))
        return skipped

    def shelved_until(self, alarm_id: str) -> float | None:
        """Plant time the shelving of ``alarm_id`` expires at (None when not shelved)."""
        i = self._i(alarm_id)
        return float(self._shelved_until[i]) if self.state[i] == _S.SHELVED else None

    # -- views ---------------------------------------------------------------------------
    def active(self) -> tuple[ActiveAlarm, ...]:
        """The alarm summary: annunciated alarms, highest priority first, then newest."""
        rows = [ActiveAlarm(d.alarm_id, d.tag, d.kind, self.state[i], d.priority,
                            float(self._values[self._tag_idx[i]]), float(self._since[i]), d.unit, self.position[i])
                for i, d in enumerate(self.defs) if self.state[i] in SUMMARY_STATES]
        return tuple(sorted(rows, key=lambda a: (a.priority, -a.since)))

    def listing(self) -> list[dict]:
        """The summary (as ``active``) then the shelved alarms, as plain values with description,
        limit, engineering unit and shelving expiry (plant s; None when not shelved)."""
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        rows = []
        for i, d in enumerate(self.defs):
            if self.state[i] not in SUMMARY_STATES and self.state[i] != _S.SHELVED:
                continue
            rows.append({"id": d.alarm_id, "state": self.state[i].value, "priority": int(d.priority),
                         "priority_name": d.priority.name.lower(), "tag": d.tag,
                         "description": self.descriptions[d.alarm_id],
                         "limit": d.limit if d.kind in LIMIT_KINDS else None, "eng_unit": self.eng_units.get(d.tag, ""),
                         "value": num(self._values[self._tag_idx[i]]), "since": num(self._since[i]),
                         "shelved_until": num(self._shelved_until[i]) if self.state[i] == _S.SHELVED else None,
                         "unit": d.unit, "position": self.position[i]})
        return sorted(rows, key=lambda r: (r["state"] == _S.SHELVED.value, r["priority"], -(r["since"] or 0.0)))

    def pending(self) -> tuple[JournalEntry, ...]:
        """Transitions of operator actions not yet handed out by a ``step`` (they come with the next)."""
        return tuple(self._pending_entries)

    def tag_values(self) -> dict[str, float]:
        """The newest value of every alarmed tag (NaN while bad or missing)."""
        return dict(zip(self.tag_names, self._values.tolist()))

    def metrics(self, t: float) -> AlarmMetrics:
        st = self.state
        counts = {"active": sum(s in (_S.UNACK_ACTIVE, _S.ACK_ACTIVE) for s in st),
                  "unack": sum(s in (_S.UNACK_ACTIVE, _S.RTN_UNACK) for s in st),
                  "shelved": st.count(_S.SHELVED), "suppressed": st.count(_S.SUPPRESSED)}
        return self.flood.metrics(t, counts)
