"""Electrolysis cell below its liquidus: latent heat (arrest at the liquidus, enthalpy conserved),
no ionic conduction in the frozen salt (the rectifier reaches its voltage limit, the current
collapses), a frozen Zn cathode that takes no Tb, and the charge that does not reduce Tb3+
(Li co-deposited in the alloy, back-reaction) with the anode's Cl2, against closed forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.integrate import solve_ivp

from pilot_config import load_config
from pilot_config.base import FARADAY_C_PER_MOL as F
from pilot_config.electrolysis import CellConfig
from twin.electrolysis import (
    M_LI,
    M_TB,
    ElectrolysisCell,
    at_temperature,
    params_from_config,
    tap,
)
from twin.integrate import advance
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant
from twin.unit import index_map

S = index_map(ElectrolysisCell.state_names)
Y = index_map(ElectrolysisCell.output_names)
C0 = 273.15


def cell_and_params(**overrides):
    cfg = CellConfig.model_validate({"name": "cell1", **overrides})
    return ElectrolysisCell("cell1"), params_from_config(cfg)


def enthalpy(x, p) -> float:
    """H = (m·cp + C_vessel)·T + L_s·f_s + L_c·n_m·f_c (J, up to a constant)."""
    return (p.heat_capacity * x[S["temperature"]] + p.melt_latent * x[S["melt_liquid"]]
            + p.metal_latent * x[S["cathode_metal"]] * x[S["cathode_liquid"]])


def test_shipped_parameters_and_their_sources():
    _, p = cell_and_params()
    assert p.t_liquidus == pytest.approx(352.0 + C0) and p.t_metal == pytest.approx(419.5 + C0)
    # Korin & Soifer (1997): 11.8 kJ/mol at the eutectic, 55.74 g/mol
    assert p.melt_latent / 50.0 == pytest.approx(11.8e3 / 55.74e-3, rel=5e-3)
    assert p.metal_latent == pytest.approx(7068.0)  # Zn, CRC
    assert p.u_max == 10.0
    for line in (load_config(),):
        assert all(c.rectifier.voltage_limit_V == 10.0 for c in line.electrolysis.cells)
    with pytest.raises(ValidationError, match="voltage_limit_V"):
        CellConfig.model_validate({"name": "cell1", "rectifier": {"voltage_limit_V": 0}})
    with pytest.raises(ValidationError, match="fusion_enthalpy_kJ_per_kg"):
        CellConfig.model_validate({"name": "cell1", "electrolyte": {"fusion_enthalpy_kJ_per_kg": -1}})


def test_arrest_at_the_liquidus_lasts_as_long_as_the_latent_heat_takes():
    """Idle cell, heater off: the melt holds within its freezing range while it releases L·m;
    closed form t = (C·ΔT_band + L·Δf)/(UA·(T − T_amb)) over the band 0.01 < f_s < 0.99."""
    cell, p = cell_and_params()
    x0 = at_temperature(cell.initial_state(p), 365.0 + C0, p)  # the Zn pool is already frozen
    u = np.array([0.0, 0.0, 0.0, p.t_amb])

    def band_time(par):
        x, t, inside, temps = x0.copy(), 0.0, 0.0, []
        while x[S["temperature"]] > 330.0 + C0:
            x = advance(cell, t, t + 20.0, x, u, par, rtol=1e-8, atol=1e-10, method="LSODA")
            t += 20.0
            f = cell.outputs(t, x, u, par)[Y["liquid_fraction"]]
            if 0.01 < f < 0.99:
                inside += 20.0
                temps.append(x[S["temperature"]])
        return inside, np.array(temps)

    inside, temps = band_time(p)
    z = np.roots([-2.0, 3.0, 0.0, -0.99])  # smoothstep = 0.99 and 0.01
    z_hi = float(next(r.real for r in z if 0 < r.real < 1 and abs(r.imag) < 1e-12))
    band = (2 * z_hi - 1.0) * p.melt_range  # symmetric: z_lo = 1 − z_hi
    q = p.ua * (p.t_liquidus - 0.5 * p.melt_range - p.t_amb)
    expected = (p.heat_capacity * band + 0.98 * p.melt_latent) / q
    assert inside == pytest.approx(expected, rel=0.01)
    assert inside > 1.5 * 3600.0  # an arrest of hours, as a thermocouple shows it
    assert temps.min() >= p.t_liquidus - p.melt_range and temps.max() <= p.t_liquidus
    no_latent, _ = band_time(dataclasses.replace(p, melt_latent=0.0))
    assert no_latent < 0.1 * inside  # without the latent heat the range is crossed in minutes


def test_enthalpy_is_conserved_through_freezing_and_thawing():
    """∫(P − UA·(T − T_amb))dt = ΔH across both phase changes, cooling and heating back."""
    cell, p = cell_and_params()
    x = cell.initial_state(p)

    def run(x, heater, seconds):
        u = np.array([0.0, heater, 0.0, p.t_amb])

        def rhs(t, z):
            q = heater - p.ua * (z[S["temperature"]] - p.t_amb)
            return np.append(cell.derivatives(t, z[:-1], u, p), q)

        sol = solve_ivp(rhs, (0.0, seconds), np.append(x, 0.0), method="LSODA", rtol=1e-9, atol=1e-9,
                        max_step=120.0)
        return sol.y[:-1, -1], sol.y[-1, -1]

    h0 = enthalpy(x, p)
    cold, q_out = run(x, 0.0, 16 * 3600.0)
    assert cold[S["temperature"]] < p.t_liquidus - p.melt_range - 20.0  # through both arrests
    assert enthalpy(cold, p) - h0 == pytest.approx(q_out, rel=1e-5)
    warm, q_in = run(cold, p.heater_max, 6 * 3600.0)
    assert warm[S["temperature"]] > p.t_metal + 20.0
    assert enthalpy(warm, p) - enthalpy(cold, p) == pytest.approx(q_in, rel=1e-5)
    latent = p.melt_latent + p.metal_latent * x[S["cathode_metal"]]
    assert latent > 0.1 * abs(q_out)  # the latent part is not lost in the tolerance


def test_frozen_salt_drives_the_rectifier_to_its_voltage_limit():
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    y = cell.outputs(0.0, x, u, p)
    assert y[Y["voltage_limited"]] == 0.0 and y[Y["current"]] == 150.0 and y[Y["voltage"]] < p.u_max
    # the same cell with a lower compliance: U(I) = U_max at a current the model itself confirms
    low = dataclasses.replace(p, u_max=y[Y["voltage"]] - 0.3)
    y_low = cell.outputs(0.0, x, u, low)
    assert y_low[Y["voltage_limited"]] == 1.0 and y_low[Y["voltage"]] == pytest.approx(low.u_max, abs=1e-8)
    assert 0.0 < y_low[Y["current"]] < 150.0
    u_at = u.copy()
    u_at[0] = y_low[Y["current"]]
    assert cell.outputs(0.0, x, u_at, p)[Y["voltage"]] == pytest.approx(low.u_max, abs=1e-7)
    # below the decomposition voltage nothing flows
    assert cell.outputs(0.0, x, u, dataclasses.replace(p, u_max=2.0))[Y["current"]] == 0.0
    # frozen salt: R rises by 1/g_solid and the current collapses to (U_max − U(0+))/R_solid
    x_cold = at_temperature(x, p.t_liquidus - p.melt_range - 1.0, p)
    y_cold = cell.outputs(0.0, x_cold, u, p)
    assert y_cold[Y["liquid_fraction"]] == 0.0 and y_cold[Y["voltage_limited"]] == 1.0
    assert y_cold[Y["voltage"]] == pytest.approx(p.u_max, abs=1e-8)
    assert 0.0 < y_cold[Y["current"]] < 0.05
    r_solid = y_cold[Y["voltage.ohmic"]] / y_cold[Y["current"]]
    f_r = 1.0 - p.r_tc * (x_cold[S["temperature"]] - p.t_ref)
    assert r_solid == pytest.approx(p.r_ohm * f_r / p.g_solid, rel=1e-9)


def test_faraday_closes_on_tb_li_and_back_reaction():
    """Every coulomb: 3F·(Tb deposited + Tb re-oxidised) + F·Li; Cl2 = Q/2F; closed forms at
    constant efficiency (back-reaction = (1 − η)·Q/3F) and on a frozen cathode (all Li)."""
    cell, p = cell_and_params(efficiency={"max_efficiency": 0.9, "mass_transfer_m_per_s": 10.0,
                                          "back_reaction_A_per_cm2": 0.0})
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 100.0)
    for k in range(60):
        x = advance(cell, 60.0 * k, 60.0 * (k + 1), x, u, p, rtol=1e-8, atol=1e-10, method="LSODA")
    q = x[S["cum_charge"]]
    assert q == pytest.approx(100.0 * 3600.0, rel=1e-7)
    assert x[S["cum_back_Tb"]] == pytest.approx(0.1 * q / (3 * F), rel=1e-6)
    assert x[S["cum_Li"]] < 1e-9 * q / F
    # frozen Zn pool (between its melting point and the salt's liquidus): no Tb taken, all Li
    x = at_temperature(cell.initial_state(p), 400.0 + C0, p)
    u = np.array([100.0, p.ua * (400.0 + C0 - p.t_amb) - 100.0 * 1.5, 0.0, p.t_amb])
    for k in range(60):
        x = advance(cell, 60.0 * k, 60.0 * (k + 1), x, u, p, rtol=1e-8, atol=1e-10, method="LSODA")
    assert p.t_liquidus < x[S["temperature"]] < p.t_metal - p.metal_range
    y = cell.outputs(0.0, x, u, p)
    assert y[Y["cathode_liquid_fraction"]] == 0.0 and y[Y["current_efficiency"]] < 1e-5
    assert x[S["cum_Li"]] == pytest.approx(x[S["cum_charge"]] / F, rel=1e-5)
    li_kg, alloy_kg = x[S["cathode_Li"]] * M_LI, x[S["cathode_metal"]] * p.metal_molar_mass
    assert y[Y["cathode_li_fraction"]] == pytest.approx(li_kg / (li_kg + alloy_kg + x[S["cathode_Tb"]] * M_TB))
    # the shipped cell through a freeze and a thaw, with the mass-transfer limit and back-reaction
    cell, p = cell_and_params()
    x = cell.initial_state(p)
    u = cell.nominal_inputs(p, 150.0)
    u[2], hold = 4.5e-4, u[1]
    for k in range(14 * 60):
        u[1] = hold if k < 60 else (0.0 if k < 10 * 60 else p.heater_max)  # heater lost for 9 h
        x = advance(cell, 60.0 * k, 60.0 * (k + 1), x, u, p, rtol=1e-7, atol=1e-10, method="LSODA")
        if k == 7 * 60:
            x, tb, _ = tap(x, p)
            assert tb > 0 and x[S["cathode_Li"]] == 0.0 and x[S["cum_Li"]] > 0.1  # the Li left with the alloy
    q = x[S["cum_charge"]]
    booked = 3 * F * (x[S["cum_deposited_Tb"]] + x[S["cum_back_Tb"]]) + F * x[S["cum_Li"]]
    assert booked == pytest.approx(q, rel=1e-9)
    assert x[S["cum_Cl2"]] == pytest.approx(q / (2 * F), rel=1e-9)
    assert 0.05 < F * x[S["cum_Li"]] / q < 0.6  # the frozen-cathode hours show as Li


def test_heater_failure_freezes_the_cell_and_a_restart_thaws_it():
    """The shipped line, heater of cell2 lost for 8 h, current setpoint unchanged (150 A)."""
    line = load_config()
    plant = TwinPlant(line, seed=0)
    onset, lost = 600.0, 8 * 3600.0
    inject(plant, Malfunction(kind="heater_failure", target="cell2", onset_s=onset, severity=1.0, duration_s=lost))
    p = plant.flowsheet.blocks["cell2"].p
    names = ("temperature", "liquid_fraction", "cathode_liquid_fraction", "current", "voltage",
             "voltage_limited", "current_efficiency", "cl2_rate")
    tr = {n: [] for n in names}
    seen = {"CELL2.V_LIMIT": [], "CELL2.CURRENT": []}
    for _ in range(12 * 60):
        plant.advance(60.0)
        for n in names:
            tr[n].append(plant.signal(f"cell2.{n}"))
        snap = plant.snapshot()
        for n in seen:
            seen[n].append(snap[n].value)
    tr = {n: np.array(v) for n, v in tr.items()}
    t = 60.0 * np.arange(1, 12 * 60 + 1)
    back = t > onset + lost
    # the Zn pool freezes first: the cathode stops taking Tb while the salt is still liquid
    zn = np.flatnonzero(tr["cathode_liquid_fraction"] < 1e-3)[0]
    assert tr["liquid_fraction"][zn] > 0.999 and tr["current_efficiency"][zn] < 0.02
    assert tr["temperature"][zn] < p.t_metal
    # arrest at the liquidus while the latent heat goes: at least L·m / (UA·(T_liq − T_amb))
    mushy = (tr["liquid_fraction"] > 0.01) & (tr["liquid_fraction"] < 0.99) & ~back
    arrest = 60.0 * np.count_nonzero(mushy)
    assert arrest >= p.melt_latent * 0.98 / (p.ua * (p.t_liquidus - p.t_amb))
    assert np.all(np.abs(tr["temperature"][mushy] - (p.t_liquidus - 0.5 * p.melt_range)) <= 0.5 * p.melt_range)
    # frozen: the rectifier at its voltage limit, the current gone, no Cl2
    frozen = (tr["liquid_fraction"] < 1e-4) & ~back
    assert np.count_nonzero(frozen) > 60
    assert np.all(tr["voltage_limited"][frozen] == 1.0)
    assert np.allclose(tr["voltage"][frozen], p.u_max, atol=1e-6)
    assert tr["current"][frozen].max() < 0.05 and tr["cl2_rate"][frozen].max() < 1e-6
    v_limit, current = np.array(seen["CELL2.V_LIMIT"]), np.array(seen["CELL2.CURRENT"])
    assert np.all(v_limit[frozen] == 1.0) and np.median(current[frozen]) < 1.0  # what the operator sees
    # heater back: the heat-up returns the latent heat before any current flows again
    restart = np.flatnonzero(back & (tr["current"] > 140.0))[0]
    heat_up = t[restart] - (onset + lost)
    assert heat_up > 0.5 * p.melt_latent / p.heater_max
    assert tr["liquid_fraction"][-1] > 0.999 and tr["cathode_liquid_fraction"][-1] > 0.999
    assert tr["current"][-1] == pytest.approx(150.0) and tr["voltage_limited"][-1] == 0.0
    assert tr["current_efficiency"][-1] > 0.8 and tr["temperature"][-1] > p.t_metal + 50.0
