"""Replay of a recorded window through the estimators and MPCs as they are now (``pilot replay``).

The record (``twin.points`` schema) holds every process sample once, at its source time, and the
loop's decisions of every tick (``<SP>.PROPOSED``, ``<SP>.APPLIED``, ``MPC.<unit>.HELD``,
``LOOP.<loop>.MODE``). A replay rebuilds, at each recorded tick time t, the snapshot the loop
saw: per tag the last sample visible at t. A sample is visible from its source time, an analyser's
``delay_s`` later (the twin reports on its step grid: ``max(1, ⌈delay / sync_step⌉) · sync_step``;
the record keeps the sample time, not the arrival). A tag whose first sample read lies at the
start of what was read is visible at once (the PLC's value at start-up).

The loop (``controllers.loop.ControlLoop``, built from the config given, no deadline, no timing
points) steps on those snapshots in the recorded loop modes. Nothing is written: every write is
handed back to the loop as refused, so the estimators take the inputs the plant really had from
the record (the setpoint tags of the next snapshot) and the guard's rate limits restart from the
recorded setpoints. Proposals, estimates (``.EST``, ``.INNOV``, ``.NIS``) and the alarms it would
have raised are the replay's result; ``compare`` sets its proposals beside the recorded ones.

With the same config the replay repeats the recorded estimates (the EKFs and the LSODA
predictions are deterministic for the same inputs) and proposals to OSQP's tolerance (its
ρ-adaptation interval follows its measured setup time); with changed weights each tick
answers "what would the MPC have proposed from the plant as it was", open loop: the record does
not follow the replay's proposals.

Sources: an embedded store (``DIR/history.sqlite`` or the file) or InfluxDB 1.x (InfluxQL over
the v1 ``/query`` API, ``Influx1Sink.query``; InfluxDB 2.x serves the same API for a bucket mapped
to a database). Only the points of one ``session`` are read ('' : live and standalone runs; a
training session's name: its record).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controllers.guard import LINK_DOWN_STATUSES
from controllers.loop import MODE_CODES, ControlLoop
from twin.signals import Point, Quality, Sample

log = logging.getLogger(__name__)
MEASUREMENTS = ("process", "decision", "alarm", "estimate")
_MODES = {v: k for k, v in MODE_CODES.items()}
PROPOSED, HELD = ".PROPOSED", ".HELD"


# -- sources -------------------------------------------------------------------------------
def read_sqlite(path: Path, t0: float, t1: float, measurements: Sequence[str] = MEASUREMENTS,
                session: str = "") -> list[Point]:
    """Points of ``measurements`` and ``session`` with t0 ≤ time ≤ t1 from an embedded store, in
    time (and insertion) order."""
    if not path.is_file():
        raise FileNotFoundError(f"no historian file at {path}")
    marks = ",".join("?" * len(measurements))
    sql = (f"SELECT measurement, tag, unit, value, time_s, quality, session, text, status FROM points "
           f"WHERE time_s >= ? AND time_s <= ? AND session = ? AND measurement IN ({marks}) "
           "ORDER BY time_s, rowid")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(sql, (t0, t1, session, *measurements)).fetchall()
    finally:
        db.close()
    return [Point(m, tag, u, math.nan if v is None else float(v), float(ts), q, s, x or "", int(st or 0))
            for m, tag, u, v, ts, q, s, x, st in rows]


def read_influx(sink, t0: float, t1: float, measurements: Sequence[str] = MEASUREMENTS,
                session: str = "") -> list[Point]:
    """The same from InfluxDB through ``sink.query`` (an ``Influx1Sink``), in time order."""
    out: list[Point] = []
    who = f"\"session\" = '{escape_influxql(session)}'"  # '' also matches points without the tag
    for m in measurements:
        q = (f'SELECT "value", "status", "text" FROM "{m}" WHERE time >= {int(round(t0 * 1e9))} '
             f'AND time <= {int(round(t1 * 1e9))} AND {who} GROUP BY "tag", "unit", "quality", "session"')
        for series in sink.query(q, epoch="ns")[0].get("series", []):
            tags = series["tags"]
            cols = series["columns"]
            for row in series["values"]:
                r = dict(zip(cols, row))
                v = r.get("value")
                out.append(Point(m, tags["tag"], tags.get("unit", ""), math.nan if v is None else float(v),
                                 r["time"] / 1e9, tags.get("quality") or "good", tags.get("session") or "",
                                 r.get("text") or "", int(r.get("status") or 0)))
    out.sort(key=lambda p: p.time_s)
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

    Outages of a live record: a PLC link's loss and return are each a Bad point of every tag of
    that PLC (status BadCommunicationError / BadNotConnected); after the return the PLC holds the
    tag's last good value at its old source time, which the record does not repeat. The return
    mark (the second of the pair) therefore stands for that last good sample."""

    def __init__(self, process: Iterable[Point], delays: Mapping[str, float]):
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
            rows.append((p.time_s if first else p.time_s + delays.get(p.tag, 0.0), i, sample))
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


@dataclass(frozen=True)
class Recorded:
    """The loop's recorded decisions: tick times, proposals and held units, modes, alarms raised."""

    ticks: tuple[float, ...]
    proposals: Mapping[float, Mapping[str, float]]  # t -> setpoint tag -> proposed
    held: Mapping[float, frozenset[str]]  # t -> plant units whose MPC held
    modes: Mapping[float, Mapping[str, str]]  # t -> loop -> mode
    raised: tuple[tuple[float, str], ...]  # (t, alarm id)


def recorded_decisions(points: Iterable[Point]) -> Recorded:
    proposals: dict[float, dict[str, float]] = defaultdict(dict)
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
        elif p.measurement == "decision" and p.tag.startswith("LOOP.") and p.tag.endswith(".MODE"):
            ticks.add(p.time_s)
            modes[p.time_s][p.tag[5:-5]] = _MODES.get(float(p.value), "advisory")
        elif p.measurement == "alarm" and p.value >= 0.5 and not p.tag.endswith((".STATE", ".PRIORITY")):
            raised.append((p.time_s, p.tag))
    return Recorded(tuple(sorted(ticks)), dict(proposals), {t: frozenset(v) for t, v in held.items()},
                    dict(modes), tuple(raised))


# -- the replay ----------------------------------------------------------------------------
@dataclass
class ReplayResult:
    ticks: list[float] = field(default_factory=list)
    proposals: dict[float, dict[str, float]] = field(default_factory=dict)  # held MPCs left out
    held: dict[float, frozenset[str]] = field(default_factory=dict)  # plant units whose MPC held
    raised: list[tuple[float, str]] = field(default_factory=list)
    nis: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    points: list[Point] = field(default_factory=list)


def tick_times(recorded: Recorded, t0: float, t1: float, period: float) -> list[float]:
    """The recorded ticks in [t0, t1]; an open-loop record (no decisions): every period from t0."""
    ticks = [t for t in recorded.ticks if t0 - 1e-9 <= t <= t1 + 1e-9]
    if ticks or recorded.ticks:
        return ticks
    return list(np.arange(t0, t1 + 1e-9, period))


def replay(config, snapshots: RecordedSnapshots, ticks: Sequence[float], recorded: Recorded, *,
           compare_from: float, modes: Mapping[str, str] | None = None, **loop_options) -> ReplayResult:
    """Step a fresh ``ControlLoop`` at ``ticks`` on the recorded snapshots; ticks before
    ``compare_from`` warm the estimators up and are not part of the result. ``modes``: loop ->
    mode for the whole replay (the other loops: the recorded modes, else the config's)."""
    modes = dict(modes or {})
    period = float(np.median(np.diff(ticks))) if len(ticks) > 1 else None
    first = _modes_at(recorded, ticks[0]) if ticks else {}
    loop = ControlLoop(config, target="twin", session="standalone", modes={**first, **modes},
                       mpc_deadline_s=None, timing_points=False, control_period_s=period, **loop_options)
    units = {u.name: u.plant_unit for u in loop.units}
    res = ReplayResult()
    try:
        for t in ticks:
            for lp, mode in recorded.modes.get(t, {}).items():
                if lp not in modes and loop.modes.get(lp) != mode:
                    loop.set_mode(lp, mode)
            snap = snapshots.at(t)
            tick = loop.step(snap, t, links=links_of(snap))
            loop.refused({tag: "replay: nothing is written" for tag in tick.writes})
            if t >= compare_from - 1e-9:
                _keep(res, tick, units)
    finally:
        close = getattr(loop, "close", None)  # the loop's carousel worker, where it has one
        if close is not None:
            close()
    return res


def links_of(snapshot: Mapping[str, Sample]) -> dict[str, bool] | None:
    """PLC name -> link up, from a live record's ``PLC.<name>.LINK`` samples (None: none recorded)."""
    links = {k[4:-5]: s.value >= 0.5 for k, s in snapshot.items() if k.startswith("PLC.") and k.endswith(".LINK")}
    return links or None


def _keep(res: ReplayResult, tick, units: Mapping[str, str]) -> None:
    t = tick.t
    res.ticks.append(t)
    res.held[t] = frozenset(units[n] for n, r in tick.mpc.items() if r.held)
    res.proposals[t] = {k: v for n, r in tick.mpc.items() if not r.held for k, v in r.mv.items()}
    res.raised += [(e.t, e.alarm_id) for e in tick.raised]
    for est in tick.estimates.values():
        for tag, v in est.nis.items():
            res.nis[tag].append(float(v))
    res.points += tick.points


def _modes_at(recorded: Recorded, t: float) -> dict[str, str]:
    before = [s for s in recorded.modes if s <= t + 1e-9]
    return dict(recorded.modes[max(before)]) if before else {}


# -- comparison ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    tag: str
    ticks: int  # ticks where both proposed
    max_abs: float
    mean: float  # replayed − recorded
    at_s: float  # time of the largest difference
    recorded: float
    replayed: float


def compare(recorded: Recorded, result: ReplayResult) -> tuple[list[Difference], list[tuple]]:
    """Per setpoint tag the differences replayed − recorded, and every tick's row
    (t, tag, recorded, replayed, difference; NaN where one side did not propose)."""
    rows: list[tuple] = []
    by_tag: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for t in result.ticks:
        mine, theirs = result.proposals.get(t, {}), recorded.proposals.get(t, {})
        for tag in sorted(set(mine) | set(theirs)):
            a, b = theirs.get(tag, math.nan), mine.get(tag, math.nan)
            rows.append((t, tag, a, b, b - a))
            if math.isfinite(a) and math.isfinite(b):
                by_tag[tag].append((t, a, b))
    diffs = []
    for tag, xs in sorted(by_tag.items()):
        d = np.array([b - a for _, a, b in xs])
        k = int(np.argmax(np.abs(d)))
        diffs.append(Difference(tag, len(xs), float(abs(d[k])), float(d.mean()), xs[k][0], xs[k][1], xs[k][2]))
    return diffs, rows


def estimate_differences(recorded: Iterable[Point], result: ReplayResult) -> dict[str, float]:
    """Per published estimate (``<TAG>.EST``) recorded at the replayed ticks: max |replayed − recorded|."""
    ticks = set(result.ticks)
    theirs = {(p.tag, p.time_s): p.value for p in recorded
              if p.measurement == "estimate" and p.tag.endswith(".EST") and p.time_s in ticks}
    out: dict[str, float] = {}
    for p in result.points:
        a = theirs.get((p.tag, p.time_s))
        if p.measurement == "estimate" and a is not None and math.isfinite(a) and math.isfinite(p.value):
            out[p.tag] = max(out.get(p.tag, 0.0), abs(p.value - a))
    return dict(sorted(out.items()))


def held_mismatches(recorded: Recorded, result: ReplayResult) -> list[tuple[float, str, bool]]:
    """(t, unit, held in the replay) where the replay's MPC held and the recorded did not, or back."""
    out = []
    for t in result.ticks:
        a, b = recorded.held.get(t, frozenset()), result.held.get(t, frozenset())
        out += [(t, u, u in b) for u in sorted(a ^ b)]
    return out


# -- the run directory ---------------------------------------------------------------------
def run_replay(config, points: Sequence[Point], t_from: float, t_to: float, out_dir: Path, *,
               source: str, warmup_s: float = 0.0, modes: Mapping[str, str] | None = None,
               make_plot: bool = True, **loop_options) -> dict:
    """Replay [t_from, t_to] (estimators warmed up from ``t_from − warmup_s``; ``points`` must
    cover it) and write ``out_dir`` like ``pilot simulate``'s: summary.json, proposals.csv
    (t, tag, recorded, replayed, difference), history.sqlite (the replay's estimate, decision
    and alarm points) and replay.png. Returns the summary."""
    from .historian.sqlite import SqliteSink, history_path
    from .secrets import private_dir, write_private_text

    recorded = recorded_decisions(points)
    snapshots = RecordedSnapshots((p for p in points if p.measurement == "process"), report_delays(config))
    ticks = tick_times(recorded, t_from - warmup_s, t_to, config.control.guard.control_period_s)
    if not [t for t in ticks if t >= t_from - 1e-9]:
        raise ValueError(f"no control tick recorded in {t_from:g} .. {t_to:g} s of {source}")
    log.info("replay of %s: %d ticks (%d of warm-up)", source, len(ticks), sum(t < t_from - 1e-9 for t in ticks))
    result = replay(config, snapshots, ticks, recorded, compare_from=t_from, modes=modes, **loop_options)
    diffs, rows = compare(recorded, result)
    private_dir(out_dir)
    db = history_path(out_dir)
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    sink = SqliteSink(db)
    sink.open()
    try:
        sink.write_batch(result.points)
        sink.flush()
    finally:
        sink.close()
    lines = ["time_s,tag,recorded,replayed,difference"] + [f"{t:.3f},{tag},{a!r},{b!r},{d!r}" for t, tag, a, b, d in rows]
    write_private_text(out_dir / "proposals.csv", "\n".join(lines) + "\n")
    summary = _summary(config, source, t_from, t_to, warmup_s, recorded, result, diffs)
    summary["estimates_max_abs_difference"] = estimate_differences(points, result)
    summary["plots"] = [replay_plot(out_dir / "replay.png", config, rows, t_from).name] if make_plot else []
    write_private_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return summary


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _summary(config, source, t_from, t_to, warmup_s, recorded: Recorded, result: ReplayResult,
             diffs: Sequence[Difference]) -> dict:
    nis = {tag: {"n": len(v), "mean": _finite(float(np.mean(v))), "p95": _finite(float(np.percentile(v, 95)))}
           for tag, v in sorted(result.nis.items()) if v}
    rec_raised = [(t, a) for t, a in recorded.raised if t_from - 1e-9 <= t <= t_to + 1e-9]
    return {
        "config": config.name, "source": source, "from_s": t_from, "to_s": t_to, "warmup_s": warmup_s,
        "ticks": len(result.ticks), "recorded_ticks": len([t for t in recorded.ticks if t in result.proposals]),
        "differences": {d.tag: {"ticks": d.ticks, "max_abs": d.max_abs, "mean": d.mean, "at_s": d.at_s,
                                "recorded": d.recorded, "replayed": d.replayed} for d in diffs},
        "held_mismatches": [{"t_s": t, "unit": u, "held_in_replay": h} for t, u, h in held_mismatches(recorded, result)],
        "alarms_raised": {"replay": [{"t_s": t, "id": a} for t, a in result.raised],
                          "recorded": [{"t_s": t, "id": a} for t, a in rec_raised]},
        "nis": nis,
        "historian": "history.sqlite", "proposals": "proposals.csv",
    }


def replay_plot(path: Path, config, rows: Sequence[tuple], t_from: float) -> Path:
    """One panel per proposed setpoint: recorded and replayed proposals over the hours from
    ``t_from`` (plant seconds, or Unix seconds of a live record), in the tag's unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {t.name: t.unit for t in config.tags}
    tags = sorted({r[1] for r in rows})
    t0 = 0.0 if t_from < 10 * 365 * 86400 else t_from  # a simulated record: plant hours
    fig, axes = plt.subplots(len(tags) or 1, 1, figsize=(9, 1.7 * max(len(tags), 1) + 0.8), sharex=True,
                             squeeze=False)
    for ax, tag in zip(axes[:, 0], tags):
        mine = [r for r in rows if r[1] == tag]
        t = (np.array([r[0] for r in mine]) - t0) / 3600.0
        ax.plot(t, [r[2] for r in mine], "-", color="0.5", lw=2.5, label="recorded")
        ax.plot(t, [r[3] for r in mine], "--", color="C1", lw=1.2, label="replay")
        values = np.array([v for r in mine for v in r[2:4] if math.isfinite(v)])
        if values.size and np.ptp(values) < 1e-3 * max(1.0, abs(values.mean())):  # flat: no offset scale
            pad = 1e-3 * max(1.0, abs(values.mean()))
            ax.set_ylim(values.mean() - pad, values.mean() + pad)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylabel(f"{tag}\n[{units.get(tag, '')}]", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[0, 0].set_title("MPC proposals: recorded vs replayed", fontsize=9)
    axes[-1, 0].set_xlabel("plant time [h]" if t0 == 0.0 else f"time from {time_label(t0)} [h]")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_label(t: float) -> str:
    """Plant seconds as hours (a simulated record), Unix seconds (a live one) as ISO UTC."""
    if t < 10 * 365 * 86400:
        return f"{t / 3600:.2f} h"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
