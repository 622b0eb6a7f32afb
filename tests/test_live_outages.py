"""``pilot run`` across PLC outages and restarts.

The pieces first (guard holds on a down link and on a denied write, bumpless restart from the
read-back, comm-loss and denied alarms, the line's clock re-based over a PLC clock step), then the
line: three simulated PLCs (``pilot plc-sim --plc NAME`` subprocesses), ``run_live`` in auto
recording into the real InfluxDB and SQLite; one PLC killed with SIGKILL mid-run and restarted
with its clock stepped back (a fresh simulator starts from the configured start)."""

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
import yaml

from controllers.guard import BAD_COMMUNICATION_ERROR, BAD_NOT_CONNECTED, Guard
from controllers.loop import ControlLoop
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import free_port, wait_port
from pilot.cli_run import parse_plcs
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot.historian.sqlite import SqliteSink, read_points
from pilot.live import run_live
from pilot.live_support import LineClock
from pilot_config import load_config
from pilot_config.control import GuardConfig
from twin.signals import Quality, Sample

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def line():
    return load_config()


def cell_guard(line) -> Guard:
    cfg = GuardConfig(control_period_s=10.0, loops=[
        {"name": "cell1", "writes": ["CELL1.CURRENT_SP", "CELL1.TEMP_SP"], "inputs": ["CELL1.TEMP"], "mode": "auto"}])
    return Guard(cfg, line.tags, target="live", session="live")


def snap(t, current=150.0, current_q=Quality.GOOD, status=0):
    return {"CELL1.CURRENT_SP": Sample(current, t, current_q, status), "CELL1.TEMP_SP": Sample(550.0, t),
            "CELL1.TEMP": Sample(550.0, t)}


def test_guard_holds_a_tag_whose_link_is_down_and_a_denied_tag_until_a_mode_change(line):
    g = cell_guard(line)
    r = g.step({"CELL1.CURRENT_SP": 155.0, "CELL1.TEMP_SP": 560.0},
               snap(10, math.nan, Quality.BAD, BAD_NOT_CONNECTED), 10.0)
    assert r.held == {"CELL1.CURRENT_SP": "hold: PLC link down (BadNotConnected)"}
    assert r.to_write == {"CELL1.TEMP_SP": 560.0}
    r = g.step({"CELL1.CURRENT_SP": 155.0}, snap(20, math.nan, Quality.BAD, BAD_COMMUNICATION_ERROR), 20.0)
    assert r.held["CELL1.CURRENT_SP"] == "hold: PLC link down (BadCommunicationError)"
    assert g.deny("CELL1.TEMP_SP", "refused by the PLC: BadUserAccessDenied")
    assert not g.deny("CELL1.TEMP_SP", "again")  # said once
    r = g.step({"CELL1.TEMP_SP": 570.0}, snap(30), 30.0)
    assert r.to_write == {} and r.held == {"CELL1.TEMP_SP": "denied by the PLC: refused by the PLC: BadUserAccessDenied"}
    g.set_mode("cell1", "advisory")
    g.set_mode("cell1", "auto")  # someone intervened: proposed again
    assert g.step({"CELL1.TEMP_SP": 570.0}, snap(40), 40.0).to_write == {"CELL1.TEMP_SP": 570.0}


def test_guard_restart_moves_from_the_read_back_by_one_period_of_rate(line):
    g = cell_guard(line)  # CELL1.CURRENT_SP: 1 A/s, period 10 s
    assert g.step({"CELL1.CURRENT_SP": 155.0}, snap(10), 10.0).to_write["CELL1.CURRENT_SP"] == 155.0
    # PLC restarted at 0 A; 500 s later without a restart the old reference would allow 500 A from 155
    g.restart({"CELL1.CURRENT_SP": Sample(0.0, 500.0)})
    r = g.step({"CELL1.CURRENT_SP": 155.0}, snap(510, 0.0), 510.0)
    assert r.to_write["CELL1.CURRENT_SP"] == pytest.approx(10.0)  # 0 + 1 A/s x 10 s
    g.restart({"CELL1.CURRENT_SP": Sample(math.nan, 515.0, Quality.BAD, BAD_NOT_CONNECTED)})
    r = g.step({"CELL1.CURRENT_SP": 155.0}, snap(520, math.nan, Quality.BAD), 520.0)
    assert "CELL1.CURRENT_SP" in r.held  # no reference from a BAD read-back


def test_comm_loss_and_denied_alarms_of_the_loop(line):
    loop = ControlLoop(line, target="live", session="live", plcs={"adsorption": "adsorption", "sx-1": "extraction"})
    ids = {d.alarm_id: d for d in loop.alarms.defs}
    assert ids["PLC.sx-1.COMM"].priority == 1 and ids["PLC.sx-1.COMM"].tag == "PLC.sx-1.LINK"
    assert "ADS.BT_LIMIT_SP.DENIED" in ids and "PLC.electrolysis.COMM" not in ids
    bad = {t.name: Sample(math.nan, 100.0, Quality.BAD, BAD_COMMUNICATION_ERROR) for t in line.tags}
    entries, points = loop.link_alarms(bad, 100.0, {"adsorption": True, "sx-1": False})
    assert [(e.alarm_id, e.to_state.value, e.value) for e in entries] == [
        ("PLC.sx-1.COMM", "unacknowledged-active", 0.0)]  # no BADPV flood: the comm alarm stands for them
    assert [(p.measurement, p.tag, p.value) for p in points] == [
        ("alarm", "PLC.sx-1.COMM", 1.0), ("alarm", "PLC.sx-1.COMM.STATE", 1.0), ("alarm", "PLC.sx-1.COMM.PRIORITY", 1.0)]
    loop.denied("ADS.BT_LIMIT_SP", "refused by the PLC: BadUserAccessDenied")
    entries, _ = loop.link_alarms(bad, 110.0, {"adsorption": True, "sx-1": True})
    assert {(e.alarm_id, e.to_state.value) for e in entries} == {
        ("PLC.sx-1.COMM", "returned-to-normal-unacknowledged"), ("ADS.BT_LIMIT_SP.DENIED", "unacknowledged-active")}
    assert [e.alarm_id for e in loop.alarms.journal].count("ADS.BT_LIMIT_SP.DENIED") == 1


def test_plc_option_forms():
    assert parse_plcs([]) is None and parse_plcs([""]) is None
    assert parse_plcs(["opc.tcp://h:4840"]) == "opc.tcp://h:4840"
    assert parse_plcs(["sx=opc.tcp://h:1", "ads=opc.tcp://h:2"]) == {"sx": "opc.tcp://h:1", "ads": "opc.tcp://h:2"}
    for bad, why in ((["opc.tcp://h:1", "opc.tcp://h:2"], "not several URLs"),
                     (["opc.tcp://h:1", "sx=opc.tcp://h:2"], "not both"), (["a=opc.tcp://h:1", "a=opc.tcp://h:2"], "twice")):
        with pytest.raises(ValueError, match=why):
            parse_plcs(bad)


def test_line_clock_rebases_a_plc_clock_that_stepped_back_on_its_return():
    clock = LineClock(["a", "b"], tolerance_s=60.0)
    t, steps = clock.update({"a": 1000.0, "b": 1002.0}, {"a", "b"}, wall=0.0)
    assert t == 1002.0 and not steps
    t, _ = clock.update({"a": 1100.0}, {"a"}, wall=10.0)  # b down
    clock.reconnected("b")
    t, steps = clock.update({"a": 1200.0, "b": 50.0}, {"a", "b"}, wall=20.0)  # b restarted from t = 0
    assert t == 1200.0 and [(s.plc, round(s.step_s)) for s in steps] == [("b", -1150)]
    assert clock.map_sample(Sample(60.0, 60.0), "b").source_time == pytest.approx(1210.0)
    clock.reconnected("a")  # a blip without a step: no re-base
    assert clock.update({"a": 1300.0, "b": 140.0}, {"a", "b"}, wall=30.0)[1] == []


def test_line_clock_of_a_single_plc_goes_on_at_the_measured_rate():
    clock = LineClock(["plc"], tolerance_s=60.0)
    for wall in range(0, 11):  # 10 plant s per wall s
        clock.update({"plc": 1e6 + 10.0 * wall}, {"plc"}, wall=float(wall))
    clock.reconnected("plc")  # down 20 wall s, back from its start
    t, steps = clock.update({"plc": 1e6}, {"plc"}, wall=30.0)
    assert t == pytest.approx(1e6 + 300.0) and steps[0].step_s == pytest.approx(-300.0)
    t, steps = clock.update({"plc": 5.0}, {"plc"}, wall=31.0)  # stepped back while up
    assert steps and t == pytest.approx(1e6 + 310.0)


# -- the line: three simulated PLCs, one killed and restarted ------------------------------------
SPEED = 10.0  # a 60 s control period every 6 wall seconds
PASSWORD = "ctl-operator-secret"  # an operator: ADS.BT_LIMIT_SP (engineer-only) is denied
SECURITY = {"security": ClientSecurity("None", "None", username="ctl", password=PASSWORD,
                                       allow_plaintext_password=True)}
KILLED = "extraction"


def three_plcs(tmp_path: Path) -> Path:
    """The shipped line with three PLCs on free loopback ports: adsorption, extraction and
    electrolysis (which also serves every unit no other claims)."""
    doc = yaml.safe_load((ROOT / "pilot_config" / "pilot_line.yaml").read_text())
    ports = [free_port() for _ in range(3)]
    doc["opcua"]["plcs"] = [
        {"name": "adsorption", "endpoint": f"opc.tcp://127.0.0.1:{ports[0]}", "namespace_uri": "urn:t:ads",
         "units": ["adsorption", "eluate_tank"]},
        {"name": "extraction", "endpoint": f"opc.tcp://127.0.0.1:{ports[1]}", "namespace_uri": "urn:t:sx",
         "units": ["extraction"]},
        {"name": "electrolysis", "endpoint": f"opc.tcp://127.0.0.1:{ports[2]}", "namespace_uri": "urn:t:el",
         "units": []}]
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_sim(config_path: Path, plc: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"ctl:operator:{PASSWORD}"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pilot", "plc-sim", str(config_path), "--plc", plc,
                                 "--speed", str(SPEED)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


class Both:
    """One recorder front for two stores (InfluxDB and SQLite), noting when link points pass."""

    def __init__(self, *recorders: Recorder):
        self.recorders = recorders
        self.link_seen: list[tuple[float, str, float]] = []  # (wall, tag, value)

    def record_many(self, points) -> None:
        points = list(points)
        self.link_seen += [(time.monotonic(), p.tag, p.value) for p in points if p.tag.endswith(".LINK")]
        for r in self.recorders:
            r.record_many(points)

    def commit(self) -> None:
        for r in self.recorders:
            r.commit()

    def counters(self) -> dict:
        return self.recorders[0].counters()


def bad_tags_in_influx(sink: Influx1Sink) -> dict[str, list[int]]:
    res = sink.query('SELECT "status" FROM "process" WHERE "quality" = \'bad\' GROUP BY "tag"')[0]
    return {s["tags"]["tag"]: [int(v) for _, v in s["values"]] for s in res.get("series", [])}


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)

async def live_with(scenario, stop: asyncio.Event, ticks: list, config, plcs, **options):
    """``run_live`` in auto (every tick appended to ``ticks`` as (monotonic, tick, result)) with
    ``scenario()`` beside it; the scenario ends the run by setting ``stop``, and so does its failure
    (its exception is raised after the run)."""
    async def guarded():
        try:
            await scenario()
        finally:
            stop.set()

    task = asyncio.create_task(guarded())
    res = await run_live(config, plcs, mode="auto", operator_endpoint=None, bridge_options=SECURITY, stop=stop,
                         on_tick=lambda tk, r: ticks.append((time.monotonic(), tk, r)), **options)
    await task
    return res



@pytest.mark.slow
def test_one_plc_killed_and_restarted_with_its_clock_stepped_back(tmp_path, influx_db, caplog):
    caplog.set_level(logging.INFO, logger="pilot.live")
    cfg_path = three_plcs(tmp_path)
    config = load_config(cfg_path)
    sx_tags = [t.name for t in config.plc_tags()[KILLED]]
    period = config.control.guard.control_period_s
    sims = {p: start_sim(cfg_path, p, tmp_path / f"{p}.log") for p in ("adsorption", "extraction", "electrolysis")}
    influx_rec = Recorder(Influx1Sink(url=influx_db.settings.url, database=influx_db.settings.database),
                          flush_interval_s=0.2).start()
    sqlite_rec = Recorder(SqliteSink(tmp_path / "history.sqlite"), flush_interval_s=0.2).start()
    rec = Both(influx_rec, sqlite_rec)
    ticks: list = []  # (wall, tick, result)
    marks: dict = {}
    try:
        for p in config.opcua.resolved_plcs():
            wait_port(int(p.endpoint.rsplit(":", 1)[1]), 60)
        stop = asyncio.Event()

        async def scenario():
            await until(lambda: len(ticks) >= 3, 60, "three ticks with every PLC up")
            sims[KILLED].send_signal(signal.SIGKILL)
            sims[KILLED].wait(10)
            marks["killed"] = (time.monotonic(), len(ticks))
            await until(lambda: any("PLC.extraction.COMM" in [e.alarm_id for e in tk.raised] for _, tk, _ in ticks),
                        3 * period / SPEED + 5, "the comm-loss alarm")
            marks["alarm"] = len(ticks)
            await until(lambda: len(bad_tags_in_influx(influx_db)) >= len(sx_tags), 5, "Bad points in InfluxDB")
            marks["bad_influx"] = len(ticks)
            await until(lambda: len(ticks) >= marks["alarm"] + 1, 2 * period / SPEED + 5, "a tick while down")
            sims[KILLED] = start_sim(cfg_path, KILLED, tmp_path / "extraction.log")
            wait_port(int(config.opcua.resolved_plcs()[1].endpoint.rsplit(":", 1)[1]), 60)
            marks["listening"] = time.monotonic()
            await until(lambda: ("PLC.extraction.LINK", 1.0) in [(t, v) for w, t, v in rec.link_seen
                                                                  if w > marks["listening"] - 1], 10, "link up")
            marks["back"] = next(w for w, t, v in rec.link_seen if t == "PLC.extraction.LINK" and v == 1.0
                                 and w > marks["listening"] - 1)
            marks["back_ticks"] = len(ticks)
            await until(lambda: any("SX.ORG.FLOW_SP" in tk.writes for w, tk, _ in ticks if w > marks["back"]),
                        2 * period / SPEED + 5, "the cascade writing again")
            await until(lambda: len(ticks) >= marks["back_ticks"] + 2, 3 * period / SPEED + 5, "two more ticks")
            stop.set()

        res = asyncio.run(live_with(scenario, stop, ticks, config, None, out_dir=tmp_path, recorder=rec,
                                    status_every_s=3.0))
    finally:
        for proc in sims.values():
            proc.kill()
            proc.wait(10)
        influx_rec.close()
        sqlite_rec.close()
    k = marks["killed"][1]
    # raised within two control periods of the loss, and Bad in InfluxDB by then
    assert marks["alarm"] - k <= 2 and marks["bad_influx"] - k <= 2, marks
    # the other loops kept ticking and writing while extraction was down; its loop held
    down = [(tk, r) for w, tk, r in ticks[k:marks["back_ticks"]]]
    assert len(down) >= 2
    for tk, r in down:
        assert {"ADS.FEED.FLOW_SP", "CELL1.CURRENT_SP", "CELL2.SALT_FEED_SP"} <= set(r.accepted), tk.held
        assert "SX.ORG.FLOW_SP" not in tk.writes and "SX.ORG.FLOW_SP" in tk.held
    # every tag of the dead PLC: a Bad point at the start and at the end of the outage, in both stores
    in_influx = bad_tags_in_influx(influx_db)

    for tag in sx_tags:
        assert in_influx.get(tag, []).count(BAD_COMMUNICATION_ERROR) >= 2, tag  # (+ the PLC's own Bad ones)
        bad = [p for p in read_points(tmp_path / "history.sqlite", "process", tag) if p.quality == "bad"]
        assert [p.status for p in bad].count(BAD_COMMUNICATION_ERROR) >= 2, tag
    # back within 5 s of the server listening; first tick within one period; the clock step re-based
    assert marks["back"] - marks["listening"] < 5.0, marks
    first_after = next(w for w, tk, _ in ticks if w > marks["back"])
    assert first_after - marks["back"] <= period / SPEED + 1.0
    steps = res.plcs[KILLED]["clock_steps"]
    assert steps and steps[0]["step_s"] < -period, steps
    assert [tk.t for _, tk, _ in ticks] == sorted({tk.t for _, tk, _ in ticks})  # line time never went back
    # bumpless: the first write after the return moves SX.ORG.FLOW_SP at most one period of rate
    proc = read_points(tmp_path / "history.sqlite", "process", "SX.ORG.FLOW_SP")
    last_bad = max(i for i, p in enumerate(proc) if p.quality == "bad")
    read_back = proc[last_bad + 1].value
    first_write = next(tk.writes["SX.ORG.FLOW_SP"] for w, tk, _ in ticks if w > marks["back"]
                       and "SX.ORG.FLOW_SP" in tk.writes)
    assert abs(first_write - read_back) <= 0.01 * period + 1e-3, (first_write, read_back)
    # the engineer-only limit: proposed once, denied, held from then on, one alarm
    assert [tag for _, tag, _, _ in res.denied] == ["ADS.BT_LIMIT_SP"]
    assert [tag for _, tag, _, _ in res.refused].count("ADS.BT_LIMIT_SP") == 1
    assert all(tk.held.get("ADS.BT_LIMIT_SP", "").startswith("denied by the PLC") for _, tk, _ in ticks[-3:])
    raised = [e.alarm_id for _, tk, _ in ticks for e in tk.raised]
    assert raised.count("ADS.BT_LIMIT_SP.DENIED") == 1 and raised.count("PLC.extraction.COMM") == 1
    assert res.summary["denied_writes"][0]["tag"] == "ADS.BT_LIMIT_SP"
    assert res.plcs[KILLED]["outages"] >= 1 and res.plcs[KILLED]["reconnects"] >= 1
    # the console: status lines with each PLC's link, the clock step said once
    status = [r.getMessage() for r in caplog.records if r.getMessage().startswith("status ")]
    assert any("extraction DOWN" in m and "adsorption up" in m and "historian backlog" in m for m in status), status
    assert sum("clock stepped" in r.getMessage() for r in caplog.records) == 1


class Capture:
    """A recorder front that keeps every point with the wall time it was handed over."""

    def __init__(self):
        self.points: list[tuple[float, object]] = []

    def record_many(self, points) -> None:
        now = time.monotonic()
        self.points += [(now, p) for p in points]

    def commit(self) -> None:
        pass

    def find(self, tag: str, value: float, after: float = -math.inf) -> float | None:
        return next((w for w, p in self.points if p.tag == tag and p.value == value and w > after), None)


@pytest.mark.slow
def test_the_only_plc_killed_raises_its_alarm_and_the_loop_goes_on_across_its_clock_step(tmp_path):
    """The single-server form (one URL: every tag there): no tick while it is down, the comm-loss
    alarm raised all the same; back with its clock stepped back, the first tick within one period."""
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"ctl:operator:{PASSWORD}"}

    def sim():
        with open(tmp_path / "plc.log", "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "pilot", "plc-sim", "--endpoint", url, "--speed",
                                     str(SPEED)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    config, rec, ticks, marks = load_config(), Capture(), [], {}
    period = config.control.guard.control_period_s
    proc = sim()
    try:
        wait_port(port, 60)
        stop = asyncio.Event()

        async def scenario():
            nonlocal proc
            await until(lambda: len(ticks) >= 2, 60, "two ticks")
            proc.kill()
            proc.wait(10)
            marks["killed"] = time.monotonic()
            await until(lambda: rec.find("PLC.plc.COMM", 1.0) is not None, 10, "the comm-loss alarm")
            marks["ticks_down"] = len(ticks)
            proc = sim()
            wait_port(port, 60)
            marks["listening"] = time.monotonic()
            await until(lambda: rec.find("PLC.plc.LINK", 1.0, marks["listening"] - 1) is not None, 10, "link up")
            marks["back"] = rec.find("PLC.plc.LINK", 1.0, marks["listening"] - 1)
            await until(lambda: len(ticks) >= marks["ticks_down"] + 2, 3 * period / SPEED + 5, "two ticks after")
            stop.set()

        res = asyncio.run(live_with(scenario, stop, ticks, config, url, recorder=rec))
    finally:
        proc.kill()
        proc.wait(10)
    assert rec.find("PLC.plc.COMM", 1.0) - marks["killed"] < 5.0  # raised with no tick running
    assert marks["back"] - marks["listening"] < 5.0
    after = [(w, tk, r) for w, tk, r in ticks if w > marks["back"]]
    steps = res.plcs["plc"]["clock_steps"]
    assert steps and steps[0]["step_s"] < -period, steps
    # not 40 s late: the clock was re-based; the first tick within one period of line time of the
    # return (in wall time: the simulator's next 60 s scan at 10x, plus the tick)
    assert after[0][1].t - steps[0]["t"] <= period + 1e-6
    assert after[0][0] - marks["back"] <= period / SPEED + 2.5
    assert [tk.t for _, tk, _ in ticks] == sorted({tk.t for _, tk, _ in ticks})
    assert rec.find("PLC.plc.COMM", 0.0, marks["back"]) is not None  # returned to normal on the next tick
    # bumpless on the fresh PLC: CELL1.CURRENT_SP (1 A/s) moves at most one period from its read-back
    sp = [p for w, p in rec.points if p.tag == "CELL1.CURRENT_SP" and p.measurement == "process" and w > marks["back"]
          and p.quality == "good"]
    first = next(tk.writes["CELL1.CURRENT_SP"] for _, tk, _ in after if "CELL1.CURRENT_SP" in tk.writes)
    assert abs(first - sp[0].value) <= 1.0 * period + 1e-3, (first, sp[0].value)
