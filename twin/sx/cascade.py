"""Equilibrium-stage SX cascade: topology, stage equations and their analytic Jacobian.

Stages k = 0..N−1 in organic-flow order: extraction | scrub | strip (any section may be absent).
The organic flows 0 → 1 → … → N−1, then out (open loop, stage 0 fed a configured organic) or
back to stage 0 (closed loop). Each section's aqueous enters its last stage and flows towards
its first; the scrub liquor may join the feed (it leaves scrub stage 0 into the last extraction
stage). SI units inside: flows m3/s, concentrations mol/m3.

Unknowns per stage: x_k = (ln a_k,i, ln c_k,i, pH_k), a aqueous and c organic metal
concentrations (logs keep them positive over the ten decades a raffinate spans). Equations:

    metal i      Σ_j L_kj a_j,i + F_k,i + Q_o c_in,k,i − Q_k a_k,i − Q_o c_k,i = 0      (mol/s)
    equilibrium  ln c_k,i − ln(η_k D_i(pH_k, E_k) a_k,i + (1 − η_k) c_in,k,i) = 0,
                 E_k = E_tot − Σ_i ν_E,i c_k,i
    acid H       Σ_j L_kj H_T,j + F_H,k − Q_k H_T,k + Q_o Σ_i ν_H,i (c_k,i − c_in,k,i) = 0

with L_kj the aqueous flow from stage j into stage k, F the constant inflows, H_T,k = H_T(h_k)
of ``twin.sx.acid`` (sulfate and chloride do not transfer, so S_T, Cl_T per stage are fixed by
the topology alone), ν_H the H+ released and ν_E the extractant consumed per ion extracted.
Extractant is conserved in the organic, so the free extractant is the total less the bound.
η_k is the Murphree organic-phase stage efficiency, (c_out − c_in)/(c* − c_in) with c* = D a
the organic in equilibrium with the stage's aqueous outlet (Treybal, Mass-Transfer Operations,
3rd ed., §10; Murphree, Ind. Eng. Chem. 17 (1925) 747): η = 1 is an equilibrium stage, η < 1
stands for a rate-limited mixer at steady state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.sx import acid
from twin.sx.distribution import LN10, evaluate


@dataclass(frozen=True)
class AqueousInlet:
    flow: float  # m3/s
    metals: np.ndarray  # mol/m3 per species
    h_total: float  # mol/m3, [H+] + [HSO4-]
    s_total: float  # mol/m3
    cl_total: float = 0.0


@dataclass(frozen=True)
class Cascade:
    species: tuple[str, ...]
    charges: np.ndarray
    h_per_ion: np.ndarray
    e_per_ion: np.ndarray
    models: tuple
    sections: tuple[tuple[str, int], ...]  # (name, stages) in organic order
    q_aq: np.ndarray  # (N,) aqueous outflow of each stage, m3/s
    aq_link: np.ndarray  # (N, N) m3/s from stage j into stage k
    aq_feed: np.ndarray  # (N, M) constant metal inflow mol/s
    aq_feed_h: np.ndarray  # (N,) constant H_T inflow mol/s
    s_total: np.ndarray  # (N,)
    cl_total: np.ndarray  # (N,)
    q_org: float
    org_link: np.ndarray  # (N, N) 1 where stage j's organic feeds stage k
    org_feed: np.ndarray  # (N, M) organic inlet mol/m3 (open loop, stage 0)
    e_total: float  # mol/m3 free + bound extractant
    acid_model: acid.AcidModel
    aq_outlets: tuple[tuple[str, int], ...]  # (name, stage) of each aqueous product
    efficiency: np.ndarray  # (N,) Murphree organic-phase stage efficiency, 1 = equilibrium

    @property
    def n(self) -> int:
        return len(self.q_aq)

    @property
    def m(self) -> int:
        return len(self.species)

    def first(self, section: str) -> int:
        k = 0
        for name, count in self.sections:
            if name == section:
                return k
            k += count
        raise KeyError(section)


def _aqueous_topology(sections, m: int, scrub_to_feed: bool):
    """Stage outflows, links, constant inflows (metals, H_T, S_T, Cl_T) and product outlets."""
    n = sum(s[1] for s in sections)
    start, k0 = {}, 0
    for name, count, _ in sections:
        start[name], k0 = k0, k0 + count
    feed, feeds = np.zeros((n, m)), np.zeros((3, n))
    q, link, outlets = np.zeros(n), np.zeros((n, n)), []
    for name, count, inlet in sections:
        last = start[name] + count - 1
        feed[last] += inlet.flow * inlet.metals
        feeds[:, last] += inlet.flow * np.array([inlet.h_total, inlet.s_total, inlet.cl_total])
        q[start[name]: last + 1] += inlet.flow
    joins = scrub_to_feed and "scrub" in start and "extraction" in start
    if joins:  # the scrub liquor flows on through the extraction section
        q[: start["scrub"]] += dict((s[0], s[2]) for s in sections)["scrub"].flow
    for name, count, _ in sections:
        for k in range(start[name], start[name] + count - 1):
            link[k, k + 1] = q[k + 1]
        if name == "scrub" and joins:
            link[start["scrub"] - 1, start["scrub"]] = q[start["scrub"]]
        else:
            outlets.append((name, start[name]))
    return q, link, feed, feeds, tuple(outlets)


def build_cascade(species, charges, h_per_ion, e_per_ion, models, sections, q_org, org_inlet,
                  e_inlet_free, closed, acid_model, scrub_to_feed=True, efficiency=None) -> Cascade:
    """``sections``: [(name, stages, AqueousInlet)] in organic order; ``org_inlet`` mol/m3 per
    species (open loop) and ``e_inlet_free`` mol/m3 (open: free extractant of the inlet organic;
    closed: total extractant of the loop); ``efficiency``: Murphree efficiency per stage (1)."""
    m = len(species)
    q, link, feed, feeds, outlets = _aqueous_topology(sections, m, scrub_to_feed)
    n = len(q)
    organic = np.eye(n, k=-1)
    org_feed = np.zeros((n, m))
    e_per = np.asarray(e_per_ion, dtype=float)
    if closed:
        organic[0, n - 1] = 1.0
        e_total = float(e_inlet_free)
    else:
        org_feed[0] = org_inlet
        e_total = float(e_inlet_free + np.dot(e_per, org_inlet))
    totals = np.linalg.solve(np.diag(q) - link, feeds.T)  # S_T, Cl_T per stage: no transfer
    eff = np.ones(n) if efficiency is None else np.asarray(efficiency, dtype=float)
    return Cascade(tuple(species), np.asarray(charges, float), np.asarray(h_per_ion, float), e_per,
                   tuple(models), tuple((s[0], s[1]) for s in sections), q, link, feed, feeds[0],
                   totals[:, 1], totals[:, 2], float(q_org), organic, org_feed, e_total, acid_model,
                   outlets, eff)


@dataclass
class StageState:
    """Everything the equations need at one iterate (arrays over stages / species)."""

    a: np.ndarray
    c: np.ndarray
    ph: np.ndarray
    e_free: np.ndarray
    h: np.ndarray
    kc: np.ndarray
    h_total: np.ndarray
    dht_dph: np.ndarray
    ln_d: np.ndarray
    dln_d_ph: np.ndarray
    dln_d_e: np.ndarray
    c_in: np.ndarray
    u: np.ndarray  # (1 − η) c_in/(η D a): the organic inlet's share of a non-equilibrium stage


def stage_state(case: Cascade, x: np.ndarray, lg1: np.ndarray) -> StageState:
    """Unpack x and evaluate speciation and distribution (``lg1``: log10 γ1 per stage)."""
    m = case.m
    xs = x.reshape(case.n, 2 * m + 1)
    a, c, ph = np.exp(xs[:, :m]), np.exp(xs[:, m:2 * m]), xs[:, 2 * m]
    e_free = case.e_total - c @ case.e_per_ion
    h = acid.free_h(ph, lg1)
    kc = acid.k_conc(case.acid_model, lg1)
    h_total, dht_dh = acid.acid_total(h, case.s_total, kc)
    ln_d, d_ph, d_e = evaluate(case.models, ph, e_free, case.e_total)
    c_in = case.org_link @ c + case.org_feed
    eta = case.efficiency[:, None]
    u = (1.0 - eta) * c_in / (eta * np.exp(ln_d) * a)
    return StageState(a, c, ph, e_free, h, kc, h_total, -LN10 * h * dht_dh, ln_d, d_ph, d_e, c_in, u)


def residual(case: Cascade, x: np.ndarray, s: StageState) -> np.ndarray:
    """The stage equations, laid out like x: (metal balances, equilibria, acid balance) per stage."""
    m = case.m
    xs = x.reshape(case.n, 2 * m + 1)
    r = np.empty_like(xs)
    r[:, :m] = (case.aq_link @ s.a + case.aq_feed - case.q_aq[:, None] * s.a
                + case.q_org * (s.c_in - s.c))
    r[:, m:2 * m] = xs[:, m:2 * m] - xs[:, :m] - s.ln_d - np.log(case.efficiency)[:, None] - np.log1p(s.u)
    r[:, 2 * m] = (case.aq_link @ s.h_total + case.aq_feed_h - case.q_aq * s.h_total
                   + case.q_org * ((s.c - s.c_in) @ case.h_per_ion))
    return r.ravel()


def jacobian(case: Cascade, s: StageState) -> np.ndarray:
    """∂residual/∂x, analytic (dense: N(2M+1) is small for any real cascade)."""
    n, m = case.n, case.m
    w = 2 * m + 1
    jac = np.zeros((n * w, n * w))
    ia, ic, ip = np.arange(m), m + np.arange(m), 2 * m
    qo, nu_h, nu_e = case.q_org, case.h_per_ion, case.e_per_ion
    for k in range(n):
        rk, ck = k * w, k * w
        jac[rk + ia, ck + ia] = -case.q_aq[k] * s.a[k]
        jac[rk + ia, ck + ic] = -qo * s.c[k]
        jac[rk + ip, ck + ic] = qo * nu_h * s.c[k]
        jac[rk + ip, ck + ip] = -case.q_aq[k] * s.dht_dph[k]
        f = 1.0 / (1.0 + s.u[k])  # share of the equilibrium term in the stage's organic
        jac[np.ix_(rk + ic, ck + ic)] = np.eye(m) + np.outer(f * s.dln_d_e[k], nu_e * s.c[k])
        jac[rk + ic, ck + ia] = -f
        jac[rk + ic, ck + ip] = -f * s.dln_d_ph[k]
        for j in np.flatnonzero(case.aq_link[k]):
            flow, cj = case.aq_link[k, j], j * w
            jac[rk + ia, cj + ia] += flow * s.a[j]
            jac[rk + ip, cj + ip] += flow * s.dht_dph[j]
        for j in np.flatnonzero(case.org_link[k]):
            cj = j * w
            jac[rk + ia, cj + ic] += qo * s.c[j]
            jac[rk + ip, cj + ic] -= qo * nu_h * s.c[j]
            jac[rk + ic, cj + ic] -= (1.0 - f) * s.c[j] / np.maximum(s.c_in[k], 1e-300)
    return jac


def holdup_jacobian(case: Cascade, s: StageState, tau: float = 1.0) -> np.ndarray:
    """∂(stage hold-up)/∂x for hold-ups V = Q·τ per phase (the pseudo-transient mass matrix);
    the equilibrium rows are algebraic (zero)."""
    n, m = case.n, case.m
    w = 2 * m + 1
    mass = np.zeros((n * w, n * w))
    ia, ic = np.arange(m), m + np.arange(m)
    for k in range(n):
        rk = k * w
        mass[rk + ia, rk + ia] = case.q_aq[k] * tau * s.a[k]
        mass[rk + ia, rk + ic] = case.q_org * tau * s.c[k]
        mass[rk + 2 * m, rk + 2 * m] = case.q_aq[k] * tau * s.dht_dph[k]
    return mass


def row_scale(case: Cascade) -> np.ndarray:
    """1/(typical magnitude) of each equation, for the merit function and the convergence test."""
    m = case.m
    metal_in = case.aq_feed.sum(axis=0) + case.q_org * case.org_feed.sum(axis=0)
    metal_in = np.where(metal_in > 0, metal_in, 1.0)
    h_in = max(case.aq_feed_h.sum() + case.q_org * float(case.org_feed.sum() * 3), 1e-30)
    scale = np.empty((case.n, 2 * m + 1))
    scale[:, :m] = 1.0 / metal_in
    scale[:, m:2 * m] = 1.0
    scale[:, 2 * m] = 1.0 / h_in
    return scale.ravel()
