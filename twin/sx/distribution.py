"""Distribution models D = C_org/C_aq (molar, per ion) with their derivatives for Newton.

Every model returns ``(ln D, ∂lnD/∂pH, ∂lnD/∂E)`` per stage, given the stage pH, the free
extractant E (mol/m3, what is not bound to metal: E = E_tot − Σ_j ν_j C_org,j) and the loop's
total extractant E_tot (mol/m3). The stoichiometry (H+ released and extractant consumed per ion)
belongs to the species, not to the model, so a model's orders may differ from it.

- ``ConstantD``: D = D0 (impurities without acidity data; PrOMMiS's Sc, Al, Ca, Fe).
- ``MassAction``: M^z+ + n_E·HA(org) ⇌ MA(org) + n_H H+ gives, with activities folded into K_ex,
  log10 D = log10 K_ex + n_H·pH + n_E·log10([HA]free/(mol/L))
  (Ritcey & Ashbrook, Solvent Extraction, Elsevier 1984, ch. 2; for DEHPA dimer (HA)2 and Ln3+,
  n_H = 3 and n_E = 3 in dimer units, Peppard et al., J. Inorg. Nucl. Chem. 4 (1957) 334).
- ``EmpiricalDosage``: PrOMMiS's correlation (prommis 1.1.0,
  prommis/solvent_extraction/solvent_extraction_reaction_package.py, from the University of
  Kentucky Phase 1 report), dosage the free extractant as volume % of pure extractant:
  log10 D = (m0 + m1·dose)·pH + B0 + B1·log10(dose),   dose = 100·E·M_E/(1000·ρ_E)
  with M_E g/mol and ρ_E g/L of the pure extractant (DEHPA: 322.431 g/mol, 975.8 g/L).
- ``SeparationFactor``: D_i = β_i·D_ref, with the separation factor varying with acidity and
  loading where shake-out data show it (DEHPA and PC88A: Xie et al., Miner. Eng. 56 (2014) 10):
  log10 β = log10 β0 + s_pH·(pH − pH_ref) + s_L·L,   L = 1 − E/E_tot (fractional loading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN10 = math.log(10.0)


@dataclass(frozen=True)
class ConstantD:
    d: float

    def log_d(self, ph, e_free, e_total, table=None):
        z = np.zeros_like(ph)
        return z + math.log(self.d), z, z


@dataclass(frozen=True)
class MassAction:
    log10_k: float
    h_order: float
    extractant_order: float

    def log_d(self, ph, e_free, e_total, table=None):
        e = np.maximum(e_free, 1e-300)
        log10_d = self.log10_k + self.h_order * ph + self.extractant_order * np.log10(e / 1000.0)
        return LN10 * log10_d, LN10 * self.h_order + 0 * ph, self.extractant_order / e


@dataclass(frozen=True)
class EmpiricalDosage:
    m0: float
    m1: float
    b0: float
    b1: float
    extractant_molar_mass: float  # g/mol
    extractant_density: float  # g/L, pure extractant

    def log_d(self, ph, e_free, e_total, table=None):
        per_e = 100.0 * self.extractant_molar_mass / (1000.0 * self.extractant_density)
        dose = np.maximum(e_free, 1e-300) * per_e
        slope = self.m0 + self.m1 * dose
        log10_d = slope * ph + self.b0 + self.b1 * np.log10(dose)
        d_dose = self.m1 * ph + self.b1 / (dose * LN10)
        return LN10 * log10_d, LN10 * slope, LN10 * d_dose * per_e


@dataclass(frozen=True)
class SeparationFactor:
    reference: int  # index of the reference species in the case
    log10_beta0: float
    ph_slope: float = 0.0
    ph_ref: float = 0.0
    loading_slope: float = 0.0

    def log_d(self, ph, e_free, e_total, table=None):
        ref_ln, ref_ph, ref_e = table[self.reference].log_d(ph, e_free, e_total, table)
        loading = 1.0 - e_free / e_total
        log10_beta = self.log10_beta0 + self.ph_slope * (ph - self.ph_ref) + self.loading_slope * loading
        return (ref_ln + LN10 * log10_beta, ref_ph + LN10 * self.ph_slope,
                ref_e - LN10 * self.loading_slope / e_total)


def evaluate(models, ph, e_free, e_total):
    """(ln D, ∂/∂pH, ∂/∂E), each of shape (stages, species)."""
    parts = [m.log_d(ph, e_free, e_total, models) for m in models]
    return tuple(np.stack([p[k] for p in parts], axis=1) for k in range(3))
