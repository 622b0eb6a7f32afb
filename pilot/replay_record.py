"""The record a replay reads (``pilot replay``): its sources, the snapshots the loop saw, its decisions.

The record (``twin.points`` schema) holds every process sample once, at its source time, and the
loop's decisions of every tick (``<SP>.PROPOSED``, ``<SP>.APPLIED``, ``<SP>.REFUSED`` with the
PLC's reason as text, ``MPC.<unit>.HELD``, ``LOOP.<loop>.MODE``). ``RecordedSnapshots.at(t)``
rebuilds the snapshot the loop saw at a tick: per tag the last sample visible at t.

Visible from: the sample's source time; an analyser's ``delay_s`` later (the twin reports on its
step grid: ``max(1, ⌈delay / sync_step⌉) · sync_step``; the record keeps the sample time, not the
arrival); a live sample that reached the loop after a tick at or past its source time (text
``after tick <t>``, ``pilot.live_support.late_text``) from the ticks after that one only. The
earliest sample of a tag in what was read is visible at once (the PLC's value at start-up, or the
value it held when the window opened).

What the plant took at a tick (``Recorded.taken``): the ``.APPLIED`` values of the tags whose
loop was recorded in auto, less the refused ones; an advisory loop's ``.APPLIED`` was shown, not
written.

Sources: an embedded store (``DIR/history.sqlite`` or the file) or InfluxDB 1.x (InfluxQL over
the v1 ``/query`` API, ``Influx1Sink.query``; InfluxDB 2.x serves the same API for a bucket mapped
to a database). Only the points of one ``session`` are read ('' : live and standalone runs; a
training session's name: its record). A live record keeps a sample only when it changes, so a
setpoint nobody wrote since start-up has one point, at start-up: with ``held=True`` the readers
add, per process tag and quality, its last point before the window.
"""

from __future__ import annotations

import bisect
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controllers.guard import LINK_DOWN_STATUSES
from controllers.loop import MODE_CODES
from twin.signals import Point, Quality, Sample

from .live_support import late_after

MEASUREMENTS = ("process", "decision", "alarm", "estimate")
_MODES = {v: k for k, v in MODE_CODES.items()}
PROPOSED, APPLIED, REFUSED, HELD = ".PROPOSED", ".APPLIED", ".REFUSED", ".HELD"
_COLUMNS = "measurement, tag, unit, value, time_s, quality, session, text, status"


# -- sources -------------------------------------------------------------------------------
def read_sqlite(path: Path, t0: float, t1: float, measurements: Sequence[str] = MEASUREMENTS,
                session: str = "", held: bool = False) -> list[Point]:
    """Points of ``measurements`` and ``session`` with t0 ≤ time ≤ t1 from an embedded store, in
    time (and insertion) order; ``held``: first the process tags' last points before t0 (above)."""
    if not path.is_file():
        raise FileNotFoundError(f"no historian file at {path}")
    marks = ",".join("?" * len(measurements))
    sql = (f"SELECT {_COLUMNS} FROM points WHERE time_s >= ? AND time_s <= ? AND session = ? "
           f"AND measurement IN ({marks}) ORDER BY time_s, rowid")
    before = (f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, rowid AS r, ROW_NUMBER() OVER "
              "(PARTITION BY tag, unit, quality ORDER BY time_s DESC, rowid DESC) AS k FROM points "
              "WHERE measurement = 'process' AND session = ? AND time_s < ?) WHERE k = 1 ORDER BY time_s, r")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(before, (session, t0)).fetchall() if held and "process" in measurements else []
        rows += db.execute(sql, (t0, t1, session, *measurements)).fetchall()
    finally:
        db.close()
    return [Point(m, tag, u, math.nan if v is None else float(v), float(ts), q, s, x or "", int(st or 0))
            for m, tag, u, v, ts, q, s, x, st in rows]


def read_influx(sink, t0: float, t1: float, measurements: Sequence[str] = MEASUREMENTS,
                session: str = "", held: bool = False) -> list[Point]:
    """The same from InfluxDB through ``sink.query`` (an ``Influx1Sink``), in time order."""
    who = f"\"session\" = '{escape_influxql(session)}'"  # '' also matches points without the tag
    group = 'GROUP BY "tag", "unit", "quality", "session"'
    ns0, ns1 = int(round(t0 * 1e9)), int(round(t1 * 1e9))
    out: list[Point] = []
    if held and "process" in measurements:  # per series (tag and quality): its last point before t0
        last: dict[tuple[str, str, str], Point] = {}
        for sel in ('last("value") AS "value", "status"', 'last("status") AS "status", "value"'):  # NaN: no value
            q = f'SELECT {sel}, "text" FROM "process" WHERE time < {ns0} AND {who} {group}'
            for p in _influx_points(sink, q, "process"):
                key = (p.tag, p.unit, p.quality)
                if key not in last or p.time_s > last[key].time_s:
                    last[key] = p
        out += list(last.values())
    for m in measurements:
        q = f'SELECT "value", "status", "text" FROM "{m}" WHERE time >= {ns0} AND time <= {ns1} AND {who} {group}'
        out += _influx_points(sink, q, m)
    held_n = sum(p.time_s < t0 for p in out)
    return sorted(out[:held_n], key=lambda p: p.time_s) + sorted(out[held_n:], key=lambda p: p.time_s)


def _influx_points(sink, query: str, measurement: str) -> list[Point]:
    out = []
    for series in sink.query(query, epoch="ns")[0].get("series", []):
        tags, cols = series["tags"], series["columns"]
        for row in series["values"]:
            r = dict(zip(cols, row))
            v = r.get("value")
            out.append(Point(measurement, tags["tag"], tags.get("unit", ""), math.nan if v is None else float(v),
                             r["time"] / 1e9, tags.get("quality") or "good", tags.get("session") or "",
                             r.get("text") or "", int(r.get("status") or 0)))
    return out


def escape_influxql(text: str) -> str:
    """A string literal's content in InfluxQL (backslash and single quote escaped)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


# -- the recorded snapshots ----------------------------------------------------------------
def report_delays(config) -> dict[str, float]:
    """Tag -> how long after its source time a sample reaches the PLC (analysers, on the step grid)."""
    dt = config.simulation.sync_step_s
    return {t.name: max(1, math.ceil(t.delay_s / dt - 1e-9)) * dt
            for t in config.tags if t.kind == "analyser" and t.delay_s > 0}


class RecordedSnapshots:
    """``at(t)``: per tag, the last recorded sample visible at t (see the module docstring).

    ``late_s``: how long after the tick it missed a late sample becomes visible (less than a
    control period, more than the record's timestamp precision).

    Outages of a live record: a PLC link's loss and return are each a Bad point of every tag of
    that PLC (status BadCommunicationError / BadNotConnected); after the return the PLC holds the
    tag's last good value at its old source time, which the record does not repeat. The return
    mark (the second of the pair) therefore stands for that last good sample."""

    def __init__(self, process: Iterable[Point], delays: Mapping[str, float], late_s: float = 1e-3):
        points = list(process)
        start = min((p.time_s for p in points), default=0.0)
        by_tag: dict[str, list[tuple[float, int, Sample]]] = defaultdict(list)
        good: dict[str, Sample] = {}
        for i, p in enumerate(points):
            rows = by_tag[p.tag]
            sample = Sample(p.value, p.time_s, Quality[p.quality.upper()], p.status)
            if p.status in LINK_DOWN_STATUSES and rows and rows[-1][2].status in LINK_DOWN_STATUSES:
                sample = good.get(p.tag, sample)  # the outage's end: the PLC's value again
            elif sample.quality != Quality.BAD:
                good[p.tag] = sample
            first = not rows and p.time_s <= start
            seen = p.time_s if first else p.time_s + delays.get(p.tag, 0.0)
            missed = late_after(p.text)
            if missed is not None:
                seen = max(seen, missed + late_s)
            rows.append((seen, i, sample))
        self._times, self._samples = {}, {}
        for tag, rows in by_tag.items():
            rows.sort(key=lambda r: (r[0], r[1]))
            self._times[tag] = [r[0] for r in rows]
            self._samples[tag] = [r[2] for r in rows]

    def at(self, t: float) -> dict[str, Sample]:
        out = {}
        for tag, times in self._times.items():
            k = bisect.bisect_right(times, t + 1e-6) - 1
            if k >= 0:
                out[tag] = self._samples[tag][k]
        return out


# -- the recorded decisions ----------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    """The loop's recorded decisions: tick times, proposals, applied and refused setpoints, held
    units, modes, alarms raised."""

    ticks: tuple[float, ...]
    proposals: Mapping[float, Mapping[str, float]]  # t -> setpoint tag -> proposed
    held: Mapping[float, frozenset[str]]  # t -> plant units whose MPC held
    modes: Mapping[float, Mapping[str, str]]  # t -> loop -> mode
    raised: tuple[tuple[float, str], ...]  # (t, alarm id)
    applied: Mapping[float, Mapping[str, float]] | None = None  # t -> setpoint tag -> after the guard
    refused: Mapping[float, Mapping[str, str]] | None = None  # t -> setpoint tag -> the PLC's reason

    def modes_at(self, t: float) -> dict[str, str]:
        """The loop modes of the last tick at or before t ({}: none recorded)."""
        before = [s for s in self.modes if s <= t + 1e-9]
        return dict(self.modes[max(before)]) if before else {}

    def taken(self, t: float, loop_of: Mapping[str, str], default: Mapping[str, str]) -> dict[str, float]:
        """What the plant took at the tick t: ``.APPLIED`` of the tags whose loop (``loop_of``)
        was in auto (``default``: the modes where none is recorded), less the refused."""
        modes = {**default, **self.modes_at(t)}
        refused = (self.refused or {}).get(t, {})
        return {tag: v for tag, v in (self.applied or {}).get(t, {}).items()
                if modes.get(loop_of.get(tag, "")) == "auto" and tag not in refused}


def recorded_decisions(points: Iterable[Point]) -> Recorded:
    proposals: dict[float, dict[str, float]] = defaultdict(dict)
    applied: dict[float, dict[str, float]] = defaultdict(dict)
    refused: dict[float, dict[str, str]] = defaultdict(dict)
    held: dict[float, set[str]] = defaultdict(set)
    modes: dict[float, dict[str, str]] = defaultdict(dict)
    ticks, raised = set(), []
    for p in points:
        if p.measurement == "decision" and p.tag.startswith("MPC.") and p.tag.endswith(HELD):
            ticks.add(p.time_s)
            if p.value >= 0.5:
                held[p.time_s].add(p.tag[4:-len(HELD)])
        elif p.measurement == "decision" and p.tag.endswith(PROPOSED):
            proposals[p.time_s][p.tag[:-len(PROPOSED)]] = p.value
        elif p.measurement == "decision" and p.tag.endswith(APPLIED):
            applied[p.time_s][p.tag[:-len(APPLIED)]] = p.value
        elif p.measurement == "decision" and p.tag.endswith(REFUSED):
            refused[p.time_s][p.tag[:-len(REFUSED)]] = p.text or "refused"
        elif p.measurement == "decision" and p.tag.startswith("LOOP.") and p.tag.endswith(".MODE"):
            ticks.add(p.time_s)
            modes[p.time_s][p.tag[5:-5]] = _MODES.get(float(p.value), "advisory")
        elif p.measurement == "alarm" and p.value >= 0.5 and not p.tag.endswith((".STATE", ".PRIORITY")):
            raised.append((p.time_s, p.tag))
    return Recorded(tuple(sorted(ticks)), dict(proposals), {t: frozenset(v) for t, v in held.items()},
                    dict(modes), tuple(raised), dict(applied), dict(refused))
