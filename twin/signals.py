"""Signals as seen at the plant boundary: the seam that makes every mode the same code.

A ``Sample`` is what a PLC tag carries: value, source timestamp (plant clock, seconds since the
run's epoch, or Unix seconds in live mode) and an OPC UA-like quality. ``PlantIO`` is the one
interface the control loop talks to, whether the plant is the in-process twin, the twin behind
its OPC UA server, real PLCs or a replay.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Quality(enum.IntEnum):
    """Tag quality, ordered worst to best (maps onto OPC UA StatusCode severity)."""

    BAD = 0
    UNCERTAIN = 1
    GOOD = 2


@dataclass(frozen=True, slots=True)
class Sample:
    """``status``: the OPC UA StatusCode that came with the value (0: Good); a Bad sample carries
    why (BadSensorFailure from the instrument, BadCommunicationError / BadNotConnected while the
    link to its PLC is down)."""

    value: float
    source_time: float
    quality: Quality = Quality.GOOD
    status: int = 0


Snapshot = Mapping[str, Sample]


@dataclass(frozen=True)
class WriteResult:
    """Per-tag outcome of a write: ``accepted`` names the tags written, ``refused`` maps a tag to
    the reason it was not (out of range, access denied, connection down, ...)."""

    accepted: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.refused



#: what the historian stores; every point names one of these
MEASUREMENTS: tuple[str, ...] = ("process", "estimate", "decision", "alarm", "kpi", "audit")


@dataclass(frozen=True, slots=True)
class Point:
    """One historian point (schema: ``twin.points``). ``text`` is a free-text field for the
    records that need one (who did an operator action and why it was refused); empty otherwise.
    ``status`` is the OPC UA StatusCode of a process sample (0: Good)."""

    measurement: str
    tag: str
    unit: str
    value: float
    time_s: float
    quality: str = "good"
    session: str = ""
    text: str = ""
    status: int = 0  # OPC UA StatusCode of the sample (0: Good)


class PlantIO(Protocol):
    async def read(self) -> Snapshot: ...

    async def write(self, values: Mapping[str, float]) -> WriteResult: ...
