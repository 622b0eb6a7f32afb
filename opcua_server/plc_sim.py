"""``run_plc_sim``: the twin behind its simulated PLCs, in real time × speed.

One twin, one scan, one PlcServer per PLC of the config (``config.opcua.resolved_plcs()``), or
only the named ones: each server has its own endpoint, namespace, tags, heartbeat and client
watchdog; all of them share the plant and the lock that its advance and every write take, so a
write through any server lands between two physics steps of the same plant. The scan advances the
plant on its synchronisation grid and then lets every server publish its own changed tags.
``serve_plan`` says which server serves what (pure); ``endpoint`` alone keeps its single-server
meaning: every tag of the config on one server at that URL, namespace ``opcua.namespace_uri``.

The plant clock starts at the wall-clock time of the start (``epoch_s``), so SourceTimestamps are
real dates that run ``speed`` times faster than the wall clock. Security (endpoints, PKI folder,
users, anonymous access) is one ``ServerSecurity`` for every server, by default from the environment
(``server_security_from_env``: PILOT_OPCUA_SERVER_SECURITY, PILOT_OPCUA_PKI, PILOT_OPCUA_USERS /
PILOT_OPCUA_SECRETS, PILOT_OPCUA_ANONYMOUS).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .server import PlcServer, chunk_steps, sleep_unless, stepper
from .server_security import ServerSecurity, server_security_from_env

log = logging.getLogger(__name__)
ALL_TAGS = "plc"  # the name of the one server of every tag (``endpoint`` given alone)


@dataclass(frozen=True)
class ServedPlc:
    """One server of the simulation: a PLC's name, where it listens, its namespace and tags."""

    name: str
    endpoint: str
    namespace_uri: str
    tags: tuple


def serve_plan(config, names: Sequence[str] = (), endpoints: Mapping[str, str] | None = None,
               endpoint: str | None = None) -> list[ServedPlc]:
    """The servers to start: every PLC of ``config`` or only ``names``, each at its config endpoint
    unless ``endpoints`` (PLC name -> URL) overrides it. ``endpoint`` (a bare URL): with no
    ``names``, every tag on one server there; with one name, that PLC's URL. Raises ValueError
    naming the PLCs for an unknown name."""
    endpoints = dict(endpoints or {})
    plcs = {p.name: p for p in config.opcua.resolved_plcs()}
    unknown = sorted({*names, *endpoints} - set(plcs))
    if unknown:
        raise ValueError(f"unknown PLC {', '.join(unknown)}: the PLCs of {config.name} are {', '.join(plcs)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a PLC is named twice in {list(names)}")
    if endpoint is not None:
        if len(names) > 1 or (endpoints and not names):
            raise ValueError("a bare endpoint URL serves one PLC (or every tag on one server): "
                             "give NAME=URL for each PLC instead")
        if not names and len(plcs) > 1:
            return [ServedPlc(ALL_TAGS, endpoint, config.opcua.namespace_uri, tuple(config.tags))]
        endpoints[names[0] if names else next(iter(plcs))] = endpoint
    tags = config.plc_tags()
    chosen = list(names) or list(plcs)
    return [ServedPlc(n, endpoints.get(n, plcs[n].endpoint), plcs[n].namespace_uri, tuple(tags[n]))
            for n in chosen]


async def scan(plant, servers: Sequence[PlcServer], lock: asyncio.Lock, speed: float, stop: asyncio.Event,
               max_chunk_steps: int = 5) -> None:
    """Advance ``plant`` in real time × ``speed`` until ``stop`` is set; after each advance every
    server publishes its changed tags; every wall second every server beats. The plant is advanced
    off the event loop, always on the same one worker thread (``server.stepper``); catching up, at most
    ``server.chunk_steps`` grid steps between two publications (every plant second on a 1 s step)."""
    if not speed > 0:
        raise ValueError("speed must be > 0")
    with stepper() as worker:
        await _scan(plant, servers, lock, speed, stop, max_chunk_steps, worker)


async def _scan(plant, servers, lock, speed, stop, max_chunk_steps, worker: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    step = float(getattr(plant, "dt", 1.0))
    t0_wall, t0_plant = time.monotonic(), plant.t
    next_beat, lagging = t0_wall, False
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_beat:
            for server in servers:
                await server.beat()
            next_beat += 1.0
        steps = int(math.floor((t0_plant + (now - t0_wall) * speed - plant.t) / step + 1e-9))
        if steps > 0:
            async with lock:
                chunk = min(steps, chunk_steps(step, max_chunk_steps))
                await loop.run_in_executor(worker, plant.advance, chunk * step)
            for server in servers:
                await server.publish()
            if steps > 4 * max_chunk_steps and not lagging:
                lagging = True
                log.warning("the twin cannot keep up with speed %.1f: plant time is falling behind", speed)
            continue
        wake = min(next_beat, t0_wall + (plant.t + step - t0_plant) / speed)
        await sleep_unless(stop, max(0.0, min(wake - time.monotonic(), 0.5)))


def build_servers(config, plan: Sequence[ServedPlc], plant, security: ServerSecurity,
                  epoch_s: float) -> tuple[list[PlcServer], asyncio.Lock]:
    """One PlcServer per planned PLC, all on ``plant`` and sharing one lock."""
    lock = asyncio.Lock()
    servers = []
    for p in plan:
        label = f"{config.name} simulated PLC" + ("" if p.name == ALL_TAGS else f" {p.name}")
        server = PlcServer(p.tags, p.namespace_uri, plant, p.endpoint, security=security, epoch_s=epoch_s,
                           name=label)
        server.lock = lock  # the plant's lock: its advance and the writes of every server
        servers.append(server)
    return servers, lock


async def run_plc_sim(config, endpoint: str | None = None, speed: float = 1.0, *, plant=None,
                      seed: int | None = None, security: ServerSecurity | None = None,
                      duration_s: float | None = None, stop: asyncio.Event | None = None,
                      started: asyncio.Event | None = None, plcs: Sequence[str] = (),
                      endpoints: Mapping[str, str] | None = None) -> list[PlcServer]:
    """Serve ``config``'s PLCs (``serve_plan``) from a TwinPlant (or ``plant``) until ``stop`` is
    set, ``duration_s`` has passed, or the task is cancelled. ``started`` is set once every endpoint
    accepts clients. Returns the servers (stopped)."""
    plan = serve_plan(config, plcs, endpoints, endpoint)
    if plant is None:
        from twin.plant import TwinPlant

        plant = TwinPlant(config, seed=seed)
    servers, lock = build_servers(config, plan, plant, security or server_security_from_env(),
                                  time.time() - plant.t)
    stop = stop or asyncio.Event()
    timer, running = None, []
    try:
        for server in servers:
            await server.start()
            running.append(server)
        if started is not None:
            started.set()
        if duration_s is not None:
            timer = asyncio.get_running_loop().call_later(duration_s, stop.set)
        await scan(plant, servers, lock, speed, stop)
    finally:
        if timer is not None:
            timer.cancel()
        for server in running:
            await server.stop()
        log.info("simulated PLC%s stopped at plant time %.0f s", "s" if len(servers) > 1 else "", plant.t)
    return servers
