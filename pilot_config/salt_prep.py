"""Salt preparation: the cascade's Tb product to anhydrous TbCl3, and the TbCl3 store the cells'
salt make-up draws from.

One lumped unit stands for oxalate precipitation (Tb³⁺ + oxalic acid → Tb2(C2O4)3·10H2O),
calcination (→ Tb4O7, ~800 °C) and chlorination (NH4Cl route or HCl/Cl2 → anhydrous TbCl3).

Sources and assumptions of the shipped defaults:
- Oxalate precipitation: RE oxalates are sparingly soluble (order 1e-6 mol/L in dilute acid;
  Gupta & Krishnamurthy, Extractive Metallurgy of Rare Earths, 2005, ch. 4); 99 % recovery at a
  plant filter (assumption, the mother liquor and wash carry the rest).
- Calcination: 99.5 % (dusting and handling losses; assumption).
- Chlorination to anhydrous TbCl3: 98 % (oxychloride TbOCl left in the residue and sublimate
  losses; assumption, order of the ammonium-chloride route yields reported for Nd/Dy chlorides).
- Residence time: batch filtration, drying, calcination and chlorination take about a day per lot;
  lumped as a first-order hold-up with τ = 24 h (assumption).
- Initial stock: the TbCl3 bought in for commissioning; a stated inventory, sized in
  docs/design_basis.md (cells run campaigns from the store).
"""

from __future__ import annotations

from pydantic import Field

from .base import StrictModel


class SaltPrepConfig(StrictModel):
    """The Tb product route to the cells: lumped salt preparation and the TbCl3 store."""

    precipitation_yield: float = Field(0.99, gt=0, le=1, description="oxalate precipitation (assumption)")
    calcination_yield: float = Field(0.995, gt=0, le=1, description="oxalate to oxide (assumption)")
    chlorination_yield: float = Field(0.98, gt=0, le=1, description="oxide to anhydrous TbCl3 (assumption)")
    residence_time_h: float = Field(24.0, gt=0, le=2000, description="first-order hold-up of the lumped unit")
    initial_holdup_TbCl3_kg: float = Field(0.0, ge=0, le=1e5, description="Tb in process at start, as TbCl3")
    initial_store_TbCl3_kg: float = Field(
        100.0, ge=0, le=1e6, description="TbCl3 in the store at start (bought-in commissioning stock)")
    low_store_TbCl3_kg: float = Field(10.0, ge=0, le=1e6, description="below it the store reports low")

    @property
    def overall_yield(self) -> float:
        return self.precipitation_yield * self.calcination_yield * self.chlorination_yield
