"""ControlLoop: composition, modes, the session rule, determinism, deadline holds, refused writes,
alarms and operator actions, the cells' remote mode in the twin, and `simulate --control`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from controllers.guard import LiveWriteForbidden
from controllers.loop import ControlLoop
from pilot.app import simulate
from pilot.historian.sqlite import history_path, list_tags
from pilot_config import load_config
from twin.plant import TwinPlant
from twin.signals import Quality, Sample, WriteResult

TICK = 60.0
AUTO = {"cell1": "auto", "cell2": "auto", "cascade": "auto"}


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def snapshots(config):
    plant = TwinPlant(config)
    out = []
    for _ in range(8):
        plant.advance(TICK)
        out.append((plant.snapshot(), plant.t))
    return out


def test_units_modes_and_the_session_rule(config):
    loop = ControlLoop(config, modes={"cell1": "auto"})
    assert [u.name for u in loop.units] == ["cell1", "cell2", "cascade", "carousel"]
    assert loop.modes["cell1"] == "auto" and loop.modes["cascade"] == "advisory"  # YAML default kept
    assert loop.deadline_s == pytest.approx(0.2 * config.control.guard.control_period_s)
    with pytest.raises(LiveWriteForbidden):
        ControlLoop(config, target="live", session="training")
    with pytest.raises(LiveWriteForbidden):
        ControlLoop(config, target="live", session="standalone")
    ControlLoop(config, target="live", session="live", carousel=False)  # allowed
    with pytest.raises(KeyError, match="unknown loop"):
        ControlLoop(config, modes={"nope": "auto"}, carousel=False)
    cascade = ControlLoop(config, carousel=False).units[2].mpc
    assert cascade.rates[0] == pytest.approx(0.01) and cascade.u_max[0] <= 80.0  # guard limits in the plan


def test_advisory_shows_guarded_proposals_and_writes_nothing(config, snapshots):
    loop = ControlLoop(config, modes={"cell1": "advisory", "cell2": "advisory", "cascade": "advisory"},
                       carousel=False)
    for snap, t in snapshots[:2]:
        r = loop.step(snap, t)
    assert r.writes == {}
    assert {"CELL1.CURRENT_SP", "CELL1.SALT_FEED_SP", "CELL1.HEATER_SP", "CELL1.REMOTE",
            "SX.ORG.FLOW_SP", "SX.SCRUB.FLOW_SP"} <= set(r.advisory)
    assert r.held == {}, r.held
    assert 0 <= r.advisory["CELL1.HEATER_SP"] <= 5.0 and 0 <= r.advisory["CELL1.SALT_FEED_SP"] <= 1198
    assert {"CELL1.CE.EST", "CELL1.SALT_TB.EST", "SX.KEX.EST", "SX.TB_PURITY.EST", "SX.FEED.DY_TB.EST"} <= set(r.published)
    kinds = {(p.measurement, p.tag) for p in r.points}
    assert ("estimate", "CELL1.CE.EST") in kinds and ("decision", "CELL1.SALT_FEED_SP.APPLIED") in kinds
    assert ("decision", "CELL1.SALT_FEED_SP.PROPOSED") in kinds and ("decision", "MPC.cell1.HELD") in kinds
    assert all(p.time_s == t for p in r.points)
    assert r.watchdog in (0, 1)


def test_same_inputs_give_the_same_outputs(config, snapshots):
    def run():
        loop = ControlLoop(config, modes=AUTO, mpc_deadline_s=None, timing_points=False, carousel=False)
        return [loop.step(s, t) for s, t in snapshots]

    a, b = run(), run()
    for x, y in zip(a, b):
        assert x.writes == y.writes and x.published == y.published and x.points == y.points
        assert x.proposals == y.proposals and x.alarms == y.alarms
    assert not any(p.tag.endswith(".SOLVE_MS") for p in a[-1].points)


def test_a_missed_deadline_holds_the_units_tags_with_the_reason(config, snapshots):
    loop = ControlLoop(config, modes=AUTO, mpc_deadline_s=1e-6, carousel=False)
    snap, t = snapshots[0]
    r = loop.step(snap, t)
    assert r.writes == {}
    for tag in ("CELL1.CURRENT_SP", "CELL1.REMOTE", "SX.ORG.FLOW_SP"):
        assert r.held[tag].startswith("MPC held") and "deadline" in r.held[tag]
    assert r.mpc["cell1"].held


def test_refused_writes_are_not_taken_as_applied(config, snapshots):
    loop = ControlLoop(config, modes=AUTO, carousel=False)
    snap, t = snapshots[0]
    r = loop.step(snap, t)
    assert "CELL1.SALT_FEED_SP" in r.writes
    loop.refused(WriteResult(accepted=(), refused={"CELL1.SALT_FEED_SP": "refused by the PLC: BadUserAccessDenied"}))
    assert "CELL1.SALT_FEED_SP" not in loop._applied and "CELL1.CURRENT_SP" in loop._applied
    assert "CELL1.SALT_FEED_SP" not in loop.guard._ref  # rate limit restarts from the read-back


def test_stale_input_holds_the_loop(config, snapshots):
    loop = ControlLoop(config, modes=AUTO, carousel=False)
    snap, t = snapshots[-1]
    old = dict(snap)
    old["CELL1.TEMP"] = dataclasses.replace(snap["CELL1.TEMP"], source_time=t - 10 * TICK)
    r = loop.step(old, t)
    assert "stale" in r.held["CELL1.SALT_FEED_SP"] and "CELL2.SALT_FEED_SP" in r.writes


def test_alarm_raised_recorded_and_acknowledged(config, snapshots):
    loop = ControlLoop(config, carousel=False)
    snap, t = snapshots[0]
    hot = {**snap, "CELL1.TEMP": Sample(620.0, t, Quality.GOOD)}
    r = loop.step(hot, t)
    assert "CELL1.TEMP.HI" in {e.alarm_id for e in r.raised}
    assert any(p.measurement == "alarm" and p.tag == "CELL1.TEMP.HI" and p.value == 1.0 for p in r.points)
    loop.alarms.acknowledge("CELL1.TEMP.HI", "alice", t)
    snap2, t2 = snapshots[1]
    r2 = loop.step({**snap2, "CELL1.TEMP": Sample(620.0, t2, Quality.GOOD)}, t2)
    assert [(e.alarm_id, e.to_state.value, e.operator) for e in r2.alarms] == [
        ("CELL1.TEMP.HI", "acknowledged-active", "alice")]
    assert [(p.tag, p.value) for p in r2.points if p.measurement == "alarm"] == [
        ("CELL1.TEMP.HI.STATE", 2.0)]  # an ack is a state point, not a raise/clear


def test_cell_remote_mode_follows_written_setpoints_and_default_is_unchanged(config):
    plant = TwinPlant(config)
    cell = plant.flowsheet.blocks["cell1"]
    feed = cell.input_index["salt_feed_rate"]
    plant.advance(TICK)
    plant.write({"CELL1.SALT_FEED_SP": 500.0, "CELL1.HEATER_SP": 3.0})
    plant.advance(TICK)  # local: the supervisor overwrote both at its scan (after the step that used them)
    assert abs(cell.u[feed] * 572130.0 - 500.0) > 50.0
    plant.advance(TICK)
    assert abs(plant.snapshot()["CELL1.SALT_FEED_SP"].value - 500.0) > 50.0
    plant.write({"CELL1.REMOTE": 1.0, "CELL1.SALT_FEED_SP": 500.0, "CELL1.HEATER_SP": 3.0})
    plant.advance(5 * TICK)
    snap = plant.snapshot()
    assert snap["CELL1.SALT_FEED_SP"].value == pytest.approx(500.0)
    assert snap["CELL1.HEATER"].value == pytest.approx(3.0, abs=0.05)  # sensor (noise 0.01 kW)
    assert cell.u[feed] * 572130.0 == pytest.approx(500.0)
    plant.write({"CELL1.REMOTE": 0.0})
    plant.advance(TICK)  # back to local: bumpless, the PI starts from the heater power in effect
    assert plant.snapshot()["CELL1.HEATER"].value == pytest.approx(3.0, abs=0.3)


def test_simulate_with_the_loop_in_auto_records_and_summarises(config, tmp_path):
    res = simulate(config, 1800.0, tmp_path / "auto", make_plots=False, control="auto")
    c = res.summary["control"]
    assert c["ticks"] == 30 and c["ticks_with_holds"] == 0 and c["writes_refused"] == {}
    assert c["writes_accepted"] >= 30 * 10 and c["modes"]["cell1"] == "auto" and c["modes"]["carousel"] == "auto"
    assert c["tick_latency_ms"]["p50"] > 0 and c["tick_latency_ms"]["p99"] >= c["tick_latency_ms"]["p50"]
    tags = set(list_tags(history_path(tmp_path / "auto")))
    assert {"CELL1.CE.EST", "SX.ORG.FLOW_SP.APPLIED", "MPC.cell1.HELD", "CELL1.VOLTAGE"} <= tags
    off = simulate(config, 600.0, tmp_path / "off", make_plots=False)
    assert "control" not in off.summary
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["control"]["ticks"] == 30


def test_a_stopped_organic_pump_does_not_take_the_loop_down(caplog):
    """With the organic flow at zero the cascade has no steady state (its stage Jacobian is
    singular): the estimator keeps the map about the last steady state, says so once, and the loop
    goes on ticking through the trip."""
    import logging

    from pilot.historian.feed import parse_malfunction, simulated_run

    with caplog.at_level(logging.WARNING, logger="controllers.estimation_cascade"):
        batches = list(simulated_run(load_config(), 1800.0, epoch_s=1.8e9, seed=0,
                                     malfunction=parse_malfunction("pump_trip:1.0:5min")))
    decisions = [p for b in batches for p in (b if isinstance(b, list) else [b]) if p.measurement == "decision"]
    assert max(p.time_s for p in decisions) >= 1.8e9 + 1700  # ticks to the end, through the trip
    said = [r for r in caplog.records if "no steady state" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
