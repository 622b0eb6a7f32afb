"""Kill the simulated PLC (a separate process) during a subscription and bring it back: the
bridge is back within 5 s with every item restored, the gap is recorded as BAD, one log line
down / one up, and a write attempted during the outage is refused and never replayed."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opcua_server.bridge import OpcUaBridge
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import free_port, wait_port
from pilot_config import load_config
from twin.signals import Quality

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "op-reconnect-secret"


def start_plc(port: int) -> subprocess.Popen:
    code = ("from pilot.cli_opcua import plc_sim; "
            f"plc_sim(None, 'opc.tcp://127.0.0.1:{port}', 60.0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"op:operator:{PASSWORD}"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30)
    return proc


async def scenario(port: int, proc_box: list) -> dict:
    config = load_config()
    series: list[tuple[float, str, object]] = []
    bridge = OpcUaBridge(f"opc.tcp://127.0.0.1:{port}", config.tags, config.opcua.namespace_uri,
                         security=ClientSecurity("None", "None", username="op", password=PASSWORD,
                                                 allow_plaintext_password=True),  # plc-sim's quick-start None endpoint
                         listener=lambda n, s: series.append((time.time(), n, s)))
    await bridge.start()
    try:
        await asyncio.sleep(1.5)
        initial = (await bridge.read_now(["ADS.FEED.FLOW_SP"]))["ADS.FEED.FLOW_SP"].value
        before = await bridge.write({"ADS.FEED.FLOW_SP": 111.0})
        t_kill = time.time()
        proc_box[0].send_signal(signal.SIGKILL)
        proc_box[0].wait(5)
        for _ in range(50):
            if not bridge.connected:
                break
            await asyncio.sleep(0.05)
        during = await bridge.write({"ADS.FEED.FLOW_SP": 222.0})
        snap_down = await bridge.read()
        await asyncio.sleep(1.0)
        proc_box[0] = await asyncio.to_thread(start_plc, port)
        t_up = time.time()
        back = await bridge.wait_connected(5.0)
        t_back = time.time()
        await asyncio.sleep(1.5)
        sp = (await bridge.read_now(["ADS.FEED.FLOW_SP"]))["ADS.FEED.FLOW_SP"]
        return dict(bridge=bridge, series=series, before=before, during=during, snap_down=snap_down,
                    t_kill=t_kill, t_up=t_up, initial=initial, back=back, t_back=t_back, sp=sp, names=[t.name for t in config.tags])
    finally:
        await bridge.close()


def test_kill_and_restart_during_subscription(caplog):
    port = free_port()
    box = [start_plc(port)]
    try:
        with caplog.at_level(logging.INFO, logger="opcua_server.bridge"):
            r = asyncio.run(scenario(port, box))
    finally:
        box[0].kill()
        box[0].wait(5)
    assert r["before"].accepted == ("ADS.FEED.FLOW_SP",)
    assert r["back"] and r["t_back"] - r["t_up"] < 5.0
    bridge = r["bridge"]
    assert bridge.monitored == len(r["names"]) and bridge.stats.reconnects == 1
    # the write during the outage was refused, and not replayed after the reconnect
    assert r["during"].accepted == () and "connection down" in r["during"].refused["ADS.FEED.FLOW_SP"]
    # (the restarted PLC is a fresh twin, so it holds its initial setpoint, not the refused 222)
    assert r["sp"].value == pytest.approx(r["initial"]) and r["initial"] != pytest.approx(222.0)
    # while down, every tag reads BAD with no value (never the frozen last value)
    assert all(s.quality == Quality.BAD and math.isnan(s.value) for s in r["snap_down"].values())
    for name in r["names"]:
        mine = [(t, s) for t, n, s in r["series"] if n == name]
        gap = [s for t, s in mine if r["t_kill"] <= t < r["t_up"]]
        assert gap and all(s.quality == Quality.BAD for s in gap), name  # the gap is recorded, as BAD
        assert any(t >= r["t_up"] for t, _ in mine), name  # item restored: it reports again
    flow = [s for t, n, s in r["series"] if n == "ADS.FEED.FLOW"]
    qualities = [s.quality for s in flow]
    first_bad = qualities.index(Quality.BAD)
    assert Quality.GOOD in qualities[:first_bad] and Quality.GOOD in qualities[first_bad:]
    down = [m for m in caplog.messages if "down" in m]
    up = [m for m in caplog.messages if "back after" in m]
    assert len(down) == 1 and len(up) == 1
