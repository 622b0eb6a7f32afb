"""Analytic (sparse) Jacobian of the extraction cascade (``twin.extraction``, whose docstring has
the equations; parameters in ``twin.extraction_support``).

Structure: per stage a dense (A+S)×(A+S) block (S species, A = S + 1 aqueous components: the
species and H, + SO4 with sulfate speciation) couples the mixer's aqueous and organic moles
n = V·C through the mass transfer N(C_am, C_om) (D depends on the acid and on the organic
loading); the columns are ∂/∂n = (1/V)·∂/∂C at the split of the current flows.
Everything else is first-order flow coupling: settler cell 1 ← its mixer (Q/(V_cell·V_m)),
cell j ← cell j − 1, mixer aq ← the upstream settler's last aq cell, mixer org ← the previous
stage's last org cell (stage 1 ← stage N, the organic recycle, in a closed loop; an open loop's
stage 1 is fed a constant organic and the last stage's organic cell feeds ``cum_organic_out``),
cumulative outlets ← the outlet cells. Derivatives of N (k·a per stage, reduced past the
capacity; it depends on the flows only):

    ∂N_i/∂C_am,i = k·a V_a V_o D_i / den_i,      ∂N_i/∂C_om,i|_D = −k·a V_a V_o / den_i,
    ∂N_i/∂D_i    = k·a V_a V_o (C_am,i V_a + C_om,i V_o) / den_i²,   den_i = V_a + D_i V_o,
    ∂D_i/∂H = D_i ∂lnD_i/∂H,                     ∂D_i/∂C_om,j = D_i ∂lnD_i/∂load · ν_j.

With ``acid``, D depends on the free H+ activity a(H_T, S_T, C_am) of ``twin.extraction_acid``:
∂lnD_i/∂θ = ∂lnD_i/∂a · ∂a/∂θ for θ = H_T, S_T and (activity model) the aqueous metals.

Entrainment into the raffinate (Q_e): cum_raffinate_<sp> ← every settler organic cell
(Q_e V_os,k°/(N_c ΣV_os°)), V_e ← itself (∂Q_e/∂V_e = −Q_e/(f ΣV_os°)), and every settler
organic cell and cum_raffinate_<sp> ← V_e through the hold-ups V_os = f·V_os° (∂f/∂V_e = −1/ΣV_os°).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sps

from .extraction_acid import free_acid
from .extraction_distribution import distribution


def _structure(c) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows, cols, slices) of every Jacobian entry, in the order ``analytic_jacobian`` fills."""
    cached = getattr(c, "_jac_structure", None)
    if cached is not None:
        return cached
    n, w, nc, nn = c.n, c.width, c.nc, c.cells_per_settler  # nc: aqueous components
    ns = len(c.species)
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
    fed = np.arange(1, n) if c.open_loop else np.arange(n)  # stages fed by the previous one
    add("org_prev", base[fed, None] + nc + si, base[c._prev[fed], None] + last + nc + si)
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
    if c.open_loop:
        add("cum_org_out", c.i_organic_out + si, base[n - 1] + last + nc + si)
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
    """Dense ∂(dn_am/dt, dn_om/dt)/∂(n_am, n_om) per stage: (n, A+S, A+S); C = n/V."""
    ns, nc, ih = len(c.species), c.nc, c.ih
    if p.acid is None:
        d, dlnd_dh, dlnd_dload = distribution(ca[:, ih], co, p)
    else:
        s_t = ca[:, ih + 1] if p.acid.sulfate else None
        act, da_dht, da_dst, da_dc, _, _ = free_acid(ca[:, ih], s_t, ca[:, :ns], p.acid)
        d, dlnd_da, dlnd_dload = distribution(act, co, p)
    va_, vo_ = va[:, None], vo[:, None]
    den = va_ + d * vo_
    kvv = ka[:, None] * va_ * vo_
    g_a = kvv * d / den
    g_o = -kvv / den
    g_d = kvv * (ca[:, :ns] * va_ + co * vo_) / (den * den) * d  # ∂N/∂lnD
    n = c.n
    eye = np.eye(ns)
    ja = np.zeros((n, ns, nc))  # ∂N/∂C_am
    ja[:, :, :ns] = g_a[:, :, None] * eye
    if p.acid is None:
        ja[:, :, ih] = g_d * dlnd_dh
    else:  # D through the free H+ activity a(H_T, S_T, C_am)
        g_act = g_d * dlnd_da
        ja[:, :, ih] = g_act * da_dht[:, None]
        if p.acid.sulfate:
            ja[:, :, ih + 1] = g_act * da_dst[:, None]
        if da_dc is not None:
            ja[:, :, :ns] += g_act[:, :, None] * da_dc[:, None, :]
    jo = g_o[:, :, None] * eye + (g_d * dlnd_dload)[:, :, None] * p.nu[None, None, :]
    z = p.charge
    b = np.zeros((n, nc + ns, nc + ns))  # rows mol/s: mixer aq (species, H[, SO4]) | mixer org
    b[:, :ns, :nc] = -ja
    b[:, ih, :nc] = np.einsum("i,kij->kj", z, ja)
    b[:, :ns, nc:] = -jo
    b[:, ih, nc:] = np.einsum("i,kij->kj", z, jo)
    idx = np.arange(nc)
    b[:, idx, idx] -= qa[:, None]
    if p.saponification > 0.0:
        h1 = ca[0, ih]
        b[0, ih, ih] -= qo * p.saponification * p.extractant * p.extractant_factor / (h1 + 1.0) ** 2
    b[:, nc:, :nc] = ja
    b[:, nc:, nc:] = jo
    b[:, nc + np.arange(ns), nc + np.arange(ns)] -= qo
    b[:, :, :nc] /= va[:, None, None]  # columns: ∂/∂n = (1/V) ∂/∂C
    b[:, :, nc:] /= vo[:, None, None]
    return b


def _settler_entries(c, x, p, qa, qo, va, vo, co, sl, data) -> None:
    """Settler cells (hold-ups V_as/N_c and f·V_os°/N_c) and the entrainment terms, in place."""
    nn, nc, ns = c.cells_per_settler, c.nc, len(c.species)
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
    if c.open_loop:
        data[sl["cum_org_out"]] = qo
    size = len(c.state_names)
    return sps.csc_matrix((data, (rows, cols)), shape=(size, size))


