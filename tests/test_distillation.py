"""Vacuum distillation: Hertz–Knudsen closed form, a full batch to spec, Tb conservation, config."""

import math
import time

import numpy as np
import pytest
from pydantic import ValidationError

from pilot_config.base import MOLAR_MASS_G_PER_MOL, SPECIES
from pilot_config.electrolysis import DistillationConfig
from twin.distillation import (
    PHASE_COOL,
    PHASE_HEAT,
    PHASE_HOLD,
    VacuumDistillation,
    charge,
    discharge,
    evaporation,
    params_from_config,
    phase_complete,
)
from twin.integrate import advance
from twin.unit import Unit, index_map

Y = index_map(VacuumDistillation.output_names)
M_ZN = MOLAR_MASS_G_PER_MOL["Zn"] / 1000.0
M_TB = MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
R = 8.314462618


def unit_and_params(**overrides):
    return VacuumDistillation("still"), params_from_config(DistillationConfig.model_validate(overrides))


def test_zn_vapour_pressure_law_matches_handbook_points():
    _, p = unit_and_params()
    for T, p_handbook in ((750.0, 1e2), (852.0, 1e3), (990.0, 1e4), (1185.0, 1e5)):
        assert math.exp(p.vp_a - p.vp_b / T) == pytest.approx(p_handbook, rel=0.03)
    assert p.vp_b / (p.vp_a - math.log(101325.0)) == pytest.approx(1180.0, abs=10.0)  # boils at 907 degC


def test_hertz_knudsen_closed_form_at_constant_temperature():
    unit, p = unit_and_params(hold_temperature_C=600.0)
    assert isinstance(unit, Unit)
    n0 = 300.0  # pure Zn: activity 1
    x = charge(unit.initial_state(p), 0.0, n0)
    x[2] = p.t_hold
    u = np.array([float(PHASE_HOLD)])
    dt, steps = 60.0, 30
    for k in range(steps):
        x = advance(unit, k * dt, (k + 1) * dt, x, u, p, rtol=1e-9, atol=1e-10, method="LSODA")
    T = p.t_hold
    p_sat = math.exp(p.vp_a - p.vp_b / T)
    rate = p.alpha * (p_sat - p.pressure) * math.sqrt(M_ZN / (2 * math.pi * R * T)) / M_ZN * p.area
    assert x[2] == pytest.approx(T, abs=1e-3)  # the furnace held the temperature
    assert n0 - x[1] == pytest.approx(rate * dt * steps, rel=1e-5)
    assert x[3] == pytest.approx(n0 - x[1], rel=1e-9)
    y = unit.outputs(0.0, x, u, p)
    assert y[Y["evaporation_rate"]] == pytest.approx(rate, rel=1e-5)
    assert y[Y["heater_power"]] == pytest.approx(p.ua * (T - p.t_amb) + rate * p.vp_b * R, rel=1e-4)


def test_alloying_lowers_metal_activity_and_vacuum_sets_a_floor():
    _, p = unit_and_params()
    T = 1173.15
    _, a_ideal, _ = evaporation(1.0, 99.0, T, params_from_config(DistillationConfig(metal_interaction_J_per_mol=0)))
    assert a_ideal == pytest.approx(0.99)
    rate, a, p_sat = evaporation(100.0, 1.0, T, p)
    assert a < 1.0 / 101.0 and rate > 0
    # once a·p_sat falls to the chamber pressure nothing more evaporates
    rate_floor, a_floor, _ = evaporation(100.0, 1e-3, T, p)
    assert a_floor * p_sat < p.pressure and rate_floor == 0.0


def run_batch(unit, p, x, dt=60.0):
    t, log = 0.0, {}
    for phase in (PHASE_HEAT, PHASE_HOLD, PHASE_COOL):
        u = np.array([float(phase)])
        start = t
        while True:
            x = advance(unit, t, t + dt, x, u, p, rtol=1e-7, atol=1e-10, method="LSODA")
            t += dt
            y = unit.outputs(t, x, u, p)
            log.setdefault("T_max", 0.0)
            log["T_max"] = max(log["T_max"], y[Y["temperature"]])
            if phase_complete(phase, y, p) or t - start > 24 * 3600:
                break
        log[phase] = (t - start, y.copy())
    return x, t, log


def test_batch_reaches_residual_spec_below_1000_C_in_hours_and_conserves_tb():
    unit, p = unit_and_params()
    tb0, zn0 = 2.22 / M_TB, 20.0 / M_ZN  # one tap: 10 wt% Tb in 20 kg Zn
    x0 = charge(unit.initial_state(p), tb0, zn0)
    t_cpu = time.process_time()
    x, t, log = run_batch(unit, p, x0)
    cpu = time.process_time() - t_cpu
    hold_s, y_hold = log[PHASE_HOLD]
    assert y_hold[Y["residual_metal_fraction"]] <= p.residual_spec
    assert log["T_max"] < 1000.0 + 273.15
    assert 1.0 * 3600 < t < 12.0 * 3600  # a batch takes hours
    assert hold_s < p.max_hold_s
    assert x[0] == tb0  # Tb does not evaporate
    assert x[1] + x[3] == pytest.approx(zn0, rel=1e-9)  # Zn: residual + evaporated = charged
    x_after, product_tb, residual = discharge(x)
    assert product_tb == tb0 and residual == pytest.approx(x[1])
    assert residual * M_ZN / (residual * M_ZN + product_tb * M_TB) <= p.residual_spec
    assert x_after[0] == 0.0 and x_after[1] == 0.0
    assert unit.inventory(x, p)[SPECIES.index("Tb")] == tb0
    assert x[4] > 0.0 and cpu < 2.0  # heater energy booked; cheap to simulate


def test_heat_up_follows_the_ramp_while_power_suffices():
    unit, p = unit_and_params()
    x = charge(unit.initial_state(p), 14.0, 300.0)
    x = advance(unit, 0.0, 1800.0, x, np.array([float(PHASE_HEAT)]), p, method="LSODA")
    assert x[2] - p.t_amb == pytest.approx(p.ramp * 1800.0, rel=0.02)


def test_charge_and_discharge_are_pure():
    unit, p = unit_and_params()
    x = unit.initial_state(p)
    before = x.copy()
    charge(x, 1.0, 2.0)
    discharge(x)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="negative"):
        charge(x, -1.0, 0.0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hold_temperature_C": 1000}, "hold_temperature_C"),
        ({"metal": "Mg"}, "vapour_pressure_A"),
        ({"evaporation_coefficient": 0}, "evaporation_coefficient"),
        ({"pressure_Pa": -1}, "pressure_Pa"),
        ({"charge": "fixed", "fixed_charge_kg": 100}, "crucible_capacity_kg"),
        ({"heat_up_rate": 5}, "heat_up_rate"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValidationError, match=field):
        DistillationConfig.model_validate(overrides)
