"""Kill the simulated PLC (a separate process) during a subscription and bring it back: the
bridge is back within 5 s with every item restored, the gap is recorded as BAD (a BadCommunicationError
sample at each end), one log line down / one up, and a write attempted during the outage is refused
and never replayed. Then the same for one PLC of several (`pilot plc-sim --plc NAME`, a process of
its own, killed with SIGKILL) while the others keep updating and taking writes."""

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
from asyncua import ua

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
    names = {t.name for t in config.tags}
    fresh_since = lambda t0: {n for t, n, s in series  # noqa: E731
                              if t >= t0 and s.status != ua.StatusCodes.BadCommunicationError}
    await bridge.start()
    try:
        await until(lambda: fresh_since(0.0) == names, 10.0)
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
        await until(lambda: fresh_since(t_up) == names, 10.0)  # every item restored
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
        marks = [i for i, (_, s) in enumerate(mine) if s.status == ua.StatusCodes.BadCommunicationError]
        assert len(marks) == 2 and mine[marks[1]][0] >= r["t_up"], name  # one mark at each end of the gap
        assert len(mine) > marks[1] + 1, name  # the closing mark came before the fresh values
    flow = [s for t, n, s in r["series"] if n == "ADS.FEED.FLOW"]
    qualities = [s.quality for s in flow]
    first_bad = qualities.index(Quality.BAD)
    assert Quality.GOOD in qualities[:first_bad] and Quality.GOOD in qualities[first_bad:]
    down = [m for m in caplog.messages if "down" in m]
    up = [m for m in caplog.messages if "back after" in m]
    assert len(down) == 1 and len(up) == 1


# -- one PLC of several, a `pilot plc-sim --plc NAME` process of its own, killed with SIGKILL --------
VICTIM = "electrolysis"


def start_plcs(names: list[str], urls: dict[str, str]) -> subprocess.Popen:
    args = [sys.executable, "-m", "pilot", "plc-sim", "--speed", "60"]
    for name in names:
        args += ["--plc", name, "--endpoint", f"{name}={urls[name]}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"op:operator:{PASSWORD}"}
    env.pop("PILOT_OPCUA_ENDPOINT", None)
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in names:
        wait_port(int(urls[name].rsplit(":", 1)[1]), 60)
    return proc


async def until(pred, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return time.time()
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout_s} s")


async def several_plcs_scenario(config, urls: dict[str, str], procs: dict[str, subprocess.Popen]) -> dict:
    from opcua_server.plant_link import PlantLink

    series: list[tuple[float, str, object]] = []
    tags = config.plc_tags()
    plcs = [(p.model_copy(update={"endpoint": urls[p.name]}), tags[p.name]) for p in config.opcua.resolved_plcs()]
    link = PlantLink(plcs, ClientSecurity("None", "None", username="op", password=PASSWORD,
                                          allow_plaintext_password=True),
                     listener=lambda n, s: series.append((time.time(), n, s)))
    victim = {t.name for t in tags[VICTIM]}
    good_after = lambda t0, mine: sum(1 for t, n, s in series if t >= t0 and (n in victim) == mine  # noqa: E731
                                      and s.quality == Quality.GOOD)
    await link.start()
    try:
        await until(lambda: good_after(0.0, True) > 0 and good_after(0.0, False) > 0, 10.0)
        t_kill = time.time()
        procs[VICTIM].send_signal(signal.SIGKILL)
        t_bad = await until(lambda: not link.bridge(VICTIM).connected, 2.0)
        last_seen = link.bridge(VICTIM).clock.now()
        writes = await link.write({"ADS.FEED.FLOW_SP": 101.0, "CELL1.CURRENT_SP": 50.0})
        await until(lambda: good_after(t_bad, False) > 0, 5.0)
        others = good_after(t_bad, False)
        procs[VICTIM].wait(5)
        procs[VICTIM] = await asyncio.to_thread(start_plcs, [VICTIM], urls)
        t_listen = time.time()
        back = await link.wait_connected(5.0, [VICTIM])
        t_back = time.time()
        await until(lambda: good_after(t_back, True) > 0, 5.0)
        return dict(series=series, victim=victim, t_kill=t_kill, t_bad=t_bad, writes=writes, others=others,
                    back=back, t_listen=t_listen, t_back=t_back, last_seen=last_seen,
                    clock_after=link.bridge(VICTIM).clock.now(), t_clock=time.time(), links=link.links())
    finally:
        await link.close()


def test_kill_one_plc_of_several_and_restart_it(caplog):
    config = load_config()
    names = [p.name for p in config.opcua.resolved_plcs()]
    assert VICTIM in names and len(names) >= 3
    urls = {n: f"opc.tcp://127.0.0.1:{free_port()}" for n in names}
    procs = {}
    try:
        procs["rest"] = start_plcs([n for n in names if n != VICTIM], urls)
        procs[VICTIM] = start_plcs([VICTIM], urls)
        with caplog.at_level(logging.INFO, logger="opcua_server.bridge"):
            r = asyncio.run(several_plcs_scenario(config, urls, procs))
    finally:
        for p in procs.values():
            p.kill()
            p.wait(5)
    assert r["t_bad"] - r["t_kill"] < 2.0
    assert "ADS.FEED.FLOW_SP" in r["writes"].accepted
    assert "connection down" in r["writes"].refused["CELL1.CURRENT_SP"]
    assert r["others"] > 0  # the other PLCs kept updating during the outage
    assert r["back"] and r["t_back"] - r["t_listen"] < 5.0
    comm = ua.StatusCodes.BadCommunicationError
    for name in r["victim"]:
        seq = [(t, s) for t, n, s in r["series"] if n == name]
        marks = [i for i, (_, s) in enumerate(seq) if s.status == comm]
        assert len(marks) == 2, name  # at the loss and at the return
        down, up = seq[marks[0]][1], seq[marks[1]][1]
        assert seq[marks[0]][0] < r["t_kill"] + 2.0 and seq[marks[1]][0] >= r["t_listen"]
        assert up.source_time >= down.source_time  # both on the old clock estimate
        fresh = seq[marks[1] + 1:]
        assert fresh, name  # the item was restored; the closing mark came before it
    # the restarted simulator's clock starts again (a fresh twin): the bridge's estimate follows it
    fresh = [(t, s) for t, n, s in r["series"] if n in r["victim"] and t >= r["t_listen"] and s.status != comm]
    t_arrived, newest = max(fresh, key=lambda ts: ts[1].source_time)
    assert abs(r["clock_after"] - (newest.source_time + r["t_clock"] - t_arrived)) < 1.0
    assert r["links"][VICTIM].reconnects == 1 and all(s.up for s in r["links"].values())
    assert [m for m in caplog.messages if " down (" in m][0].startswith(f"PLC {VICTIM} (")
    assert len([m for m in caplog.messages if " down (" in m]) == 1
