"""The whole pilot line: feed, adsorption carousel, eluate tank, SX cascade, electrolysis cells,
vacuum distillation, PLC tags, OPC UA namespace and simulation settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from .adsorption import CarouselConfig
from .base import (
    SPECIES,
    StrictModel,
    check_every_species,
    check_known_elements,
    check_species_list,
)
from .control import ControlConfig
from .electrolysis import CellConfig, DistillationConfig
from .extraction import CascadeConfig
from .plcs import OpcUaConfig, PlcConfig, assign_tags, raise_located
from .salt_prep import SaltPrepConfig
from .sequences import SequencesConfig
from .tags import Tag
from .training import TrainingConfig


def _check_species_map(value: dict[str, float], what: str) -> dict[str, float]:
    check_known_elements(value, what)
    negative = [k for k, v in value.items() if v < 0]
    if negative:
        raise ValueError(f"concentrations must be >= 0; negative for {negative}")
    return value


class FeedConfig(StrictModel):
    """Leach liquor from the dissolution of scrap magnets / unused resources."""

    flow_L_per_h: float = Field(gt=0, le=5000, description="design leach-liquor flow to the lead column")
    acidity_mol_per_L: float = Field(ge=0, le=5, description="free acid [H+] of the liquor")
    composition_mg_per_L: dict[str, float] = Field(description="element concentrations, mg/L")

    @field_validator("composition_mg_per_L")
    @classmethod
    def _species(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_species_map(v, "feed composition")


class EluateTankConfig(StrictModel):
    """Buffer between the carousel's eluate and the cascade feed pump."""

    capacity_L: float = Field(gt=0, le=100000)
    initial_volume_L: float = Field(ge=0)
    low_volume_L: float = Field(gt=0, description="the feed pump stops drawing below this volume")
    cascade_feed_L_per_h: float = Field(gt=0, le=1000, description="design cascade feed (pump setpoint)")
    initial_composition_mg_per_L: dict[str, float] = Field(
        description="eluate held in the tank at start (and the cascade's design feed)"
    )
    initial_acidity_mol_per_L: float = Field(ge=0, le=10)
    acidity_setpoint_mol_per_L: float | None = Field(
        None, gt=0, le=10, description="pH-adjustment of the eluate before the cascade (None: off)")

    @field_validator("initial_composition_mg_per_L")
    @classmethod
    def _species(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_species_map(v, "eluate tank composition")

    @model_validator(mode="after")
    def _volumes(self) -> "EluateTankConfig":
        if self.initial_volume_L > self.capacity_L:
            raise ValueError(f"initial_volume_L ({self.initial_volume_L}) exceeds capacity_L ({self.capacity_L})")
        if self.low_volume_L >= self.capacity_L:
            raise ValueError("low_volume_L must be below capacity_L")
        return self


class ElectrolysisConfig(StrictModel):
    cells: list[CellConfig] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _unique(self) -> "ElectrolysisConfig":
        names = [c.name for c in self.cells]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cell names must be unique; repeated: {dupes}")
        return self


class SimulationConfig(StrictModel):
    """The twin's clock. ``sync_step_s``: the co-simulation step of ``pilot simulate`` and ``pilot
    train run`` (inputs held over it, sensors scanned after it). ``serve_step_s``: the step of a
    *served* session (``pilot train serve``; ``pilot plc-sim --step serve``), where a trainee watches
    the tags: the twin itself synchronises (and the session ticks) every ``serve_step_s``, so every
    tag a client sees is a real scan at least once per plant second, a write lands at the next
    step, and analysers keep their own ``period_s`` / ``delay_s``. A shorter step, not values
    interpolated between 60 s steps: an interpolant would show noise and sequence events (carousel
    switches, taps, trips) at times the plant never had them, and a step computed ahead would
    ignore the writes made during it. The cost is the per-step overhead of the unit solvers
    (measured in one run: the twin alone 171x real time at 1 s against 4,285x at 60 s; served with
    ``pilot train serve`` 106x against 3,499x), so a served session keeps up with ``--speed`` up to
    ~100 (docs/training.md). ``max_sync_step_s`` (the adaptive step, off by default and in served
    sessions): the stream-joined units (carousel, eluate tank, cascade) step up to that long while
    nothing falls due and no transient is under way; the cells, distillation, the sequences and
    their scans keep ``sync_step_s`` (``twin/plant.py``; docs/architecture.md)."""

    sync_step_s: float = Field(60.0, ge=1, le=600, description="co-simulation step (inputs held)")
    max_sync_step_s: float | None = Field(
        None, ge=1, le=3600,
        description="adaptive step: longest physics step (a whole multiple of sync_step_s) while nothing "
                    "is due; None: every sync_step_s (twin/plant.py)")
    serve_step_s: float = Field(1.0, ge=1, le=600, description="step of a served session (train serve)")
    record_period_s: float = Field(60.0, ge=1, le=3600, description="historian sampling period")
    seed: int = Field(0, ge=0, description="seed of the sensor-noise generator")
    start: Literal["design", "cold"] = Field(
        "design", description="design: cascade at its design steady state; cold: barren cascade"
    )

    @model_validator(mode="after")
    def _adaptive_on_grid(self) -> "SimulationConfig":
        top = self.max_sync_step_s
        if top is not None:
            k = top / self.sync_step_s
            if top < self.sync_step_s or abs(k - round(k)) > 1e-9:
                raise ValueError(f"max_sync_step_s ({top:g}) must be a whole multiple of sync_step_s "
                                 f"({self.sync_step_s:g}), at least 1x")
        return self


class PilotLineConfig(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    species: tuple[str, ...] = Field(
        SPECIES, description="elements tracked through the line, in order (symbols of pilot_config.elements)")
    feed: FeedConfig
    adsorption: CarouselConfig
    eluate_tank: EluateTankConfig
    extraction: CascadeConfig
    electrolysis: ElectrolysisConfig
    distillation: DistillationConfig
    salt_prep: SaltPrepConfig = SaltPrepConfig()
    tags: list[Tag] = Field(min_length=1)
    opcua: OpcUaConfig = OpcUaConfig()
    simulation: SimulationConfig = SimulationConfig()
    control: ControlConfig = ControlConfig()
    training: TrainingConfig = TrainingConfig()
    sequences: SequencesConfig = SequencesConfig()
    _plc_of: tuple = PrivateAttr((0, 0, {}))

    @field_validator("species")
    @classmethod
    def _species_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_species_list(v)

    @model_validator(mode="after")
    def _species_maps(self) -> "PilotLineConfig":
        maps = {
            ("feed", "composition_mg_per_L"): self.feed.composition_mg_per_L,
            ("eluate_tank", "initial_composition_mg_per_L"): self.eluate_tank.initial_composition_mg_per_L,
            ("adsorption", "column", "isotherms"): self.adsorption.column.isotherms,
            ("extraction", "distribution"): self.extraction.distribution,
        }
        issues = []
        for loc, value in maps.items():
            try:
                check_every_species(value, loc[-1], self.species)
            except ValueError as exc:
                issues.append((loc, str(exc), sorted(value)))
        raise_located("PilotLineConfig", issues)
        return self

    @model_validator(mode="after")
    def _tags_unique(self) -> "PilotLineConfig":
        names = [t.name for t in self.tags]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tag names must be unique; repeated: {dupes}")
        self.control.check_tags(self.tags)
        return self

    @model_validator(mode="after")
    def _sequences_on_instruments(self) -> "PilotLineConfig":
        cells = [c.name for c in self.electrolysis.cells]
        raise_located("PilotLineConfig", self.sequences.issues(cells, self.tags))
        return self

    @model_validator(mode="after")
    def _plcs_assigned(self) -> "PilotLineConfig":
        assignment = assign_tags(self.opcua.resolved_plcs(), self.tags)
        raise_located("PilotLineConfig", assignment.issues)
        self._plc_of = (id(self.opcua), id(self.tags), assignment.plc_of)
        return self

    def _assignment(self) -> dict[str, str]:
        """tag name -> PLC name, recomputed for a copy whose ``opcua`` or ``tags`` were replaced."""
        opcua_id, tags_id, plc_of = self._plc_of
        if (opcua_id, tags_id) != (id(self.opcua), id(self.tags)):
            assignment = assign_tags(self.opcua.resolved_plcs(), self.tags)
            if assignment.issues:
                raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg, _ in assignment.issues))
            plc_of = assignment.plc_of
            self._plc_of = (id(self.opcua), id(self.tags), plc_of)
        return plc_of

    def plc_tags(self) -> dict[str, list[Tag]]:
        """Every PLC's tags (in config order), PLCs in ``opcua.resolved_plcs()`` order."""
        plc_of = self._assignment()
        out: dict[str, list[Tag]] = {p.name: [] for p in self.opcua.resolved_plcs()}
        for t in self.tags:
            out[plc_of[t.name]].append(t)
        return out

    def plc_of(self, tag_name: str) -> str:
        """The name of the PLC serving ``tag_name`` (KeyError for an unknown tag)."""
        return self._assignment()[tag_name]

    def plc(self, name: str) -> PlcConfig:
        """The PLC called ``name`` (KeyError naming the PLCs otherwise)."""
        for p in self.opcua.resolved_plcs():
            if p.name == name:
                return p
        raise KeyError(f"no PLC {name!r}; the PLCs are: {', '.join(p.name for p in self.opcua.resolved_plcs())}")

    def tag(self, name: str) -> Tag:
        for t in self.tags:
            if t.name == name:
                return t
        raise KeyError(name)

    def served(self, step_s: float | None = None) -> "PilotLineConfig":
        """This config as a served session runs it: the twin's ``sync_step_s`` and the training
        tick set to ``step_s`` (default ``simulation.serve_step_s``); everything else unchanged."""
        step = self.simulation.serve_step_s if step_s is None else step_s
        return self.model_copy(update={
            "simulation": self.simulation.model_copy(update={"sync_step_s": step, "max_sync_step_s": None}),
            "training": self.training.model_copy(update={"tick_s": step}),
        })
