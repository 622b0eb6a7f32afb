"""Config of the adsorption carousel that recovers Dy/Tb from the leach liquor.

Units are in the field names; ``twin.adsorption.params_from_config`` converts to SI once.
Values marked (tune) are starting points the pilot will fit from breakthrough and elution data.

Isotherm (per species i, competitive Langmuir on one set of sites, acid-dependent affinity):

    q_i* = q_max,i · K_i c_i / (1 + Σ_j K_j c_j),   K_i = K_L,i · ([H+] / [H+]_ref)^(−n_i)

with c in mol/m3 (= mmol/L), K in m3/mol, q in mol/kg (= mmol/g). ``n_i`` is the number of
protons the adsorbed ion displaces (3 for Ln3+, Fe3+, Al3+; 2 for UO2 2+; 4 for Th4+; by default
the element's usual charge, ``pilot_config.base.CHARGE``), so
1 M acid cuts K by 100^3 against the 0.01 M loading acidity: that is how elution works. The
same n_i is the exchange stoichiometry of the acid balance: each ion loaded releases n_i H+ into
the liquid, each ion eluted takes n_i back (M^n+ + n HR ⇌ MR_n + n H+).

Mass-transfer rate (``k_ldf_per_s``) is the value at the design superficial velocity; the film
part of it follows the flow (Wilson–Geankoplis, with ``particle_diameter_m`` and
``ion_diffusivity_m2_per_s``; ``film_correlation: none`` holds k_LDF at the configured value at
every flow). The equations are in ``twin.adsorption``.

Shipped defaults (the design basis of the pilot line; feed ~40 L/h of leach liquor at 0.01 M H+
with Nd 300, Pr 80, Dy 60, Tb 15, Fe 2000, Al 800, U 5, Th 10 mg/L):

- Column 0.10 m × 0.55 m (4.32 L bed, ~9.3 BV/h and 5.1 m/h superficial at 40 L/h), porosity
  0.40, 300 kg adsorbent per m3 of bed (1.30 kg per column), capacity 0.10 mmol/g (tune): one
  column holds ~125 mmol Dy+Tb, ~6.5 h of feed, so a 24 h run makes 3–4 carousel switches.
- K(Dy) = 50, K(Tb) = 40 m3/mol at 0.01 M: K·c_feed ≈ 18 and 4, the HREE take ~96 % of the
  sites at saturation and the front is self-sharpening. K(Nd) = 2e-3, K(Pr) = 3e-3 (4·10^-5 of
  Dy): Nd+Pr on the loaded bed ≈ 0.2 % of Tb, well under the 0.5 % the Tb product needs.
  Fe 1e-4, Al 5e-5, U 0.05, Th 0.05 m3/mol: each < 0.1 % of the sites, rejection > 99 %.
- LDF rate 1e-3 1/s for the HREE (τ ≈ 17 min), 2e-3 1/s for the others (tune): about 30
  transfer units per bed at the design flow, a mass-transfer zone of ~10 % of the bed.
- Film: 0.5 mm beads, Dy3+ diffusivity 5.8e-10 m2/s (infinite dilution, 25 °C: CRC Handbook,
  "Ionic conductivity and diffusion at infinite dilution"), design superficial velocity
  5.093 m/h (40 L/h on Ø 0.10 m = 250 L/h on Ø 0.25 m): k_f = 3.4e-5 m/s, the film holds about
  a quarter of the Dy/Tb resistance at the design flow (k_LDF 0.94× at half flow, 1.06× at twice).
- Bed Péclet number v·L/D_ax = 80 (packed bed with some wall effect; the upwind grid of 40
  cells has exactly this numerical dispersion, finer grids subtract it; a larger Pe refines the
  grid to ⌈Pe/2⌉ cells automatically, see ``twin.adsorption``).
- Offline sequence (3.5 h, shorter than a loading cycle, so a column always stands by):
  wash 30 min at 4 BV/h with 0.003 M acid (2 BV, pH 2.5: displaces the feed liquor from the
  voids and the weakly held Nd/Pr/Fe/Al while K(Dy) rises ×37, so the HREE stay put), elute
  120 min at 2 BV/h with 1 M acid (4 BV), regenerate 60 min at 4 BV/h with 0.01 M acid (4 BV,
  brings the bed back to loading acidity).
- Pressure drop 1.0 kPa per m of bed per m/h (Kozeny–Carman for 0.5 mm beads, ε = 0.4, water
  at 20 °C gives 0.94): ~2.8 kPa per column at the design flow.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import StrictModel, check_known_elements


class IsothermParams(StrictModel):
    """Competitive-Langmuir parameters of one species on the adsorbent."""

    q_max_mol_per_kg: float = Field(gt=0, le=10, description="site capacity, mol/kg = mmol/g (tune)")
    K_L_m3_per_mol: float = Field(
        ge=0, le=1e6, description="Langmuir affinity at the reference acidity, m3/mol = L/mmol (tune)")
    proton_exponent: float | None = Field(
        None, ge=0, le=6,
        description="n in K = K_L·([H+]/[H+]_ref)^-n: protons displaced per ion (default: the element's "
                    "usual charge, pilot_config.elements)")
    k_ldf_per_s: float = Field(
        gt=0, le=10, description="linear-driving-force rate constant at the design superficial velocity (tune)")


def _iso(q: float, k: float, n: float, kl: float) -> IsothermParams:
    return IsothermParams(q_max_mol_per_kg=q, K_L_m3_per_mol=k, proton_exponent=n, k_ldf_per_s=kl)


def default_isotherms() -> dict[str, IsothermParams]:
    """The shipped adsorbent (HREE-selective; see the module docstring for the reasoning)."""
    return {
        "Dy": _iso(0.10, 50.0, 3.0, 1.0e-3),
        "Tb": _iso(0.10, 40.0, 3.0, 1.0e-3),
        "Nd": _iso(0.10, 2.0e-3, 3.0, 2.0e-3),
        "Pr": _iso(0.10, 3.0e-3, 3.0, 2.0e-3),
        "Fe": _iso(0.10, 1.0e-4, 3.0, 2.0e-3),
        "Al": _iso(0.10, 5.0e-5, 3.0, 2.0e-3),
        "U": _iso(0.10, 5.0e-2, 2.0, 2.0e-3),
        "Th": _iso(0.10, 5.0e-2, 4.0, 2.0e-3),
    }


class ColumnConfig(StrictModel):
    """One packed column (all columns of the carousel are alike)."""

    bed_length_m: float = Field(0.55, gt=0.01, le=5, description="packed bed height")
    bed_diameter_m: float = Field(0.10, gt=0.005, le=2, description="inner diameter")
    porosity: float = Field(0.40, ge=0.3, le=0.5, description="interparticle (bed) void fraction ε")
    bulk_density_kg_per_m3: float = Field(
        300.0, gt=10, le=1500, description="adsorbent mass per bed volume ρ_b (dry basis)")
    peclet_number: float = Field(
        80.0, ge=2, le=10000,
        description="bed Péclet number v·L/D_ax; D_ax ∝ v (mechanical dispersion dominates)")
    n_cells: int = Field(
        40, ge=10, le=200, description="finite volumes along the bed (at least; refined to ⌈Pe/2⌉ cells)")
    reference_acidity_mol_per_L: float = Field(
        0.01, gt=1e-5, le=5, description="[H+] at which K_L holds (the loading acidity)")
    film_correlation: Literal["wilson_geankoplis", "none"] = Field(
        "wilson_geankoplis",
        description="film coefficient k_f(u): wilson_geankoplis (Sh = 1.09/ε·(Re·Sc)^1/3), none (k_LDF fixed)")
    particle_diameter_m: float = Field(5.0e-4, gt=1e-5, le=0.01, description="adsorbent bead diameter d_p")
    ion_diffusivity_m2_per_s: float = Field(
        5.8e-10, gt=1e-11, le=1e-8, description="liquid diffusivity of the loading ions D_m (Dy3+, 25 °C)")
    design_superficial_velocity_m_per_h: float = Field(
        5.093, gt=0.01, le=100, description="superficial velocity at which the k_ldf_per_s hold (design feed)")
    isotherms: dict[str, IsothermParams] = Field(
        default_factory=default_isotherms, description="competitive Langmuir per species")

    @field_validator("isotherms")
    @classmethod
    def _every_species(cls, v: dict) -> dict:
        return check_known_elements(v, "isotherms")

    @property
    def bed_volume_L(self) -> float:
        return 1e3 * 3.141592653589793 * 0.25 * self.bed_diameter_m ** 2 * self.bed_length_m


class CarouselConfig(StrictModel):
    """Lead/lag carousel with an offline wash → elute → regenerate sequence."""

    n_columns: int = Field(3, ge=2, le=12, description="columns in the carousel")
    column: ColumnConfig = Field(default_factory=ColumnConfig)
    breakthrough_limit_fraction: float = Field(
        0.05, gt=0, le=0.5, description="C/C0 of Dy+Tb at the lag outlet that triggers a switch")
    wash_minutes: float = Field(30.0, ge=1, le=1440, description="wash phase duration")
    elute_minutes: float = Field(120.0, ge=1, le=1440, description="elution phase duration")
    regenerate_minutes: float = Field(60.0, ge=1, le=1440, description="regeneration (re-acidify/rinse)")
    wash_flow_BV_per_h: float = Field(4.0, gt=0, le=50, description="wash flow, bed volumes per hour")
    elute_flow_BV_per_h: float = Field(2.0, gt=0, le=50, description="eluent flow, bed volumes per hour")
    regenerate_flow_BV_per_h: float = Field(4.0, gt=0, le=50, description="regenerant flow, BV/h")
    wash_acidity_mol_per_L: float = Field(
        0.003, ge=0, le=1, description="[H+] of the wash (pH 2.5 rinse: HREE held tighter than at 0.01 M)")
    eluent_acidity_mol_per_L: float = Field(1.0, ge=0.1, le=6, description="[H+] of the eluent (HCl/H2SO4)")
    regenerant_acidity_mol_per_L: float = Field(
        0.01, ge=0, le=1, description="[H+] of the regenerant (back to loading acidity)")
    pressure_drop_kPa_per_m_per_m_per_h: float = Field(
        1.0, gt=0, le=100, description="linear (Darcy/Kozeny–Carman) Δp per m of bed per m/h superficial")
