"""Fixtures shared by the tests that need a real server: InfluxDB 1.x and node-opcua."""

from __future__ import annotations

import os

import pytest

from opcua_server.node_interop import ensure_node_opcua
from opcua_server.security import Pki, create_certificate
from pilot.historian import ci_server
from pilot.historian.influx1 import Influx1Sink


@pytest.fixture(scope="module")
def influx():
    """URL of the real InfluxDB (started by scripts/test, or here and stopped after the module)."""
    url, started = ci_server.ensure_influxdb()
    yield url
    if started:
        ci_server.stop()


@pytest.fixture()
def influx_db(influx):
    """A fresh database on the real InfluxDB (an ``Influx1Sink`` on it), dropped afterwards."""
    name = f"t_{os.urandom(5).hex()}"
    sink = Influx1Sink(url=influx, database=name)
    sink.create_database()
    yield sink
    try:
        sink.query(f'DROP DATABASE "{name}"', method="POST")
    finally:
        sink.close()


@pytest.fixture(scope="module")
def node_modules():
    """node-opcua installed with the machine's Node.js into an ignored folder (fails loudly)."""
    return ensure_node_opcua()


@pytest.fixture()
def pki_pair(tmp_path):
    """``pki_pair((name, app URI), (name, app URI))``: two PKI folders under tmp_path with a
    self-signed application certificate each."""

    def make(*peers: tuple[str, str]) -> tuple[Pki, ...]:
        pkis = []
        for name, uri in peers:
            pki = Pki(tmp_path / name)
            create_certificate(pki, uri, f"pilot-{name}")
            pkis.append(pki)
        return tuple(pkis)

    return make


@pytest.fixture()
def hot_loop():
    """A live control loop with CELL1.TEMP at 650 °C, above its HI and HH limits (both
    unacknowledged) at plant time 100 s; every other tag missing (their bad-PV alarms stand)."""
    from controllers.loop import ControlLoop
    from pilot_config import load_config
    from twin.signals import Sample

    loop = ControlLoop(load_config(), target="live", session="live")
    loop.alarms.step({"CELL1.TEMP": Sample(650.0, 100.0)}, 100.0)
    return loop


@pytest.fixture()
def pkis(pki_pair):
    """Operator-server and console PKI folders that trust each other."""
    import shutil

    server, console = pki_pair(("operator", "urn:pilot-line:operator-test"), ("console", "urn:pilot-line:console"))
    shutil.copy(console.cert, server.trusted / "console.der")
    shutil.copy(server.cert, console.trusted / "operator.der")
    return server, console


@pytest.fixture(scope="session")
def shipped_day():
    """The shipped line after one plant day on the twin, for tests that only read it (one run per worker)."""
    from pilot_config import default_config_path, load_config
    from twin.plant import TwinPlant

    plant = TwinPlant(load_config(default_config_path()))
    plant.advance(24 * 3600.0)
    return plant
