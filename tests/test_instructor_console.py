"""`pilot train instructor URL ...` against a served training session (the instructor object of
the simulated PLC on a free port, users with roles): every verb, its effect on the session read back
over OPC UA, and the plain one-line errors (a wrong fault kind lists the kinds)."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from asyncua import Client, ua
from typer.testing import CliRunner

from opcua_server.instructor import serve_training
from opcua_server.instructor_faults import FAULT_KINDS
from opcua_server.node_interop import free_port
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.cli import app
from pilot.training.scenario import load_scenario
from pilot.training.session import Action, TrainingSession
from pilot_config import load_config

ENG_PW, OP_PW = "instructor-secret-1", "trainee-secret-12"
runner = CliRunner()


class Watch:
    """The Instructor variables and the heartbeat of the served session, as data changes arrive."""

    def __init__(self):
        self.values: dict[str, object] = {}
        self.changed = asyncio.Event()

    def datachange_notification(self, node, val, data):
        self.values[self.names[node.nodeid.Identifier]] = val
        self.changed.set()

    async def until(self, pred, timeout_s: float = 120.0):
        async def wait():
            while not pred(self.values):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout_s)
        return dict(self.values)


async def watch(url: str, ns: int, client: Client) -> Watch:
    w = Watch()
    ids = ["Instructor.SessionTime", "Instructor.Frozen", "Instructor.Speed", "Instructor.Faults",
           "Diagnostics.Heartbeat"]
    w.names = {i: i.split(".")[1] for i in ids}
    sub = await client.create_subscription(50, w)
    await sub.subscribe_data_change([client.get_node(ua.NodeId(i, ns)) for i in ids])
    await w.until(lambda v: len(v) == len(ids))
    return w


def cli(tmp_path, url: str, *verb: str, user: str = "ines") -> tuple[int, str]:
    pw = tmp_path / f"{user}.pw"
    pw.write_text(ENG_PW if user == "ines" else OP_PW)
    r = runner.invoke(app, ["train", "instructor", "--user", user, "--password-file", str(pw),
                            "--allow-plaintext-password", "--pki", str(tmp_path / "pki"), url, *verb])
    return r.exit_code, r.output


def served_session(config):
    sc = load_scenario("sx-organic-pump-trip")
    session = TrainingSession(config, initial=sc.initial, seed=1, session_id="train-console")
    for m in sc.malfunctions:
        session.submit(Action(t=0.0, kind="inject", args={"malfunction": m.model_dump()}, by="scenario"))
    return sc, session


def test_instructor_console_verbs_against_a_served_session(tmp_path):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    line = load_config()
    config = line.served().model_copy(update={"training": line.served().training.model_copy(
        update={"autosnapshot_every_min": 0.5})})
    sc, session = served_session(config)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    security = ServerSecurity(users=UserDirectory.parse(f"ines:engineer:{ENG_PW};tom:operator:{OP_PW}", "test"))
    snaps = tmp_path / "snaps"

    async def run(*verb, user="ines"):
        return await asyncio.to_thread(cli, tmp_path, url, *verb, user=user)

    async def scenario():
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_training(session, url, speed=20.0, stop=stop, started=started,
                                                  security=security, restore=TrainingSession.restore,
                                                  scenario=sc.name, snapshot_dir=snaps))
        await asyncio.wait_for(started.wait(), 60)
        client = Client(url, timeout=30)
        client.set_user("tom")
        client.set_password(OP_PW)
        async with client:
            ns = await client.get_namespace_index(config.opcua.namespace_uri)
            w = await watch(url, ns, client)
            out = {"w": w}
            await _verbs(run, w, out, snaps)
            out["end"] = await run("end")
            await asyncio.wait_for(task, 60)  # End stops the server
        return out

    out = asyncio.run(scenario())
    code, text = out["end"]
    assert code == 0 and text.startswith("session ends at t=")


async def _verbs(run, w: Watch, out: dict, snaps) -> None:
    # status needs no role; a trainee (operator) may not drive the session
    code, text = await run("status", user="tom")
    assert code == 0 and "session train-console, scenario sx-organic-pump-trip" in text
    assert "pump_trip@SX.ORG.FLOW_SP severity 1, scheduled from 10:00" in text and str(snaps.resolve()) in text
    code, text = await run("freeze", user="tom")
    assert code == 2 and "freeze needs the engineer role, which user tom does not have" in text
    assert not w.values["Frozen"]

    # freeze stops session time while the heartbeat goes on; resume restarts it
    code, text = await run("freeze")
    assert code == 0 and text.startswith("frozen at t=")
    v = await w.until(lambda v: v["Frozen"])
    beat, t_frozen = v["Heartbeat"], v["SessionTime"]
    await w.until(lambda v: v["Heartbeat"] >= beat + 2)
    assert w.values["SessionTime"] == t_frozen and "frozen" in (await run("status"))[1]
    assert (await run("resume")) == (0, "resumed\n")
    await w.until(lambda v: v["SessionTime"] > t_frozen)

    # speed changes the rate: at 0.5x plant time cannot outrun the wall clock, at 20x it does
    assert (await run("speed", "0.5")) == (0, "speed 0.5x\n")
    slow = await _rate(w, 0.5)
    assert slow <= 0.5 * 1.2 + 0.5, slow
    assert (await run("speed", "20")) == (0, "speed 20x\n")
    fast = await _rate(w, 20.0)
    assert fast > 2 * slow and fast > 1.5, (slow, fast)
    code, text = await run("speed", "200")
    assert code == 2 and text.strip() == ("error: speed must be 0.5..100 (plant seconds per wall second) or max; "
                                          "got '200'")

    await _faults(run, w)
    await _snapshots(run, w, snaps)


async def _rate(w: Watch, speed: float) -> float:
    """Plant seconds per wall second over at least 2 wall seconds at ``speed``."""
    await w.until(lambda v: v["Speed"] == speed)
    t0, wall0 = w.values["SessionTime"], time.monotonic()
    beat = w.values["Heartbeat"]
    await w.until(lambda v: v["Heartbeat"] >= beat + 3)
    return (w.values["SessionTime"] - t0) / (time.monotonic() - wall0)


async def _faults(run, w: Watch) -> None:
    code, text = await run("inject", "pump_trp@SX.ORG.FLOW_SP")
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: unknown fault kind 'pump_trp': use one of")
    assert all(k in lines[0] for k in FAULT_KINDS) and "pydantic" not in text and "Traceback" not in text
    code, text = await run("inject", "heater_failure@cell1", "--severity", "3")
    assert code == 2 and text.strip() == ("error: heater_failure: severity is the fraction lost, 0 < s <= 1; "
                                          "got 3.0")
    code, text = await run("inject", "heater_failure@cell9", "--severity", "0.5")
    assert code == 2 and "target must be a cell" in text and "cell1" in text
    code, text = await run("inject", "heater_failure@cell1", "--severity", "0.5")
    assert code == 0 and text.startswith("fault 2 heater_failure@cell1 severity 0.5 from ") and "(by ines)" in text
    await w.until(lambda v: any("heater_failure@cell1 severity 0.5, active" in f for f in v["Faults"]))
    assert "2 heater_failure@cell1 severity 0.5, active" in (await run("status"))[1]
    code, text = await run("clear", "drift")
    assert code == 2 and "no fault 'drift' scheduled or acting" in text
    code, text = await run("clear", "heater_failure")
    assert code == 0 and "fault 2 heater_failure@cell1 ramps out from" in text
    await w.until(lambda v: not any("heater_failure" in f for f in v["Faults"]))
    assert "heater_failure" not in (await run("status"))[1]


async def _snapshots(run, w: Watch, snaps) -> None:
    code, text = await run("snapshot", "../outside.json")
    assert code == 2 and "give a file name inside it" in text and not (snaps.parent / "outside.json").exists()
    code, text = await run("snapshot", "one.json")
    assert code == 0 and (snaps / "one.json").is_file()
    t_snap = TrainingSession.restore(snaps / "one.json").t
    await w.until(lambda v: v["SessionTime"] >= t_snap + 30)
    code, text = await run("restore", "one.json")
    assert code == 0 and f"t={t_snap:.0f} s" in text and "restored one.json" in text
    await w.until(lambda v: v["SessionTime"] < t_snap + 30)
    code, text = await run("restore", "none.json")
    assert code == 2 and "error: no snapshot 'none.json' in the server's folder" in text and "one.json" in text

    code, text = await run("backtrack", "99")
    assert code == 2 and "error: k must be 1.." in text
    t_before = w.values["SessionTime"]
    code, text = await run("backtrack")
    t_back = float(re.search(r"t=(\d+) s", text).group(1))
    # the session runs on while the call is made (the subscribed SessionTime lags it), so the check is
    # that the served session went back to an automatic snapshot, on the snapshot grid
    assert code == 0 and "back 1 automatic snapshot" in text and t_back % 30 == 0, (text, t_before)
    await w.until(lambda v: v["SessionTime"] < t_back + 30)


def test_a_cleared_fault_ramps_out_and_replays():
    """Clear rewrites the fault's journal entry (duration ending now): the rebuilt session is at the
    same time, the fault ramps out over its own ramp, and a later snapshot of it replays bit-for-bit;
    a fault still ramping in is refused, a scheduled one leaves the journal."""
    from opcua_server.instructor_faults import cleared_journal, fault_views, find_fault
    from pilot.training.session import state_digest
    from twin.malfunctions import Malfunction

    line = load_config()
    s = TrainingSession(line, seed=2)
    s.inject(Malfunction(kind="heater_failure", target="cell1", severity=0.5, ramp_s=120))
    s.inject(Malfunction(kind="drift", target="CELL1.TEMP", severity=5, onset_s=3600))
    s.run_for(60)
    ramping = find_fault(fault_views(s), "heater_failure@cell1", s.t)
    with pytest.raises(ValueError, match="ramping in until 2:00"):
        cleared_journal(s, ramping)
    s.run_for(540)
    views = fault_views(s)
    assert [v.line(s.t) for v in views] == ["1 heater_failure@cell1 severity 0.5, active",
                                            "2 drift@CELL1.TEMP severity 5, scheduled from 60:00"]
    journal = cleared_journal(s, find_fault(views, "1", s.t))
    n = TrainingSession.restore(s.snapshot().model_copy(update={"journal": journal}), line)
    assert n.t == s.t and fault_views(n)[0].line(n.t) == "1 heater_failure@cell1 severity 0.5, ramping out until 12:00"
    assert len(cleared_journal(n, fault_views(n)[1])) == len(n.journal) - 1  # not started: dropped
    n.run_for(180)
    assert fault_views(n)[0].state(n.t) == "over"
    assert state_digest(TrainingSession.restore(n.snapshot(), line)) == state_digest(n)
