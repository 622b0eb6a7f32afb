"""The run's recording off the critical path: the embedded history's index built once at close
(and by the first reader of a store whose writer never closed it), the summary written and shown
before the plots, a plot that fails leaving the summary and the other plots."""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing

import numpy as np
import pytest
from typer.testing import CliRunner

import pilot.plots
from pilot.app import simulate
from pilot.cli import app
from pilot.historian.base import Point
from pilot.historian.sqlite import (
    SqliteSink,
    has_index,
    history_path,
    list_tags,
    read_points,
    read_series,
)
from pilot_config import load_config

RUN_S = 1800.0  # 30 plant minutes: 31 samples per tag at the shipped 60 s record period


def _indexed(path) -> bool:
    with closing(sqlite3.connect(path)) as db:
        return has_index(db)


def _points(n: int, tag: str = "T1") -> list[Point]:
    return [Point("process", tag, "degC", 20.0 + k, 60.0 * k) for k in range(n)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    simulate(_config(), RUN_S, out, make_plots=False)
    return out


def _config():
    return load_config()


def test_index_is_left_to_close_and_built_there(tmp_path):
    path = tmp_path / "history.sqlite"
    sink = SqliteSink(path, index_at_close=True, durable=False)
    sink.open()
    sink.write_batch(_points(10))
    assert not _indexed(path)  # not kept at the inserts
    sink.close()
    assert _indexed(path)
    assert read_series(path, "T1").value.tolist() == [20.0 + k for k in range(10)]


def test_default_sink_keeps_the_index_at_every_insert(tmp_path):
    path = tmp_path / "history.sqlite"
    sink = SqliteSink(path)
    sink.open()
    try:
        sink.write_batch(_points(3))
        assert _indexed(path)
    finally:
        sink.close()


def test_simulated_run_history_has_its_index_after_close(run_dir):
    path = history_path(run_dir)
    assert _indexed(path)
    with closing(sqlite3.connect(path)) as db:
        plan = " ".join(r[-1] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT time_s FROM points WHERE tag = 'CELL1.VOLTAGE' ORDER BY time_s"))
    assert "points_tag_time" in plan
    assert len(read_series(path, "CELL1.VOLTAGE").time_s) == RUN_S / 60 + 1


def test_reader_of_a_store_without_its_index_builds_it_and_reads_the_same(run_dir, tmp_path):
    """A writer killed before close leaves no index: the first reader builds it."""
    path = tmp_path / "history.sqlite"
    with closing(sqlite3.connect(history_path(run_dir))) as src, closing(sqlite3.connect(path)) as dst:
        src.backup(dst)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP INDEX points_tag_time")
    assert not _indexed(path)
    want = read_series(history_path(run_dir), "SX.TB_PURITY")
    got = read_series(path, "SX.TB_PURITY")
    assert _indexed(path)
    np.testing.assert_array_equal(got.time_s, want.time_s)
    np.testing.assert_array_equal(got.value, want.value)
    assert list_tags(path) == list_tags(history_path(run_dir))


def test_reader_reads_without_the_index_while_a_writer_holds_the_store(tmp_path):
    path = tmp_path / "history.sqlite"
    sink = SqliteSink(path, index_at_close=True)
    sink.open()
    sink.write_batch(_points(5) + _points(4, "T2"))
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # a writer mid-transaction: the index cannot be built now
        assert read_series(path, "T2").value.tolist() == [20.0, 21.0, 22.0, 23.0]
        assert len(read_points(path, tag="T1")) == 5
        assert not _indexed(path)
        writer.execute("ROLLBACK")
    sink.close()
    assert _indexed(path)


def test_a_failing_plot_leaves_the_summary_and_the_other_plots(monkeypatch, tmp_path):
    seen = {}
    draw_cells = pilot.plots.plot_cells

    def broken(db, config, path):
        seen["summary_first"] = (tmp_path / "summary.json").is_file()
        draw_cells(db, config, path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pilot.plots, "plot_cells", broken)
    res = simulate(_config(), 600.0, tmp_path)
    assert seen == {"summary_first": True}
    assert json.loads((tmp_path / "summary.json").read_text())["plant_time_s"] == pytest.approx(600.0)
    assert {p.name for p in res.plots} == {"adsorption.png", "cascade_profile.png", "purity.png"}
    assert len(res.plot_errors) == 1
    assert "cells.png: not drawn (OSError" in res.plot_errors[0] and "No space left" in res.plot_errors[0]


def test_cli_shows_the_summary_before_drawing_and_names_a_failed_plot(monkeypatch, tmp_path):
    out_dir = tmp_path / "run"
    printed_before = {}
    runner = CliRunner()

    def broken(db, config, path):
        printed_before["kpis"] = "tb_purity_pct" in runner_output()
        raise KeyError("SX.TB_PURITY")

    monkeypatch.setattr(pilot.plots, "plot_purity", broken)
    monkeypatch.setattr(pilot.plots, "plot_adsorption", lambda db, config, events, path: path)
    monkeypatch.setattr(pilot.plots, "plot_profiles", lambda profiles, config, path: path)
    monkeypatch.setattr(pilot.plots, "plot_cells", lambda db, config, path: path)
    def runner_output() -> str:
        sys.stdout.flush()
        return sys.stdout.buffer.getvalue().decode()

    res = runner.invoke(app, ["simulate", "--until", "10min", "--out", str(out_dir), "--quiet"])
    assert res.exit_code == 1, res.output
    assert printed_before == {"kpis": True}
    assert "Traceback" not in res.output
    assert f"plot {out_dir / 'purity.png'}: not drawn (KeyError" in " ".join(res.output.split())
    assert (out_dir / "summary.json").is_file() and (out_dir / "history.sqlite").is_file()
