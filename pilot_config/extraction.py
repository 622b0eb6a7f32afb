"""Config of the Dy/Tb solvent-extraction cascade (extraction | scrub | strip, closed organic loop
or, ``organic_loop: open``, a configured organic inlet; ``stages.scrub: 0`` for extraction and
strip only, the scrub acid, if any, joining the feed; optional ``acid:`` speciation and activity).

Distribution ratio D = C_org / C_aq at equilibrium, per species, one of five models
(discriminated on ``model``; pH = −log10 [H+]/(mol/L) of the mixer's aqueous phase, with
``acid:`` −log10 of the free H+ activity):

- ``constant``:    D fixed (for checks against Kremser and for inert tracers);
- ``mass_action``: cation exchange with an acidic organophosphorus extractant (P507 / HEHEHP,
  D2EHPA, Cyanex 272 class, dimer (HA)2 in kerosene):
  ``M^z+ + z (HA)2(org) ⇌ M(HA2)z(org) + z H+``  →  ``D = Kex · [HA]free^n / [H+]^p``,
  with [HA]free and [H+] in mol/L (Kex on that basis, the dimer factor folded into Kex),
  n = z and p = z by default (3 for Ln3+, Fe3+, Al3+; 2 for UO2 2+; 4 for Th4+)
  (Ritcey & Ashbrook, Solvent Extraction, Elsevier 1984, ch. 2);
- ``empirical``:   ``log10 D = m · pH + b`` (open REE models), z used for the acid balance only;
- ``empirical_dosage``: PrOMMiS's correlation with the free-extractant dosage (prommis 1.1.0,
  prommis/solvent_extraction/solvent_extraction_reaction_package.py):
  ``log10 D = (m0 + m1·dose)·pH + B0 + B1·log10(dose)``, dose = the free extractant as volume %
  of pure extractant, ``100·[HA]free·M_E/(1000·ρ_E)`` (``extractant``: M_E g/mol, ρ_E g/L);
- ``separation_factor``: ``D = β·D_ref`` relative to a ``reference`` species with its own model,
  ``log10 β = log10_beta0 + pH_slope·(pH − pH_ref) + loading_slope·L``, L = 1 − [HA]free/[HA]tot
  the fractional loading (acidity and loading dependence of DEHPA/PC88A separation factors:
  Xie et al., Miner. Eng. 56 (2014) 10).

Stoichiometry per species (any model): ``charge`` z (H+ released per ion extracted; default the
element's usual charge, ``pilot_config.base.CHARGE``) and ``extractant_per_ion`` ν (HA
monomer-equivalents bound per ion loaded; default 2z: 6 per Ln at saturation, so 1 M HA loads at
most ~0.17 M Ln), so that [HA]free = C_HA − Σ ν_j C_org,j falls with loading.

Contactors: ``mixer_settler`` (the volumes and k·a as given) or ``emulsion_flow`` (a stirred
emulsion-flow extractor with ``throughput_factor`` (≈4) times the throughput of a mixer-settler
of equal volume). The volumes and k·a in this file are on the *mixer-settler basis* (what a
mixer-settler for the same duty would need); for ``emulsion_flow`` the unit holds
mixer/settler volumes divided by the factor (1/4 the hold-up per throughput), a k·a multiplied
by it (finer emulsion, more interfacial area) and hence a settler (disengagement) hold-up time
divided by it. k·a·τ_mix, and so the stage efficiency and the steady state, is the same for
both contactors; the emulsion-flow cascade is smaller and its dynamics faster.
Source of the factor: MISSION.md (4× throughput, 1/3–1/4 the size).
Past the settler capacity (``disengagement_capacity_L_per_h_per_m2`` × ``settler_area_m2``) organic
is entrained (``flood_entrainment``) and k·a falls (``efficiency_loss``); each settler phase is
``settler_cells`` cells in series (equations in ``twin.extraction``). At load, k·a·τ_mix ≥ 1 is
required in every section (extraction, scrub, strip) at the design flows.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from .base import StrictModel, check_known_elements
from .sx_case import AcidSpec, EmpiricalDosage, ExtractantSpec, SeparationFactor


class _Stoichiometry(StrictModel):
    charge: int | None = Field(None, ge=1, le=4, description=
        "z: H+ released per ion extracted; default: the element's usual charge (pilot_config.base.CHARGE)")
    extractant_per_ion: float | None = Field(
        None, gt=0, le=12, description="ν: HA monomer-equivalents bound per ion loaded; default 2z")


class ConstantD(_Stoichiometry):
    model: Literal["constant"]
    D: float = Field(gt=0, le=1e6, description="distribution ratio C_org/C_aq (-)")


class MassActionD(_Stoichiometry):
    model: Literal["mass_action"]
    Kex: float = Field(gt=0, le=1e9, description="extraction constant, [HA] and [H+] in mol/L")
    extractant_order: float | None = Field(
        None, ge=0, le=8, description="n, order in free extractant; default = charge")
    h_order: float | None = Field(
        None, ge=0, le=8, description="p, order in [H+] (D ∝ [H+]^-p); default = charge")


class EmpiricalD(_Stoichiometry):
    model: Literal["empirical"]
    slope_per_pH: float = Field(ge=0, le=6, description="m in log10 D = m·pH + b")
    intercept: float = Field(ge=-20, le=20, description="b in log10 D = m·pH + b")


class EmpiricalDosageD(_Stoichiometry, EmpiricalDosage):
    """log10 D = (m0 + m1·dose)·pH + B0 + B1·log10(dose), dose in vol % of pure extractant."""


class SeparationFactorD(_Stoichiometry, SeparationFactor):
    """D = β·D_ref, log10 β = log10_beta0 + pH_slope·(pH − pH_ref) + loading_slope·L."""


Distribution = Annotated[Union[ConstantD, MassActionD, EmpiricalD, EmpiricalDosageD, SeparationFactorD],
                         Field(discriminator="model")]


class CascadeAcid(AcidSpec):
    """Aqueous acid chemistry per stage (``twin.extraction_acid``): with ``speciation: sulfate``
    the acid pool is the total H_T = [H+] + [HSO4-] and sulfate S_T is carried with the aqueous
    flows (not extracted); the free [H+] of HSO4- ⇌ H+ + SO4 2- (log10 K ``hso4_log10_K``, mol/L)
    sets D and the pH, pH = −log10(γ[H+]) with γ from ``activity`` (none | davies | bromley,
    ``bromley_B_kg_per_mol`` for the strong acid). Acid fields of the cascade (``*_acid_mol_per_L``,
    ``feed_H`` etc.) are then totals H_T; a section with no sulfate (a chloride strip) is fully
    dissociated, only the activity applies."""

    speciation: Literal["none", "sulfate"] = "sulfate"
    feed_sulfate_mol_per_L: float = Field(0.0, ge=0, le=6, description="S_T of the feed")
    scrub_sulfate_mol_per_L: float = Field(0.0, ge=0, le=6, description="S_T of the scrub acid")
    strip_sulfate_mol_per_L: float = Field(0.0, ge=0, le=6, description="S_T of the strip acid")

    @model_validator(mode="after")
    def _sulfate_needs_speciation(self) -> "CascadeAcid":
        if self.speciation == "none":
            for name in ("feed", "scrub", "strip"):
                if getattr(self, f"{name}_sulfate_mol_per_L") > 0.0:
                    raise ValueError(f"acid.{name}_sulfate_mol_per_L: sulfate is carried only with "
                                     "speciation: sulfate; allowed: 0 with speciation: none")
        return self


class StageCounts(StrictModel):
    extraction: int = Field(ge=1, le=60, description="stages from raffinate end to feed stage")
    scrub: int = Field(ge=0, le=60, description="stages between feed stage and strip section (0: none)")
    strip: int = Field(ge=1, le=30, description="stripping stages")

    @property
    def total(self) -> int:
        return self.extraction + self.scrub + self.strip

    @model_validator(mode="after")
    def _total(self) -> "StageCounts":
        if self.total > 100:
            raise ValueError(f"at most 100 stages in all; got {self.total}")
        return self


class CascadeConfig(StrictModel):
    """Dy/Tb separation cascade. Flows in L/h, acidities in mol/L, volumes in L per stage."""

    contactor: Literal["mixer_settler", "emulsion_flow"]
    stages: StageCounts
    mixer_volume_L: float = Field(gt=0, le=1000, description="per stage, mixer-settler basis")
    settler_volume_L: float = Field(gt=0, le=5000, description="per stage (both phases), mixer-settler basis")
    settler_aqueous_fraction: float = Field(0.5, ge=0.1, le=0.9, description="aqueous share of settler")
    throughput_factor: float = Field(
        4.0, ge=1, le=10, description="emulsion_flow: throughput / that of a mixer-settler of equal volume")
    mass_transfer_per_s: float = Field(gt=0, le=10, description="k·a toward equilibrium in the mixer, mixer-settler basis")
    settler_area_m2: float = Field(0.04, gt=0, le=100, description="settler disengagement area per stage")
    disengagement_capacity_L_per_h_per_m2: dict[str, float] = Field(
        default_factory=lambda: {"mixer_settler": 3000.0, "emulsion_flow": 12000.0},
        description="total flow (aq + org) per settler area a contactor type disengages cleanly")
    flood_entrainment: float = Field(
        0.01, ge=0, le=1, description="organic per raffinate volume at twice the capacity (quadratic above it)")
    efficiency_loss: float = Field(
        1.0, ge=0, le=100, description="β: k·a / (1 + β·max(Q/Q_cap − 1, 0)²) past the capacity (stage flow Q)")
    settler_cells: int = Field(
        2, ge=1, le=10, description="well-mixed cells in series per settler phase (1: one CSTR)")
    design_feed_flow_L_per_h: float = Field(gt=0, le=1000, description="aqueous feed for sizing checks")
    feed_acidity_mol_per_L: float = Field(0.3, ge=0, le=6, description="design feed [H+] (initial input)")
    organic_flow_L_per_h: float = Field(gt=0, le=5000, description="loaded/recycled organic flow")
    scrub_flow_L_per_h: float = Field(
        ge=0, le=1000, description="scrub acid into the last scrub stage (no scrub stages: joins the feed)")
    scrub_acid_mol_per_L: float = Field(ge=0, le=6, description="[H+] of the scrub acid")
    strip_flow_L_per_h: float = Field(gt=0, le=1000, description="strip acid into the last strip stage")
    strip_acid_mol_per_L: float = Field(gt=0, le=12, description="[H+] of the strip acid")
    extractant_concentration_mol_per_L: float = Field(gt=0, le=3, description="total HA (monomer basis)")
    saponification_fraction: float = Field(
        0.0, ge=0, le=0.6, description="share of HA recycled as Na/NH4 salt (neutralises acid in stage 1)")
    distribution: dict[str, Distribution] = Field(description="D model per species")
    extractant: ExtractantSpec = Field(
        default_factory=ExtractantSpec, description="pure extractant (M, ρ) for empirical_dosage's dosage")
    acid: CascadeAcid | None = Field(
        None, description="acid speciation and activity per stage (absent: [H+] one pool, pH = −log10[H+])")
    organic_loop: Literal["closed", "open"] = Field(
        "closed", description="closed: the last stage's organic returns to stage 1; open: stage 1 is "
        "fed organic_inlet_mg_per_L and the last stage's organic leaves the cascade")
    organic_inlet_mg_per_L: dict[str, float] = Field(
        default_factory=dict, description="open loop: metal in the organic entering stage 1 (default 0)")

    @field_validator("organic_inlet_mg_per_L")
    @classmethod
    def _inlet_species(cls, v: dict) -> dict:
        v = check_known_elements(v, "organic_inlet_mg_per_L")
        bad = [k for k, c in v.items() if not 0.0 <= c <= 1e5]
        if bad:
            raise ValueError(f"organic_inlet_mg_per_L.{bad[0]}: {v[bad[0]]}; allowed: 0 to 1e5 mg/L")
        return v

    @field_validator("distribution")
    @classmethod
    def _every_species(cls, v: dict) -> dict:
        v = check_known_elements(v, "distribution")
        own = [s for s, m in v.items() if m.model != "separation_factor"]
        for sym, m in v.items():
            if m.model == "separation_factor" and m.reference not in own:
                raise ValueError(f"distribution.{sym}.reference: {m.reference!r} must be a species with "
                                 f"its own D model; allowed: {', '.join(own)}")
        return v

    @property
    def factor(self) -> float:
        """Throughput factor applied to this contactor (1 for mixer-settlers)."""
        return self.throughput_factor if self.contactor == "emulsion_flow" else 1.0

    @property
    def capacity_L_per_h(self) -> float:
        """Total flow one stage disengages cleanly, L/h (capacity of this contactor type x area)."""
        return self.disengagement_capacity_L_per_h_per_m2[self.contactor] * self.settler_area_m2

    @field_validator("disengagement_capacity_L_per_h_per_m2")
    @classmethod
    def _capacities(cls, v: dict) -> dict:
        for k in ("mixer_settler", "emulsion_flow"):
            if not v.get(k, 0.0) > 0.0:
                raise ValueError(f"disengagement_capacity_L_per_h_per_m2.{k}: a positive L/h/m2 is required")
        return v

    @property
    def mixer_holdup_L(self) -> float:
        return self.mixer_volume_L / self.factor

    @property
    def settler_holdup_L(self) -> float:
        return self.settler_volume_L / self.factor

    @property
    def effective_mass_transfer_per_s(self) -> float:
        return self.mass_transfer_per_s * self.factor

    def section_flows_L_per_h(self) -> dict[str, tuple[str, float]]:
        """Total mixer flow per section at design flows: (the field of its aqueous flow, L/h)."""
        q_o = self.organic_flow_L_per_h
        return {"extraction": ("design_feed_flow_L_per_h + scrub_flow_L_per_h",
                               self.design_feed_flow_L_per_h + self.scrub_flow_L_per_h + q_o),
                "scrub": ("scrub_flow_L_per_h", self.scrub_flow_L_per_h + q_o),
                "strip": ("strip_flow_L_per_h", self.strip_flow_L_per_h + q_o)}

    def mixer_residence_s(self, section: str = "extraction") -> float:
        """Mixer residence time of a section at design flows (extraction: the busiest)."""
        return 3600.0 * self.mixer_holdup_L / self.section_flows_L_per_h()[section][1]

    def stage_ka_tau(self, section: str) -> float:
        """k·a·τ_mix of a section at design flows (k·a reduced past the capacity)."""
        over = max(self.section_flows_L_per_h()[section][1] / self.capacity_L_per_h - 1.0, 0.0)
        ka = self.effective_mass_transfer_per_s / (1.0 + self.efficiency_loss * over * over)
        return ka * self.mixer_residence_s(section)

    @model_validator(mode="after")
    def _sizing(self) -> "CascadeConfig":
        if self.organic_loop == "closed" and any(v > 0.0 for v in self.organic_inlet_mg_per_L.values()):
            raise ValueError("organic_inlet_mg_per_L: an organic inlet needs organic_loop: open; "
                             "allowed: empty with organic_loop: closed")
        if self.stages.scrub > 0 and self.scrub_flow_L_per_h <= 0.0:
            raise ValueError(f"scrub_flow_L_per_h: a positive flow is needed with {self.stages.scrub} scrub "
                             "stages; allowed: 0 only with stages.scrub: 0")
        for section, (flow_field, q) in self.section_flows_L_per_h().items():
            if getattr(self.stages, section) == 0:
                continue
            ka_tau = self.stage_ka_tau(section)
            if ka_tau < 1.0:
                raise ValueError(
                    f"{section} section: mixer_volume_L ({self.mixer_volume_L}) too small for "
                    f"mass_transfer_per_s ({self.mass_transfer_per_s}) at {flow_field} + organic_flow_L_per_h "
                    f"({q:g} L/h): k·a·τ_mix = {ka_tau:.2f} < 1 (stage efficiency below 50 %); "
                    "allowed: k·a·τ_mix >= 1 in every section")
        return self
