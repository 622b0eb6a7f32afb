"""Jacobian (analytic, sparse) and steady state of the extraction cascade (``twin.extraction``).

Structure: per stage a dense 17×17 block couples the mixer's aqueous (species + H+) and organic
states through the mass transfer N(C_am, C_om) (D depends on [H+] and on the organic loading);
everything else is first-order flow coupling: settler ← its mixer, mixer aq ← the upstream
settler aq, mixer org ← the previous stage's settler org (stage 1 ← stage N, the organic
recycle), cumulative outlets ← the outlet settlers. Derivatives of N (module docstring of
``twin.extraction``):

    ∂N_i/∂C_am,i = k·a V_a V_o D_i / den_i,      ∂N_i/∂C_om,i|_D = −k·a V_a V_o / den_i,
    ∂N_i/∂D_i    = k·a V_a V_o (C_am,i V_a + C_om,i V_o) / den_i²,   den_i = V_a + D_i V_o,
    ∂D_i/∂H = D_i ∂lnD_i/∂H,                     ∂D_i/∂C_om,j = D_i ∂lnD_i/∂load · 2 z_j.

Entrainment into the raffinate (Q_e, module docstring of ``twin.extraction``): cum_raffinate_<sp>
← every settler organic (Q_e V_os,k°/ΣV_os°), V_e ← itself (∂Q_e/∂V_e = −Q_e/(f ΣV_os°)), and
every settler organic and cum_raffinate_<sp> ← V_e through the hold-ups V_os = f·V_os°
(∂f/∂V_e = −1/ΣV_os°).

Steady state: stiff integration (BDF, analytic Jacobian) of the stage states to a long horizon
(pseudo-transient continuation), then Newton polish on the stage balances.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sps
from scipy.integrate import solve_ivp
from scipy.sparse.linalg import spsolve

from pilot_config.base import MOL_PER_L

H_FLOOR = 1e-3  # mol/m3 (pH 6): smooth lower bound of [H+] inside D


class SteadyStateError(RuntimeError):
    pass


def _smax(x: np.ndarray, floor: float) -> np.ndarray:
    """Smooth max(x, 0) bounded below by ~floor/2."""
    return 0.5 * (x + np.sqrt(x * x + floor * floor))


def distribution(h: np.ndarray, c_org: np.ndarray, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D (stages × species), plus ∂lnD/∂H and ∂lnD/∂[HA]free·∂[HA]free/∂load (for Jacobians).

    ``h``: mixer aqueous [H+] (mol/m3, per stage); ``c_org``: mixer organic (stages × species).
    """
    ha_tot = p.extractant * p.extractant_factor
    load = c_org @ (2.0 * p.charge)
    raw = ha_tot - load
    floor = 1e-3 * ha_tot
    free = _smax(raw, floor)
    hh = _smax(h, H_FLOOR)
    log_a = p.log_a + np.where(p.kex_scaled, np.log(p.kex_factor), 0.0)
    ln_d = (log_a + np.outer(np.log(free / MOL_PER_L), p.order_ha)
            - np.outer(np.log(hh / MOL_PER_L), p.order_h))
    d = np.exp(np.clip(ln_d, -40.0, 40.0))
    dfree = 0.5 * (1.0 + raw / np.sqrt(raw * raw + floor * floor))  # d free / d raw
    dhh = 0.5 * (1.0 + h / np.sqrt(h * h + H_FLOOR * H_FLOOR))
    dlnd_dh = -np.outer(dhh / hh, p.order_h)
    dlnd_dload = -np.outer(dfree / free, p.order_ha)  # per unit of load (mol/m3 HA)
    return d, dlnd_dh, dlnd_dload


def _structure(c) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows, cols, slices) of every Jacobian entry, in the order ``analytic_jacobian`` fills."""
    cached = getattr(c, "_jac_structure", None)
    if cached is not None:
        return cached
    n, w, nc = c.n, c.width, c.nc
    ns = nc - 1
    nb = nc + ns
    base = np.arange(n) * w
    r_blk = (base[:, None, None] + np.arange(nb)[None, :, None] + 0 * np.arange(nb)[None, None, :])
    c_blk = (base[:, None, None] + 0 * np.arange(nb)[None, :, None] + np.arange(nb)[None, None, :])
    rows, cols, sl = [r_blk.ravel()], [c_blk.ravel()], {}
    pos = r_blk.size
    has_up = np.flatnonzero(c._up < n)
    ci = np.arange(nc)
    si = np.arange(ns)

    def add(key, r, cc):
        nonlocal pos
        rows.append(r.ravel()), cols.append(cc.ravel())
        sl[key] = slice(pos, pos + r.size)
        pos += r.size

    add("aq_up", base[has_up, None] + ci, base[c._up[has_up], None] + nb + ci)
    prev = np.roll(np.arange(n), 1)
    add("org_prev", base[:, None] + nc + si, base[prev, None] + 2 * nc + ns + si)
    add("sa_am", base[:, None] + nb + ci, base[:, None] + ci)
    add("sa_sa", base[:, None] + nb + ci, base[:, None] + nb + ci)
    add("so_om", base[:, None] + nb + nc + si, base[:, None] + nc + si)
    add("so_so", base[:, None] + nb + nc + si, base[:, None] + nb + nc + si)
    m = c.n_stage_states
    strip0 = c.ne + c.ns
    add("cum_raff", m + ci, base[0] + nb + ci)
    add("cum_strip", m + nc + 1 + ci, base[strip0] + nb + ci)
    add("cum_raff_org", m + 0 * base[:, None] + si, base[:, None] + nb + nc + si)
    lost = c.i_entrained
    add("entrained", np.array([lost]), np.array([lost]))
    add("so_entrained", base[:, None] + nb + nc + si, lost + 0 * base[:, None] + 0 * si)
    add("raff_entrained", m + si, lost + 0 * si)
    out = (np.concatenate(rows), np.concatenate(cols), {**sl, "has_up": has_up})
    c._jac_structure = out
    return out


def jac_pattern(c) -> sps.csc_matrix:
    rows, cols, _ = _structure(c)
    size = len(c.state_names)
    pat = sps.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(size, size)).tocsc()
    pat.data[:] = 1.0
    return pat


def _mixer_blocks(c, x, u, p, qa, qo) -> np.ndarray:
    """Dense ∂(mixer aq, mixer org)/∂(mixer aq, mixer org) per stage: (n, 17, 17)."""
    am, om, _, _ = c.split(x)
    d, dlnd_dh, dlnd_dload = distribution(am[:, -1], om, p)
    va, vo = p.v_aq_mixer[:, None], p.v_org_mixer[:, None]
    den = va + d * vo
    kvv = p.mass_transfer * va * vo
    g_a = kvv * d / den
    g_o = -kvv / den
    g_d = kvv * (am[:, :-1] * va + om * vo) / (den * den) * d  # ∂N/∂lnD
    n, ns = c.n, c.nc - 1
    eye = np.eye(ns)
    ja = np.zeros((n, ns, ns + 1))
    ja[:, :, :ns] = g_a[:, :, None] * eye
    ja[:, :, ns] = g_d * dlnd_dh
    jo = g_o[:, :, None] * eye + (g_d * dlnd_dload)[:, :, None] * (2.0 * p.charge)[None, None, :]
    z = p.charge
    b = np.empty((n, 2 * ns + 1, 2 * ns + 1))  # mixer aq (species + H) | mixer org
    b[:, :ns, : ns + 1] = -ja
    b[:, ns, : ns + 1] = np.einsum("i,kij->kj", z, ja)
    b[:, :ns, ns + 1:] = -jo
    b[:, ns, ns + 1:] = np.einsum("i,kij->kj", z, jo)
    idx = np.arange(ns + 1)
    b[:, idx, idx] -= qa[:, None]
    if p.saponification > 0.0:
        h1 = am[0, -1]
        b[0, ns, ns] -= qo * p.saponification * p.extractant * p.extractant_factor / (h1 + 1.0) ** 2
    b[:, : ns + 1, :] /= p.v_aq_mixer[:, None, None]
    b[:, ns + 1:, : ns + 1] = ja / p.v_org_mixer[:, None, None]
    jo_org = jo.copy()
    jo_org[:, np.arange(ns), np.arange(ns)] -= qo
    b[:, ns + 1:, ns + 1:] = jo_org / p.v_org_mixer[:, None, None]
    return b


def _entrainment_entries(c, x, q_raff, qo, p, sl, data) -> None:
    """Settler-organic flow terms (hold-ups f·V_os°) and the entrainment terms, in place."""
    ns = c.nc - 1
    q_e, c_e, v_os = c.entrainment(x, q_raff, p, qo)
    _, om, _, so = c.split(x)
    fo = np.repeat(qo / v_os, ns)
    data[sl["so_om"]], data[sl["so_so"]] = fo, -fo
    scale = 1.0 / (float(p.v_org_settler.sum()) * c.organic_fill(x, p))  # ∂ln f/∂V_e = −scale
    data[sl["so_entrained"]] = (qo * (om - so) / v_os[:, None]).ravel() * scale
    data[sl["cum_raff_org"]] = np.repeat(q_e * p.v_org_settler * scale * c.organic_fill(x, p), ns)
    data[sl["entrained"]] = -q_e * scale
    data[sl["raff_entrained"]] = -q_e * c_e * scale


def analytic_jacobian(c, x, u, p) -> sps.csc_matrix:
    rows, cols, sl = _structure(c)
    qf, qo, qs, qst, qa = c.flows(u)
    nc, ns = c.nc, c.nc - 1
    data = np.empty(rows.size)
    blk = _mixer_blocks(c, x, u, p, qa, qo)
    data[: blk.size] = blk.ravel()
    hu = sl["has_up"]
    data[sl["aq_up"]] = np.repeat(qa[c._up[hu]] / p.v_aq_mixer[hu], nc)
    data[sl["org_prev"]] = np.repeat(qo / p.v_org_mixer, ns)
    fa = np.repeat(qa / p.v_aq_settler, nc)
    data[sl["sa_am"]], data[sl["sa_sa"]] = fa, -fa
    _entrainment_entries(c, x, qa[0], qo, p, sl, data)
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
