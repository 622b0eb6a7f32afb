"""Pieces of the adsorption carousel kept out of the model module: the competitive Langmuir
isotherm with its derivatives, the flow-dependent LDF rate (film and intraparticle resistances
in series), the flow routing that the column roles imply, the fixed pattern of the analytic
sparse Jacobian and the front position (see ``twin.adsorption`` for the equations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: column roles, float-coded in the inputs ``role_<k>``
ROLE_STANDBY, ROLE_LEAD, ROLE_LAG, ROLE_WASH, ROLE_ELUTE, ROLE_REGENERATE = range(6)
#: outlets in state order; which role drains into which outlet
OUTLETS = ("raffinate", "wash", "eluate", "regen")
H_FLOOR = 1e-3  # mol/m3 (pH 6): smooth lower bound of [H+] inside K
C_SMOOTH = 1e-9  # mol/m3: width of the smooth positive part of c (below the block's atol 1e-8)
WILSON_GEANKOPLIS = 1.09  # Sh·ε = 1.09 (Re·Sc)^1/3, 0.0016 < Re < 55, ε 0.35–0.75
SH_STAGNANT = 2.0  # Sherwood number of a sphere in stagnant liquid (lower bound of the film)
FILM_SHARE_MAX = 0.95  # film share of the LDF resistance at the design velocity, at most


def smooth_h(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H_s, dH_s/dH): a smooth max(H, 0) bounded below by ~H_FLOOR/2."""
    root = np.sqrt(h * h + H_FLOOR * H_FLOOR)
    return 0.5 * (h + root), 0.5 * (1.0 + h / root)


def smooth_c(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c⁺, dc⁺/dc): c⁺ = ½(c + √(c² + δ²)) − δ/2 with δ = ``C_SMOOTH``: 0 at c = 0, c − δ/2 above
    δ, −δ/2 at most below. A hard clip max(c, 0) puts a kink in the Jacobian at c = 0, which the
    Rosenbrock error estimate sees as noise in the near-zero tail ahead of a front (once the
    acidity varies there) and answers with rejected steps."""
    root = np.sqrt(c * c + C_SMOOTH * C_SMOOTH)
    return 0.5 * (c + root) - 0.5 * C_SMOOTH, 0.5 * (1.0 + c / root)


def langmuir(c: np.ndarray, h: np.ndarray, q_max: np.ndarray, p, *, derivatives: bool = False):
    """q* (mol/kg) for liquid ``c`` (..., ns) at acidity ``h`` (...); optionally the derivatives.

    q*_i = q_max,i K_i c⁺_i / S,  S = 1 + Σ_j K_j c⁺_j,  K_i = K_L,i (H/H_ref)^−n_i, with c⁺ the
    smooth positive part of c (``smooth_c``). ``q_max`` broadcasts against ``c`` (e.g. per
    column × 1 × species). Returns q*, and with ``derivatives``: ∂q*_i/∂c_j (..., ns, ns) and
    ∂q*_i/∂H (..., ns).
    """
    hs, dhs = smooth_h(h)
    log_ratio = np.log(hs / p.h_ref)[..., None]
    k = np.exp(p.log_k_ref - p.proton_exponent * log_ratio)
    cp, dcp = smooth_c(c)
    kc = k * cp
    s = 1.0 + kc.sum(axis=-1, keepdims=True)
    qmk = q_max * k
    qs = qmk * cp / s
    if not derivatives:
        return qs
    dq_dc = -qs[..., :, None] * (k * dcp)[..., None, :] / s[..., None]
    diag = qmk * dcp / s
    idx = np.arange(c.shape[-1])
    dq_dc[..., idx, idx] += diag
    dk_dh = -p.proton_exponent * k * (dhs / hs)[..., None]
    dq_dh = q_max * dk_dh * cp / s - qs * (dk_dh * cp).sum(axis=-1, keepdims=True) / s
    return qs, dq_dc, dq_dh


def film_coefficient(u_s: np.ndarray, p) -> np.ndarray:
    """Film coefficient k_f (m/s) at superficial velocity ``u_s`` (m/s), Wilson & Geankoplis,
    Ind. Eng. Chem. Fundam. 5 (1966) 9: Sh = k_f d_p/D_m = (1.09/ε)·(Re·Sc)^1/3, where
    Re·Sc = u_s d_p/D_m (the viscosity cancels); bounded below by the stagnant-sphere Sh = 2."""
    pe_particle = np.maximum(u_s, 0.0) * p.particle_diameter / p.diffusivity
    sh = np.maximum(WILSON_GEANKOPLIS / p.porosity * np.cbrt(pe_particle), SH_STAGNANT)
    return sh * p.diffusivity / p.particle_diameter


def ldf_rates(flow: np.ndarray, feed: np.ndarray, q_max: np.ndarray, p) -> np.ndarray:
    """k_LDF (1/s) per column and species, shape (columns, 1, species): film and intraparticle
    resistances in series (Glueckauf LDF; Ruthven, Principles of Adsorption and Adsorption
    Processes (1984) §8.3), in the solid-phase driving force of the bed balance:

        1/k_LDF,i(u) = ρ_p Λ_i R_p / (3 k_f(u)) + 1/k_int,i,   ρ_p = ρ_b/(1 − ε),  R_p = d_p/2
        Λ_i = q*_i(c_F)/c_F,i = q_max,i K_i / (1 + Σ_j K_j c_F,j)   (isotherm chord at the feed)

    k_int is fixed by the configured rate k_d at the design velocity u_d, so with the film
    share φ_i = k_d,i ρ_p Λ_i R_p / (3 k_f(u_d)) (at most ``FILM_SHARE_MAX``):

        k_LDF,i(u) = k_d,i / (1 − φ_i + φ_i·k_f(u_d)/k_f(u))

    k_LDF = k_d at the design velocity for any feed; it falls as the flow drops (k_f ∝ u^1/3).
    ``feed``: the loading feed (species + H, mol/m3); ``q_max`` (columns, 1, species).
    """
    k_d = np.broadcast_to(p.k_ldf, q_max.shape)
    if not p.film:
        return k_d.copy()
    c = np.maximum(feed[:-1], 0.0)
    hs, _ = smooth_h(np.asarray(feed[-1], dtype=float))
    k = np.exp(p.log_k_ref - p.proton_exponent * np.log(hs / p.h_ref))
    chord = q_max * k / (1.0 + k @ c)
    rho_p = p.bulk_density / (1.0 - p.porosity)
    kf_design = film_coefficient(np.array(p.design_velocity), p)
    share = np.minimum(k_d * rho_p * chord * 0.5 * p.particle_diameter / (3.0 * kf_design), FILM_SHARE_MAX)
    kf = film_coefficient(flow / p.area, p)[:, None, None]
    return k_d / (1.0 - share + share * kf_design / kf)


@dataclass(frozen=True)
class Routing:
    """Where the fluids go for one set of roles and inputs (held over a synchronisation step).

    flow[k]: volumetric flow through column k (m3/s); g[k, m]: flow from column m's outlet into
    column k; ext[k]: external molar inflow of each liquid component into column k (mol/s);
    out[o, m]: flow from column m into outlet o; bypass[o]: molar flow of each component sent
    straight to outlet o (feed with no loading column); bypass_flow[o] its volumetric flow.
    """

    flow: np.ndarray
    g: np.ndarray
    ext: np.ndarray
    out: np.ndarray
    bypass: np.ndarray
    bypass_flow: np.ndarray


def route(roles: np.ndarray, feed_flow: float, feed: np.ndarray, offline: tuple) -> Routing:
    """Routing for integer ``roles``; ``feed`` holds the feed's liquid components (species + H);
    ``offline``: (flow, H) of the wash, eluent and regenerant. Flows are split equally between
    columns sharing a role; the lead columns' outlets are mixed and split over the lag columns.
    """
    n, nc = len(roles), len(feed)
    flow, g, ext = np.zeros(n), np.zeros((n, n)), np.zeros((n, nc))
    no = len(OUTLETS)
    out, bypass, bypass_flow = np.zeros((no, n)), np.zeros((no, nc)), np.zeros(no)
    qf = max(feed_flow, 0.0)
    lead, lag = np.flatnonzero(roles == ROLE_LEAD), np.flatnonzero(roles == ROLE_LAG)
    first = lead if lead.size else lag
    if first.size:
        flow[first] = qf / first.size
        ext[first] = flow[first, None] * feed
        last = first
        if lead.size and lag.size:
            flow[lag] = qf / lag.size
            g[np.ix_(lag, lead)] = qf / (lead.size * lag.size)
            last = lag
        out[0, last] = flow[last]
    else:
        bypass[0], bypass_flow[0] = qf * feed, qf
    for o, (role, (q, h)) in enumerate(zip((ROLE_WASH, ROLE_ELUTE, ROLE_REGENERATE), offline), start=1):
        cols = np.flatnonzero(roles == role)
        if cols.size:
            flow[cols] = max(q, 0.0) / cols.size
            ext[cols, -1] = flow[cols] * max(h, 0.0)
            out[o, cols] = flow[cols]
    return Routing(flow, g, ext, out, bypass, bypass_flow)


class JacobianPattern:
    """Row/column indices of every Jacobian entry, in the order the values are produced, and
    the map from those entries (duplicates summed) onto a CSC matrix built once."""

    def __init__(self, n_columns: int, n_cells: int, ns: int, n_cum: int):
        self.shape_cells = (n_columns, n_cells)
        nc, nf = ns + 1, 2 * ns + 1
        self.n_bed = n_columns * n_cells * nf
        self.n = self.n_bed + n_cum
        ix = np.arange(self.n_bed).reshape(n_columns, n_cells, nf)
        liq, sol = ix[..., :nc], ix[..., nc:]
        pieces = [
            (liq, liq),  # transport diagonal
            (liq[:, 1:], liq[:, :-1]),  # from the upstream cell
            (liq[:, :-1], liq[:, 1:]),  # dispersion from the downstream cell
            (np.broadcast_to(liq[:, None, 0], (n_columns, n_columns, nc)),
             np.broadcast_to(liq[None, :, -1], (n_columns, n_columns, nc))),  # column m → k
            (np.broadcast_to(sol[..., :, None], sol.shape + (ns,)),
             np.broadcast_to(liq[..., None, :ns], sol.shape + (ns,))),  # dq_i/dc_j
            (sol, np.broadcast_to(liq[..., ns:], sol.shape)),  # dq_i/dH
            (sol, sol),  # dq_i/dq_i
            (np.broadcast_to(liq[..., :ns, None], sol.shape + (ns,)),
             np.broadcast_to(liq[..., None, :ns], sol.shape + (ns,))),  # dc_i/dc_j (uptake)
            (liq[..., :ns], np.broadcast_to(liq[..., ns:], sol.shape)),  # dc_i/dH
            (liq[..., :ns], sol),  # dc_i/dq_i
        ]
        cum = self.n_bed + np.arange(n_cum).reshape(n_cum // (nc + 1), nc + 1)[:, :nc]
        n_out = cum.shape[0]
        pieces.append((np.broadcast_to(cum[:, None, :], (n_out, n_columns, nc)),
                       np.broadcast_to(liq[None, :, -1, :], (n_out, n_columns, nc))))
        h_row = np.broadcast_to(liq[..., ns:], sol.shape)
        pieces += [(h_row, liq[..., :ns]), (liq[..., ns], liq[..., ns]), (h_row, sol)]  # proton release
        rows = np.concatenate([np.ravel(r) for r, _ in pieces])
        cols = np.concatenate([np.ravel(c) for _, c in pieces])
        key = cols.astype(np.int64) * self.n + rows
        uniq, self.slot = np.unique(key, return_inverse=True)
        self.indices = (uniq % self.n).astype(np.int32)
        self.indptr = np.searchsorted(uniq // self.n, np.arange(self.n + 1)).astype(np.int32)
        self.nnz = len(uniq)

    def matrix(self, values: np.ndarray) -> sp.csc_matrix:
        data = np.bincount(self.slot, weights=values, minlength=self.nnz)
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))

    def sparsity(self) -> sp.csc_matrix:
        return self.matrix(np.ones(len(self.slot))).astype(bool).astype(float)


def front_position(site: np.ndarray) -> float:
    """Fraction of the bed length where the HREE site loading first falls below 50 %."""
    n = len(site)
    below = np.flatnonzero(site < 0.5)
    if below.size == 0:
        return 1.0
    j = int(below[0])
    if j == 0:
        return 0.5 / n * min(site[0] / 0.5, 1.0)
    z0, z1 = (j - 0.5) / n, (j + 0.5) / n
    return float(z0 + (z1 - z0) * (site[j - 1] - 0.5) / (site[j - 1] - site[j]))
