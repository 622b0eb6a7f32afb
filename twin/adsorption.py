"""Adsorption carousel: packed columns in lead/lag series, an offline wash → elute → regenerate.

Bed balance per column, species i (method of lines, finite volumes, SI units):

    ε ∂c_i/∂t + ρ_b ∂q_i/∂t = ε D_ax ∂²c_i/∂z² − u_s ∂c_i/∂z
    ⇒ ∂c_i/∂t = D_ax ∂²c_i/∂z² − v ∂c_i/∂z − (ρ_b/ε) ∂q_i/∂t,      v = u_s/ε = Q/(ε A)
    ∂q_i/∂t  = k_i (q_i* − q_i)                                      (linear driving force)
    q_i*     = q_max,i K_i c_i / (1 + Σ_j K_j c_j),  K_i = K_L,i ([H+]/[H+]_ref)^−n_i
    ∂[H+]/∂t = D_ax ∂²[H+]/∂z² − v ∂[H+]/∂z + (ρ_b/ε) Σ_i n_i ∂q_i/∂t   (proton release)

c: liquid in the voids, mol/m3; q: on the adsorbent, mol/kg; ε: bed porosity; ρ_b: adsorbent
mass per bed volume, kg/m3, so the phase ratio is ρ_b/ε kg of adsorbent per m3 of void liquid
(the textbook ((1−ε)/ε)·ρ_p with particle density ρ_p = ρ_b/(1−ε)).
Acid: ion exchange M^n+ + n HR ⇌ MR_n + n H+ on the H-form adsorbent, with n_i the isotherm's
proton exponent (default the element's usual charge, ``pilot_config.base.CHARGE``; the same
stoichiometry that makes K ∝ [H+]^−n_i; Helfferich, Ion Exchange (1962) ch. 5): each ion
loaded releases n_i protons into the void liquid, each ion eluted takes n_i back. On the shipped feed the HREE release ~1.4 mol/m3 against 10 mol/m3 of feed acid: the
acid wave travels with the liquid, ahead of the metal, so a loading column's outlet runs ~14 %
above the feed acidity from about one void volume on and falls back as its metal breaks
through; the acidity (conductivity) analysers show the loading front. Per column,
d/dt(ε V Σ[H+] − ρ_b V Σ_i n_i q_i) = Q_k ([H+]_in − [H+]_out), exactly (``h_inventory``).

Film: k_i is the LDF rate of film and intraparticle resistances in series, with the film
coefficient from the Wilson–Geankoplis correlation at each column's superficial velocity and
the configured rate holding at the design velocity (``twin.adsorption_support.ldf_rates``):
k_LDF falls as the flow drops, and a higher feed flow (fewer transfer units per bed) widens the
mass-transfer zone in bed volumes. ``film_correlation: none`` keeps k_i fixed.

Discretisation: N equal cells (Δz = L/N), first-order upwind convection (monotone, no negative
concentrations), central dispersion on interior faces. Danckwerts boundaries: the total flux
through the inlet face is v·c_in (the dispersive part folded into the boundary condition), the
outlet face carries v·c_N (∂c/∂z = 0); the outlet concentration is that of the last cell.
Axial dispersion D_ax = v·L/Pe (mechanical dispersion ∝ v). Upwinding adds a numerical
dispersion v·Δz/2; it is subtracted (D = max(D_ax − vΔz/2, 0), Rouchon's correction used in
chromatography simulation), so the bed's dispersion is exactly D_ax once N ≥ Pe/2 and the
breakthrough curves converge as the grid is refined (N < Pe/2: effective Pe = 2N).
The grid is refined automatically so the configured Pe holds: ``params_from_config`` uses
N = max(n_cells, ⌈Pe/2⌉) cells (``cells_for_peclet``, at most ``MAX_CELLS`` = 400, i.e. Pe ≤ 800
honoured; a larger Pe is run at 400 cells, effective Pe 800, and logged). The shipped Pe 80 on 40
cells needs no refinement (cost unchanged); Pe 160 and 320 run on 80 and 160 cells (cost about
linear in N: the banded solve is O(N)).

Roles (inputs ``role_<k>``, float-coded, rounded): 0 standby (no flow), 1 lead, 2 lag,
3 wash, 4 elute, 5 regenerate. The feed enters the lead column, whose outlet feeds the lag
column inside the same right-hand side (exact series); the lag outlet (the lead outlet if no
column is lag; the feed itself if neither) is the ``raffinate``. Wash, eluent and regenerant
(inputs ``<fluid>_flow``, ``<fluid>_H``; acid only) pass the columns in those roles into the
outlets ``wash``, ``eluate`` and ``regen``. Columns sharing a role share its flow equally.
Column k's conservation: d/dt(ε V Σc + ρ_b V Σq) = Q_k (c_in − c_out), exactly, per species.

Outlets integrate into ``cum_<outlet>_<sp|H>`` (mol) and ``cum_<outlet>_volume`` (m3).
Pressure drop: Δp = f_dp · κ · u_s · L (linear Darcy / Kozeny–Carman form).
Faults: ``capacity_factor`` (q_max per column: capacity loss over cycles), ``dispersion_factor``
(D_ax per column: channeling, an earlier and broader breakthrough), ``dp_factor`` (fouling),
changed with ``dataclasses.replace``.

Integration: ``preferred_method`` is RODAS3 (``twin.adsorption_solver``) with a structured
solve of α·I − J (``twin.adsorption_linalg``); ``jacobian`` (analytic, sparse) and
``jac_sparsity`` serve BDF/Radau if a caller asks for them. The solver takes u and p from the
latest ``derivatives`` call of the unit (constant over one ``advance``), so one unit instance
must not be advanced from two threads at once. Recommended block tolerances: rtol 1e-4,
atol 1e-8 (eluate totals within 1e-4 of a 1e-7 reference; element balances are exact at any
tolerance because Rosenbrock steps with the exact Jacobian keep linear invariants).
Sources: /work/shared/design/PROCESS_MODELS.md; Guiochon et al., Fundamentals of Preparative and
Nonlinear Chromatography (2006) for the lumped model and the numerical-dispersion correction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pilot_config.base import CHARGE, HREE, MOL_PER_L, SPECIES

from .adsorption_linalg import BandLayout, CarouselSystem
from .adsorption_solver import rodas3_for
from .adsorption_support import (
    OUTLETS,
    ROLE_ELUTE,
    ROLE_LAG,
    ROLE_LEAD,
    ROLE_REGENERATE,
    ROLE_STANDBY,
    ROLE_WASH,
    JacobianPattern,
    front_position,
    langmuir,
    ldf_rates,
    route,
)
from .unit import index_map

__all__ = ["OUTLETS", "ROLE_ELUTE", "ROLE_LAG", "ROLE_LEAD", "ROLE_REGENERATE", "ROLE_STANDBY",
           "ROLE_WASH", "AdsorptionCarousel", "AdsorptionParams", "next_phase", "next_roles",
           "cells_for_peclet", "offline_phases", "params_from_config"]

log = logging.getLogger(__name__)
MAX_CELLS = 400  # grid refinement cap (Pe ≤ 2·MAX_CELLS honoured)


@dataclass(frozen=True, eq=False)
class AdsorptionParams:
    n_columns: int
    n_cells: int
    length: float  # m
    area: float  # m2
    porosity: float
    bulk_density: float  # kg/m3 bed
    peclet: float  # v L / D_ax
    q_max: np.ndarray  # mol/kg per species
    log_k_ref: np.ndarray  # ln(K_L / (m3/mol))
    proton_exponent: np.ndarray
    k_ldf: np.ndarray  # 1/s
    h_ref: float  # mol/m3
    dp_coefficient: float  # Pa per (m/s) per m
    wash_flow: float  # m3/s
    wash_H: float  # mol/m3
    eluent_flow: float
    eluent_H: float
    regen_flow: float
    regen_H: float
    breakthrough_limit: float
    phase_seconds: tuple[float, float, float]  # wash, elute, regenerate
    capacity_factor: np.ndarray  # per column (capacity loss over cycles)
    dispersion_factor: np.ndarray  # per column (channeling: > 1 broadens the front)
    dp_factor: np.ndarray  # per column (fouling)
    film: bool  # k_LDF follows the flow (Wilson–Geankoplis film)
    particle_diameter: float  # m
    diffusivity: float  # m2/s, liquid diffusivity of the loading ions
    design_velocity: float  # m/s superficial, where k_ldf holds

    @property
    def bed_volume(self) -> float:
        return self.area * self.length


def cells_for_peclet(n_cells: int, peclet: float) -> int:
    """Cells so that the upwind numerical dispersion v·Δz/2 does not exceed D_ax = v·L/Pe:
    N = max(n_cells, ⌈Pe/2⌉), capped at ``MAX_CELLS`` (logged when the cap binds)."""
    need = math.ceil(peclet / 2.0 - 1e-9)
    if need > MAX_CELLS:
        log.warning("bed Peclet number %g needs %d cells; running %d (effective Pe %d)",
                    peclet, need, MAX_CELLS, 2 * MAX_CELLS)
    return max(n_cells, min(need, MAX_CELLS))


def params_from_config(cfg, species: tuple[str, ...] = SPECIES) -> AdsorptionParams:
    """SI parameters from a ``CarouselConfig``; BV/h flows use the bed volume of one column.
    Per-species arrays in the order of ``species`` (the line's list, ``PilotLineConfig.species``)."""
    col = cfg.column
    area = np.pi * 0.25 * col.bed_diameter_m ** 2
    bv_per_h_to_si = area * col.bed_length_m / 3600.0
    missing = [s for s in species if s not in col.isotherms]
    if missing:
        raise ValueError(f"adsorption.column.isotherms: no isotherm for {missing}; the line's species are "
                         f"{list(species)}")
    iso = [col.isotherms[s] for s in species]
    ones = np.ones(cfg.n_columns)
    return AdsorptionParams(
        n_columns=cfg.n_columns, n_cells=cells_for_peclet(col.n_cells, col.peclet_number),
        length=col.bed_length_m, area=area,
        porosity=col.porosity, bulk_density=col.bulk_density_kg_per_m3, peclet=col.peclet_number,
        q_max=np.array([i.q_max_mol_per_kg for i in iso]),
        log_k_ref=np.log(np.maximum([i.K_L_m3_per_mol for i in iso], 1e-300)),
        proton_exponent=np.array([CHARGE[s] if i.proton_exponent is None else i.proton_exponent
                                  for s, i in zip(species, iso)], dtype=float),
        k_ldf=np.array([i.k_ldf_per_s for i in iso]),
        h_ref=col.reference_acidity_mol_per_L * MOL_PER_L,
        dp_coefficient=cfg.pressure_drop_kPa_per_m_per_m_per_h * 1e3 * 3600.0,
        wash_flow=cfg.wash_flow_BV_per_h * bv_per_h_to_si, wash_H=cfg.wash_acidity_mol_per_L * MOL_PER_L,
        eluent_flow=cfg.elute_flow_BV_per_h * bv_per_h_to_si,
        eluent_H=cfg.eluent_acidity_mol_per_L * MOL_PER_L,
        regen_flow=cfg.regenerate_flow_BV_per_h * bv_per_h_to_si,
        regen_H=cfg.regenerant_acidity_mol_per_L * MOL_PER_L,
        breakthrough_limit=cfg.breakthrough_limit_fraction,
        phase_seconds=(60.0 * cfg.wash_minutes, 60.0 * cfg.elute_minutes, 60.0 * cfg.regenerate_minutes),
        capacity_factor=ones.copy(), dispersion_factor=ones.copy(), dp_factor=ones.copy(),
        film=col.film_correlation == "wilson_geankoplis", particle_diameter=col.particle_diameter_m,
        diffusivity=col.ion_diffusivity_m2_per_s, design_velocity=col.design_superficial_velocity_m_per_h / 3600.0,
    )


# -- the PLC sequence, as pure functions -----------------------------------------------------
def next_roles(roles) -> tuple[int, ...]:
    """Roles after a carousel switch: lead → wash, lag → lead, the standby column next after the
    lag in carousel order → lag. Raises ValueError if no column stands by (regenerated)."""
    r = [int(round(v)) for v in roles]
    if ROLE_LEAD not in r or ROLE_LAG not in r:
        raise ValueError(f"a switch needs a lead and a lag column; roles {r}")
    lag = r.index(ROLE_LAG)
    ring = [(lag + i) % len(r) for i in range(1, len(r))]
    standby = [k for k in ring if r[k] == ROLE_STANDBY]
    if not standby:
        raise ValueError(f"no regenerated column stands by; roles {r}")
    out = list(r)
    out[r.index(ROLE_LEAD)], out[lag], out[standby[0]] = ROLE_WASH, ROLE_LEAD, ROLE_LAG
    return tuple(out)


def next_phase(role: int) -> int:
    """Offline sequence wash → elute → regenerate → standby (other roles stay as they are)."""
    return {ROLE_WASH: ROLE_ELUTE, ROLE_ELUTE: ROLE_REGENERATE, ROLE_REGENERATE: ROLE_STANDBY}.get(
        int(role), int(role))


def offline_phases(p: AdsorptionParams) -> tuple[tuple[int, float], ...]:
    """((role, duration_s), ...) of the offline sequence, in order."""
    return tuple(zip((ROLE_WASH, ROLE_ELUTE, ROLE_REGENERATE), p.phase_seconds))


class AdsorptionCarousel:
    """The carousel as a Unit of (t, x, u, p); see the module docstring for the equations."""

    def __init__(self, name: str, p: AdsorptionParams, species: tuple[str, ...] = SPECIES):
        """``species``: the adsorbing species modelled, in the order of ``p``'s per-species arrays
        (the twin: the line's ``species``; the carousel estimator's shadow: the HREE only, with
        ``p`` reduced to match)."""
        if len(species) != len(p.q_max):
            raise ValueError(f"{len(species)} species {list(species)} but isotherms for {len(p.q_max)}")
        self.name = name
        self.species = species
        self.ns = ns = len(species)
        self.nc, self.nf = ns + 1, 2 * ns + 1  # liquid components (species + H); per cell
        self.n_columns, self.n_cells = nc_, n = p.n_columns, p.n_cells
        comps = (*species, "H")
        bed = [f"col{k}.cell{j}.{ph}.{c}" for k in range(1, nc_ + 1) for j in range(1, n + 1)
               for ph, cs in (("c", comps), ("q", species)) for c in cs]
        cum = [f"cum_{o}_{c}" for o in OUTLETS for c in (*comps, "volume")]
        self.n_bed = len(bed)
        self.state_names = (*bed, *cum)
        self.input_names = (*(f"role_{k}" for k in range(1, nc_ + 1)), "feed_flow",
                            *(f"feed_{s}" for s in species), "feed_H", "wash_flow", "wash_H",
                            "eluent_flow", "eluent_H", "regen_flow", "regen_H")
        outs = []
        for k in range(1, nc_ + 1):
            outs += [f"col{k}.{n_}" for n_ in ("role", "flow", "dp", "loading_fraction", "front_position")]
            outs += [f"col{k}.outlet.{c}" for c in comps]
        for o in OUTLETS:
            outs += [f"{o}.flow", *(f"{o}.{c}" for c in comps)]
        outs.append("lag_breakthrough")
        self.output_names = tuple(outs)
        self.state_index = index_map(self.state_names)
        self.input_index = index_map(self.input_names)
        self.output_index = index_map(self.output_names)
        self._feed = slice(nc_ + 1, nc_ + 2 + ns)  # feed species + H
        self._hree = np.array([species.index(s) for s in HREE])
        self._pattern = JacobianPattern(nc_, n, ns, len(cum))
        self._band = BandLayout(nc_, n, self.nc)
        self._route_key: bytes | None = None
        self._route = None
        self._last: tuple | None = None  # (u, p) of the latest derivatives call
        #: solve_ivp method: RODAS3 with the structured solve (see twin.adsorption_solver)
        self.preferred_method = rodas3_for(self)
        self.step_hint: float | None = None  # step size carried from one advance to the next

    # -- layout ----------------------------------------------------------------------------
    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views: liquid (cols × cells × species+H), solid (cols × cells × species), cum (outlets ×
        species+H+volume)."""
        bed = x[: self.n_bed].reshape(self.n_columns, self.n_cells, self.nf)
        return bed[..., : self.nc], bed[..., self.nc:], x[self.n_bed:].reshape(len(OUTLETS), self.nc + 1)

    def routing(self, u: np.ndarray, p: AdsorptionParams):
        """(routing, v, D, q_max, roles, k_LDF) for these inputs (cached: constant over a step)."""
        key = u.tobytes()
        if key != self._route_key or self._route is None or self._route[0] is not p:
            roles = np.rint(u[: self.n_columns]).astype(int)
            ii = self.input_index
            offline = ((u[ii["wash_flow"]], u[ii["wash_H"]]), (u[ii["eluent_flow"]], u[ii["eluent_H"]]),
                       (u[ii["regen_flow"]], u[ii["regen_H"]]))
            r = route(roles, u[ii["feed_flow"]], u[self._feed], offline)
            v = r.flow / (p.porosity * p.area)
            dz = p.length / p.n_cells
            disp = np.maximum(v * p.length / p.peclet * p.dispersion_factor - 0.5 * v * dz, 0.0)
            qmax = p.q_max * p.capacity_factor[:, None, None]
            k = ldf_rates(r.flow, u[self._feed], qmax, p)
            self._route = (p, r, v, disp, qmax, roles, k)
            self._route_key = key
        return self._route[1:]

    def initial_state(self, p: AdsorptionParams, loading: str = "fresh", feed: np.ndarray | None = None,
                      feed_H: float | None = None) -> np.ndarray:
        """Beds full of regenerant-acidity liquid. ``loading``: ``fresh`` (clean adsorbent) or
        ``lead_saturated`` (column 1 in equilibrium with ``feed`` (mol/m3 per species) at
        ``feed_H``, the state of a lead column just before its lag breaks through)."""
        x = np.zeros(len(self.state_names))
        liq, sol, _ = self.split(x)
        liq[..., -1] = p.regen_H
        if loading == "lead_saturated":
            if feed is None:
                raise ValueError("loading='lead_saturated' needs the feed composition")
            h = p.h_ref if feed_H is None else feed_H
            c = np.append(np.asarray(feed, dtype=float), h)
            liq[0] = c
            sol[0] = langmuir(c[:-1], np.array(h), p.q_max * p.capacity_factor[0], p)
        elif loading != "fresh":
            raise ValueError(f"loading must be 'fresh' or 'lead_saturated', not {loading!r}")
        return x

    def design_inputs(self, p: AdsorptionParams, feed_flow: float, feed: np.ndarray,
                      feed_H: float | None = None, roles=None) -> np.ndarray:
        """Inputs at the design point: roles (default lead, lag, standby...) and offline fluids."""
        u = np.zeros(len(self.input_names))
        roles = roles or (ROLE_LEAD, ROLE_LAG, *([ROLE_STANDBY] * (self.n_columns - 2)))
        u[: self.n_columns] = roles
        ii = self.input_index
        u[ii["feed_flow"]] = feed_flow
        u[self._feed] = np.append(feed, p.h_ref if feed_H is None else feed_H)
        for name in ("wash", "eluent", "regen"):
            u[ii[f"{name}_flow"]], u[ii[f"{name}_H"]] = getattr(p, f"{name}_flow"), getattr(p, f"{name}_H")
        return u

    # -- model -----------------------------------------------------------------------------
    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: AdsorptionParams) -> np.ndarray:
        self._last = (u, p)
        r, v, disp, qmax, _, k = self.routing(u, p)
        liq, sol, _ = self.split(x)
        ns, dz = self.ns, p.length / p.n_cells
        c_out = liq[:, -1, :]
        inflow = r.g @ c_out + r.ext  # mol/s per column
        dx = np.empty_like(x)
        dliq, dsol, dcum = self.split(dx)
        conv = (v / dz)[:, None, None] * liq  # convective flux out of each cell (/Δz)
        disp_face = (disp / (dz * dz))[:, None, None] * (liq[:, :-1] - liq[:, 1:])  # interior faces
        np.negative(conv, out=dliq)
        dliq[:, 1:] += conv[:, :-1]
        dliq[:, :-1] -= disp_face
        dliq[:, 1:] += disp_face
        dliq[:, 0] += inflow / (p.porosity * p.area * dz)
        rate = k * (langmuir(liq[..., :ns], liq[..., ns], qmax, p) - sol)
        dsol[:] = rate
        ratio = p.bulk_density / p.porosity
        dliq[..., :ns] -= ratio * rate
        dliq[..., ns] += ratio * (rate @ p.proton_exponent)
        dcum[:, :-1] = r.out @ c_out + r.bypass
        dcum[:, -1] = r.out.sum(axis=1) + r.bypass_flow
        return dx

    def jacobian(self, t: float, x: np.ndarray, u: np.ndarray, p: AdsorptionParams):
        """Analytic sparse Jacobian (CSC), in the entry order of ``JacobianPattern``."""
        r, v, disp, qmax, _, k = self.routing(u, p)
        liq, sol, _ = self.split(x)
        ns, nc, n = self.ns, self.nc, self.n_cells
        dz = p.length / p.n_cells
        _, dq_dc, dq_dh = langmuir(liq[..., :ns], liq[..., ns], qmax, p, derivatives=True)
        n_h = p.proton_exponent
        ratio = p.bulk_density / p.porosity
        vz, dd = v / dz, disp / (dz * dz)
        faces = np.full(n, 2.0)
        faces[0] = faces[-1] = 1.0 if n > 1 else 0.0
        diag = -vz[:, None, None] - dd[:, None, None] * faces[None, :, None]
        shape = (self.n_columns, n, nc)
        dqc = k[..., None] * dq_dc
        dqh = k * dq_dh
        vals = [
            np.broadcast_to(diag, shape),
            np.broadcast_to((vz + dd)[:, None, None], (self.n_columns, n - 1, nc)),
            np.broadcast_to(dd[:, None, None], (self.n_columns, n - 1, nc)),
            np.broadcast_to((r.g / (p.porosity * p.area * dz))[..., None], (self.n_columns,) * 2 + (nc,)),
            dqc, dqh, np.broadcast_to(-k, sol.shape),
            -ratio * dqc, -ratio * dqh, np.broadcast_to(ratio * k, sol.shape),
            np.broadcast_to(r.out[..., None], (len(OUTLETS), self.n_columns, nc)),
            ratio * (n_h @ dqc), ratio * (dqh @ n_h),
            np.broadcast_to(-ratio * n_h * k, sol.shape),
        ]
        return self._pattern.matrix(np.concatenate([np.ravel(a) for a in vals]))

    def linear_system(self, x: np.ndarray, alpha: float) -> CarouselSystem:
        """α·I − J factored, for the inputs of the latest ``derivatives`` call (Rosenbrock)."""
        if self._last is None:
            raise RuntimeError("linear_system needs a derivatives call first (it fixes u and p)")
        return CarouselSystem(self, x, *self._last, alpha)

    def jac_sparsity(self):
        return self._pattern.sparsity()

    # -- outputs and bookkeeping -------------------------------------------------------------
    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: AdsorptionParams) -> np.ndarray:
        r, v, disp, qmax, roles, _ = self.routing(u, p)
        liq, sol, _ = self.split(x)
        c_out = liq[:, -1, :]
        site = (sol[..., self._hree] / qmax[..., self._hree]).sum(axis=-1)  # cols × cells
        per_col = np.column_stack([
            roles.astype(float), r.flow,
            p.dp_factor * p.dp_coefficient * r.flow / p.area * p.length,
            site.mean(axis=1), [front_position(f) for f in site], c_out])
        streams = []
        for o in range(len(OUTLETS)):
            q = r.out[o].sum() + r.bypass_flow[o]
            mol = r.out[o] @ c_out + r.bypass[o]
            streams.append(np.concatenate([[q], mol / q if q > 0 else np.zeros(self.nc)]))
        feed_hree = u[self._feed][self._hree].sum()
        bt = streams[0][1 + self._hree].sum() / feed_hree if feed_hree > 0 else 0.0
        return np.concatenate([per_col.ravel(), *streams, [bt]])

    def inventory(self, x: np.ndarray, p: AdsorptionParams) -> np.ndarray:
        """mol of each species held in all columns (void liquid + adsorbent)."""
        liq, sol, _ = self.split(x)
        cell = p.bed_volume / p.n_cells
        liquid = liq[..., : self.ns].sum(axis=(0, 1))
        return cell * (p.porosity * liquid + p.bulk_density * sol.sum(axis=(0, 1)))

    def h_inventory(self, x: np.ndarray, p: AdsorptionParams) -> float:
        """mol of H+ held in all columns: free acid in the void liquid plus the adsorbent's
        exchangeable protons counted from its H form (each loaded ion has displaced n_i of them),
        ε V Σ[H+] − ρ_b V Σ_i n_i q_i, so acid in − acid out = its change, exactly."""
        liq, _, _ = self.split(x)
        free = p.bed_volume / p.n_cells * p.porosity * liq[..., -1].sum()
        return float(free - self.protons_released(x, p))

    def protons_released(self, x: np.ndarray, p: AdsorptionParams) -> float:
        """mol of H+ the ions on the adsorbent of all columns have displaced: ρ_b V Σ_i n_i q_i."""
        _, sol, _ = self.split(x)
        return float(p.bed_volume / p.n_cells * p.bulk_density * (sol.sum(axis=(0, 1)) @ p.proton_exponent))

