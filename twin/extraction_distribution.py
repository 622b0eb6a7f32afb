"""Distribution ratios D = C_org/C_aq of the extraction cascade (``twin.extraction``), per stage
and species, with the derivatives its analytic Jacobian needs.

Config: ``pilot_config.extraction`` (its docstring has each model's equation and source).
Free extractant and acidity, smoothly floored (so D stays finite and differentiable):

    [HA]free = smax(C_HA·f_HA − Σ_j ν_j C_om,j, 1e-3·C_HA·f_HA),   [H+] = smax(H, H_FLOOR)
    smax(x, a) = (x + √(x² + a²))/2

Power-law kinds (constant, mass_action, empirical) in one vectorised expression,
ln D = ln A + n ln[HA]free − p ln[H+]; when any species has another kind (empirical_dosage,
separation_factor) every species is evaluated with the ``twin.sx.distribution`` models in
pH = −log10[H+]/(mol/L) and [HA]free, and the chain rule gives

    ∂lnD/∂H = ∂lnD/∂pH · (−1/(ln10·[H+])) · d[H+]/dH,   ∂lnD/∂load = −∂lnD/∂[HA]free · d[HA]free/d raw.
"""

from __future__ import annotations

import numpy as np

from pilot_config.base import CHARGE, MOL_PER_L

from .sx import distribution as sxd

H_FLOOR = 1e-3  # mol/m3 (pH 6): smooth lower bound of [H+] inside D


POWER_LAW = ("constant", "mass_action", "empirical")


def _distribution_arrays(cfg, species: tuple[str, ...]):
    """(ln A, n, p, z, ν, f_kex applies) per species from the ``distribution`` section; z from the
    entry's ``charge``, else the element's usual charge (``pilot_config.base.CHARGE``); ν from
    ``extractant_per_ion``, else 2z. Power-law terms (ln D = ln A + n ln[HA] − p ln[H+]) are 0
    for the other kinds (``_sx_models``)."""
    out = []
    for sp in species:
        m = cfg.distribution[sp]
        z = float(CHARGE[sp] if m.charge is None else m.charge)
        nu = 2.0 * z if m.extractant_per_ion is None else float(m.extractant_per_ion)
        a = nn = pp = 0.0
        if m.model == "constant":
            a = np.log(m.D)
        elif m.model == "mass_action":
            a = np.log(m.Kex)
            nn = z if m.extractant_order is None else m.extractant_order
            pp = z if m.h_order is None else m.h_order
        elif m.model == "empirical":
            a, pp = m.intercept * np.log(10.0), m.slope_per_pH
        out.append((a, nn, pp, z, nu, m.model != "constant"))
    cols = [np.array(col) for col in zip(*out)]
    for i, sp in enumerate(species):  # D = β·D_ref: f_kex applies as it does to the reference
        m = cfg.distribution[sp]
        if m.model == "separation_factor":
            cols[5][i] = cols[5][species.index(m.reference)]
    return cols


def _sx_models(cfg, species: tuple[str, ...], order_ha: np.ndarray, order_h: np.ndarray) -> tuple | None:
    """``twin.sx.distribution`` models per species (None when every one is a power law, which
    ``distribution`` evaluates in one vectorised expression)."""
    dist = cfg.distribution
    if all(dist[sp].model in POWER_LAW for sp in species):
        return None
    ext, out = cfg.extractant, []
    for i, sp in enumerate(species):
        m = dist[sp]
        if m.model == "constant":
            out.append(sxd.ConstantD(m.D))
        elif m.model == "mass_action":
            out.append(sxd.MassAction(float(np.log10(m.Kex)), float(order_h[i]), float(order_ha[i])))
        elif m.model == "empirical":
            out.append(sxd.MassAction(m.intercept, m.slope_per_pH, 0.0))
        elif m.model == "empirical_dosage":
            out.append(sxd.EmpiricalDosage(m.m0, m.m1, m.B0, m.B1, ext.molar_mass_g_per_mol,
                                           ext.density_g_per_L))
        else:
            out.append(sxd.SeparationFactor(species.index(m.reference), m.log10_beta0, m.pH_slope,
                                            m.pH_ref, m.loading_slope))
    return tuple(out)


def _smax(x: np.ndarray, floor: float) -> np.ndarray:
    """Smooth max(x, 0) bounded below by ~floor/2."""
    return 0.5 * (x + np.sqrt(x * x + floor * floor))


def distribution(h: np.ndarray, c_org: np.ndarray, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D (stages × species), plus ∂lnD/∂H and ∂lnD/∂[HA]free·∂[HA]free/∂load (for Jacobians).

    ``h``: mixer aqueous [H+] (mol/m3, per stage); ``c_org``: mixer organic (stages × species).
    """
    ha_tot = p.extractant * p.extractant_factor
    load = c_org @ p.nu
    raw = ha_tot - load
    floor = 1e-3 * ha_tot
    free = _smax(raw, floor)
    hh = _smax(h, H_FLOOR)
    dfree = 0.5 * (1.0 + raw / np.sqrt(raw * raw + floor * floor))  # d free / d raw
    dhh = 0.5 * (1.0 + h / np.sqrt(h * h + H_FLOOR * H_FLOOR))
    if p.models is None:  # every species a power law: ln D = ln A + n ln[HA]free − p ln[H+]
        log_a = p.log_a + np.where(p.kex_scaled, np.log(p.kex_factor), 0.0)
        ln_d = (log_a + np.outer(np.log(free / MOL_PER_L), p.order_ha)
                - np.outer(np.log(hh / MOL_PER_L), p.order_h))
        d = np.exp(np.clip(ln_d, -40.0, 40.0))
        dlnd_dh = -np.outer(dhh / hh, p.order_h)
        dlnd_dload = -np.outer(dfree / free, p.order_ha)  # per unit of load (mol/m3 HA)
        return d, dlnd_dh, dlnd_dload
    ph = -np.log10(hh / MOL_PER_L)  # the twin.sx models, in pH and [HA]free
    ln_d, d_ph, d_free = sxd.evaluate(p.models, ph, free, ha_tot)
    ln_d = ln_d + np.where(p.kex_scaled, np.log(p.kex_factor), 0.0)
    d = np.exp(np.clip(ln_d, -40.0, 40.0))
    dlnd_dh = d_ph * (-dhh / (sxd.LN10 * hh))[:, None]  # ∂pH/∂H = −1/(ln10·[H+])
    dlnd_dload = -d_free * dfree[:, None]
    return d, dlnd_dh, dlnd_dload
