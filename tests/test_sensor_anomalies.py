"""Sensor and model-consistency anomalies of the control loop (controllers/loop_anomaly.py) on
the twin with malfunctions: a frozen thermocouple (STUCK), a drifting thermocouple
(CUSUM on the thermal model's innovations: DRIFT), a voltage reading off the cell model (windowed
innovation chi-square: INNOV), organic lost from a closed circuit (BALANCE). Each is alarmed
within a stated time and the healthy units stay quiet; the nominal line raises none of them
(tests/test_loop.py, tests/test_alarms.py)."""

from __future__ import annotations

import pytest

from controllers.loop import ControlLoop, every_loop
from controllers.loop_anomaly import AnomalyConfig
from pilot_config import load_config
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant

ONSET_S = 1800.0
SIGNAL_RULES = (".STUCK", ".INNOV", ".DRIFT")


@pytest.fixture(scope="module")
def config():
    return load_config()


def first_raised(config, faults, hours: float) -> dict[str, float]:
    """Seconds after ONSET_S at which each alarm was first raised (loop in advisory, 60 s ticks)."""
    plant = TwinPlant(config)
    for f in faults:
        inject(plant, f)
    loop = ControlLoop(config, modes=every_loop(config, "advisory"), mpc_deadline_s=None, carousel=False)
    first: dict[str, float] = {}
    while plant.t < hours * 3600 - 1e-9:
        plant.advance(60.0)
        for e in loop.step(plant.snapshot(), plant.t).raised:
            first.setdefault(e.alarm_id, plant.t - ONSET_S)
    return first


def test_frozen_and_drifting_thermocouples(config):
    first = first_raised(config, [
        Malfunction(kind="frozen_value", target="CELL2.TEMP", onset_s=ONSET_S),
        Malfunction(kind="drift", target="CELL1.TEMP", onset_s=ONSET_S, ramp_s=3600.0, severity=15.0),
    ], hours=1.6)
    window_s = AnomalyConfig().stuck_window * 60.0
    assert 0 < first["CELL2.TEMP.STUCK"] <= window_s + 60.0  # 10 fresh samples without noise
    assert 0 < first["CELL1.TEMP.DRIFT"] <= 40 * 60.0  # the drift is ≤ 10 °C by then
    assert "CELL1.TEMP.STUCK" not in first and "CELL2.TEMP.DRIFT" not in first
    signal_alarms = [a for a in first if a.endswith(SIGNAL_RULES)]
    assert sorted(signal_alarms) == ["CELL1.TEMP.DRIFT", "CELL2.TEMP.STUCK"], first


def test_voltage_reading_off_the_cell_model(config):
    first = first_raised(config, [
        Malfunction(kind="drift", target="CELL1.VOLTAGE", onset_s=ONSET_S, ramp_s=1800.0, severity=0.3),
    ], hours=1.3)
    assert 0 < first["CELL1.VOLTAGE.INNOV"] <= 25 * 60.0
    assert not [a for a in first if a.startswith("CELL2.")], first


def test_organic_circuit_balance_catches_entrainment_before_the_level_alarm(config):
    """Crud entrainment carries organic out with the raffinate: the closed organic circuit's
    balance residual (SX.ORG.BALANCE) is alarmed before the inventory reaches its L limit."""
    first = first_raised(config, [  # entrainment ramped to 12.5 % of the raffinate flow over 1 h
        Malfunction(kind="crud_entrainment", target="extraction", onset_s=ONSET_S, ramp_s=3600.0, severity=0.5),
    ], hours=2.8)
    assert 0 < first["SX.ORG.BALANCE"] <= 45 * 60.0
    assert first["SX.ORG.BALANCE"] < first["SX.ORG.INVENTORY.LO"]
