"""Malfunctions (twin.malfunctions): each shows its signature in the operator's tags and raises the
alarm an operator should get from the shipped alarm configuration; none leaves a trace when absent."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from controllers.alarms import AlarmManager, AlarmState
from controllers.loop_anomaly import AnomalyChecks
from pilot_config import load_config
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant
from twin.signals import Quality


@pytest.fixture(scope="module")
def line():
    return load_config()


def run(line, faults, hours, tags, seed=0):
    """Run the plant with the faults; returns (traces {tag: array}, first raise time {alarm_id: t})."""
    plant = TwinPlant(line, seed=seed)
    for m in faults:
        inject(plant, m)
    alarms = AlarmManager(line.control.alarms, line.tags)
    checks = AnomalyChecks(line.control.alarms, tags=line.tags)  # the loop's signal-based conditions
    traces = {n: [] for n in tags}
    raised: dict[str, float] = {}
    for _ in range(int(hours * 60)):
        plant.advance(60.0)
        snap = plant.snapshot()
        for n in tags:
            traces[n].append(snap[n].value)
        for e in alarms.step(snap, plant.t, checks.step(snap, plant.t, {})).transitions:
            if e.to_state == AlarmState.UNACK_ACTIVE:
                raised.setdefault(e.alarm_id, plant.t)
    return {n: np.array(v) for n, v in traces.items()}, raised, plant


def M(kind, target, **kw):
    return Malfunction(kind=kind, target=target, **{"onset_s": 1800.0, **kw})


def test_cell_faults_ce_drop_and_heater_failure(line):
    tr, raised, plant = run(line, [M("electrolyte_contamination", "cell1", ramp_s=1800, severity=0.4),
                                   M("heater_failure", "cell2", severity=0.7)],
                            5.0, ["CELL1.SALT_FEED", "CELL2.HEATER", "CELL2.TEMP", "CELL1.TEMP"])
    # contamination: deposition falls; the make-up feeder follows as the salt analyser (1 h period,
    # 30 min delay) reports the Tb the feed-forward over-feeds; the melt stays in its window
    assert tr["CELL1.SALT_FEED"][:25].mean() > 240 and tr["CELL1.SALT_FEED"][-30:].mean() < 175
    assert "CELL1.SALT_FEED.LO" in raised and 1800 + 600 <= raised["CELL1.SALT_FEED.LO"] <= 5 * 3600
    assert plant.signal("cell1.current_efficiency") < 0.6
    # heater failure: heater power capped, the melt cools through its low limit
    assert tr["CELL2.HEATER"][-1] < 0.6 * tr["CELL2.HEATER"][:25].mean()  # 30 % of 5 kW
    assert "CELL2.TEMP.LO" in raised and tr["CELL2.TEMP"][-1] < 500
    assert not any(a.startswith("CELL1.TEMP") for a in raised)


def test_anode_effect(line):
    tr, raised, _ = run(line, [M("anode_effect", "cell1", severity=0.9, duration_s=1800)], 2.0,
                        ["CELL1.ANODE_EFFECT", "CELL1.VOLTAGE"])
    assert tr["CELL1.ANODE_EFFECT"].max() == 1.0 and tr["CELL1.ANODE_EFFECT"][:25].max() < 0.01
    assert tr["CELL1.VOLTAGE"].max() > 6.0
    assert "CELL1.ANODE_EFFECT.ON" in raised and raised["CELL1.ANODE_EFFECT.ON"] < 1800 + 600


def test_adsorbent_fouling(line):
    tr, raised, plant = run(line, [M("adsorbent_fouling", "col2", ramp_s=1200, severity=0.6)], 1.5,
                            ["ADS.COL2.DP", "ADS.COL1.DP"])
    assert tr["ADS.COL2.DP"][:25].max() < 20 and tr["ADS.COL2.DP"][-1] > 50
    assert "ADS.COL2.DP.HI" in raised and not any(a.startswith("ADS.COL1") for a in raised)
    p = plant.flowsheet.blocks["adsorption"].p
    assert p.capacity_factor[1] == pytest.approx(0.4) and p.capacity_factor[0] == 1.0


def test_extractant_degradation(line):
    tr, raised, _ = run(line, [M("extractant_degradation", "extraction", ramp_s=1800, severity=0.3)], 2.0,
                        ["SX.TB_PURITY", "SX.RAFF.Dy"])
    assert tr["SX.TB_PURITY"][:30].min() > 99.7 and tr["SX.TB_PURITY"][-1] < 99.5
    assert tr["SX.RAFF.Dy"][-1] > 5 * tr["SX.RAFF.Dy"][:30].mean()
    assert "SX.TB_PURITY.LO" in raised


def test_feed_swing_on_the_cascade(line):
    tr, raised, _ = run(line, [M("feed_swing", "cascade", onset_s=600, ramp_s=600, severity=4.0)], 2.0,
                        ["SX.TB_PURITY", "SX.RAFF.Dy"])
    assert tr["SX.RAFF.Dy"][-1] > 2 * tr["SX.RAFF.Dy"][:30].mean()
    assert "SX.TB_PURITY.LO" in raised


def test_pump_trip_and_crud(line):
    m = M("pump_trip", "SX.ORG.FLOW_SP", duration_s=1800)
    plant = TwinPlant(line)
    inject(plant, m)
    plant.advance(2400.0)
    assert plant.snapshot()["SX.ORG.FLOW"].value < 2.0
    assert plant.write({"SX.ORG.FLOW_SP": 30.0}).refused == {"SX.ORG.FLOW_SP": "pump tripped"}
    plant.advance(1800.0)
    assert abs(plant.snapshot()["SX.ORG.FLOW"].value - 33.0) < 1.5  # reset to its setpoint
    assert plant.write({"SX.ORG.FLOW_SP": 30.0}).ok
    _, raised, _ = run(line, [m], 0.75, [])
    assert {"SX.ORG.FLOW.LO", "SX.ORG.FLOW.LL"} <= set(raised)
    # entrained at 0.8 φ_crud = 20 % of the raffinate flow: about 5.8 L/h of organic out of the loop
    tr, raised, _ = run(line, [M("crud_entrainment", "extraction", ramp_s=1200, severity=0.8)], 1.7,
                        ["SX.ORG.INVENTORY", "SX.RAFF.ORG"])
    assert tr["SX.RAFF.ORG"][:25].max() < 20 < 100_000 < tr["SX.RAFF.ORG"][-1]
    assert tr["SX.ORG.INVENTORY"][-1] < tr["SX.ORG.INVENTORY"][:25].mean() - 4
    assert "SX.ORG.INVENTORY.LO" in raised


def test_signal_faults(line):
    faults = [M("frozen_value", "CELL1.TEMP"), M("drift", "CELL2.TEMP", ramp_s=3600, severity=-100.0),
              M("noise_burst", "ADS.COL1.DP", severity=30.0, duration_s=1200),
              M("bad_status", "TANK.LEVEL", duration_s=600), M("analyser_outage", "SX.TB_PURITY")]
    tr, raised, plant = run(line, faults, 2.0, ["CELL1.TEMP", "CELL2.TEMP", "ADS.COL1.DP", "TANK.LEVEL"])
    frozen = tr["CELL1.TEMP"][30:]
    assert np.all(frozen == frozen[0]) and np.std(tr["CELL1.TEMP"][:29]) > 0.1
    assert 1800 < raised["CELL1.TEMP.STUCK"] <= 1800 + 11 * 60  # ten fresh samples without noise
    # the drifting thermocouple is the heater loop's: the PLC holds the reading near its setpoint,
    # so the melt overheats by the drift, unseen, while the reading's dip is predicted low
    assert plant.signal("cell2.temperature") - 273.15 > 620
    assert plant.signal("cell2.temperature") - 273.15 - tr["CELL2.TEMP"][-1] == pytest.approx(100.0, abs=3.0)
    assert "CELL2.TEMP.PRED_LO" in raised
    assert np.std(tr["ADS.COL1.DP"][31:50]) > 10 * np.std(tr["ADS.COL1.DP"][:29])
    assert "TANK.LEVEL.BADPV" in raised and "SX.TB_PURITY.BADPV" in raised
    snap = plant.snapshot()
    assert snap["SX.TB_PURITY"].quality == Quality.BAD and snap["TANK.LEVEL"].quality == Quality.GOOD
    assert snap["SX.TB_PURITY"].source_time < 1800


def test_no_fault_no_trace(line):
    """An injected fault that has ended leaves the plant exactly as it found it (parameters, units)."""
    plant = TwinPlant(line)
    blocks = plant.flowsheet.blocks
    p0, unit0 = blocks["extraction"].p, blocks["extraction"].unit
    inject(plant, M("feed_swing", "cascade", severity=0.5, ramp_s=300, duration_s=600))
    inject(plant, M("extractant_degradation", "extraction", severity=0.5, duration_s=600))
    plant.advance(1900.0)
    assert blocks["extraction"].p is not p0 and blocks["extraction"].unit is not unit0
    plant.advance(1800.0)
    assert blocks["extraction"].p is p0 and blocks["extraction"].unit is unit0
    ads = blocks["adsorption"]
    dy0 = ads.u[ads.input_index["feed_Dy"]]
    inject(plant, M("feed_swing", "leach", onset_s=plant.t, severity=0.44, duration_s=600))
    plant.advance(300.0)
    assert ads.u[ads.input_index["feed_Dy"]] == pytest.approx(1.2 * dy0)  # Dy/Tb x 1.44: Dy x 1.2, Tb / 1.2
    plant.advance(900.0)
    assert ads.u[ads.input_index["feed_Dy"]] == dy0
    assert plant.tags.signal_faults == {} and plant.tags.locked == {}


def test_validation(line):
    with pytest.raises(ValidationError, match="fraction lost"):
        Malfunction(kind="adsorbent_fouling", target="col1", severity=1.5)
    with pytest.raises(ValueError, match="col1..col3"):
        inject(TwinPlant(line), Malfunction(kind="adsorbent_fouling", target="col9", severity=0.5))
    with pytest.raises(ValueError, match="cell"):
        inject(TwinPlant(line), Malfunction(kind="heater_failure", target="cellX", severity=0.5))
    m = Malfunction(kind="drift", target="CELL1.TEMP", onset_s=100, ramp_s=100, duration_s=300, severity=1)
    assert [m.level(t) for t in (0, 150, 200, 400, 450, 500, 600)] == [0, 0.5, 1, 1, 0.5, 0, 0]
