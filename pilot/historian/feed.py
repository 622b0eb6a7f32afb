"""A closed-loop run of the twin as historian points: ``pilot historian feed``, tests, demos.

The twin (``TwinPlant``) runs with every loop of the config in ``auto`` through the same
``ClosedLoop`` / ``ControlLoop`` as ``pilot simulate --control auto``; what is recorded is what
that run produced, nothing is synthesised:

- ``process``: the twin's tags every ``simulation.record_period_s``, fresh samples only
  (``FreshSamples``);
- ``estimate``, ``decision``, ``alarm``: the points of every control tick (``TickResult.points``:
  the estimators, the MPCs after the guard, the ISA-18.2 alarm manager of the config);
- ``kpi``: ``twin.kpis.compute_kpis`` scalars at every recording step.

An optional scripted malfunction (``twin.malfunctions``) is injected before the first step.
Times are plant seconds shifted by ``epoch_s`` (a feed ending now: ``epoch_s = now - duration``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

from twin.malfunctions import PROCESS_KINDS, SIGNAL_KINDS, Malfunction
from twin.points import FreshSamples, kpi_points, process_points

from ..closed_loop import ClosedLoop
from ..durations import parse_duration
from .base import Point

ProgressFn = Callable[[float, float], None]
KINDS = PROCESS_KINDS + SIGNAL_KINDS
DEFAULT_ONSET_S = 600.0
# kind -> (target, severity) when the command line names only the kind
DEFAULTS: dict[str, tuple[str, float]] = {
    "feed_swing": ("cascade", 0.3), "extractant_degradation": ("extraction", 0.3),
    "crud_entrainment": ("extraction", 0.5), "adsorbent_fouling": ("col1", 0.5),
    "anode_effect": ("cell1", 0.5), "heater_failure": ("cell1", 0.8),
    "electrolyte_contamination": ("cell1", 0.35), "pump_trip": ("SX.ORG.FLOW_SP", 0.7),
    "frozen_value": ("CELL1.TEMP", 1.0), "drift": ("CELL1.TEMP", 50.0),
    "noise_burst": ("CELL1.TEMP", 5.0), "bad_status": ("CELL1.TEMP", 1.0),
    "analyser_outage": ("SX.TB_PURITY", 1.0),
}
SPEC_HELP = ("KIND[@TARGET][:SEVERITY[:ONSET]], KIND one of " + ", ".join(KINDS)
             + f"; ONSET a plant duration from the start (default {DEFAULT_ONSET_S / 60:.0f}min)")


def parse_malfunction(spec: str) -> Malfunction:
    """``KIND[@TARGET][:SEVERITY[:ONSET]]`` as a ``Malfunction``; ValueError naming what is allowed."""
    head, *rest = spec.strip().split(":")
    kind, _, target = head.partition("@")
    if kind not in DEFAULTS:
        raise ValueError(f"--malfunction {spec!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    if len(rest) > 2:
        raise ValueError(f"--malfunction {spec!r}: expected {SPEC_HELP}")
    default_target, severity = DEFAULTS[kind]
    try:
        severity = float(rest[0]) if rest and rest[0] else severity
        onset = parse_duration(rest[1]) if len(rest) > 1 else DEFAULT_ONSET_S
        return Malfunction(kind=kind, target=target or default_target, severity=severity, onset_s=onset)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"--malfunction {spec!r}: {_first_line(exc)}; expected {SPEC_HELP}") from None


def _first_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(str(e.get("msg", e)) for e in errors())
    return str(exc).splitlines()[0]


def simulated_run(config, duration_s: float, *, epoch_s: float = 0.0, seed: int = 0,
                  step_s: float | None = None, malfunction: Malfunction | None = None,
                  progress: ProgressFn | None = None) -> Iterator[list[Point]]:
    """Yield the points of a closed-loop run, one list per recording step or control tick (the
    first at t = 0). ``step_s``: the recording period (default ``simulation.record_period_s``)."""
    from twin.kpis import compute_kpis
    from twin.malfunctions import inject
    from twin.plant import TwinPlant

    plant = TwinPlant(config, seed=seed)
    if malfunction is not None:
        inject(plant, malfunction)  # validates the target first
    ctrl = ClosedLoop(config, "auto")
    record_dt = step_s or config.simulation.record_period_s
    units = {name: plant.unit_of(name) for name in plant.tags.bound}
    fresh, next_record = FreshSamples(), record_dt
    shift = _shifter(epoch_s)

    def recorded() -> list[Point]:
        kpis = {k: float(v) for k, v in compute_kpis(plant).items()
                if isinstance(v, (int, float)) and math.isfinite(float(v))}
        return shift(process_points(fresh(plant.snapshot()), units) + kpi_points(plant.t, kpis))

    with ctrl:  # the loop's slow-job workers end with the feed (also when it is not read to the end)
        yield recorded()
        while plant.t < duration_s - 1e-9:
            plant.advance(min(next_record, ctrl.next_t, duration_s) - plant.t)
            if plant.t >= ctrl.next_t - 1e-9:
                yield shift(ctrl.tick(plant))
            if plant.t >= next_record - 1e-9 or plant.t >= duration_s - 1e-9:
                next_record += record_dt
                yield recorded()
                if progress:
                    progress(plant.t, duration_s)


def _shifter(epoch_s: float) -> Callable[[list[Point]], list[Point]]:
    if not epoch_s:
        return lambda points: points
    return lambda points: [dataclasses.replace(p, time_s=p.time_s + epoch_s) for p in points]
