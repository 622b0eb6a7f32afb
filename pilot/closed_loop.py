"""The control loop run in-process beside the twin (``pilot simulate --control``), and the tick
statistics shared with the live runner (``pilot run``).

``ClosedLoop.tick(plant)``: snapshot → ``ControlLoop.step`` → ``plant.write(writes)`` → tell the
loop what was refused → return the tick's historian points. ``LoopStats`` counts ticks, held
tags, refused writes and alarms and keeps the tick latencies for the summary's p50 / p99.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from controllers.loop import ControlLoop, TickResult, every_loop
from twin.signals import WriteResult

from .historian.base import Point

log = logging.getLogger(__name__)


@dataclass
class LoopStats:
    ticks: int = 0
    ticks_with_holds: int = 0
    held: Counter = field(default_factory=Counter)  # reason (first words) -> tag-ticks
    mpc_held: Counter = field(default_factory=Counter)  # unit -> ticks
    written: int = 0
    refused: Counter = field(default_factory=Counter)  # tag -> count
    raised: Counter = field(default_factory=Counter)  # alarm id -> activations
    latencies_s: list[float] = field(default_factory=list)

    def add(self, tick: TickResult, result: WriteResult | None) -> None:
        self.ticks += 1
        self.latencies_s.append(tick.latency_s)
        if tick.held:
            self.ticks_with_holds += 1
        for reason in tick.held.values():
            self.held[_short(reason)] += 1
        for unit, res in tick.mpc.items():
            if res.held:
                self.mpc_held[unit] += 1
        for e in tick.raised:
            self.raised[e.alarm_id] += 1
        if result is not None:
            self.written += len(result.accepted)
            for tag in result.refused:
                self.refused[tag] += 1

    def summary(self, loop: ControlLoop, t: float) -> dict:
        lat = np.array(self.latencies_s) * 1e3 if self.latencies_s else np.zeros(1)
        m = loop.alarms.metrics(t)
        return {
            "modes": {k: v for k, v in loop.modes.items() if not k.startswith("<")},
            "control_period_s": loop.period, "mpc_deadline_s": loop.deadline_s,
            "ticks": self.ticks, "ticks_with_holds": self.ticks_with_holds,
            "held": dict(self.held), "mpc_held_ticks": dict(self.mpc_held),
            "writes_accepted": self.written, "writes_refused": dict(self.refused),
            "alarms_raised": sum(self.raised.values()), "alarms_raised_by_id": dict(self.raised),
            "alarm_peak_per_10min": dict(m.peak_per_window), "alarm_flooded_s": dict(m.time_in_flood_s),
            "alarms_chattered": list(m.chattered),
            "tick_latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                "max": float(lat.max())},
            "units": [u.name for u in loop.units],
        }


def _short(reason: str) -> str:
    """Group hold reasons: drop the numbers (``stale (181 s > 180 s)`` → ``stale``)."""
    return reason.split(" (")[0].split(":")[0] if not reason.startswith("MPC held") else "MPC held"


class ClosedLoop:
    """The loop beside an in-process ``TwinPlant``; every loop of the config in ``mode``."""

    def __init__(self, config, mode: str, **loop_options):
        self.loop = ControlLoop(config, target="twin", session="standalone", modes=every_loop(config, mode),
                                **loop_options)
        self.period = self.loop.period
        self.next_t = self.period
        self.stats = LoopStats()
        self.last: TickResult | None = None

    def tick(self, plant) -> list[Point]:
        tick = self.loop.step(plant.snapshot(), plant.t)
        result = plant.write(tick.writes) if tick.writes else None
        if result is not None and result.refused:
            log.warning("t=%.0f s: writes refused by the twin: %s", plant.t, dict(result.refused))
            self.loop.refused(result)
        self.stats.add(tick, result)
        self.next_t += self.period
        self.last = tick
        return list(tick.points)

    def stats_summary(self, t: float) -> dict:
        return self.stats.summary(self.loop, t)
