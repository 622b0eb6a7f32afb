"""Aqueous acid chemistry of one SX stage: bisulfate speciation, chloride, strong-acid activity.

Conserved per stage (mol/m3): total acid hydrogen H_T = [H+] + [HSO4-] (HCl counted in [H+], it
is fully dissociated), total sulfate S_T = [HSO4-] + [SO4^2-], chloride Cl_T = [Cl-].

Bisulfate dissociation, HSO4- ⇌ H+ + SO4^2-, concentration quotient

    K_c = [H+][SO4^2-]/[HSO4-],   K_c = K / γ1^4   (Davies-type: γ_HSO4 = γ1, γ_SO4 = γ1^4)

with K = 10^-1.99 mol/L at 25 °C (Dickson, Wesolowski, Palmer, Mesmer, J. Phys. Chem. 94 (1990)
7978, log K2 = −1.99 at 25 °C and I → 0; the value PrOMMiS's sulfuric-acid leach properties use).
Given the free [H+] = h, the sulfate split and the acid total are closed forms:

    [HSO4-] = S_T h/(h + K_c),  [SO4^2-] = S_T K_c/(h + K_c),  H_T(h) = h + S_T h/(h + K_c)
    dH_T/dh = 1 + S_T K_c/(h + K_c)^2

pH = −log10(γ_H [H+]/1 mol/L) with γ_H = 1 unless an activity model is configured:

- ``davies``:  log10 γ1 = −A (√I/(1 + √I) − 0.3 I), A = 0.509 (kg/mol)^½ at 25 °C
  (Davies, Ion Association, Butterworths 1962); good to I ≈ 0.5 mol/L.
- ``bromley``: the mean-ion coefficient of a 1:1 strong acid,
  log10 γ± = −A √I/(1 + √I) + (0.06 + 0.6 B) I/(1 + 1.5 I)^2 + B I
  (Bromley, AIChE J. 19 (1973) 313, eq. 13 for |z+z−| = 1; B = 0.1433 kg/mol for HCl, his
  Table 1), good to I ≈ 6 mol/kg: 4 mol/kg HCl gives γ± = 1.75 (measured 1.76, Robinson &
  Stokes, Electrolyte Solutions, 2nd ed., App. 8.10). Used where strip acid is strong.

The ionic strength I = ½ Σ c_j z_j² (mol/L, molarity taken for molality: dilute-water density)
counts H+, HSO4-, SO4^2-, Cl- and the metal ions at their aqueous charge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN10 = math.log(10.0)
DAVIES_A = 0.509
HCL_BROMLEY_B = 0.1433


@dataclass(frozen=True)
class AcidModel:
    """Bisulfate constant (mol/m3 at I → 0) and the activity model: none | davies | bromley."""

    k_hso4: float = 10.0 ** -1.99 * 1000.0
    activity: str = "none"
    bromley_b: float = HCL_BROMLEY_B

    def log10_gamma1(self, ionic_strength_mol_per_L):
        """log10 of the 1:1 activity coefficient at the given ionic strength (array or float)."""
        i = np.maximum(np.asarray(ionic_strength_mol_per_L, dtype=float), 0.0)
        root = np.sqrt(i)
        if self.activity == "davies":
            return -DAVIES_A * (root / (1.0 + root) - 0.3 * i)
        if self.activity == "bromley":
            b = self.bromley_b
            return -DAVIES_A * root / (1.0 + root) + (0.06 + 0.6 * b) * i / (1.0 + 1.5 * i) ** 2 + b * i
        return np.zeros_like(i)


def k_conc(model: AcidModel, log10_gamma1):
    """K_c = K/γ1^4, mol/m3, per stage."""
    return model.k_hso4 * 10.0 ** (-4.0 * np.asarray(log10_gamma1))


def free_h(ph, log10_gamma1):
    """[H+] mol/m3 from pH = −log10(γ_H [H+]/(mol/L))."""
    return 1000.0 * 10.0 ** (-(np.asarray(ph) + log10_gamma1))


def acid_total(h, s_total, kc):
    """H_T = h + S_T h/(h + K_c) and dH_T/dh."""
    return h + s_total * h / (h + kc), 1.0 + s_total * kc / (h + kc) ** 2


def sulfate_split(h, s_total, kc):
    """([HSO4-], [SO4^2-]) mol/m3."""
    return s_total * h / (h + kc), s_total * kc / (h + kc)


def free_h_from_total(h_total, s_total, kc):
    """The free [H+] of a solution with totals (H_T, S_T): the positive root of
    h² + (K_c + S_T − H_T) h − H_T K_c = 0 (mol/m3), written without cancellation."""
    b = kc + s_total - h_total
    disc = np.sqrt(b * b + 4.0 * h_total * kc)
    return np.where(b > 0, 2.0 * h_total * kc / (b + disc), (disc - b) / 2.0)


def ionic_strength(h, s_total, cl_total, kc, metals, charges) -> np.ndarray:
    """I, mol/L, per stage: ½ Σ c z² over H+, HSO4-, SO4^2-, Cl- and metal ions (mol/m3 in)."""
    hso4, so4 = sulfate_split(h, s_total, kc)
    return 0.5e-3 * (h + hso4 + 4.0 * so4 + cl_total + metals @ (np.asarray(charges) ** 2))
