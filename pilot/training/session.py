"""A training session: the twin, the alarm system, a journal of every action, snapshots by replay.

Session time ``t`` (s) starts at 0 when the trainee takes over; the plant clock is ``t0 + t`` where
``t0`` is the pre-run of the initial condition. The session advances in ticks of
``training.tick_s``; after each tick the alarms are evaluated on the snapshot the operator sees and
the actions due at that time are applied, in journal order. Every action (tag writes, alarm
acknowledge / shelve, malfunctions injected) is journalled with its session time.

Snapshots are *journal-replay* snapshots: (plant config, seed, initial condition, session time,
journal). The plant is deterministic given its seed and the time-stamped inputs, so restoring one
(in this process or a later one) rebuilds the plant and replays the journal tick by tick: the
restored session is bit-for-bit the original (tests/test_training.py checks it in a subprocess).
SimPy's generator-based processes cannot be pickled, so a state snapshot would have to rebuild
every sequence's position by hand; the replay costs the plant's own speed (≈5,000× real time:
a 2-hour session restores in ≈1.5 s) and needs nothing of the model internals. Freeze, resume and
speed act on the wall clock only (``Pacer``) and are not journalled: they do not change the plant.

A session also holds its training record's identity: ``trainee`` and ``instructor`` (plain fields,
kept in snapshots; a trainee's acknowledgements are journalled under the trainee's name) and
``started_utc``, the wall-clock start.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from controllers.alarms import AlarmManager
from pilot_config.base import StrictModel
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant
from twin.points import alarm_point, process_points
from twin.signals import Snapshot

InitialCondition = Literal["cold_start", "steady_state", "near_breakthrough"]
INITIAL_CONDITIONS: dict[str, str] = {
    "cold_start": "barren cascade and fresh columns (plant start-up)",
    "steady_state": "cascade at its design steady state, carousel mid-cycle (normal operation)",
    "near_breakthrough": "steady state run on until the lag column is about to break through",
}


class Action(StrictModel):
    """One journalled action. ``kind``: write {values: {tag: value}}, ack {alarm}, ack_all {}, shelve
    {alarm, duration_s}, inject {malfunction}, mode {loop, mode} (control loop). ``by``: trainee,
    instructor or scenario."""

    t: float = Field(ge=0, le=1e8, description="session time it applies at (a tick boundary)")
    kind: Literal["write", "ack", "ack_all", "shelve", "inject", "mode"]
    args: dict[str, Any] = Field(default_factory=dict)
    by: str = Field("trainee", min_length=1, max_length=64)


class SessionSnapshot(StrictModel):
    """Everything needed to rebuild a session at time ``t`` (JSON on disk)."""

    version: Literal[1] = 1
    session_id: str
    config_path: str | None = None
    config: dict[str, Any]
    seed: int
    initial: InitialCondition
    control: bool = False
    modes: dict[str, str] = Field(default_factory=dict, description="control-loop modes at the start")
    t: float
    journal: list[Action]
    pending: list[Action] = Field(default_factory=list, description="actions scheduled for later")
    label: str = ""
    trainee: str = Field("", max_length=64, description="who is trained (the report's training record)")
    instructor: str = Field("", max_length=64)


@dataclass
class Tick:
    t: float
    snapshot: Snapshot
    transitions: tuple


@dataclass
class Pacer:
    """Wall-clock pacing: ``speed`` plant-seconds per wall-second (None: as fast as possible);
    ``frozen`` stops plant time without stopping anything else."""

    speed: float | None = 10.0
    frozen: bool = False
    _wall: float = field(default_factory=time.monotonic)

    def set_speed(self, speed: float | None) -> None:
        if speed is not None and not 0.5 <= speed <= 100:
            raise ValueError(f"speed must be in [0.5, 100] (or max); got {speed}")
        self.speed, self._wall = speed, time.monotonic()

    def delay(self, dt: float) -> float:
        """Seconds to wait before the next tick of ``dt`` plant-seconds."""
        if self.speed is None:
            self._wall = time.monotonic()
            return 0.0
        self._wall += dt / self.speed
        return max(0.0, self._wall - time.monotonic())


class TrainingSession:
    def __init__(self, config, *, initial: InitialCondition = "steady_state", seed: int | None = None,
                 session_id: str | None = None, config_path: str | None = None, control: bool = False,
                 modes: dict[str, str] | None = None, trainee: str = "", instructor: str = ""):
        if initial not in INITIAL_CONDITIONS:
            raise ValueError(f"unknown initial condition {initial!r}; one of {sorted(INITIAL_CONDITIONS)}")
        self.config, self.config_path, self.initial = config, config_path, initial
        self.session_id = session_id or f"train-{uuid.uuid4().hex[:8]}"
        self.trainee, self.instructor = trainee, instructor  # the training record: who, by whom, when
        self.started_utc = datetime.now(timezone.utc)
        self.tc = config.training
        self.plant = TwinPlant(config, seed=seed, start="cold" if initial == "cold_start" else "design")
        self.seed = self.plant.seed  # the config's when not given
        while self.plant.env.peek() <= 0.0:  # start the sequences: the analysers report a first sample
            self.plant.env.step()
        if initial == "near_breakthrough":
            self.plant.advance(self.tc.near_breakthrough_prerun_h * 3600.0)
        self.t0 = self.plant.t
        self.plant.tags.epoch_s = -self.t0  # samples are stamped in session time
        self.control, self.modes = control, dict(modes or {})
        self.loop = None
        if control:  # the closed loop, deterministic: no MPC deadline, no wall-clock points
            from controllers.loop import ControlLoop

            self.loop = ControlLoop(config, target="twin", session="training", modes=self.modes,
                                    mpc_deadline_s=None, timing_points=False, session_label=self.session_id,
                                    control_period_s=self.tc.tick_s)
            self.alarms = self.loop.alarms
        else:
            self.alarms = AlarmManager(config.control.alarms, config.tags)
        self.control_result = None
        self.journal: list[Action] = []
        self._pending: list[Action] = []
        self.autosnapshots: list[SessionSnapshot] = []
        self.pacer = Pacer(self.tc.default_speed)
        self.listeners: list[Callable[[TrainingSession, Tick], None]] = []
        self.units = {t.name: t.plant_unit for t in config.tags}
        self.last: Tick | None = None
        self._tick_alarms()

    # -- clock -----------------------------------------------------------------------------
    @property
    def t(self) -> float:
        return self.plant.t - self.t0

    def tick(self) -> Tick:
        """Advance one tick, evaluate the alarms, apply the actions due now, snapshot if due."""
        self.plant.advance(self.tc.tick_s)
        tick = self._tick_alarms()
        every = self.tc.autosnapshot_every_min * 60.0
        if round(self.t / self.tc.tick_s) % max(1, round(every / self.tc.tick_s)) == 0:
            self.autosnapshots.append(self.snapshot(label="auto"))
            del self.autosnapshots[:-self.tc.autosnapshot_keep]
        return tick

    def _tick_alarms(self) -> Tick:
        snap = self.plant.snapshot()
        if self.loop is not None:
            res = self.control_result = self.loop.step(snap, self.t)
            if res.writes:
                self.loop.refused(self.plant.write(res.writes))
            transitions = res.alarms
        else:
            transitions = self.alarms.step(snap, self.t).transitions
        due = [a for a in self._pending if a.t <= self.t + 1e-9]
        self._pending = [a for a in self._pending if a.t > self.t + 1e-9]
        for a in due:
            self._apply(a)
        self.last = Tick(self.t, snap, transitions)
        for listener in self.listeners:
            listener(self, self.last)
        return self.last

    def close(self) -> None:
        """End the control loop's slow-job workers (``ControlLoop.close``); idempotent. The
        session is not ticked after; its journal, record and snapshots stay readable."""
        if self.loop is not None:
            self.loop.close()

    def run_for(self, seconds: float, pacer: Pacer | None = None) -> None:
        """Run ``seconds`` of session time (paced by ``pacer``; None: as fast as possible)."""
        end = self.t + seconds - 1e-9
        while self.t < end:
            if pacer is not None:
                while pacer.frozen:
                    time.sleep(0.05)
                time.sleep(pacer.delay(self.tc.tick_s))
            self.tick()

    async def run_async(self, seconds: float, pacer: Pacer) -> None:
        """As ``run_for``, yielding to the event loop (an OPC UA server stays responsive)."""
        end = self.t + seconds - 1e-9
        while self.t < end:
            while pacer.frozen:
                await asyncio.sleep(0.05)
            await asyncio.sleep(pacer.delay(self.tc.tick_s))
            self.tick()

    # -- actions ---------------------------------------------------------------------------
    def submit(self, action: Action) -> None:
        """Queue an action; one for now (or the past) applies at once, a later one at its tick."""
        if action.t <= self.t + 1e-9:
            self._apply(action.model_copy(update={"t": self.t}))
        else:
            self._pending.append(action)
            self._pending.sort(key=lambda a: a.t)

    def write(self, values: dict[str, float], by: str = "trainee"):
        return self._apply(Action(t=self.t, kind="write", args={"values": dict(values)}, by=by))

    def acknowledge(self, alarm_id: str, by: str = "trainee"):
        return self._apply(Action(t=self.t, kind="ack", args={"alarm": alarm_id}, by=by))

    def shelve(self, alarm_id: str, duration_s: float, by: str = "trainee"):
        return self._apply(Action(t=self.t, kind="shelve", args={"alarm": alarm_id, "duration_s": duration_s}, by=by))

    def set_mode(self, loop: str, mode: str, by: str = "trainee"):
        return self._apply(Action(t=self.t, kind="mode", args={"loop": loop, "mode": mode}, by=by))

    def inject(self, malfunction: Malfunction, by: str = "instructor"):
        return self._apply(Action(t=self.t, kind="inject", args={"malfunction": malfunction.model_dump()}, by=by))

    def _apply(self, a: Action):
        """Do the action; journal it only if it was valid (a bad alarm id or tag raises)."""
        who = (self.trainee or self.tc.operator) if a.by == "trainee" else a.by
        if a.kind == "write":
            result = self.plant.write(a.args["values"])
        elif a.kind == "ack":
            result = self.alarms.acknowledge(a.args["alarm"], who, self.t)
        elif a.kind == "ack_all":
            result = self.alarms.acknowledge_all(who, self.t)
        elif a.kind == "shelve":
            result = self.alarms.shelve(a.args["alarm"], who, self.t, float(a.args["duration_s"]))
        elif a.kind == "mode":
            if self.loop is None:
                raise ValueError("this training session runs without the control loop")
            result = self.loop.set_mode(a.args["loop"], a.args["mode"])
        else:
            m = Malfunction.model_validate(a.args["malfunction"])
            result = inject(self.plant, m.model_copy(update={"onset_s": self.t0 + max(m.onset_s, self.t)}))
        self.journal.append(a)
        return result

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, label: str = "") -> SessionSnapshot:
        return SessionSnapshot(session_id=self.session_id, config_path=self.config_path,
                               config=self.config.model_dump(mode="json"), seed=self.seed,
                               initial=self.initial, control=self.control, modes=self.modes, t=self.t, journal=list(self.journal),
                               pending=list(self._pending), label=label, trainee=self.trainee,
                               instructor=self.instructor)

    def save(self, path: Path | str, label: str = "") -> Path:
        path = Path(path)
        path.write_text(self.snapshot(label).model_dump_json(indent=1))
        return path

    @classmethod
    def restore(cls, snap: SessionSnapshot | Path | str, config=None) -> TrainingSession:
        """Rebuild a session at the snapshot's time by replaying its journal."""
        if not isinstance(snap, SessionSnapshot):
            snap = SessionSnapshot.model_validate_json(Path(snap).read_text())
        if config is None:
            from pilot_config.plant import PilotLineConfig
            config = PilotLineConfig.model_validate(snap.config)
        s = cls(config, initial=snap.initial, seed=snap.seed, session_id=snap.session_id,
                config_path=snap.config_path, control=snap.control, modes=snap.modes,
                trainee=snap.trainee, instructor=snap.instructor)
        s.replay(snap.journal, snap.t)
        for a in snap.pending:
            s.submit(a)
        return s

    def replay(self, journal: Iterable[Action], until: float) -> None:
        actions = sorted(journal, key=lambda a: a.t)  # stable: journal order within a tick
        i = 0
        while i < len(actions) and actions[i].t <= self.t + 1e-9:
            self._apply(actions[i])
            i += 1
        while self.t < until - 1e-9:
            self.tick()
            while i < len(actions) and actions[i].t <= self.t + 1e-9:
                self._apply(actions[i])
                i += 1

    def backtrack(self, index: int = -1) -> TrainingSession:
        """A new session rebuilt at one of the automatic snapshots (default: the latest)."""
        if not self.autosnapshots:
            raise ValueError("no automatic snapshot yet")
        return TrainingSession.restore(self.autosnapshots[index], self.config)

    # -- historian -------------------------------------------------------------------------
    def points(self, tick: Tick) -> list:
        """Historian points of a tick, every one tagged ``session=<id>``."""
        pts = process_points(tick.snapshot, self.units, session=self.session_id)
        if self.loop is not None and self.control_result is not None:
            return pts + list(self.control_result.points)  # estimates, decisions, alarms
        for e in tick.transitions:
            active = e.to_state.value in ("unacknowledged-active", "acknowledged-active")
            pts.append(alarm_point(e.alarm_id, self.units.get(e.tag, ""), active, tick.t, session=self.session_id))
        return pts


def state_digest(session: TrainingSession) -> str:
    """A fingerprint of the whole plant state (every block's x, u, y and the noise generator)."""
    import hashlib

    h = hashlib.sha256()
    for name in session.plant.flowsheet.order:
        b = session.plant.flowsheet.blocks[name]
        for arr in (b.x, b.u, b.y):
            h.update(arr.tobytes())
    h.update(json.dumps(session.plant.tags.rng.bit_generator.state, sort_keys=True, default=str).encode())
    h.update(repr(sorted((k, v.value, v.source_time, int(v.quality)) for k, v in session.plant.snapshot().items())).encode())
    return h.hexdigest()
