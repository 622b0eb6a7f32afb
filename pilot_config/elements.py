"""Elements a leach liquor may carry: molar mass and usual aqueous charge, looked up by symbol.

Molar masses are the IUPAC 2021 standard atomic weights, g/mol (Prohaska et al., "Standard atomic
weights of the elements 2021", Pure Appl. Chem. 94 (2022) 573-600; abridged to the digits the
Commission tabulates; Pm has no stable isotope: the mass number of 145Pm, its longest-lived one,
is used). The charge is the usual one in acidic sulfate/chloride leach liquor: Ln3+ (Ce3+, Eu3+
as well), Fe3+ (oxidised liquor), UO2^2+ for uranium (carried as the element U), Th4+, B as
uncharged boric acid. A case that needs another oxidation state gives it in its own species entry.

The acid-system ions (H+, HSO4-, SO4^2-, Cl-) are in ``ACID_IONS`` with molar masses summed from
the same atomic weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Element:
    symbol: str
    name: str
    molar_mass_g_per_mol: float
    charge: int


_TABLE: tuple[tuple[str, str, float, int], ...] = (
    # rare earths: the lanthanides, Y, Sc
    ("La", "lanthanum", 138.90547, 3), ("Ce", "cerium", 140.116, 3),
    ("Pr", "praseodymium", 140.90766, 3), ("Nd", "neodymium", 144.242, 3),
    ("Pm", "promethium", 145.0, 3), ("Sm", "samarium", 150.36, 3),
    ("Eu", "europium", 151.964, 3), ("Gd", "gadolinium", 157.249, 3),
    ("Tb", "terbium", 158.925354, 3), ("Dy", "dysprosium", 162.500, 3),
    ("Ho", "holmium", 164.930329, 3), ("Er", "erbium", 167.259, 3),
    ("Tm", "thulium", 168.934219, 3), ("Yb", "ytterbium", 173.045, 3),
    ("Lu", "lutetium", 174.9668, 3), ("Y", "yttrium", 88.905838, 3),
    ("Sc", "scandium", 44.955907, 3),
    # actinides
    ("Th", "thorium", 232.0377, 4), ("U", "uranium", 238.02891, 2),
    # impurities of leach liquors, magnet scrap and brines
    ("Fe", "iron", 55.845, 3), ("Al", "aluminium", 26.9815384, 3), ("Ca", "calcium", 40.078, 2),
    ("Mg", "magnesium", 24.305, 2), ("Co", "cobalt", 58.933194, 2), ("Zn", "zinc", 65.38, 2),
    ("Na", "sodium", 22.98976928, 1), ("K", "potassium", 39.0983, 1), ("Li", "lithium", 6.94, 1),
    ("Ga", "gallium", 69.723, 3), ("B", "boron", 10.81, 0), ("Ni", "nickel", 58.6934, 2),
    ("Cu", "copper", 63.546, 2), ("Mn", "manganese", 54.938043, 2), ("Cr", "chromium", 51.9961, 3),
    ("Cd", "cadmium", 112.414, 2), ("Pb", "lead", 207.2, 2), ("Sr", "strontium", 87.62, 2),
    ("Ba", "barium", 137.327, 2), ("Ti", "titanium", 47.867, 4), ("Zr", "zirconium", 91.222, 4),
    ("Si", "silicon", 28.085, 0), ("In", "indium", 114.818, 3), ("Ge", "germanium", 72.630, 4),
)

ELEMENTS: dict[str, Element] = {sym: Element(sym, name, mm, z) for sym, name, mm, z in _TABLE}

_H, _S, _O, _CL = 1.008, 32.06, 15.999, 35.45
#: Acid-system ions: molar mass g/mol and charge (IUPAC 2021 weights summed).
ACID_IONS: dict[str, tuple[float, int]] = {
    "H": (_H, 1),
    "HSO4": (_H + _S + 4 * _O, -1),
    "SO4": (_S + 4 * _O, -2),
    "Cl": (_CL, -1),
}


class UnknownElement(ValueError):
    """An element symbol that is not in the table; the message names the field and the allowed."""


def element(symbol: str, field: str = "species") -> Element:
    """The table entry for ``symbol``; an unknown symbol raises ``UnknownElement`` naming ``field``."""
    try:
        return ELEMENTS[symbol]
    except (KeyError, TypeError):
        allowed = ", ".join(ELEMENTS)
        raise UnknownElement(f"{field}: unknown element {symbol!r}; allowed: {allowed}") from None


def molar_mass(symbol: str, field: str = "species") -> float:
    """g/mol of an element or of an acid-system ion (H, HSO4, SO4, Cl)."""
    if symbol in ACID_IONS:
        return ACID_IONS[symbol][0]
    return element(symbol, field).molar_mass_g_per_mol
