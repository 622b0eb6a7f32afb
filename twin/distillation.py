"""Batch vacuum distillation of the Tb–metal alloy tapped from the electrolysis cells.

States (SI): ``Tb`` n_Tb (mol), ``metal`` n_M (mol of Zn / Mg / Cd), ``temperature`` T (K),
``cum_evaporated_metal`` (mol), ``cum_heater_energy`` (J).
Input: ``phase``, a code held over the step: 0 idle (heater off, vacuum losses), 1 heat (ramp at
the configured rate to the hold temperature), 2 hold (hold temperature), 3 cool (heater off, argon
backfill: losses with the larger cool-down UA). Heat and hold share one furnace law; they differ
in what ends them (``phase_complete``).

Hertz–Knudsen evaporation of the alloy metal (Tb's own vapour pressure is negligible < 1000 °C):
    ln(p_sat/Pa) = A − B/T
    a_M = x_M·exp(Ω·(1 − x_M)²/(RT)),   x_M = n_M/(n_M + n_Tb)      (regular solution, Ω=0: Raoult)
    J = α·max(a_M·p_sat − p_ch, 0) / sqrt(2π·M·R·T)                   (mol m⁻² s⁻¹)
    ṅ_evap = J·A_evap·n_M/(n_M + 1e-6 mol)   (the last factor only stops an emptied crucible)
    dn_M/dt = −ṅ_evap,  dn_Tb/dt = 0
The chamber pressure p_ch is taken as the back-pressure of the metal vapour, which sets the
lowest residual a given vacuum can reach.

Furnace (lumped crucible + charge, C = C_furnace + m_alloy·cp; ΔH_vap = B·R, Clausius–Clapeyron):
    C·dT/dt = P − UA_phase·(T − T_amb) − ṅ_evap·ΔH_vap
    heat/hold: the furnace controller asks for dT/dt = r·tanh((T_hold − T)/(r·τ)) and supplies
    P = clip(C·r_des + UA·(T − T_amb) + ṅ_evap·ΔH_vap, 0, P_max) (smooth clip): it follows the
    ramp while it has power, and evaporation is heat-limited when it has not.
    idle / cool: P = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pilot_config.base import (
    GAS_CONSTANT_J_PER_MOL_K,
    MOLAR_MASS_G_PER_MOL,
    SPECIES,
    ZERO_CELSIUS_K,
)

R_GAS = GAS_CONSTANT_J_PER_MOL_K
M_TB = MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
N_EMPTY = 1e-6  # mol: evaporation stops as the crucible runs dry

PHASE_IDLE, PHASE_HEAT, PHASE_HOLD, PHASE_COOL = 0, 1, 2, 3
PHASE_NAMES = {PHASE_IDLE: "idle", PHASE_HEAT: "heat", PHASE_HOLD: "hold", PHASE_COOL: "cool"}

STATE_NAMES = ("Tb", "metal", "temperature", "cum_evaporated_metal", "cum_heater_energy")
INPUT_NAMES = ("phase",)
OUTPUT_NAMES = ("temperature", "residual_metal_fraction", "evaporation_rate", "phase", "heater_power",
                "metal_activity", "vapour_pressure", "charge_mass", "tb")


@dataclass(frozen=True)
class DistillationParams:
    metal_molar_mass: float  # kg/mol
    vp_a: float
    vp_b: float  # K
    alpha: float
    area: float  # m2
    omega: float  # J/mol
    pressure: float  # Pa
    furnace_heat_capacity: float  # J/K
    alloy_cp: float  # J/kg/K
    heater_max: float
    ua: float
    ua_cool: float
    t_amb: float
    t_hold: float
    ramp: float  # K/s
    tau: float  # s
    residual_spec: float  # mass fraction
    t_discharge: float
    max_hold_s: float
    charge_tb0: float  # mol, the fixed batch (0 when tapped from the cells)
    charge_metal0: float

    @property
    def dh_vap(self) -> float:
        return self.vp_b * R_GAS


def params_from_config(cfg) -> DistillationParams:
    """``pilot_config.electrolysis.DistillationConfig`` -> SI parameters."""
    mm = MOLAR_MASS_G_PER_MOL[cfg.metal] / 1000.0
    w = cfg.fixed_charge_Tb_wt_pct / 100.0
    fixed = cfg.charge == "fixed"
    return DistillationParams(
        metal_molar_mass=mm, vp_a=cfg.vapour_pressure_A, vp_b=cfg.vapour_pressure_B_K,
        alpha=cfg.evaporation_coefficient, area=cfg.evaporating_area_m2, omega=cfg.metal_interaction_J_per_mol,
        pressure=cfg.pressure_Pa, furnace_heat_capacity=cfg.furnace_heat_capacity_J_per_K,
        alloy_cp=cfg.alloy_cp_J_per_kg_K, heater_max=cfg.heater_max_W, ua=cfg.UA_W_per_K,
        ua_cool=cfg.cool_UA_W_per_K, t_amb=cfg.ambient_C + ZERO_CELSIUS_K,
        t_hold=cfg.hold_temperature_C + ZERO_CELSIUS_K, ramp=cfg.heat_up_rate_K_per_min / 60.0,
        tau=cfg.control_time_constant_s, residual_spec=cfg.residual_metal_spec_wt_pct / 100.0,
        t_discharge=cfg.discharge_temperature_C + ZERO_CELSIUS_K, max_hold_s=cfg.max_hold_h * 3600.0,
        charge_tb0=cfg.fixed_charge_kg * w / M_TB if fixed else 0.0,
        charge_metal0=cfg.fixed_charge_kg * (1.0 - w) / mm if fixed else 0.0,
    )


def _softplus(x: float, w: float) -> float:
    return x + w * math.log1p(math.exp(-x / w)) if x > 0.0 else w * math.log1p(math.exp(x / w))


def evaporation(n_tb: float, n_m: float, T: float, p: DistillationParams) -> tuple[float, float, float]:
    """(ṅ_evap mol/s, metal activity, p_sat Pa) by Hertz–Knudsen."""
    if n_m <= 0.0:
        return 0.0, 0.0, math.exp(p.vp_a - p.vp_b / T)
    x_m = n_m / (n_m + max(n_tb, 0.0))
    act = x_m * math.exp(p.omega * (1.0 - x_m) ** 2 / (R_GAS * T))
    p_sat = math.exp(p.vp_a - p.vp_b / T)
    drive = act * p_sat - p.pressure
    if drive <= 0.0:
        return 0.0, act, p_sat
    flux = p.alpha * drive / math.sqrt(2.0 * math.pi * p.metal_molar_mass * R_GAS * T)
    return flux * p.area * n_m / (n_m + N_EMPTY), act, p_sat


def furnace(phase: int, T: float, heat_capacity: float, evap_heat: float,
            p: DistillationParams) -> tuple[float, float]:
    """(heater power W, dT/dt K/s) for the phase code."""
    if phase in (PHASE_HEAT, PHASE_HOLD):
        ua = p.ua
        r_des = p.ramp * math.tanh((p.t_hold - T) / (p.ramp * p.tau))
        demand = heat_capacity * r_des + ua * (T - p.t_amb) + evap_heat
        w = 0.005 * p.heater_max
        power = _softplus(demand, w) - _softplus(demand - p.heater_max, w)
    else:
        ua = p.ua_cool if phase == PHASE_COOL else p.ua
        power = 0.0
    return power, (power - ua * (T - p.t_amb) - evap_heat) / heat_capacity


class VacuumDistillation:
    """The batch vacuum-distillation furnace as a Unit of (t, x, u, p)."""

    state_names = STATE_NAMES
    input_names = INPUT_NAMES
    output_names = OUTPUT_NAMES
    preferred_method = "LSODA"

    def __init__(self, name: str, species: tuple[str, ...] = SPECIES):
        """``species``: the line's elements, the order of ``inventory`` (Tb among them)."""
        self.name = name
        self.species = species
        self._tb = species.index("Tb")

    params_from_config = staticmethod(params_from_config)

    def initial_state(self, p: DistillationParams) -> np.ndarray:
        """Empty (or the fixed batch) at ambient temperature."""
        return np.array([p.charge_tb0, p.charge_metal0, p.t_amb, 0.0, 0.0])

    def _terms(self, x: np.ndarray, u: np.ndarray, p: DistillationParams):
        n_tb, n_m, T, _, _ = x.tolist()
        phase = int(round(float(u[0])))
        evap, act, p_sat = evaporation(n_tb, n_m, T, p)
        mass = max(n_m, 0.0) * p.metal_molar_mass + max(n_tb, 0.0) * M_TB
        power, dT = furnace(phase, T, p.furnace_heat_capacity + mass * p.alloy_cp, evap * p.dh_vap, p)
        return phase, evap, act, p_sat, mass, power, dT

    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: DistillationParams) -> np.ndarray:
        _, evap, _, _, _, power, dT = self._terms(x, u, p)
        return np.array([0.0, -evap, dT, evap, power])

    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: DistillationParams) -> np.ndarray:
        phase, evap, act, p_sat, mass, power, _ = self._terms(x, u, p)
        residual = max(x[1], 0.0) * p.metal_molar_mass / mass if mass > 0.0 else 0.0
        return np.array([x[2], residual, evap, float(phase), power, act, p_sat, mass, x[0]])

    def inventory(self, x: np.ndarray, p: DistillationParams) -> np.ndarray:
        inv = np.zeros(len(self.species))
        inv[self._tb] = x[0]
        return inv


def charge(x: np.ndarray, tb_mol: float, metal_mol: float) -> np.ndarray:
    """Load a batch of alloy into the crucible (added to whatever is left in it)."""
    if tb_mol < 0 or metal_mol < 0:
        raise ValueError(f"a charge cannot be negative (Tb {tb_mol} mol, metal {metal_mol} mol)")
    out = np.array(x, dtype=float, copy=True)
    out[0] += tb_mol
    out[1] += metal_mol
    return out


def discharge(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Empty the crucible: (state after, product Tb mol, residual metal mol in the product)."""
    out = np.array(x, dtype=float, copy=True)
    tb, metal = float(out[0]), max(float(out[1]), 0.0)
    out[0] = out[1] = 0.0
    return out, tb, metal


def phase_complete(phase: int, y: np.ndarray, p: DistillationParams) -> bool:
    """Whether a phase has reached its end condition (the hold's time limit ``p.max_hold_s`` is
    the sequence's business): heat — within 2 K of the hold temperature; hold — residual metal
    at or below spec; cool — at or below the discharge temperature; idle — never."""
    T, residual = y[0], y[1]
    if phase == PHASE_HEAT:
        return bool(T >= p.t_hold - 2.0)
    if phase == PHASE_HOLD:
        return bool(residual <= p.residual_spec)
    if phase == PHASE_COOL:
        return bool(T <= p.t_discharge)
    return False
