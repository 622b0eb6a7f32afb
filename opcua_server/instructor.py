"""Instructor controls on the simulated PLC server, for a training session.

``serve_training(session, endpoint)`` serves the session's plant through ``PlcServer`` (every tag,
as for ``pilot plc-sim``) and mounts an ``Instructor`` object in the PLC namespace:

| node | what |
|---|---|
| method ``Freeze()`` / ``Resume()`` | stop / restart plant time (the server keeps serving reads, writes, heartbeats) |
| method ``SetSpeed(Double)`` | plant seconds per wall second, 0.5..100; 0 means as fast as possible |
| method ``Snapshot(String path)`` | save the session (journal-replay snapshot, JSON) on the server's disk |
| method ``Restore(String path)`` | rebuild the saved session and continue from it |
| method ``Backtrack(Int32 k)`` | go back to the k-th newest automatic snapshot (1: the latest) |
| method ``InjectMalfunction(String json)`` | a ``twin.malfunctions.Malfunction`` as JSON, onset in session time |
| variables ``Frozen``, ``Speed``, ``SessionTime``, ``SessionId`` | read-only state, updated every second |

Every method returns a String: ``ok ...`` or ``error: ...``. Tag writes of OPC UA clients go
through the session (journalled), so snapshots taken here restore bit-for-bit like any other.
The methods need the engineer role; security (endpoints, users, anonymous access) is the
``ServerSecurity`` given, by default from the environment (``server_security_from_env``).

``Restore`` rebuilds a session with the ``restore(path, config)`` callable the caller injects
(the application passes ``TrainingSession.restore``): this package does not import the training
package above it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from asyncua import ua
from asyncua.common.methods import uamethod

from .server import PlcServer, sleep_unless
from .server_security import ServerSecurity, server_security_from_env

log = logging.getLogger(__name__)
MAX_SPEED = 1e6  # "as fast as possible": the run loop simply never waits


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
        return self.session.write(dict(values), by="trainee")

    def unit_of(self, tag_name: str) -> str:
        return self.session.plant.unit_of(tag_name)


class Instructor:
    def __init__(self, server: PlcServer, plant: SessionPlant, restore: Callable | None = None):
        self.server, self.plant, self.restore = server, plant, restore
        self._vars: dict[str, object] = {}

    async def mount(self) -> None:
        srv, ns = self.server.server, self.server.ns
        obj = await srv.nodes.objects.add_object(ua.NodeId("Instructor", ns), ua.QualifiedName("Instructor", ns))
        S, D, I32 = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.Int32
        for name, fn, args in (("Freeze", self._freeze, []), ("Resume", self._resume, []),
                               ("SetSpeed", self._set_speed, [D]), ("Snapshot", self._snapshot, [S]),
                               ("Restore", self._restore, [S]), ("Backtrack", self._backtrack, [I32]),
                               ("InjectMalfunction", self._inject, [S])):
            await obj.add_method(ua.NodeId(f"Instructor.{name}", ns), ua.QualifiedName(name, ns), fn, args, [S])
        for name, value, vt in (("Frozen", False, ua.VariantType.Boolean), ("Speed", 1.0, D),
                                ("SessionTime", 0.0, D), ("SessionId", "", S)):
            self._vars[name] = await obj.add_variable(ua.NodeId(f"Instructor.{name}", ns),
                                                      ua.QualifiedName(name, ns), value, vt)
        await self.update()

    async def update(self) -> None:
        s, sp = self.plant.session, self.server.speed
        for name, value, vt in (("Frozen", self.server.frozen, ua.VariantType.Boolean),
                                ("Speed", 0.0 if not sp or sp >= MAX_SPEED else float(sp), ua.VariantType.Double),
                                ("SessionTime", float(s.t), ua.VariantType.Double),
                                ("SessionId", s.session_id, ua.VariantType.String)):
            await self._vars[name].write_value(value, vt)

    async def run_updates(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.update()
            await sleep_unless(stop, 0.5)

    async def _guarded(self, fn) -> str:
        try:
            async with self.server.lock:  # never in the middle of an advance
                msg = fn()
            await self.update()
            await self.server.publish(force=True)
            return f"ok {msg}".strip()
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server carries on
            log.warning("instructor: %s", exc)
            return f"error: {exc}"

    @uamethod
    async def _freeze(self, parent) -> str:
        self.server.frozen = True
        await self.update()
        return f"ok frozen at t={self.plant.session.t:.0f} s"

    @uamethod
    async def _resume(self, parent) -> str:
        self.server.frozen = False
        await self.update()
        return "ok"

    @uamethod
    async def _set_speed(self, parent, speed: float) -> str:
        if speed != 0 and not 0.5 <= speed <= 100:
            return f"error: speed must be 0.5..100 (0: as fast as possible); got {speed}"
        self.server.speed = MAX_SPEED if speed == 0 else float(speed)
        await self.update()
        return "ok"

    @uamethod
    async def _snapshot(self, parent, path: str) -> str:
        return await self._guarded(lambda: str(self.plant.session.save(path)))

    @uamethod
    async def _restore(self, parent, path: str) -> str:
        if self.restore is None:
            return "error: this server was started without a way to restore sessions"

        def restore():
            self.plant.session = self.restore(path, self.plant.session.config)
            return f"t={self.plant.session.t:.0f} s"
        return await self._guarded(restore)

    @uamethod
    async def _backtrack(self, parent, k: int) -> str:
        def back():
            self.plant.session = self.plant.session.backtrack(-int(k))
            return f"t={self.plant.session.t:.0f} s"
        return await self._guarded(back)

    @uamethod
    async def _inject(self, parent, text: str) -> str:
        from twin.malfunctions import Malfunction

        return await self._guarded(
            lambda: f"fault {self.plant.session.inject(Malfunction.model_validate_json(text))}")


async def serve_training(session, endpoint: str, *, speed: float = 10.0, stop: asyncio.Event | None = None,
                         started: asyncio.Event | None = None, duration_s: float | None = None,
                         security: ServerSecurity | None = None, restore: Callable | None = None) -> PlcServer:
    """Serve a training session's plant with the instructor controls until ``stop`` (or ``duration_s``).
    ``restore(path, config)`` rebuilds a saved session for the Restore method."""
    plant = SessionPlant(session)
    config = session.config
    server = PlcServer(config.tags, config.opcua.namespace_uri, plant, endpoint,
                       security=security or server_security_from_env(), epoch_s=time.time() - plant.t,
                       name=f"{config.name} training simulator")
    await server.start()
    instructor = Instructor(server, plant, restore)
    await instructor.mount()
    stop = stop or asyncio.Event()
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
    return server
