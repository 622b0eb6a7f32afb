"""What the historian writes: measurements, tag naming, and the builders the control loop calls.

Every point: measurement (one of ``twin.signals.MEASUREMENTS``), tags ``unit`` (plant unit: adsorption,
eluate_tank, extraction, cell1, ..., ``mpc``, ``line``), ``tag`` (name below), ``quality``
(good / uncertain / bad) and, in training sessions only, ``session``; one float field ``value``;
the source timestamp (seconds -> integer at the configured precision).

| measurement | ``tag`` | value |
|---|---|---|
| ``process``  | PLC tag name, e.g. ``CELL1.VOLTAGE`` | engineering units of the tag |
| ``estimate`` | ``<TAG>.EST`` estimate of a measured tag, ``<TAG>.INNOV`` innovation (measured - predicted), ``<TAG>.NIS`` normalised innovation squared, ``<state>.EST`` derived quantities | eng. units / 1 |
| ``decision`` | ``<SP_TAG>.PROPOSED`` (MPC), ``<SP_TAG>.APPLIED`` (after the guard), ``MPC.<unit>.SOLVE_MS``, ``MPC.<unit>.HELD`` (1: held this tick), ``MPC.<unit>.COST`` | eng. units, ms, 1 |
| ``alarm``    | alarm name, e.g. ``CELL1.TEMP.HI`` | 1 raised, 0 cleared (one point per transition) |
| ``alarm``    | ``<ALARM>.STATE`` on every transition (raise, clear, ack, shelve, unshelve, out of service, expiry) | state code (``ALARM_STATE_CODES``); ``text`` JSON {state, priority, by, until} |
| ``alarm``    | ``<ALARM>.PRIORITY`` with the first ``.STATE`` point of an alarm in a run | 1 highest .. 4 |
| ``kpi``      | KPI name, e.g. ``KPI.TB_RECOVERY`` | as named (%, kg/h, kWh/kg) |
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from .signals import MEASUREMENTS, Point

FIELD = "value"
QUALITY_NAMES = {0: "bad", 1: "uncertain", 2: "good"}

EST, INNOV, NIS = ".EST", ".INNOV", ".NIS"
PROPOSED, APPLIED = ".PROPOSED", ".APPLIED"


def mpc_tag(unit: str, what: str) -> str:
    """``MPC.<unit>.<WHAT>`` with WHAT in SOLVE_MS, HELD, COST."""
    return f"MPC.{unit}.{what}"


def process_points(snapshot: Mapping, units: Mapping[str, str], session: str = "") -> list[Point]:
    """A PLC snapshot (name -> Sample) as ``process`` points stamped with each sample's source time."""
    return [Point("process", name, units.get(name, ""), float(s.value), float(s.source_time),
                  QUALITY_NAMES[int(s.quality)], session, status=s.status) for name, s in snapshot.items()]


class FreshSamples:
    """Keeps only samples not recorded yet: per tag and status, the source time of the last one
    passed (an analyser repeats its last assay until the next one: recording it again would be the
    same point, same series and time). A sample with another status passes even at a time already
    seen (the Bad mark of an outage is a point of its own), and a Good value the PLC still holds at
    its old source time after an outage is not recorded twice."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], float] = {}

    def __call__(self, snapshot: Mapping) -> dict:
        last = self._last
        out = {}
        for name, s in snapshot.items():
            key = (name, s.status)
            if last.get(key) != s.source_time:
                last[key] = s.source_time
                out[name] = s
        return out


class FreshPoints:
    """The same rule on built points, for a store that keeps every row it is given: a ``process``
    point of a sample already passed (same session, tag, status and source time) is dropped; every
    other measurement passes."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, int], float] = {}

    def seen(self) -> dict[tuple[str, str, int], float]:
        """What has passed so far (for ``forget_since`` when a write fails)."""
        return dict(self._last)

    def forget_since(self, seen: dict[tuple[str, str, int], float]) -> None:
        self._last = dict(seen)

    def __call__(self, points: Sequence[Point]) -> list[Point]:
        last, out = self._last, []
        for p in points:
            if p.measurement == "process":
                key = (p.session, p.tag, p.status)
                if last.get(key) == p.time_s:
                    continue
                last[key] = p.time_s
            out.append(p)
        return out


def estimate_points(unit: str, t: float, published: Mapping[str, float],
                    innovations: Mapping[str, float] = {}, nis: Mapping[str, float] = {},
                    session: str = "") -> list[Point]:
    """Estimator output of one tick: ``published`` maps '<TAG>.EST' (or '<name>.EST') to a value;
    innovations and NIS are keyed by the measured tag name."""
    pts = [Point("estimate", name if name.endswith(EST) else name + EST, unit, float(v), t, "good", session)
           for name, v in published.items()]
    pts += [Point("estimate", tag + INNOV, unit, float(v), t, "good", session) for tag, v in innovations.items()]
    pts += [Point("estimate", tag + NIS, unit, float(v), t, "good", session) for tag, v in nis.items()]
    return pts


def decision_points(unit: str, t: float, proposed: Mapping[str, float], applied: Mapping[str, float],
                    solve_time_s: float, held: bool, cost: float | None = None,
                    session: str = "") -> list[Point]:
    """One MPC tick: proposed and applied setpoints (by setpoint tag), solve time, held flag, cost."""
    pts = [Point("decision", tag + PROPOSED, unit, float(v), t, "good", session) for tag, v in proposed.items()]
    pts += [Point("decision", tag + APPLIED, unit, float(v), t, "good", session) for tag, v in applied.items()]
    pts.append(Point("decision", mpc_tag(unit, "SOLVE_MS"), unit, 1e3 * solve_time_s, t, "good", session))
    pts.append(Point("decision", mpc_tag(unit, "HELD"), unit, 1.0 if held else 0.0, t, "good", session))
    if cost is not None:
        pts.append(Point("decision", mpc_tag(unit, "COST"), unit, float(cost), t, "good", session))
    return pts


def alarm_point(name: str, unit: str, active: bool, t: float, session: str = "") -> Point:
    """One alarm transition: 1 when raised, 0 when cleared."""
    return Point("alarm", name, unit, 1.0 if active else 0.0, t, "good", session)


ALARM_STATE_CODES = {"normal": 0, "unacknowledged-active": 1, "acknowledged-active": 2,
                     "returned-to-normal-unacknowledged": 3, "shelved": 4, "suppressed": 5}


def alarm_state_points(alarm_id: str, unit: str, state: str, priority: int, t: float, by: str | None = None,
                       until: float | None = None, first: bool = False, session: str = "") -> list[Point]:
    """One alarm state transition: ``<ALARM>.STATE`` (code, JSON text) and, when ``first``,
    ``<ALARM>.PRIORITY``. ``state``: a name of ``ALARM_STATE_CODES``; ``until``: shelving expiry."""
    name = str(getattr(state, "value", state))
    if name not in ALARM_STATE_CODES:
        raise ValueError(f"alarm state {name!r} of {alarm_id}: allowed {sorted(ALARM_STATE_CODES)}")
    until = float(until) if until is not None and math.isfinite(until) else None
    text = json.dumps({"state": name, "priority": int(priority), "by": by or "", "until": until})
    pts = [Point("alarm", f"{alarm_id}.STATE", unit, float(ALARM_STATE_CODES[name]), t, "good", session, text)]
    if first:
        pts.append(Point("alarm", f"{alarm_id}.PRIORITY", unit, float(int(priority)), t, "good", session))
    return pts


def kpi_points(t: float, kpis: Mapping[str, float], unit: str = "line", session: str = "") -> list[Point]:
    """KPIs as ``KPI.<NAME>`` (upper-cased) points."""
    out = []
    for name, v in kpis.items():
        tag = name if name.startswith("KPI.") else "KPI." + name.upper()
        out.append(Point("kpi", tag, unit, float(v), t, "good", session))
    return out


__all__ = [
    "ALARM_STATE_CODES",
    "FIELD",
    "MEASUREMENTS",
    "FreshPoints",
    "FreshSamples",
    "alarm_point",
    "alarm_state_points",
    "decision_points",
    "estimate_points",
    "kpi_points",
    "mpc_tag",
    "process_points",
]
