"""Settler capacity: entrainment past the disengagement capacity, per contactor type."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.integrate import solve_ivp

from pilot_config import conventional_config_path, default_config_path, load_config
from pilot_config.base import L_PER_H, SPECIES
from twin.extraction import Cascade, params_from_config

FEED = np.full(len(SPECIES), 5.0)  # mol/m3


def _cascade(path):
    p = params_from_config(load_config(path).extraction)
    return Cascade("sx", p), p


def _ppm(c, p, x, q_org_L_h):
    u = c.design_inputs(p, FEED)
    u[c.input_index["organic_flow"]] = q_org_L_h * L_PER_H
    return 1e6 * c.outputs(0.0, x, u, p)[c.output_index["raffinate.organic"]]


def _knee(c, p, x):
    """Lowest total stage-1 flow (L/h, 5 L/h steps) with organic in the raffinate."""
    q_aq = (p.design_feed_flow + p.scrub_flow) / L_PER_H
    for q_org in np.arange(5.0, 4000.0, 5.0):
        if _ppm(c, p, x, q_org) > 0.0:
            return q_aq + q_org
    raise AssertionError("no knee below 4000 L/h")


def test_entrainment_rises_past_capacity_and_the_mixer_settler_floods_at_a_quarter():
    ef, p_ef = _cascade(default_config_path())
    ms, p_ms = _cascade(conventional_config_path())
    x_ef, x_ms = ef.initial_state(p_ef), ms.initial_state(p_ms)
    knee_ef, knee_ms = _knee(ef, p_ef, x_ef), _knee(ms, p_ms, x_ms)
    assert abs(knee_ms / knee_ef - 0.25) < 0.02
    for c, p, x, knee in ((ef, p_ef, x_ef, knee_ef), (ms, p_ms, x_ms, knee_ms)):
        q_aq = (p.design_feed_flow + p.scrub_flow) / L_PER_H
        sweep = [_ppm(c, p, x, (knee - q_aq) * f) for f in (0.5, 0.9, 1.2, 1.5, 2.0)]
        assert sweep[0] == sweep[1] == 0.0
        assert 0.0 < sweep[2] < sweep[3] < sweep[4]


def test_below_capacity_the_steady_state_is_unchanged():
    c, p = _cascade(default_config_path())
    u = c.design_inputs(p, FEED)
    x_cap = c.steady_state(u, p)
    x_inf = c.steady_state(u, dataclasses.replace(p, capacity=float("inf")))
    assert np.max(np.abs(x_cap - x_inf) / np.maximum(np.abs(x_inf), 1e-12)) < 1e-6
    assert x_cap[c.i_entrained] == 0.0


def test_element_balance_closes_in_a_run_past_capacity():
    c, p = _cascade(conventional_config_path())
    u = c.design_inputs(p, FEED)
    x0 = c.steady_state(u, p)
    q_over = 1.6 * p.capacity - (p.design_feed_flow + p.scrub_flow)
    u[c.input_index["organic_flow"]] = q_over
    horizon = 3600.0
    sol = solve_ivp(c.derivatives, (0.0, horizon), x0, args=(u, p), method="BDF",
                    jac=lambda t, x, u, p: c.jacobian(t, x, u, p), rtol=1e-9, atol=1e-12)
    x1 = sol.y[:, -1]
    lost = x1[c.i_entrained]
    assert lost > 1e-4  # more than 0.1 L of organic went out with the raffinate
    out = np.zeros(len(SPECIES))
    for outlet in ("raffinate", "strip"):
        i0 = c.state_index[f"cum_{outlet}_{SPECIES[0]}"]
        out += (x1 - x0)[i0:i0 + len(SPECIES)]
    fed = u[c.input_index["feed_flow"]] * FEED * horizon
    err = (c.inventory(x1, p) - c.inventory(x0, p) + out - fed) / fed
    assert np.max(np.abs(err)) < 1e-6
    assert c.inventory(x1, p)[0] < c.inventory(x0, p)[0] + fed[0]  # metal left with the organic


def test_jacobian_past_capacity_matches_finite_differences():
    c, p = _cascade(conventional_config_path())
    u = c.design_inputs(p, FEED)
    u[c.input_index["organic_flow"]] = 1.6 * p.capacity
    x = c.initial_state(p)
    x[: c.n_stage_states] += np.random.default_rng(2).uniform(0.0, 20.0, c.n_stage_states)
    x[c.i_entrained] = 0.2 * p.v_org_settler.sum()
    jac = c.jacobian(0.0, x, u, p).toarray()
    fd = np.empty_like(jac)
    for j in range(x.size):
        h = 1e-7 * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        fd[:, j] = (c.derivatives(0.0, xp, u, p) - c.derivatives(0.0, xm, u, p)) / (2.0 * h)
    assert np.max(np.abs(jac - fd)) < 1e-6 * np.max(np.abs(jac))


def _separation(c, p, u, factor):
    """(Tb purity, Dy recovery) at steady state with every flow scaled by ``factor``."""
    u = u.copy()
    for name in ("feed_flow", "organic_flow", "scrub_flow", "strip_flow"):
        u[c.input_index[name]] *= factor
    y = c.outputs(0.0, c.steady_state(u, p), u, p)
    o = c.output_index
    dy_raff = y[o["raffinate.Dy"]] * y[o["raffinate.flow"]]
    dy_strip = y[o["strip.Dy"]] * y[o["strip.flow"]]
    return y[o["tb_purity"]], dy_strip / (dy_strip + dy_raff)


def test_past_capacity_the_separation_falls_with_throughput_for_both_contactors():
    """Every flow scaled by r past the knee (stage-1 flow = Q_cap): Tb purity and Dy recovery
    fall at each step, and further than with the stage efficiency kept (β = 0)."""
    feed = FEED.copy()
    feed[SPECIES.index("Nd")] = feed[SPECIES.index("Pr")] = 0.0  # Tb purity against Dy only
    for path in (default_config_path(), conventional_config_path()):
        c, p = _cascade(path)
        u = c.design_inputs(p, feed)
        knee = p.capacity / (p.design_feed_flow + p.scrub_flow + p.organic_flow)
        kept = dataclasses.replace(p, efficiency_loss=0.0)
        assert p.efficiency_loss > 0.0
        sweep = [_separation(c, p, u, knee * f) for f in (1.0, 1.3, 1.7)]
        for (pur0, rec0), (pur1, rec1) in zip(sweep, sweep[1:]):
            assert pur1 < pur0 and rec1 < rec0
        pur_kept, rec_kept = _separation(c, kept, u, knee * 1.7)
        assert sweep[-1][0] < pur_kept - 1e-4 and sweep[-1][1] < rec_kept - 1e-3
        np.testing.assert_allclose(sweep[0], _separation(c, kept, u, knee), rtol=1e-6)  # at the knee
