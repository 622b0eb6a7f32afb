"""Replay of a recorded window through the estimators and MPCs as they are now (``pilot replay``).

The record and the snapshots the loop saw: ``pilot.replay_record``. The loop
(``controllers.loop.ControlLoop``, built from the config given, no deadline, no timing points)
steps at every recorded tick on the rebuilt snapshot, in the recorded loop modes. Nothing is
written: after each tick the loop is told what the plant took then (``ControlLoop.accepted``: the
recorded loop's accepted writes, ``Recorded.taken``), and the replay's own writes the plant did not
take go back as refused; a write the PLC denied (BadUserAccessDenied, recorded as the
``.REFUSED`` point's text) is denied in the replay too. So the estimators take the inputs the
plant really had and the guard's rate limits move from the recorded setpoints, as the recorded
loop's did. Before the first tick the same is done with the last recorded tick before the window.
Proposals, estimates (``.EST``, ``.INNOV``, ``.NIS``) and the alarms it would have raised are
the replay's result; ``compare`` sets its proposals beside the recorded ones.

With the same config the replay repeats the recorded estimates (the EKFs and the LSODA
predictions are deterministic for the same inputs) and proposals to OSQP's tolerance (its
ρ-adaptation interval follows its measured setup time), a simulated record and a live one alike;
with changed weights each tick answers "what would the MPC have proposed from the plant as it
was", open loop: the record does not follow the replay's proposals.

Live records: the carousel's slow decision lands at the first tick after it finished
(``slow_work="worker"``), in a replay at the next tick (``"next_tick"``); at a live run's first
tick it is therefore still pending (held) where the replay's is not.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controllers.loop import ControlLoop
from twin.signals import Point, Sample

from .replay_record import (
    Recorded,
    RecordedSnapshots,
    recorded_decisions,
    report_delays,
)

log = logging.getLogger(__name__)
DENIED = "BadUserAccessDenied"


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
    first = recorded.modes_at(ticks[0]) if ticks else {}
    loop = ControlLoop(config, target="twin", session="standalone", modes={**first, **modes},
                       mpc_deadline_s=None, timing_points=False, control_period_s=period, **loop_options)
    units = {u.name: u.plant_unit for u in loop.units}
    configured = loop.modes
    res = ReplayResult()
    try:
        before = [t for t in recorded.ticks if ticks and t < ticks[0] - 1e-9]
        if before:  # the plant as the window found it: the writes and denials of the tick before
            _plant_took(loop, recorded, max(before), configured, {}, denials=before)
        for t in ticks:
            for lp, mode in recorded.modes.get(t, {}).items():
                if lp not in modes and loop.modes.get(lp) != mode:
                    loop.set_mode(lp, mode)
            snap = snapshots.at(t)
            tick = loop.step(snap, t, links=links_of(snap))
            _plant_took(loop, recorded, t, configured, tick.writes, denials=[t])
            if t >= compare_from - 1e-9:
                _keep(res, tick, units)
    finally:
        close = getattr(loop, "close", None)  # the loop's carousel worker, where it has one
        if close is not None:
            close()
    return res


def _plant_took(loop: ControlLoop, recorded: Recorded, t: float, configured: Mapping[str, str],
                writes: Mapping[str, float], denials: Sequence[float]) -> None:
    """Tell the loop what the recorded plant took at the tick t (``writes``: the replay's own;
    those the plant did not take are refused) and the denials recorded at the ticks ``denials``."""
    took = recorded.taken(t, loop.guard.loop_of, configured)
    loop.refused({tag: "replay: the recorded plant did not take it" for tag in writes if tag not in took})
    loop.accepted(took, t)
    for s in denials:
        for tag, reason in (recorded.refused or {}).get(s, {}).items():
            if DENIED in reason:
                loop.denied(tag, reason)


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
               make_plot: bool = True, read_from: float | None = None, **loop_options) -> dict:
    """Replay [t_from, t_to] (estimators warmed up from ``t_from − warmup_s``; ``points`` must
    cover it, from ``read_from`` on, with the values held before it) and write ``out_dir`` like
    ``pilot simulate``'s: summary.json, proposals.csv (t, tag, recorded, replayed, difference),
    history.sqlite (the replay's estimate, decision and alarm points) and replay.png. Returns the
    summary."""
    from .historian.sqlite import SqliteSink, history_path
    from .secrets import private_dir, write_private_text

    period = config.control.guard.control_period_s
    recorded = recorded_decisions(points)
    snapshots = RecordedSnapshots((p for p in points if p.measurement == "process"), report_delays(config),
                                  late_s=period / 2)
    ticks = tick_times(recorded, t_from - warmup_s, t_to, period)
    if not [t for t in ticks if t >= t_from - 1e-9]:
        raise ValueError(f"no control tick recorded in {t_from:g} .. {t_to:g} s of {source}")
    log.info("replay of %s: %d ticks (%d of warm-up)", source, len(ticks), sum(t < t_from - 1e-9 for t in ticks))
    start = start_values(config, snapshots.at(ticks[0]), ticks[0] if read_from is None else read_from)
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
    summary["start"] = start
    summary["estimates_max_abs_difference"] = estimate_differences(points, result)
    summary["plots"] = [replay_plot(out_dir / "replay.png", config, rows, t_from).name] if make_plot else []
    write_private_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return summary


def start_values(config, first: Mapping[str, Sample], read_from: float) -> dict:
    """Where the first tick's snapshot comes from: the PLC tags whose value is the last recorded
    before the window read (``read_from``: a live record keeps a value once, when it changes) and
    those with none recorded at or before the first tick (their loops hold: input missing)."""
    names = [t.name for t in config.tags]
    held = sorted(n for n in names if n in first and first[n].source_time < read_from - 1e-9)
    return {"held_from_before": held, "missing": sorted(n for n in names if n not in first)}


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
