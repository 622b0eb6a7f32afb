"""Free acid of the extraction cascade's stages (``twin.extraction``, config ``acid:``), from the
stage's conserved totals, with the derivatives its analytic Jacobian needs.

Per stage (mol/m3): total acid hydrogen H_T = [H+] + [HSO4-] (the cascade's H pool) and total
sulfate S_T = [HSO4-] + [SO4 2-] (carried with the aqueous, not extracted). With HSO4- ⇌ H+ +
SO4 2-, K_c = K/γ1^4, the free h = [H+] is the positive root of the quadratic of ``twin.sx.acid``,

    h² + (K_c + S_T − H_T) h − H_T K_c = 0      (``free_h_from_total``; S_T = 0: h = H_T)

and D and the pH use the activity a = γ1·h (pH = −log10(a/(mol/L)); γ1 = 1 without an activity
model). With Davies or Bromley γ1 = γ1(I), the ionic strength from electroneutrality with the acid
anion not bound as sulfate monovalent (chloride), X = h + Σ z_j c_j − [HSO4-] − 2[SO4 2-]:

    I = ½ (h + Σ z_j² c_j + [HSO4-] + 4[SO4 2-] + X) = h + [SO4 2-] + ½ Σ z_j(z_j + 1) c_j

(mol/L; c_j the stage's aqueous metals at charge z_j). γ1 and h are solved together: Newton on
Φ(λ) = log10 γ1(I(h(λ), λ)) − λ, λ = log10 γ1 (a contraction: γ1 varies slowly with I; a
chloride strip, S_T = 0, settles in one step). Derivatives by the implicit function theorem:

    ∂h/∂H_T = 1/g,  ∂h/∂S_T = −(h/(h + K_c))/g,  ∂h/∂K_c = S_T h/(h + K_c)²/g,
    g = dH_T/dh = 1 + S_T K_c/(h + K_c)²,   dK_c/dλ = −4 ln10 K_c,
    dλ/dθ = −Φ_θ/Φ_λ,   da/dθ = a ln10 dλ/dθ + γ1 (∂h/∂θ + ∂h/∂K_c dK_c/dλ dλ/dθ)

for θ = H_T, S_T, c_j. Sources: ``twin.sx.acid`` (K, the Davies and Bromley coefficients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sx import acid
from .sx.acid import DAVIES_A, LN10, AcidModel


@dataclass(frozen=True, eq=False)
class CascadeAcid:
    """K (mol/m3) and activity model, whether sulfate is carried, the inlets' S_T (mol/m3) and
    the ionic-strength weights ½ z(z + 1) per species."""

    model: AcidModel
    sulfate: bool
    feed_S: float
    scrub_S: float
    strip_S: float
    weight: np.ndarray


def acid_from_config(spec, charge: np.ndarray) -> CascadeAcid | None:
    """SI acid parameters from a ``pilot_config.extraction.CascadeAcid`` (None: none)."""
    if spec is None:
        return None
    model = AcidModel(10.0 ** spec.hso4_log10_K * 1000.0, spec.activity, spec.bromley_B_kg_per_mol)
    return CascadeAcid(model, spec.speciation == "sulfate", spec.feed_sulfate_mol_per_L * 1000.0,
                       spec.scrub_sulfate_mol_per_L * 1000.0, spec.strip_sulfate_mol_per_L * 1000.0,
                       0.5 * charge * (charge + 1.0))


def dlog10_gamma1_dI(model: AcidModel, i: np.ndarray) -> np.ndarray:
    """d log10 γ1/dI (L/mol) of ``model.log10_gamma1``."""
    i = np.maximum(i, 1e-12)
    root = np.sqrt(i)
    debye = -DAVIES_A / (2.0 * root * (1.0 + root) ** 2)
    if model.activity == "davies":
        return debye + 0.3 * DAVIES_A
    if model.activity == "bromley":
        b = model.bromley_b
        return debye + (0.06 + 0.6 * b) * (1.0 - 1.5 * i) / (1.0 + 1.5 * i) ** 3 + b
    return np.zeros_like(i)


def _root(h_total, s_total, kc):
    """(h, ∂h/∂H_T, ∂h/∂S_T, ∂h/∂K_c) of the bisulfate quadratic."""
    h = acid.free_h_from_total(h_total, s_total, kc)
    g = acid.acid_total(h, s_total, kc)[1]
    hk = h + kc
    return h, 1.0 / g, -(h / hk) / g, s_total * h / (hk * hk) / g


def free_acid(h_total: np.ndarray, s_total: np.ndarray | None, metals: np.ndarray, ap: CascadeAcid):
    """Per stage: (a = γ1 h, ∂a/∂H_T, ∂a/∂S_T, ∂a/∂c_j (stages × species) or None, h, log10 γ1).

    ``h_total``, ``s_total`` (None: no sulfate), ``metals``: the stage's aqueous mol/m3."""
    n = h_total.shape[0]
    zero = np.zeros(n)
    s = zero if s_total is None else s_total
    if ap.model.activity == "none":
        if not ap.sulfate:
            return h_total, np.ones(n), zero, None, h_total, zero
        h, dh_dht, dh_dst, _ = _root(h_total, s, ap.model.k_hso4)
        return h, dh_dht, dh_dst, None, h, zero
    m = 1e-3 * (metals @ ap.weight)
    lam = ap.model.log10_gamma1(1e-3 * np.maximum(h_total, 0.0) + m)  # start: all acid free
    for it in range(30):
        kc = acid.k_conc(ap.model, lam)
        h, dh_dht, dh_dst, dh_dkc = _root(h_total, s, kc)
        hk = h + kc
        so4 = s * kc / hk
        i = 1e-3 * (h + so4) + m
        phi = ap.model.log10_gamma1(i) - lam
        slope = dlog10_gamma1_dI(ap.model, i)
        dso4_dh, dso4_dkc, dso4_dst = -s * kc / (hk * hk), s * h / (hk * hk), kc / hk
        dkc_dlam = -4.0 * LN10 * kc
        di_dlam = 1e-3 * (dh_dkc * (1.0 + dso4_dh) + dso4_dkc) * dkc_dlam
        phi_lam = slope * di_dlam - 1.0
        if np.max(np.abs(phi)) < 1e-14 or it == 29:
            break
        lam = lam - phi / phi_lam
    gamma = 10.0 ** lam
    a = gamma * h
    dlam_dht = -slope * 1e-3 * (1.0 + dso4_dh) * dh_dht / phi_lam
    dlam_dst = -slope * 1e-3 * ((1.0 + dso4_dh) * dh_dst + dso4_dst) / phi_lam
    dlam_dc = -(slope / phi_lam)[:, None] * 1e-3 * ap.weight[None, :]
    via_lam = a * LN10 + gamma * dh_dkc * dkc_dlam  # da/dλ
    da_dht = gamma * dh_dht + via_lam * dlam_dht
    da_dst = gamma * dh_dst + via_lam * dlam_dst
    return a, da_dht, da_dst, via_lam[:, None] * dlam_dc, h, lam
