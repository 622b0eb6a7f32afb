"""Shared building blocks of the plant configuration.

Conventions (every unit model relies on them):
- Species are named by element symbol (``pilot_config.elements``). A line tracks the species of
  its config's ``species`` list, in that order; ``SPECIES`` is the shipped line's list and the
  default. Every per-species mapping names exactly the line's species.
- Inside the twin everything is SI: metres, seconds, kelvin, mol, m3, A, V, W, Pa.
  Concentrations are mol/m3 (numerically equal to mmol/L). Acidity [H+] is mol/m3 as well.
- In the YAML, a field name carries its engineering unit as a suffix (``flow_L_per_h``,
  ``bed_length_m``, ``temperature_C``); the conversion to SI happens once, when a unit model
  is built from its config, never on the hot path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .elements import ACID_IONS, ELEMENTS

#: Elements the shipped line tracks, in canonical order (the default of a config's ``species``).
SPECIES: tuple[str, ...] = ("Dy", "Tb", "Nd", "Pr", "Fe", "Al", "U", "Th")
#: Heavy rare earths: the product group.
HREE: tuple[str, ...] = ("Dy", "Tb")
#: Elements the adsorbent must reject (of the shipped line; any line: ``rejected(species)``).
REJECTED: tuple[str, ...] = ("Fe", "Al", "U", "Th")
#: The rare earths: the lanthanides, Y and Sc (the first entries of ``pilot_config.elements``).
RARE_EARTHS: tuple[str, ...] = ("La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er",
                                "Tm", "Yb", "Lu", "Y", "Sc")
#: O atoms per metal atom of the oxide rare-earth content is quoted as (REO basis of the trade):
#: CeO2, Pr6O11, Tb4O7, every other rare earth as Ln2O3.
REO_OXYGEN_PER_ATOM: dict[str, float] = {s: 1.5 for s in RARE_EARTHS} | {"Ce": 2.0, "Pr": 11 / 6, "Tb": 7 / 4}

#: Molar masses, g/mol, of every element of ``pilot_config.elements`` and H.
MOLAR_MASS_G_PER_MOL: dict[str, float] = {sym: el.molar_mass_g_per_mol for sym, el in ELEMENTS.items()}
MOLAR_MASS_G_PER_MOL["H"] = ACID_IONS["H"][0]
#: Usual aqueous charge of every element of ``pilot_config.elements``.
CHARGE: dict[str, int] = {sym: el.charge for sym, el in ELEMENTS.items()}
#: g/mol of O (IUPAC 2021 abridged), for the oxide basis.
M_OXYGEN_G_PER_MOL = 15.999

FARADAY_C_PER_MOL = 96485.33212
GAS_CONSTANT_J_PER_MOL_K = 8.314462618
ZERO_CELSIUS_K = 273.15

# unit conversions to SI
L_PER_H = 1e-3 / 3600.0  # m3/s per L/h
MOL_PER_L = 1000.0  # mol/m3 per mol/L (M)


def mg_per_L_to_mol_per_m3(species: str, mg_per_L: float) -> float:
    """mg/L = g/m3; divide by g/mol to get mol/m3."""
    return mg_per_L / MOLAR_MASS_G_PER_MOL[species]


def reo_g_per_mol(element: str) -> float:
    """Oxide mass per mol of the rare earth ``element`` on the REO basis: M + x·M_O, x from
    ``REO_OXYGEN_PER_ATOM`` (e.g. Dy2O3: 162.500 + 1.5·15.999 = 186.4985 g per mol Dy)."""
    return MOLAR_MASS_G_PER_MOL[element] + REO_OXYGEN_PER_ATOM[element] * M_OXYGEN_G_PER_MOL


def rare_earths(species: tuple[str, ...]) -> tuple[str, ...]:
    """The rare earths among ``species``, in the line's order."""
    return tuple(s for s in species if s in RARE_EARTHS)


def rejected(species: tuple[str, ...]) -> tuple[str, ...]:
    """The elements of ``species`` the adsorbent must reject: every one that is not a rare earth
    (for the shipped line Fe, Al, U, Th: ``REJECTED``)."""
    return tuple(s for s in species if s not in RARE_EARTHS)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def check_species_list(species) -> tuple[str, ...]:
    """A line's ``species``: known element symbols, each once, the product elements (``HREE``)
    among them. Returns the tuple."""
    species = tuple(species)
    unknown = [s for s in species if s not in ELEMENTS]
    if unknown:
        raise ValueError(f"unknown element {unknown}; known elements: {', '.join(ELEMENTS)}")
    dupes = sorted({s for s in species if species.count(s) > 1})
    if dupes:
        raise ValueError(f"species must be listed once each; repeated: {dupes}")
    missing = [s for s in HREE if s not in species]
    if missing:
        raise ValueError(f"the line's product elements {list(HREE)} must be tracked; missing {missing}")
    return species


def check_known_elements(value: dict, what: str) -> dict:
    """Keys of a per-species mapping must be element symbols (the line's list is checked by
    the whole config, ``check_every_species``)."""
    unknown = sorted(set(value) - set(ELEMENTS))
    if unknown:
        raise ValueError(f"unknown element {unknown} in {what}; known elements: {', '.join(ELEMENTS)}")
    return value


def check_every_species(value: dict, what: str, species: tuple[str, ...] = SPECIES) -> dict:
    """A per-species mapping must name every species of ``species`` and nothing else."""
    check_known_elements(value, what)
    unknown = sorted(set(value) - set(species))
    missing = [s for s in species if s not in value]
    if unknown:
        raise ValueError(f"{what} names {unknown}, not in the line's species {list(species)}")
    if missing:
        raise ValueError(f"{what} needs every species of the line; missing {missing}")
    return value
