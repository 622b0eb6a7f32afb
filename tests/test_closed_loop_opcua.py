"""Closed loop over real OPC UA: `pilot run`'s library entry point (``run_live``) against the
simulated PLC (``pilot plc-sim``, a separate process) at 10× speed for 10 plant-minutes, every
loop in auto. The setpoints the loop wrote are read back from the server afterwards; operators
acknowledge / shelve through the operator server while it runs; an anonymous session (read-only
on the PLC) has every write refused and reported, never dropped."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asyncua import ua

from controllers.guard import LiveWriteForbidden
from opcua_server.audit import read_journal
from opcua_server.bridge import OpcUaBridge
from opcua_server.client_security import ClientSecurity, connect_client
from opcua_server.node_interop import free_port, wait_port
from opcua_server.operator import OPERATOR_NS, call_operator
from opcua_server.security import Pki
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.historian.sqlite import history_path, list_tags
from pilot.live import run_live
from pilot_config import load_config

ROOT = Path(__file__).resolve().parent.parent
SPEED = 10.0
PASSWORD = "ctl-engineer-secret"
USER = {"security": ClientSecurity("None", "None", username="ctl", password=PASSWORD,  # plc-sim's None endpoint
                                   allow_plaintext_password=True)}  # engineer: ADS.BT_LIMIT_SP is a limit tag


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture()
def plc():
    port = free_port()
    code = f"from pilot.cli_opcua import plc_sim; plc_sim(None, 'opc.tcp://127.0.0.1:{port}', {SPEED})"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"ctl:engineer:{PASSWORD}",
           "PILOT_OPCUA_ANONYMOUS": "1"}  # anonymous sessions too (they only read): the refused-writes test
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        yield f"opc.tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_training_session_never_writes_to_a_live_plc(config, tmp_path):
    with pytest.raises(LiveWriteForbidden, match="never write to a live PLC"):
        asyncio.run(run_live(config, "opc.tcp://127.0.0.1:9", mode="auto", session="training",
                             out_dir=tmp_path, operator_endpoint=None))
    assert not (tmp_path / "summary.json").exists()  # refused before connecting or recording


OPERATOR_PASSWORD = "alice-engineer-secret"


def _operator_face(pki: Pki) -> tuple[ServerSecurity, ClientSecurity]:
    """The operator server's security (SignAndEncrypt, one engineer) and the console's, sharing
    one PKI folder as `pilot run` and `pilot alarms` do on one host (no trust step)."""
    users = UserDirectory()
    users.add("alice", OPERATOR_PASSWORD, "engineer")
    return (ServerSecurity(endpoints=(("Basic256Sha256", "SignAndEncrypt"),), pki=pki, users=users),
            ClientSecurity(pki=pki, username="alice", password=OPERATOR_PASSWORD))


async def _operator_actions(endpoint: str, console: ClientSecurity, ticks: list) -> dict:
    """While the loop runs: list, then shelve and acknowledge an alarm id, and a bad id."""
    while len(ticks) < 3:
        await asyncio.sleep(0.2)
    listed = json.loads(await call_operator(endpoint, console, "List"))
    shelved = await call_operator(endpoint, console, "Shelve", "CELL1.TEMP.HI", 600.0)
    bad = await call_operator(endpoint, console, "Acknowledge", "NO.SUCH.ALARM")
    mode = await call_operator(endpoint, console, "SetMode", "carousel", "manual")
    client = await connect_client(endpoint, console)
    try:  # link status and the recorder's counters, as variables
        idx = await client.get_namespace_index(OPERATOR_NS)
        variables = {n: await client.get_node(ua.NodeId(n, idx)).read_value()
                     for n in ("Operator.Links", "Operator.Historian", "PLC.plc.LINK")}
    finally:
        await client.disconnect()
    return {"listed": listed, "shelved": shelved, "bad": bad, "mode": mode, "variables": variables}


@pytest.mark.slow
def test_run_live_against_plc_sim_writes_and_reads_back(config, plc, tmp_path):
    op_endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    ticks: list = []
    op_security, console = _operator_face(Pki(tmp_path / "pki"))

    async def main():
        actions = asyncio.create_task(_operator_actions(op_endpoint, console, ticks))
        res = await run_live(config, plc, mode="auto", duration_s=600.0, out_dir=tmp_path,
                             operator_endpoint=op_endpoint, bridge_options=USER, operator_security=op_security,
                             on_tick=lambda tick, result: ticks.append((tick, result)))
        async with OpcUaBridge(plc, config.tags, config.opcua.namespace_uri, **USER) as bridge:
            back = await bridge.read_now(list(res.last.writes))
        return res, back, await actions

    res, back, actions = asyncio.run(main())
    assert res.ticks >= 9, res.ticks  # 10 plant-minutes at a 60 s control period
    assert not res.refused, res.refused
    last = res.last
    assert last.t - ticks[0][0].t >= 540.0
    for tag in ("CELL1.CURRENT_SP", "CELL1.SALT_FEED_SP", "CELL1.HEATER_SP", "CELL1.REMOTE",
                "CELL2.SALT_FEED_SP", "SX.ORG.FLOW_SP", "SX.SCRUB.FLOW_SP"):
        assert tag in last.writes, (tag, last.held.get(tag))
        assert back[tag].value == pytest.approx(last.writes[tag], rel=1e-5, abs=1e-4), tag  # Float on the wire
    assert back["CELL1.REMOTE"].value == 1.0  # the cell supervisor left heater and feeder to the loop
    assert all(r is not None and not r.refused for _, r in ticks)
    assert {"CELL1.CE.EST", "SX.KEX.EST", "SX.TB_PURITY.EST"} <= set(last.published)
    # operator face: list works, shelving is journalled, a bad id says why, a mode change applies
    assert isinstance(actions["listed"], list)
    assert actions["shelved"].startswith("ok")
    assert actions["bad"].startswith("error") and "NO.SUCH.ALARM" in actions["bad"]
    assert actions["mode"] == "ok" and last.modes["carousel"] == "manual"
    variables = actions["variables"]
    assert json.loads(variables["Operator.Links"])["plc"]["up"] is True and variables["PLC.plc.LINK"] == 1.0
    assert json.loads(variables["Operator.Historian"])["recorded"] > 0
    journal = [(e["user"], e["action"], e["target"], e["result"].split(":")[0]) for e in
               read_journal(tmp_path / "audit.jsonl")]  # the authenticated user, in the run's folder
    assert journal == [("alice", "shelve", "CELL1.TEMP.HI", "ok"), ("alice", "acknowledge", "NO.SUCH.ALARM", "refused"),
                       ("alice", "set_mode", "carousel", "ok")]
    # the run's record: summary and the embedded historian with estimates and decisions
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["control"]["ticks"] == res.ticks and summary["refused_writes"] == []
    # the PLC's client watchdog was written every wall second while the loop ran (10x: ~60 s)
    assert summary["bridge"]["watchdog_writes_accepted"] == summary["bridge"]["watchdog_writes"] >= 30
    tags = set(list_tags(history_path(tmp_path)))
    assert {"CELL1.CE.EST", "CELL1.SALT_FEED_SP.APPLIED", "MPC.extraction.SOLVE_MS", "CELL1.VOLTAGE"} <= tags


@pytest.mark.slow
def test_refused_writes_are_reported_not_dropped(config, plc, tmp_path):
    """Anonymous sessions may only read: every write is refused by the PLC, and each refusal is in
    the result, the summary and the history (``<TAG>.REFUSED``)."""
    res = asyncio.run(run_live(config, plc, mode="auto", duration_s=120.0, out_dir=tmp_path,
                               operator_endpoint=None))
    assert res.refused, "an anonymous session must be refused"
    _, tag, value, reason = res.refused[0]
    assert math.isfinite(value) and "refused by the PLC" in reason
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["refused_writes"]) == len(res.refused)
    assert summary["control"]["writes_accepted"] == 0
    assert summary["bridge"]["watchdog_writes"] > 0 and summary["bridge"]["watchdog_writes_accepted"] == 0
    assert f"{tag}.REFUSED" in set(list_tags(history_path(tmp_path)))


def _pilot(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pilot", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120, check=False)


def test_cli_surfaces_the_session_rule_and_a_missing_operator_server():
    r = _pilot("run", "--plc", "opc.tcp://127.0.0.1:9", "--session", "training", "--operator-endpoint", "")
    assert r.returncode == 2 and "never write to a live PLC" in r.stderr, r.stderr
    r = _pilot("alarms", "--endpoint", f"opc.tcp://127.0.0.1:{free_port()}", "list")
    assert r.returncode == 2 and "no running `pilot run` operator server" in r.stderr, r.stderr
