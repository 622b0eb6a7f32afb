"""``run_plc_sim``: the twin behind its simulated PLC, in real time × speed.

The plant clock starts at the wall-clock time of the start (``epoch_s``), so SourceTimestamps are
real dates that run ``speed`` times faster than the wall clock. Security (endpoints, PKI folder,
users, anonymous access) is a ``ServerSecurity``, by default from the environment
(``server_security_from_env``: PILOT_OPCUA_SERVER_SECURITY, PILOT_OPCUA_PKI, PILOT_OPCUA_USERS /
PILOT_OPCUA_SECRETS, PILOT_OPCUA_ANONYMOUS).
"""

from __future__ import annotations

import asyncio
import logging
import time

from .server import PlcServer
from .server_security import ServerSecurity, server_security_from_env

log = logging.getLogger(__name__)


async def run_plc_sim(config, endpoint: str | None = None, speed: float = 1.0, *, plant=None,
                      seed: int | None = None, security: ServerSecurity | None = None,
                      duration_s: float | None = None, stop: asyncio.Event | None = None,
                      started: asyncio.Event | None = None) -> PlcServer:
    """Serve ``config``'s tags from a TwinPlant (or ``plant``) until ``stop`` is set, ``duration_s``
    has passed, or the task is cancelled. ``started`` is set once the endpoint accepts clients."""
    if plant is None:
        from twin.plant import TwinPlant

        plant = TwinPlant(config, seed=seed)
    server = PlcServer(config.tags, config.opcua.namespace_uri, plant, endpoint or config.opcua.endpoint,
                       security=security or server_security_from_env(), epoch_s=time.time() - plant.t,
                       name=f"{config.name} simulated PLC")
    await server.start()
    if started is not None:
        started.set()
    stop = stop or asyncio.Event()
    timer = None
    if duration_s is not None:
        timer = asyncio.get_running_loop().call_later(duration_s, stop.set)
    try:
        await server.run(speed, stop)
    finally:
        if timer is not None:
            timer.cancel()
        await server.stop()
        log.info("simulated PLC stopped at plant time %.0f s", plant.t)
    return server
