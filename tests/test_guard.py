"""The write guard: limits, rate limits, hold on stale / bad inputs, modes, watchdog, session rule,
and guarded writes to the real TwinPlant."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from controllers.guard import Guard, LiveWriteForbidden, check_session
from pilot_config import default_config_path, load_config
from pilot_config.control import ControlConfig, GuardConfig
from twin.plant import TwinPlant
from twin.signals import Quality, Sample


@pytest.fixture(scope="module")
def line():
    return load_config(default_config_path())


def cell_guard(line, mode="auto", **kw) -> Guard:
    cfg = GuardConfig(control_period_s=10.0, stale_periods=3, default_mode="manual", loops=[
        {"name": "cell1", "writes": ["CELL1.CURRENT_SP", "CELL1.TEMP_SP"], "inputs": ["CELL1.TEMP", "CELL1.VOLTAGE"],
         "mode": mode}],
        limits=[{"tag": "CELL1.CURRENT_SP", "high_eng": 200.0}, {"tag": "CELL1.TEMP_SP", "low_eng": 450.0,
                                                                 "high_eng": 650.0}], **kw)
    return Guard(cfg, line.tags, target="twin", session="standalone")


def snap(t, current=150.0, temp=550.0, temp_time=None, temp_q=Quality.GOOD):
    return {"CELL1.CURRENT_SP": Sample(current, t), "CELL1.TEMP_SP": Sample(550.0, t),
            "CELL1.TEMP": Sample(temp, t if temp_time is None else temp_time, temp_q),
            "CELL1.VOLTAGE": Sample(4.5, t), "CELL2.CURRENT_SP": Sample(150.0, t)}


def test_engineered_limits_clamp(line):
    g = cell_guard(line)
    r = g.step({"CELL1.TEMP_SP": 700.0}, snap(10), 10.0)
    assert r.to_write == {"CELL1.TEMP_SP": 650.0}
    assert r.clamped["CELL1.TEMP_SP"] == (700.0, 650.0, "engineered limit high 650 degC")
    r = g.step({"CELL1.TEMP_SP": 300.0}, snap(20), 20.0)  # below the tag range and the config limit
    assert r.to_write["CELL1.TEMP_SP"] == 450.0 and "low" in r.clamped["CELL1.TEMP_SP"][2]


def test_rate_limit_from_readback_then_from_last_write(line):
    g = cell_guard(line)  # CELL1.CURRENT_SP: max_rate_per_s 1.0 A/s (tag), period 10 s
    r = g.step({"CELL1.CURRENT_SP": 250.0}, snap(10), 10.0)  # clamp to 200, then rate from 150
    assert r.to_write["CELL1.CURRENT_SP"] == pytest.approx(160.0)
    assert r.clamped["CELL1.CURRENT_SP"] == (250.0, pytest.approx(160.0), "rate limit 1 A/s over 10 s")
    r = g.step({"CELL1.CURRENT_SP": 250.0}, snap(40), 40.0)  # 30 s since the last write
    assert r.to_write["CELL1.CURRENT_SP"] == pytest.approx(190.0)
    r = g.step({"CELL1.CURRENT_SP": 195.0}, snap(50), 50.0)  # within the rate: not clamped
    assert r.to_write["CELL1.CURRENT_SP"] == 195.0 and "CELL1.CURRENT_SP" not in r.clamped
    r = g.step({"CELL1.CURRENT_SP": 100.0}, snap(55), 55.0)
    assert r.to_write["CELL1.CURRENT_SP"] == pytest.approx(190.0)  # 5 s down at 1 A/s
    tighter = GuardConfig.model_validate({**cell_guard(line).config.model_dump(), "limits": [
        {"tag": "CELL1.CURRENT_SP", "max_rate_eng_per_s": 0.1}]})
    g2 = Guard(tighter, line.tags, target="twin", session="live")
    assert g2.step({"CELL1.CURRENT_SP": 250.0}, snap(10), 10.0).to_write["CELL1.CURRENT_SP"] == pytest.approx(151.0)


def test_hold_on_stale_bad_missing_or_upstream(line):
    g = cell_guard(line)
    r = g.step({"CELL1.TEMP_SP": 560.0}, snap(100, temp_time=60.0), 100.0)  # 40 s > 3 x 10 s
    assert r.to_write == {} and r.held["CELL1.TEMP_SP"].startswith("hold: input CELL1.TEMP stale (40 s > 30 s)")
    r = g.step({"CELL1.TEMP_SP": 560.0}, snap(110, temp_q=Quality.BAD), 110.0)
    assert r.held == {"CELL1.TEMP_SP": "hold: input CELL1.TEMP bad quality"}
    s = snap(120)
    del s["CELL1.VOLTAGE"]
    assert g.step({"CELL1.TEMP_SP": 560.0}, s, 120.0).held["CELL1.TEMP_SP"] == "hold: input CELL1.VOLTAGE missing"
    r = g.step({"CELL1.TEMP_SP": 560.0, "CELL1.CURRENT_SP": 155.0}, snap(130), 130.0,
               hold={"CELL1.CURRENT_SP": "MPC deadline missed (95 ms > 80 ms)"})
    assert r.to_write == {"CELL1.TEMP_SP": 560.0}
    assert r.held == {"CELL1.CURRENT_SP": "MPC deadline missed (95 ms > 80 ms)"}
    r = g.step({"CELL1.TEMP": 1.0, "NOPE": 1.0, "CELL1.TEMP_SP": math.nan}, snap(140), 140.0)
    assert r.held == {"CELL1.TEMP": "read-only (sensor)", "NOPE": "unknown tag",
                      "CELL1.TEMP_SP": "non-finite proposal nan"}


def test_modes_and_watchdog(line):
    g = cell_guard(line, mode="advisory", watchdog_tag="CELL2.TAP_SP")
    r = g.step({"CELL1.TEMP_SP": 560.0, "CELL2.CURRENT_SP": 100.0}, snap(10), 10.0)
    assert r.advisory == {"CELL1.TEMP_SP": 560.0} and r.to_write == {"CELL2.TAP_SP": 1.0}
    assert r.held == {"CELL2.CURRENT_SP": "loop <default> in manual"} and r.watchdog == 1
    assert r.mode == {"<default>": "manual", "cell1": "advisory"}
    g.set_mode("cell1", "manual")
    r = g.step({"CELL1.TEMP_SP": 560.0}, snap(20), 20.0)
    assert r.held == {"CELL1.TEMP_SP": "loop cell1 in manual"} and r.watchdog == 0
    g.set_mode("cell1", "auto")
    r = g.step({"CELL1.CURRENT_SP": 200.0}, snap(30, current=170.0), 30.0)  # bumpless: from read-back
    assert r.to_write == {"CELL1.CURRENT_SP": pytest.approx(180.0), "CELL2.TAP_SP": 1.0}
    assert [g.step({}, snap(t), t).watchdog for t in (40.0, 50.0, 60.0)] == [0, 1, 0]
    with pytest.raises(ValueError, match="increase"):
        g.step({}, snap(60), 60.0)
    with pytest.raises(ValueError, match="mode"):
        g.set_mode("cell1", "cascade")


def test_training_and_standalone_never_write_live(line):
    for session in ("training", "standalone"):
        with pytest.raises(LiveWriteForbidden, match=f"a {session} session can never write to a live PLC"):
            Guard(GuardConfig(), line.tags, target="live", session=session)
    Guard(GuardConfig(), line.tags, target="live", session="live")
    Guard(GuardConfig(), line.tags, target="twin", session="training")
    with pytest.raises(ValueError, match="target"):
        check_session("plc", "live")


def test_config_checks(line):
    with pytest.raises(ValidationError, match="written by two loops"):
        GuardConfig(loops=[{"name": "a", "writes": ["X.SP"]}, {"name": "b", "writes": ["X.SP"]}])
    with pytest.raises(ValidationError, match="low_eng"):
        GuardConfig(limits=[{"tag": "X.SP", "low_eng": 5, "high_eng": 1}])
    bad = ControlConfig(guard=GuardConfig(loops=[{"name": "a", "writes": ["CELL1.TEMP"], "inputs": ["NOPE"]}]))
    with pytest.raises(ValueError, match="CELL1.TEMP is read-only.*|unknown tag NOPE"):
        bad.check_tags(line.tags)
    with pytest.raises(ValueError, match="read-only tags to write"):
        Guard(bad.guard, line.tags, target="twin", session="live")


def test_guarded_current_step_on_twin_plant(line):
    """An MPC-like proposal of 250 A (above the 200 A engineered limit) applied every minute:
    the guard ramps the current at its rate limit, the twin accepts every write, and the
    measured current follows."""
    plant = TwinPlant(line)
    cfg = GuardConfig(control_period_s=60.0, loops=[{"name": "cell1", "writes": ["CELL1.CURRENT_SP"],
                                                     "inputs": ["CELL1.TEMP"], "mode": "auto"}],
                      limits=[{"tag": "CELL1.CURRENT_SP", "high_eng": 200.0, "max_rate_eng_per_s": 0.25}])
    g = Guard(cfg, line.tags, target="twin", session="standalone")
    applied = []
    for _ in range(6):
        plant.advance(60.0)
        r = g.step({"CELL1.CURRENT_SP": 250.0}, plant.snapshot(), plant.t)
        assert plant.write(r.to_write).ok
        applied.append(r.to_write["CELL1.CURRENT_SP"])
    assert applied == pytest.approx([165.0, 180.0, 195.0, 200.0, 200.0, 200.0])
    plant.advance(60.0)
    assert plant.snapshot()["CELL1.CURRENT"].value == pytest.approx(200.0, abs=1.5)
