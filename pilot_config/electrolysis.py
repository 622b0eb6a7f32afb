"""Molten-salt electrolysis cells (liquid-alloy cathode) and the vacuum distillation of the alloy.

Units are in the field names; the twin converts to SI once (``twin.electrolysis``,
``twin.distillation``). Values marked (tune) are starting points the pilot will fit from data.

Sources of the shipped defaults:
- Zn vapour pressure: the CRC Handbook table "Vapor pressure of the metallic elements"
  (after Alcock, Itkin & Horrigan, Can. Metall. Q. 23 (1984) 309) gives for liquid Zn
  100 Pa at 750 K, 1 kPa at 852 K, 10 kPa at 990 K and 100 kPa at 1185 K; the least-squares
  fit ln(p/Pa) = 23.44 − 14108 K/T reproduces them within 2.5 % and puts the normal boiling
  point at 1184 K (907 °C; handbook 1180 K). B·R = 117 kJ/mol, the enthalpy of vaporisation.
- Liquid Zn heat capacity ≈ 32–33 J/(mol K) (Grønvold & Stølen, Thermochim. Acta 395 (2002) 127).
- LiCl–KCl eutectic (58.5:41.5 mol %, 55.7 g/mol, liquidus 352 °C, ~1.6–1.7 g/cm3 at 500 °C).
- Its enthalpy of fusion: 11.8 kJ/mol at the eutectic (0.587 LiCl, 354.4 °C) by DSC (Korin & Soifer,
  J. Therm. Anal. 50 (1997) 347), i.e. 212 kJ/kg at 55.74 g/mol. The freezing range below the
  liquidus (TbCl3 in the melt, temperature differences across the crucible), the residual
  conductance of the frozen salt and the exponent of the conductance on the liquid fraction
  (Bruggeman's 1.5 for a conducting phase among insulating grains) are assumptions (tune).
- Enthalpies of fusion of the cathode metals (CRC Handbook, "Enthalpy of fusion"): Zn 7.068,
  Mg 8.48, Cd 6.21 kJ/mol. The Tb alloyed (≤ 10 wt %, mostly as solid intermetallics above
  saturation) is taken not to shift the freezing point of the pool (assumption).
- Rectifier: a 10 V / 250 A DC supply for the pilot cell (assumption; the anode-effect voltage,
  about 8.5 V at 150 A, stays below the limit).
- Apparent standard potential of Tb(III)/Tb vs Cl2/Cl− in LiCl–KCl of about −3.0 V near
  500 °C, becoming less negative with temperature (order of magnitude of the emf data of
  Li et al., Electrochim. Acta 167 (2015) 139 on TbCl3 in LiCl–KCl) (tune).
- Anode effect: Piontelli-type relation i_c = i_ref·(w/w_ref)^m·(1 + k_T·(T − T_ref)), with m = 0.5
  as for the oxide-fed anode (alumina in cryolite; Thonstad et al., Aluminium Electrolysis,
  3rd ed., 2001). See ``AnodeEffectConfig`` for why it is kept for the chloride melt.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel

#: melting and normal boiling points of the liquid-cathode metals, degC (CRC Handbook)
METAL_MELTING_C: dict[str, float] = {"Zn": 419.5, "Mg": 650.0, "Cd": 321.1}
METAL_BOILING_C: dict[str, float] = {"Zn": 907.0, "Mg": 1090.0, "Cd": 767.0}
#: enthalpies of fusion of the liquid-cathode metals, kJ/mol (CRC Handbook)
METAL_FUSION_KJ_PER_MOL: dict[str, float] = {"Zn": 7.068, "Mg": 8.48, "Cd": 6.21}


class ElectrolyteConfig(StrictModel):
    """The molten salt: an alkali-chloride solvent carrying the TbCl3 feed species."""

    composition: str = Field("LiCl-KCl-TbCl3", min_length=1, max_length=80, description="label only")
    solvent_molar_mass_g_per_mol: float = Field(55.74, ge=10, le=300, description="LiCl-KCl eutectic")
    melt_mass_kg: float = Field(50.0, gt=0, le=5000, description="salt charge, solvent + TbCl3")
    density_kg_per_m3: float = Field(1650.0, ge=1000, le=5000)
    cp_J_per_kg_K: float = Field(1200.0, ge=300, le=3000, description="(tune)")
    liquidus_C: float = Field(352.0, ge=100, le=950, description="the window must stay above it; below it the melt freezes")
    initial_TbCl3_wt_pct: float = Field(5.0, gt=0, le=40, description="TbCl3 in the melt at start")
    fusion_enthalpy_kJ_per_kg: float = Field(
        212.0, gt=0, le=2000, description="latent heat of the melt (LiCl-KCl eutectic, Korin & Soifer 1997)")
    freezing_range_K: float = Field(4.0, gt=0, le=50, description="the melt is solid this far below the liquidus (tune)")
    solid_conductance_ratio: float = Field(
        1e-5, gt=0, le=0.1, description="conductance of the frozen melt relative to the liquid (tune)")
    conductance_exponent: float = Field(1.5, ge=1, le=4, description="g = g_solid + (1 − g_solid)·f^m")


class LiquidCathodeConfig(StrictModel):
    """A pool of liquid metal that alloys the deposited Tb (lowers its activity)."""

    metal: Literal["Zn", "Mg", "Cd"] = "Zn"
    initial_metal_kg: float = Field(20.0, gt=0, le=2000, description="fresh metal after each tap")
    initial_Tb_wt_pct: float = Field(0.0, ge=0, le=60)
    tb_activity_coefficient: float = Field(
        1e-8, gt=0, le=1, description="Henry coefficient of Tb in the metal; depolarises by −RT/3F·ln γ (tune)")
    tb_saturation_at_pct: float = Field(
        2.0, gt=0, le=50, description="above it Tb-metal intermetallics precipitate, a_Tb stays fixed (tune)")
    tap_Tb_wt_pct: float = Field(10.0, gt=0, le=60, description="alloy tapped to distillation at this grade")
    freezing_range_K: float = Field(
        1.0, gt=0, le=20, description="the pool is solid this far below the metal's melting point; frozen, it takes no Tb")


class DecompositionConfig(StrictModel):
    """E_dec(T) = E0 + dE/dT·(T − T_ref) + RT/3F·ln(a_Tb(alloy)/x_TbCl3), Cl2 at 1 atm."""

    standard_V: float = Field(3.0, ge=1.0, le=5.0, description="apparent standard value at T_ref (tune)")
    reference_temperature_C: float = Field(500.0, ge=300, le=1000)
    dT_V_per_K: float = Field(-6.0e-4, ge=-3e-3, le=3e-3)
    thermoneutral_V: float = Field(
        3.05, ge=1.0, le=6.0, description="−ΔH/3F of the cell reaction into the alloy (tune)")


class ElectrodeConfig(StrictModel):
    """Areas, Butler-Volmer (asinh) kinetics, ohmic resistance and the co-deposition ceiling."""

    anode_area_cm2: float = Field(150.0, gt=0, le=1e5)
    cathode_area_cm2: float = Field(600.0, gt=0, le=1e5)
    anode_tafel_V_per_decade: float = Field(0.10, gt=0, le=1.0, description="Cl2 on graphite (tune)")
    anode_exchange_A_per_cm2: float = Field(0.05, gt=0, le=10)
    cathode_tafel_V_per_decade: float = Field(0.08, gt=0, le=1.0, description="(tune)")
    cathode_exchange_A_per_cm2: float = Field(0.2, gt=0, le=10)
    resistance_ohm: float = Field(0.006, gt=0, le=1.0, description="cell resistance at T_ref")
    resistance_temp_coeff_per_K: float = Field(
        0.002, ge=0, le=0.01, description="R = R_ref·max(1 − k·(T − T_ref), 0.2): conductivity rises with T")
    codeposition_shift_V: float = Field(
        0.6, gt=0, le=2.0, description="ceiling of the cathodic concentration overpotential (Li co-deposition)")


class CurrentEfficiencyConfig(StrictModel):
    """η = η_max·φ_mt(i_c/i_lim) − I_back/I with i_lim = 3F·k_m·C(Tb3+)."""

    max_efficiency: float = Field(0.92, gt=0, le=1.0)
    mass_transfer_m_per_s: float = Field(
        4e-5, gt=0, le=10.0, description="k_m; a very large value removes the mass-transfer limit")
    back_reaction_A_per_cm2: float = Field(
        0.005, ge=0, le=1.0, description="parasitic re-oxidation of deposited Tb at T_ref, per cathode area")
    back_reaction_activation_kJ_per_mol: float = Field(40.0, ge=0, le=300)


class AnodeEffectConfig(StrictModel):
    """Gas-film blocking of the anode above a critical anodic current density.

    Mechanism chosen: the anode effect is modelled as in oxide-fed anodes, where the film of
    gas spreads over the anode once the current density exceeds a critical value that rises
    with the content of the discharging feed species (Piontelli's relation i_c ∝ c^0.5,
    Thonstad et al., Aluminium Electrolysis, 2001; the same picture is used for RE
    oxide-fluoride cells, where too low an oxide content triggers it). For the chloride melt
    the feed species is TbCl3: as it depletes the melt wets the graphite less, and the
    voltage jump is the alarm the pilot must avoid. The exponent, reference and hysteresis
    are (tune) and are to be fitted to the pilot's own voltage records; exponent 0 gives a
    fixed wetting limit. Once on, the film holds until the current density falls below
    (1 − hysteresis)·i_c (it is quenched by cutting the current or feeding salt).
    """

    critical_current_density_A_per_cm2: float = Field(1.5, gt=0, le=50)
    reference_salt_Tb_wt_pct: float = Field(3.0, gt=0, le=40)
    concentration_exponent: float = Field(0.5, ge=0, le=2)
    temperature_coeff_per_K: float = Field(0.002, ge=0, le=0.01, description="relative, around T_ref")
    voltage_rise_V: float = Field(5.0, gt=0, le=40)
    hysteresis_fraction: float = Field(0.2, ge=0, le=0.8)
    onset_time_s: float = Field(
        30.0, ge=1, le=600, description="much shorter than the sync step makes the cell stiff and slow")


class CellThermalConfig(StrictModel):
    """m·cp·dT/dt = I·(U − U_tn) + P_heater − UA·(T − T_amb) − latent heat of freezing (twin.electrolysis)."""

    UA_W_per_K: float = Field(5.0, gt=0, le=1000)
    vessel_heat_capacity_J_per_K: float = Field(20000.0, ge=0, le=1e8, description="crucible + cathode pool")
    ambient_C: float = Field(25.0, ge=-30, le=60)
    heater_max_W: float = Field(5000.0, gt=0, le=1e6)
    phase_change_time_s: float = Field(
        60.0, ge=1, le=3600, description="relaxation of the liquid fractions of salt and metal pool to equilibrium (tune)")


class RectifierConfig(StrictModel):
    """The DC supply: current-controlled up to its voltage limit, then voltage-limited."""

    voltage_limit_V: float = Field(10.0, gt=1, le=100, description="compliance voltage of the rectifier")


class SaltFeedConfig(StrictModel):
    batch_TbCl3_kg: float = Field(0.5, gt=0, le=100, description="size of one manual TbCl3 addition")
    max_rate_TbCl3_kg_per_h: float = Field(2.0, gt=0, le=100, description="feeder capacity (guard limit)")


class CellConfig(StrictModel):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    temperature_setpoint_C: float = Field(550.0, ge=400, le=1000)
    temperature_min_C: float = Field(450.0, ge=400, le=1000)
    temperature_max_C: float = Field(650.0, ge=400, le=1000)
    current_setpoint_A: float = Field(150.0, ge=0, le=20000)
    max_current_A: float = Field(200.0, gt=0, le=20000)
    electrolyte: ElectrolyteConfig = ElectrolyteConfig()
    cathode: LiquidCathodeConfig = LiquidCathodeConfig()
    decomposition: DecompositionConfig = DecompositionConfig()
    electrodes: ElectrodeConfig = ElectrodeConfig()
    efficiency: CurrentEfficiencyConfig = CurrentEfficiencyConfig()
    anode_effect: AnodeEffectConfig = AnodeEffectConfig()
    thermal: CellThermalConfig = CellThermalConfig()
    rectifier: RectifierConfig = RectifierConfig()
    salt_feed: SaltFeedConfig = SaltFeedConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "CellConfig":
        lo, hi, sp = self.temperature_min_C, self.temperature_max_C, self.temperature_setpoint_C
        if not lo < sp < hi:
            raise ValueError(f"temperature_setpoint_C ({sp}) must lie inside "
                             f"(temperature_min_C, temperature_max_C) = ({lo}, {hi})")
        metal_mp = METAL_MELTING_C[self.cathode.metal]
        if lo <= metal_mp:
            raise ValueError(f"temperature_min_C ({lo}) must be above the melting point of the "
                             f"{self.cathode.metal} cathode ({metal_mp} degC)")
        if lo <= self.electrolyte.liquidus_C:
            raise ValueError(f"temperature_min_C ({lo}) must be above electrolyte.liquidus_C "
                             f"({self.electrolyte.liquidus_C})")
        if self.current_setpoint_A > self.max_current_A:
            raise ValueError(f"current_setpoint_A ({self.current_setpoint_A}) exceeds max_current_A "
                             f"({self.max_current_A})")
        if self.cathode.tap_Tb_wt_pct <= self.cathode.initial_Tb_wt_pct:
            raise ValueError("cathode.tap_Tb_wt_pct must exceed cathode.initial_Tb_wt_pct")
        return self


class DistillationConfig(StrictModel):
    """Batch vacuum distillation of the tapped alloy: charge, heat, hold, cool, discharge.

    Hertz–Knudsen: J = α·max(a_M·p_sat(T) − p, 0)·sqrt(M/(2πRT)), ln(p_sat/Pa) = A − B/T,
    a_M = x_M·exp(Ω·(1 − x_M)²/(RT)) (regular solution; Ω = 0 is Raoult).
    """

    metal: Literal["Zn", "Mg", "Cd"] = "Zn"
    charge: Literal["tap_from_cells", "fixed"] = Field(
        "tap_from_cells", description="tap_from_cells: each tapped alloy is one batch; fixed: the batch below")
    fixed_charge_kg: float = Field(22.0, gt=0, le=1000)
    fixed_charge_Tb_wt_pct: float = Field(10.0, ge=0, le=95)
    crucible_capacity_kg: float = Field(40.0, gt=0, le=2000)
    heat_up_rate_K_per_min: float = Field(5.0, gt=0, le=50)
    hold_temperature_C: float = Field(900.0, ge=300, lt=1000)
    pressure_Pa: float = Field(5.0, gt=0, le=1e4, description="chamber pressure, the back-pressure of the vapour")
    vapour_pressure_A: float = Field(23.44, ge=10, le=40, description="ln(p_sat/Pa) = A − B/T (Zn, CRC fit)")
    vapour_pressure_B_K: float = Field(14108.0, ge=1000, le=60000)
    evaporation_coefficient: float = Field(
        0.02, gt=0, le=1, description="α: effective, below 1 from re-condensation and residual gas (tune)")
    evaporating_area_m2: float = Field(0.03, gt=0, le=10)
    metal_interaction_J_per_mol: float = Field(
        -40000.0, ge=-200000, le=50000, description="Ω of the regular-solution metal activity (tune)")
    residual_metal_spec_wt_pct: float = Field(0.5, gt=0, le=20, description="end point of the hold")
    max_hold_h: float = Field(6.0, gt=0, le=72)
    furnace_heat_capacity_J_per_K: float = Field(60000.0, gt=0, le=1e8, description="crucible, susceptor, hearth")
    alloy_cp_J_per_kg_K: float = Field(500.0, gt=100, le=2000)
    heater_max_W: float = Field(20000.0, gt=0, le=1e6)
    UA_W_per_K: float = Field(8.0, gt=0, le=1000, description="losses under vacuum")
    cool_UA_W_per_K: float = Field(30.0, gt=0, le=10000, description="losses with argon backfill and fan")
    ambient_C: float = Field(25.0, ge=-30, le=60)
    control_time_constant_s: float = Field(120.0, gt=1, le=3600, description="furnace temperature loop")
    discharge_temperature_C: float = Field(150.0, ge=20, le=400, description="cool-down ends here")

    @model_validator(mode="after")
    def _consistent(self) -> "DistillationConfig":
        t_boil_K = self.vapour_pressure_B_K / (self.vapour_pressure_A - math.log(101325.0))
        known = METAL_BOILING_C[self.metal] + 273.15
        if t_boil_K <= 0 or abs(t_boil_K - known) > 60:
            raise ValueError(f"vapour_pressure_A/vapour_pressure_B_K put the boiling point of {self.metal} "
                             f"at {t_boil_K:.0f} K; the handbook value is {known:.0f} K")
        if self.hold_temperature_C <= METAL_MELTING_C[self.metal]:
            raise ValueError(f"hold_temperature_C ({self.hold_temperature_C}) must be above the melting "
                             f"point of {self.metal}")
        if self.charge == "fixed" and self.fixed_charge_kg > self.crucible_capacity_kg:
            raise ValueError(f"fixed_charge_kg ({self.fixed_charge_kg}) exceeds crucible_capacity_kg "
                             f"({self.crucible_capacity_kg})")
        return self
