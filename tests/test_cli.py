"""The command line as a user meets it: clear errors, no tracebacks, outputs where promised."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pilot_config import default_config_path

PILOT = [sys.executable, "-m", "pilot"]


def run(*args, cwd=None):
    return subprocess.run([*PILOT, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_clean_failure(res, *needles):
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "Traceback" not in text, text
    for n in needles:
        assert n in text, text


def write_variant(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(default_config_path().read_text())
    mutate(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_missing_config_file(tmp_path):
    assert_clean_failure(run("simulate", str(tmp_path / "nope.yaml"), "--until", "1h"), "file not found")


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("feed:\n  flow_L_per_h: [1, 2\n")
    assert_clean_failure(run("config", "check", str(bad)), "invalid YAML", "bad.yaml:")


def test_negative_flow_and_many_errors_at_once(tmp_path):
    def mutate(d):
        d["feed"]["flow_L_per_h"] = -5
        d["eluate_tank"]["capacity_L"] = 0
        d["tags"][0]["kind"] = "thermometer"

    res = run("config", "check", str(write_variant(tmp_path, mutate)))
    assert_clean_failure(res, "3 problems", "feed.flow_L_per_h", "-5", "greater than 0",
                         "eluate_tank.capacity_L", "tags.0.kind", "'sensor'")


def test_unknown_signal_in_a_tag_is_named(tmp_path):
    def mutate(d):
        d["tags"][1]["signal"] = "extraction.no_such_signal"

    res = run("config", "check", str(write_variant(tmp_path, mutate)))
    assert_clean_failure(res, "tags[1]", "no_such_signal")


def test_impossible_duration():
    assert_clean_failure(run("simulate", "--until", "-3h"), "positive duration")


def test_schema_is_json_schema():
    res = run("config", "schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert {"feed", "adsorption", "extraction", "electrolysis", "tags"} <= set(schema["properties"])


def test_shipped_configs_check_ok():
    for name in ("pilot_line.yaml", "pilot_line_conventional.yaml"):
        res = run("config", "check", str(default_config_path().with_name(name)))
        assert res.returncode == 0, res.stderr
        assert "ok" in res.stdout


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = run("simulate", "--until", "2h", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    return out, res


def test_simulate_writes_summary_history_and_plots(short_run):
    out, res = short_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plant_time_s"] == pytest.approx(7200.0)
    assert summary["realtime_factor"] > 1.0
    assert set(summary["final"]) >= {"SX.TB_PURITY", "CELL1.VOLTAGE"}
    for key in ("tb_purity_pct", "dy_recovery_pct", "adsorption_hree_recovery_pct",
                "adsorption_rejection_pct", "current_efficiency_pct",
                "specific_energy_kWh_per_kg_Tb", "organic_inventory_L", "mass_balance_error"):
        assert key in summary["kpis"], key
    for png in ("adsorption.png", "cascade_profile.png", "cells.png", "purity.png"):
        assert (out / png).stat().st_size > 10_000
    assert "tb_purity_pct" in res.stdout


def test_history_reads_back_a_tag(short_run):
    out, _ = short_run
    res = run("history", str(out), "--tag", "CELL1.VOLTAGE", "--csv")
    assert res.returncode == 0, res.stderr
    rows = res.stdout.strip().splitlines()
    assert rows[0] == "time_s,value,quality"
    assert len(rows) - 1 == 121  # t = 0 and every minute for 2 h
    assert 2.0 < float(rows[-1].split(",")[1]) < 8.0


def test_history_unknown_tag(short_run):
    out, _ = short_run
    assert_clean_failure(run("history", str(out), "--tag", "CELL1.VOLTAG"), "unknown tag", "CELL1.VOLTAGE")


def test_speed_paces_the_run_and_rerun_replaces_history(tmp_path):
    out = tmp_path / "paced"
    for _ in range(2):  # the second run into the same folder must not mix with the first
        res = run("simulate", "--until", "3min", "--speed", "60", "--out", str(out), "--quiet", "--no-plots")
        assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_time_s"] >= 2.9  # 180 plant-s at 60x real time
    assert summary["realtime_factor"] <= 61.0
    rows = run("history", str(out), "--tag", "CELL1.TEMP", "--csv").stdout.strip().splitlines()
    assert len(rows) - 1 == 4  # t = 0, 1, 2, 3 min: one run's worth


def test_bad_speed_is_refused():
    assert_clean_failure(run("simulate", "--until", "1h", "--speed", "-2"), "--speed")
