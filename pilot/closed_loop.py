"""The control loop run in-process beside the twin (``pilot simulate --control``), and the tick
statistics shared with the live runner (``pilot run``).

``ClosedLoop.tick(plant)``: snapshot → ``ControlLoop.step`` → ``plant.write(writes)`` → tell the
loop what was refused → return the tick's historian points; ``close()`` (or a with-statement)
ends the loop's slow-job workers. ``LoopStats`` counts ticks, held tags, refused writes and alarms
and keeps the tick latencies in a ``LatencyHistogram`` for the summary's p50 / p99 / max: a
fixed number of counters however long the loop runs (a process serving for weeks keeps no list
of every tick).
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


class LatencyHistogram:
    """Counts of latencies in logarithmic bins: ``BINS_PER_DECADE`` bins per factor of ten from
    ``LOW_S`` to ``HIGH_S`` (values outside land in the end bins), the exact minimum and maximum
    beside them. A quantile q is the geometric centre of the bin holding the ⌈q·n⌉-th smallest
    value, clipped to [min, max] (the smallest and the largest exactly): within a factor
    10^(1/(2·BINS_PER_DECADE)) of the exact order statistic (±0.6 % at 200 bins a decade) for
    values inside the range, in constant memory (2,000 counters)."""

    LOW_S, HIGH_S, BINS_PER_DECADE = 1e-6, 1e4, 200

    def __init__(self) -> None:
        decades = np.log10(self.HIGH_S / self.LOW_S)
        self.counts = np.zeros(int(round(decades * self.BINS_PER_DECADE)), dtype=np.int64)
        self.n = 0
        self.min_s, self.max_s = np.inf, -np.inf

    def add(self, latency_s: float) -> None:
        x = float(latency_s)
        if not np.isfinite(x):
            return
        k = int(np.floor(np.log10(max(x, self.LOW_S) / self.LOW_S) * self.BINS_PER_DECADE))
        self.counts[min(max(k, 0), self.counts.size - 1)] += 1
        self.n += 1
        self.min_s, self.max_s = min(self.min_s, x), max(self.max_s, x)

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) in seconds; 0.0 before the first value."""
        if self.n == 0:
            return 0.0
        rank = min(max(int(np.ceil(q * self.n)), 1), self.n)
        if rank in (1, self.n):  # the smallest and the largest are kept exactly
            return float(self.min_s if rank == 1 else self.max_s)
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        centre = self.LOW_S * 10.0 ** ((k + 0.5) / self.BINS_PER_DECADE)
        return float(min(max(centre, self.min_s), self.max_s))

    def summary_ms(self) -> dict[str, float]:
        return {"p50": 1e3 * self.quantile(0.50), "p99": 1e3 * self.quantile(0.99),
                "max": 1e3 * self.max_s if self.n else 0.0}


@dataclass
class LoopStats:
    ticks: int = 0
    ticks_with_holds: int = 0
    held: Counter = field(default_factory=Counter)  # reason (first words) -> tag-ticks
    mpc_held: Counter = field(default_factory=Counter)  # unit -> ticks
    written: int = 0
    refused: Counter = field(default_factory=Counter)  # tag -> count
    raised: Counter = field(default_factory=Counter)  # alarm id -> activations
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, tick: TickResult, result: WriteResult | None) -> None:
        self.ticks += 1
        self.latencies.add(tick.latency_s)
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
            "tick_latency_ms": self.latencies.summary_ms(),
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

    def close(self) -> None:
        """End the loop's slow-job workers (``ControlLoop.close``); idempotent. The statistics
        stay readable."""
        self.loop.close()

    def __enter__(self) -> ClosedLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
