"""The poll-and-tick driver of ``pilot run`` (``pilot.live.run_live`` builds it and hands it the
``PlantLink``): link transitions, the line's clock, re-reads after a reconnect, the tick with its
writes and refusals, the historian points and the console's status line. See ``pilot.live``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable

from controllers.loop import ControlLoop, TickResult
from twin.points import FreshSamples, process_points
from twin.signals import Point, Quality, Sample, Snapshot, WriteResult

from .closed_loop import LoopStats
from .live_support import (
    LineClock,
    iso,
    late_text,
    link_point,
    newest_by_plc,
    status_line,
)

log = logging.getLogger("pilot.live")
WATCHDOG_KICK_S = 1.0  # wall seconds between writes of the PLC's client watchdog (it expires after 10 s)
DENIED = "BadUserAccessDenied"


def refused_points(t: float, writes: dict[str, float], result: WriteResult, units: dict[str, str],
                   session: str = "") -> list[Point]:
    """``<TAG>.REFUSED`` decision points: the value the PLC did not take (one per refused write),
    the PLC's reason as text."""
    return [Point("decision", f"{tag}.REFUSED", units.get(tag, ""), float(writes.get(tag, math.nan)), t,
                  "bad", session, reason) for tag, reason in result.refused.items()]


class LiveRunner:
    """State of one live run between ticks (the link, operator and recorder are handed in)."""

    def __init__(self, loop: ControlLoop, links_of, recorder, annotations, units: dict[str, str], *,
                 on_tick: Callable[[TickResult, WriteResult | None], None] | None = None,
                 status_every_s: float = 60.0):
        self.loop, self.recorder, self.annotations, self.units = loop, recorder, annotations, units
        self.on_tick, self.status_every_s = on_tick, status_every_s
        self.link = None  # the PlantLink, set by the caller before ``run``
        self.operator = None
        self.alarm_store = None  # an AlarmStore: the alarm state saved at each transition
        self.final_links: dict = {}  # the links' status when the run ended (for the summary)
        self.plc_of = {t.name: p.name for p, tags in links_of for t in tags}
        self.writable = {p.name: [t.name for t in tags if t.writable and t.name in loop.guard.limits]
                         for p, tags in links_of}
        self.link_units = dict(loop.plcs)
        self.clock = LineClock([p.name for p, _ in links_of], tolerance_s=loop.period)
        self.stats, self.fresh = LoopStats(), FreshSamples()
        self.refused_log: list[tuple[float, str, float, str]] = []
        self.denied_log: list[tuple[float, str, float, str]] = []
        self.last: TickResult | None = None
        self.kicks = self.kicks_ok = 0
        self._marks: list[Point] = []  # BAD samples from the sessions (outage ends, PLC-side bad)
        self._transitions: list[tuple[str, bool, float]] = []
        self._seen: set[str] = set()  # PLCs whose initial state was reported
        self._initial: list[tuple[str, bool]] = []  # recorded at the first finite line time
        self._readback: set[str] = set()
        self._next_t = -math.inf
        self._t_start: float | None = None
        self._last_kick = self._last_status = -math.inf

    # -- callbacks of the sessions (on the event loop) -----------------------------------
    def on_sample(self, name: str, s: Sample) -> None:
        if s.quality == Quality.BAD and self.recorder is not None:
            plc = self.plc_of.get(name)
            self._marks += process_points({name: self.clock.map_sample(s, plc)}, self.units, self.loop.session)

    def on_link(self, plc: str, up: bool, t: float) -> None:
        if plc not in self._seen:
            self._seen.add(plc)
            self._initial.append((plc, up))
            return
        self._transitions.append((plc, up, t + self.clock.offset_of(plc)))
        if up:
            self.clock.reconnected(plc)
            self._readback.add(plc)

    # -- providers for the operator server and the summary --------------------------------
    def links_json(self) -> dict:
        return {n: dataclasses.asdict(st) for n, st in self.link.links().items()} if self.link else {}

    def historian_counters(self) -> dict:
        counters = getattr(self.recorder, "counters", None)
        return counters() if callable(counters) else {}

    # -- the run -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, poll_s: float, duration_s: float | None) -> str | None:
        """Poll and tick until ``stop`` is set or ``duration_s`` of line time has passed
        (returns ``"duration"`` then)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), poll_s)
            except TimeoutError:
                pass
            if stop.is_set():
                return None
            if self.operator and self.operator.drain(self.clock.t):  # operator actions: between ticks
                self.save_alarms()
                await self.operator.publish_conditions()
            if await self.iteration(duration_s):
                return "duration"
        return None

    async def iteration(self, duration_s: float | None) -> bool:
        """One poll; True when the run's duration is over."""
        up = {n for n, st in self.link.links().items() if st.up}
        changed = await self._link_changes()
        self._status(self.clock.t, time.time())
        if not up:
            if changed:
                await self._all_down()
            self._flush_marks()
            return False
        snap = await self.link.read()
        await self._kick()
        wall = time.time()
        t, steps = self.clock.update(newest_by_plc(snap, self.plc_of), up, wall)
        for s in steps:
            log.warning("PLC %s clock stepped %+.0f s: re-based onto the line's clock at %s", s.plc, s.step_s, iso(s.t))
        snap = self.clock.map_snapshot(snap, self.plc_of)
        self._record_fresh(snap, t)
        await self._reread(up)
        if not math.isfinite(t) or t < self._next_t:
            return False
        self._t_start = t if self._t_start is None else self._t_start
        if duration_s is not None and t - self._t_start > duration_s + 1e-6:
            return True
        self._next_t = t + self.loop.period
        await self.tick(snap, t)
        return False

    async def _link_changes(self) -> bool:
        """Record the link transitions since the last poll; True when there were any."""
        trans, self._transitions = self._transitions, []
        for plc, up, t in trans:
            self._record([link_point(plc, up, t, self.link_units.get(plc, ""), self.loop.session)])
            if up:
                log.info("PLC %s back at %s: re-reading its %d writable tags before the next tick", plc, iso(t),
                         len(self.writable.get(plc, ())))
        if trans and self.operator:
            await self.operator.publish_status()
        return bool(trans)

    async def _all_down(self) -> None:
        """No PLC is up, so no tick runs: the comm-loss alarms follow the links all the same."""
        t = self.clock.expected(time.time(), {}, ())
        if not math.isfinite(t):
            return
        links = {n: st.up for n, st in self.link.links().items()}
        transitions, points = self.loop.link_alarms(await self.link.read(), t, links)
        if transitions:
            self.save_alarms(transitions)
        self._record(points)
        if self.annotations is not None:
            self.annotations.record_many(points)
        for e in transitions:
            log.warning("alarm %s %s at %s", e.alarm_id, e.to_state.value, iso(e.t))

    async def _reread(self, up: set[str]) -> None:
        """Re-read the writable tags of every PLC back since the last tick, once its clock is checked."""
        for plc in sorted(self._readback & up - self.clock.pending):
            names = self.writable.get(plc, [])
            back = await self.link.read_now(names) if names else {}
            if any(s.quality == Quality.BAD for s in back.values()):
                continue  # lost again meanwhile: try on the next poll
            self._readback.discard(plc)
            self.loop.restart(back)

    async def _kick(self) -> None:
        if time.monotonic() - self._last_kick < WATCHDOG_KICK_S:
            return
        self._last_kick, self.kicks = time.monotonic(), self.kicks + 1
        oks = await self.link.kick_watchdog(self.kicks)
        self.kicks_ok += all(oks.values()) if isinstance(oks, dict) else bool(oks)

    # -- the tick ------------------------------------------------------------------------
    async def tick(self, snap: Snapshot, t: float) -> None:
        self.loop.set_links({n: st.up for n, st in self.link.links().items()})
        last, result = self.loop.step(snap, t), None
        self.last = last
        if last.alarms:
            self.save_alarms(last.alarms)
        points = list(last.points)
        if last.writes:
            result = await self.link.write(last.writes)
            if result.refused:
                points += self._refused(t, last, result)
        self.stats.add(last, result)
        self._record(points)
        if self.annotations is not None:
            self.annotations.record_many([p for p in points if p.measurement == "alarm"])
        if self.operator:
            await self.operator.publish(last)
        if self.on_tick:
            self.on_tick(last, result)

    def _refused(self, t: float, last: TickResult, result: WriteResult) -> list[Point]:
        self.loop.refused(result)
        for tag, reason in result.refused.items():
            value = last.writes[tag]
            if DENIED in reason:
                if self.loop.denied(tag, reason):
                    self.denied_log.append((t, tag, value, reason))
                    log.warning("write %s = %g denied by the PLC (%s): held from now on, alarm %s.DENIED",
                                tag, value, DENIED, tag)
            else:
                log.warning("write %s = %g refused: %s", tag, value, reason)
            self.refused_log.append((t, tag, value, reason))
        return refused_points(t, dict(last.writes), result, self.units, self.loop.session)

    # -- historian and console -----------------------------------------------------------
    def save_alarms(self, entries=()) -> None:
        """Save every alarm's state (and the journal ``entries``) in the alarm state store, if any."""
        if self.alarm_store is not None:
            self.alarm_store.save(self.loop.alarms.saved_state(), entries)

    def _record(self, points: list[Point], commit: bool = True) -> None:
        """Hand points to the recorder; ``commit``: the open batch leaves now (a tick's points, link
        transitions: a kill -9 then loses at most the tick in flight), else it leaves with the
        recorder's own batching (fresh samples, every ``flush_interval_s``)."""
        if self.recorder is None or not points:
            return
        self.recorder.record_many(points)
        done = getattr(self.recorder, "commit", None) if commit else None
        if callable(done):
            done()

    def _flush_marks(self) -> None:
        marks, self._marks = self._marks, []
        self._record(marks)

    def _record_fresh(self, snap: Snapshot, t: float) -> None:
        """Outage marks, the initial link states, and every new sample that is not BAD (BAD ones
        come from the sessions' own marks, once each); a sample the last tick did not see though
        its source time was not after it is marked late (``live_support.late_text``)."""
        if self._initial and math.isfinite(t):
            init, self._initial = self._initial, []
            self._record([link_point(p, up, t, self.link_units.get(p, ""), self.loop.session) for p, up in init])
        self._flush_marks()
        if self.recorder is not None:
            good = {k: s for k, s in self.fresh(snap).items() if s.quality != Quality.BAD}
            points = process_points(good, self.units, self.loop.session)
            if self.last is not None:
                tick, late = self.last.t, late_text(self.last.t)
                points = [dataclasses.replace(p, text=late) if p.time_s <= tick + 1e-6 else p for p in points]
            self._record(points, commit=False)

    def _status(self, t: float, wall: float) -> None:
        if wall - self._last_status < self.status_every_s:
            return
        first, self._last_status = not math.isfinite(self._last_status), wall
        if first:
            return
        active = len(self.last.active_alarms) if self.last else 0
        log.info(status_line(t, self.stats.ticks, self.stats.written, sum(self.stats.refused.values()), active,
                             self.link.links(), self.historian_counters(), wall))
