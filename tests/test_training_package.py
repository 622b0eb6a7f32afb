"""Training scenarios as package data: the wheel carries them, a fresh venv with only the wheel
installed lists, shows and runs them from a folder outside the checkout; `pilot train list` and
`show` read at 80 columns without a word broken; a trainer's own folder is searched first."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pilot.cli import app
from pilot.training.scenario import SCENARIO_DIR, load_scenario, shipped_scenarios
from pilot.training.session import INITIAL_CONDITIONS
from twin.malfunctions import PROCESS_KINDS, SIGNAL_KINDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pilot_config", "twin", "controllers", "opcua_server", "pilot")
runner = CliRunner()


def _wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of what deploy/Dockerfile copies (no git, no build/ in the checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("pilot_line-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; the third-party dependencies come from the project venv's
    site-packages through a .pth written after the install (so pip never sees the checkout's
    editable install, and the project itself is found only in the fresh venv)."""
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, cwd=tmp)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_project_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    return env_dir


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _wheel(tmp)
    env_dir = _fresh_venv(tmp, wheel)
    work = tmp / "trainer"  # a working folder outside the checkout, no scenarios beside it
    work.mkdir()
    return wheel, env_dir, work


def _pilot(env_dir: Path, work: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PILOT_", "PYTHON", "VIRTUAL_ENV")) and k != "COLUMNS"}
    env["COLUMNS"] = str(columns)
    return subprocess.run([str(env_dir / "bin" / "pilot"), *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)


def test_wheel_carries_every_scenario_and_trainee(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in SCENARIO_DIR.glob("*.yaml"))
    assert len(shipped) >= 12 and any(n.endswith(".trainee.yaml") for n in shipped)
    assert {f"pilot/training/scenarios/{n}" for n in shipped} <= names
    assert not any(n.startswith("scenarios/") for n in names)
    assert not (ROOT / "scenarios").exists()  # one copy of the scenarios: the package's


def test_installed_wheel_lists_and_runs_a_scripted_scenario(installed):
    _, env_dir, work = installed
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import pilot.training; print(pilot.training.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where  # the wheel's package, not the checkout

    r = _pilot(env_dir, work, "train", "list")
    assert r.returncode == 0, r.stderr
    assert all(p.stem in r.stdout for p in shipped_scenarios()) and len(shipped_scenarios()) >= 6

    r = _pilot(env_dir, work, "train", "run", "cell1-anode-effect", "--trainee-actions",
               "cell1-anode-effect.trainee.yaml", "--report", "report")
    assert r.returncode == 0, r.stderr
    score = float(re.search(r"score (\d+)/100", r.stdout).group(1))
    sc = load_scenario("cell1-anode-effect")
    assert sc.expected.score_min <= score <= sc.expected.score_max
    assert (work / "report" / "report.html").is_file()


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[\s,;:()]+", text) if t}


@pytest.mark.parametrize("columns", [80, 110])
def test_train_list_fits_the_width_without_breaking_a_word(installed, columns):
    _, env_dir, work = installed
    r = _pilot(env_dir, work, "train", "list", columns=columns)
    assert r.returncode == 0, r.stderr
    assert max(len(line.rstrip()) for line in r.stdout.splitlines()) <= columns
    words = set()
    for p in shipped_scenarios():
        s = load_scenario(p)
        words |= _tokens(f"{p.stem} {s.title} {s.initial}")
        words |= {w for m in s.malfunctions for w in (m.kind, m.target)}
    words |= _tokens(" ".join(f"{k} {v}" for k, v in INITIAL_CONDITIONS.items()))
    words |= set(PROCESS_KINDS) | set(SIGNAL_KINDS)
    missing = words - _tokens(r.stdout)
    assert not missing and "near_breakthrough" in _tokens(r.stdout), missing


def test_train_show_detail_at_80_columns(installed):
    _, env_dir, work = installed
    r = _pilot(env_dir, work, "train", "show", "sx-organic-pump-trip")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"file: {env_dir}" in text  # the shipped file, printed whole on one line to be copied
    assert max(len(line.rstrip()) for line in text.splitlines() if not line.startswith("file: ")) <= 80
    assert "…" not in text  # nothing cut off
    sc = load_scenario("sx-organic-pump-trip")
    assert {"pump_trip", "SX.ORG.FLOW_SP"} <= _tokens(text)
    assert "onset 10:00" in text and "lasts 20:00" in text  # min:s, as everywhere in the detail
    assert {r.id for r in sc.responses} <= _tokens(text) and "75:00" in text
    assert all(w in _tokens(text) for w in _tokens(sc.teaches))
    assert "sx-organic-pump-trip.trainee.yaml" in text and "95 to 100" in text


def test_unknown_scenario_is_one_line_listing_the_names():
    r = runner.invoke(app, ["train", "show", "pump-trip"])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no scenario 'pump-trip'" in lines[0]
    assert all(p.stem in lines[0] for p in shipped_scenarios())


def test_trainer_folder_is_searched_first(tmp_path, monkeypatch):
    own = tmp_path / "drills"
    own.mkdir()
    text = (SCENARIO_DIR / "cell1-anode-effect.yaml").read_text()
    (own / "night-shift-anode-effect.yaml").write_text(
        text.replace("name: cell1-anode-effect", "name: night-shift-anode-effect")
            .replace("title: Anode effect on electrolysis cell 1", "title: Night shift drill"))
    shutil.copy2(SCENARIO_DIR / "cell1-anode-effect.trainee.yaml", own / "night-shift-anode-effect.trainee.yaml")
    r = runner.invoke(app, ["train", "list", "--scenario-dir", str(own)])
    assert r.exit_code == 0, r.output
    assert "night-shift-anode-effect" in r.output and "cell1-anode-effect" in r.output
    r = runner.invoke(app, ["train", "show", "night-shift-anode-effect", "--scenario-dir", str(own)])
    assert r.exit_code == 0 and "Night shift drill" in r.output, r.output
    monkeypatch.setenv("PILOT_SCENARIO_DIRS", str(own))  # every train command then finds it by name
    r = runner.invoke(app, ["train", "show", "night-shift-anode-effect"])
    assert r.exit_code == 0 and str(own / "night-shift-anode-effect.yaml") in r.output.replace("\n", ""), r.output
    r = runner.invoke(app, ["train", "list", "--scenario-dir", str(tmp_path / "absent")])
    assert r.exit_code == 2 and "--scenario-dir" in r.output and "no such folder" in r.output
    (own / "broken.yaml").write_text("name: broken\nduration_s: -1\n")
    r = runner.invoke(app, ["train", "list", "--scenario-dir", str(own)])
    assert r.exit_code == 2 and "broken.yaml" in r.output and "Traceback" not in r.output
