"""Molten-salt electrolysis cell: Faraday, Tb conservation, thermal balance, voltage terms,
anode effect, and config validation."""

import dataclasses
import math
import time

import numpy as np
import pytest
from pydantic import ValidationError

from pilot_config.base import FARADAY_C_PER_MOL, MOLAR_MASS_G_PER_MOL, SPECIES
from pilot_config.electrolysis import CellConfig
from twin.electrolysis import (
    ElectrolysisCell,
    add_salt,
    params_from_config,
    tap,
    tbcl3_kg_to_tb_mol,
)
from twin.integrate import advance
from twin.unit import Unit, index_map, named

M_TB_G = MOLAR_MASS_G_PER_MOL["Tb"]
S = index_map(ElectrolysisCell.state_names)
Y = index_map(ElectrolysisCell.output_names)
ELECTRODES_REF = 500.0 + 273.15


def cell_and_params(**overrides):
    cfg = CellConfig.model_validate({"name": "cell1", **overrides})
    return ElectrolysisCell("cell1"), params_from_config(cfg)


def constant_efficiency(eta=0.9):
    """Mass-transfer limit and back-reaction switched off: η = η_max exactly."""
    return {"efficiency": {"max_efficiency": eta, "mass_transfer_m_per_s": 10.0, "back_reaction_A_per_cm2": 0.0}}


def run(cell, x, u, p, seconds, dt=60.0, method="LSODA"):
    for k in range(int(round(seconds / dt))):
        x = advance(cell, k * dt, (k + 1) * dt, x, u, p, rtol=1e-7, atol=1e-10, method=method)
    return x


def test_is_a_unit_with_named_signals():
    cell, p = cell_and_params()
    assert isinstance(cell, Unit)
    y = named(cell.output_names, cell.outputs(0.0, cell.initial_state(p), cell.nominal_inputs(p, 150.0), p))
    for name in ("voltage", "current", "temperature", "salt_tb_fraction", "cathode_tb_fraction",
                 "current_efficiency", "power", "anode_effect", "deposition_rate", "specific_energy"):
        assert math.isfinite(y[name]), name
    assert y["temperature"] == pytest.approx(550.0 + 273.15)
    assert y["salt_tb_fraction"] == pytest.approx(0.05 * M_TB_G / (M_TB_G + 3 * 35.453), rel=1e-9)
    assert 3.0 < y["voltage"] < 5.0


@pytest.mark.parametrize("method", ["LSODA", "BDF"])
def test_faraday_at_constant_efficiency(method):
    cell, p = cell_and_params(**constant_efficiency(0.9))
    x0 = cell.initial_state(p)
    u = cell.nominal_inputs(p, 100.0)
    x = run(cell, x0, u, p, 3600.0, method=method)
    deposited_g = x[S["cum_deposited_Tb"]] * M_TB_G
    expected_g = 0.9 * 100.0 * 3600.0 * M_TB_G / (3 * FARADAY_C_PER_MOL)
    assert deposited_g == pytest.approx(expected_g, rel=5e-3)
    assert deposited_g == pytest.approx(178.0, abs=0.5)  # 100 A at 0.9 for 1 h
    assert (x[S["cathode_Tb"]] - x0[S["cathode_Tb"]]) * M_TB_G == pytest.approx(expected_g, rel=5e-3)
    assert (x0[S["salt_Tb"]] - x[S["salt_Tb"]]) * M_TB_G == pytest.approx(expected_g, rel=5e-3)
    assert x[S["cum_charge"]] == pytest.approx(100.0 * 3600.0, rel=1e-6)
    y = cell.outputs(0.0, x, u, p)
    assert y[Y["current_efficiency"]] == pytest.approx(0.9, rel=1e-9)


def test_tb_balance_closes_through_feed_taps_additions_and_idle():
    cell, p = cell_and_params()
    x = x0 = cell.initial_state(p)
    held0 = x0[S["salt_Tb"]] + x0[S["cathode_Tb"]]
    u = cell.nominal_inputs(p, 180.0)
    u[2] = 3e-4  # below the deposition rate: the salt depletes slowly
    x = run(cell, x, u, p, 4 * 3600.0)
    x, tapped_tb, tapped_metal = tap(x, p)
    assert tapped_tb > 1.0 and tapped_metal == pytest.approx(p.fresh_metal_mol)
    assert x[S["cathode_Tb"]] == 0.0
    x = add_salt(x, tbcl3_kg_to_tb_mol(0.5))
    x = run(cell, x, u, p, 3 * 3600.0)
    u[0] = 0.0  # idle: the back-reaction returns Tb from the cathode to the salt
    x_idle = run(cell, x, u, p, 3600.0)
    assert x_idle[S["cathode_Tb"]] < x[S["cathode_Tb"]]
    held = x_idle[S["salt_Tb"]] + x_idle[S["cathode_Tb"]]
    balance = held + x_idle[S["cum_tapped_Tb"]] - held0 - x_idle[S["cum_fed_Tb"]]
    assert abs(balance) / held0 < 1e-6
    assert x_idle[S["cum_fed_Tb"]] == pytest.approx(3e-4 * 8 * 3600.0 + tbcl3_kg_to_tb_mol(0.5), rel=1e-9)
    inv = cell.inventory(x_idle, p)
    assert inv[SPECIES.index("Tb")] == pytest.approx(held)
    assert np.count_nonzero(inv) == 1


def test_tap_and_add_salt_are_pure():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    x[S["cathode_Tb"]] = 5.0
    before = x.copy()
    tap(x, p)
    add_salt(x, 1.0)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="negative"):
        add_salt(x, -1.0)


def test_thermal_steady_state_matches_closed_form():
    cell, p = cell_and_params(**constant_efficiency(0.9))
    x = cell.initial_state(p)
    current, heater = 120.0, 1500.0
    u = np.array([current, heater, 0.9 * current / (3 * FARADAY_C_PER_MOL), 0.0])  # feed = deposition
    tau = p.heat_capacity / p.ua
    x = advance(cell, 0.0, 15 * tau, x, u, p, rtol=1e-9, atol=1e-10, method="LSODA")
    y = cell.outputs(0.0, x, u, p)
    t_ss = p.t_amb + (current * (y[Y["voltage"]] - p.u_tn) + heater) / p.ua
    assert y[Y["temperature"]] == pytest.approx(t_ss, abs=0.05)
    # idle with the heater alone: T_ss = T_amb + P/UA exactly; the ambient input overrides config
    u = np.array([0.0, heater, 0.0, 300.0])
    x = advance(cell, 0.0, 20 * tau, x, u, p, rtol=1e-9, atol=1e-10, method="LSODA")
    assert x[S["temperature"]] == pytest.approx(300.0 + heater / p.ua, abs=1e-3)


def test_voltage_is_the_sum_of_its_terms():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    y = named(cell.output_names, cell.outputs(0.0, x, u, p))
    terms = ("voltage.decomposition", "voltage.anode", "voltage.cathode", "voltage.ohmic", "voltage.anode_effect")
    assert y["voltage"] == pytest.approx(sum(y[k] for k in terms), rel=1e-12)
    assert 2.0 < y["voltage.decomposition"] < 3.5
    assert y["voltage.anode"] > 0 and y["voltage.cathode"] > 0
    r_T = p.r_ohm * (1.0 - p.r_tc * (x[S["temperature"]] - p.t_ref))
    assert y["voltage.ohmic"] == pytest.approx(150.0 * r_T, rel=1e-12)
    assert y["power"] == pytest.approx(150.0 * y["voltage"])
    # Nernst: halving the TbCl3 content raises E_dec by about RT/3F·ln 2
    x_half = x.copy()
    x_half[S["salt_Tb"]] /= 2.0
    e_half = cell.outputs(0.0, x_half, u, p)[Y["voltage.decomposition"]]
    rt3f = 8.314462618 * x[S["temperature"]] / (3 * FARADAY_C_PER_MOL)
    assert e_half - y["voltage.decomposition"] == pytest.approx(rt3f * math.log(2.0), rel=0.02)
    # at zero current the cell shows its decomposition potential and draws no power
    y0 = named(cell.output_names, cell.outputs(0.0, x, cell.nominal_inputs(p, 0.0), p))
    assert y0["voltage"] == pytest.approx(y0["voltage.decomposition"]) and y0["power"] == 0.0


def test_current_efficiency_falls_at_low_tb_and_low_current():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    x[S["cathode_Tb"]] = 2.0  # something to back-react
    eff = lambda xx, amps: cell.outputs(0.0, xx, cell.nominal_inputs(p, amps), p)[Y["current_efficiency"]]
    lean = x.copy()
    lean[S["salt_Tb"]] *= 0.25
    assert eff(x, 150.0) > 0.8
    assert eff(lean, 150.0) < eff(x, 150.0) - 0.2  # mass-transfer limit i_lim = 3F k_m C
    assert eff(x, 20.0) < eff(x, 150.0)  # the back-reaction weighs more at low current
    assert eff(x, 150.0) <= p.eta_max


def test_anode_effect_sudden_rise_and_hysteresis():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    y = cell.outputs(0.0, x, u, p)
    assert y[Y["anode_current_density"]] < y[Y["critical_current_density"]]
    v_normal = y[Y["voltage"]]
    x[S["salt_Tb"]] *= 0.15  # depleted melt: the critical current density falls below 1 A/cm2
    y = cell.outputs(0.0, x, u, p)
    assert y[Y["anode_current_density"]] > y[Y["critical_current_density"]]
    x_ae = run(cell, x, u, p, 300.0)
    y_ae = cell.outputs(0.0, x_ae, u, p)
    assert y_ae[Y["anode_effect"]] > 0.99
    assert y_ae[Y["voltage"]] - v_normal > 0.8 * p.ae_dU
    # slightly below the critical density the film holds (hysteresis) ...
    i_crit = y_ae[Y["critical_current_density"]]
    u_hold = cell.nominal_inputs(p, 0.9 * i_crit * p.anode_area)
    assert cell.outputs(0.0, run(cell, x_ae, u_hold, p, 300.0), u_hold, p)[Y["anode_effect"]] > 0.99
    # ... and cutting the current well below it quenches the anode effect
    u_cut = cell.nominal_inputs(p, 0.6 * i_crit * p.anode_area)
    assert cell.outputs(0.0, run(cell, x_ae, u_cut, p, 600.0), u_cut, p)[Y["anode_effect"]] < 0.01


def test_tap_grade_and_specific_energy():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    u[1] = 2700.0
    x = run(cell, x, u, p, 2 * 3600.0)
    y = named(cell.output_names, cell.outputs(0.0, x, u, p))
    w = x[S["cathode_Tb"]] * M_TB_G / (x[S["cathode_Tb"]] * M_TB_G + x[S["cathode_metal"]] * 65.38)
    assert y["cathode_tb_fraction"] == pytest.approx(w)
    assert y["specific_energy"] == pytest.approx(x[S["cum_energy"]] / (x[S["cum_deposited_Tb"]] * M_TB_G / 1000))
    # U·3F/(η·M_Tb) ≈ 3.4 V · 2.0 MJ/(kg·V) / 0.9 ≈ 2 kWh/kg Tb (DC energy only)
    assert 1.5 < y["specific_energy"] / 3.6e6 < 3.0
    assert p.tap_fraction == pytest.approx(0.10)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"temperature_setpoint_C": 1200}, "temperature_setpoint_C"),
        ({"temperature_min_C": 410, "temperature_setpoint_C": 415}, "melting point"),
        ({"electrolyte": {"melt_mass_kg": -1}}, "melt_mass_kg"),
        ({"current_setpoint_A": 300}, "max_current_A"),
        ({"efficiency": {"max_efficiency": 1.2}}, "max_efficiency"),
        ({"cathode": {"metal": "Pb"}}, "metal"),
        ({"anode_effect": {"critical_current_density_A_per_cm2": 0}}, "critical_current_density_A_per_cm2"),
        ({"heater_W": 10}, "heater_W"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValidationError, match=field):
        CellConfig.model_validate({"name": "cell1", **overrides})


def test_one_plant_day_in_60_s_steps_is_cheap():
    """Budget: well under 0.5 s of CPU per cell per plant-day (measured ~0.2-0.3 s with LSODA)."""
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    u[1], u[2] = 2700.0, 4.5e-4
    t0 = time.process_time()
    run(cell, x, u, p, 86400.0, method=cell.preferred_method)
    assert time.process_time() - t0 < 1.0  # generous: the machine is shared


def test_parameters_can_be_faulted_without_rebuilding():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    v = cell.outputs(0.0, x, u, p)[Y["voltage"]]
    worn = dataclasses.replace(p, r_ohm=2 * p.r_ohm)
    v_worn = cell.outputs(0.0, x, u, worn)[Y["voltage"]]
    assert v_worn - v == pytest.approx(cell.outputs(0.0, x, u, p)[Y["voltage.ohmic"]], rel=1e-9)
