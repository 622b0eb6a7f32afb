"""A steady-state solvent-extraction case (YAML): species, acid, extractant, sections, organic.

    species:                       # any elements of pilot_config.elements, each with its D model
      Nd: {distribution: {model: empirical_dosage, m0: 0.31183, m1: 0.03763, B0: -1.62372, B1: -0.38096}}
      Ca: {distribution: {model: constant, D: 0.0658}}     # charge 2 from the table
      Pr: {distribution: {model: separation_factor, reference: Nd, log10_beta0: -0.2}}
    acid: {hso4_log10_K: -1.99, activity: none}            # none | davies | bromley
    extractant: {name: DEHPA, molar_mass_g_per_mol: 322.431, density_g_per_L: 975.8}
    organic: {flow_L_per_h: 62.01, loop: open, extractant_g_per_L: 48.79, metals_mg_per_L: {Sc: 1.734}}
    extraction: {stages: 3, aqueous: {flow_L_per_h: 62.01, metals_mg_per_L: {...},
                                      acid_mg_per_L: {H: 10.75, HSO4: 1.0e4, SO4: 100}}}
    scrub: {stages: 2, to_feed: true, aqueous: {...}}       # optional
    strip: {stages: 2, aqueous: {flow_L_per_h: 10, acid_mol_per_L: {HCl: 4}}}   # optional

A section's ``stage_efficiency`` (Murphree, organic phase, 0 < η ≤ 1, default 1: equilibrium
stages) stands for rate-limited mixers.

Per species: ``charge`` (default: the table's), ``h_per_ion`` (H+ released per ion extracted,
default the charge) and ``extractant_per_ion`` (extractant consumed per ion, default the charge).
``organic.extractant_g_per_L`` is the free extractant of the inlet organic (open loop) or the
total extractant of the loop (closed). Acid may be given as an analysis (``acid_mg_per_L``: H,
HSO4, SO4, Cl) and/or as made up (``acid_mol_per_L``: H2SO4, HCl). ``molar_mass_g_per_mol``
overrides the table for a species or acid ion (to reproduce a published case's own values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pilot_config.base import StrictModel
from pilot_config.elements import ACID_IONS, ELEMENTS
from pilot_config.loader import (
    ConfigError,
    ConfigIssue,
    issues_from_validation,
    read_yaml,
)

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class ConstantD(StrictModel):
    model: Literal["constant"]
    D: Positive


class MassAction(StrictModel):
    model: Literal["mass_action"]
    log10_Kex: float
    h_order: float
    extractant_order: float


class EmpiricalDosage(StrictModel):
    model: Literal["empirical_dosage"]
    m0: float
    m1: float = 0.0
    B0: float
    B1: float = 0.0


class SeparationFactor(StrictModel):
    model: Literal["separation_factor"]
    reference: str
    log10_beta0: float
    pH_slope: float = 0.0
    pH_ref: float = 0.0
    loading_slope: float = 0.0


Distribution = Annotated[ConstantD | MassAction | EmpiricalDosage | SeparationFactor,
                         Field(discriminator="model")]


class SpeciesSpec(StrictModel):
    distribution: Distribution
    charge: int | None = Field(default=None, ge=0, le=6)
    h_per_ion: NonNegative | None = None
    extractant_per_ion: NonNegative | None = None


class AcidSpec(StrictModel):
    hso4_log10_K: float = -1.99
    activity: Literal["none", "davies", "bromley"] = "none"
    bromley_B_kg_per_mol: float = 0.1433


class ExtractantSpec(StrictModel):
    name: str = "DEHPA"
    molar_mass_g_per_mol: Positive = 322.431
    density_g_per_L: Positive = 975.8


class AqueousStream(StrictModel):
    flow_L_per_h: Positive
    metals_mg_per_L: dict[str, NonNegative] = {}
    acid_mg_per_L: dict[Literal["H", "HSO4", "SO4", "Cl"], NonNegative] = {}
    acid_mol_per_L: dict[Literal["H2SO4", "HCl"], NonNegative] = {}


class Section(StrictModel):
    stages: int = Field(ge=1, le=60)
    aqueous: AqueousStream
    stage_efficiency: float = Field(default=1.0, gt=0, le=1)


class ScrubSection(Section):
    to_feed: bool = True


class OrganicSpec(StrictModel):
    flow_L_per_h: Positive
    loop: Literal["open", "closed"] = "open"
    extractant_g_per_L: Positive
    metals_mg_per_L: dict[str, NonNegative] = {}


class SxCaseConfig(StrictModel):
    species: dict[str, SpeciesSpec]
    molar_mass_g_per_mol: dict[str, Positive] = {}
    acid: AcidSpec = AcidSpec()
    extractant: ExtractantSpec = ExtractantSpec()
    organic: OrganicSpec
    extraction: Section | None = None
    scrub: ScrubSection | None = None
    strip: Section | None = None

    @field_validator("species")
    @classmethod
    def _known_elements(cls, value: dict) -> dict:
        unknown = [s for s in value if s not in ELEMENTS]
        if unknown:
            raise ValueError(f"unknown element {unknown[0]!r}; allowed: {', '.join(ELEMENTS)}")
        if not value:
            raise ValueError("at least one species is needed")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SxCaseConfig:
        names = list(self.species)
        for where, mapping in self._metal_maps():
            bad = [s for s in mapping if s not in self.species]
            if bad:
                raise ValueError(f"{where}: {bad[0]!r} is not a species of this case; allowed: {names}")
        allowed = names + list(ACID_IONS)
        bad = [s for s in self.molar_mass_g_per_mol if s not in allowed]
        if bad:
            raise ValueError(f"molar_mass_g_per_mol: {bad[0]!r} is neither a species nor an acid ion; "
                             f"allowed: {allowed}")
        if not any((self.extraction, self.scrub, self.strip)):
            raise ValueError("a cascade needs at least one of extraction, scrub, strip")
        if self.organic.loop == "closed" and self.organic.metals_mg_per_L:
            raise ValueError("organic.metals_mg_per_L: a closed loop's organic inlet is the strip's "
                             "outlet; give metals only with loop: open")
        for sym, spec in self.species.items():
            self._check_reference(sym, spec.distribution)
            if not any(m.get(sym, 0.0) > 0 for _, m in self._metal_maps()):
                raise ValueError(f"species.{sym}: enters with no stream; give it in an aqueous "
                                 "or organic metals_mg_per_L, or remove it")
        return self

    def _check_reference(self, sym: str, dist) -> None:
        if not isinstance(dist, SeparationFactor):
            return
        ref = self.species.get(dist.reference)
        if ref is None or isinstance(ref.distribution, SeparationFactor):
            ok = [s for s, v in self.species.items() if not isinstance(v.distribution, SeparationFactor)]
            raise ValueError(f"species.{sym}.distribution.reference: {dist.reference!r} must be a "
                             f"species with its own D model; allowed: {ok}")

    def _metal_maps(self):
        yield "organic.metals_mg_per_L", self.organic.metals_mg_per_L
        for name in ("extraction", "scrub", "strip"):
            section = getattr(self, name)
            if section is not None:
                yield f"{name}.aqueous.metals_mg_per_L", section.aqueous.metals_mg_per_L

    def sections(self) -> list[tuple[str, Section]]:
        """The sections present, in organic-flow order."""
        return [(n, getattr(self, n)) for n in ("extraction", "scrub", "strip") if getattr(self, n)]


def load_sx_case(path: str | Path) -> SxCaseConfig:
    """Read and validate a case file; every problem is reported as file:line: field: message."""
    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(str(path), "", None, "", "an SX case is a mapping of fields")])
    try:
        return SxCaseConfig.model_validate(data)
    except ValidationError as exc:
        issues = issues_from_validation(exc, str(path), lines)
        raise ConfigError([_located(i, lines) for i in issues]) from None


def _located(issue: ConfigIssue, lines: dict[tuple, int]) -> ConfigIssue:
    """A whole-case check names its field first (``organic.loop: ...``): file it under that field
    and its line instead of under the top of the file."""
    field, sep, rest = issue.message.partition(": ")
    if issue.path or not sep or " " in field:
        return issue
    keys = tuple(field.split("."))
    line = next((lines[keys[:k]] for k in range(len(keys), 0, -1) if keys[:k] in lines), issue.line)
    return ConfigIssue(issue.file, field, line, "", rest)
