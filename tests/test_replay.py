"""``pilot replay``: a recorded closed-loop window through the estimators and MPCs again.

One window is recorded with ``pilot simulate --control auto`` (30 plant-minutes, every loop in
auto, 60 s ticks). Replayed with the same config it repeats every recorded proposal within the
solver's tolerance (OSQP, eps 1e-4); with a changed MPC weight the proposals it changes differ by
far more than that, and the difference is in the replay's record. One replay reads the window
back from the real InfluxDB.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from pilot.cli import app
from pilot.historian.sqlite import read_points, read_series
from pilot.replay import RecordedSnapshots, read_sqlite
from twin.signals import Point, Quality

runner = CliRunner()
UNTIL_S = 1800.0


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
    from pilot.replay import report_delays
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
