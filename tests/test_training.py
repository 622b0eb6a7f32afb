"""Training sessions: journal-replay snapshots (bit-for-bit, in a new process), backtracking, pacing and
freeze, session-tagged historian points, and every shipped scenario run by its scripted trainee."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilot.training.report import score_run, write_report
from pilot.training.scenario import (
    load_scenario,
    load_trainee,
    run_scenario,
    shipped_scenarios,
)
from pilot.training.session import Action, Pacer, TrainingSession, state_digest
from pilot_config import load_config
from twin.malfunctions import Malfunction

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def line():
    return load_config()


def _busy_session(line) -> TrainingSession:
    s = TrainingSession(line, seed=7)
    s.inject(Malfunction(kind="heater_failure", target="cell1", onset_s=300, severity=0.8))
    s.inject(Malfunction(kind="noise_burst", target="CELL2.TEMP", onset_s=0, severity=2.0))
    s.run_for(900)
    s.write({"CELL1.CURRENT_SP": 120.0, "SX.SCRUB.FLOW_SP": 12.0})
    s.submit(Action(t=1500, kind="write", args={"values": {"CELL2.CURRENT_SP": 140.0}}))
    s.run_for(900)
    return s


RESTORE = """
import json, sys, time
from pilot.training.session import TrainingSession, state_digest
t0 = time.perf_counter()
s = TrainingSession.restore(sys.argv[1])
restore_s = time.perf_counter() - t0
digest_at = state_digest(s)
s.run_for(1200)
print(json.dumps({"at": digest_at, "end": state_digest(s), "t": s.t, "restore_s": restore_s}))
"""


def _clean_env() -> dict[str, str]:
    """A bare environment for the restoring process, but the same maths-library settings as this
    one: OpenBLAS picks its kernels from OPENBLAS_CORETYPE and friends, and other kernels round
    differently, so a bit-for-bit continuation needs the same ones."""
    import os

    blas = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOTO"))}
    return {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **blas}


def test_snapshot_restored_in_new_process_continues_bit_for_bit(line, tmp_path):
    s = _busy_session(line)
    path = s.save(tmp_path / "snap.json")
    at = state_digest(s)
    s.run_for(1200)
    out = subprocess.run([sys.executable, "-c", RESTORE, str(path)], check=False, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=_clean_env())
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["at"] == at and r["end"] == state_digest(s) and r["t"] == s.t == 3000.0
    assert r["restore_s"] < 20
    snap = json.loads(path.read_text())
    assert [a["kind"] for a in snap["journal"]] == ["inject", "inject", "write", "write"]


def test_backtrack_to_automatic_snapshot(line):
    s = _busy_session(line)  # t = 1800; automatic snapshots every 10 plant-minutes
    assert [a.t for a in s.autosnapshots] == [600.0, 1200.0, 1800.0]
    back = s.backtrack(-2)
    assert back.t == 1200.0 and back.session_id == s.session_id
    back.run_for(600)
    assert state_digest(back) == state_digest(s)
    # the past can be changed: a different action after the backtrack gives a different plant
    back.write({"CELL1.CURRENT_SP": 100.0})
    back.run_for(60)
    s.run_for(60)
    assert state_digest(back) != state_digest(s)


def test_initial_conditions(line):
    cold = TrainingSession(line, initial="cold_start")
    steady = TrainingSession(line, initial="steady_state")
    assert cold.t == steady.t == 0.0
    assert cold.plant.signal("extraction.raffinate.Tb") < 0.1 * steady.plant.signal("extraction.raffinate.Tb")
    with pytest.raises(ValueError, match="initial condition"):
        TrainingSession(line, initial="hot")


def test_pacing_speed_and_freeze(line):
    s = TrainingSession(line)
    pacer = Pacer(speed=100.0)  # 100x: a 60 s tick every 0.6 s of wall time
    t0 = time.monotonic()
    s.run_for(120, pacer)
    assert 1.0 <= time.monotonic() - t0 < 3.0
    with pytest.raises(ValueError, match="speed"):
        pacer.set_speed(1000.0)

    async def frozen_run():
        pacer.set_speed(None)
        pacer.frozen = True
        task = asyncio.create_task(s.run_async(600, pacer))
        beats = 0
        for _ in range(10):  # the event loop keeps running while the plant is frozen
            await asyncio.sleep(0.02)
            beats += 1
        t_frozen = s.t
        pacer.frozen = False
        await task
        return beats, t_frozen

    beats, t_frozen = asyncio.run(frozen_run())
    assert beats == 10 and t_frozen == 120.0 and s.t == 720.0


def test_points_carry_the_session_tag(line):
    s = TrainingSession(line, session_id="train-test")
    s.inject(Malfunction(kind="bad_status", target="TANK.LEVEL"))
    tick = s.tick()
    pts = s.points(tick)
    assert pts and {p.session for p in pts} == {"train-test"}
    assert any(p.measurement == "alarm" and p.tag == "TANK.LEVEL.BADPV" for p in pts)


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_shipped_scenario_scripted_trainee(line, path, tmp_path):
    sc = load_scenario(path)
    assert sc.expected is not None and len(shipped_scenarios()) >= 5
    session, rec = run_scenario(sc, line, trainee=load_trainee(path.parent / sc.expected.trainee), seed=0)
    score = score_run(sc, session, rec)
    assert sorted(score.met) == sorted(sc.expected.met)
    assert sc.expected.score_min <= score.score <= sc.expected.score_max
    assert all(r.time_to_act_s is not None and r.time_to_act_s >= 0 for r in score.responses if r.met)
    report = write_report(sc, session, rec, score, tmp_path)
    text = report.read_text()
    assert "data:image/png;base64," in text and f"<b>{score.score:.0f}</b>" in text
    # an idle trainee misses every response and scores less
    idle = score_run(sc, *run_scenario(sc, line, seed=0)) if path.stem == "ads-column-fouling" else None
    if idle is not None:
        assert idle.met == [] and idle.score < score.score


def test_opcua_instructor_freeze_keeps_server_responsive(line, tmp_path, monkeypatch):
    """Freeze stops plant time while the simulated PLC keeps answering reads (heartbeat, tags).
    The instructor's methods need the engineer role: an operator's call is refused, and with users
    configured anonymous sessions are not accepted at all."""
    from asyncua import Client, ua

    from opcua_server.instructor import serve_training
    from opcua_server.node_interop import free_port

    monkeypatch.setenv("PILOT_OPCUA_USERS", "instructor:engineer:instructor-secret;trainee:operator:trainee-secret")
    session = TrainingSession(line, session_id="train-opcua")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"

    async def scenario():
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_training(session, endpoint, speed=200.0, stop=stop, started=started,
                                                  restore=TrainingSession.restore, snapshot_dir=tmp_path))
        await asyncio.wait_for(started.wait(), 30)
        try:
            with pytest.raises(ua.UaStatusCodeError, match="BadIdentityTokenRejected"):
                async with Client(endpoint, timeout=10):  # anonymous: refused at ActivateSession
                    pass
            for user in ("trainee",):  # an operator session may not drive the session
                anon = Client(endpoint, timeout=10)
                anon.set_user(user)
                anon.set_password("trainee-secret")
                async with anon:
                    ns = await anon.get_namespace_index(line.opcua.namespace_uri)
                    with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                        await anon.get_node(ua.NodeId("Instructor", ns)).call_method(
                            ua.NodeId("Instructor.Freeze", ns))
            client = Client(endpoint, timeout=10)
            client.set_user("instructor")
            client.set_password("instructor-secret")
            async with client as c:
                ns = await c.get_namespace_index(line.opcua.namespace_uri)
                inst = c.get_node(ua.NodeId("Instructor", ns))
                t_node = c.get_node(ua.NodeId("Instructor.SessionTime", ns))
                beat = c.get_node(ua.NodeId("Diagnostics.Heartbeat", ns))

                async def call(name, *args):
                    return await inst.call_method(ua.NodeId(f"Instructor.{name}", ns), *args)

                await asyncio.sleep(1.2)
                assert await t_node.read_value() > 0  # running at 200x
                assert (await call("Freeze")).startswith("ok frozen")
                await asyncio.sleep(0.6)
                t_frozen, b0 = session.t, await beat.read_value()
                await asyncio.sleep(2.2)
                assert session.t == t_frozen and await t_node.read_value() == t_frozen
                assert await beat.read_value() >= b0 + 2  # heartbeat every wall second while frozen
                temp = await c.get_node(ua.NodeId("CELL1.TEMP", ns)).read_value()
                assert 500 < temp < 600
                m = '{"kind": "heater_failure", "target": "cell1", "severity": 0.5}'
                assert (await call("InjectMalfunction", m)).startswith("ok")
                assert (await call("SetSpeed", ua.Variant(1000.0, ua.VariantType.Double))).startswith("error")
                snap = tmp_path / "live.json"
                assert (await call("Snapshot", snap.name)).startswith("ok")
                assert (await call("Resume")) == "ok"
                await asyncio.sleep(1.0)
                assert session.t > t_frozen
                return snap
        finally:
            stop.set()
            await task

    snap = asyncio.run(scenario())
    restored = TrainingSession.restore(snap)
    assert [a.kind for a in restored.journal] == ["inject"] and restored.session_id == "train-opcua"


def test_snapshot_with_control_loop_replays_bit_for_bit(line):
    """With the closed loop in auto (estimators, MPC warm starts, guard, anomaly alarms), the
    journal replay rebuilds the same plant: the loop is deterministic without its MPC deadline."""
    modes = {"cell1": "auto", "cell2": "auto", "cascade": "auto"}
    s = TrainingSession(line, control=True, modes=modes, seed=3)
    s.inject(Malfunction(kind="electrolyte_contamination", target="cell1", onset_s=120, severity=0.3))
    s.run_for(240)
    s.set_mode("cascade", "advisory")
    snap, at = s.snapshot(), state_digest(s)
    s.run_for(180)
    assert s.control_result.writes and "CELL1.CURRENT_SP" in s.control_result.writes
    assert {p.session for p in s.points(s.last)} == {s.session_id}
    r = TrainingSession.restore(snap, line)
    assert state_digest(r) == at and r.loop.modes["cascade"] == "advisory"
    r.run_for(180)
    assert state_digest(r) == state_digest(s)
