"""Molten-salt electrolysis cell: TbCl3 in LiCl-KCl reduced into a liquid-metal (Zn) cathode.

Cell reaction  TbCl3(melt) → Tb(in alloy) + 3/2 Cl2(g, graphite anode),  n = 3.

States (SI): ``salt_Tb`` n_s (mol Tb3+ in the melt), ``cathode_Tb`` n_c (mol), ``cathode_metal``
n_m (mol), ``temperature`` T (K), ``cum_charge`` (C), ``cum_energy`` (J, electrolysis power
only), ``cum_deposited_Tb``, ``cum_fed_Tb``, ``cum_tapped_Tb`` (mol), ``anode_effect`` s (0..1),
``cathode_Li`` (mol Li in the alloy), ``cum_Li`` (mol Li co-deposited), ``cum_back_Tb`` (mol Tb
re-oxidised, the back-reaction and the η_max loss), ``cum_Cl2`` (mol Cl2 evolved at the anode),
``melt_liquid`` f_s and ``cathode_liquid`` f_c (liquid fractions of the salt and the metal pool).
Inputs: ``current`` I_sp (A, the rectifier setpoint, < 0 read as 0; the cell draws less when the
rectifier is at its voltage limit), ``heater_power`` (W, clipped to [0, P_max]),
``salt_feed_rate`` (mol Tb/s, not clipped: the ledger books the input as given), ``ambient_T``
(K; a value <= 0 means the configured ambient, so an all-zero input vector is valid).

Melt:     w = n_s·M_Tb / (m_solv + n_s·M_TbCl3),  x_TbCl3 = n_s/(n_s + n_solv),  C = n_s / V_melt
Alloy:    x_Tb = n_c/(n_c + n_m),  a_Tb = γ·x_e,  x_e = (x_Tb + 1e-4)·x_sat/(x_Tb + 1e-4 + x_sat)
          (Henry's law that saturates once Tb-metal intermetallics precipitate)
Voltage:  U = E_dec + η_a + η_c + η_mt + I·R(T) + ΔU_ae·s
          E_dec = E0 + dE/dT·(T − T_ref) + RT/3F·ln(a_Tb / x_TbCl3)      (Cl2 at 1 atm)
          η_a = b_a·asinh(i_a/2i0_a),  η_c = b_c·asinh(i_c/2i0_c)  (b = Tafel slope / ln 10)
          η_mt = ΔE_cd·(1 − exp(−η_raw/ΔE_cd)),  η_raw = −RT/3F·ln(1 − φ·r)  (ceiling ΔE_cd:
          the cathode moves to Li co-deposition),
          R(T) = R_ref·max(1 − k_R·(T − T_ref), 0.2) / g(f_s),  g = g_solid + (1 − g_solid)·f_s^m
          (no ionic conduction in the solid salt: Bruggeman-type exponent m, residual g_solid)
Rectifier: I = I_sp while U(I_sp) ≤ U_max; otherwise the supply holds U_max and I solves
          U(I) = U_max on [0, I_sp] (U rises with I; Illinois regula falsi), I = 0 if U(0) ≥ U_max.
Current efficiency (mass-transfer limit and back-reaction):
          i_lim = 3F·k_m·C·f_c,  r = i_c/i_lim,  φ = (1 + r⁴)^(−1/4)   (Tb3+ share of the current;
          the rest co-deposits Li into the alloy; a frozen cathode, f_c → 0, takes no Tb)
          I_back = i_b·A_c·exp(−E_b/R·(1/T − 1/T_ref))·n_c/(n_c + 1e-3)·f_s·f_c
          ṅ_dep = (η_max·φ·I − I_back)/(3F)    (Faraday; negative at I = 0: Tb redissolves)
          ṅ_back = ((1 − η_max)·φ·I + I_back)/(3F),  ṅ_Li = (1 − φ)·I/F,  ṅ_Cl2 = I/(2F)
          ⇒ I = 3F·(ṅ_dep + ṅ_back) + F·ṅ_Li: every coulomb is Tb, re-oxidised Tb or Li; the anode
          makes Cl2 only (chloride melt on graphite). η_CE = 3F·ṅ_dep / I
Balances: dn_s/dt = F_feed − ṅ_dep,  dn_c/dt = ṅ_dep  ⇒  n_s + n_c + cum_tapped − cum_fed = const;
          the Li drawn from the solvent is not subtracted from it (grams against 50 kg of LiCl-KCl).
Thermal:  (m·cp + C_vessel)·dT/dt = I·(U − U_tn) + P_heater − UA·(T − T_amb)
                                   − L_s·m_melt·df_s/dt − L_c·n_m·df_c/dt
Freezing: df/dt = (f_eq(T) − f)/τ_f, f_eq = smoothstep over [T_m − ΔT, T_m]: the melt (f_s) below its
          liquidus (LiCl-KCl eutectic 352 °C, latent heat L_s per kg), the cathode metal (f_c) below
          its melting point (Zn 419.5 °C, L_c per mol); cp equal in solid and liquid. With τ_f short
          against the cooling the melt holds at the liquidus while L_s·m_melt is released (arrest);
          the enthalpy H = (m·cp + C_vessel)·T + L_s·m_melt·f_s + L_c·n_m·f_c is a linear invariant
          of the equations (n_m is constant between taps), so the integrator keeps it whatever its steps (an apparent heat
          capacity would let a step jump over the freezing range and lose the latent heat).
Anode effect (Piontelli-type critical current density, see pilot_config.electrolysis):
          i_crit = i_ref·(w/w_ref)^m·max(1 + k_T·(T − T_ref), 0.1)
          ds/dt = (σ((i_a − (1 − h·s)·i_crit)/(0.02·i_crit)) − s)/τ_ae   (latch with hysteresis h)

Discrete events are pure functions: ``tap`` (alloy to distillation, fresh metal in) and
``add_salt`` (a TbCl3 batch).

Integration: the fastest mode is the anode-effect state (τ_ae, 30 s by default); while salt or
metal freezes or thaws, the liquid fractions relax in τ_f/(1 + L·df_eq/dT/C) (~1 s) and LSODA
switches to its stiff method. With ``twin.integrate.advance`` in 60 s steps LSODA costs ~0.2 s of
CPU per cell and plant-day in operation (~0.5 s for a day through a freeze and a thaw), scipy's
BDF several times more (it restarts at order 1 on every call); the unit names LSODA in ``preferred_method``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pilot_config.base import (
    FARADAY_C_PER_MOL,
    GAS_CONSTANT_J_PER_MOL_K,
    MOLAR_MASS_G_PER_MOL,
    SPECIES,
    ZERO_CELSIUS_K,
)
from pilot_config.electrolysis import METAL_FUSION_KJ_PER_MOL, METAL_MELTING_C

from .unit import index_map

F = FARADAY_C_PER_MOL
R_GAS = GAS_CONSTANT_J_PER_MOL_K
N_E = 3.0
M_TB = MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0  # kg/mol
M_CL = 35.453e-3
M_TBCL3 = M_TB + 3.0 * M_CL
M_LI = 6.94e-3
LN10 = math.log(10.0)
AE_WIDTH = 0.02  # relative width of the anode-effect switch
X_FLOOR = 1e-4  # residual Tb mole fraction of a "fresh" cathode (keeps ln a_Tb finite)
N_BACK = 1e-3  # mol: the back-reaction fades when the cathode holds less than this

STATE_NAMES = ("salt_Tb", "cathode_Tb", "cathode_metal", "temperature", "cum_charge", "cum_energy",
               "cum_deposited_Tb", "cum_fed_Tb", "cum_tapped_Tb", "anode_effect",
               "cathode_Li", "cum_Li", "cum_back_Tb", "cum_Cl2", "melt_liquid", "cathode_liquid")
INPUT_NAMES = ("current", "heater_power", "salt_feed_rate", "ambient_T")
OUTPUT_NAMES = ("voltage", "current", "temperature", "salt_tb_fraction", "cathode_tb_fraction",
                "current_efficiency", "power", "anode_effect", "deposition_rate", "specific_energy",
                "heater_power", "salt_tb", "cathode_tb", "voltage.decomposition", "voltage.anode",
                "voltage.cathode", "voltage.ohmic", "voltage.anode_effect", "anode_current_density",
                "critical_current_density", "limiting_current_density", "liquid_fraction",
                "cathode_liquid_fraction", "cathode_li_fraction", "li_rate", "back_reaction_rate",
                "cl2_rate", "cl2_evolved", "voltage_limited", "voltage_limit")
_S = index_map(STATE_NAMES)


@dataclass(frozen=True)
class CellParams:
    solvent_kg: float
    solvent_mol: float
    melt_volume_m3: float
    metal_molar_mass: float  # kg/mol
    fresh_metal_mol: float
    gamma_tb: float
    x_sat: float
    tap_fraction: float  # cathode Tb mass fraction
    e0: float
    t_ref: float
    de_dT: float
    u_tn: float
    anode_area: float  # m2
    cathode_area: float
    b_a: float  # V per e-fold
    i0_a: float  # A/m2
    b_c: float
    i0_c: float
    r_ohm: float
    r_tc: float
    codep: float
    eta_max: float
    k_m: float
    i_back: float  # A/m2
    e_back: float  # J/mol
    i_crit: float  # A/m2
    w_ref: float
    ae_exp: float
    ae_kT: float
    ae_dU: float
    ae_hyst: float
    ae_tau: float
    heat_capacity: float  # J/K
    ua: float
    t_amb: float
    heater_max: float
    salt_tb0: float  # mol
    cathode_tb0: float
    t0: float
    u_max: float  # V, rectifier voltage limit
    t_liquidus: float  # K
    melt_range: float  # K, mushy range below the liquidus
    melt_latent: float  # J, latent heat of the whole melt
    g_solid: float  # conductance of the frozen melt relative to the liquid
    cond_exp: float  # Bruggeman-type exponent of the conductance on the liquid fraction
    t_metal: float  # K, melting point of the cathode metal
    metal_range: float  # K
    metal_latent: float  # J/mol of cathode metal
    phase_tau: float  # s, relaxation of the liquid fractions to f_eq(T)


def params_from_config(cfg) -> CellParams:
    """``pilot_config.electrolysis.CellConfig`` -> SI parameters (the only unit conversion)."""
    el, ca, de, ed = cfg.electrolyte, cfg.cathode, cfg.decomposition, cfg.electrodes
    ef, ae, th = cfg.efficiency, cfg.anode_effect, cfg.thermal
    m_tbcl3 = el.melt_mass_kg * el.initial_TbCl3_wt_pct / 100.0
    solvent_kg = el.melt_mass_kg - m_tbcl3
    mm = MOLAR_MASS_G_PER_MOL[ca.metal] / 1000.0
    metal_mol = ca.initial_metal_kg / mm
    w0 = ca.initial_Tb_wt_pct / 100.0
    return CellParams(
        solvent_kg=solvent_kg, solvent_mol=solvent_kg / (el.solvent_molar_mass_g_per_mol / 1000.0),
        melt_volume_m3=el.melt_mass_kg / el.density_kg_per_m3, metal_molar_mass=mm,
        fresh_metal_mol=metal_mol, gamma_tb=ca.tb_activity_coefficient,
        x_sat=ca.tb_saturation_at_pct / 100.0, tap_fraction=ca.tap_Tb_wt_pct / 100.0,
        e0=de.standard_V, t_ref=de.reference_temperature_C + ZERO_CELSIUS_K, de_dT=de.dT_V_per_K,
        u_tn=de.thermoneutral_V, anode_area=ed.anode_area_cm2 * 1e-4, cathode_area=ed.cathode_area_cm2 * 1e-4,
        b_a=ed.anode_tafel_V_per_decade / LN10, i0_a=ed.anode_exchange_A_per_cm2 * 1e4,
        b_c=ed.cathode_tafel_V_per_decade / LN10, i0_c=ed.cathode_exchange_A_per_cm2 * 1e4,
        r_ohm=ed.resistance_ohm, r_tc=ed.resistance_temp_coeff_per_K, codep=ed.codeposition_shift_V,
        eta_max=ef.max_efficiency, k_m=ef.mass_transfer_m_per_s, i_back=ef.back_reaction_A_per_cm2 * 1e4,
        e_back=ef.back_reaction_activation_kJ_per_mol * 1e3,
        i_crit=ae.critical_current_density_A_per_cm2 * 1e4, w_ref=ae.reference_salt_Tb_wt_pct / 100.0,
        ae_exp=ae.concentration_exponent, ae_kT=ae.temperature_coeff_per_K, ae_dU=ae.voltage_rise_V,
        ae_hyst=ae.hysteresis_fraction, ae_tau=ae.onset_time_s,
        heat_capacity=el.melt_mass_kg * el.cp_J_per_kg_K + th.vessel_heat_capacity_J_per_K,
        ua=th.UA_W_per_K, t_amb=th.ambient_C + ZERO_CELSIUS_K, heater_max=th.heater_max_W,
        salt_tb0=m_tbcl3 / M_TBCL3, cathode_tb0=ca.initial_metal_kg * w0 / (1.0 - w0) / M_TB,
        t0=cfg.temperature_setpoint_C + ZERO_CELSIUS_K,
        u_max=cfg.rectifier.voltage_limit_V, t_liquidus=el.liquidus_C + ZERO_CELSIUS_K,
        melt_range=el.freezing_range_K, melt_latent=el.melt_mass_kg * el.fusion_enthalpy_kJ_per_kg * 1e3,
        g_solid=el.solid_conductance_ratio, cond_exp=el.conductance_exponent,
        t_metal=METAL_MELTING_C[ca.metal] + ZERO_CELSIUS_K, metal_range=ca.freezing_range_K,
        metal_latent=METAL_FUSION_KJ_PER_MOL[ca.metal] * 1e3, phase_tau=th.phase_change_time_s,
    )


class CellTerms(NamedTuple):
    """Every intermediate of one evaluation (SI); the hot path and the outputs share it."""

    current: float
    heater: float
    feed: float
    t_amb: float
    w_salt: float
    w_cath: float
    e_dec: float
    eta_a: float
    eta_c: float
    ohmic: float
    u_ae: float
    voltage: float
    dep_rate: float
    i_a: float
    i_crit: float
    i_lim: float
    ae_target: float
    li_rate: float  # mol Li/s co-deposited
    back_rate: float  # mol Tb/s re-oxidised
    liquid: float  # liquid fraction of the melt
    cathode_liquid: float  # liquid fraction of the cathode metal
    melt_freezing: float  # df_s/dt, 1/s
    cathode_freezing: float  # df_c/dt, 1/s
    limited: float  # 1: the rectifier is at its voltage limit


def _salt(n_s: float, p: CellParams) -> tuple[float, float, float]:
    """(Tb mass fraction, TbCl3 mole fraction, Tb3+ mol/m3) of the melt."""
    w = n_s * M_TB / (p.solvent_kg + n_s * M_TBCL3)
    return w, n_s / (n_s + p.solvent_mol), n_s / p.melt_volume_m3


def _cathode(n_c: float, n_m: float, p: CellParams) -> tuple[float, float]:
    """(Tb mass fraction, ln a_Tb) of the liquid-alloy cathode."""
    w = n_c * M_TB / (n_c * M_TB + n_m * p.metal_molar_mass)
    xf = n_c / (n_c + n_m) + X_FLOOR
    return w, math.log(p.gamma_tb * xf * p.x_sat / (xf + p.x_sat))


def liquid_fraction(T: float, t_melt: float, width: float) -> tuple[float, float]:
    """(f, df/dT): smoothstep f = 3z² − 2z³, z = (T − t_melt + width)/width clipped to [0, 1]
    (solid below t_melt − width, liquid above t_melt; df/dT continuous, ∫df = 1)."""
    z = (T - t_melt) / width + 1.0
    if z >= 1.0:
        return 1.0, 0.0
    if z <= 0.0:
        return 0.0, 0.0
    return z * z * (3.0 - 2.0 * z), 6.0 * z * (1.0 - z) / width


def _mass_transfer(i_c: float, i_lim: float, rt3f: float, p: CellParams) -> tuple[float, float]:
    """(Tb3+ share φ of the cathodic current, mass-transfer overpotential V) at i_lim A/m2."""
    r = i_c / (i_lim + 1e-12)
    r = r if r < 1e6 else 1e6
    q = (1.0 + r**4) ** 0.25
    eta_raw = rt3f * math.log(q * (q + r) * (q * q + r * r))  # = −RT/3F·ln(1 − r/q), stable
    return 1.0 / q, -p.codep * math.expm1(-eta_raw / p.codep)


def _polarisation(current: float, i_lim: float, r_cell: float, rt3f: float,
                  p: CellParams) -> tuple[float, float, float, float]:
    """(η_a, η_c, I·R, φ) at a current: the current-dependent part of the cell voltage."""
    phi, eta_mt = _mass_transfer(current / p.cathode_area, i_lim, rt3f, p)
    eta_a = p.b_a * math.asinh(current / (p.anode_area * 2.0 * p.i0_a))
    eta_c = p.b_c * math.asinh(current / (p.cathode_area * 2.0 * p.i0_c)) + eta_mt
    return eta_a, eta_c, current * r_cell, phi


def _limited_current(i_sp: float, u_fixed: float, u_sp: float, i_lim: float, r_cell: float,
                     rt3f: float, p: CellParams) -> float:
    """The current at which U(I) = U_max on [0, I_sp], U(I_sp) = u_sp > U_max (Illinois
    regula falsi: U rises monotonically with I); 0 if U(0) = u_fixed ≥ U_max."""
    lo, hi, g_lo, g_hi = 0.0, i_sp, u_fixed - p.u_max, u_sp - p.u_max
    if g_lo >= 0.0:
        return 0.0
    side, i = 0, hi
    for _ in range(100):
        i = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
        g = u_fixed + sum(_polarisation(i, i_lim, r_cell, rt3f, p)[:3]) - p.u_max
        if abs(g) < 1e-9 or hi - lo < 1e-12 * i_sp:
            break
        if g > 0.0:
            hi, g_hi = i, g
            g_lo = 0.5 * g_lo if side == 1 else g_lo
            side = 1
        else:
            lo, g_lo = i, g
            g_hi = 0.5 * g_hi if side == -1 else g_hi
            side = -1
    return i


def _anode_effect(i_a: float, w_salt: float, T: float, s: float, p: CellParams) -> tuple[float, float]:
    """(critical anodic current density A/m2, target of the anode-effect state)."""
    f_T = 1.0 + p.ae_kT * (T - p.t_ref)
    i_crit = p.i_crit * (w_salt / p.w_ref) ** p.ae_exp * (f_T if f_T > 0.1 else 0.1)
    z = (i_a - (1.0 - p.ae_hyst * s) * i_crit) / (AE_WIDTH * i_crit + 1e-9)
    z = -60.0 if z < -60.0 else (60.0 if z > 60.0 else z)
    return i_crit, 0.5 * (1.0 + math.tanh(0.5 * z))


def _resistance(T: float, f_s: float, p: CellParams) -> float:
    """R(T, f_s) = R_ref·max(1 − k_R·(T − T_ref), 0.2)/g(f_s): the solid salt barely conducts."""
    f_r = 1.0 - p.r_tc * (T - p.t_ref)
    r = p.r_ohm * (f_r if f_r > 0.2 else 0.2)
    return r if f_s >= 1.0 else r / (p.g_solid + (1.0 - p.g_solid) * f_s**p.cond_exp)


def cell_terms(x: np.ndarray, u: np.ndarray, p: CellParams) -> CellTerms:
    """All intermediates at (x, u); python floats throughout (much faster than numpy scalars)."""
    n_s, n_c, n_m, T, _, _, _, _, _, s, _, _, _, _, f_s, f_c = x.tolist()
    current, heater, feed, t_amb = u.tolist()
    n_s, n_c, n_m = (n_s if n_s > 0.0 else 0.0), (n_c if n_c > 0.0 else 0.0), (n_m if n_m > 1e-12 else 1e-12)
    current = current if current > 0.0 else 0.0
    heater = 0.0 if heater < 0.0 else (p.heater_max if heater > p.heater_max else heater)
    df_s = (liquid_fraction(T, p.t_liquidus, p.melt_range)[0] - f_s) / p.phase_tau
    df_c = (liquid_fraction(T, p.t_metal, p.metal_range)[0] - f_c) / p.phase_tau
    f_s = 0.0 if f_s < 0.0 else (1.0 if f_s > 1.0 else f_s)
    f_c = 0.0 if f_c < 0.0 else (1.0 if f_c > 1.0 else f_c)
    w_salt, x_salt, conc = _salt(n_s, p)
    w_cath, ln_a_tb = _cathode(n_c, n_m, p)
    rt3f = R_GAS * T / (N_E * F)
    e_dec = p.e0 + p.de_dT * (T - p.t_ref) + rt3f * (ln_a_tb - math.log(x_salt if x_salt > 1e-12 else 1e-12))
    i_lim = N_E * F * p.k_m * conc * f_c
    r_cell = _resistance(T, f_s, p)
    u_ae = p.ae_dU * s
    eta_a, eta_c, ohmic, phi = _polarisation(current, i_lim, r_cell, rt3f, p)
    limited = 0.0
    if e_dec + u_ae + eta_a + eta_c + ohmic > p.u_max:
        current = _limited_current(current, e_dec + u_ae, e_dec + u_ae + eta_a + eta_c + ohmic, i_lim,
                                   r_cell, rt3f, p)
        eta_a, eta_c, ohmic, phi = _polarisation(current, i_lim, r_cell, rt3f, p)
        limited = 1.0
    i_back = (p.i_back * p.cathode_area * math.exp(-p.e_back / R_GAS * (1.0 / T - 1.0 / p.t_ref))
              * n_c / (n_c + N_BACK) * f_s * f_c)
    dep = (p.eta_max * phi * current - i_back) / (N_E * F)
    back = ((1.0 - p.eta_max) * phi * current + i_back) / (N_E * F)
    i_a = current / p.anode_area
    i_crit, target = _anode_effect(i_a, w_salt, T, s, p)
    return CellTerms(current, heater, feed, t_amb if t_amb > 0.0 else p.t_amb, w_salt, w_cath, e_dec,
                     eta_a, eta_c, ohmic, u_ae, e_dec + eta_a + eta_c + ohmic + u_ae, dep, i_a, i_crit,
                     i_lim, target, (1.0 - phi) * current / F, back, f_s, f_c, df_s, df_c, limited)


class ElectrolysisCell:
    """One electrolysis cell as a Unit of (t, x, u, p)."""

    state_names = STATE_NAMES
    input_names = INPUT_NAMES
    output_names = OUTPUT_NAMES
    #: the method that keeps this small, mildly stiff unit cheap (see the report / integrate.advance)
    preferred_method = "LSODA"

    def __init__(self, name: str, species: tuple[str, ...] = SPECIES):
        """``species``: the line's elements, the order of ``inventory`` (Tb among them)."""
        self.name = name
        self.species = species
        self._tb = species.index("Tb")

    params_from_config = staticmethod(params_from_config)

    def initial_state(self, p: CellParams) -> np.ndarray:
        x = np.zeros(len(STATE_NAMES))
        x[_S["salt_Tb"]], x[_S["cathode_Tb"]] = p.salt_tb0, p.cathode_tb0
        x[_S["cathode_metal"]] = p.fresh_metal_mol
        return at_temperature(x, p.t0, p)

    def nominal_inputs(self, p: CellParams, current_A: float = 0.0) -> np.ndarray:
        """Current I, the heater covering the losses at the initial temperature, no feed, ambient."""
        return np.array([current_A, min(p.ua * (p.t0 - p.t_amb), p.heater_max), 0.0, p.t_amb])

    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: CellParams) -> np.ndarray:
        c = cell_terms(x, u, p)
        heat = (c.current * (c.voltage - p.u_tn) + c.heater - p.ua * (x[3] - c.t_amb)
                - p.melt_latent * c.melt_freezing - p.metal_latent * x[2] * c.cathode_freezing)
        return np.array([c.feed - c.dep_rate, c.dep_rate, 0.0, heat / p.heat_capacity, c.current,
                         c.voltage * c.current, c.dep_rate, c.feed, 0.0, (c.ae_target - x[9]) / p.ae_tau,
                         c.li_rate, c.li_rate, c.back_rate, c.current / (2.0 * F), c.melt_freezing,
                         c.cathode_freezing])

    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: CellParams) -> np.ndarray:
        c = cell_terms(x, u, p)
        eff = c.dep_rate * N_E * F / c.current if c.current > 1e-9 else 0.0
        dep_kg = x[6] * M_TB
        spec = x[5] / dep_kg if dep_kg > 1e-9 else 0.0
        return np.array([c.voltage, c.current, x[3], c.w_salt, c.w_cath, eff, c.voltage * c.current, x[9],
                         c.dep_rate, spec, c.heater, x[0], x[1], c.e_dec, c.eta_a, c.eta_c, c.ohmic,
                         c.u_ae, c.i_a, c.i_crit, c.i_lim, c.liquid, c.cathode_liquid,
                         alloy_li_fraction(x, p), c.li_rate, c.back_rate, c.current / (2.0 * F), x[13],
                         c.limited, p.u_max])

    def inventory(self, x: np.ndarray, p: CellParams) -> np.ndarray:
        inv = np.zeros(len(self.species))
        inv[self._tb] = x[0] + x[1]
        return inv


def at_temperature(x: np.ndarray, T: float, p: CellParams) -> np.ndarray:
    """The state at temperature T (K) with salt and metal pool at their equilibrium liquid fractions."""
    out = np.array(x, dtype=float, copy=True)
    out[_S["temperature"]] = T
    out[_S["melt_liquid"]] = liquid_fraction(T, p.t_liquidus, p.melt_range)[0]
    out[_S["cathode_liquid"]] = liquid_fraction(T, p.t_metal, p.metal_range)[0]
    return out


def alloy_li_fraction(x: np.ndarray, p: CellParams) -> float:
    """Li mass fraction of the whole alloy (Tb + cathode metal + Li); the Tb grade
    ``cathode_tb_fraction`` is on the Tb + cathode-metal basis."""
    tb, metal, li = max(x[1], 0.0) * M_TB, max(x[2], 0.0) * p.metal_molar_mass, max(x[10], 0.0) * M_LI
    return li / (tb + metal + li) if tb + metal + li > 0.0 else 0.0


def tap(x: np.ndarray, p: CellParams) -> tuple[np.ndarray, float, float]:
    """Tap the whole alloy (Tb, cathode metal and co-deposited Li) to distillation; fresh metal
    (no Tb, no Li) replaces it.

    Returns (state after, Tb mol tapped, alloy metal mol tapped); the Li tapped is
    ``cathode_Li`` before the tap (``cum_Li`` − ``cathode_Li`` is the Li tapped so far)."""
    out = np.array(x, dtype=float, copy=True)
    tb, metal = float(x[_S["cathode_Tb"]]), float(x[_S["cathode_metal"]])
    out[_S["cathode_Tb"]] = 0.0
    out[_S["cathode_Li"]] = 0.0
    out[_S["cathode_metal"]] = p.fresh_metal_mol
    out[_S["cum_tapped_Tb"]] += tb
    return out, tb, metal


def add_salt(x: np.ndarray, tb_mol: float) -> np.ndarray:
    """A TbCl3 batch added to the melt (``tb_mol`` = mol TbCl3 = mol Tb)."""
    if tb_mol < 0:
        raise ValueError(f"a salt addition cannot be negative (got {tb_mol} mol)")
    out = np.array(x, dtype=float, copy=True)
    out[_S["salt_Tb"]] += tb_mol
    out[_S["cum_fed_Tb"]] += tb_mol
    return out


def tbcl3_kg_to_tb_mol(kg: float) -> float:
    return kg / M_TBCL3
