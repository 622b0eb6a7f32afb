"""The simulated PLC: an asyncua server that serves the config's tags from a plant object
(``snapshot()``, ``write()``, ``unit_of()``, ``t``, ``advance()``; the TwinPlant in production).

Scan: the plant advances in real time × ``speed`` on its synchronisation grid (``advance`` runs
a few grid steps at a time on the server's one stepping thread, ``stepper``, under a lock that
writes also take, so a write never lands in the middle of a physics step); after each advance every changed tag is pushed
with its SourceTimestamp = ``epoch_s + sample.source_time`` (the plant clock). Quality maps to
StatusCode: GOOD -> Good, UNCERTAIN -> UncertainEngineeringUnitsExceeded, BAD -> BadSensorFailure
(value Null, as OPC UA requires for a Bad value).

Security (endpoints, certificates, users, per-session authorisation, login back-off, no address
space changes by clients): ``server_security.secure_server``.

Writes (every item, in request order, nothing applied for a refused item):
- not a tag or diagnostic of ours: BadNotWritable for read-only nodes and namespace 0, whatever the
  role, else asyncua's own rules (``server_security.guarded_write``);
- read-only tag: BadNotWritable; session role below the tag's role (anonymous is below all):
  BadUserAccessDenied; wrong variant type: BadTypeMismatch; outside [low, high] or not finite:
  BadOutOfRange; otherwise written to the plant (the plant may still refuse) and echoed in the
  address space at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from pilot_config.tags import Tag
from twin.signals import Quality

from .address_space import (
    UTC,
    FastWriter,
    build_address_space,
    install_fast_monitored_items,
)
from .identity import mark_as_twin
from .server_security import ServerSecurity, role_of, secure_server
from .tagmap import Role, TagMap, from_variant_value
from .users import RoleUserManager

log = logging.getLogger(__name__)

QUALITY_STATUS = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.UNCERTAIN: ua.StatusCodes.UncertainEngineeringUnitsExceeded,
    Quality.BAD: ua.StatusCodes.BadSensorFailure,
}
_ADMIN = User(role=UserRole.Admin)  # the server's own calls only: no client is ever Admin
PUBLISH_EVERY_S = 1.0  # plant seconds: a served session's clients see a new scan at least this often


def _status(sc: int) -> ua.StatusCode:
    return ua.StatusCode(sc)


async def sleep_unless(stop: asyncio.Event, timeout_s: float) -> None:
    """Sleep ``timeout_s``, or less when ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=timeout_s)
    except TimeoutError:
        pass


def chunk_steps(step_s: float, max_chunk_steps: int) -> int:
    """Grid steps advanced between two publications: ``max_chunk_steps``, but at most
    ``PUBLISH_EVERY_S`` of plant time for a step that short (and always one step)."""
    if step_s > PUBLISH_EVERY_S:
        return max_chunk_steps
    return max(1, min(max_chunk_steps, int(math.floor(PUBLISH_EVERY_S / step_s + 1e-9))))


def stepper() -> ThreadPoolExecutor:
    """The one thread that advances a plant for the life of its server (or scan). Not asyncio's
    default pool: that hands successive advances to any of its up to min(32, cores + 4) threads,
    and native memory the solvers hold per calling thread (allocator arenas, solver work space)
    then grows with every thread that has run one. Measured in-process over 5 plant-hours of
    60 s steps with the cascade on scipy's BDF (a fresh sparse LU at every step): +18.5 MiB per
    plant-hour through the default pool, +8.2 on one thread of its own; with the solvers kept
    across steps (``twin.flowsheet``) RSS is flat either way (``benchmarks/memory_soak.py``)."""
    return ThreadPoolExecutor(1, thread_name_prefix="plant-step")


class PlcServer:
    """One simulated PLC serving ``tags`` from ``plant`` at ``endpoint``."""

    def __init__(self, tags: Iterable[Tag], namespace_uri: str, plant, endpoint: str, *,
                 security: ServerSecurity | None = None, epoch_s: float = 0.0,
                 name: str = "pilot-line simulated PLC", watchdog_s: float = 10.0, fast_path: bool = True):
        self.tagmap = TagMap(tags, namespace_uri)
        self.plant = plant
        self.endpoint = endpoint
        self.security = security or ServerSecurity()
        self.epoch_s = epoch_s
        self.name = name
        self.watchdog_s = watchdog_s
        self.lock = asyncio.Lock()
        self.server = Server(user_manager=RoleUserManager(self.security.users))
        self.ns = 0
        self.writer: FastWriter | None = None
        self.heartbeat = 0
        self._watchdog_changed = time.monotonic()
        self._watchdog_value = 0
        self.writes_refused = 0
        self.fast_path = fast_path  # False: stock asyncua value path (benchmarks only)
        #: instructor controls (opcua_server.instructor): plant time stops while frozen; a new
        #: speed takes effect at once (the run loop re-bases its clock on either change)
        self.frozen = False
        self.speed: float | None = None
        self._advanced_at = time.monotonic()  # wall time of the last scan (plant_time_now)
        self._stepper: ThreadPoolExecutor | None = None  # made on the first advance, ended by stop()

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self.fast_path:
            install_fast_monitored_items()
        srv = self.server
        await srv.init()
        srv.set_endpoint(self.endpoint)
        srv.set_server_name(self.name)
        await secure_server(srv, self.security, call_allowed=lambda user: self._role(user) >= Role.ENGINEER)
        await mark_as_twin(srv, self.name)  # what decides a run's target (identity.py)
        self.ns = await srv.register_namespace(self.tagmap.namespace_uri)
        snap = self.plant.snapshot()
        initial = {}
        for e in self.tagmap:
            s = snap.get(e.name)
            initial[e.name] = ((e.variant(s.value).Value, self._stamp(s.source_time)) if s is not None
                               else (e.variant(0.0).Value, self._stamp(self.plant.t)))
        build_address_space(srv, self.ns, self.tagmap, self.plant.unit_of, initial)
        self.writer = FastWriter(srv, stock=not self.fast_path)
        self._original_write = srv.iserver.attribute_service.write
        srv.iserver.attribute_service.write = self._write
        await srv.start()
        await self.publish(force=True)
        log.info("simulated PLC serving %d tags at %s (namespace %s, security %s)", len(self.tagmap),
                 self.endpoint, self.tagmap.namespace_uri, self.security.describe())

    async def stop(self) -> None:
        await self.server.stop()
        if self._stepper is not None:
            self._stepper.shutdown(wait=True)
            self._stepper = None

    # -- scan ----------------------------------------------------------------------------
    def _stamp(self, source_time: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.epoch_s + source_time, UTC)

    async def publish(self, force: bool = False) -> int:
        """Push every changed tag from the plant's snapshot; returns how many were pushed."""
        snap = self.plant.snapshot()
        pushed = 0
        for e in self.tagmap:
            s = snap.get(e.name)
            if s is None:  # an analyser before its first report
                pushed += await self.writer.push(e.node_id(self.ns), ua.Variant(None, ua.VariantType.Null),
                                                 ua.StatusCodes.BadWaitingForInitialData,
                                                 self._stamp(self.plant.t), force)
                continue
            variant = e.variant(s.value) if math.isfinite(s.value) else ua.Variant(None, ua.VariantType.Null)
            status = QUALITY_STATUS[s.quality] if math.isfinite(s.value) else ua.StatusCodes.BadSensorFailure
            pushed += await self.writer.push(e.node_id(self.ns), variant, status, self._stamp(s.source_time), force)
        await self._diag("PlantTime", ua.Variant(float(self.plant.t), ua.VariantType.Double))
        return pushed

    async def _diag(self, name: str, variant: ua.Variant) -> None:
        await self.writer.push(ua.NodeId(f"Diagnostics.{name}", self.ns), variant, ua.StatusCodes.Good,
                               dt.datetime.now(UTC))

    async def beat(self) -> None:
        """One heartbeat (call every wall-clock second) and the client watchdog check."""
        self.heartbeat = (self.heartbeat + 1) % 2**32
        await self._diag("Heartbeat", ua.Variant(self.heartbeat, ua.VariantType.UInt32))
        expired = self._watchdog_value != 0 and time.monotonic() - self._watchdog_changed > self.watchdog_s
        await self._diag("WatchdogExpired", ua.Variant(expired, ua.VariantType.Boolean))

    async def on_stepper(self, fn: Callable, *args):
        """``fn(*args)`` on the thread that advances the plant (``stepper``): anything that steps
        the plant's solvers (an advance, a session rebuilt by replaying its journal) runs there,
        so their per-thread native memory is held by one thread only. As ``asyncio.to_thread``,
        ``fn`` sees the caller's context variables (the user of the request being served)."""
        if self._stepper is None:
            self._stepper = stepper()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._stepper, call)

    async def advance(self, dt_s: float) -> None:
        """Advance the plant by ``dt_s`` on the stepping thread (the event loop serves clients
        meanwhile), under the lock, then publish."""
        async with self.lock:
            await self.on_stepper(self.plant.advance, dt_s)
            self._advanced_at = time.monotonic()
        await self.publish()

    def plant_time_now(self) -> float:
        """The plant clock between two scans: the last scan's time plus the wall time since it at
        the current speed, never beyond the next grid step, and always a little after the scan (a
        value written now gets a SourceTimestamp of its own, not the last scan's)."""
        step = float(getattr(self.plant, "dt", 1.0))
        since = 0.0 if self.frozen else (time.monotonic() - self._advanced_at) * (self.speed or 1.0)
        return self.plant.t + min(max(since, 1e-3), step)

    async def run(self, speed: float = 1.0, stop: asyncio.Event | None = None, max_chunk_steps: int = 5) -> None:
        """Advance the plant in real time × ``speed`` until ``stop`` is set (or forever). Behind
        time, the plant catches up ``max_chunk_steps`` steps at a time, but never more than
        ``PUBLISH_EVERY_S`` of plant time when its step is that short (a served session's
        ``simulation.serve_step_s``): its clients see a scan at least once per plant second even
        while the twin is catching up."""
        if not speed > 0:
            raise ValueError("speed must be > 0")
        stop = stop or asyncio.Event()
        step = float(getattr(self.plant, "dt", 1.0))
        t0_wall, t0_plant = time.monotonic(), self.plant.t
        next_beat, lagging = t0_wall, False
        self.speed = self.speed or speed
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                await self.beat()
                next_beat += 1.0
            jumped = not t0_plant <= self.plant.t <= t0_plant + (now - t0_wall) * speed + 2 * step
            if self.frozen or self.speed != speed or jumped:  # instructor: freeze, speed, restore
                speed, t0_wall, t0_plant = self.speed, now, self.plant.t
                step = float(getattr(self.plant, "dt", 1.0))
                if self.frozen:
                    await sleep_unless(stop, min(max(next_beat - now, 0.01), 0.1))
                    continue
            target = t0_plant + (now - t0_wall) * speed
            steps = int(math.floor((target - self.plant.t) / step + 1e-9))
            if steps > 0:
                await self.advance(min(steps, chunk_steps(step, max_chunk_steps)) * step)
                if steps > 4 * max_chunk_steps and not lagging:
                    lagging = True
                    log.warning("the twin cannot keep up with speed %.1f: plant time is falling behind", speed)
                continue
            wake = min(next_beat, t0_wall + (self.plant.t + step - t0_plant) / speed)
            await sleep_unless(stop, max(0.0, min(wake - time.monotonic(), 0.5)))

    # -- writes --------------------------------------------------------------------------
    def _role(self, user: User | None) -> Role:
        return role_of(self.security, user)

    async def _write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode | None] = [None] * len(params.NodesToWrite)
        others, plant_values, plant_index = [], {}, {}
        role = self._role(user)
        for i, wv in enumerate(params.NodesToWrite):
            nid = wv.NodeId
            if nid.NamespaceIndex != self.ns or not isinstance(nid.Identifier, str):
                others.append(i)
                continue
            if nid.Identifier == "Diagnostics.ClientWatchdog" and wv.AttributeId == ua.AttributeIds.Value:
                results[i] = await self._write_watchdog(wv, role)
                continue
            entry = self.tagmap.by_identifier.get(nid.Identifier)
            if entry is None or wv.AttributeId != ua.AttributeIds.Value:
                others.append(i)
                continue
            verdict = self._check(entry, wv, role)
            if verdict is not None:
                results[i] = _status(verdict)
                self.writes_refused += 1
                log.info("refused write of %s by %s: %s", entry.name, user.name or "anonymous",
                         ua.StatusCode(verdict).name)
                continue
            plant_values[entry.name] = from_variant_value(wv.Value.Value.Value)
            plant_index[entry.name] = i
        if plant_values:
            await self._apply(plant_values, plant_index, results)
        if others:
            sub = ua.WriteParameters(NodesToWrite=[params.NodesToWrite[i] for i in others])
            for i, r in zip(others, await self._original_write(sub, user=user)):
                results[i] = r
        return results  # type: ignore[return-value]

    def _check(self, entry, wv: ua.WriteValue, role: Role) -> int | None:
        if entry.role is None:
            return ua.StatusCodes.BadNotWritable
        if role < entry.role:
            return ua.StatusCodes.BadUserAccessDenied
        if wv.IndexRange:
            return ua.StatusCodes.BadIndexRangeInvalid
        variant = wv.Value.Value if wv.Value is not None else None
        if variant is None or variant.Value is None or variant.VariantType != entry.vtype:
            return ua.StatusCodes.BadTypeMismatch
        value = from_variant_value(variant.Value)
        if not math.isfinite(value) or not (entry.tag.low <= value <= entry.tag.high):
            return ua.StatusCodes.BadOutOfRange
        return None

    async def _apply(self, values: dict[str, float], index: dict[str, int], results: list) -> None:
        async with self.lock:
            outcome = self.plant.write(values)
        for name, reason in outcome.refused.items():
            code = ua.StatusCodes.BadOutOfRange if "range" in reason else ua.StatusCodes.BadNotWritable
            results[index[name]] = _status(code)
        now = self._stamp(self.plant_time_now())
        for name in outcome.accepted:
            e = self.tagmap[name]
            await self.writer.push(e.node_id(self.ns), e.variant(values[name]), ua.StatusCodes.Good, now)
            results[index[name]] = _status(ua.StatusCodes.Good)

    async def _write_watchdog(self, wv: ua.WriteValue, role: Role) -> ua.StatusCode:
        if role < Role.OPERATOR:
            return _status(ua.StatusCodes.BadUserAccessDenied)
        variant = wv.Value.Value if wv.Value is not None else None
        if variant is None or variant.VariantType != ua.VariantType.UInt32:
            return _status(ua.StatusCodes.BadTypeMismatch)
        if variant.Value != self._watchdog_value:
            self._watchdog_value, self._watchdog_changed = variant.Value, time.monotonic()
        await self._diag("ClientWatchdog", variant)
        return _status(ua.StatusCodes.Good)
