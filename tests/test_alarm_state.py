"""Alarm state that survives a restart (the SQLite alarm state store), the alarm-state historian
points, and a live run restarted against a simulated PLC with the same store."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controllers.alarms import AlarmManager, AlarmState
from controllers.loop import ControlLoop
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import free_port, wait_port
from opcua_server.operator import call_operator
from opcua_server.security import Pki
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.alarm_store import ALARM_STATE_FILE, AlarmStore
from pilot.historian.sqlite import history_path, read_points
from pilot.live import run_live
from pilot_config import load_config
from pilot_config.control import AlarmsConfig, LimitAlarmConfig
from twin.points import ALARM_STATE_CODES, alarm_state_points
from twin.signals import Sample

S = AlarmState
ROOT = Path(__file__).resolve().parent.parent
PLC_PASSWORD = "ctl-engineer-secret"
OPERATOR_PASSWORD = "alice-engineer-secret"


@pytest.fixture(scope="module")
def line():
    return load_config()


def temp_alarms() -> AlarmsConfig:
    return AlarmsConfig(limit=[LimitAlarmConfig(tag="CELL1.TEMP", hh_eng=640, h_eng=600, deadband_eng=2.0),
                               LimitAlarmConfig(tag="CELL2.TEMP", h_eng=600, deadband_eng=2.0)])


def snap(t, c1=550.0, c2=550.0):
    return {"CELL1.TEMP": Sample(c1, t), "CELL2.TEMP": Sample(c2, t)}


def test_store_round_trip_keeps_unacknowledged_shelved_and_out_of_service(line, tmp_path):
    mgr = AlarmManager(temp_alarms(), line.tags)
    mgr.step(snap(0), 0)
    mgr.step(snap(10, c1=700, c2=610), 10)  # HI, HH, CELL2 HI raised
    mgr.shelve("CELL1.TEMP.HH", "alice", 20, 600)
    mgr.acknowledge("CELL2.TEMP.HI", "bob", 25)
    store = AlarmStore(tmp_path / "state" / ALARM_STATE_FILE)
    store.save(mgr.saved_state(), mgr.journal)
    store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "state" / ALARM_STATE_FILE).st_mode) == 0o600

    again = AlarmManager(temp_alarms(), line.tags)
    store = AlarmStore(tmp_path / "state" / ALARM_STATE_FILE)
    assert again.restore(store.load()) == []
    journal = store.journal()
    store.close()
    assert journal == mgr.journal and journal[-1].operator == "bob"
    def plain(saved):
        return [(a.alarm_id, a.state, a.condition, *(None if math.isnan(x) else x for x in (a.since, a.shelved_until)))
                for a in saved.alarms], saved.out_of_service
    assert plain(again.saved_state()) == plain(mgr.saved_state())
    assert {a.alarm_id: a.state for a in again.active()} == {"CELL1.TEMP.HI": S.UNACK_ACTIVE,
                                                             "CELL2.TEMP.HI": S.ACK_ACTIVE}
    assert again.shelved_until("CELL1.TEMP.HH") == 620.0
    # the restored condition stands: no new activation while the value stays high
    assert again.step(snap(30, c1=700, c2=610), 30).transitions == ()
    # the shelving expires at its plant time and the alarm comes straight back unacknowledged
    step = again.step(snap(620, c1=700, c2=610), 620)
    assert [(e.alarm_id, e.to_state) for e in step.transitions] == [("CELL1.TEMP.HH", S.NORMAL),
                                                                     ("CELL1.TEMP.HH", S.UNACK_ACTIVE)]


def test_store_refuses_a_bad_state_naming_the_field(line, tmp_path):
    store = AlarmStore(tmp_path / ALARM_STATE_FILE)
    store._db.execute("INSERT INTO alarm_state VALUES ('CELL1.TEMP.HI', 'sleeping', 1, 0, NULL)")
    with pytest.raises(ValueError, match="field state has \\['sleeping'\\]; allowed"):
        store.load()
    store.close()
    (tmp_path / "junk.sqlite").write_text("not a database at all, just text" * 20)
    with pytest.raises(ValueError, match="junk.sqlite: not an alarm state store"):
        AlarmStore(tmp_path / "junk.sqlite").load()


def test_restore_skips_alarms_the_config_no_longer_has(line):
    mgr = AlarmManager(temp_alarms(), line.tags)
    mgr.step(snap(0, c1=700), 0)
    smaller = AlarmManager(AlarmsConfig(limit=[LimitAlarmConfig(tag="CELL1.TEMP", h_eng=600)]), line.tags)
    skipped = smaller.restore(mgr.saved_state())
    assert "CELL1.TEMP.HH" in skipped and [a.alarm_id for a in smaller.active()] == ["CELL1.TEMP.HI"]


def test_state_points_follow_the_schema():
    pts = alarm_state_points("CELL1.TEMP.HH", "cell1", S.SHELVED, 1, 20.0, "alice", 620.0, first=True,
                             session="training")
    assert [(p.tag, p.value) for p in pts] == [("CELL1.TEMP.HH.STATE", 4.0), ("CELL1.TEMP.HH.PRIORITY", 1.0)]
    assert json.loads(pts[0].text) == {"state": "shelved", "priority": 1, "by": "alice", "until": 620.0}
    assert {p.measurement for p in pts} == {"alarm"} and pts[0].session == "training"
    plain = alarm_state_points("X.HI", "u", "normal", 3, 1.0, None, math.nan)
    assert len(plain) == 1 and json.loads(plain[0].text) == {"state": "normal", "priority": 3, "by": "",
                                                             "until": None}
    assert ALARM_STATE_CODES["suppressed"] == 5
    with pytest.raises(ValueError, match="alarm state 'asleep' of X.HI: allowed"):
        alarm_state_points("X.HI", "u", "asleep", 3, 1.0)


def test_loop_records_every_transition_with_who_and_priority_once(line):
    loop = ControlLoop(line)
    alarms = loop.alarms
    hi = "CELL1.TEMP.HI"
    i = alarms.index[hi]
    raised = alarms.step({**{}, "CELL1.TEMP": Sample(700.0, 0.0)}, 0.0).transitions
    acked = alarms.acknowledge(hi, "alice", 5.0)
    pts = loop._alarm_points([*raised, *acked])
    state = [p for p in pts if p.tag == f"{hi}.STATE"]
    assert [p.value for p in state] == [1.0, 2.0]
    assert json.loads(state[1].text)["by"] == "alice"
    assert json.loads(state[0].text)["priority"] == int(alarms.defs[i].priority)
    assert [p.tag for p in pts].count(f"{hi}.PRIORITY") == 1
    assert [p.value for p in pts if p.tag == hi] == [1.0]  # the 1/0 raise/clear point stays


# -- a live run stopped and started again with the same store ---------------------------------
@pytest.fixture()
def plc():
    port = free_port()
    code = f"from pilot.cli_opcua import plc_sim; plc_sim(None, 'opc.tcp://127.0.0.1:{port}', 10.0)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"ctl:engineer:{PLC_PASSWORD}"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        yield f"opc.tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _hot_config(line):
    """The line's config with CELL1/CELL2 temperature limits below their normal values (raised at once)."""
    alarms = line.control.alarms
    limit = [a for a in alarms.limit if a.tag not in ("CELL1.TEMP", "CELL2.TEMP")]
    limit += [LimitAlarmConfig(tag="CELL1.TEMP", hh_eng=200, h_eng=100, deadband_eng=2),
              LimitAlarmConfig(tag="CELL2.TEMP", h_eng=100, deadband_eng=2)]
    control = line.control.model_copy(update={"alarms": alarms.model_copy(update={"limit": limit})})
    return line.model_copy(update={"control": control})


async def _ack_and_shelve(endpoint: str, console: ClientSecurity, ticks: list) -> list[str]:
    while not ticks:
        await asyncio.sleep(0.2)
    return [await call_operator(endpoint, console, "Shelve", "CELL1.TEMP.HH", 3600.0),
            await call_operator(endpoint, console, "Acknowledge", "CELL2.TEMP.HI")]


def _run(config, plc, out: Path, state: Path, pki: Path, duration_s: float, act: bool):
    users = UserDirectory()
    users.add("alice", OPERATOR_PASSWORD, "engineer")
    server = ServerSecurity(endpoints=(("Basic256Sha256", "SignAndEncrypt"),), pki=Pki(pki), users=users)
    console = ClientSecurity(pki=Pki(pki), username="alice", password=OPERATOR_PASSWORD)
    endpoint, ticks = f"opc.tcp://127.0.0.1:{free_port()}", []
    bridge = {"security": ClientSecurity("None", "None", username="ctl", password=PLC_PASSWORD,
                                         allow_plaintext_password=True)}

    async def main():
        task = asyncio.create_task(_ack_and_shelve(endpoint, console, ticks)) if act else None
        res = await run_live(config, plc, mode="advisory", duration_s=duration_s, out_dir=out, alarm_state=state,
                             operator_endpoint=endpoint, bridge_options=bridge, operator_security=server,
                             on_tick=lambda tick, result: ticks.append(tick))
        return res, ticks, (await task if task else None)

    return asyncio.run(main())


@pytest.mark.slow
def test_restart_keeps_unacknowledged_and_shelved_alarms(line, plc, tmp_path):
    config, state = _hot_config(line), tmp_path / "state" / ALARM_STATE_FILE
    _, first, answers = _run(config, plc, tmp_path / "run1", state, tmp_path / "pki", 240.0, act=True)
    assert all(a.startswith("ok") for a in answers), answers
    raised_at = {a.alarm_id: a.since for a in first[0].active_alarms}
    assert {"CELL1.TEMP.HI", "CELL1.TEMP.HH", "CELL2.TEMP.HI"} <= set(raised_at)

    _, second, _ = _run(config, plc, tmp_path / "run2", state, tmp_path / "pki", 120.0, act=False)
    start = second[0]
    assert not [e for e in start.alarms if e.alarm_id.startswith(("CELL1.TEMP", "CELL2.TEMP"))]  # not re-raised
    now = {a.alarm_id: a for a in start.active_alarms}
    assert now["CELL1.TEMP.HI"].state == S.UNACK_ACTIVE and now["CELL1.TEMP.HI"].since == raised_at["CELL1.TEMP.HI"]
    assert now["CELL2.TEMP.HI"].state == S.ACK_ACTIVE
    assert "CELL1.TEMP.HH" not in now  # still shelved: out of the summary
    store = AlarmStore(state)
    saved = {a.alarm_id: a for a in store.load().alarms}
    journal = store.journal()
    store.close()
    assert saved["CELL1.TEMP.HH"].state == S.SHELVED and saved["CELL1.TEMP.HH"].shelved_until > second[-1].t
    assert ("CELL2.TEMP.HI", S.ACK_ACTIVE, "alice") in [(e.alarm_id, e.to_state, e.operator) for e in journal]
    # the first run's historian has the state points of the schema, with who shelved and until when
    pts = read_points(history_path(tmp_path / "run1"), "alarm", "CELL1.TEMP.HH.STATE")
    shelved = [json.loads(p.text) for p in pts if p.value == ALARM_STATE_CODES["shelved"]]
    assert shelved and shelved[0]["by"] == "alice" and shelved[0]["until"] == saved["CELL1.TEMP.HH"].shelved_until
    prio = read_points(history_path(tmp_path / "run1"), "alarm", "CELL1.TEMP.HH.PRIORITY")
    assert len(prio) == 1 and prio[0].value == 1.0


def test_list_shows_iso_time_priority_names_description_limit_and_a_shelved_section(line):
    from datetime import datetime

    from rich.console import Console

    from pilot.cli_alarms import listing_json, listing_tables

    t0 = 1796143734.0
    mgr = AlarmManager(temp_alarms(), line.tags)
    mgr.step(snap(t0, c1=700, c2=610), t0)
    mgr.shelve("CELL1.TEMP.HH", "alice", t0 + 5, 3600)
    listing = listing_json(json.loads(json.dumps(mgr.listing())))
    assert [a["id"] for a in listing["alarms"]] == ["CELL1.TEMP.HI", "CELL2.TEMP.HI"]
    hi = listing["alarms"][0]
    assert hi["priority_name"] == "medium" and hi["limit"] == 600 and hi["value"] == 700 and hi["eng_unit"]
    assert hi["description"].endswith(" high") and hi["since_iso"] == datetime.fromtimestamp(t0).astimezone(
    ).isoformat(timespec="seconds")
    (hh,) = listing["shelved"]
    assert hh["id"] == "CELL1.TEMP.HH" and hh["shelved_until"] == t0 + 3605 and hh["priority_name"] == "critical"
    assert hh["shelved_until_iso"] == datetime.fromtimestamp(t0 + 3605).astimezone().isoformat(timespec="seconds")
    console = Console(width=100, record=True)
    for table in listing_tables(listing):
        console.print(table)
    text = console.export_text()
    assert max(len(row) for row in text.splitlines()) <= 100
    assert "1 shelved" in text and "CELL1.TEMP.HH" in text and "3 medium" in text and "1 critical" in text
    assert hi["since_iso"] in text and hh["shelved_until_iso"] in text and "700 " in text and "600 " in text
    assert str(int(t0)) not in text  # no bare Unix seconds


def test_out_of_service_survives_a_restart(line, tmp_path):
    mgr = AlarmManager(temp_alarms(), line.tags)
    unit = mgr.defs[mgr.index["CELL2.TEMP.HI"]].unit
    mgr.step(snap(0, c2=610), 0)
    mgr.set_out_of_service(unit, True, "bob", 5)
    store = AlarmStore(tmp_path / ALARM_STATE_FILE)
    store.save(mgr.saved_state(), mgr.journal)
    again = AlarmManager(temp_alarms(), line.tags)
    again.restore(store.load())
    store.close()
    assert again.out_of_service == {unit} and again.state[again.index["CELL2.TEMP.HI"]] == S.SUPPRESSED
    back = again.set_out_of_service(unit, False, "bob", 10)  # the condition stands: raised again on return
    assert [(e.alarm_id, e.to_state) for e in back if e.alarm_id == "CELL2.TEMP.HI"] == [
        ("CELL2.TEMP.HI", S.NORMAL), ("CELL2.TEMP.HI", S.UNACK_ACTIVE)]


def test_standing_alarms_from_the_last_state_point_in_influxdb(influx_db):
    """The schema's standing-alarm query on the real InfluxDB: one alarm raised 8 h before the end
    and acknowledged, still standing; one raised and cleared; one shelved with its expiry."""
    end = 1.7e9 + 9 * 3600
    pts = [*alarm_state_points("CELL1.TEMP.HI", "cell1", "unacknowledged-active", 3, end - 8 * 3600, first=True),
           *alarm_state_points("CELL1.TEMP.HI", "cell1", "acknowledged-active", 3, end - 7 * 3600, "alice"),
           *alarm_state_points("CELL2.TEMP.HI", "cell2", "unacknowledged-active", 3, end - 3600, first=True),
           *alarm_state_points("CELL2.TEMP.HI", "cell2", "normal", 3, end - 1800),
           *alarm_state_points("CELL1.TEMP.HH", "cell1", "shelved", 1, end - 600, "bob", end + 3000, first=True)]
    influx_db.write_batch(pts)
    res = influx_db.query("SELECT last(\"value\") AS state, \"text\" FROM \"alarm\" WHERE \"tag\" =~ /\\.STATE$/ "
                          f"AND time <= {int(end * 1e9)} GROUP BY \"tag\"")[0]
    last = {s["tags"]["tag"]: (s["values"][0][1], json.loads(s["values"][0][2])) for s in res["series"]}
    standing = {tag: info for tag, (code, info) in last.items() if 1 <= code <= 5}
    assert set(standing) == {"CELL1.TEMP.HI.STATE", "CELL1.TEMP.HH.STATE"}
    assert standing["CELL1.TEMP.HI.STATE"] == {"state": "acknowledged-active", "priority": 3, "by": "alice",
                                              "until": None}
    assert standing["CELL1.TEMP.HH.STATE"]["until"] == end + 3000
    prio = influx_db.query("SELECT last(\"value\") FROM \"alarm\" WHERE \"tag\" =~ /\\.PRIORITY$/ GROUP BY \"tag\"")[0]
    assert {s["tags"]["tag"]: s["values"][0][1] for s in prio["series"]} == {
        "CELL1.TEMP.HI.PRIORITY": 3, "CELL2.TEMP.HI.PRIORITY": 3, "CELL1.TEMP.HH.PRIORITY": 1}


def _pilot_run(tmp_path: Path, plc: str, config: Path, out: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_INFLUX", "PILOT_HISTORIAN"))}
    env.update({"PYTHONPATH": str(ROOT), "PILOT_ALARM_STATE": str(tmp_path / "state" / ALARM_STATE_FILE)})
    (tmp_path / "password").write_text(PLC_PASSWORD)
    return subprocess.Popen(
        [sys.executable, "-m", "pilot", "run", str(config), "--plc", plc, "--mode", "advisory", "--out", str(out),
         "--operator-endpoint", "", "--security-policy", "None", "--security-mode", "None", "--user", "ctl",
         "--password-file", str(tmp_path / "password"), "--allow-plaintext-password"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _until_state(path: Path, proc, pred) -> dict:
    """Poll the alarm state file until ``pred(state by id)`` holds (the run is still up)."""
    while True:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if path.exists():
            store = AlarmStore(path)
            saved = store.load()
            store.close()
            states = {a.alarm_id: a for a in saved.alarms} if saved else {}
            if pred(states):
                return states
        time.sleep(0.5)


def _sigterm(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_pilot_run_sigterm_and_start_again_keeps_the_alarm_unacknowledged(plc, tmp_path):
    text = (ROOT / "pilot_config" / "pilot_line.yaml").read_text()
    hot = "      - {tag: CELL1.TEMP, hh_eng: 640, h_eng: 600, l_eng: 500, ll_eng: 460, deadband_eng: 2}"
    assert hot in text
    (tmp_path / "hot.yaml").write_text(text.replace(hot, "      - {tag: CELL1.TEMP, h_eng: 100, deadband_eng: 2}"))
    state, hi = tmp_path / "state" / ALARM_STATE_FILE, "CELL1.TEMP.HI"
    first = _pilot_run(tmp_path, plc, tmp_path / "hot.yaml", tmp_path / "run1")
    raised = _until_state(state, first, lambda s: hi in s and s[hi].state == S.UNACK_ACTIVE)[hi]
    _sigterm(first)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    second = _pilot_run(tmp_path, plc, tmp_path / "hot.yaml", tmp_path / "run2")
    history = history_path(tmp_path / "run2")
    while not (history.exists() and read_points(history, "process", "CELL1.TEMP")):  # it has ticked
        assert second.poll() is None, second.stderr.read()[-3000:]
        time.sleep(0.5)
    _sigterm(second)
    store = AlarmStore(state)
    after = {a.alarm_id: a for a in store.load().alarms}[hi]
    raises = [e for e in store.journal() if e.alarm_id == hi and e.to_state == S.UNACK_ACTIVE]
    store.close()
    assert after.state == S.UNACK_ACTIVE and after.since == raised.since and len(raises) == 1
    assert [p.value for p in read_points(history_path(tmp_path / "run1"), "alarm", hi)] == [1.0]
    assert read_points(history, "alarm", hi) == []  # not raised a second time
