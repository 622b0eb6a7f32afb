"""``pilot replay``: a recorded closed-loop window through the estimators and MPCs again.

One window is recorded with ``pilot simulate --control auto`` (30 plant-minutes, every loop in
auto, 60 s ticks), another live: ``pilot run --mode auto`` (a subprocess, its embedded history)
against ``pilot plc-sim`` (a subprocess at 30× real time) for 10 plant-minutes, logged in as an
operator (so the PLC denies the carousel's breakthrough limit, an engineer's tag). Replayed with
the same config each repeats every recorded proposal within the solver's tolerance (OSQP, eps
1e-4); with a changed MPC weight the proposals it changes differ by far more than that, and the
difference is in the replay's record. Both are also read back from the real InfluxDB.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opcua_server.node_interop import free_port, wait_port
from pilot.cli import app
from pilot.historian.sqlite import read_points, read_series
from pilot.live_support import late_text
from pilot.replay_record import RecordedSnapshots, read_influx, read_sqlite
from twin.signals import Point, Quality

runner = CliRunner()
UNTIL_S = 1800.0
ROOT = Path(__file__).resolve().parent.parent
LIVE_S, LIVE_SPEED = 600.0, 30.0
PASSWORD = "ctl-operator-secret"


def tolerance(value: float) -> float:
    """Ten times OSQP's eps_abs = eps_rel = 1e-4, on the setpoint's own scale."""
    return 1e-3 * max(1.0, abs(value))


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run = tmp_path_factory.mktemp("recorded")
    invoke("simulate", "--until", "30min", "--control", "auto", "--out", run, "-q", "--no-plots")
    return run


def replayed(run, out, *extra):
    res = invoke("replay", run, "--out", out, *extra)
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "proposals.csv") as f:
        rows = list(csv.DictReader(f))
    return res.output, summary, rows


def test_the_loop_records_its_modes_and_proposals(recorded):
    db = recorded / "history.sqlite"
    for loop in ("cell1", "cell2", "cascade", "carousel"):
        mode = read_series(db, f"LOOP.{loop}.MODE", "decision")
        assert len(mode.value) == UNTIL_S / 60 and set(mode.value) == {2.0}  # auto at every tick
    assert len(read_series(db, "CELL1.SALT_FEED_SP.PROPOSED").value) == UNTIL_S / 60


def test_same_config_repeats_the_recorded_proposals(recorded, tmp_path):
    output, summary, rows = replayed(recorded, tmp_path / "same")
    assert summary["ticks"] == summary["recorded_ticks"] == UNTIL_S / 60
    diffs = summary["differences"]
    assert {"CELL1.SALT_FEED_SP", "CELL2.HEATER_SP", "SX.ORG.FLOW_SP", "ADS.FEED.FLOW_SP"} <= set(diffs)
    for tag, d in diffs.items():
        assert d["ticks"] >= UNTIL_S / 60 - 1, tag  # (the carousel's first decision comes a tick later)
        assert d["max_abs"] <= tolerance(d["recorded"]), (tag, d)
    # it proposes at exactly the ticks where the recorded loop did
    assert [r for r in rows if (r["recorded"] == "nan") != (r["replayed"] == "nan")] == []
    # not a trivial match: the cell proposals move by far more than the tolerance over the window
    salt = [float(r["recorded"]) for r in rows if r["tag"] == "CELL1.SALT_FEED_SP"]
    assert max(salt) - min(salt) > 100 * tolerance(max(salt))
    assert summary["held_mismatches"] == []
    assert summary["alarms_raised"]["replay"] == summary["alarms_raised"]["recorded"]
    assert max(summary["estimates_max_abs_difference"].values()) < 1e-3
    assert summary["nis"]["CELL1.TEMP"]["n"] == UNTIL_S / 60 and summary["nis"]["SX.RAFF.Dy"]["n"] >= 2
    assert (tmp_path / "same" / "replay.png").stat().st_size > 10_000
    assert "CELL1.SALT_FEED_SP" in output and "MPC holds that differ: 0" in output


def test_changed_weight_shows_a_recorded_difference(recorded, tmp_path):
    out = tmp_path / "weight"
    _, summary, rows = replayed(recorded, out, "--set", "mpc.cell.salt_weight=4", "--no-plots")
    diffs = summary["differences"]
    for tag in ("CELL1.SALT_FEED_SP", "CELL2.SALT_FEED_SP"):  # the weight's own setpoints move
        assert diffs[tag]["max_abs"] > 100 * tolerance(diffs[tag]["recorded"]), (tag, diffs[tag])
    for tag in ("SX.ORG.FLOW_SP", "SX.SCRUB.FLOW_SP", "ADS.FEED.FLOW_SP"):  # other MPCs: unchanged
        assert diffs[tag]["max_abs"] <= tolerance(diffs[tag]["recorded"]), (tag, diffs[tag])
    # the difference is recorded: every tick's row in proposals.csv and the replay's own history
    salt = {float(r["time_s"]): r for r in rows if r["tag"] == "CELL1.SALT_FEED_SP"}
    worst = salt[diffs["CELL1.SALT_FEED_SP"]["at_s"]]
    assert float(worst["difference"]) == pytest.approx(float(worst["replayed"]) - float(worst["recorded"]))
    assert abs(float(worst["difference"])) == pytest.approx(diffs["CELL1.SALT_FEED_SP"]["max_abs"])
    mine = read_series(out / "history.sqlite", "CELL1.SALT_FEED_SP.PROPOSED")
    assert dict(zip(mine.time_s, mine.value)) == pytest.approx({t: float(r["replayed"]) for t, r in salt.items()})


def test_replay_reads_the_window_from_influxdb(recorded, influx_db, tmp_path):
    points = read_points(recorded / "history.sqlite")
    influx_db.write_batch(points)
    s = influx_db.settings
    _, summary, _ = replayed(s.url, tmp_path / "influx", "--database", s.database, "--from", "60",
                             "--to", "30min", "--no-plots")
    assert summary["source"] == f"{s.url} database {s.database}"
    assert summary["ticks"] == summary["recorded_ticks"] == UNTIL_S / 60
    assert len(summary["differences"]) == 10
    for tag, d in summary["differences"].items():
        assert d["ticks"] >= UNTIL_S / 60 - 1 and d["max_abs"] <= tolerance(d["recorded"]), (tag, d)


def test_a_delayed_assay_is_seen_when_it_was_reported(recorded):
    """An analyser's sample is in the snapshot from its source time + the reporting delay on the
    step grid, never before; the start-up value is seen at once."""
    from pilot.replay_record import report_delays
    from pilot_config import load_config

    delays = report_delays(load_config())
    assert delays["SX.RAFF.Dy"] == 600.0 and "SX.ORG.FLOW" not in delays  # XRF: 600 s; a sensor: none
    pts = [Point("process", "SX.RAFF.Dy", "extraction", v, t, "good") for t, v in ((0.0, 1.0), (600.0, 2.0))]
    snaps = RecordedSnapshots(pts, delays)
    assert snaps.at(0.0)["SX.RAFF.Dy"].value == 1.0
    assert snaps.at(1199.0)["SX.RAFF.Dy"].value == 1.0
    got = snaps.at(1200.0)["SX.RAFF.Dy"]
    assert (got.value, got.source_time, got.quality) == (2.0, 600.0, Quality.GOOD)
    # the recorded window holds delayed assays: each appears in a snapshot only after its delay
    raff = [p for p in read_sqlite(recorded / "history.sqlite", 0, UNTIL_S, ("process",)) if p.tag == "SX.RAFF.Dy"]
    snaps = RecordedSnapshots(raff, delays)
    for p in raff[1:]:
        assert snaps.at(p.time_s)["SX.RAFF.Dy"].source_time < p.time_s
        assert math.isclose(snaps.at(p.time_s + delays["SX.RAFF.Dy"])["SX.RAFF.Dy"].source_time, p.time_s)


def test_after_an_outage_the_plc_value_is_seen_again():
    """A live record marks a PLC link's loss and return with a Bad point of every tag; after the
    return the PLC holds its last good value (not recorded again): the snapshot shows it."""
    bad = 0x80050000  # BadCommunicationError
    pts = [Point("process", "CELL1.SALT_FEED", "cell1", 250.0, 0.0, "good"),
           Point("process", "CELL1.SALT_FEED", "cell1", math.nan, 30.0, "bad", status=bad),
           Point("process", "CELL1.SALT_FEED", "cell1", math.nan, 90.0, "bad", status=bad),
           Point("process", "CELL1.SALT_FEED", "cell1", 260.0, 180.0, "good")]
    snaps = RecordedSnapshots(pts, {})
    assert [snaps.at(t)["CELL1.SALT_FEED"].quality for t in (0.0, 60.0)] == [Quality.GOOD, Quality.BAD]
    back = snaps.at(120.0)["CELL1.SALT_FEED"]
    assert (back.value, back.source_time, back.quality) == (250.0, 0.0, Quality.GOOD)
    assert snaps.at(180.0)["CELL1.SALT_FEED"].value == 260.0


@pytest.mark.parametrize("args, says", [
    (["--set", "mpc.cascade.flow_weigth=1"], "--set mpc.cascade.flow_weigth: no such field; allowed:"),
    (["--set", "mpc.cell.salt_weight=-1"], "--set mpc.cell.salt_weight = -1:"),
    (["--weight", "cascade.nope=1"], "mpc.cascade.nope: no such field; allowed: deadline_s,"),
    (["--set", "extraction.nope=1"], "no field 'nope' in extraction; allowed:"),
    (["--mode", "cell9=auto"], "--mode cell9: no such loop"),
    (["--mode", "cell1=fast"], "use LOOP=MODE with MODE one of manual, advisory, auto"),
    (["--from", "yesterday"], "--from: cannot read duration"),
])
def test_operator_errors_are_one_line(recorded, tmp_path, args, says):
    res = runner.invoke(app, ["replay", str(recorded), "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split()) and "Traceback" not in res.output


def test_a_source_without_history_names_what_is_allowed(tmp_path):
    res = runner.invoke(app, ["replay", str(tmp_path), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "no recorded history there (a run folder, a history.sqlite or an InfluxDB URL)" in " ".join(res.output.split())


# -- a live record: `pilot run` against `pilot plc-sim` ------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The folder of a 10 plant-minute ``pilot run --mode auto`` against a simulated PLC."""
    tmp = tmp_path_factory.mktemp("live")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOT_OPCUA_USERS": f"ctl:operator:{PASSWORD}"}
    env.pop("PILOT_INFLUX_URL", None)  # the embedded history in --out
    (tmp / "password").write_text(PASSWORD)
    with open(tmp / "plc.log", "wb") as log:
        plc = subprocess.Popen([sys.executable, "-m", "pilot", "plc-sim", "--endpoint", f"opc.tcp://127.0.0.1:{port}",
                                "--speed", str(LIVE_SPEED)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60)
        run = subprocess.run(
            [sys.executable, "-m", "pilot", "run", "--plc", f"opc.tcp://127.0.0.1:{port}", "--mode", "auto",
             "--duration", "10min", "--out", str(tmp / "run"), "--operator-endpoint", "", "--security-policy", "None",
             "--security-mode", "None", "--user", "ctl", "--password-file", str(tmp / "password"),
             "--allow-plaintext-password"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        plc.kill()
        plc.wait(10)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp / "run"


def live_ticks(run) -> list[float]:
    return sorted(float(t) for t in set(read_series(run / "history.sqlite", "LOOP.cell1.MODE", "decision").time_s))


@pytest.mark.slow
def test_a_live_record_holds_what_a_replay_needs(live):
    db = live / "history.sqlite"
    ticks = live_ticks(live)
    assert len(ticks) >= LIVE_S / 60 - 1
    for loop in ("cell1", "cell2", "cascade", "carousel"):  # the modes, at every tick
        mode = read_series(db, f"LOOP.{loop}.MODE", "decision")
        assert list(mode.time_s) == ticks and set(mode.value) == {2.0}
    applied = read_series(db, "CELL1.SALT_FEED_SP.APPLIED", "decision")
    assert list(applied.time_s) == ticks  # what the plant took, in full precision
    refused = [p for p in read_points(db) if p.tag == "ADS.BT_LIMIT_SP.REFUSED"]
    assert len(refused) == 1 and "BadUserAccessDenied" in refused[0].text  # the PLC's reason
    first = read_sqlite(db, 0, ticks[0], ("process",))  # the loop's inputs at its first tick are there
    assert {"CELL1.SALT_FEED_SP", "CELL1.CURRENT_SP", "SX.ORG.FLOW_SP", "CELL1.TEMP"} <= {p.tag for p in first}


@pytest.mark.slow
def test_a_live_record_replays_to_the_recorded_proposals(live, tmp_path):
    output, summary, rows = replayed(live, tmp_path / "same")
    ticks = live_ticks(live)
    assert summary["ticks"] == summary["recorded_ticks"] == len(ticks)
    diffs = summary["differences"]
    assert {"CELL1.SALT_FEED_SP", "CELL2.HEATER_SP", "CELL1.CURRENT_SP", "SX.ORG.FLOW_SP", "ADS.FEED.FLOW_SP"} <= set(diffs)
    for tag, d in diffs.items():
        assert d["ticks"] >= len(ticks) - 1, tag  # (the carousel decides from the second tick live)
        assert d["max_abs"] <= tolerance(d["recorded"]), (tag, d)
    salt = [float(r["recorded"]) for r in rows if r["tag"] == "CELL1.SALT_FEED_SP"]
    assert max(salt) - min(salt) > 5 * tolerance(max(salt))  # not a trivial match: it moves tick by tick
    # live, the carousel's first decision is still pending in its worker at the first tick
    assert summary["held_mismatches"] == [{"t_s": ticks[0], "unit": "adsorption", "held_in_replay": False}]
    # the PLC denied the breakthrough limit: the replay denies it too and raises the same alarm
    assert summary["alarms_raised"]["replay"] == summary["alarms_raised"]["recorded"]
    assert "ADS.BT_LIMIT_SP.DENIED" in {a["id"] for a in summary["alarms_raised"]["replay"]}
    assert max(summary["estimates_max_abs_difference"].values()) < 1e-3
    assert summary["start"]["missing"] == []
    assert "CELL1.SALT_FEED_SP" in output and "MPC holds that differ: 1" in output


@pytest.mark.slow
def test_a_live_record_with_a_changed_weight_differs_in_its_record(live, tmp_path):
    out = tmp_path / "weight"
    # the cells' move weights 100x less (the salt weight barely acts over 10 minutes near design)
    _, summary, rows = replayed(live, out, "--set", "mpc.cell.move_weights=[1.0e-5,1.0e-5,1.0e-4]", "--no-plots")
    diffs = summary["differences"]
    for tag in ("CELL1.SALT_FEED_SP", "CELL2.SALT_FEED_SP"):
        assert diffs[tag]["max_abs"] > 10 * tolerance(diffs[tag]["recorded"]), (tag, diffs[tag])
    for tag in ("SX.ORG.FLOW_SP", "SX.SCRUB.FLOW_SP", "ADS.FEED.FLOW_SP"):
        assert diffs[tag]["max_abs"] <= tolerance(diffs[tag]["recorded"]), (tag, diffs[tag])
    salt = {float(r["time_s"]): r for r in rows if r["tag"] == "CELL1.SALT_FEED_SP"}
    worst = salt[round(diffs["CELL1.SALT_FEED_SP"]["at_s"], 3)]
    assert abs(float(worst["difference"])) == pytest.approx(diffs["CELL1.SALT_FEED_SP"]["max_abs"])
    mine = read_series(out / "history.sqlite", "CELL1.SALT_FEED_SP.PROPOSED")
    assert list(mine.value) == pytest.approx([float(salt[t]["replayed"]) for t in sorted(salt)])


@pytest.mark.slow
def test_a_live_record_replays_the_same_from_influxdb(live, influx_db, tmp_path):
    """Read from InfluxDB the replay is the same; a window's reader also takes every process tag's
    last value before the window (a setpoint nobody wrote since start-up is recorded once), the
    same from InfluxDB (InfluxQL ``last``) as from the store."""
    influx_db.write_batch(read_points(live / "history.sqlite"))
    ticks = live_ticks(live)
    t0 = ticks[3] - 1.0  # (not at a sample's time: InfluxDB keeps milliseconds)
    held = {(p.tag, p.quality, round(p.time_s, 3), p.value)
            for p in read_sqlite(live / "history.sqlite", t0, ticks[-1], ("process",), held=True) if p.time_s < t0}
    assert ("CELL1.TAP_SP", "good") in {k[:2] for k in held} and len({k[0] for k in held}) >= 60
    from_influx = {(p.tag, p.quality, round(p.time_s, 3), p.value)
                   for p in read_influx(influx_db, t0, ticks[-1], ("process",), held=True) if p.time_s < t0}
    assert from_influx == held
    s = influx_db.settings
    _, summary, _ = replayed(s.url, tmp_path / "influx", "--database", s.database, "--from", repr(ticks[0] - 1.0),
                             "--to", repr(ticks[-1] + 1.0), "--no-plots")
    assert summary["ticks"] == summary["recorded_ticks"] == len(ticks)
    assert summary["alarms_raised"]["replay"] == summary["alarms_raised"]["recorded"]
    for tag, d in summary["differences"].items():
        assert d["max_abs"] <= tolerance(d["recorded"]), (tag, d)


def test_a_late_sample_is_seen_after_the_tick_it_missed():
    """A sample that reached the loop after the tick at 60 s, though stamped 60 s, is in the
    snapshots of the ticks after it only."""
    pts = [Point("process", "CELL1.SALT_FEED_SP", "cell1", 250.0, 0.0, "good"),
           Point("process", "CELL1.SALT_FEED_SP", "cell1", 260.0, 60.0, "good", text=late_text(60.0))]
    snaps = RecordedSnapshots(pts, {}, late_s=30.0)
    assert snaps.at(60.0)["CELL1.SALT_FEED_SP"].value == 250.0
    assert snaps.at(120.0)["CELL1.SALT_FEED_SP"].value == 260.0
