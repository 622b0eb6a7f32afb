"""What the PLC sequences need of the plant that runs them, and the events they log.

``twin.plant`` implements ``SequenceHost`` and runs ``twin.sequences`` on it; the sequences
import only this module (dependencies point one way: sequence_host ← sequences ← plant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import simpy

from .build import Line
from .flowsheet import Flowsheet
from .sensors import TagLayer


@dataclass(frozen=True)
class PlantEvent:
    t: float
    unit: str
    text: str


class SequenceHost(Protocol):
    """The clock, the tag layer (what the PLC measures), the blocks the sequences act on and the
    event log."""

    config: Any  # pilot_config.PilotLineConfig
    env: simpy.Environment
    dt: float
    step_s: float  # the latest step of the cells and the PLC block (dt, or shorter after a sync)
    line: Line
    flowsheet: Flowsheet
    tags: TagLayer
    ledger: Any  # twin.ledger.Ledger
    step_event: simpy.Event

    @property
    def t(self) -> float: ...

    def after(self, delay_s: float) -> simpy.Timeout: ...

    def log(self, unit: str, text: str) -> None: ...
