"""Dy/Tb solvent-extraction cascade: N stages of mixer + settler, closed (or open) organic loop.

Layout (stages k = 1..N in flowsheet order: extraction 1..Ne | scrub | strip):

    organic : 1 → 2 → … → N → (recycled) → 1
    aqueous : scrub acid → last scrub stage → … → feed stage Ne (+ feed) → … → 1 → raffinate
              strip acid → stage N → … → first strip stage → strip liquor

With no scrub stages (``stages.scrub: 0``) the feed stage Ne has no aqueous from upstream and the
scrub acid, if any flows, joins the feed there. Open loop (``organic_loop: open``): stage 1 is fed
organic of the configured composition C_o,in and stage N's last settler cell leaves the cascade,
``cum_organic_in_<sp>`` += Q_o C_o,in, ``cum_organic_out_<sp|volume>`` += Q_o C_os,N (and Q_o).

Units SI (m3, mol/m3, s). Components c: the species of ``CascadeParams.species`` plus H+
(aqueous only; and SO4 with sulfate speciation). Per stage a mixer and a settler, each holding an aqueous and an organic phase.

Mixer: fixed total volume V_m, the phase split following the entering flows at once,

    V_om = ε V_m,  V_am = (1 − ε) V_m,  ε = Q_o/(Q_o + Q_a)  (bounded to 0.05–0.95)

(assumption: the mixer's residence time, 0.5–2 min, is short against the flow moves and the
hours of the cascade's dynamics; the bounds stand for phase continuity). Its states are the moles
per phase n = V·C, so a split change moves no metal: C = n/V jumps by V_old/V_new and relaxes
within τ_mix, the same metal leaving as the displaced volume would carry.

    dn_am/dt = Q_a (C_a,in − C_am) − N + [H+ row: + Σ_i z_i N_i]
    dn_om/dt = Q_o (C_o,in − C_om) + N

Settler: each phase N_c equal well-mixed cells in series (``settler_cells``; 1: one CSTR),

    (V_as/N_c) dC_as,j/dt = Q_a (C_as,j−1 − C_as,j),   C_as,0 = C_am   (organic alike)

a residence-time distribution of mean τ_s = V_s/Q whatever N_c, variance τ_s²/N_c and mode
(dead time) (N_c − 1)/N_c · τ_s (Levenspiel, Chemical Reaction Engineering, ch. 14).

Mass transfer (aq → org, mol/s), a driving force toward equilibrium C_org = D·C_aq:

    N_i = k·a_k · V_am V_om (D_i C_am,i − C_om,i) / (V_am + D_i V_om)

which relaxes the mixer's departure from equilibrium g = C_aq − C_org/D at exactly the rate
k·a (1/s) for any D and phase ratio (Murphree efficiency k·a·τ/(1 + k·a·τ) of a mixer of
residence time τ) and stays bounded as D → 0 in the strip section. Past the settler's
capacity the dispersion band reaches the weirs and phases back-mix between stages; lumped as a
smooth loss of k·a (assumption, β = ``efficiency_loss``):

    k·a_k = k·a / (1 + β · max(Q_k/Q_cap − 1, 0)²),   Q_k = Q_a,k + Q_o

(unchanged, and so the steady state, below capacity; k·a halves at Q_k = (1 + β^−½) Q_cap).

Distribution (``pilot_config.extraction``), written as one power law per species:

    D_i = A_i · f_kex,i · [HA]free^n_i · [H+]^−p_i,   [·] in mol/L
    [HA]free = C_HA·f_HA − Σ_j ν_j C_om,j            (smoothly floored at 0.1 % of C_HA; ν = 2z default)

constant: A = D, n = p = 0; mass action: A = Kex, n and p (default z); empirical
(log10 D = m·pH + b): A = 10^b, n = 0, p = m. The other kinds are evaluated with the
``twin.sx.distribution`` models in pH = −log10[H+] and [HA]free (the power laws then too, the
same equations): empirical_dosage, log10 D = (m0 + m1·dose)·pH + B0 + B1·log10(dose), and
separation_factor, D_i = β_i·D_ref with log10 β_i linear in pH and in the loading 1 − [HA]free/C_HA.
``kex_factor`` (f_kex, not applied to constant D) and
``extractant_factor`` (f_HA) model extractant degradation / dilution (dataclasses.replace).
Each ion extracted releases z_i H+ to the aqueous phase, each stripped ion takes z_i back, so
the acidity and D change from stage to stage. Saponified extractant (fraction s of C_HA,
as Na/NH4 salt) neutralises Q_o·s·C_HA mol/s of aqueous acid in the mixer of stage 1 (its
organic inlet), limited smoothly as [H+] → 0: rate · H/(H + 1 mol/m3).

Acid chemistry (config ``acid``, ``twin.extraction_acid``): with ``speciation: sulfate`` the H
component is the total acid H_T = [H+] + [HSO4-] (inputs ``feed_H`` etc. are totals) and SO4
(total sulfate S_T, constant per inlet, not extracted) is one more aqueous component carried
like the others; D and the pH use the free H+ activity a = γ1·h, h the root of the bisulfate
quadratic in (H_T, S_T), γ1 from the activity model (1 without one). Without ``acid``, a = H.

Outlets (integrated into ``cum_<outlet>_<sp|H|volume>``): ``raffinate`` = last settler aq cell
of stage 1 (flow Q_feed + Q_scrub), ``strip`` = that of the first strip stage (flow Q_strip).

Entrainment (crud at the settler interfaces): organic leaves with the raffinate at

    Q_e = φ · Q_raff · f,   φ = φ_crud (1 − f_clear),   f = 1 − V_e / ΣV_os°

(f_clear: fraction of the interface free of crud, 1 in normal operation; φ_crud: organic volume
per raffinate volume with the interface covered), plus flooding past the settler's capacity

    φ += φ_flood · max(Q/Q_cap − 1, 0)²,   Q = Q_raff + Q_o (stage 1),   Q_cap = q_cap,type · A_s

(q_cap,type L/h/m2 per contactor type; quadratic so that φ and dφ/dQ vanish at the knee and the
steady state below capacity is exactly the one without flooding; V_e = ``cum_raffinate_organic``, the organic
lost so far). The closed organic loop has no make-up, so the organic layers of the settlers thin
in proportion to their design hold-ups, V_os,k = f·V_os,k°, and the entrained organic carries its
own metal: each settler cell loses q = Q_e (V_os,k°/N_c)/ΣV_os° of organic at its concentration, so

    d(V_os,kj C_os,kj)/dt = Q_o (C_in − C_os,kj) − q C_os,kj   ⇒   V_os,kj dC_os,kj/dt = Q_o (C_in − C_os,kj)

and the raffinate outlet books Σ q C_os,kj mol/s beside its aqueous flow (metal in the
``raffinate.<sp>`` outputs per m3 of aqueous raffinate; ``raffinate.organic`` = Q_e/(Q_raff + Q_e),
organic volume fraction in the raffinate, shown in ppm). Element balance: exact, whatever φ, the
flows and the mixer split (entrainment from the inner settlers returns to the next mixer and stays
in the cascade). ``organic_inventory``: the solvent at the design split (a split change moves
solvent between a stage's mixer and its settler layer; the loop's solvent changes by V_e only).
Reported pH: mixer aqueous phase. Per-stage outputs: the settler outlet cells.
Purities on an REO (oxide mass) basis (``twin.extraction_signals``).
Sources: /work/shared/design/PROCESS_MODELS.md; Kremser closed form for checks.
"""

from __future__ import annotations

import numpy as np

from pilot_config.base import MOL_PER_L

from .extraction_acid import free_acid
from .extraction_jacobian import analytic_jacobian, jac_pattern
from .extraction_signals import REO_G_PER_MOL, reo_purity, signal_names  # noqa: F401
from .extraction_support import (  # noqa: F401  (CascadeParams, params_from_config: the unit's API)
    H_FLOOR,
    SPLIT_MAX,
    SPLIT_MIN,
    CascadeParams,
    _smax,
    distribution,
    organic_split,
    params_from_config,
    steady_state,
)
from .unit import index_map


class Cascade:
    """The cascade as a Unit of (t, x, u, p); see the module docstring for the equations."""

    def __init__(self, name: str, p: CascadeParams):
        self.name = name
        self.species = sp = p.species
        self.ne, self.ns, self.nst = p.n_extraction, p.n_scrub, p.n_strip
        self.n = n = p.n_stages
        ns = len(sp)
        self.ih = ns  # index of H among the aqueous components
        sulfate = p.acid is not None and p.acid.sulfate
        comps = (*sp, "H", "SO4") if sulfate else (*sp, "H")
        self.nc = nc = len(comps)  # aqueous components: species, H[, SO4]
        self.open_loop = p.organic_inlet is not None
        self.cells_per_settler = nn = p.settler_cells
        self.width = (nn + 1) * (nc + ns)  # states per stage: mixer | settler cells (aq | org)
        stage_names, cum, self.input_names, self.output_names = signal_names(p, comps, n)
        self.n_stage_states = len(stage_names)
        self.state_names = (*stage_names, *cum)
        self.state_index = index_map(self.state_names)
        self.input_index = index_map(self.input_names)
        self.output_index = index_map(self.output_names)
        # aqueous upstream stage of each stage (n = none: fed from outside)
        up = np.arange(1, n + 1)
        up[self.ne + self.ns - 1] = n  # last scrub stage (the feed stage if none): scrub acid
        up[n - 1] = n  # last strip stage: strip acid
        self._up = up
        self._p0 = p
        self._pattern = None
        self._flow_cache = None
        self._prev = np.roll(np.arange(n), 1)  # organic from the previous stage (1 ← N)
        self.i_entrained = self.state_index["cum_raffinate_organic"]
        if self.open_loop:
            self.i_organic_in = self.state_index[f"cum_organic_in_{sp[0]}"]
            self.i_organic_out = self.state_index[f"cum_organic_out_{sp[0]}"]
        self._i_feed = self.input_index[f"feed_{sp[0]}"]  # first of the feed concentrations

    # -- layout helpers --------------------------------------------------------------------
    def cells(self, x: np.ndarray):
        """Views of the states: mixer aq mol (stages × comps), mixer org mol (stages × species),
        settler aq mol/m3 (stages × cells × comps), settler org mol/m3 (stages × cells × species)."""
        s = x[: self.n_stage_states].reshape(self.n, self.width)
        nc, nb = self.nc, self.nc + len(self.species)
        cell = s[:, nb:].reshape(self.n, self.cells_per_settler, nb)
        return s[:, :nc], s[:, nc:nb], cell[:, :, :nc], cell[:, :, nc:]

    def split(self, x: np.ndarray, u: np.ndarray | None = None, p: CascadeParams | None = None):
        """Per-stage concentrations (stages × comps, mol/m3): mixer aq, mixer org (at the split of
        the flows in ``u``; the design split if None), settler aq and org outlets (views)."""
        p = self._p0 if p is None else p
        am, om, sa, so = self.cells(x)
        if u is None:
            va, vo = p.v_aq_mixer, p.v_org_mixer
        else:
            _, qo, _, _, qa = self.flows(u)
            va, vo = self.mixer_volumes(qa, qo, p)
        return am / va[:, None], om / vo[:, None], sa[:, -1], so[:, -1]

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

    @staticmethod
    def mixer_volumes(qa: np.ndarray, qo: float, p: CascadeParams) -> tuple[np.ndarray, np.ndarray]:
        """(V_am, V_om) m3 per stage: the mixer's volume split as the entering flows."""
        vm = p.v_aq_mixer + p.v_org_mixer
        eps = organic_split(qa, qo, p.v_org_mixer / vm)
        return vm * (1.0 - eps), vm * eps

    @staticmethod
    def mass_transfer(qa: np.ndarray, qo: float, p: CascadeParams) -> np.ndarray:
        """k·a per stage, 1/s: k·a / (1 + β max(Q_k/Q_cap − 1, 0)²)."""
        over = np.maximum((qa + qo) / p.capacity - 1.0, 0.0)
        return p.mass_transfer / (1.0 + p.efficiency_loss * over * over)

    def initial_state(self, p: CascadeParams) -> np.ndarray:
        """Barren cascade: fresh organic, aqueous at the acidity of the acid each section sees."""
        x = np.zeros(len(self.state_names))
        am, _, sa, _ = self.cells(x)
        h = np.empty(self.n)
        h[: self.ne] = p.design_feed_H
        h[self.ne: self.ne + self.ns] = p.scrub_H
        h[self.ne + self.ns:] = p.strip_H
        am[:, self.ih] = h * p.v_aq_mixer
        sa[:, :, self.ih] = h[:, None]
        if self.nc > self.ih + 1:  # sulfate of each section's acid
            h[: self.ne] = p.acid.feed_S
            h[self.ne: self.ne + self.ns] = p.acid.scrub_S
            h[self.ne + self.ns:] = p.acid.strip_S
            am[:, self.ih + 1] = h * p.v_aq_mixer
            sa[:, :, self.ih + 1] = h[:, None]
        return x

    def design_inputs(self, p: CascadeParams, feed_conc: np.ndarray | None = None,
                      feed_H: float | None = None) -> np.ndarray:
        """Inputs at the design point; ``feed_conc`` mol/m3 per species (zeros if None)."""
        u = np.zeros(len(self.input_names))
        ii = self.input_index
        u[ii["feed_flow"]] = p.design_feed_flow
        if feed_conc is not None:
            u[self._i_feed: self._i_feed + len(self.species)] = feed_conc
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
        c_e = (p.v_org_settler @ self.cells(x)[3].mean(axis=1)) / float(p.v_org_settler.sum())
        return q_e, c_e, f * p.v_org_settler

    def mixers(self, x: np.ndarray, qa: np.ndarray, qo: float, p: CascadeParams):
        """(V_am, V_om, C_am, C_om, k·a per stage) at the flows ``qa`` (per stage) and ``qo``."""
        key = (qa[0], qa[self.ne], qa[-1], qo)  # the volumes and k·a depend on the flows only
        hit = self._flow_cache
        if hit is None or hit[1] is not p or hit[0] != key:
            va, vo = self.mixer_volumes(qa, qo, p)
            hit = self._flow_cache = (key, p, va[:, None], vo[:, None], self.mass_transfer(qa, qo, p))
        _, _, va, vo, ka = hit
        s = x[: self.n_stage_states].reshape(self.n, self.width)
        nc = self.nc
        return va[:, 0], vo[:, 0], s[:, :nc] / va, s[:, nc:nc + len(self.species)] / vo, ka

    def acidity(self, ca: np.ndarray, p: CascadeParams) -> tuple[np.ndarray, np.ndarray]:
        """(H+ activity as mol/m3, free [H+] mol/m3) per stage from aqueous concentrations
        (stages × comps): [H+] itself without ``acid``; else ``twin.extraction_acid``."""
        ih = self.ih
        if p.acid is None:
            return ca[:, ih], ca[:, ih]
        s_t = ca[:, ih + 1] if self.nc > ih + 1 else None
        act, _, _, _, h, _ = free_acid(ca[:, ih], s_t, ca[:, :ih], p.acid)
        return act, h

    def transfer(self, ca, co, va, vo, ka, p: CascadeParams) -> np.ndarray:
        """Mass-transfer rate N (mol/s, stages × species) from mixer concentrations."""
        d = distribution(self.acidity(ca, p)[0], co, p)[0]
        va, vo = va[:, None], vo[:, None]
        return ka[:, None] * va * vo * (d * ca[:, :self.ih] - co) / (va + d * vo)

    def inflow_aq(self, sa_out: np.ndarray, u: np.ndarray, qa: np.ndarray, qf: float, qs: float,
                  qst: float, p: CascadeParams | None = None) -> np.ndarray:
        """Aqueous inflow to each mixer, mol/s (stages × comps), from the settler outlets."""
        ii = self.input_index
        up = self._up
        q_up = np.append(qa, 0.0)[up]
        src = np.vstack([sa_out, np.zeros(self.nc)])[up]
        ain = q_up[:, None] * src
        ih = self.ih
        feed = np.append(u[self._i_feed: self._i_feed + ih], u[ii["feed_H"]])
        if self.nc > ih + 1:  # sulfate: constant in each inlet (config ``acid``)
            acid = (self._p0 if p is None else p).acid
            feed = np.append(feed, acid.feed_S)
            ain[self.ne + self.ns - 1, ih + 1] += qs * acid.scrub_S
            ain[self.n - 1, ih + 1] += qst * acid.strip_S
        ain[self.ne - 1] += qf * feed
        ain[self.ne + self.ns - 1, ih] += qs * u[ii["scrub_H"]]
        ain[self.n - 1, ih] += qst * u[ii["strip_H"]]
        return ain

    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: CascadeParams) -> np.ndarray:
        _, _, sa, so = self.cells(x)
        qf, qo, qs, qst, qa = self.flows(u)
        va, vo, ca, co, ka = self.mixers(x, qa, qo, p)
        rate = self.transfer(ca, co, va, vo, ka, p)
        dx = np.empty_like(x)
        dam, dom, dsa, dso = self.cells(dx)
        dam[:] = self.inflow_aq(sa[:, -1], u, qa, qf, qs, qst, p) - qa[:, None] * ca
        ih = self.ih
        dam[:, :ih] -= rate
        dam[:, ih] += rate @ p.charge
        if p.saponification > 0.0:
            h1 = ca[0, ih]
            dam[0, ih] -= qo * p.saponification * p.extractant * p.extractant_factor * h1 / (h1 + 1.0)
        org_in = so[self._prev, -1]
        if self.open_loop:
            org_in[0] = p.organic_inlet
        dom[:] = qo * (org_in - co) + rate
        nn = self.cells_per_settler
        dsa[:] = qa[:, None, None] * (np.concatenate([ca[:, None], sa[:, :-1]], axis=1) - sa)
        dsa /= (p.v_aq_settler / nn)[:, None, None]
        q_e, c_e, v_os = self.entrainment(x, qa[0], p, qo)
        dso[:] = qo * (np.concatenate([co[:, None], so[:, :-1]], axis=1) - so) / (v_os / nn)[:, None, None]
        m, nc = self.n_stage_states, self.nc
        dx[m: m + nc] = qa[0] * sa[0, -1]
        dx[m: m + ih] += q_e * c_e
        dx[m + nc] = qa[0]
        dx[m + nc + 1: m + 2 * nc + 1] = qst * sa[self.ne + self.ns, -1]
        dx[m + 2 * nc + 1] = qst
        dx[self.i_entrained] = q_e
        if self.open_loop:
            dx[self.i_organic_in: self.i_organic_in + ih] = qo * p.organic_inlet
            dx[self.i_organic_out: self.i_organic_out + ih] = qo * so[-1, -1]
            dx[self.i_organic_out + ih] = qo
        return dx

    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: CascadeParams) -> np.ndarray:
        ca, _, sa, so = self.split(x, u, p)
        _, qo, _, qst, qa = self.flows(u)
        ns = self.ih
        raff, strip = sa[0].copy(), sa[self.ne + self.ns]
        q_e, c_e, v_os = self.entrainment(x, qa[0], p, qo)
        if qa[0] > 0.0:
            raff[:ns] += q_e * c_e / qa[0]
        organic = q_e / (qa[0] + q_e) if q_e > 0.0 else 0.0
        ph = -np.log10(_smax(self.acidity(ca, p)[0], H_FLOOR) / MOL_PER_L)
        per_stage = np.hstack([sa[:, :ns], so, ph[:, None]]).ravel()
        return np.concatenate([
            [qa[0]], raff, [qst], strip, per_stage,
            [self.organic_inventory(x, p), reo_purity(raff, "Tb", self.species),
             reo_purity(strip, "Dy", self.species), organic]])

    # -- bookkeeping ------------------------------------------------------------------------
    def organic_inventory(self, x: np.ndarray, p: CascadeParams) -> float:
        """Organic solvent held in the cascade, m3 (design split; layers thinned by entrainment)."""
        return float(p.v_org_mixer.sum() + self.organic_fill(x, p) * p.v_org_settler.sum())

    def phase_inventory(self, x: np.ndarray, p: CascadeParams) -> tuple[np.ndarray, np.ndarray]:
        """(aqueous mol per species + H, organic mol per species), all stages."""
        am, om, sa, so = self.cells(x)
        nn = self.cells_per_settler
        aq = am.sum(axis=0) + (p.v_aq_settler / nn) @ sa.sum(axis=1)
        org = om.sum(axis=0) + self.organic_fill(x, p) * ((p.v_org_settler / nn) @ so.sum(axis=1))
        return aq, org

    def inventory(self, x: np.ndarray, p: CascadeParams) -> np.ndarray:
        aq, org = self.phase_inventory(x, p)
        return aq[: self.ih] + org

    def jac_sparsity(self):
        if self._pattern is None:
            self._pattern = jac_pattern(self)
        return self._pattern

    def jacobian(self, t: float, x: np.ndarray, u: np.ndarray, p: CascadeParams):
        return analytic_jacobian(self, x, u, p)

    def steady_state(self, u: np.ndarray, p: CascadeParams, x0: np.ndarray | None = None) -> np.ndarray:
        return steady_state(self, u, p, x0)
