"""Dy/Tb solvent-extraction cascade: N stages of mixer + settler, closed organic loop.

Layout (stages k = 1..N in flowsheet order: extraction 1..Ne | scrub | strip):

    organic : 1 → 2 → … → N → (recycled) → 1
    aqueous : scrub acid → last scrub stage → … → feed stage Ne (+ feed) → … → 1 → raffinate
              strip acid → stage N → … → first strip stage → strip liquor

Per stage, four well-mixed constant-volume hold-ups (SI: m3, mol/m3, s); concentrations are the
states. Components c: the species of ``pilot_config.base.SPECIES`` plus H+ (aqueous only).

    mixer aq   : V_am dC_am/dt = Q_a (C_a,in − C_am) − N + [H+ row: + Σ_i z_i N_i]
    mixer org  : V_om dC_om/dt = Q_o (C_o,in − C_om) + N
    settler aq : V_as dC_as/dt = Q_a (C_am − C_as)
    settler org: V_os dC_os/dt = Q_o (C_om − C_os)

Mass transfer (aq → org, mol/s), a driving force toward equilibrium C_org = D·C_aq:

    N_i = k·a · V_am V_om (D_i C_am,i − C_om,i) / (V_am + D_i V_om)

which relaxes the mixer's departure from equilibrium g = C_aq − C_org/D at exactly the rate
k·a (1/s) for any D and phase ratio, equals k·a·V_am·(C_aq − C_org/D) when D·V_om ≫ V_am, and
stays bounded as D → 0 in the strip section (rate k·a on the organic side instead).

Distribution (``pilot_config.extraction``), written as one power law per species:

    D_i = A_i · f_kex,i · [HA]free^n_i · [H+]^−p_i,   [·] in mol/L
    [HA]free = C_HA·f_HA − Σ_j 2 z_j C_om,j          (smoothly floored at 0.1 % of C_HA)

constant: A = D, n = p = 0; mass action: A = Kex, n, p = z; empirical (log10 D = m·pH + b):
A = 10^b, n = 0, p = m. ``kex_factor`` (f_kex, not applied to constant D) and
``extractant_factor`` (f_HA) model extractant degradation / dilution (dataclasses.replace).
Each ion extracted releases z_i H+ to the aqueous phase, each stripped ion takes z_i back, so
the acidity and D change from stage to stage. Saponified extractant (fraction s of C_HA,
as Na/NH4 salt) neutralises Q_o·s·C_HA mol/s of aqueous acid in the mixer of stage 1 (its
organic inlet), limited smoothly as [H+] → 0: rate · H/(H + 1 mol/m3).

Outlets (integrated into ``cum_<outlet>_<sp|H|volume>``): ``raffinate`` = settler aq of stage 1
(flow Q_feed + Q_scrub), ``strip`` = settler aq of the first strip stage (flow Q_strip).

Entrainment (crud at the settler interfaces): organic leaves with the raffinate at

    Q_e = φ · Q_raff · f,   φ = φ_crud (1 − f_clear),   f = 1 − V_e / ΣV_os°

(f_clear: fraction of the interface free of crud, 1 in normal operation; φ_crud: organic volume
per raffinate volume with the interface covered), plus flooding past the settler's capacity

    φ += φ_flood · max(Q/Q_cap − 1, 0)²,   Q = Q_raff + Q_o (stage 1),   Q_cap = q_cap,type · A_s

(q_cap,type L/h/m2 per contactor type; quadratic so that φ and dφ/dQ vanish at the knee and the
steady state below capacity is exactly the one without flooding; V_e = ``cum_raffinate_organic``, the organic
lost so far). The closed organic loop has no make-up, so the organic layers of the settlers thin
in proportion to their design hold-ups, V_os,k = f·V_os,k°, and the entrained organic carries its
own metal: each settler loses q_k = Q_e V_os,k°/ΣV_os° of organic at its concentration, so

    d(V_os,k C_os,k)/dt = Q_o (C_om,k − C_os,k) − q_k C_os,k   ⇒   V_os,k dC_os,k/dt = Q_o (C_om,k − C_os,k)

and the raffinate outlet books Σ_k q_k C_os,k mol/s beside its aqueous flow (metal in the
``raffinate.<sp>`` outputs per m3 of aqueous raffinate; ``raffinate.organic`` = Q_e/(Q_raff + Q_e),
organic volume fraction in the raffinate, shown in ppm). Element balance: exact, whatever φ
(entrainment from the inner settlers returns to the next mixer and stays in the cascade).
Reported pH: mixer aqueous phase.
Purities on an REO (oxide mass) basis: Dy2O3, Tb4O7, Nd2O3, Pr6O11.
Sources: /work/shared/design/PROCESS_MODELS.md; Kremser closed form for checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pilot_config.base import L_PER_H, MOL_PER_L, SPECIES

from .extraction_support import (
    H_FLOOR,
    _smax,
    analytic_jacobian,
    distribution,
    jac_pattern,
    steady_state,
)
from .unit import index_map

PHASES = ("mixer.aq", "mixer.org", "settler.aq", "settler.org")
#: g of rare-earth oxide per mol of metal (Dy2O3, Tb4O7, Nd2O3, Pr6O11; O = 15.999)
REO_G_PER_MOL = {"Dy": 186.4985, "Tb": 186.9228, "Nd": 168.2405, "Pr": 170.2408}
REE = ("Dy", "Tb", "Nd", "Pr")


def reo_purity(n: np.ndarray, species: str, names: tuple[str, ...] = SPECIES) -> float:
    """Share of ``species`` among Dy, Tb, Nd, Pr on an oxide-mass basis (0 if none)."""
    w = np.array([REO_G_PER_MOL[s] * n[names.index(s)] for s in REE])
    total = float(w.sum())
    return float(w[REE.index(species)] / total) if total > 1e-30 else 0.0


@dataclass(frozen=True, eq=False)
class CascadeParams:
    n_extraction: int
    n_scrub: int
    n_strip: int
    v_aq_mixer: np.ndarray  # m3 per stage
    v_org_mixer: np.ndarray
    v_aq_settler: np.ndarray
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

    @property
    def n_stages(self) -> int:
        return self.n_extraction + self.n_scrub + self.n_strip


def params_from_config(cfg) -> CascadeParams:
    """SI parameters from a ``CascadeConfig`` (volumes split by design phase ratio in mixers)."""
    st = cfg.stages
    n = st.total
    q_org = cfg.organic_flow_L_per_h
    q_aq = np.array([cfg.design_feed_flow_L_per_h + cfg.scrub_flow_L_per_h] * st.extraction
                    + [cfg.scrub_flow_L_per_h] * st.scrub + [cfg.strip_flow_L_per_h] * st.strip)
    v_mix = cfg.mixer_holdup_L * 1e-3
    v_set = cfg.settler_holdup_L * 1e-3 * np.ones(n)
    frac_aq = q_aq / (q_aq + q_org)
    log_a, order_ha, order_h, charge, scaled = [], [], [], [], []
    for sp in SPECIES:
        m = cfg.distribution[sp]
        if m.model == "constant":
            a, nn, pp = np.log(m.D), 0.0, 0.0
        elif m.model == "mass_action":
            a, nn, pp = np.log(m.Kex), m.n, float(m.charge)
        else:
            a, nn, pp = m.intercept * np.log(10.0), 0.0, m.slope_per_pH
        log_a.append(a), order_ha.append(nn), order_h.append(pp)
        charge.append(float(m.charge)), scaled.append(m.model != "constant")
    return CascadeParams(
        n_extraction=st.extraction, n_scrub=st.scrub, n_strip=st.strip,
        v_aq_mixer=v_mix * frac_aq, v_org_mixer=v_mix * (1.0 - frac_aq),
        v_aq_settler=v_set * cfg.settler_aqueous_fraction,
        v_org_settler=v_set * (1.0 - cfg.settler_aqueous_fraction),
        mass_transfer=cfg.effective_mass_transfer_per_s,
        extractant=cfg.extractant_concentration_mol_per_L * MOL_PER_L,
        log_a=np.array(log_a), order_ha=np.array(order_ha), order_h=np.array(order_h),
        charge=np.array(charge), kex_scaled=np.array(scaled),
        saponification=cfg.saponification_fraction,
        design_feed_flow=cfg.design_feed_flow_L_per_h * L_PER_H,
        design_feed_H=cfg.feed_acidity_mol_per_L * MOL_PER_L,
        organic_flow=q_org * L_PER_H,
        scrub_flow=cfg.scrub_flow_L_per_h * L_PER_H, scrub_H=cfg.scrub_acid_mol_per_L * MOL_PER_L,
        strip_flow=cfg.strip_flow_L_per_h * L_PER_H, strip_H=cfg.strip_acid_mol_per_L * MOL_PER_L,
        capacity=cfg.capacity_L_per_h * L_PER_H, flood_entrainment=cfg.flood_entrainment,
    )


class Cascade:
    """The cascade as a Unit of (t, x, u, p); see the module docstring for the equations."""

    def __init__(self, name: str, p: CascadeParams):
        self.name = name
        self.species = SPECIES
        self.ne, self.ns, self.nst = p.n_extraction, p.n_scrub, p.n_strip
        self.n = n = p.n_stages
        ns = len(SPECIES)
        self.nc = nc = ns + 1  # + H
        self.width = 2 * nc + 2 * ns  # states per stage
        comps = (*SPECIES, "H")
        stage_names = []
        for k in range(1, n + 1):
            for phase, cs in zip(PHASES, (comps, SPECIES, comps, SPECIES)):
                stage_names += [f"stage{k}.{phase}.{c}" for c in cs]
        cum = []
        for outlet in ("raffinate", "strip"):
            cum += [f"cum_{outlet}_{c}" for c in comps] + [f"cum_{outlet}_volume"]
        cum.append("cum_raffinate_organic")  # V_e, m3 of organic entrained
        self.n_stage_states = len(stage_names)
        self.state_names = (*stage_names, *cum)
        self.input_names = ("feed_flow", *(f"feed_{s}" for s in SPECIES), "feed_H",
                            "organic_flow", "scrub_flow", "scrub_H", "strip_flow", "strip_H")
        outs = ["raffinate.flow", *(f"raffinate.{s}" for s in SPECIES), "raffinate.H",
                "strip.flow", *(f"strip.{s}" for s in SPECIES), "strip.H"]
        for k in range(1, n + 1):
            outs += [f"stage{k}.aq.{s}" for s in SPECIES] + [f"stage{k}.org.{s}" for s in SPECIES]
            outs.append(f"stage{k}.pH")
        outs += ["organic_inventory", "tb_purity", "dy_purity", "raffinate.organic"]
        self.output_names = tuple(outs)
        self.state_index = index_map(self.state_names)
        self.input_index = index_map(self.input_names)
        self.output_index = index_map(self.output_names)
        # aqueous upstream stage of each stage (n = none: fed from outside)
        up = np.arange(1, n + 1)
        up[self.ne + self.ns - 1] = n  # last scrub stage: scrub acid
        up[n - 1] = n  # last strip stage: strip acid
        self._up = up
        self._p0 = p
        self._pattern = None
        self.i_entrained = self.state_index["cum_raffinate_organic"]

    # -- layout helpers --------------------------------------------------------------------
    def split(self, x: np.ndarray):
        """Views (stages × comps) of mixer aq, mixer org, settler aq, settler org."""
        s = x[: self.n_stage_states].reshape(self.n, self.width)
        nc, ns = self.nc, self.nc - 1
        return s[:, :nc], s[:, nc:nc + ns], s[:, nc + ns:2 * nc + ns], s[:, 2 * nc + ns:]

    def flows(self, u: np.ndarray):
        """(Q_feed, Q_org, Q_scrub, Q_strip, aqueous flow per stage), m3/s, negatives as 0."""
        ii = self.input_index
        qf = max(u[ii["feed_flow"]], 0.0)
        qo = max(u[ii["organic_flow"]], 0.0)
        qs = max(u[ii["scrub_flow"]], 0.0)
        qst = max(u[ii["strip_flow"]], 0.0)
        qa = np.empty(self.n)
        qa[: self.ne] = qf + qs
        qa[self.ne: self.ne + self.ns] = qs
        qa[self.ne + self.ns:] = qst
        return qf, qo, qs, qst, qa

    def initial_state(self, p: CascadeParams) -> np.ndarray:
        """Barren cascade: fresh organic, aqueous at the acidity of the acid each section sees."""
        x = np.zeros(len(self.state_names))
        am, _, sa, _ = self.split(x)
        h = np.empty(self.n)
        h[: self.ne] = p.design_feed_H
        h[self.ne: self.ne + self.ns] = p.scrub_H
        h[self.ne + self.ns:] = p.strip_H
        am[:, -1] = h
        sa[:, -1] = h
        return x

    def design_inputs(self, p: CascadeParams, feed_conc: np.ndarray | None = None,
                      feed_H: float | None = None) -> np.ndarray:
        """Inputs at the design point; ``feed_conc`` mol/m3 per species (zeros if None)."""
        u = np.zeros(len(self.input_names))
        ii = self.input_index
        u[ii["feed_flow"]] = p.design_feed_flow
        if feed_conc is not None:
            u[ii["feed_Dy"]: ii["feed_Dy"] + len(SPECIES)] = feed_conc
        u[ii["feed_H"]] = p.design_feed_H if feed_H is None else feed_H
        u[ii["organic_flow"]], u[ii["scrub_flow"]] = p.organic_flow, p.scrub_flow
        u[ii["scrub_H"]], u[ii["strip_flow"]], u[ii["strip_H"]] = p.scrub_H, p.strip_flow, p.strip_H
        return u

    # -- model -----------------------------------------------------------------------------
    def organic_fill(self, x: np.ndarray, p: CascadeParams) -> float:
        """f = 1 − V_e/ΣV_os°: share of the settlers' design organic hold-up still held."""
        return max(1.0 - x[self.i_entrained] / float(p.v_org_settler.sum()), 1e-9)

    @staticmethod
    def flood_fraction(q_total: float, p: CascadeParams) -> float:
        """φ_flood·max(Q/Q_cap − 1, 0)²: organic per raffinate volume carried past capacity."""
        over = q_total / p.capacity - 1.0
        return p.flood_entrainment * over * over if over > 0.0 else 0.0

    def entrainment(self, x: np.ndarray, q_raff: float, p: CascadeParams, q_org: float = 0.0):
        """(Q_e m3/s, composition of the entrained organic mol/m3, V_os m3 per stage)."""
        phi = p.crud_entrainment * (1.0 - p.interface_clear) + self.flood_fraction(q_raff + q_org, p)
        if phi <= 0.0 and x[self.i_entrained] == 0.0:
            return 0.0, 0.0, p.v_org_settler  # clean interface, nothing lost (normal operation)
        f = self.organic_fill(x, p)
        q_e = phi * q_raff * f
        if q_e <= 0.0:
            return 0.0, 0.0, f * p.v_org_settler
        c_e = (p.v_org_settler @ self.split(x)[3]) / float(p.v_org_settler.sum())
        return q_e, c_e, f * p.v_org_settler

    def transfer(self, am: np.ndarray, om: np.ndarray, p: CascadeParams):
        """Mass-transfer rate N (mol/s, stages × species), D and the pieces of its derivative."""
        d, dlnd_dh, dlnd_dload = distribution(am[:, -1], om, p)
        va, vo = p.v_aq_mixer[:, None], p.v_org_mixer[:, None]
        den = va + d * vo
        rate = p.mass_transfer * va * vo * (d * am[:, :-1] - om) / den
        return rate, d, den, dlnd_dh, dlnd_dload

    def inflow_aq(self, sa: np.ndarray, u: np.ndarray, qa: np.ndarray, qf: float, qs: float,
                  qst: float) -> np.ndarray:
        """Aqueous inflow to each mixer, mol/s (stages × comps)."""
        ii = self.input_index
        up = self._up
        q_up = np.append(qa, 0.0)[up]
        src = np.vstack([sa, np.zeros(self.nc)])[up]
        ain = q_up[:, None] * src
        feed = np.append(u[ii["feed_Dy"]: ii["feed_Dy"] + self.nc - 1], u[ii["feed_H"]])
        ain[self.ne - 1] += qf * feed
        ain[self.ne + self.ns - 1, -1] += qs * u[ii["scrub_H"]]
        ain[self.n - 1, -1] += qst * u[ii["strip_H"]]
        return ain

    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: CascadeParams) -> np.ndarray:
        am, om, sa, so = self.split(x)
        qf, qo, qs, qst, qa = self.flows(u)
        rate = self.transfer(am, om, p)[0]
        dx = np.empty_like(x)
        dam, dom, dsa, dso = self.split(dx)
        ain = self.inflow_aq(sa, u, qa, qf, qs, qst)
        dam[:] = ain - qa[:, None] * am
        dam[:, :-1] -= rate
        dam[:, -1] += rate @ p.charge
        if p.saponification > 0.0:
            h1 = am[0, -1]
            dam[0, -1] -= qo * p.saponification * p.extractant * p.extractant_factor * h1 / (h1 + 1.0)
        dam /= p.v_aq_mixer[:, None]
        dom[:] = (qo * (np.roll(so, 1, axis=0) - om) + rate) / p.v_org_mixer[:, None]
        dsa[:] = qa[:, None] * (am - sa) / p.v_aq_settler[:, None]
        q_e, c_e, v_os = self.entrainment(x, qa[0], p, qo)
        dso[:] = qo * (om - so) / v_os[:, None]
        m = self.n_stage_states
        nc = self.nc
        dx[m: m + nc] = qa[0] * sa[0]
        dx[m: m + nc - 1] += q_e * c_e
        dx[m + nc] = qa[0]
        dx[m + nc + 1: m + 2 * nc + 1] = qst * sa[self.ne + self.ns]
        dx[m + 2 * nc + 1] = qst
        dx[self.i_entrained] = q_e
        return dx

    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: CascadeParams) -> np.ndarray:
        am, om, sa, so = self.split(x)
        qf, qo, qs, qst, qa = self.flows(u)
        ns = self.nc - 1
        raff, strip = sa[0].copy(), sa[self.ne + self.ns]
        q_e, c_e, v_os = self.entrainment(x, qa[0], p, qo)
        if qa[0] > 0.0:
            raff[:ns] += q_e * c_e / qa[0]
        organic = q_e / (qa[0] + q_e) if q_e > 0.0 else 0.0
        ph = -np.log10(_smax(am[:, -1], H_FLOOR) / MOL_PER_L)
        per_stage = np.hstack([sa[:, :ns], so, ph[:, None]]).ravel()
        return np.concatenate([
            [qa[0]], raff, [qst], strip, per_stage,
            [self.organic_inventory(x, p), reo_purity(raff, "Tb"), reo_purity(strip, "Dy"), organic]])

    # -- bookkeeping ------------------------------------------------------------------------
    def organic_inventory(self, x: np.ndarray, p: CascadeParams) -> float:
        """Organic solvent held in the cascade, m3 (settler layers thinned by entrainment)."""
        return float(p.v_org_mixer.sum() + self.organic_fill(x, p) * p.v_org_settler.sum())

    def phase_inventory(self, x: np.ndarray, p: CascadeParams) -> tuple[np.ndarray, np.ndarray]:
        """(aqueous mol per species + H, organic mol per species), all stages."""
        am, om, sa, so = self.split(x)
        aq = p.v_aq_mixer @ am + p.v_aq_settler @ sa
        org = p.v_org_mixer @ om + self.organic_fill(x, p) * (p.v_org_settler @ so)
        return aq, org

    def inventory(self, x: np.ndarray, p: CascadeParams) -> np.ndarray:
        aq, org = self.phase_inventory(x, p)
        return aq[:-1] + org

    def jac_sparsity(self):
        if self._pattern is None:
            self._pattern = jac_pattern(self)
        return self._pattern

    def jacobian(self, t: float, x: np.ndarray, u: np.ndarray, p: CascadeParams):
        return analytic_jacobian(self, x, u, p)

    def steady_state(self, u: np.ndarray, p: CascadeParams, x0: np.ndarray | None = None) -> np.ndarray:
        return steady_state(self, u, p, x0)
