"""Composition root of the standalone run: twin + recorder + summary + plots.

``simulate`` is the main job behind ``pilot simulate``: it runs the line on the virtual clock
(as fast as the machine allows, or paced at ``speed`` × real time), records every tag into the
embedded historian (its index built once at the end, ``SqliteSink(index_at_close=True)``), writes
``summary.json``, and only then draws the plots (``draw_plots``, outside the timed run: a plot
that fails is named in ``RunResult.plot_errors`` and leaves the summary and the history as they
are; ``pilot simulate`` prints the summary before it draws). A run folder it creates is
owner-only (0700) and so are the history and the summary (0600, from creation): they are process
data. A folder that exists already keeps its mode.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pilot_config.plant import PilotLineConfig
from twin.kpis import compute_kpis
from twin.malfunctions import inject
from twin.plant import TwinPlant
from twin.points import FreshSamples, process_points

from .closed_loop import ClosedLoop
from .historian.sqlite import SqliteSink, history_path
from .secrets import private_dir, write_private_text

ProgressFn = Callable[[float, float], None]
PROFILE_EVERY_S = 6 * 3600.0


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    summary: dict
    plots: tuple[Path, ...]
    plot_errors: tuple[str, ...] = ()  # one line per plot that could not be drawn
    profiles: tuple = ()  # (t, stage profile) every PROFILE_EVERY_S: the cascade plot's input
    events: tuple = ()  # the plant's events (carousel switches on the plots)


def simulate(
    config: PilotLineConfig,
    until_s: float,
    out_dir: Path,
    *,
    speed: float | None = None,
    seed: int | None = None,
    progress: ProgressFn | None = None,
    make_plots: bool = True,
    control: str = "off",
    malfunctions: Sequence = (),
) -> RunResult:
    """Run the line standalone for ``until_s`` plant seconds; return the summary.

    ``control``: ``off`` (open loop, the PLC's own logic only), ``advisory`` or ``auto`` (every
    loop of ``control.guard.loops`` in that mode): every ``control.guard.control_period_s`` the
    ``ControlLoop`` steps on the snapshot, its writes go to the twin and its points (estimates,
    decisions, alarms) into the run's history; ``summary["control"]`` holds its statistics."""
    if control not in ("off", "advisory", "auto"):
        raise ValueError(f"control must be off, advisory or auto; got {control!r}")
    private_dir(out_dir)
    db = history_path(out_dir)
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)  # a run's history is its own: never mixed with an older run
    plant = TwinPlant(config, seed=seed)
    for m in malfunctions:  # twin.malfunctions.Malfunction, scheduled by their onset
        inject(plant, m)
    units = {name: plant.unit_of(name) for name in plant.tags.bound}
    sink = SqliteSink(db, index_at_close=True, durable=False)  # written start to end, read after
    sink.open()
    record_dt = config.simulation.record_period_s
    profiles: list[tuple[float, dict]] = [(0.0, plant.stage_profile())]
    wall0 = time.perf_counter()
    next_profile = PROFILE_EVERY_S
    ctrl = None if control == "off" else ClosedLoop(config, control)
    next_record = record_dt
    fresh = FreshSamples()  # a sample once, at its own time (an assay is held until the next)
    try:
        sink.write_batch(process_points(fresh(plant.snapshot()), units))
        while plant.t < until_s - 1e-9:
            target = min(next_record, ctrl.next_t if ctrl else math.inf, until_s)
            plant.advance(target - plant.t, sync=target >= until_s - 1e-9)  # records: the latest scan
            if ctrl is not None and plant.t >= ctrl.next_t - 1e-9:
                sink.write_batch(ctrl.tick(plant))
            if plant.t < next_record - 1e-9 and plant.t < until_s - 1e-9:
                continue
            next_record += record_dt
            sink.write_batch(process_points(fresh(plant.snapshot()), units))
            if plant.t >= next_profile - 1e-9 or plant.t >= until_s - 1e-9:
                plant.sync()
                profiles.append((plant.t, plant.stage_profile()))
                next_profile += PROFILE_EVERY_S
            if speed:
                lag = plant.t / speed - (time.perf_counter() - wall0)
                if lag > 0:
                    time.sleep(lag)
            if progress:
                progress(plant.t, until_s)
        sink.flush()
    finally:
        sink.close()
        if ctrl is not None:
            ctrl.close()  # the loop's slow-job workers; its statistics stay readable
    wall = time.perf_counter() - wall0
    summary = {
        "config": config.name,
        "plant_time_s": plant.t,
        "wall_time_s": wall,
        "realtime_factor": plant.t / wall if wall > 0 else float("inf"),
        "final": {name: s.value for name, s in sorted(plant.snapshot().items())},
        "kpis": compute_kpis(plant),
        "events": [{"t_s": e.t, "unit": e.unit, "event": e.text} for e in plant.events],
        "historian": str(history_path(out_dir).name),
    }
    if ctrl is not None:
        summary["control"] = ctrl.stats_summary(plant.t)
    write_private_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    result = RunResult(out_dir, summary, (), profiles=tuple(profiles), events=tuple(plant.events))
    return draw_plots(result, config) if make_plots else result


def draw_plots(result: RunResult, config: PilotLineConfig) -> RunResult:
    """The run's PNGs from its closed history (``plots.make_plots``): the result with the plots
    drawn and a line for each one that could not be."""
    from .plots import make_plots

    plots, errors = make_plots(result.out_dir, config, list(result.profiles), list(result.events))
    return replace(result, plots=plots, plot_errors=errors)
