"""The general SX chemistry against closed forms: Kremser, fractional extraction of a binary,
bisulfate speciation, strong-acid activity, mass action; a closed loop conserves everything;
config errors name the file, the field and what is allowed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pilot_config.elements import ELEMENTS, UnknownElement, element, molar_mass
from pilot_config.loader import ConfigError
from pilot_config.sx_case import SxCaseConfig, load_sx_case
from twin.sx import case_from_config, outlets, recovery
from twin.sx.acid import AcidModel, free_h_from_total
from twin.sx.cascade import jacobian, residual, stage_state
from twin.sx.steady import initial_guess

Q = 60.0  # L/h


def solve(spec: dict, method: str = "newton"):
    case = case_from_config(SxCaseConfig.model_validate(spec))
    return case, case.solve(method)


def extraction_case(d: dict, stages: int, q_org: float = Q, org_mg: dict | None = None, **extra) -> dict:
    return {
        "species": {s: {"distribution": {"model": "constant", "D": v}} for s, v in d.items()},
        "organic": {"flow_L_per_h": q_org, "extractant_g_per_L": 100.0, "metals_mg_per_L": org_mg or {}},
        "extraction": {"stages": stages, "aqueous": {"flow_L_per_h": Q, "acid_mol_per_L": {"HCl": 0.1},
                                                     "metals_mg_per_L": {s: 50.0 for s in d}}},
        **extra,
    }


@pytest.mark.parametrize("stages", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("d", [0.4, 1.0, 2.5])
def test_kremser_raffinate_fraction(stages, d):
    case, state = solve(extraction_case({"Nd": d}, stages, q_org=0.8 * Q))
    e = d * 0.8  # extraction factor D·Q_o/Q_a
    want = 1.0 / (stages + 1) if abs(e - 1.0) < 1e-12 else (e - 1.0) / (e ** (stages + 1) - 1.0)
    assert recovery(case, state)["Nd"] == pytest.approx(want, rel=1e-9)


def test_kremser_with_a_loaded_organic_inlet():
    # (x_F − x_1)/(x_F − y_0/D) = (E^(n+1) − E)/(E^(n+1) − 1), Treybal, Mass-Transfer Operations, eq. 10.50
    d, n, y0 = 2.0, 3, 20.0
    case, state = solve(extraction_case({"Nd": d}, n, org_mg={"Nd": y0}))
    x1 = outlets(case, state)["raffinate"]["Nd"]
    e = d
    assert (50.0 - x1) / (50.0 - y0 / d) == pytest.approx((e ** (n + 1) - e) / (e ** (n + 1) - 1), rel=1e-9)


def fractional_raffinate(d, n, m, qf, qs, qo):
    """Fraction of the feed to the raffinate, n extraction + m scrub stages, scrub liquor to the
    feed stage, constant D: from the section operating lines a_(i+1) = E a_i + a_1 (extraction,
    E = D Q_o/(Q_f+Q_s)) and a'_(j+1) = S a'_j − p (scrub, S = D Q_o/Q_s, clean scrub acid)."""
    qa = qf + qs
    e, s = d * qo / qa, d * qo / qs
    geo_e = n if abs(e - 1) < 1e-12 else (e ** n - 1) / (e - 1)
    geo_s = (s - 1) / (1 - s ** (-m - 1)) if abs(s - 1) > 1e-12 else 1.0 / (m + 1)
    return 1.0 / (1.0 + (qs / qa) * geo_e * geo_s)


def test_binary_fractional_extraction_matches_the_closed_form():
    d = {"Nd": 3.0, "Pr": 1.2}  # separation factor 2.5
    spec = extraction_case(d, 4, q_org=40.0)
    spec["scrub"] = {"stages": 3, "to_feed": True, "aqueous": {"flow_L_per_h": 15.0, "acid_mol_per_L": {"HCl": 0.1}}}
    case, state = solve(spec)
    got = recovery(case, state)
    for sp, dv in d.items():
        assert got[sp] == pytest.approx(fractional_raffinate(dv, 4, 3, Q, 15.0, 40.0), rel=1e-9)
    organic = outlets(case, state)["loaded_organic"]
    assert organic["Nd"] / organic["Pr"] > 1.0 > got["Nd"] / got["Pr"]


def test_separation_factor_varies_with_acidity_and_loading_as_configured():
    spec = extraction_case({"Nd": 2.0}, 1)
    spec["species"]["Pr"] = {"distribution": {"model": "separation_factor", "reference": "Nd",
                                              "log10_beta0": -0.3, "pH_slope": 0.2, "pH_ref": 1.0,
                                              "loading_slope": 0.5}}
    spec["extraction"]["aqueous"]["metals_mg_per_L"]["Pr"] = 5000.0
    case, state = solve(spec)
    cas = case.cascade
    i_nd, i_pr = cas.species.index("Nd"), cas.species.index("Pr")
    beta = (state.c[0, i_pr] / state.a[0, i_pr]) / (state.c[0, i_nd] / state.a[0, i_nd])
    loading = 1 - state.e_free[0] / cas.e_total
    assert loading > 0.05
    assert math.log10(beta) == pytest.approx(-0.3 + 0.2 * (state.ph[0] - 1.0) + 0.5 * loading, abs=1e-10)


def test_bisulfate_speciation_of_sulfuric_acid_closed_form():
    spec = extraction_case({"Al": 1e-9}, 1)
    spec["extraction"]["aqueous"]["acid_mol_per_L"] = {"H2SO4": 0.1}
    case, state = solve(spec)
    k, h_t, s_t = 10 ** -1.99, 0.2, 0.1  # mol/L
    h = (-(k + s_t - h_t) + math.sqrt((k + s_t - h_t) ** 2 + 4 * h_t * k)) / 2  # h² + (K+S−H)h − HK = 0
    assert state.ph[0] == pytest.approx(-math.log10(h), abs=1e-6)  # Al (D = 1e-9) releases no acid to speak of
    assert float(free_h_from_total(h_t, s_t, k)) == pytest.approx(h, rel=1e-12)
    assert (state.hso4[0] + state.so4[0]) / 1000 == pytest.approx(s_t, rel=1e-12)


def test_bromley_activity_of_4_molal_hcl():
    lg = AcidModel(activity="bromley").log10_gamma1(4.0)
    assert 10 ** lg == pytest.approx(1.762, rel=0.01)  # Robinson & Stokes, App. 8.10: 1.762
    assert 10 ** AcidModel(activity="davies").log10_gamma1(0.01) == pytest.approx(0.9, abs=0.01)


def strip_circuit(activity: str) -> dict:
    spec = extraction_case({"Nd": 1.0}, 2)
    spec["species"]["Nd"]["distribution"] = {"model": "mass_action", "log10_Kex": -1.0, "h_order": 3.0,
                                             "extractant_order": 3.0}
    spec["strip"] = {"stages": 2, "aqueous": {"flow_L_per_h": 10.0, "acid_mol_per_L": {"HCl": 4.0}}}
    spec["organic"] = {"flow_L_per_h": Q, "loop": "closed", "extractant_g_per_L": 150.0}
    spec["acid"] = {"activity": activity}
    return spec


def test_strong_strip_acid_ph_includes_the_activity():
    case, state = solve(strip_circuit("bromley"))
    k = dict(case.cascade.aq_outlets)["strip"]
    gamma = 10 ** state.log10_gamma1[k]
    assert 1.5 < gamma < 2.0
    assert state.ph[k] == pytest.approx(-math.log10(gamma * state.h[k] / 1000), abs=1e-12)
    _, plain = solve(strip_circuit("none"))
    assert plain.ph[k] - state.ph[k] == pytest.approx(math.log10(gamma), abs=0.05)


def test_closed_loop_conserves_metal_acid_and_extractant():
    case, state = solve(strip_circuit("none"))
    cas = case.cascade
    outs = dict(cas.aq_outlets)
    leaving = sum(cas.q_aq[k] * state.a[k] for k in outs.values())
    assert np.allclose(leaving, cas.aq_feed.sum(axis=0), rtol=1e-9)
    h_out = sum(cas.q_aq[k] * (state.h[k] + state.hso4[k]) for k in outs.values())
    assert h_out == pytest.approx(cas.aq_feed_h.sum(), rel=1e-9)  # what extraction releases, strip takes
    assert np.allclose(state.e_free + state.c @ cas.e_per_ion, cas.e_total, rtol=1e-12)
    # mass action: D = Kex [HA]^3 / [H+]^3 at every stage
    d = state.c[:, 0] / state.a[:, 0]
    assert np.allclose(np.log10(d), -1.0 + 3 * state.ph + 3 * np.log10(state.e_free / 1000), atol=1e-9)
    strip = outlets(case, state)["strip_liquor"]["Nd"]
    assert strip > 50.0 * 4  # concentrated: feed 60 L/h into 10 L/h of strip
    slow = case.solve("pseudo-transient")
    assert np.allclose(slow.a, state.a, rtol=1e-6)


def test_element_table():
    assert element("Dy").molar_mass_g_per_mol == 162.5 and element("Ca").charge == 2
    assert {"La", "Lu", "Y", "Sc", "Fe", "Al", "Ca", "Mg", "U", "Th", "Co", "Zn", "Na", "Ga", "B"} <= set(ELEMENTS)
    assert molar_mass("SO4") == pytest.approx(96.06, abs=0.01)
    with pytest.raises(UnknownElement, match=r"feed\.species: unknown element 'Xx'; allowed: La, Ce"):
        element("Xx", field="feed.species")


@pytest.mark.parametrize("edit, where, says", [
    (lambda s: s["species"].update(Nq={"distribution": {"model": "constant", "D": 1}}),
     "species", "unknown element 'Nq'; allowed: La, Ce"),
    (lambda s: s["extraction"]["aqueous"]["metals_mg_per_L"].update(Fe=3.0),
     "extraction.aqueous.metals_mg_per_L", "'Fe' is not a species of this case; allowed: ['Nd']"),
    (lambda s: s["species"].update(Pr={"distribution": {"model": "separation_factor", "reference": "Sm",
                                                        "log10_beta0": 0.1}}),
     "species.Pr.distribution.reference", "'Sm' must be a species with its own D model; allowed: ['Nd']"),
    (lambda s: s["species"]["Nd"]["distribution"].update(model="langmuir"),
     "species.Nd.distribution", "'constant', 'mass_action', 'empirical_dosage', 'separation_factor'"),
    (lambda s: s["organic"].update(loop="half"), "organic.loop", "'open' or 'closed'"),
])
def test_config_errors_name_file_field_and_allowed(tmp_path, edit, where, says):
    import yaml
    spec = extraction_case({"Nd": 1.0}, 2)
    edit(spec)
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_sx_case(path)
    text = str(err.value)
    assert str(path) in text and f": {where}: " in text and says in text
    assert "\n" not in text and "Traceback" not in text and "pydantic" not in text


def test_fits_recover_the_parameters_of_shake_out_data():
    from twin.sx.fit import fit_empirical_dosage, fit_mass_action, fit_separation_factor

    rng = np.random.default_rng(7)
    ph = np.tile(np.linspace(0.8, 2.2, 8), 3)
    dose = np.repeat([2.0, 5.0, 10.0], 8)
    y = 10 ** ((1.70783 + 0.06443 * dose) * ph - 2.42226 - 0.02538 * np.log10(dose))  # PrOMMiS's Dy
    fit = fit_empirical_dosage(ph, dose, y * 10 ** rng.normal(0, 0.002, y.size))
    assert fit["m0"] == pytest.approx(1.70783, abs=0.02) and fit["m1"] == pytest.approx(0.06443, abs=0.005)
    assert fit["B0"] == pytest.approx(-2.42226, abs=0.05) and 0 < fit["rms_log10"] < 0.004
    e = np.repeat([0.2, 0.5, 1.0], 8)
    ma = fit_mass_action(ph, e, 10 ** (-1.0 + 3 * ph + 3 * np.log10(e)))
    assert (ma["h_order"], ma["extractant_order"]) == pytest.approx((3.0, 3.0), abs=1e-9)
    load = np.linspace(0.0, 0.6, ph.size)
    sf = fit_separation_factor(ph, load, 10 ** (0.4 + 0.1 * (ph - 1) - 0.3 * load), 1.0, ph_ref=1.0)
    assert (sf["log10_beta0"], sf["pH_slope"], sf["loading_slope"]) == pytest.approx((0.4, 0.1, -0.3), abs=1e-9)


def test_murphree_stage_efficiency_single_stage_closed_form():
    eta, d = 0.6, 2.0
    spec = extraction_case({"Nd": d}, 1)
    spec["extraction"]["stage_efficiency"] = eta
    case, state = solve(spec)
    assert recovery(case, state)["Nd"] == pytest.approx(1.0 / (1.0 + eta * d), rel=1e-10)  # Q_o = Q_a


def assert_jacobian_matches(cas, lg1=None):
    lg1 = np.zeros(cas.n) if lg1 is None else lg1
    x = initial_guess(cas, lg1)
    jac = jacobian(cas, stage_state(cas, x, lg1))
    fd = np.empty_like(jac)
    for j in range(x.size):
        h = 1e-6 * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        fd[:, j] = (residual(cas, xp, stage_state(cas, xp, lg1)) - residual(cas, xm, stage_state(cas, xm, lg1))) / (2 * h)
    scale = np.abs(jac).max(axis=1, keepdims=True)
    assert np.max(np.abs(jac - fd) / scale) < 1e-6


def test_closed_loop_with_rate_limited_stages():
    spec = strip_circuit("davies")
    spec["scrub"] = {"stages": 2, "to_feed": True, "stage_efficiency": 0.8,
                     "aqueous": {"flow_L_per_h": 8.0, "acid_mol_per_L": {"HCl": 0.5}}}
    spec["species"]["Fe"] = {"distribution": {"model": "constant", "D": 0.05}}
    spec["extraction"]["stage_efficiency"] = 0.7
    spec["extraction"]["aqueous"]["metals_mg_per_L"]["Fe"] = 500.0
    case, state = solve(spec, "auto")
    cas = case.cascade
    assert_jacobian_matches(cas, state.log10_gamma1)
    leaving = sum(cas.q_aq[k] * state.a[k] for k in dict(cas.aq_outlets).values())
    assert np.allclose(leaving, cas.aq_feed.sum(axis=0), rtol=1e-9)
    _, ideal = solve(strip_circuit("davies") | {"scrub": spec["scrub"] | {"stage_efficiency": 1.0},
                                                 "species": spec["species"],
                                                 "extraction": spec["extraction"] | {"stage_efficiency": 1.0}})
    nd = cas.species.index("Nd")
    assert state.a[0, nd] > ideal.a[0, nd]  # less efficient stages leave more Nd in the raffinate


def test_strip_only_and_a_scrub_liquor_product():
    spec = {
        "species": {"Nd": {"distribution": {"model": "mass_action", "log10_Kex": -1.0, "h_order": 3.0,
                                            "extractant_order": 3.0}}},
        "organic": {"flow_L_per_h": 30.0, "extractant_g_per_L": 150.0, "metals_mg_per_L": {"Nd": 900.0}},
        "strip": {"stages": 3, "aqueous": {"flow_L_per_h": 10.0, "acid_mol_per_L": {"HCl": 2.0}}},
    }
    case, state = solve(spec)
    out = outlets(case, state)
    assert set(out) == {"strip_liquor", "organic_out"}
    assert 30.0 * 900.0 == pytest.approx(10.0 * out["strip_liquor"]["Nd"] + 30.0 * out["organic_out"]["Nd"],
                                         rel=1e-9)
    assert out["organic_out"]["Nd"] < 0.01 * 900.0
    spec = extraction_case({"Nd": 3.0, "Pr": 1.2}, 3, q_org=40.0)
    spec["scrub"] = {"stages": 2, "to_feed": False, "aqueous": {"flow_L_per_h": 15.0, "acid_mol_per_L": {"HCl": 0.1}}}
    case, state = solve(spec)
    out = outlets(case, state)
    assert set(out) == {"raffinate", "scrub_liquor", "loaded_organic", "organic_out"}
    for sp in ("Nd", "Pr"):
        assert Q * 50.0 == pytest.approx(Q * out["raffinate"][sp] + 15.0 * out["scrub_liquor"][sp]
                                         + 40.0 * out["organic_out"][sp], rel=1e-9)


@pytest.mark.parametrize("eta", [1.0, 0.6])
def test_extractant_capacity_of_constant_d_species(eta):
    from twin.sx.steady import NotConverged, capacity_demand

    spec = extraction_case({"Fe": 0.15, "Al": 0.05}, 3)
    spec["extraction"]["stage_efficiency"] = eta
    case, state = solve(spec)
    demand, stage = capacity_demand(case.cascade)
    bound = state.c @ case.cascade.e_per_ion / case.cascade.e_total
    assert demand == pytest.approx(bound.max(), rel=1e-9) and stage == int(np.argmax(bound))
    spec["extraction"]["aqueous"]["metals_mg_per_L"] = {"Fe": 60000.0, "Al": 20000.0}
    with pytest.raises(NotConverged, match=r"no steady state: the constant-D species \['Fe', 'Al'\] alone "
                                           r"bind \d+\.\d\dx the extractant at stage 2"):
        solve(spec)
