"""A simulated run as historian points, all five measurements: for tests, demos and the benchmark.

``process`` points come from the twin (``TwinPlant``), only fresh samples (``FreshSamples``).
The other measurements are derived from the same run by plain rules, standing in until the
control loop records the real estimator / MPC / alarm output through the same ``twin.points`` builders:

- ``estimate``: ``<TAG>.EST`` = the twin's noise-free signal in engineering units, ``.INNOV`` =
  measured − estimate, ``.NIS`` = INNOV² / max(noise_sd, 1 % of span)²;
- ``decision``: every writable tag proposed at its current value, applied clamped to its range;
  solve time = the wall time of the twin step; held = 1 every 10th tick;
- ``alarm``: limit alarms ``<TAG>.HI`` / ``<TAG>.LO`` on sensors, raised in the outer 5 % of the
  range, cleared inside 10 % (hysteresis), one point per transition;
- ``kpi``: ``twin.kpis.compute_kpis`` scalars every tick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from twin.points import (
    FreshSamples,
    alarm_point,
    decision_points,
    estimate_points,
    kpi_points,
    process_points,
)

from .base import Point


class LimitAlarms:
    """HI/LO alarms in the outer 5 % of a sensor's range, cleared inside 10 %."""

    def __init__(self, tags):
        self.tags = [t for t in tags if t.kind == "sensor"]
        self.active: set[str] = set()

    def step(self, values: dict[str, float], t: float) -> list[Point]:
        out = []
        for tag in self.tags:
            v = values.get(tag.name)
            if v is None or not math.isfinite(v):
                continue
            span = tag.high - tag.low
            for name, raise_, clear in (
                    (tag.name + ".HI", v > tag.high - 0.05 * span, v < tag.high - 0.10 * span),
                    (tag.name + ".LO", v < tag.low + 0.05 * span, v > tag.low + 0.10 * span)):
                if raise_ and name not in self.active:
                    self.active.add(name)
                    out.append(alarm_point(name, tag.plant_unit, True, t))
                elif clear and name in self.active:
                    self.active.discard(name)
                    out.append(alarm_point(name, tag.plant_unit, False, t))
        return out


def simulated_run(config, duration_s: float, *, epoch_s: float = 0.0, seed: int = 0,
                  step_s: float | None = None) -> Iterator[list[Point]]:
    """Yield one list of points per recording step (the first at t = 0)."""
    from twin.kpis import compute_kpis
    from twin.plant import TwinPlant

    plant = TwinPlant(config, seed=seed, epoch_s=epoch_s)
    step = step_s or config.simulation.record_period_s
    tags = {t.name: t for t in config.tags}
    units = {name: t.plant_unit for name, t in tags.items()}
    fresh, alarms = FreshSamples(), LimitAlarms(config.tags)
    tick, solve_s = 0, 0.0
    while True:
        snap = plant.snapshot()
        now = epoch_s + plant.t
        points = process_points(fresh(snap), units)
        points += _estimates(plant, tags, snap, units, now)
        points += _decisions(tags, snap, now, solve_s, held=tick % 10 == 9)
        points += alarms.step({n: s.value for n, s in snap.items()}, now)
        points += kpi_points(now, {k: float(v) for k, v in compute_kpis(plant).items()
                                   if isinstance(v, (int, float)) and math.isfinite(float(v))})
        yield points
        if plant.t >= duration_s - 1e-9:
            return
        t0 = time.perf_counter()
        plant.advance(min(step, duration_s - plant.t))
        solve_s = time.perf_counter() - t0
        tick += 1


def _estimates(plant, tags, snap, units, now) -> list[Point]:
    by_unit: dict[str, tuple[dict, dict, dict]] = {}
    for name, s in snap.items():
        tag = tags[name]
        if tag.kind not in ("sensor", "analyser"):
            continue
        est = tag.to_eng(plant.signal(tag.signal))
        if not (math.isfinite(est) and math.isfinite(s.value)):
            continue
        sd = max(tag.noise_sd, 0.01 * (tag.high - tag.low))
        pub, inn, nis = by_unit.setdefault(units[name], ({}, {}, {}))
        pub[name + ".EST"], inn[name] = est, s.value - est
        nis[name] = (s.value - est) ** 2 / sd**2
    out = []
    for unit, (pub, inn, nis) in by_unit.items():
        out += estimate_points(unit, now, pub, inn, nis)
    return out


def _decisions(tags, snap, now, solve_s, held) -> list[Point]:
    by_unit: dict[str, dict[str, float]] = {}
    for name, s in snap.items():
        tag = tags[name]
        if tag.writable and tag.plant_unit != "plc" and math.isfinite(s.value):
            by_unit.setdefault(tag.plant_unit, {})[name] = s.value
    out = []
    for unit, proposed in by_unit.items():
        applied = {n: min(max(v, tags[n].low), tags[n].high) for n, v in proposed.items()}
        out += decision_points(unit, now, proposed, applied, solve_s, held, cost=sum(applied.values()))
    return out
