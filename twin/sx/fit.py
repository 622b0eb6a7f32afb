"""Distribution-model parameters from shake-out (batch equilibrium) data, by linear least squares.

Each shake-out gives, at equilibrium, D = C_org/C_aq of a species, the aqueous pH and the free
extractant (mol/m3: the organic's extractant less what the loaded metals bind, ν_E per ion).
All three models are linear in their parameters once written in log10 D:

    empirical dosage:  log10 D = m0·pH + m1·(dose·pH) + B0 + B1·log10(dose)
    mass action:       log10 D = log10 K_ex + n_H·pH + n_E·log10([HA]free/(mol/L))
    separation factor: log10(D_i/D_ref) = log10 β0 + s_pH·(pH − pH_ref) + s_L·L

so each fit is one ``numpy.linalg.lstsq`` on the design matrix of its right-hand side. The
returned dict holds the parameters under their case-file names and ``rms_log10`` (the root-mean-
square misfit in log10 D), to paste into a case's ``distribution`` block.
"""

from __future__ import annotations

import numpy as np


def _lstsq(columns, target, names):
    design = np.column_stack([np.broadcast_to(np.asarray(c, float), np.shape(target)) for c in columns])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    rms = float(np.sqrt(np.mean((design @ coef - target) ** 2)))
    return {**{n: float(v) for n, v in zip(names, coef)}, "rms_log10": rms}


def fit_empirical_dosage(ph, dose_percent, d) -> dict:
    """m0, m1, B0, B1 of PrOMMiS's form; dose the free extractant, volume % of pure extractant.
    Needs at least two dosages (else m1 and B1 are not separable from m0 and B0)."""
    ph, dose, y = (np.asarray(v, float) for v in (ph, dose_percent, d))
    return _lstsq([ph, dose * ph, 1.0, np.log10(dose)], np.log10(y), ["m0", "m1", "B0", "B1"])


def fit_mass_action(ph, free_extractant_mol_per_L, d) -> dict:
    """log10_Kex, h_order, extractant_order (slope analysis in pH and in free extractant)."""
    ph, e, y = (np.asarray(v, float) for v in (ph, free_extractant_mol_per_L, d))
    return _lstsq([1.0, ph, np.log10(e)], np.log10(y), ["log10_Kex", "h_order", "extractant_order"])


def fit_separation_factor(ph, loading, d, d_ref, ph_ref: float = 0.0) -> dict:
    """log10_beta0, pH_slope, loading_slope of D/D_ref (``loading``: bound / total extractant)."""
    ph, load = np.asarray(ph, float), np.asarray(loading, float)
    target = np.log10(np.asarray(d, float) / np.asarray(d_ref, float))
    out = _lstsq([1.0, ph - ph_ref, load], target, ["log10_beta0", "pH_slope", "loading_slope"])
    return {**out, "pH_ref": ph_ref}
