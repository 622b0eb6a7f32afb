"""`pilot historian feed`: a real closed-loop run of the twin into the real InfluxDB."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from controllers.loop import ControlLoop
from pilot.app import simulate
from pilot.cli import app
from pilot.historian.feed import KINDS, parse_malfunction, simulated_run
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot.historian.sqlite import history_path, read_points
from pilot_config import load_config

EPOCH = 1.8e9
HOURS = 2
runner = CliRunner()


def _alarm_ids(sink) -> set[str]:
    res = sink.query('SHOW TAG VALUES FROM "alarm" WITH KEY = "tag"')[0]
    tags = {v for s in res.get("series", []) for _, v in s["values"]}
    return {t.removesuffix(".STATE").removesuffix(".PRIORITY") for t in tags}


def _raised(sink) -> set[str]:
    res = sink.query('SELECT "value" FROM "alarm" WHERE "value" = 1 GROUP BY "tag"')[0]
    return {s["tags"]["tag"] for s in res.get("series", []) if not s["tags"]["tag"].endswith((".STATE", ".PRIORITY"))}


def _series(sink, measurement: str) -> dict[tuple[str, int], float]:
    res = sink.query(f'SELECT "value" FROM "{measurement}" GROUP BY "tag"', epoch="ms")[0]
    return {(s["tags"]["tag"], ts): float(v) for s in res.get("series", []) for ts, v in s["values"]
            if not s["tags"]["tag"].endswith(".SOLVE_MS")}


def test_feed_with_malfunction_records_only_configured_alarms(influx, influx_db, tmp_path, monkeypatch):
    monkeypatch.setenv("PILOT_INFLUX_URL", influx)
    monkeypatch.setenv("PILOT_INFLUX_DATABASE", influx_db.settings.database)
    monkeypatch.setenv("PILOT_HISTORIAN_SPOOL", str(tmp_path / "spool.sqlite"))
    r = runner.invoke(app, ["historian", "feed", "--hours", str(HOURS),
                            "--malfunction", "heater_failure@cell1:0.8:10min"])
    assert r.exit_code == 0, r.output
    assert "points recorded to" in r.output
    configured = {d.alarm_id for d in ControlLoop(load_config()).alarms.defs}
    recorded = _alarm_ids(influx_db)
    assert recorded and recorded <= configured, recorded - configured
    assert "CELL1.TEMP.LO" in _raised(influx_db)
    assert not {a for a in recorded if a.startswith("CELL2.")}  # the fault is on cell 1 only
    for m in ("process", "estimate", "decision", "kpi"):
        assert _series(influx_db, m), m


def test_nominal_feed_is_the_closed_loop_of_pilot_simulate(influx_db, tmp_path):
    config = load_config()
    rec = Recorder(Influx1Sink(url=influx_db.settings.url, database=influx_db.settings.database)).start()
    for points in simulated_run(config, HOURS * 3600, epoch_s=EPOCH, seed=0):
        rec.record_many(points)
    assert rec.drain(60)
    rec.close()
    assert _raised(influx_db) == set() and _alarm_ids(influx_db) == set()  # a normal run raises nothing
    run = simulate(config, HOURS * 3600, tmp_path / "sim", seed=0, make_plots=False, control="auto")
    assert run.summary["control"]["alarms_raised"] == 0
    stored = history_path(run.out_dir)
    for m in ("estimate", "decision"):
        want = {(p.tag, round((p.time_s + EPOCH) * 1000)): p.value for p in read_points(stored, m)
                if not p.tag.endswith(".SOLVE_MS")}
        got = _series(influx_db, m)
        assert len(want) > 1000
        assert got == want, m
    cascade = [v for (tag, _), v in _series(influx_db, "estimate").items() if tag == "SX.FEED.DY_TB.EST"]
    assert cascade and len(set(cascade)) > 10  # estimates move with the plant: not a constant stand-in


def test_feed_wrong_malfunction_kind_is_one_line_listing_the_kinds(tmp_path):
    r = runner.invoke(app, ["historian", "feed", "--hours", "0.1", "--dir", str(tmp_path),
                            "--malfunction", "meteor_strike:1"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "meteor_strike" in lines[0]
    assert all(k in lines[0] for k in KINDS)
    assert not list(tmp_path.iterdir())  # nothing recorded


def test_parse_malfunction_defaults_and_errors():
    m = parse_malfunction("pump_trip")
    assert (m.kind, m.target, m.severity, m.onset_s) == ("pump_trip", "SX.ORG.FLOW_SP", 0.7, 600.0)
    m = parse_malfunction("drift@CELL2.TEMP:-30:1h")
    assert (m.kind, m.target, m.severity, m.onset_s) == ("drift", "CELL2.TEMP", -30.0, 3600.0)
    for bad in ("heater_failure:2", "heater_failure:0.5:soon", "drift:1:2:3"):
        with pytest.raises(ValueError, match="KIND"):
            parse_malfunction(bad)
