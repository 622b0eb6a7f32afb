"""``pilot sweep`` on Dask: a LocalCluster of 2 worker processes and a scheduler + 2 workers started
as separate processes; each row's KPIs equal those of ``simulate`` run alone on that scenario."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from opcua_server.node_interop import free_port
from pilot.app import simulate
from pilot.cli import app
from pilot.sweep import (
    plot_sweep,
    run_scenario,
    run_sweep,
    summary_columns,
    write_table,
)
from pilot.sweep_spec import Scenario, SweepError, build_config, load_sweep

SPEC = """\
until: 1h
scenarios:
  - {name: base, control: auto}
  - {name: more-organic, control: off, set: {extraction.organic_flow_L_per_h: 36.0}}
  - {name: weak-extractant, control: auto, set: {extraction.extractant_concentration_mol_per_L: 0.9}}
"""


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _alone(s: Scenario, tmp_path: Path) -> dict:
    """The KPI columns of ``simulate`` (what ``pilot simulate`` runs) on the scenario alone."""
    res = simulate(build_config(s.config_text, s.overrides), s.until_s, tmp_path / f"alone-{s.key}",
                   seed=s.seed, make_plots=False, control=s.control)
    cols = summary_columns(res.summary)
    return {k: v for k, v in cols.items() if k not in ("sim_wall_time_s",)}


def _same(row: dict, alone: dict) -> None:
    for k, v in alone.items():
        got = row[k]
        if isinstance(v, float) and isinstance(got, str):
            got = float(got)
        if isinstance(v, float) and math.isfinite(v):
            assert float(got) == pytest.approx(v, rel=1e-6, abs=1e-12), k
        elif v is None:
            assert got in (None, ""), k
        else:
            assert str(got) == str(v), k


def test_wrong_path_or_value_is_one_line_naming_file_and_field(tmp_path):
    bad_path = _spec(tmp_path, "grid:\n  extraction.organic_flow: [30, 36]\n")
    with pytest.raises(SweepError) as e:
        load_sweep(bad_path)
    msg = str(e.value)
    assert str(bad_path) in msg and "'organic_flow'" in msg and "organic_flow_L_per_h" in msg
    assert "\n" not in msg
    bad_value = _spec(tmp_path, "grid:\n  extraction.organic_flow_L_per_h: [30, -1]\n")
    with pytest.raises(SweepError) as e:
        load_sweep(bad_value)
    assert "extraction.organic_flow_L_per_h" in str(e.value) and "-1" in str(e.value)
    with pytest.raises(SweepError, match="exactly one of grid, lhs, scenarios"):
        load_sweep(_spec(tmp_path, "until: 1h\n"))


def test_grid_and_latin_hypercube_designs(tmp_path):
    grid = load_sweep(_spec(tmp_path, "grid:\n  extraction.organic_flow_L_per_h: [30, 33, 36]\n"
                                      "  control: [off, auto]\n"))
    assert len(grid) == 6 and {s.control for s in grid} == {"off", "auto"}
    assert len({s.key for s in grid}) == 6
    lhs = load_sweep(_spec(tmp_path, "lhs:\n  samples: 5\n  seed: 3\n  fields:\n"
                                     "    extraction.organic_flow_L_per_h: [30, 36]\n"
                                     "    feed.flow_L_per_h: [200, 300]\n"))
    flows = sorted(s.overrides["extraction.organic_flow_L_per_h"] for s in lhs)
    assert len(lhs) == 5 and all(30 <= f <= 36 for f in flows)
    # Latin hypercube: one sample in each of the 5 equal strata of every input
    assert sorted(int((f - 30) / 6 * 5) for f in flows) == [0, 1, 2, 3, 4]


def test_local_cluster_two_processes_rows_match_simulate_failure_reported_resume(tmp_path):
    scenarios = load_sweep(_spec(tmp_path))
    broken = scenarios[0].model_copy(update={"name": "broken", "overrides": {"feed.flow_L_per_h": -5.0}})
    seen: list[tuple[str, bool]] = []
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        rows = run_sweep([*scenarios, broken], client, out_dir=out,
                         progress=lambda r, resumed: seen.append((r["scenario"], resumed)))
        assert [r["scenario"] for r in rows] == ["base", "more-organic", "weak-extractant", "broken"]
        assert "feed.flow_L_per_h" in rows[3]["error"] and "greater than 0" in rows[3]["error"]
        assert all(r["error"] == "" for r in rows[:3])
        assert len({r["worker"] for r in rows}) == 2  # both worker processes ran scenarios
        seen.clear()
        again = run_sweep([*scenarios, broken], client, out_dir=out,
                          progress=lambda r, resumed: seen.append((r["scenario"], resumed)))
    assert sorted(seen) == [("base", True), ("broken", False), ("more-organic", True), ("weak-extractant", True)]
    assert [r["wall_time_s"] for r in again[:3]] == [r["wall_time_s"] for r in rows[:3]]  # kept, not rerun
    for row, s in zip(rows[:2], scenarios[:2]):
        _same(row, _alone(s, tmp_path))
    assert rows[0]["alarms_raised"] >= 0 and rows[0]["balance_error_max"] < 1e-6
    assert rows[0]["tb_purity_pct"] != rows[2]["tb_purity_pct"]
    table = write_table(rows, out)
    assert table.suffix in (".csv", ".parquet")
    plots = plot_sweep(rows, scenarios, out)
    assert {p.name for p in plots} >= {"kpi_vs_extraction_organic_flow_L_per_h.png"}
    assert all(p.stat().st_size > 10_000 for p in plots)


@pytest.fixture()
def dask_processes(tmp_path):
    """A ``dask scheduler`` and two ``dask worker`` processes on free ports; torn down at the end."""
    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(2):
        procs.append(subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--nworkers", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"],
                                      cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        with Client(addr, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_cli_on_scheduler_and_two_worker_processes(tmp_path, dask_processes):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["sweep", str(spec), "--scheduler", dask_processes, "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "3 scenarios, 0 failed" in res.output
    table = out / "results.csv"
    assert table.exists() or (out / "results.parquet").exists()
    if table.exists():
        with table.open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["scenario"] for r in rows] == ["base", "more-organic", "weak-extractant"]
    assert len({r["worker"] for r in rows}) == 2
    scenarios = load_sweep(spec)
    _same(rows[1], _alone(scenarios[1], tmp_path))
    assert (out / "surface_tb_purity_pct.png").exists()  # two inputs (the others at the config's value)
    assert (out / "kpi_vs_extraction_organic_flow_L_per_h.png").exists()


def test_cli_wrong_field_is_one_line(tmp_path):
    spec = _spec(tmp_path, "grid:\n  feed.flw: [1, 2]\n")
    res = CliRunner().invoke(app, ["sweep", str(spec), "-q"])
    assert res.exit_code == 2
    assert "no field 'flw' in feed; allowed:" in res.output and str(spec) in res.output.replace("\n", "")
    assert "Traceback" not in res.output


def test_run_scenario_outside_dask_returns_its_row():
    s = Scenario(name="x", config_text="name: [", overrides={}, until_s=60.0, control="off")
    row = run_scenario(s)
    assert row["error"] and row["worker"] == "" and row["scenario"] == "x"


def test_a_malfunction_scenario_runs_with_its_fault():
    """A scenario's malfunction reaches its twin: a pump trip of the organic flow lowers Tb recovery."""
    from pilot_config import default_config_path

    text = default_config_path().read_text()
    trip = {"kind": "pump_trip", "target": "SX.ORG.FLOW_SP", "onset_s": 600.0, "duration_s": 2400.0}
    clean = run_scenario(Scenario(name="clean", config_text=text, overrides={}, until_s=3600.0, control="off"))
    tripped = run_scenario(Scenario(name="trip", config_text=text, overrides={}, until_s=3600.0, control="off",
                                    malfunctions=(trip,)))
    assert not clean["error"] and not tripped["error"], (clean["error"], tripped["error"])
    differing = [k for k in clean if k.startswith(("tb_", "dy_")) and isinstance(clean[k], float)
                 and isinstance(tripped[k], float) and not math.isclose(clean[k], tripped[k], rel_tol=1e-9)]
    assert differing, "the pump trip changed no Tb/Dy KPI"
