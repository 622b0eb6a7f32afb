"""What the PLC sequences of the twin act on: instruments (tags), never hidden model state.

Each decision of a sequence (``twin.sequences``) is bound to a configured instrument, a
``sensor`` or an ``analyser`` tag, so it sees that instrument's noise, scan or sampling period
and reporting delay; the limits it compares against are the PLC's own setpoints (``plc.*``).

- ``carousel.lag_breakthrough``: the lag outlet Dy+Tb C/C0 that switches the carousel
  (signal ``adsorption.lag_breakthrough``);
- ``cells.<cell>``: the melt temperature of the heater PI, the salt Tb content of the make-up, the
  cathode Tb grade of the tap and the cell current of the make-up feed-forward (signals
  ``<cell>.temperature``, ``<cell>.salt_tb_fraction``, ``<cell>.cathode_tb_fraction``,
  ``<cell>.current``); a cell not listed uses the tags ``<CELL>.TEMP``, ``<CELL>.SALT_TB``,
  ``<CELL>.CATHODE_TB`` and ``<CELL>.CURRENT``;
- ``distillation``: the crucible temperature that ends heat-up and cool-down, and the residual
  alloy metal that ends the hold (signals ``distillation.temperature``,
  ``distillation.residual_metal_fraction``).

PLC-computed value: the salt make-up feed-forward ``ṅ_ff = I_meas·η_ff/(3F)`` (Faraday on the
measured current at the declared ``feed_forward_efficiency``), corrected in proportion to the
measured salt Tb content's error.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from .base import StrictModel
from .tags import Tag

INSTRUMENT_KINDS = ("sensor", "analyser")


class CarouselInstruments(StrictModel):
    lag_breakthrough: str = Field("ADS.LAG.BREAKTHROUGH",
                                  description="instrument of the lag outlet Dy+Tb C/C0 (the switch)")


class CellInstruments(StrictModel):
    temperature: str = Field(description="melt temperature (heater PI)")
    salt_tb: str = Field(description="salt Tb content (make-up)")
    cathode_tb: str = Field(description="cathode Tb grade (tap)")
    current: str = Field(description="cell current (make-up feed-forward)")
    feed_forward_efficiency: float = Field(
        0.85, gt=0, le=1, description="current efficiency the PLC assumes in the make-up feed-forward")

    @classmethod
    def default(cls, cell: str) -> "CellInstruments":
        tag = cell.upper()
        return cls(temperature=f"{tag}.TEMP", salt_tb=f"{tag}.SALT_TB", cathode_tb=f"{tag}.CATHODE_TB",
                   current=f"{tag}.CURRENT")


class DistillationInstruments(StrictModel):
    temperature: str = Field("DIST.TEMP", description="crucible temperature (heat-up, cool-down)")
    residual_metal: str = Field("DIST.RESIDUAL", description="residual alloy metal (end of the hold)")


class SequencesConfig(StrictModel):
    carousel: CarouselInstruments = CarouselInstruments()
    cells: dict[str, CellInstruments] = Field(
        default_factory=dict, description="per cell name; a cell not listed uses <CELL>.TEMP etc.")
    distillation: DistillationInstruments = DistillationInstruments()

    def cell(self, name: str) -> CellInstruments:
        return self.cells.get(name) or CellInstruments.default(name)

    def bindings(self, cells: list[str]) -> Iterator[tuple[tuple, str, str]]:
        """(YAML location, tag name, the twin signal it must measure) of every binding."""
        yield ("sequences", "carousel", "lag_breakthrough"), self.carousel.lag_breakthrough, \
            "adsorption.lag_breakthrough"
        for cell in cells:
            c = self.cell(cell)
            for field, suffix in (("temperature", "temperature"), ("salt_tb", "salt_tb_fraction"),
                                  ("cathode_tb", "cathode_tb_fraction"), ("current", "current")):
                yield ("sequences", "cells", cell, field), getattr(c, field), f"{cell}.{suffix}"
        yield ("sequences", "distillation", "temperature"), self.distillation.temperature, \
            "distillation.temperature"
        yield ("sequences", "distillation", "residual_metal"), self.distillation.residual_metal, \
            "distillation.residual_metal_fraction"

    def issues(self, cells: list[str], tags: list[Tag]) -> list[tuple[tuple, str, object]]:
        """Every binding that is not an instrument of the signal it stands for (one line each,
        naming the instruments allowed)."""
        by_name = {t.name: t for t in tags}
        out = []
        unknown = sorted(set(self.cells) - set(cells))
        if unknown:
            out.append((("sequences", "cells"), f"no electrolysis cell {unknown[0]!r}; the cells are: "
                                                f"{', '.join(cells)}", unknown[0]))
        for loc, name, signal in self.bindings(cells):
            tag = by_name.get(name)
            if tag is not None and tag.kind in INSTRUMENT_KINDS and tag.signal == signal:
                continue
            allowed = [t.name for t in tags if t.kind in INSTRUMENT_KINDS and t.signal == signal]
            what = ("no such tag" if tag is None else
                    f"{tag.name} is {'an' if tag.kind[0] in 'aeiou' else 'a'} {tag.kind}, not an instrument"
                    if tag.kind not in INSTRUMENT_KINDS else f"{tag.name} measures {tag.signal}")
            out.append((loc, f"{what}: a sequence acts on a sensor or analyser of {signal}; allowed: "
                             f"{', '.join(allowed) or 'none (add one to tags)'}", name))
        return out
