"""Instructor controls on the simulated PLC server, for a training session.

``serve_training(session, endpoint)`` serves the session's plant through ``PlcServer`` (every tag,
as for ``pilot plc-sim``) and mounts an ``Instructor`` object in the PLC namespace (node ids
``Instructor.<name>``); ``pilot train instructor URL ...`` is its console:

| node | what |
|---|---|
| method ``Freeze()`` / ``Resume()`` | stop / restart plant time (the server keeps serving reads, writes, heartbeats) |
| method ``SetSpeed(Double speed)`` | plant seconds per wall second, 0.5..100; 0 means as fast as possible |
| method ``Snapshot(String name)`` | save the session (journal-replay snapshot, JSON) as ``name`` in the server's snapshot folder |
| method ``Restore(String name)`` | rebuild a snapshot of that folder and continue from it |
| method ``Backtrack(Int32 k)`` | go back to the k-th newest automatic snapshot (1: the latest) |
| method ``Inject(String fault, Double severity, Double ramp_s)`` | ``fault`` is ``KIND@TARGET`` (``pump_trip@SX.ORG.FLOW_SP``), from now |
| method ``InjectMalfunction(String json)`` | a ``twin.malfunctions.Malfunction`` as JSON, onset in session time |
| method ``Clear(String fault)`` | the fault (its number in ``Faults``, ``KIND@TARGET`` or ``KIND``) ramps out from now |
| method ``End()`` | end the session (the server stops as at the end of ``duration_s``) |
| variables ``Frozen``, ``Speed``, ``SessionTime``, ``SessionId``, ``Scenario``, ``Faults``, ``SnapshotFolder`` | read-only state, every 0.5 s |

Every method returns a String: ``ok ...`` or ``error: ...`` (one plain sentence: a wrong fault kind
lists the kinds, a severity out of range gives the range, never a validation dump). The methods
need the engineer role (``PlcServer``'s call rule: other sessions get BadUserAccessDenied); the
variables are readable by every session. ``Faults`` lists the session's journalled faults that are
scheduled or acting, one line each: ``N KIND@TARGET severity S, STATE`` (N numbers them in journal
order). A served session may add ``Instructor.Score`` (Double) and ``Instructor.OpenObjectives``
(String array); the console shows them when they exist.

Snapshot files are on the server's side, in its snapshot folder (``snapshot_dir``, default
``training-snapshots`` under the server's working directory): a name that resolves outside it is
refused. ``Clear`` rebuilds the session from its own journal with the fault's ``duration_s`` ending
now (a fault not started yet leaves the journal), so a snapshot taken later replays the clearing as
well; a fault still ramping in is refused until it is at full severity (its ramp out mirrors the ramp
in). Tag writes of OPC UA clients go through the session (journalled), so snapshots taken here
restore bit-for-bit like any other.

``Restore``, ``Backtrack`` and ``Clear`` rebuild a session with the ``restore(snapshot, config)``
callable the caller injects (the application passes ``TrainingSession.restore``): this package does
not import the training package above it. The rebuilt session keeps the listeners of the old one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from asyncua import ua
from asyncua.common.methods import uamethod
from pydantic import ValidationError

from twin.malfunctions import Malfunction

from .instructor_faults import (
    cleared_journal,
    fault_views,
    find_fault,
    malfunction_of,
    mmss,
    parse_fault,
    plain_error,
    snapshot_file,
)
from .server import PlcServer, sleep_unless
from .server_security import ServerSecurity, server_security_from_env

log = logging.getLogger(__name__)
MAX_SPEED = 1e6  # "as fast as possible": the run loop simply never waits
SNAPSHOT_DIR = Path("training-snapshots")


class SessionPlant:
    """What ``PlcServer`` needs of a plant, backed by a TrainingSession (ticks, journalled writes)."""

    def __init__(self, session):
        self.session = session

    @property
    def t(self) -> float:
        return self.session.t

    @property
    def dt(self) -> float:
        return self.session.tc.tick_s

    def advance(self, dt_s: float) -> None:
        for _ in range(max(1, round(dt_s / self.dt))):
            self.session.tick()

    def snapshot(self):
        return self.session.plant.snapshot()

    def write(self, values):
        """Journalled with the user of the OPC UA session that wrote (``trainee`` outside a request)."""
        return self.session.write(dict(values), by=_user_name("trainee"))

    def unit_of(self, tag_name: str) -> str:
        return self.session.plant.unit_of(tag_name)


_S, _D, _I32, _B = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.Int32, ua.VariantType.Boolean


def _user_name(default: str) -> str:
    """The user of the OPC UA request being served, else ``default``."""
    from .server_sessions import current_user

    user = current_user()
    return (user.name if user is not None else None) or default


def _arg(name: str, vt: ua.VariantType, text: str) -> ua.Argument:
    return ua.Argument(Name=name, DataType=ua.NodeId(vt.value), ValueRank=-1, Description=ua.LocalizedText(text))


_FAULT_ARG = _arg("fault", _S, "KIND@TARGET, e.g. pump_trip@SX.ORG.FLOW_SP")


class Instructor:
    def __init__(self, server: PlcServer, plant: SessionPlant, restore: Callable | None = None, *,
                 stop: asyncio.Event | None = None, scenario: str = "", snapshot_dir: Path = SNAPSHOT_DIR):
        self.server, self.plant, self.restore = server, plant, restore
        self.stop, self.scenario, self.snapshot_dir = stop, scenario, Path(snapshot_dir)
        self.ended_by: str | None = None  # who called End (None: the session ended otherwise)
        self._vars: dict[str, object] = {}
        #: more read-only variables of the served session, (name, value, VariantType) each, e.g. the
        #: live ``Score`` and ``OpenObjectives`` (set before the first update; ``pilot.training.served``)
        self.extra_state: Callable[[], tuple] | None = None

    def _methods(self) -> tuple:
        return (("Freeze", self._freeze, []), ("Resume", self._resume, []),
                ("SetSpeed", self._set_speed, [_arg("speed", _D, "0.5..100; 0: as fast as possible")]),
                ("Snapshot", self._snapshot, [_arg("name", _S, "file name in the server's snapshot folder")]),
                ("Restore", self._restore, [_arg("name", _S, "file name in the server's snapshot folder")]),
                ("Backtrack", self._backtrack, [_arg("k", _I32, "k-th newest automatic snapshot, 1: the latest")]),
                ("Inject", self._inject_fault, [_FAULT_ARG, _arg("severity", _D, "see twin.malfunctions"),
                                                _arg("ramp_s", _D, "plant seconds to full severity")]),
                ("InjectMalfunction", self._inject, [_arg("json", _S, "a Malfunction as JSON")]),
                ("Clear", self._clear, [_arg("fault", _S, "its number in Faults, KIND@TARGET or KIND")]),
                ("End", self._end, []))

    def _state(self) -> tuple:
        s, sp = self.plant.session, self.server.speed
        return (("Frozen", bool(self.server.frozen), _B),
                ("Speed", 0.0 if not sp or sp >= MAX_SPEED else float(sp), _D),
                ("SessionTime", float(s.t), _D), ("SessionId", s.session_id, _S), ("Scenario", self.scenario, _S),
                ("Faults", [v.line(s.t) for v in fault_views(s) if v.state(s.t) != "over"], _S),
                ("SnapshotFolder", str(self.snapshot_dir.resolve()), _S)) + (self.extra_state() if self.extra_state else ())

    async def mount(self) -> None:
        srv, ns = self.server.server, self.server.ns
        obj = await srv.nodes.objects.add_object(ua.NodeId("Instructor", ns), ua.QualifiedName("Instructor", ns))
        answer = [_arg("answer", _S, "ok ... or error: ...")]
        for name, fn, args in self._methods():
            await obj.add_method(ua.NodeId(f"Instructor.{name}", ns), ua.QualifiedName(name, ns), fn, args, answer)
        for name, value, vt in self._state():
            self._vars[name] = await obj.add_variable(ua.NodeId(f"Instructor.{name}", ns),
                                                      ua.QualifiedName(name, ns), ua.Variant(value, vt))

    async def update(self) -> None:
        for name, value, vt in self._state():
            node = self._vars.get(name)
            if node is None:  # an extra variable that appeared after mount
                ns = self.server.ns
                obj = self.server.server.get_node(ua.NodeId("Instructor", ns))
                node = self._vars[name] = await obj.add_variable(
                    ua.NodeId(f"Instructor.{name}", ns), ua.QualifiedName(name, ns), ua.Variant(value, vt))
            await node.write_value(ua.Variant(value, vt))

    async def run_updates(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.update()
            except Exception:  # noqa: BLE001 - the state shown stays stale; serving goes on
                log.exception("instructor: cannot update the state variables")
            await sleep_unless(stop, 0.5)

    async def _guarded(self, fn, rebuild: Callable | None = None) -> str:
        """``fn()`` under the server's lock (never in the middle of an advance); ``rebuild()``, when
        given, first builds a new session on the plant's stepping thread (``PlcServer.on_stepper``:
        it replays the journal) and ``fn(new)`` puts it in place."""
        try:
            async with self.server.lock:
                msg = fn(await self.server.on_stepper(rebuild)) if rebuild is not None else fn()
            await self.update()
            await self.server.publish(force=True)
            return f"ok {msg}".strip()
        except ValidationError as exc:
            return f"error: {plain_error(exc)}"
        except (ValueError, KeyError) as exc:
            return f"error: {exc}"
        except OSError as exc:
            return f"error: {exc.filename or ''}: {exc.strerror or exc}".replace("error: : ", "error: ")
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server carries on
            log.exception("instructor call failed")
            return f"error: {type(exc).__name__}: {exc}"

    def _swap(self, new) -> str:
        old = self.plant.session
        new.listeners = old.listeners
        self.plant.session = new
        old.close()  # its control loop's workers: the old session is not ticked again
        return f"t={new.t:.0f} s ({mmss(new.t)})"

    def _rebuild(self, snap) -> Callable:
        if self.restore is None:
            raise ValueError("this server was started without a way to restore sessions")
        config = self.plant.session.config
        return lambda: self.restore(snap, config)

    @staticmethod
    def _who() -> str:
        return _user_name("instructor")

    @uamethod
    async def _freeze(self, parent) -> str:
        self.server.frozen = True
        await self.update()
        return f"ok frozen at t={self.plant.session.t:.0f} s ({mmss(self.plant.session.t)})"

    @uamethod
    async def _resume(self, parent) -> str:
        self.server.frozen = False
        await self.update()
        return "ok"

    @uamethod
    async def _set_speed(self, parent, speed: float) -> str:
        if not isinstance(speed, int | float) or speed != 0 and not 0.5 <= speed <= 100:
            return f"error: speed must be 0.5..100 (0: as fast as possible); got {speed}"
        self.server.speed = MAX_SPEED if speed == 0 else float(speed)
        await self.update()
        return "ok"

    @uamethod
    async def _snapshot(self, parent, name: str) -> str:
        def save():
            path = snapshot_file(self.snapshot_dir, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            s = self.plant.session
            s.save(path, label=f"{self.scenario or s.session_id} by {self._who()}")
            return f"saved {path} at t={s.t:.0f} s ({mmss(s.t)})"
        return await self._guarded(save)

    @uamethod
    async def _restore(self, parent, name: str) -> str:
        try:
            build = self._rebuild(snapshot_file(self.snapshot_dir, name, exists=True))
        except ValueError as exc:
            return f"error: {exc}"

        def checked():
            try:
                return build()
            except (ValidationError, json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{name} is not a session snapshot (a JSON file written by Snapshot)") from None
        return await self._guarded(lambda new: f"{self._swap(new)} restored {name}", checked)

    @uamethod
    async def _backtrack(self, parent, k: int) -> str:
        s = self.plant.session
        n, every = len(s.autosnapshots), s.tc.autosnapshot_every_min
        if n == 0:
            return f"error: no automatic snapshot yet (one every {every:g} plant-min)"
        if not isinstance(k, int) or not 1 <= k <= n:
            return f"error: k must be 1..{n} (the automatic snapshots kept, one every {every:g} plant-min); got {k}"
        return await self._guarded(lambda new: f"{self._swap(new)} back {k} automatic snapshot(s)",
                                   lambda: s.backtrack(-int(k)))

    def _injected(self, m: Malfunction) -> str:
        s = self.plant.session
        s.inject(m, by="instructor")
        v = fault_views(s)[-1]
        return f"fault {v.number} {v.name} severity {m.severity:g} from {mmss(v.onset_s)} (by {self._who()})"

    @uamethod
    async def _inject_fault(self, parent, fault: str, severity: float, ramp_s: float) -> str:
        try:
            m = parse_fault(fault, severity, ramp_s)
        except ValueError as exc:
            return f"error: {exc}"
        return await self._guarded(lambda: self._injected(m))

    @uamethod
    async def _inject(self, parent, text: str) -> str:
        try:
            fields = json.loads(text)
            if not isinstance(fields, dict):
                raise ValueError("a malfunction is a JSON object: {\"kind\": ..., \"target\": ..., ...}")
            m = malfunction_of(fields)
        except json.JSONDecodeError as exc:
            return f"error: not JSON ({exc.msg} at character {exc.pos}): give a malfunction as a JSON object"
        except ValueError as exc:
            return f"error: {exc}"
        return await self._guarded(lambda: self._injected(m))

    @uamethod
    async def _clear(self, parent, fault: str) -> str:
        s = self.plant.session
        try:
            view = find_fault(fault_views(s), fault, s.t)
            journal = cleared_journal(s, view)
            build = self._rebuild(s.snapshot(label=f"clear {view.name}").model_copy(update={"journal": journal}))
        except ValueError as exc:
            return f"error: {exc}"
        what = ("removed (it had not started)" if len(journal) < len(s.journal)
                else f"ramps out from {mmss(s.t)} until {mmss(s.t + view.m.ramp_s)}")
        return await self._guarded(lambda new: f"fault {view.number} {view.name} {what}; {self._swap(new)}", build)

    @uamethod
    async def _end(self, parent) -> str:
        if self.stop is None:
            return "error: this server was started without a way to end the session"
        self.ended_by = self._who()
        asyncio.get_running_loop().call_later(0.2, self.stop.set)  # after this answer has gone out
        log.info("training session ended by %s at t=%.0f s", self.ended_by, self.plant.session.t)
        return f"ok session ends at t={self.plant.session.t:.0f} s ({mmss(self.plant.session.t)})"


async def serve_training(session, endpoint: str, *, speed: float = 10.0, stop: asyncio.Event | None = None,
                         started: asyncio.Event | None = None, duration_s: float | None = None,
                         security: ServerSecurity | None = None, restore: Callable | None = None,
                         scenario: str = "", snapshot_dir: Path | str = SNAPSHOT_DIR,
                         ready: Callable[[PlcServer], object] | None = None) -> PlcServer:
    """Serve a training session's plant with the instructor controls until ``stop`` (set by
    ``duration_s`` or the End method). ``restore(snapshot, config)`` rebuilds a saved session (a
    path or a snapshot) for Restore and Clear; ``snapshot_dir`` is the folder of Snapshot / Restore.
    The returned server's ``instructor`` tells who ended the session (``ended_by``). The session
    served last is closed at the end (``TrainingSession.close``: its record stays readable)."""
    plant = SessionPlant(session)
    config = session.config
    server = PlcServer(config.tags, config.opcua.namespace_uri, plant, endpoint,
                       security=security or server_security_from_env(), epoch_s=time.time() - plant.t,
                       name=f"{config.name} training simulator")
    await server.start()
    server.speed = speed
    stop = stop or asyncio.Event()
    instructor = server.instructor = Instructor(server, plant, restore, stop=stop, scenario=scenario,
                                                snapshot_dir=Path(snapshot_dir))
    await instructor.mount()
    if ready is not None:  # the caller's hook on the serving server (before anyone is told it serves)
        ready(server)
    if started is not None:
        started.set()
    timer = asyncio.get_running_loop().call_later(duration_s, stop.set) if duration_s else None
    updates = asyncio.create_task(instructor.run_updates(stop))
    try:
        await server.run(speed, stop)
    finally:
        if timer is not None:
            timer.cancel()
        stop.set()
        await updates
        await server.stop()
        plant.session.close()
    return server
