"""The benchmarks' machine checks (core count claimed, load printed, one BLAS thread) and a
carousel of more than four columns built and run by the whole plant."""

from __future__ import annotations

import ast
import importlib.util
import os
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


NEW_BENCHMARKS = ("closed_loop_speed.py", "memory_soak.py")


@pytest.mark.parametrize("name", NEW_BENCHMARKS)
def test_benchmark_sets_blas_threads_first_claims_its_cores_and_prints_the_load(name):
    """Read as a reviewer would: ``import _machine`` before any import that loads numpy, the core
    count claimed before anything is measured, the load line printed beside the figures."""
    tree = ast.parse((ROOT / "benchmarks" / name).read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name) or "" for n in imports]
    first_heavy = next(i for i, m in enumerate(names) if m.split(".")[0] in
                       ("numpy", "scipy", "pilot", "twin", "controllers", "opcua_server", "pilot_config"))
    assert "_machine" in names[:first_heavy], names
    calls = {f"{c.func.value.id}.{c.func.attr}" for c in ast.walk(tree) if isinstance(c, ast.Call)
             and isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)}
    assert {"_machine.claim", "_machine.load_line", "_machine.add_arguments"} <= calls, calls


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_memory_soak_compares_the_halves_and_reads_rss_like_the_os(monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    soak = _bench_module("memory_soak")
    mib = 2 ** 20
    levelled = [(10.0 * k, (200 + min(k, 3)) * mib) for k in range(11)]  # grows, then flat
    assert soak.halves(levelled) == (3.0, 0.0)
    leaking = [(10.0 * k, (200 + 2 * k) * mib) for k in range(11)]
    assert soak.halves(leaking) == (10.0, 10.0)
    with pytest.raises(ValueError):
        soak.halves(levelled[:2])
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    vm_rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    assert abs(soak.rss_bytes(os.getpid()) - vm_rss) < 64 * mib
