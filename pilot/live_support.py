"""Small pieces of ``pilot run``'s driver: the line's clock over several PLC clocks (``LineClock``),
the link-status points, the console's plant-time stamps and the status line.

**The line's clock.** Every PLC stamps its values with its own clock. The loop runs on one clock,
``τ = max over the PLCs that are up of (newest source time of that PLC + its offset)``; offsets
start at 0 (PLCs agree). When a PLC comes back after an outage, its first fresh values are
compared with where the line's clock should be now (the other PLCs' clocks if one is up, else the
last τ plus the wall time elapsed at the plant-seconds-per-wall-second rate measured so far); a
difference above one control period is a clock step (a restarted simulator starts from its
configured start; a real PLC may have been re-set): the PLC's offset absorbs it, the step is
logged and kept for the summary, and the loop moves on from where it was instead of stalling
until the plant clock passes the last tick again (or jumping a whole outage of rate limit at once).
A clock that steps back while its link stays up is re-based the same way. Samples of a re-based PLC
are handed to the loop and the historian with the offset applied, so nothing is stored twice at a
time already used.

**Late samples.** A sample reaches the loop some time after its source time: the PLC's values of
one instant arrive over several polls, and a tick may come between them. A process point whose
sample arrived after a tick at or past its source time carries the text ``after tick <t>`` (``t``:
that tick's line time, ``repr``), so a replay shows it to the ticks after ``t`` only, as the loop
saw it (``late_text`` / ``late_after``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from twin.signals import Point, Quality, Sample, Snapshot

RATE_BOUNDS = (1e-3, 1e4)  # plant seconds per wall second a measured rate is clipped to


@dataclass(frozen=True)
class ClockStep:
    plc: str
    t: float  # line clock at the re-base
    step_s: float  # PLC clock minus where the line's clock was (negative: stepped back)
    wall: float


def iso(t: float) -> str:
    """Plant time (Unix seconds) as ISO 8601 UTC, to the second."""
    if not math.isfinite(t):
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def newest_by_plc(snapshot: Snapshot, plc_of: Mapping[str, str]) -> dict[str, float]:
    """PLC -> newest source time among its samples that are not BAD."""
    out: dict[str, float] = {}
    for name, s in snapshot.items():
        plc = plc_of.get(name)
        if plc is None or s.quality == Quality.BAD or not math.isfinite(s.source_time):
            continue
        if s.source_time > out.get(plc, -math.inf):
            out[plc] = s.source_time
    return out


class LineClock:
    """Offsets of the PLC clocks onto the line's clock (see the module docstring)."""

    def __init__(self, plcs, tolerance_s: float):
        self.offsets: dict[str, float] = {p: 0.0 for p in plcs}
        self.tolerance_s = tolerance_s
        self.pending: set[str] = set()  # back after an outage: check its clock on its first fresh values
        self.steps: list[ClockStep] = []
        self.t = -math.inf  # newest line time seen
        self._wall = math.nan
        self._first: tuple[float, float] | None = None

    def reconnected(self, plc: str) -> None:
        self.pending.add(plc)

    def rate(self, wall: float) -> float:
        if self._first is None or wall - self._first[1] < 1.0 or not math.isfinite(self.t):
            return 1.0
        r = (self.t - self._first[0]) / (self._wall - self._first[1]) if self._wall > self._first[1] else 1.0
        return min(max(r, RATE_BOUNDS[0]), RATE_BOUNDS[1])

    def expected(self, wall: float, newest: Mapping[str, float], up, exclude: str | None = None) -> float:
        others = [newest[p] + self.offsets[p] for p in up if p != exclude and p in newest and p not in self.pending]
        if others:
            return max(others)
        return self.t + self.rate(wall) * (wall - self._wall) if math.isfinite(self.t) else -math.inf

    def update(self, newest: Mapping[str, float], up, wall: float) -> tuple[float, list[ClockStep]]:
        """(line time now, clock steps re-based by this call) from the PLCs' newest source times."""
        steps = [s for p in sorted(self.pending & set(newest)) if (s := self._check(p, newest, up, wall))]
        times = [newest[p] + self.offsets[p] for p in up if p in newest and p not in self.pending]
        if not times:
            return self.t, steps
        t = max(times)
        if math.isfinite(self.t) and t < self.t - self.tolerance_s:  # stepped back while up
            exp = self.t + self.rate(wall) * (wall - self._wall)
            for p in up:
                if p in newest:
                    self.offsets[p] += exp - t
            steps.append(self._step("+".join(sorted(p for p in up if p in newest)), exp, t - exp, wall))
            t = exp
        if self._first is None:
            self._first = (t, wall)
        if t >= self.t:
            self.t, self._wall = t, wall
        return self.t, steps

    def _check(self, plc: str, newest: Mapping[str, float], up, wall: float) -> ClockStep | None:
        self.pending.discard(plc)
        exp = self.expected(wall, newest, up, exclude=plc)
        mine = newest[plc] + self.offsets[plc]
        if not math.isfinite(exp) or abs(mine - exp) <= self.tolerance_s:
            return None
        self.offsets[plc] += exp - mine
        return self._step(plc, exp, mine - exp, wall)

    def _step(self, plc: str, t: float, step_s: float, wall: float) -> ClockStep:
        s = ClockStep(plc, t, step_s, wall)
        self.steps.append(s)
        return s

    def offset_of(self, plc: str | None) -> float:
        return self.offsets.get(plc, 0.0) if plc is not None else 0.0

    def map_sample(self, s: Sample, plc: str | None) -> Sample:
        off = self.offset_of(plc)
        return s if off == 0.0 else replace(s, source_time=s.source_time + off)

    def map_snapshot(self, snapshot: Snapshot, plc_of: Mapping[str, str]) -> Snapshot:
        if not any(self.offsets.values()):
            return snapshot
        return {k: self.map_sample(s, plc_of.get(k)) for k, s in snapshot.items()}


LATE = "after tick "


def late_text(tick_t: float) -> str:
    """The text of a process point whose sample arrived after the tick at ``tick_t``."""
    return f"{LATE}{tick_t!r}"


def late_after(text: str) -> float | None:
    """The tick a late sample missed (``late_text``), or None for any other text."""
    if not text.startswith(LATE):
        return None
    try:
        return float(text[len(LATE):])
    except ValueError:
        return None


def link_tag(plc: str) -> str:
    return f"PLC.{plc}.LINK"


def link_point(plc: str, up: bool, t: float, unit: str, session: str = "") -> Point:
    """The link-status process point ``PLC.<name>.LINK`` (1 up, 0 down) at a transition."""
    return Point("process", link_tag(plc), unit, 1.0 if up else 0.0, t, "good", session)


def status_line(t: float, ticks: int, writes: int, refused: int, alarms: int, links: Mapping[str, object],
                historian: Mapping | None, wall: float) -> str:
    """One line for the console: ticks, writes, alarms, each PLC's link, the historian's backlog."""
    parts = []
    for name, st in links.items():
        if getattr(st, "up", False):
            parts.append(f"{name} up")
        else:
            parts.append(f"{name} DOWN {max(wall - getattr(st, 'since', wall), 0.0):.0f} s")
    hist = "historian -" if not historian else (
        f"historian backlog {historian.get('backlog', 0)}, written {historian.get('written', 0)}"
        + (f", dropped {sum(historian['dropped'].values())}" if historian.get("dropped") else ""))
    return (f"status {iso(t)}: {ticks} ticks, {writes} writes ({refused} refused), {alarms} alarms active; "
            f"PLC {', '.join(parts) or '-'}; {hist}")
