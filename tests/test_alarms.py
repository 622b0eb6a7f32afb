"""Alarm lifecycle, deadband / delays, shelving, suppression, bad PV, flood and chattering metrics,
and one heater-failure run on the real TwinPlant."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError

from controllers.alarms import AlarmManager, AlarmState, Priority
from controllers.anomaly import PredictedAlarm
from controllers.guard import Guard
from pilot_config import default_config_path, load_config
from pilot_config.control import (
    AlarmsConfig,
    ControlConfig,
    LimitAlarmConfig,
    OperatorPositionConfig,
)
from twin.plant import TwinPlant
from twin.signals import Quality, Sample

S = AlarmState


@pytest.fixture(scope="module")
def line():
    return load_config(default_config_path())


def snap(t, **values):
    """A snapshot of the cell-1 tags at normal values, overridden by keyword values; a tuple
    (value, quality) sets the quality, None removes the tag."""
    out = {"CELL1.TEMP": Sample(550.0, t), "CELL1.ANODE_EFFECT": Sample(0.0, t)}
    for k, v in values.items():
        name = k.replace("__", ".")
        if v is None:
            out.pop(name)
            continue
        value, q = v if isinstance(v, tuple) else (v, Quality.GOOD)
        out[name] = Sample(float(value), t, q)
    return out


def temp_alarms(**kw) -> AlarmsConfig:
    limit = {"tag": "CELL1.TEMP", "hh_eng": 640, "h_eng": 600, "l_eng": 500, "ll_eng": 460, "deadband_eng": 2.0}
    limit.update(kw)
    return AlarmsConfig(limit=[LimitAlarmConfig(**limit)],
                        discrete=[{"tag": "CELL1.ANODE_EFFECT", "priority": 1}])


def states(mgr, alarm_id):
    return [(e.from_state, e.to_state) for e in mgr.journal if e.alarm_id == alarm_id]


def test_lifecycle_in_order_with_ack_and_return_to_normal(line):
    mgr = AlarmManager(temp_alarms(), line.tags)
    assert mgr.step(snap(0, CELL1__TEMP=550), 0).active == ()
    r = mgr.step(snap(60, CELL1__TEMP=495), 60)
    assert [(e.alarm_id, e.to_state) for e in r.transitions] == [("CELL1.TEMP.LO", S.UNACK_ACTIVE)]
    assert r.active[0].priority == Priority.MEDIUM and r.active[0].value == 495
    mgr.acknowledge("CELL1.TEMP.LO", "op1", 70)
    r = mgr.step(snap(120, CELL1__TEMP=501), 120)  # inside the deadband: still active
    assert r.active[0].state == S.ACK_ACTIVE and r.transitions[0].operator == "op1"
    r = mgr.step(snap(180, CELL1__TEMP=503), 180)
    assert r.active == () and r.transitions[0].to_state == S.NORMAL
    # the other branch: clears before the acknowledgement
    mgr.step(snap(240, CELL1__TEMP=450), 240)  # LO and LL together
    assert {a.alarm_id for a in mgr.active()} == {"CELL1.TEMP.LO", "CELL1.TEMP.LL"}
    assert mgr.active()[0].alarm_id == "CELL1.TEMP.LL"  # priority 1 first
    r = mgr.step(snap(300, CELL1__TEMP=550), 300)
    assert {a.state for a in r.active} == {S.RTN_UNACK}
    mgr.acknowledge_all("op2", 310)
    assert mgr.active() == ()
    assert states(mgr, "CELL1.TEMP.LO") == [
        (S.NORMAL, S.UNACK_ACTIVE), (S.UNACK_ACTIVE, S.ACK_ACTIVE), (S.ACK_ACTIVE, S.NORMAL),
        (S.NORMAL, S.UNACK_ACTIVE), (S.UNACK_ACTIVE, S.RTN_UNACK), (S.RTN_UNACK, S.NORMAL)]
    assert all(e.t >= p.t for p, e in zip(mgr.journal, mgr.journal[1:]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        mgr.journal[0].t = 1.0  # frozen records


def test_deadband_prevents_chattering_on_noisy_signal_at_the_limit(line):
    rng = np.random.default_rng(7)
    x = 600.0 + 0.5 * rng.standard_normal(600)  # noise SD 0.5 degC sitting on the H limit
    counts = {}
    for db in (0.0, 2.0):
        mgr = AlarmManager(temp_alarms(deadband_eng=db), line.tags)
        for k, v in enumerate(x):
            mgr.step(snap(k, CELL1__TEMP=v), float(k))
            if k % 5 == 0:
                mgr.acknowledge_all("op", float(k))
        counts[db] = mgr.flood.total
    assert counts[0.0] > 100  # without a deadband the alarm chatters
    assert counts[2.0] <= 2  # a 4-sigma deadband: raised once (maybe twice), never chatters


def test_on_and_off_delay(line):
    mgr = AlarmManager(temp_alarms(on_delay_s=30, off_delay_s=30), line.tags)
    seq = [(0, 610), (10, 610), (20, 590), (30, 610), (50, 610), (60, 610), (70, 590), (90, 590), (100, 590)]
    raised = []
    for t, v in seq:
        r = mgr.step(snap(t, CELL1__TEMP=v), t)
        raised += [(t, e.to_state) for e in r.transitions]
    assert raised == [(60, S.UNACK_ACTIVE), (100, S.RTN_UNACK)]


def test_shelving_expires_and_reannunciates(line):
    mgr = AlarmManager(temp_alarms(), line.tags)
    mgr.step(snap(0, CELL1__TEMP=610), 0)
    mgr.shelve("CELL1.TEMP.HI", "op1", 10, duration_s=600)
    r = mgr.step(snap(20, CELL1__TEMP=615), 20)
    assert r.active == () and r.metrics.shelved == 1
    assert [e.to_state for e in r.transitions] == [S.SHELVED]
    assert mgr.step(snap(609, CELL1__TEMP=615), 609).active == ()
    r = mgr.step(snap(610, CELL1__TEMP=615), 610)
    assert [(e.to_state, e.note) for e in r.transitions] == [
        (S.NORMAL, "shelving expired"), (S.UNACK_ACTIVE, "condition present on release")]
    with pytest.raises(ValueError, match="shelve duration"):
        mgr.shelve("CELL1.TEMP.HI", "op1", 700, duration_s=9 * 3600)


def test_suppression_while_unit_out_of_service(line):
    mgr = AlarmManager(temp_alarms(), line.tags)
    mgr.set_out_of_service("cell1", True, "shift lead", 0)
    for t in range(0, 600, 60):
        r = mgr.step(snap(t, CELL1__TEMP=400, CELL1__ANODE_EFFECT=1), t)
        assert r.active == ()
    assert r.metrics.suppressed == 7 and mgr.flood.total == 0  # HH HI LO LL ANODE_EFFECT.ON + 2 BADPV
    entries = mgr.set_out_of_service("cell1", False, "shift lead", 600)
    assert {e.alarm_id for e in entries if e.to_state == S.UNACK_ACTIVE} == {
        "CELL1.TEMP.LO", "CELL1.TEMP.LL", "CELL1.ANODE_EFFECT.ON"}
    with pytest.raises(KeyError, match="units"):
        mgr.set_out_of_service("cell9", True, "x", 700)


def test_bad_quality_does_not_drive_limit_alarms(line):
    mgr = AlarmManager(temp_alarms(), line.tags)
    r = mgr.step(snap(0, CELL1__TEMP=(1100.0, Quality.BAD)), 0)
    assert [a.alarm_id for a in r.active] == ["CELL1.TEMP.BADPV"]
    r = mgr.step(snap(60, CELL1__TEMP=(650.0, Quality.UNCERTAIN)), 60)  # uncertain still drives
    assert {e.alarm_id for e in r.transitions} == {"CELL1.TEMP.HH", "CELL1.TEMP.HI", "CELL1.TEMP.BADPV"}
    r = mgr.step(snap(120, CELL1__TEMP=None), 120)  # missing tag = bad: HH/HI frozen active, BADPV again
    assert [e.alarm_id for e in r.transitions] == ["CELL1.TEMP.BADPV"]
    assert {a.alarm_id for a in r.active} >= {"CELL1.TEMP.HH", "CELL1.TEMP.HI"}


def test_discrete_and_external_alarms(line):
    cfg = AlarmsConfig.model_validate({**temp_alarms().model_dump(), "external": [
        {"id": "ADS.LAG.PRED_BT", "tag": "ADS.LAG.BREAKTHROUGH", "priority": 2}]})
    mgr = AlarmManager(cfg, line.tags)
    r = mgr.step(snap(0, CELL1__ANODE_EFFECT=1, ADS__LAG__BREAKTHROUGH=3.0), 0, {"ADS.LAG.PRED_BT": True})
    assert {a.alarm_id for a in r.active} == {"CELL1.ANODE_EFFECT.ON", "ADS.LAG.PRED_BT"}
    r = mgr.step(snap(1, CELL1__ANODE_EFFECT=0), 1)  # external not given: frozen
    assert [e.alarm_id for e in r.transitions] == ["CELL1.ANODE_EFFECT.ON"]
    with pytest.raises(KeyError, match="external"):
        mgr.step({}, 2, {"CELL1.TEMP.HI": True})


def test_flood_and_chattering_metrics(line):
    tags = [f"CELL{c}.{n}" for c in (1, 2) for n in ("TEMP", "VOLTAGE", "CURRENT", "HEATER")]
    cfg = AlarmsConfig(limit=[LimitAlarmConfig(tag=t, h_eng=1000.0) for t in tags],
                       positions=[OperatorPositionConfig(name="cells", units=["cell1", "cell2"]),
                                  OperatorPositionConfig(name="rest")])
    mgr = AlarmManager(cfg, line.tags)
    def at(t, raised=None):
        return {n: Sample(2000.0 if n == raised else 0.0, t) for n in tags}

    t = 0.0
    for k in range(12):  # activations at t = 0, 10, .., 110: > 10 per 10 min on position "cells"
        mgr.step(at(t, tags[k % 8]), t)
        mgr.acknowledge_all("op", t + 1)
        mgr.step(at(t + 5), t + 5)
        t += 10.0
    m = mgr.metrics(t)
    assert m.rate_per_window == {"cells": 12, "rest": 0} and m.flooded == ("cells",)
    assert "CELL1.TEMP.HI" not in m.chattering  # 2 activations (k = 0, 8), 80 s apart
    for k in range(3):  # CELL2.TEMP.HI thrice within 60 s (t = 120, 130, 140): chattering
        mgr.step(at(t, "CELL2.TEMP"), t)
        mgr.step(at(t + 5), t + 5)
        t += 10
    assert "CELL2.TEMP.HI" in mgr.metrics(t).chattering
    m = mgr.metrics(t + 700)
    assert m.flooded == () and m.chattering == () and m.chattered == ("CELL2.TEMP.HI",)
    # 15 activations; the flood lasts from the 11th (t = 100) until only 10 remain in the window,
    # when the one at t = 40 ages out (t = 640)
    assert m.time_in_flood_s["cells"] == pytest.approx(540.0) and m.peak_per_window["cells"] == 15
    assert m.total_activations == 15 and m.time_in_flood_s["rest"] == 0


def test_config_validation():
    with pytest.raises(ValidationError, match="l_eng .* < h_eng"):
        LimitAlarmConfig(tag="CELL1.TEMP", h_eng=500, l_eng=600)
    with pytest.raises(ValidationError, match="at least one"):
        LimitAlarmConfig(tag="CELL1.TEMP")
    with pytest.raises(ValidationError):
        LimitAlarmConfig(tag="CELL1.TEMP", h_eng=1, h_priority=5)
    with pytest.raises(ValueError, match="unknown tag NOPE"):
        ControlConfig(alarms=AlarmsConfig(limit=[LimitAlarmConfig(tag="NOPE", h_eng=1)])).check_tags([])


def test_heater_failure_on_twin_plant(line):
    """Temperature setpoint dropped to 400 degC (heater off): LO then LL with a predicted alarm first;
    setpoint restored, acknowledged, back to normal. ~4 plant-hours in a couple of seconds."""
    plant = TwinPlant(line)
    mgr = AlarmManager(temp_alarms(), line.tags)
    pred = PredictedAlarm(limit=500.0, direction="falling", window_s=900, horizon_s=900)
    first_pred = None
    assert plant.write({"CELL1.TEMP_SP": 400.0}).ok
    for _ in range(110):
        plant.advance(60.0)
        s = plant.snapshot()
        if first_pred is None and pred.update(plant.t, s["CELL1.TEMP"].value).alarm:
            first_pred = plant.t
        mgr.step(s, plant.t)
    lo = [e for e in mgr.journal if e.alarm_id == "CELL1.TEMP.LO"]
    assert lo[0].to_state == S.UNACK_ACTIVE and 1200 < lo[0].t < 2400 and lo[0].value < 500
    assert first_pred is not None and lo[0].t - 1200 <= first_pred < lo[0].t  # 5..20 min of warning
    assert "CELL1.TEMP.LL" in {a.alarm_id for a in mgr.active()}
    mgr.acknowledge_all("op1", plant.t)
    assert plant.write({"CELL1.TEMP_SP": 550.0}).ok
    for _ in range(140):
        plant.advance(60.0)
        mgr.step(plant.snapshot(), plant.t)
    assert states(mgr, "CELL1.TEMP.LO") == [(S.NORMAL, S.UNACK_ACTIVE), (S.UNACK_ACTIVE, S.ACK_ACTIVE),
                                            (S.ACK_ACTIVE, S.NORMAL)]
    assert mgr.active() == () and mgr.metrics(plant.t).chattered == ()
    assert max(mgr.metrics(plant.t).peak_per_window.values()) <= 2  # no flood from one upset


def shipped_control(line) -> ControlConfig:
    """The ``control:`` section of the shipped line."""
    return line.control


def test_shipped_config_quiet_in_normal_operation(line):
    control = shipped_control(line)
    control.check_tags(line.tags)
    plant = TwinPlant(line)
    mgr = AlarmManager(control.alarms, line.tags)
    guard = Guard(control.guard, line.tags, target="twin", session="standalone")
    pred = PredictedAlarm(limit=4.0, direction="rising", window_s=3600, horizon_s=1800)
    cell_pred = PredictedAlarm(limit=500.0, direction="falling", window_s=900, horizon_s=900)
    for _ in range(240):
        plant.advance(60.0)
        s = plant.snapshot()
        conditions = {"ADS.LAG.BREAKTHROUGH.PRED": pred.update(s["ADS.LAG.BREAKTHROUGH"].source_time,
                                                               s["ADS.LAG.BREAKTHROUGH"].value).alarm,
                      "CELL1.TEMP.PRED_LO": cell_pred.update(plant.t, s["CELL1.TEMP"].value).alarm}
        r = mgr.step(s, plant.t, conditions)
        g = guard.step({"CELL1.CURRENT_SP": 160.0, "SX.ORG.FLOW_SP": 34.0, "CELL1.TAP_SP": 12.0}, s, plant.t)
        assert g.to_write == {} and set(g.advisory) == {"CELL1.CURRENT_SP", "SX.ORG.FLOW_SP"}
        assert g.held == {"CELL1.TAP_SP": "loop <default> in manual"}
    assert mgr.journal == [] and r.metrics.total_activations == 0 and r.active == ()
    # one alarm per configured limit, per discrete tag, per external id, and one BADPV per tag
    # with a limit or discrete alarm (the external ones are the loop's, docs/control_loop.md)
    a = control.alarms
    n_limits = sum(sum(getattr(x, f) is not None for f in ("hh_eng", "h_eng", "l_eng", "ll_eng")) for x in a.limit)
    n_badpv = len({x.tag for x in a.limit} | {x.tag for x in a.discrete})
    assert len(mgr.defs) == n_limits + len(a.discrete) + n_badpv + len(a.external)
    assert len(a.external) >= 20 and n_limits >= 30
