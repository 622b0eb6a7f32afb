"""Parameters and steady state of the extraction cascade
(``twin.extraction``, whose docstring has the equations).

Parameters: ``CascadeParams`` (SI) from a ``CascadeConfig``; the mixers split at the design flows.

The analytic Jacobian: ``twin.extraction_jacobian``.

Steady state: stiff integration (BDF, analytic Jacobian) of the stage states to a long horizon
(pseudo-transient continuation), then Newton polish on the stage balances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse.linalg import spsolve

from pilot_config.base import L_PER_H, MOL_PER_L, SPECIES, mg_per_L_to_mol_per_m3

from .extraction_acid import CascadeAcid, acid_from_config
from .extraction_distribution import (  # noqa: F401  (H_FLOOR, distribution: the unit's API)
    H_FLOOR,
    _distribution_arrays,
    _smax,
    _sx_models,
    distribution,
)
from .extraction_jacobian import analytic_jacobian


class SteadyStateError(RuntimeError):
    pass


#: bounds of the mixer's organic hold-up fraction ε (phase continuity)
SPLIT_MIN, SPLIT_MAX = 0.05, 0.95


def organic_split(q_aq: np.ndarray, q_org: float, design: np.ndarray) -> np.ndarray:
    """ε = Q_o/(Q_o + Q_a) per stage, bounded to SPLIT_MIN..SPLIT_MAX (``design`` if no flow)."""
    total = q_aq + q_org
    eps = np.where(total > 0.0, q_org / np.where(total > 0.0, total, 1.0), design)
    return np.clip(eps, SPLIT_MIN, SPLIT_MAX)


@dataclass(frozen=True, eq=False)
class CascadeParams:
    n_extraction: int
    n_scrub: int
    n_strip: int
    v_aq_mixer: np.ndarray  # m3 per stage, at the design split
    v_org_mixer: np.ndarray
    v_aq_settler: np.ndarray  # m3 per stage (all cells)
    v_org_settler: np.ndarray
    mass_transfer: float  # k·a, 1/s
    extractant: float  # C_HA, mol/m3 (monomer)
    log_a: np.ndarray  # ln A_i
    order_ha: np.ndarray  # n_i
    order_h: np.ndarray  # p_i
    charge: np.ndarray  # z_i
    kex_scaled: np.ndarray  # bool: f_kex applies
    saponification: float = 0.0
    kex_factor: float = 1.0
    extractant_factor: float = 1.0
    design_feed_flow: float = 0.0  # m3/s
    design_feed_H: float = 0.0  # mol/m3
    organic_flow: float = 0.0
    scrub_flow: float = 0.0
    scrub_H: float = 0.0
    strip_flow: float = 0.0
    strip_H: float = 0.0
    interface_clear: float = 1.0  # f_clear: settler interface free of crud (1: clean)
    crud_entrainment: float = 0.25  # φ_crud: organic per raffinate volume, interface covered
    capacity: float = float("inf")  # Q_cap: total flow a settler disengages cleanly, m3/s
    flood_entrainment: float = 0.0  # φ_flood: organic per raffinate volume at Q = 2 Q_cap
    efficiency_loss: float = 0.0  # β: k·a / (1 + β max(Q/Q_cap − 1, 0)²)
    settler_cells: int = 1  # N_c: cells in series per settler phase (structural: fixed per unit)
    species: tuple[str, ...] = SPECIES  # the elements tracked, in the order of every species axis
    extractant_per_ion: np.ndarray | None = None  # ν_i, HA bound per ion loaded (None: 2 z_i)
    #: ``twin.sx.distribution`` model per species when any is beyond the power law (else None)
    models: tuple | None = None
    acid: CascadeAcid | None = None  # acid speciation / activity (None: H the free [H+])
    organic_inlet: np.ndarray | None = None  # open loop: organic into stage 1, mol/m3 (None: closed)

    @property
    def nu(self) -> np.ndarray:
        return 2.0 * self.charge if self.extractant_per_ion is None else self.extractant_per_ion

    @property
    def n_stages(self) -> int:
        return self.n_extraction + self.n_scrub + self.n_strip


def params_from_config(cfg, species: tuple[str, ...] = SPECIES) -> CascadeParams:
    """SI parameters from a ``CascadeConfig`` for the line's ``species`` (in that order; each
    needs a ``distribution`` entry). Mixer volumes split at the design flows."""
    missing = [sp for sp in species if sp not in cfg.distribution]
    if missing:
        raise ValueError(f"extraction.distribution: no entry for {', '.join(missing)}; "
                         f"allowed: one entry per species of the line ({', '.join(species)})")
    for sp in species:
        ref = getattr(cfg.distribution[sp], "reference", None)
        if ref is not None and ref not in species:
            raise ValueError(f"extraction.distribution.{sp}.reference: {ref!r} is not a species of the "
                             f"line; allowed: {', '.join(species)}")
    st = cfg.stages
    n = st.total
    q_org = cfg.organic_flow_L_per_h
    q_aq = np.array([cfg.design_feed_flow_L_per_h + cfg.scrub_flow_L_per_h] * st.extraction
                    + [cfg.scrub_flow_L_per_h] * st.scrub + [cfg.strip_flow_L_per_h] * st.strip)
    v_mix = cfg.mixer_holdup_L * 1e-3
    v_set = cfg.settler_holdup_L * 1e-3 * np.ones(n)
    frac_org = organic_split(q_aq * L_PER_H, q_org * L_PER_H, np.full(n, 0.5))
    species = tuple(species)
    log_a, order_ha, order_h, charge, nu, scaled = _distribution_arrays(cfg, species)
    return CascadeParams(
        n_extraction=st.extraction, n_scrub=st.scrub, n_strip=st.strip,
        v_aq_mixer=v_mix * (1.0 - frac_org), v_org_mixer=v_mix * frac_org,
        v_aq_settler=v_set * cfg.settler_aqueous_fraction,
        v_org_settler=v_set * (1.0 - cfg.settler_aqueous_fraction),
        mass_transfer=cfg.effective_mass_transfer_per_s,
        extractant=cfg.extractant_concentration_mol_per_L * MOL_PER_L,
        log_a=log_a, order_ha=order_ha, order_h=order_h, charge=charge, kex_scaled=scaled.astype(bool),
        saponification=cfg.saponification_fraction,
        design_feed_flow=cfg.design_feed_flow_L_per_h * L_PER_H,
        design_feed_H=cfg.feed_acidity_mol_per_L * MOL_PER_L,
        organic_flow=q_org * L_PER_H,
        scrub_flow=cfg.scrub_flow_L_per_h * L_PER_H, scrub_H=cfg.scrub_acid_mol_per_L * MOL_PER_L,
        strip_flow=cfg.strip_flow_L_per_h * L_PER_H, strip_H=cfg.strip_acid_mol_per_L * MOL_PER_L,
        capacity=cfg.capacity_L_per_h * L_PER_H, flood_entrainment=cfg.flood_entrainment,
        efficiency_loss=cfg.efficiency_loss, settler_cells=cfg.settler_cells,
        species=species, extractant_per_ion=nu, models=_sx_models(cfg, species, order_ha, order_h),
        acid=acid_from_config(cfg.acid, charge), organic_inlet=_organic_inlet(cfg, species),
    )


def _organic_inlet(cfg, species: tuple[str, ...]) -> np.ndarray | None:
    """Open loop: the inlet organic, mol/m3 per species (0 where not given); closed: None."""
    if cfg.organic_loop == "closed":
        return None
    unknown = sorted(set(cfg.organic_inlet_mg_per_L) - set(species))
    if unknown:
        raise ValueError(f"extraction.organic_inlet_mg_per_L: {', '.join(unknown)} not a species of the "
                         f"line; allowed: {', '.join(species)}")
    return np.array([mg_per_L_to_mol_per_m3(sp, cfg.organic_inlet_mg_per_L.get(sp, 0.0)) for sp in species])


def steady_state(c, u, p, x0=None, *, horizon_s: float = 1e8, tol: float = 1e-9) -> np.ndarray:
    """Stage states at steady state for held inputs ``u`` (cumulative states set to 0).

    Integrates the stage balances with BDF to ``horizon_s`` (pseudo-transient continuation),
    then takes Newton steps until the scaled residual |f|·τ / (|x| + 1e-6) < ``tol``.
    """
    m = c.n_stage_states
    x = c.initial_state(p) if x0 is None else np.array(x0, dtype=float)
    full = x.copy()
    full[m:] = 0.0

    def f(t, xs):
        full[:m] = xs
        return c.derivatives(t, full, u, p)[:m]

    def jac(t, xs):
        full[:m] = xs
        return analytic_jacobian(c, full, u, p)[:m, :m]

    sol = solve_ivp(f, (0.0, horizon_s), x[:m], method="BDF", jac=jac, rtol=1e-8, atol=1e-12)
    if not sol.success:
        raise SteadyStateError(f"{c.name}: integration to steady state failed: {sol.message}")
    xs = np.maximum(sol.y[:, -1], 0.0)
    for newton in range(7):
        r = f(0.0, xs)
        worst = float(np.max(np.abs(r) * 3600.0 / (np.abs(xs) + 1e-6)))
        if worst < tol:
            break
        if newton == 6:
            raise SteadyStateError(f"{c.name}: no steady state (relative drift {worst:.3g} per hour)")
        xs = np.maximum(xs - spsolve(jac(0.0, xs).tocsc(), r), 0.0)
    out = np.zeros(len(c.state_names))
    out[:m] = xs
    return out
