"""The adaptive synchronisation step (``simulation.max_sync_step_s``) against the 60 s grid.

The stream-joined blocks (carousel, eluate tank, cascade) take steps of up to five grid steps;
the cells, distillation and every sequence decision keep the grid. Over a plant day of the
shipped line the element balance must still close, every plant event (carousel switch, taps,
distillation batches) must come at the same plant time, and the KPIs must stay within 0.01
percentage points of the grid's; a write must apply from its own time.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from test_malfunction_balance import (
    CASES,
    END_S,
    HOLD_S,
    ONSET_S,
    RAMP_S,
    worst_balance,
)

from pilot_config import default_config_path, load_config
from pilot_config.plant import SimulationConfig
from twin.kpis import compute_kpis
from twin.plant import TwinPlant

TOP = 300.0


def adaptive(config, top: float = TOP):
    return config.model_copy(update={"simulation": config.simulation.model_copy(update={"max_sync_step_s": top})})


@pytest.fixture(scope="module")
def adaptive_day():
    plant = TwinPlant(adaptive(load_config(default_config_path())))
    plant.advance(24 * 3600.0)
    return plant


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def test_the_element_balance_closes_with_the_adaptive_step(adaptive_day):
    errors = adaptive_day.mass_balance()
    assert set(errors) == set(adaptive_day.species())
    assert all(abs(e) < 1e-9 for e in errors.values()), errors


def test_the_stream_joined_units_took_long_steps_and_the_cells_the_grid(adaptive_day, shipped_day):
    fs, grid = adaptive_day.flowsheet, shipped_day.flowsheet
    assert fs.joined() == ("adsorption", "eluate_tank", "extraction")
    assert all(t == pytest.approx(24 * 3600.0) for t in fs.t_of.values())  # advance ends synchronised
    # the cascade's integrator runs one step per synchronisation step on the grid when steady
    assert fs.blocks["extraction"].stepper.stats.steps < 0.5 * grid.blocks["extraction"].stepper.stats.steps
    assert fs.blocks["eluate_tank"].stepper.stats.steps < 0.5 * grid.blocks["eluate_tank"].stepper.stats.steps
    assert fs.blocks["cell1"].stepper.stats.steps == grid.blocks["cell1"].stepper.stats.steps


def test_every_event_comes_at_the_same_plant_time(adaptive_day, shipped_day):
    grid = [(e.t, e.unit, e.text.split(" (")[0]) for e in shipped_day.events]
    assert [(e.t, e.unit, e.text.split(" (")[0]) for e in adaptive_day.events] == grid
    texts = " | ".join(e[2] for e in grid)
    assert "carousel switch" in texts and "tapped" in texts and "batch charged" in texts, texts


def test_the_kpis_stay_within_a_hundredth_of_a_point(adaptive_day, shipped_day):
    a, g = _numbers(compute_kpis(adaptive_day)), _numbers(compute_kpis(shipped_day))
    assert set(a) == set(g)
    pct = {k: abs(a[k] - g[k]) for k in g if "_pct" in k}  # incl. adsorption_rejection_pct.<element>
    assert len(pct) >= 15 and max(pct.values()) < 0.01, sorted(pct.items(), key=lambda kv: -kv[1])[:3]
    kg = {k: abs(a[k] - g[k]) / max(abs(g[k]), 1e-3) for k in g if k.endswith("_kg")}
    assert max(kg.values()) < 1e-2, sorted(kg.items(), key=lambda kv: -kv[1])[:3]


def test_a_write_applies_from_its_own_time():
    """The cascade feed pump changed at 1260 s (on the grid, between two analyser samples): the
    tank's pumped volume at 3600 s is Q0·1260 + Q1·2340 in both modes."""
    config = load_config(default_config_path())
    q0_L_h = config.eluate_tank.cascade_feed_L_per_h
    q1_L_h = q0_L_h * 0.8
    pumped = {}
    for mode, cfg in (("grid", config), ("adaptive", adaptive(config))):
        plant = TwinPlant(cfg)
        plant.advance(1260.0, sync=False)
        tank = plant.flowsheet.blocks["eluate_tank"]
        if mode == "adaptive":
            assert plant.flowsheet.t_of["eluate_tank"] < 1260.0  # left behind between samples
        assert plant.write({"TANK.OUT.FLOW_SP": q1_L_h}).accepted
        assert plant.flowsheet.t_of["eluate_tank"] == pytest.approx(1260.0)  # brought up first
        plant.advance(3600.0 - 1260.0)
        pumped[mode] = tank.x[tank.state_index["cum_out_volume"]] * 1000.0  # L
    expected = (q0_L_h * 1260.0 + q1_L_h * 2340.0) / 3600.0
    assert pumped["grid"] == pytest.approx(expected, rel=1e-6)
    assert pumped["adaptive"] == pytest.approx(pumped["grid"], rel=1e-9)


def test_the_snapshot_between_steps_is_the_latest_scan():
    plant = TwinPlant(adaptive(load_config(default_config_path())))
    plant.advance(3600.0 + 120.0, sync=False)  # 3600 s is an analyser sample: a step ends there
    level, cell_temp = plant.snapshot()["TANK.LEVEL"], plant.snapshot()["CELL1.TEMP"]
    assert level.source_time == pytest.approx(3600.0)
    assert cell_temp.source_time == pytest.approx(3720.0)  # the cells keep the grid
    plant.sync()
    assert plant.snapshot()["TANK.LEVEL"].source_time == pytest.approx(3720.0)


def test_the_config_takes_a_whole_multiple_of_the_grid():
    assert SimulationConfig(max_sync_step_s=300).max_sync_step_s == 300
    with pytest.raises(ValidationError, match="max_sync_step_s .*whole multiple of sync_step_s"):
        SimulationConfig(max_sync_step_s=90)
    with pytest.raises(ValidationError, match="max_sync_step_s"):
        SimulationConfig(max_sync_step_s=30)
    assert not TwinPlant(adaptive(load_config(default_config_path()), 60.0)).adaptive


def test_a_served_session_keeps_the_fixed_step():
    served = adaptive(load_config(default_config_path())).served()
    assert served.simulation.max_sync_step_s is None and served.simulation.sync_step_s == 1.0


def test_a_malfunction_ramping_on_a_stream_joined_unit_applies_at_its_own_times():
    """A feed swing into the cascade ramps in and out on the grid's steps: with the adaptive step
    the cascade is brought up to each change first, so the balance closes and what reached the
    cascade matches the grid's run."""
    from twin.malfunctions import Malfunction, inject

    config = load_config(default_config_path())
    fed = {}
    for mode, cfg in (("grid", config), ("adaptive", adaptive(config))):
        plant = TwinPlant(cfg)
        inject(plant, Malfunction(kind="feed_swing", target="cascade", severity=0.5, onset_s=600.0,
                                  ramp_s=600.0, duration_s=1200.0))
        plant.advance(4200.0)
        assert max(abs(e) for e in plant.mass_balance().values()) < 1e-9
        fed[mode] = plant.ledger.upset_in.copy()
    assert abs(fed["grid"]).max() > 0
    assert fed["adaptive"] == pytest.approx(fed["grid"], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kind,target,severity", CASES, ids=[f"{k}@{t}" for k, t, _ in CASES])
def test_every_malfunction_conserves_mass_with_the_adaptive_step(kind, target, severity):
    """As closely as on the grid (whose worst, crud entrainment's, is ~4e-9), within 1e-10."""
    from twin.malfunctions import Malfunction, inject

    worst = {}
    config = load_config(default_config_path())
    for mode, cfg in (("grid", config), ("adaptive", adaptive(config))):
        plant = TwinPlant(cfg)
        inject(plant, Malfunction(kind=kind, target=target, severity=severity, onset_s=ONSET_S,
                                  ramp_s=RAMP_S, duration_s=HOLD_S))
        during = worst_balance(plant, ONSET_S + HOLD_S + RAMP_S)
        assert not plant.faults.active
        after = worst_balance(plant, END_S)
        worst[mode] = max(*during.values(), *after.values())
    assert worst["adaptive"] < worst["grid"] + 1e-10, worst
