"""The benchmarks' machine checks (core count claimed, load printed, one BLAS thread) and a
carousel of more than four columns built and run by the whole plant."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pilot_config import default_config_path, load_config
from pilot_config.adsorption import CarouselConfig
from twin.plant import TwinPlant

ROOT = Path(__file__).resolve().parent.parent
MACHINE = ROOT / "benchmarks" / "_machine.py"


@pytest.fixture
def machine(monkeypatch):
    """benchmarks/_machine.py loaded from its file; the BLAS variables it sets are undone after."""
    spec = importlib.util.spec_from_file_location("bench_machine", MACHINE)
    module = importlib.util.module_from_spec(spec)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        monkeypatch.setenv(name, "4")
    spec.loader.exec_module(module)
    assert module.BLAS_VARS[0] == "OPENBLAS_NUM_THREADS"
    return module


def test_fewer_cores_than_claimed_is_refused_or_warned(machine):
    assert machine.check_cores(1, 1, allow_fewer=False) is None
    assert machine.check_cores(2, 8, allow_fewer=False) is None
    with pytest.raises(SystemExit, match="claims 4 core.*only 2 are available"):
        machine.check_cores(4, 2, allow_fewer=False)
    warning = machine.check_cores(4, 2, allow_fewer=True)
    assert warning.startswith("WARNING") and "only 2" in warning


def test_claim_exits_2_when_the_machine_has_too_few_cores(machine, capsys):
    available = machine.available_cores()
    assert machine.claim(available) == available
    with pytest.raises(SystemExit) as exc:
        machine.claim(available + 1)
    assert exc.value.code == 2
    assert "REFUSED" in capsys.readouterr().err
    assert machine.claim(available + 1, allow_fewer=True) == available + 1
    assert "WARNING" in capsys.readouterr().err


def test_load_line_names_the_load_and_the_cores(machine):
    line = machine.load_line(1)
    assert line.startswith("machine: load 1/5/15 min ")
    assert "uses 1 of " in line and "BLAS threads 1" in line
    assert ("quiet" in line) != ("SHARED" in line)


def test_blas_threads_are_one_before_numpy_loads(machine):
    env: dict[str, str] = {"OPENBLAS_NUM_THREADS": "8"}
    machine.one_blas_thread(env)
    assert set(env) == set(machine.BLAS_VARS) and set(env.values()) == {"1"}
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import _machine, numpy, os; "
            "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "8"})
    assert out.stdout.split() == ["1", "1"]


def test_benchmark_refuses_more_cores_than_it_has():
    """twin_speed claims one core: with its affinity cut to none it cannot run, so claim a core
    count the machine lacks through the helper the script uses, as a user would see it."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import _machine; "
            "_machine.claim(_machine.available_cores() + 1)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert "REFUSED" in out.stderr and "--allow-fewer-cores" in out.stderr


def test_carousel_allows_up_to_twelve_columns():
    assert CarouselConfig(n_columns=12).n_columns == 12
    with pytest.raises(ValidationError, match="n_columns"):
        CarouselConfig(n_columns=13)
    with pytest.raises(ValidationError, match="n_columns"):
        CarouselConfig(n_columns=1)


def test_a_six_column_carousel_builds_and_runs_an_hour():
    config = load_config(default_config_path())
    six = config.model_copy(update={"adsorption": config.adsorption.model_copy(update={"n_columns": 6})})
    plant = TwinPlant(six)
    assert plant.line.n_columns == 6
    plant.advance(3600.0)
    assert plant.t == pytest.approx(3600.0)
    snap = plant.snapshot()
    assert len(snap) > 0
    errors = plant.mass_balance()
    assert errors and all(abs(err) < 1e-3 for err in errors.values()), errors
    assert plant.ledger.totals()["in"].sum() > 0
