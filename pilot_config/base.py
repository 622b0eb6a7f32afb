"""Shared building blocks of the plant configuration.

Conventions (every unit model relies on them):
- Species are named by element symbol; the canonical order is ``SPECIES``.
- Inside the twin everything is SI: metres, seconds, kelvin, mol, m3, A, V, W, Pa.
  Concentrations are mol/m3 (numerically equal to mmol/L). Acidity [H+] is mol/m3 as well.
- In the YAML, a field name carries its engineering unit as a suffix (``flow_L_per_h``,
  ``bed_length_m``, ``temperature_C``); the conversion to SI happens once, when a unit model
  is built from its config, never on the hot path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Elements tracked through the whole line, in canonical order.
SPECIES: tuple[str, ...] = ("Dy", "Tb", "Nd", "Pr", "Fe", "Al", "U", "Th")
#: Heavy rare earths: the product group.
HREE: tuple[str, ...] = ("Dy", "Tb")
#: Elements the adsorbent must reject.
REJECTED: tuple[str, ...] = ("Fe", "Al", "U", "Th")

#: Molar masses, g/mol (IUPAC 2021 standard atomic weights).
MOLAR_MASS_G_PER_MOL: dict[str, float] = {
    "Dy": 162.500,
    "Tb": 158.925,
    "Nd": 144.242,
    "Pr": 140.908,
    "Fe": 55.845,
    "Al": 26.982,
    "U": 238.029,
    "Th": 232.038,
    "Zn": 65.38,
    "Mg": 24.305,
    "Cd": 112.414,
    "H": 1.008,
}

FARADAY_C_PER_MOL = 96485.33212
GAS_CONSTANT_J_PER_MOL_K = 8.314462618
ZERO_CELSIUS_K = 273.15

# unit conversions to SI
L_PER_H = 1e-3 / 3600.0  # m3/s per L/h
MOL_PER_L = 1000.0  # mol/m3 per mol/L (M)


def mg_per_L_to_mol_per_m3(species: str, mg_per_L: float) -> float:
    """mg/L = g/m3; divide by g/mol to get mol/m3."""
    return mg_per_L / MOLAR_MASS_G_PER_MOL[species]


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def check_every_species(value: dict, what: str) -> dict:
    """A per-species mapping must name every species of ``SPECIES`` and nothing else."""
    unknown = sorted(set(value) - set(SPECIES))
    missing = [s for s in SPECIES if s not in value]
    if unknown:
        raise ValueError(f"unknown species {unknown} in {what}; allowed: {list(SPECIES)}")
    if missing:
        raise ValueError(f"{what} needs every species; missing {missing}")
    return value
