"""A ``pilot_config.sx_case.SxCaseConfig`` turned into a cascade, and outlets back in mg/L.

Conversions happen here once (YAML engineering units → SI): L/h → m3/s, mg/L = g/m3 → mol/m3
with the element table's molar masses (or the case's overrides), g/L of extractant → mol/m3.
Acid totals of an aqueous stream: H_T = [H+] + [HSO4-] + 2 [H2SO4] + [HCl],
S_T = [HSO4-] + [SO4^2-] + [H2SO4], Cl_T = [Cl-] + [HCl].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pilot_config.base import L_PER_H, MOL_PER_L
from pilot_config.elements import ACID_IONS, ELEMENTS
from pilot_config.sx_case import SxCaseConfig
from twin.sx import distribution as dist
from twin.sx.acid import AcidModel
from twin.sx.cascade import AqueousInlet, Cascade, build_cascade
from twin.sx.steady import SteadyState, solve_steady

OUTLET_NAMES = {"extraction": "raffinate", "scrub": "scrub_liquor", "strip": "strip_liquor"}


@dataclass(frozen=True)
class SxCase:
    cascade: Cascade
    molar_mass: dict[str, float]  # g/mol, species and acid ions
    extractant_molar_mass: float  # g/mol

    def solve(self, method: str = "auto", blas_threads: int | None = 1) -> SteadyState:
        return solve_steady(self.cascade, method, blas_threads=blas_threads)


def _model(spec, species: list[str], extractant):
    d = spec.distribution
    if d.model == "constant":
        return dist.ConstantD(d.D)
    if d.model == "mass_action":
        return dist.MassAction(d.log10_Kex, d.h_order, d.extractant_order)
    if d.model == "empirical_dosage":
        return dist.EmpiricalDosage(d.m0, d.m1, d.B0, d.B1, extractant.molar_mass_g_per_mol,
                                    extractant.density_g_per_L)
    return dist.SeparationFactor(species.index(d.reference), d.log10_beta0, d.pH_slope, d.pH_ref,
                                 d.loading_slope)


def _inlet(stream, species, mw) -> AqueousInlet:
    acid_mg, acid_mol = stream.acid_mg_per_L, stream.acid_mol_per_L
    mol = {k: v / mw[k] for k, v in acid_mg.items()}
    h2so4, hcl = acid_mol.get("H2SO4", 0.0) * MOL_PER_L, acid_mol.get("HCl", 0.0) * MOL_PER_L
    h_total = mol.get("H", 0.0) + mol.get("HSO4", 0.0) + 2 * h2so4 + hcl
    s_total = mol.get("HSO4", 0.0) + mol.get("SO4", 0.0) + h2so4
    metals = np.array([stream.metals_mg_per_L.get(s, 0.0) / mw[s] for s in species])
    return AqueousInlet(stream.flow_L_per_h * L_PER_H, metals, h_total, s_total,
                        mol.get("Cl", 0.0) + hcl)


def case_from_config(cfg: SxCaseConfig) -> SxCase:
    species = list(cfg.species)
    mw = {s: ELEMENTS[s].molar_mass_g_per_mol for s in species}
    mw.update({k: v[0] for k, v in ACID_IONS.items()})
    mw.update(cfg.molar_mass_g_per_mol)
    charges = [spec.charge if spec.charge is not None else ELEMENTS[s].charge
               for s, spec in cfg.species.items()]
    h_per = [spec.h_per_ion if spec.h_per_ion is not None else z
             for spec, z in zip(cfg.species.values(), charges)]
    e_per = [spec.extractant_per_ion if spec.extractant_per_ion is not None else z
             for spec, z in zip(cfg.species.values(), charges)]
    models = [_model(spec, species, cfg.extractant) for spec in cfg.species.values()]
    sections = [(name, sec.stages, _inlet(sec.aqueous, species, mw)) for name, sec in cfg.sections()]
    org = cfg.organic
    org_in = np.array([org.metals_mg_per_L.get(s, 0.0) / mw[s] for s in species])
    e_mol = org.extractant_g_per_L * 1000.0 / cfg.extractant.molar_mass_g_per_mol
    acid = AcidModel(10.0 ** cfg.acid.hso4_log10_K * MOL_PER_L, cfg.acid.activity,
                     cfg.acid.bromley_B_kg_per_mol)
    scrub_to_feed = cfg.scrub.to_feed if cfg.scrub else True
    efficiency = [sec.stage_efficiency for _, sec in cfg.sections() for _ in range(sec.stages)]
    cascade = build_cascade(species, charges, h_per, e_per, models, sections, org.flow_L_per_h * L_PER_H,
                            org_in, e_mol, org.loop == "closed", acid, scrub_to_feed, efficiency)
    return SxCase(cascade, mw, cfg.extractant.molar_mass_g_per_mol)


def outlets(case: SxCase, state: SteadyState) -> dict[str, dict[str, float]]:
    """Every product stream, mg/L per species (acid ions too, and pH, for aqueous ones; the free
    extractant g/L for organic ones). Organic: ``loaded_organic`` leaves the last extraction
    stage, ``organic_out`` the last stage of the cascade (open loop)."""
    cas, mw = case.cascade, case.molar_mass
    out: dict[str, dict[str, float]] = {}
    for section, k in cas.aq_outlets:
        row = {s: float(state.a[k, i] * mw[s]) for i, s in enumerate(cas.species)}
        row.update(H=float(state.h[k] * mw["H"]), HSO4=float(state.hso4[k] * mw["HSO4"]),
                   SO4=float(state.so4[k] * mw["SO4"]), pH=float(state.ph[k]))
        out[OUTLET_NAMES[section]] = row
    organic_stages = {}
    if any(name == "extraction" for name, _ in cas.sections):
        organic_stages["loaded_organic"] = cas.first("extraction") + dict(cas.sections)["extraction"] - 1
    if not cas.org_link[0].any():
        organic_stages["organic_out"] = cas.n - 1
    for name, k in organic_stages.items():
        row = {s: float(state.c[k, i] * mw[s]) for i, s in enumerate(cas.species)}
        row["extractant_g_per_L"] = float(state.e_free[k] * case.extractant_molar_mass / 1000.0)
        out[name] = row
    return out


def recovery(case: SxCase, state: SteadyState, outlet: str = "raffinate") -> dict[str, float]:
    """Fraction of each species' aqueous inflow that leaves by ``outlet`` (a mass balance KPI)."""
    cas = case.cascade
    section = {v: k for k, v in OUTLET_NAMES.items()}[outlet]
    k = dict(cas.aq_outlets)[section]
    inflow = cas.aq_feed.sum(axis=0) + cas.q_org * cas.org_feed.sum(axis=0)
    leaving = cas.q_aq[k] * state.a[k]
    return {s: float(leaving[i] / inflow[i]) if inflow[i] > 0 else math.nan
            for i, s in enumerate(cas.species)}
