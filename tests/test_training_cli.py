"""`pilot train ...` end to end: list, run with a scripted trainee (report, session-tagged history),
snapshot and restore."""

from __future__ import annotations

import sqlite3

from typer.testing import CliRunner

from pilot.cli import app
from pilot.training.scenario import SCENARIO_DIR

runner = CliRunner()


def test_train_list():
    r = runner.invoke(app, ["train", "list"])
    assert r.exit_code == 0, r.output
    assert "ads-column-fouling" in r.output and "near_breakthrough" in r.output


def test_train_run_report_history_snapshot_restore(tmp_path):
    r = runner.invoke(app, ["train", "run", "ads-column-fouling", "--trainee-actions",
                            str(SCENARIO_DIR / "ads-column-fouling.trainee.yaml"), "--report", str(tmp_path / "rep"),
                            "--history", str(tmp_path / "hist"), "--snapshot", str(tmp_path / "end.json")])
    assert r.exit_code == 0, r.output
    assert "score" in r.output and (tmp_path / "rep" / "report.html").exists()
    db = sqlite3.connect(tmp_path / "hist" / "history.sqlite")
    sessions = {row[0] for row in db.execute("select distinct session from points")}
    assert len(sessions) == 1 and next(iter(sessions)).startswith("train-")
    assert db.execute("select count(*) from points where measurement='alarm' and tag='ADS.COL2.DP.HI'").fetchone()[0] >= 1
    r = runner.invoke(app, ["train", "restore", str(tmp_path / "end.json"), "--run", "10min"])
    assert r.exit_code == 0, r.output
    assert "restored session" in r.output and "ran to t = 6000 s" in r.output


def test_train_bad_input():
    r = runner.invoke(app, ["train", "run", "no-such-scenario"])
    assert r.exit_code == 2 and "no scenario" in r.output
    r = runner.invoke(app, ["train", "run", "ads-column-fouling", "--speed", "500"])
    assert r.exit_code == 2 and "--speed" in r.output
