"""A served training session is a whole plant: the twin behind its simulated PLC, the control loop
and its operator server (alarms as Alarms & Conditions), the historian under the session's tag.
A node-opcua trainee acknowledges the alarm through the operator server's conditions and writes the
corrective setpoints to the PLC; the instructor ends the session; the report scores those actions
with the trainee's user name, and every recorded point carries the session's tag."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asyncua import ua

from opcua_server.client_security import ClientSecurity, connect_client
from opcua_server.node_interop import NodeScript, free_port
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.historian.sqlite import history_path
from pilot.training.scenario import load_scenario
from pilot.training.served import LOOP_USER, ServedOptions, serve_plant
from pilot.training.session import Action, TrainingSession
from pilot_config import load_config

PASSWORDS = {"tina": "tina-trainee-pass", "ivan": "ivan-instructor-pass"}
ROLES = {"tina": "operator", "ivan": "engineer"}
SECURE = (("Basic256Sha256", "SignAndEncrypt"),)
ALARM = "SX.ORG.FLOW.LL"
ROOT = Path(__file__).resolve().parent.parent


def _users() -> UserDirectory:
    users = UserDirectory()
    for name, password in PASSWORDS.items():
        users.add(name, password, ROLES[name])
    return users


@pytest.fixture()
def scenario():
    """The shipped pump trip, sooner: the pump trips 60 s into the session."""
    sc = load_scenario("sx-organic-pump-trip")
    trip = sc.malfunctions[0].model_copy(update={"onset_s": 60.0})
    return sc.model_copy(update={"malfunctions": [trip]})


async def _listening(url: str, timeout_s: float) -> None:
    host, port = url.removeprefix("opc.tcp://").rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _end_when(url: str, pki, done: asyncio.Event) -> str:
    """The instructor ends the session once the trainee is done."""
    await done.wait()
    client = await connect_client(url, ClientSecurity("Basic256Sha256", "SignAndEncrypt", pki=pki, username="ivan",
                                                      password=PASSWORDS["ivan"]))
    try:
        idx = await client.get_namespace_index(load_config().opcua.namespace_uri)
        obj = client.get_node(ua.NodeId("Instructor", idx))
        score_node = client.get_node(ua.NodeId("Instructor.Score", idx))
        for _ in range(300):  # the live score follows the trainee's actions within a few updates
            score = await score_node.read_value()
            if score > 0:
                break
            await asyncio.sleep(0.1)
        open_ = await client.get_node(ua.NodeId("Instructor.OpenObjectives", idx)).read_value()
        answer = await obj.call_method(ua.NodeId("Instructor.End", idx))
        return answer, score, open_
    finally:
        await client.disconnect()


def test_a_node_opcua_trainee_is_scored_live_in_a_served_session(node_modules, pki_pair, scenario, tmp_path):
    config = load_config().served()
    plc_pki, op_pki, node_pki, ivan_pki = pki_pair(
        ("plc", "urn:pilot-line:plc-sim-test"), ("operator", "urn:pilot-line:operator-test"),
        ("trainee", "urn:pilot-line:trainee-hmi"), ("ivan", "urn:pilot-line:instructor"))
    for server in (plc_pki, op_pki):
        shutil.copy(node_pki.cert, server.trusted / "trainee.der")
    shutil.copy(ivan_pki.cert, plc_pki.trusted / "ivan.der")
    shutil.copy(plc_pki.cert, ivan_pki.trusted / "plc.der")
    plc_url, op_url = f"opc.tcp://127.0.0.1:{free_port()}", f"opc.tcp://127.0.0.1:{free_port()}"
    session = TrainingSession(config, initial=scenario.initial, seed=1)
    for m in scenario.malfunctions:
        session.submit(Action(t=0.0, kind="inject", args={"malfunction": m.model_dump()}, by="scenario"))
    opts = ServedOptions(plc_endpoint=plc_url, operator_endpoint=op_url,
                         plc_security=ServerSecurity(endpoints=SECURE, pki=plc_pki, users=_users()),
                         operator_security=ServerSecurity(endpoints=SECURE, pki=op_pki, users=_users()),
                         out_dir=tmp_path / "run", speed=10.0, snapshot_dir=tmp_path / "snapshots")
    trainee = NodeScript("trainee_client.js", op_url, plc_url, config.opcua.namespace_uri, "tina",
                         PASSWORDS["tina"], node_pki.cert.with_suffix(".pem"), node_pki.key,
                         "urn:pilot-line:trainee-hmi", ALARM, "TANK.OUT.FLOW_SP=0", "SX.SCRUB.FLOW_SP=0")

    async def main():
        done = asyncio.Event()
        served = asyncio.create_task(serve_plant(session, scenario, opts, restore=TrainingSession.restore))

        async def trainee_then_done():
            try:
                await _listening(op_url, 120.0)  # the loop has started its operator server
                return await asyncio.to_thread(trainee.run, 240)
            finally:
                done.set()

        t0 = time.monotonic()
        stdout, (answer, score, open_) = await asyncio.gather(trainee_then_done(), _end_when(plc_url, ivan_pki, done))
        return stdout, answer, score, open_, await served, time.monotonic() - t0

    stdout, answer, live_score, open_, result, wall = asyncio.run(main())
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert '"acknowledge":"Good"' in line and line.count('"Good"') == 3, line
    assert answer.startswith("ok session ends"), answer
    met = {r.id: r for r in result.score.responses}
    assert met["ack_flow"].met and met["stop_feed"].met and met["stop_scrub"].met, result.score.responses
    assert not met["restart_feed"].met  # ended before the pump came back
    assert live_score > 0 and any("restart_feed" in o for o in open_), (live_score, open_)
    record = result.score.record
    assert record.trainee == "tina" and record.instructor == "ivan" and result.ended_by == "instructor ivan"
    ack = next(a for a in record.alarms if a.alarm_id == ALARM)
    assert ack.operator == "tina" and ack.acked_t is not None
    writes = [a for a in record.actions if a.kind == "write"]
    assert writes and {a.by for a in writes} == {"tina"}  # the loop's own writes are not the trainee's
    assert LOOP_USER not in record.trainee
    html = result.report.read_text()
    assert "tina" in html and "ivan" in html and (result.report.parent / "report.pdf").is_file()
    # the historian: every point the loop recorded carries the session's tag
    with sqlite3.connect(history_path(tmp_path / "run")) as db:
        sessions = dict(db.execute("SELECT session, COUNT(*) FROM points GROUP BY session").fetchall())
    assert set(sessions) == {session.session_id} and sessions[session.session_id] > 100, sessions
    audit = (tmp_path / "run" / "audit.jsonl").read_text()
    assert '"user": "tina"' in audit and '"action": "acknowledge"' in audit


def test_pilot_train_serve_writes_the_report_on_sigterm(tmp_path):
    """The whole-plant session from the command line, ended by SIGTERM: the report is written."""
    plc_url, op_url = f"opc.tcp://127.0.0.1:{free_port()}", f"opc.tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_OPCUA", "PILOT_INFLUX"))}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "pilot", "train", "serve", "sx-organic-pump-trip", "--speed", "10",
                             "--endpoint", plc_url, "--operator-endpoint", op_url, "--operator-security", "None",
                             "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        asyncio.run(_listening(op_url, 120.0))
        time.sleep(2.0)  # a few ticks of the loop
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "ended (signal SIGTERM)" in stdout and "no users configured" in stdout, stdout
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "report.pdf").is_file()
    assert "Traceback" not in stderr
