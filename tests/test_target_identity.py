"""A run's target is what its servers say they are: a simulated PLC identifies itself as a twin in
its BuildInfo (over a signed channel when secured), a plant PLC does not; a training session runs
only against twins, whatever the command line says."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asyncua import Server

from controllers.guard import LiveWriteForbidden
from opcua_server.client_security import ClientSecurity
from opcua_server.identity import TWIN_PRODUCT_URI, decide_target, identify
from opcua_server.node_interop import free_port
from opcua_server.server import PlcServer
from pilot_config import load_config
from twin.plant import TwinPlant

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def config():
    return load_config()


@contextlib.asynccontextmanager
async def twin_plc(config):
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    plc = PlcServer(config.tags, config.opcua.namespace_uri, TwinPlant(config, seed=0), url, epoch_s=time.time())
    await plc.start()
    stop = asyncio.Event()
    scan = asyncio.create_task(plc.run(speed=60.0, stop=stop))  # plant time runs: 2 plant minutes in 2 s
    try:
        yield url
    finally:
        stop.set()
        await scan
        await plc.stop()


@contextlib.asynccontextmanager
async def plant_plc():
    """An OPC UA server that is not a twin (as a plant PLC would be)."""
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    await server.start()
    try:
        yield url
    finally:
        await server.stop()


def test_a_simulated_plc_is_a_twin_and_a_plain_server_is_not(config):
    async def main():
        async with twin_plc(config) as twin, plant_plc() as plant:
            who = await identify(twin, ClientSecurity())
            other = await identify(plant, ClientSecurity())
            target = await decide_target([twin], ClientSecurity(), "training")
            live = await decide_target([plant], ClientSecurity(), "live")  # a live session drives anything
            with pytest.raises(LiveWriteForbidden, match="identifies itself as .*not as a twin"):
                await decide_target([twin, plant], ClientSecurity(), "training")
            return who, other, target, live

    who, other, target, live = asyncio.run(main())
    assert who.twin and who.product_uri == TWIN_PRODUCT_URI and "digital twin" in who.product_name
    assert not who.secured  # None endpoint: the server's own word (logged as such)
    assert not other.twin and other.product_uri != TWIN_PRODUCT_URI
    assert target == "twin" and live == "live"


def test_an_unreachable_server_is_never_taken_for_a_twin():
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    with pytest.raises(LiveWriteForbidden, match="never write to a live PLC endpoint.*cannot be asked"):
        asyncio.run(decide_target([url], ClientSecurity(), "standalone"))


def test_pilot_run_takes_the_target_from_the_server(config, tmp_path):
    def pilot(url: str, out: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "pilot", "run", "--plc", url, "--session", "training",
                               "--duration", "2min", "--operator-endpoint", "", "--out", str(tmp_path / out)],
                              capture_output=True, text=True, env=env, timeout=120)

    async def main():
        async with twin_plc(config) as twin, plant_plc() as plant:
            return await asyncio.to_thread(pilot, twin, "twin"), await asyncio.to_thread(pilot, plant, "plant")

    on_twin, on_plant = asyncio.run(main())
    assert on_twin.returncode == 0, on_twin.stderr[-2000:]
    assert '"target": "twin"' in (tmp_path / "twin" / "summary.json").read_text()
    assert on_plant.returncode == 2 and "not as a twin" in on_plant.stderr and "Traceback" not in on_plant.stderr
