"""Parameters, Jacobian (analytic, sparse) and steady state of the extraction cascade
(``twin.extraction``, whose docstring has the equations).

Parameters: ``CascadeParams`` (SI) from a ``CascadeConfig``; the mixers split at the design flows.

Jacobian structure: per stage a dense (2S+1)×(2S+1) block (S species) couples the mixer's aqueous
(species + H+) and organic moles n = V·C through the mass transfer N(C_am, C_om) (D depends on [H+] and on the
organic loading); the columns are ∂/∂n = (1/V)·∂/∂C at the split of the current flows.
Everything else is first-order flow coupling: settler cell 1 ← its mixer (Q/(V_cell·V_m)),
cell j ← cell j − 1, mixer aq ← the upstream settler's last aq cell, mixer org ← the previous
stage's last org cell (stage 1 ← stage N, the organic recycle), cumulative outlets ← the outlet
cells. Derivatives of N (k·a per stage, reduced past the capacity; it depends on the flows only):

    ∂N_i/∂C_am,i = k·a V_a V_o D_i / den_i,      ∂N_i/∂C_om,i|_D = −k·a V_a V_o / den_i,
    ∂N_i/∂D_i    = k·a V_a V_o (C_am,i V_a + C_om,i V_o) / den_i²,   den_i = V_a + D_i V_o,
    ∂D_i/∂H = D_i ∂lnD_i/∂H,                     ∂D_i/∂C_om,j = D_i ∂lnD_i/∂load · ν_j.

Entrainment into the raffinate (Q_e): cum_raffinate_<sp> ← every settler organic cell
(Q_e V_os,k°/(N_c ΣV_os°)), V_e ← itself (∂Q_e/∂V_e = −Q_e/(f ΣV_os°)), and every settler
organic cell and cum_raffinate_<sp> ← V_e through the hold-ups V_os = f·V_os° (∂f/∂V_e = −1/ΣV_os°).

Steady state: stiff integration (BDF, analytic Jacobian) of the stage states to a long horizon
(pseudo-transient continuation), then Newton polish on the stage balances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sps
from scipy.integrate import solve_ivp
from scipy.sparse.linalg import spsolve

from pilot_config.base import L_PER_H, MOL_PER_L, SPECIES

from .extraction_distribution import (  # noqa: F401  (H_FLOOR, distribution: the unit's API)
    H_FLOOR,
    _distribution_arrays,
    _smax,
    _sx_models,
    distribution,
)


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
    )


def _structure(c) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows, cols, slices) of every Jacobian entry, in the order ``analytic_jacobian`` fills."""
    cached = getattr(c, "_jac_structure", None)
    if cached is not None:
        return cached
    n, w, nc, nn = c.n, c.width, c.nc, c.cells_per_settler
    ns = nc - 1
    nb = nc + ns
    base = np.arange(n) * w
    r_blk = (base[:, None, None] + np.arange(nb)[None, :, None] + 0 * np.arange(nb)[None, None, :])
    c_blk = (base[:, None, None] + 0 * np.arange(nb)[None, :, None] + np.arange(nb)[None, None, :])
    rows, cols, sl = [r_blk.ravel()], [c_blk.ravel()], {}
    pos = r_blk.size
    has_up = np.flatnonzero(c._up < n)
    ci, si = np.arange(nc), np.arange(ns)
    cell = nb + nb * np.arange(nn)  # offset of each settler cell (aq | org) in a stage
    last = cell[-1]
    aq = base[:, None, None] + cell[None, :, None] + ci[None, None, :]  # (stages, cells, comps)
    org = base[:, None, None] + cell[None, :, None] + nc + si[None, None, :]

    def add(key, r, cc):
        nonlocal pos
        r, cc = np.broadcast_arrays(r, cc)
        rows.append(r.ravel()), cols.append(cc.ravel())
        sl[key] = slice(pos, pos + r.size)
        pos += r.size

    add("aq_up", base[has_up, None] + ci, base[c._up[has_up], None] + last + ci)
    prev = np.roll(np.arange(n), 1)
    add("org_prev", base[:, None] + nc + si, base[prev, None] + last + nc + si)
    add("sa_am", aq[:, 0], base[:, None] + ci)
    add("sa_sa", aq, aq)
    add("sa_chain", aq[:, 1:], aq[:, :-1])
    add("so_om", org[:, 0], base[:, None] + nc + si)
    add("so_so", org, org)
    add("so_chain", org[:, 1:], org[:, :-1])
    m = c.n_stage_states
    strip0 = c.ne + c.ns
    add("cum_raff", m + ci, base[0] + last + ci)
    add("cum_strip", m + nc + 1 + ci, base[strip0] + last + ci)
    add("cum_raff_org", m + si, org)
    lost = c.i_entrained
    add("entrained", np.array([lost]), np.array([lost]))
    add("so_entrained", org, lost)
    add("raff_entrained", m + si, lost)
    out = (np.concatenate(rows), np.concatenate(cols), {**sl, "has_up": has_up})
    c._jac_structure = out
    return out


def jac_pattern(c) -> sps.csc_matrix:
    rows, cols, _ = _structure(c)
    size = len(c.state_names)
    pat = sps.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(size, size)).tocsc()
    pat.data[:] = 1.0
    return pat


def _mixer_blocks(c, p, qa, qo, va, vo, ca, co, ka) -> np.ndarray:
    """Dense ∂(dn_am/dt, dn_om/dt)/∂(n_am, n_om) per stage: (n, 17, 17); C = n/V."""
    d, dlnd_dh, dlnd_dload = distribution(ca[:, -1], co, p)
    va_, vo_ = va[:, None], vo[:, None]
    den = va_ + d * vo_
    kvv = ka[:, None] * va_ * vo_
    g_a = kvv * d / den
    g_o = -kvv / den
    g_d = kvv * (ca[:, :-1] * va_ + co * vo_) / (den * den) * d  # ∂N/∂lnD
    n, ns = c.n, c.nc - 1
    eye = np.eye(ns)
    ja = np.zeros((n, ns, ns + 1))  # ∂N/∂C_am
    ja[:, :, :ns] = g_a[:, :, None] * eye
    ja[:, :, ns] = g_d * dlnd_dh
    jo = g_o[:, :, None] * eye + (g_d * dlnd_dload)[:, :, None] * p.nu[None, None, :]
    z = p.charge
    b = np.empty((n, 2 * ns + 1, 2 * ns + 1))  # rows mol/s: mixer aq (species + H) | mixer org
    b[:, :ns, : ns + 1] = -ja
    b[:, ns, : ns + 1] = np.einsum("i,kij->kj", z, ja)
    b[:, :ns, ns + 1:] = -jo
    b[:, ns, ns + 1:] = np.einsum("i,kij->kj", z, jo)
    idx = np.arange(ns + 1)
    b[:, idx, idx] -= qa[:, None]
    if p.saponification > 0.0:
        h1 = ca[0, -1]
        b[0, ns, ns] -= qo * p.saponification * p.extractant * p.extractant_factor / (h1 + 1.0) ** 2
    b[:, ns + 1:, : ns + 1] = ja
    b[:, ns + 1:, ns + 1:] = jo
    b[:, ns + 1 + np.arange(ns), ns + 1 + np.arange(ns)] -= qo
    b[:, :, : ns + 1] /= va[:, None, None]  # columns: ∂/∂n = (1/V) ∂/∂C
    b[:, :, ns + 1:] /= vo[:, None, None]
    return b


def _settler_entries(c, x, p, qa, qo, va, vo, co, sl, data) -> None:
    """Settler cells (hold-ups V_as/N_c and f·V_os°/N_c) and the entrainment terms, in place."""
    nn, nc, ns = c.cells_per_settler, c.nc, c.nc - 1
    vca = p.v_aq_settler / nn
    data[sl["sa_am"]] = np.repeat(qa / (vca * va), nc)
    fa = (qa / vca)[:, None, None]
    data[sl["sa_sa"]] = np.broadcast_to(-fa, (c.n, nn, nc)).ravel()
    data[sl["sa_chain"]] = np.broadcast_to(fa, (c.n, nn - 1, nc)).ravel()
    q_e, c_e, v_os = c.entrainment(x, qa[0], p, qo)
    _, _, _, so = c.cells(x)
    vco = v_os / nn
    data[sl["so_om"]] = np.repeat(qo / (vco * vo), ns)
    fo = (qo / vco)[:, None, None]
    data[sl["so_so"]] = np.broadcast_to(-fo, (c.n, nn, ns)).ravel()
    data[sl["so_chain"]] = np.broadcast_to(fo, (c.n, nn - 1, ns)).ravel()
    scale = 1.0 / (float(p.v_org_settler.sum()) * c.organic_fill(x, p))  # ∂ln f/∂V_e = −scale
    inlet = np.concatenate([co[:, None], so[:, :-1]], axis=1)
    data[sl["so_entrained"]] = (fo * (inlet - so)).ravel() * scale
    weight = q_e * p.v_org_settler / (nn * float(p.v_org_settler.sum()))
    data[sl["cum_raff_org"]] = np.broadcast_to(weight[:, None, None], (c.n, nn, ns)).ravel()
    data[sl["entrained"]] = -q_e * scale
    data[sl["raff_entrained"]] = -q_e * c_e * scale


def analytic_jacobian(c, x, u, p) -> sps.csc_matrix:
    rows, cols, sl = _structure(c)
    _, qo, _, qst, qa = c.flows(u)
    va, vo, ca, co, ka = c.mixers(x, qa, qo, p)
    nc = c.nc
    data = np.empty(rows.size)
    blk = _mixer_blocks(c, p, qa, qo, va, vo, ca, co, ka)
    data[: blk.size] = blk.ravel()
    hu = sl["has_up"]
    data[sl["aq_up"]] = np.repeat(qa[c._up[hu]], nc)
    data[sl["org_prev"]] = qo
    _settler_entries(c, x, p, qa, qo, va, vo, co, sl, data)
    data[sl["cum_raff"]] = qa[0]
    data[sl["cum_strip"]] = qst
    size = len(c.state_names)
    return sps.csc_matrix((data, (rows, cols)), shape=(size, size))


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
