"""Contactor dynamics: the mixer's phase split follows the flows, settlers as cells in series
(dead time), and the stage-efficiency check of every section."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from jacobian_check import assert_jacobian_matches
from scipy import signal
from scipy.integrate import solve_ivp

from pilot_config import (
    ConfigError,
    conventional_config_path,
    default_config_path,
    load_config,
)
from pilot_config.base import L_PER_H, SPECIES, mg_per_L_to_mol_per_m3
from twin.extraction import Cascade, params_from_config
from twin.integrate import advance

FEED_MG = {"Dy": 1500, "Tb": 400, "Nd": 0.5, "Pr": 0.15, "Fe": 10, "Al": 2, "U": 0.2, "Th": 0.5}
FEED = np.array([mg_per_L_to_mol_per_m3(s, FEED_MG[s]) for s in SPECIES])


def _shipped(path=default_config_path(), **changes):
    cfg = load_config(path).extraction.model_copy(update=changes)
    p = params_from_config(cfg)
    return Cascade("sx", p), p


def _fed(c, u, dt, fed, x):
    """``fed`` plus the feed metal (mol per species) of a step of ``dt`` s."""
    ii = c.input_index
    return fed + u[ii["feed_flow"]] * u[ii["feed_Dy"]: ii["feed_Dy"] + len(SPECIES)] * dt


def _left(c, x):
    si = c.state_index
    return np.array([x[si[f"cum_raffinate_{s}"]] + x[si[f"cum_strip_{s}"]] for s in SPECIES])


# -- mixer phase ratio -----------------------------------------------------------------------
def test_the_mixer_phase_ratio_follows_the_organic_flow_and_the_balance_closes():
    """The MPC's organic range (10–80 L/h) moves the mixers' organic hold-up fraction to
    Q_o/(Q_o + Q_a); over a run with organic-flow steps every element balances within 1e-6."""
    c, p = _shipped()
    u = c.design_inputs(p, FEED)
    ii = c.input_index
    q_aq = (p.design_feed_flow + p.scrub_flow) / L_PER_H
    fractions = {}
    for q_org in (10.0, 33.0, 80.0):
        u[ii["organic_flow"]] = q_org * L_PER_H
        va, vo = c.mixer_volumes(c.flows(u)[4], q_org * L_PER_H, p)
        fractions[q_org] = vo[0] / (va[0] + vo[0])
        assert fractions[q_org] == pytest.approx(q_org / (q_org + q_aq), rel=1e-9)
        np.testing.assert_allclose(va + vo, p.v_aq_mixer + p.v_org_mixer, rtol=1e-12)  # fixed volume
    assert fractions[80.0] > 2.5 * fractions[10.0]
    np.testing.assert_allclose(c.mixer_volumes(c.flows(c.design_inputs(p))[4], p.organic_flow, p)[1],
                               p.v_org_mixer, rtol=1e-12)  # the design split at design flows
    u = c.design_inputs(p, FEED)
    x = c.steady_state(u, p)
    held0, fed = c.inventory(x, p), np.zeros(len(SPECIES))
    t = 0.0
    for q_org in (80.0, 10.0, 50.0, 33.0):  # 40 min each
        u[ii["organic_flow"]] = q_org * L_PER_H
        fed = _fed(c, u, 2400.0, fed, x)
        x = advance(c, t, t + 2400.0, x, u, p, rtol=1e-7, atol=1e-10)
        t += 2400.0
    err = (fed - _left(c, x) - (c.inventory(x, p) - held0)) / fed
    assert np.max(np.abs(err)) < 1e-6
    # the split moved the metal with the moles: the mixers' organic concentration at 10 L/h is
    # the same moles in a smaller volume
    om = c.cells(x)[1]
    u[ii["organic_flow"]] = 10.0 * L_PER_H
    co_10 = c.split(x, u, p)[1]
    vo_10 = c.mixer_volumes(c.flows(u)[4], 10.0 * L_PER_H, p)[1]
    np.testing.assert_allclose(co_10 * vo_10[:, None], om, rtol=1e-12)


def test_jacobian_with_settler_cells_a_moved_split_and_entrainment():
    import dataclasses

    c, p0 = _shipped(conventional_config_path(), settler_cells=3, saponification_fraction=0.2)
    p = dataclasses.replace(p0, interface_clear=0.5)
    u = c.design_inputs(p, FEED)
    u[c.input_index["organic_flow"]] = 1.6 * p.capacity  # past capacity: k·a reduced, flooding
    x = c.initial_state(p)
    x[: c.n_stage_states] += np.random.default_rng(4).uniform(0.0, 20.0, c.n_stage_states)
    x[c.i_entrained] = 0.2 * p.v_org_settler.sum()
    assert_jacobian_matches(c, x, u, p)


# -- settler dead time -----------------------------------------------------------------------
TRACER_YAML = {
    "contactor": "mixer_settler", "stages": {"extraction": 1, "scrub": 1, "strip": 1},
    "mixer_volume_L": 0.02, "settler_volume_L": 8.0, "mass_transfer_per_s": 10.0,
    "design_feed_flow_L_per_h": 15.0, "organic_flow_L_per_h": 33.0, "scrub_flow_L_per_h": 14.0,
    "scrub_acid_mol_per_L": 0.6, "strip_flow_L_per_h": 6.0, "strip_acid_mol_per_L": 4.0,
    "extractant_concentration_mol_per_L": 1.0,
    "distribution": {s: {"model": "constant", "D": 1e-6} for s in SPECIES},  # stays aqueous
}


def _tracer_step(cells: int):
    """Raffinate response to a feed step (0 → 1 mol/m3 Dy), fraction of the final value."""
    from pilot_config.extraction import CascadeConfig

    cfg = CascadeConfig.model_validate({**TRACER_YAML, "settler_cells": cells})
    p = params_from_config(cfg)
    c = Cascade("sx", p)
    u = c.design_inputs(p)
    x = c.steady_state(u, p)
    u[c.input_index["feed_Dy"]] = 1.0
    q_a = p.design_feed_flow + p.scrub_flow
    tau_s, tau_m = p.v_aq_settler[0] / q_a, p.v_aq_mixer[0] / q_a
    times = np.linspace(0.0, 6.0 * tau_s, 601)
    held0 = c.inventory(x, p)
    sol = solve_ivp(c.derivatives, (0.0, times[-1]), x, args=(u, p), method="BDF", t_eval=times,
                    jac=lambda t, x, u, p: c.jacobian(t, x, u, p), rtol=1e-8, atol=1e-12)
    dy = c.output_index["raffinate.Dy"]
    resp = np.array([c.outputs(0.0, sol.y[:, k], u, p)[dy] for k in range(times.size)])
    resp *= q_a / p.design_feed_flow  # fraction of the final value (feed diluted by the scrub)
    x = sol.y[:, -1]
    fed = _fed(c, u, times[-1], np.zeros(len(SPECIES)), x)
    dy_err = (fed - _left(c, x) - (c.inventory(x, p) - held0))[0] / fed[0]
    assert abs(dy_err) < 1e-6
    return times, resp, tau_s, tau_m


@pytest.mark.parametrize("cells", [1, 4])
def test_settler_cells_give_the_dead_time_of_cells_in_series(cells):
    """N_c cells: the settler's residence-time distribution is Erlang (mean τ_s, mode
    (N_c − 1)/N_c τ_s); with the mixer (τ_m ≪ τ_s) ahead of it the raffinate follows
    1/((1 + τ_m s)(1 + τ_s s/N_c)^N_c) and its first moment is τ_m + τ_s for any N_c."""
    t, f, tau_s, tau_m = _tracer_step(cells)
    closed = signal.lti([1.0], np.polymul([tau_m, 1.0], np.poly1d([tau_s / cells, 1.0]) ** cells))
    _, expected = signal.step(closed, T=t)
    assert np.max(np.abs(f - expected)) < 2e-3
    mean = np.trapezoid(1.0 - f, t)  # first moment of the residence-time distribution
    assert mean == pytest.approx(tau_m + tau_s, rel=5e-3)
    density = np.gradient(f, t)
    mode = t[np.argmax(density)]
    assert mode == pytest.approx((cells - 1) / cells * tau_s + tau_m, abs=0.02 * tau_s)
    if cells == 1:
        assert f[np.searchsorted(t, 0.2 * tau_s)] > 0.15  # one CSTR answers at once
    else:
        assert f[np.searchsorted(t, 0.2 * tau_s)] < 0.02  # cells in series: a dead time


def test_the_shipped_steady_state_does_not_depend_on_the_settler_cells():
    one, p1 = _shipped(settler_cells=1)
    three, p3 = _shipped(settler_cells=3)
    u = one.design_inputs(p1, FEED)
    y1 = one.outputs(0.0, one.steady_state(u, p1), u, p1)
    y3 = three.outputs(0.0, three.steady_state(u, p3), u, p3)
    assert np.max(np.abs(y3 - y1) / np.maximum(np.abs(y1), 1e-9)) < 1e-6


# -- stage efficiency in every section -------------------------------------------------------
def test_a_strip_section_below_one_transfer_unit_is_refused_naming_the_field(tmp_path):
    """k·a·τ_mix = 0.12 in the strip (600 L/h of strip acid through 0.2 L mixers) while the
    extraction section is at 24: refused, the message names the section and the fields."""
    raw = yaml.safe_load(default_config_path().read_text())
    raw["extraction"].update(contactor="mixer_settler", mixer_volume_L=0.2, design_feed_flow_L_per_h=1.0,
                             scrub_flow_L_per_h=1.0, organic_flow_L_per_h=1.0, strip_flow_L_per_h=600.0,
                             settler_area_m2=1.0)  # 3000 L/h: below capacity, k·a not reduced
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "line.yaml" in text and "strip section" in text and "k·a·τ_mix = 0.12 < 1" in text
    assert "mixer_volume_L (0.2)" in text and "strip_flow_L_per_h" in text
    assert "extraction section" not in text and len(text.splitlines()) == 1
    raw["extraction"]["strip_flow_L_per_h"] = 60.0  # k·a·τ = 1.2: accepted
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_config(path).extraction.stage_ka_tau("strip") == pytest.approx(1.18, abs=0.01)
