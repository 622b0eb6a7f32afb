"""The dynamic cascade on a species list of the config: names, distribution models beyond the power
law (their closed forms and exact derivatives), element and acid conservation, Kremser, REO basis
and config errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import yaml
from jacobian_check import assert_jacobian_matches
from pydantic import ValidationError
from test_extraction import DESIGN_YAML, EULATE_MG

from pilot_config.base import L_PER_H, MOL_PER_L, SPECIES, mg_per_L_to_mol_per_m3
from pilot_config.extraction import CascadeConfig
from twin.extraction import (
    REO_G_PER_MOL,
    Cascade,
    distribution,
    params_from_config,
    reo_purity,
)
from twin.integrate import advance
from twin.sx import distribution as sxd

EXTRA = (*SPECIES, "La", "Ce", "Y", "Ca")
FEED_MG = {**EULATE_MG, "La": 20.0, "Ce": 40.0, "Y": 15.0, "Ca": 30.0}
#: PrOMMiS's Ce correlation (prommis 1.1.0, solvent_extraction_reaction_package.py)
CE = {"model": "empirical_dosage", "m0": 0.30916, "m1": 0.04816, "B0": -1.66021, "B1": -0.38599}
Y_SF = {"model": "separation_factor", "reference": "Dy", "log10_beta0": 0.3, "pH_slope": 0.2,
        "pH_ref": 0.5, "loading_slope": -0.5}
ND_MA = {"model": "mass_action", "Kex": 1.13e-3, "extractant_order": 2.0, "h_order": 2.5,
         "extractant_per_ion": 3.0}
EXTRACTANT = {"name": "DEHPA", "molar_mass_g_per_mol": 322.431, "density_g_per_L": 975.8}


def mixed_config(**changes) -> CascadeConfig:
    d = yaml.safe_load(DESIGN_YAML)
    d["distribution"].update({
        "Nd": ND_MA,
        "La": {"model": "empirical_dosage", "m0": 0.54, "m1": 0.0, "B0": -1.93, "B1": 0.0},
        "Ce": CE, "Y": Y_SF,
        "Ca": {"model": "constant", "D": 0.05}})  # charge 2 from the element table
    d["extractant"] = EXTRACTANT
    d.update(changes)
    return CascadeConfig.model_validate(d)


def build(cfg: CascadeConfig, species=EXTRA):
    p = params_from_config(cfg, species)
    return Cascade("sx", p), p


def feed(species=EXTRA) -> np.ndarray:
    return np.array([mg_per_L_to_mol_per_m3(s, FEED_MG[s]) for s in species])


def moderate_state(c: Cascade, p, seed: int = 3) -> np.ndarray:
    """A state of plausible concentrations (mol/m3): partly loaded organic, 0.1–1 M acid."""
    rng = np.random.default_rng(seed)
    x = c.initial_state(p)
    am, om, sa, so = c.cells(x)
    ns = len(c.species)
    am[:, :ns] = rng.uniform(0.0, 5.0, (c.n, ns)) * p.v_aq_mixer[:, None]
    am[:, ns] = rng.uniform(100.0, 1000.0, c.n) * p.v_aq_mixer
    om[:] = rng.uniform(0.0, 8.0, (c.n, ns)) * p.v_org_mixer[:, None]
    sa[:] = rng.uniform(0.0, 5.0, sa.shape)
    so[:] = rng.uniform(0.0, 8.0, so.shape)
    return x


def y_of(c, x, u, p) -> dict[str, float]:
    return dict(zip(c.output_names, c.outputs(0.0, x, u, p)))


def test_names_charges_and_stoichiometry_follow_the_species_list():
    c, p = build(mixed_config())
    assert c.species == p.species == EXTRA
    assert "feed_Ca" in c.input_names and "stage30.org.Y" in c.output_names
    assert "stage1.settler2.org.La" in c.state_names
    assert len(c.state_names) == c.n * 3 * (2 * len(EXTRA) + 1) + 2 * (len(EXTRA) + 2) + 1
    z = dict(zip(EXTRA, p.charge))
    nu = dict(zip(EXTRA, p.nu))
    assert (z["Ca"], z["U"], z["Th"], z["La"]) == (2.0, 2.0, 4.0, 3.0)
    assert nu["Ca"] == 4.0 and nu["Dy"] == 6.0 and nu["Nd"] == 3.0  # 2z unless configured
    shipped = params_from_config(mixed_config(), SPECIES)  # the same section, the shipped list
    assert shipped.species == SPECIES and len(shipped.charge) == len(SPECIES)


def test_distribution_models_match_their_closed_forms():
    c, p = build(mixed_config())
    h = np.array([50.0, 300.0, 1500.0])  # mol/m3
    c_org = np.zeros((3, len(EXTRA)))
    c_org[:, EXTRA.index("Dy")] = [10.0, 40.0, 5.0]
    c_org[:, EXTRA.index("Ca")] = [2.0, 0.0, 1.0]
    d = dict(zip(EXTRA, distribution(h, c_org, p)[0].T))
    raw, floor = p.extractant - c_org @ p.nu, 1e-3 * p.extractant
    free = 0.5 * (raw + np.sqrt(raw * raw + floor * floor))  # smoothly floored at 0.1 % of C_HA
    ph = -np.log10(h / MOL_PER_L)
    dose = 100.0 * free * 322.431 / (1000.0 * 975.8)
    ce = 10.0 ** ((CE["m0"] + CE["m1"] * dose) * ph + CE["B0"] + CE["B1"] * np.log10(dose))
    np.testing.assert_allclose(d["Ce"], ce, rtol=1e-9)
    np.testing.assert_allclose(d["La"], 10.0 ** (0.54 * ph - 1.93), rtol=1e-9)
    loading = 1.0 - free / p.extractant
    beta = 10.0 ** (0.3 + 0.2 * (ph - 0.5) - 0.5 * loading)
    np.testing.assert_allclose(d["Y"] / d["Dy"], beta, rtol=1e-9)
    np.testing.assert_allclose(d["Dy"], 0.17 * (free / 1000.0) ** 3 / (h / 1000.0) ** 3, rtol=1e-9)
    np.testing.assert_allclose(d["Nd"], 1.13e-3 * (free / 1000.0) ** 2 / (h / 1000.0) ** 2.5, rtol=1e-9)
    np.testing.assert_allclose(d["Ca"], 0.05, rtol=1e-12)


def test_power_law_path_equals_the_sx_models():
    """The shipped (power-law) kinds give the same D by the vectorised path and by twin.sx."""
    cfg = CascadeConfig.model_validate(yaml.safe_load(DESIGN_YAML))
    p = params_from_config(cfg)
    models = tuple(sxd.MassAction(math.log10(cfg.distribution[s].Kex), z, z)
                   for s, z in zip(SPECIES, p.charge))
    q = dataclasses.replace(p, models=models, kex_factor=0.8, extractant_factor=0.9)
    p = dataclasses.replace(p, kex_factor=0.8, extractant_factor=0.9)
    rng = np.random.default_rng(5)
    h, c_org = rng.uniform(1.0, 4000.0, 30), rng.uniform(0.0, 20.0, (30, len(SPECIES)))
    for a, b in zip(distribution(h, c_org, p), distribution(h, c_org, q)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * np.max(np.abs(a)))


@pytest.mark.parametrize("kind", ["empirical_dosage", "separation_factor", "mass_action", "constant"])
def test_distribution_derivatives_are_exact(kind):
    """∂lnD/∂H and ∂lnD/∂load of each kind against central differences of ln D."""
    models = {"empirical_dosage": CE, "separation_factor": Y_SF, "mass_action": ND_MA,
              "constant": {"model": "constant", "D": 0.2, "extractant_per_ion": 5.0}}
    cfg = mixed_config()
    d = cfg.model_dump()
    d["distribution"]["Y"] = models[kind]
    c, p = build(CascadeConfig.model_validate(d))
    rng = np.random.default_rng(11)
    h, c_org = rng.uniform(20.0, 2000.0, 6), rng.uniform(0.0, 8.0, (6, len(EXTRA)))
    ln0 = np.log(distribution(h, c_org, p)[0])
    _, dh, dload = distribution(h, c_org, p)
    eps = 1e-4 * h
    num_h = (np.log(distribution(h + eps, c_org, p)[0]) - np.log(distribution(h - eps, c_org, p)[0])) / (2 * eps[:, None])
    np.testing.assert_allclose(dh, num_h, rtol=1e-6, atol=1e-12)
    j = EXTRA.index("Dy")  # a change of the load through one species' organic concentration
    step = np.zeros_like(c_org)
    step[:, j] = 1e-3
    num_l = (np.log(distribution(h, c_org + step, p)[0]) - np.log(distribution(h, c_org - step, p)[0])) / 2e-3
    np.testing.assert_allclose(dload * p.nu[j], num_l, rtol=1e-6, atol=1e-12)
    assert np.all(np.isfinite(ln0))


@pytest.mark.parametrize("kind", ["empirical_dosage", "separation_factor", "mass_action"])
def test_cascade_jacobian_exact_for_each_model_kind(kind):
    models = {"empirical_dosage": CE, "separation_factor": Y_SF, "mass_action": ND_MA}
    d = mixed_config(saponification_fraction=0.1).model_dump()
    for s in ("Dy", "Tb", "La", "Ce", "Y"):
        if s != "Dy" or kind != "separation_factor":
            d["distribution"][s] = models[kind]
    c, p = build(CascadeConfig.model_validate(d))
    p = dataclasses.replace(p, interface_clear=0.6)  # entrainment terms on too
    x = moderate_state(c, p)
    x[c.i_entrained] = 1e-4
    u = c.design_inputs(p, feed())
    om = c.split(x, u, p)[1]
    free = p.extractant - om @ p.nu
    assert np.any(free > 0.2 * p.extractant) and np.any(free < 0.8 * p.extractant)  # loaded, not saturated
    assert_jacobian_matches(c, x, u, p, rtol=1e-7)
    # the distribution's own columns, which the largest flow terms would hide: mixer block rows
    jac = c.jacobian(0.0, x, u, p).toarray()
    ns = len(EXTRA)
    blk = slice(0, 2 * ns + 1)
    for j in range(2 * ns + 1):
        hstep = 1e-6 * max(abs(x[j]), 1e-8)
        xp, xm = x.copy(), x.copy()
        xp[j] += hstep
        xm[j] -= hstep
        fd = (c.derivatives(0.0, xp, u, p) - c.derivatives(0.0, xm, u, p))[blk] / (2 * hstep)
        np.testing.assert_allclose(jac[blk, j], fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)) + 1e-300)


def test_extra_species_and_acid_conserved_over_a_dynamic_run():
    c, p = build(mixed_config())
    u = c.design_inputs(p, feed())
    x = c.initial_state(p)
    held0, (aq0, org0) = c.inventory(x, p), c.phase_inventory(x, p)
    ii, si = c.input_index, c.state_index
    fed, h_in = np.zeros(len(EXTRA)), 0.0
    i0 = ii["feed_Dy"]
    for k in range(8):  # 4 h in 30-min steps, feed and organic flows stepped half-way
        if k == 4:
            u[ii["feed_flow"]] *= 1.3
            u[ii["organic_flow"]] *= 0.9
        fed += u[ii["feed_flow"]] * u[i0: i0 + len(EXTRA)] * 1800.0
        h_in += 1800.0 * (u[ii["feed_flow"]] * u[ii["feed_H"]] + u[ii["scrub_flow"]] * u[ii["scrub_H"]]
                          + u[ii["strip_flow"]] * u[ii["strip_H"]])
        x = advance(c, 1800.0 * k, 1800.0 * (k + 1), x, u, p, rtol=1e-7, atol=1e-10)
    left = np.array([x[si[f"cum_raffinate_{s}"]] + x[si[f"cum_strip_{s}"]] for s in EXTRA])
    err = (fed - left - (c.inventory(x, p) - held0)) / fed
    assert np.max(np.abs(err)) < 1e-6
    assert left[EXTRA.index("Ca")] > 0.1 * fed[EXTRA.index("Ca")]  # Ca passes to the raffinate
    aq1, org1 = c.phase_inventory(x, p)
    released = float(p.charge @ (org1 - org0))  # z H+ per ion loaded, whatever ν
    assert released > 0.1
    h_out = x[si["cum_raffinate_H"]] + x[si["cum_strip_H"]]
    assert (aq1[-1] - aq0[-1]) - (h_in - h_out) == pytest.approx(released, rel=1e-6)


def test_extra_species_and_acid_balance_at_steady_state():
    c, p = build(mixed_config())
    u = c.design_inputs(p, feed())
    x = c.steady_state(u, p)
    y = y_of(c, x, u, p)
    raff = np.array([y[f"raffinate.{s}"] for s in EXTRA]) * y["raffinate.flow"]
    strip = np.array([y[f"strip.{s}"] for s in EXTRA]) * y["strip.flow"]
    ii = c.input_index
    np.testing.assert_allclose(raff + strip, u[ii["feed_flow"]] * feed(), rtol=1e-6)
    acid_in = u[ii["feed_flow"]] * u[ii["feed_H"]] + u[ii["scrub_flow"]] * u[ii["scrub_H"]]
    assert y["raffinate.H"] * y["raffinate.flow"] == pytest.approx(acid_in + p.charge @ strip, rel=1e-6)
    # Y (β ≈ 2 over Dy, strongly extracted) goes with Dy to the strip; Ca (D = 0.05) to the raffinate
    share = strip / (raff + strip)
    assert share[EXTRA.index("Y")] > 0.99 and share[EXTRA.index("Ca")] < 0.01


def test_kremser_with_the_extra_species():
    n, q_feed, q_org = 5, 15.0, 30.0
    e_values = np.array([0.3, 0.7, 1.0, 1.5, 2.0, 3.0, 0.5, 1.2, 0.9, 2.5, 0.4, 1.8])
    d = yaml.safe_load(DESIGN_YAML)
    d["contactor"] = "mixer_settler"
    d["stages"] = {"extraction": n, "scrub": 2, "strip": 3}
    d["distribution"] = {s: {"model": "constant", "D": float(e * q_feed / q_org)} for s, e in zip(EXTRA, e_values)}
    c, p = build(CascadeConfig.model_validate(d))
    p = dataclasses.replace(p, mass_transfer=200.0, capacity=float("inf"))
    u = c.design_inputs(p, feed())
    u[c.input_index["scrub_flow"]] = 0.0
    u[c.input_index["strip_flow"]] = 1e4 * L_PER_H
    u[c.input_index["organic_flow"]] = q_org * L_PER_H
    y = y_of(c, c.steady_state(u, p), u, p)
    raff = np.array([y[f"raffinate.{s}"] for s in EXTRA]) * y["raffinate.flow"]
    fraction = raff / (u[c.input_index["feed_flow"]] * feed())
    expected = np.where(np.isclose(e_values, 1.0), 1.0 / (n + 1), (e_values - 1.0) / (e_values ** (n + 1) - 1.0 + 1e-300))
    np.testing.assert_allclose(fraction, expected, rtol=0.01)


def test_reo_basis_covers_every_rare_earth():
    assert REO_G_PER_MOL["La"] == pytest.approx((2 * 138.90547 + 3 * 15.999) / 2, rel=1e-12)  # La2O3
    assert REO_G_PER_MOL["Ce"] == pytest.approx(140.116 + 2 * 15.999, rel=1e-12)  # CeO2
    assert REO_G_PER_MOL["Y"] == pytest.approx((2 * 88.905838 + 3 * 15.999) / 2, rel=1e-6)  # Y2O3
    assert (REO_G_PER_MOL["Dy"], REO_G_PER_MOL["Tb"]) == (186.4985, 186.9228)
    assert "Ca" not in REO_G_PER_MOL
    names = ("Dy", "Tb", "La", "Ca")
    n = np.array([1.0, 2.0, 3.0, 50.0])  # Ca is no rare earth: not in the basis
    w = np.array([186.4985, 2 * 186.9228, 3 * REO_G_PER_MOL["La"]])
    assert reo_purity(n, "Tb", names) == pytest.approx(w[1] / w.sum(), rel=1e-12)


def test_config_errors_name_the_field():
    d = mixed_config().model_dump()
    d["distribution"]["Y"] = {**Y_SF, "reference": "Ho"}
    with pytest.raises(ValidationError, match=r"distribution\.Y\.reference: 'Ho' must be a species"):
        CascadeConfig.model_validate(d)
    d["distribution"]["Y"] = {**Y_SF, "reference": "Y"}
    with pytest.raises(ValidationError, match=r"distribution\.Y\.reference"):
        CascadeConfig.model_validate(d)
    d["distribution"]["Y"] = {**CE, "m0": "steep"}
    with pytest.raises(ValidationError, match="m0"):
        CascadeConfig.model_validate(d)
    with pytest.raises(ValueError, match=r"extraction\.distribution: no entry for Sm"):
        params_from_config(mixed_config(), (*EXTRA, "Sm"))
    with pytest.raises(ValueError, match=r"extraction\.distribution\.Y\.reference: 'Dy' is not a species"):
        params_from_config(mixed_config(), ("Tb", "Y"))


def no_scrub_config(**changes) -> CascadeConfig:
    d = yaml.safe_load(DESIGN_YAML)
    d["contactor"] = "mixer_settler"
    d["stages"] = {"extraction": 5, "scrub": 0, "strip": 3}
    d.update(changes)
    return CascadeConfig.model_validate(d)


def test_cascade_without_scrub_section_kremser_and_balances():
    """Extraction + strip only: the Kremser closed form, element and acid balances, the Jacobian;
    a scrub acid flow then joins the feed at the feed stage."""
    n, q_feed, q_org = 5, 15.0, 30.0
    e_values = np.array([0.3, 0.7, 1.0, 1.5, 2.0, 3.0, 0.5, 1.2])
    dist = {s: {"model": "constant", "D": float(e * q_feed / q_org)} for s, e in zip(SPECIES, e_values)}
    c, p = build(no_scrub_config(scrub_flow_L_per_h=0.0, distribution=dist), SPECIES)
    assert c.n == 8 and "stage9.pH" not in c.output_names
    p = dataclasses.replace(p, mass_transfer=200.0, capacity=float("inf"))
    u = c.design_inputs(p, feed(SPECIES))
    u[c.input_index["strip_flow"]] = 1e4 * L_PER_H
    u[c.input_index["organic_flow"]] = q_org * L_PER_H
    y = y_of(c, c.steady_state(u, p), u, p)
    raff = np.array([y[f"raffinate.{s}"] for s in SPECIES]) * y["raffinate.flow"]
    fraction = raff / (u[c.input_index["feed_flow"]] * feed(SPECIES))
    expected = np.where(np.isclose(e_values, 1.0), 1.0 / (n + 1),
                        (e_values - 1.0) / (e_values ** (n + 1) - 1.0 + 1e-300))
    np.testing.assert_allclose(fraction, expected, rtol=0.01)
    # the mass-action design chemistry without scrub, scrub acid into the feed stage
    c, p = build(no_scrub_config(scrub_flow_L_per_h=5.0), SPECIES)
    u = c.design_inputs(p, feed(SPECIES))
    y = y_of(c, c.steady_state(u, p), u, p)
    ii = c.input_index
    raff = np.array([y[f"raffinate.{s}"] for s in SPECIES]) * y["raffinate.flow"]
    strip = np.array([y[f"strip.{s}"] for s in SPECIES]) * y["strip.flow"]
    np.testing.assert_allclose(raff + strip, u[ii["feed_flow"]] * feed(SPECIES), rtol=1e-6)
    assert y["raffinate.flow"] == pytest.approx(u[ii["feed_flow"]] + u[ii["scrub_flow"]], rel=1e-12)
    acid_in = u[ii["feed_flow"]] * u[ii["feed_H"]] + u[ii["scrub_flow"]] * u[ii["scrub_H"]]
    assert y["raffinate.H"] * y["raffinate.flow"] == pytest.approx(acid_in + p.charge @ strip, rel=1e-6)
    assert_jacobian_matches(c, moderate_state(c, p), u, p, rtol=1e-7)


def test_scrub_flow_needed_with_scrub_stages():
    d = yaml.safe_load(DESIGN_YAML)
    d["scrub_flow_L_per_h"] = 0.0
    with pytest.raises(ValidationError, match="scrub_flow_L_per_h: a positive flow is needed with 10 scrub"):
        CascadeConfig.model_validate(d)
